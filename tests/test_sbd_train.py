import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline import store
from pipeline.errors import UserError
from pipeline.sbd.data import SceneData, crop_box_in_frame, epoch_batches, iterate_steps
from pipeline.sbd.train import LOG_COLUMNS, TrainSettings, _cos_loss, lr_at, train_sbd
from sbd_synthetic import TINY_ARCH, make_scene

SMALL = dict(frames=2, frame_hw=(36, 48), crop=(4, 3, 28, 42))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("placement, box", [("crop", (4, 5, 56, 70)), ("resize", (0, 0, 64, 80))])
def test_targets_are_latents_of_mask_rows_inside_the_output_box(tmp_path, placement, box):
    # 64x80 frames, tokens of the 56x70 crop at (4, 5): upstream ("resize") asks the decoder for the
    # whole frame, "crop" for the crop box only
    src = make_scene(tmp_path, frames=3)
    scene = SceneData(src, placement=placement)
    top, left, h, w = scene.box
    assert scene.box == box and scene.out_size == (h, w)
    masks = np.asarray(store.open_group(src.masks)["masks"][...])
    lat = store.open_group(src.clip_latents)
    feats, rows = np.asarray(lat["features"][...]), np.asarray(lat["rows"][...])
    t = 2
    item = scene.targets(t)
    assert item["lang"].shape == (3, 3, h, w) and item["lang_valid"].shape == (3, h, w)
    for i, level in enumerate((1, 2, 3)):
        ids = masks[level, t, top : top + h, left : left + w]
        row = np.where(ids >= 0, rows[level, t][np.clip(ids, 0, None)], -1)
        valid = row >= 0
        np.testing.assert_array_equal(item["lang_valid"][i].numpy(), valid)
        np.testing.assert_allclose(item["lang"][i].permute(1, 2, 0).numpy()[valid], feats[row[valid]])
        assert np.all(item["lang"][i].numpy()[:, ~valid] == 0)
    # the synthetic s level has an id without a feature row: its pixels are masked out
    s_ids = masks[1, t, top : top + h, left : left + w]
    assert (s_ids == 5).any() and not item["lang_valid"][0].numpy()[s_ids == 5].any()
    # the RGB target is the frame inside the box, and the video target follows the l-level ids
    frame = np.asarray(store.open_group(src.frames)["rgb"][t])
    np.testing.assert_allclose(item["rgb"].permute(1, 2, 0).numpy() * 255, frame[top : top + h, left : left + w], atol=1e-3)
    assert item["video"].shape == (6, h, w)
    l_ids = masks[3, t, top : top + h, left : left + w]
    np.testing.assert_array_equal(item["video_valid"].numpy(), l_ids >= 0)


def test_training_records_its_output_placement_and_refuses_unknown_ones(tmp_path):
    src = make_scene(tmp_path / "scene", **SMALL)
    for placement in ("crop", "resize"):
        settings = TrainSettings(epochs=1, batch_size=2, warmup_epochs=0, output_placement=placement, **TINY_ARCH)
        out = tmp_path / placement / "sbd.safetensors"
        train_sbd([src], out, settings=settings, save_every=10, progress=False)
        with safe_open(str(out), framework="pt") as fh:
            assert fh.metadata()["output_placement"] == placement
    with pytest.raises(UserError, match="sbd.output_placement"):
        train_sbd([src], tmp_path / "x.safetensors", settings=TrainSettings(output_placement="pad"), progress=False)


def test_crop_box_maps_a_resized_crop_back_to_frame_pixels():
    assert crop_box_in_frame(None, (60, 80)) == (0, 0, 60, 80)
    same = {"source_size": [536, 960], "resize_to": None, "crop": [2, 4, 532, 952]}
    assert crop_box_in_frame(same, (536, 960)) == (2, 4, 532, 952)
    resized = {"source_size": [1014, 1352], "resize_to": [392, 518], "crop": [0, 0, 392, 518]}
    assert crop_box_in_frame(resized, (1014, 1352)) == (0, 0, 1014, 1352)
    half = {"source_size": [100, 120], "resize_to": [50, 60], "crop": [3, 2, 42, 56]}
    assert crop_box_in_frame(half, (100, 120)) == (6, 4, 84, 112)


def test_epoch_plan_is_reproducible_covers_every_frame_and_never_mixes_scenes():
    a = epoch_batches([5, 3], 2, seed=7, epoch=3)
    assert a == epoch_batches([5, 3], 2, seed=7, epoch=3)
    assert a != epoch_batches([5, 3], 2, seed=7, epoch=4)
    for scene, n in ((0, 5), (1, 3)):
        frames = sorted(t for s, b in a if s == scene for t in b)
        assert frames == list(range(n))
    assert all(len(b) <= 2 for _, b in a)


def test_learning_rate_warms_up_then_holds_or_follows_a_cosine():
    const = TrainSettings(epochs=10, lr=1e-3, warmup_epochs=2, schedule="constant")
    cos = TrainSettings(epochs=10, lr=1e-3, min_lr=1e-5, warmup_epochs=2, schedule="cosine")
    assert lr_at(const, 0.0) == 0.0 and lr_at(const, 1.0) == pytest.approx(5e-4)
    assert lr_at(const, 9.5) == 1e-3
    assert lr_at(cos, 2.0) == pytest.approx(1e-3) and lr_at(cos, 6.0) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(cos, 10.0) == pytest.approx(1e-5)


def test_cosine_over_channels_versus_upstream_width_axis():
    torch.manual_seed(0)
    target = torch.randn(1, 3, 3, 8, 10)
    scale = torch.rand(1, 3, 1, 8, 10) + 0.5  # same direction per pixel, different length
    valid = torch.ones(1, 3, 8, 10, dtype=torch.bool)
    pred = target * scale
    assert float(_cos_loss(pred, target, valid, channel_dim=2, over_width=False)) == pytest.approx(0.0, abs=1e-6)
    assert float(_cos_loss(pred, target, valid, channel_dim=2, over_width=True)) > 1e-3


def test_tiny_decoder_overfits_a_few_frames(tmp_path):
    src = make_scene(tmp_path / "scene", **SMALL)
    settings = TrainSettings(epochs=40, batch_size=2, lr=1e-2, warmup_epochs=0, **TINY_ARCH)
    out = tmp_path / "sbd.safetensors"
    summary = train_sbd([src], out, settings=settings, save_every=100, progress=False)
    log = pd.read_parquet(tmp_path / "train_log.parquet")
    assert list(log.columns) == list(LOG_COLUMNS)
    assert len(log) == 40 and log["step"].tolist() == list(range(40))
    first, last = log.iloc[:2].mean(), log.iloc[-2:].mean()
    assert last["loss"] < first["loss"] / 8
    assert last["lang_l1"] < first["lang_l1"] / 5
    assert last["video_l1"] < first["video_l1"] / 3
    assert summary["final_loss"] == pytest.approx(log["loss"].iloc[-1])
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["layers"]) == [0, 1, 2, 3]
    assert json.loads(meta["architecture"])["dim_in"] == 32 and json.loads(meta["video_dim"]) == 6
    assert json.loads(meta["clip_space"]) == {"kind": "synthetic-clip", "dim": 512}
    assert json.loads(meta["video_space"]) == {"kind": "synthetic-text", "dim": 384}
    assert json.loads(meta["provenance"])["stage"] == "train"


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    src = make_scene(tmp_path / "scene", frames=3, frame_hw=(36, 48), crop=(4, 3, 28, 42))
    settings = TrainSettings(epochs=4, batch_size=2, lr=1e-3, warmup_epochs=1, schedule="cosine", **TINY_ARCH)
    common = dict(settings=settings, save_every=1, progress=False)
    train_sbd([src], tmp_path / "a" / "sbd.safetensors", checkpoint_dir=tmp_path / "ck_a", **common)

    def kill_after_second_epoch(epoch):
        if epoch == 2:
            raise _Killed

    with pytest.raises(_Killed):
        train_sbd([src], tmp_path / "b" / "sbd.safetensors", checkpoint_dir=tmp_path / "ck_b", on_epoch_end=kill_after_second_epoch, **common)
    assert not (tmp_path / "b" / "sbd.safetensors").exists()
    summary = train_sbd([src], tmp_path / "b" / "sbd.safetensors", checkpoint_dir=tmp_path / "ck_b", **common)
    assert summary["resumed_from"].endswith("epoch_0002.safetensors")

    a = load_file(str(tmp_path / "a" / "sbd.safetensors"))
    b = load_file(str(tmp_path / "b" / "sbd.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-6), k
    log_a = pd.read_parquet(tmp_path / "a" / "train_log.parquet")
    log_b = pd.read_parquet(tmp_path / "b" / "train_log.parquet")
    assert log_b["step"].tolist() == list(range(8))
    np.testing.assert_allclose(log_a["loss"], log_b["loss"], rtol=1e-6)
    assert len(list((tmp_path / "ck_b").glob("*.safetensors"))) == 2  # keeps the newest two

    # other settings: the old checkpoints are not resumed from, and they are cleared away
    other = dataclasses.replace(settings, epochs=1)
    again = train_sbd([src], tmp_path / "c" / "sbd.safetensors", checkpoint_dir=tmp_path / "ck_b", settings=other, save_every=1, progress=False)
    assert again["resumed_from"] is None
    assert sorted(p.name for p in (tmp_path / "ck_b").iterdir()) == ["epoch_0001.safetensors"]


def test_scenes_with_different_autoencoders_cannot_share_a_decoder(tmp_path):
    a = make_scene(tmp_path / "a", **SMALL)
    b = make_scene(tmp_path / "b", **SMALL, seed=1)
    zarr.open_group(str(b.clip_latents), mode="r+").attrs["autoencoder"] = {"path": "other", "sha256": "f" * 64}
    with pytest.raises(UserError, match="autoencoder"):
        train_sbd([a, b], tmp_path / "x.safetensors", settings=TrainSettings(epochs=1, **TINY_ARCH), progress=False)
    assert not (tmp_path / "x.safetensors").exists()


def test_frame_count_mismatch_is_a_clear_error(tmp_path):
    src = make_scene(tmp_path / "a", **SMALL)
    other = make_scene(tmp_path / "b", frames=3, frame_hw=(36, 48), crop=(4, 3, 28, 42))
    bad = type(src)(tokens=src.tokens, masks=other.masks, clip_latents=src.clip_latents, frames=src.frames)
    with pytest.raises(UserError, match="frame counts differ"):
        SceneData(bad)


def test_worker_prefetching_yields_the_same_batches_as_the_main_process(tmp_path):
    scene = SceneData(make_scene(tmp_path / "a", frames=3, frame_hw=(36, 48), crop=(4, 3, 28, 42)))
    # steps 1..4 of a 2-steps-per-epoch run: crosses an epoch boundary, as a resumed run would
    main = list(iterate_steps([scene], 2, 5, 1, 5, num_workers=0))
    workers = list(iterate_steps([scene], 2, 5, 1, 5, num_workers=2))
    assert len(main) == len(workers) == 4
    for a, b in zip(main, workers):
        assert a["frames"] == b["frames"]
        assert all(torch.equal(x, y) for x, y in zip(a["tokens"], b["tokens"]))
        assert torch.equal(a["lang"], b["lang"]) and torch.equal(a["video_valid"], b["video_valid"])
    plan = [f for e in (0, 1, 2) for _, f in epoch_batches([3], 2, 5, e)]
    assert [b["frames"] for b in main] == plan[1:5]


def test_object_balance_gives_every_object_the_same_weight():
    from pipeline.sbd.data import object_balance

    ids = np.zeros((10, 10), np.int64)
    ids[:2, :2] = 1  # a 4-pixel object beside a 94-pixel one
    ids[9, 9] = 2
    ids[9, 8] = -1
    valid = torch.from_numpy(ids >= 0)
    w = object_balance(ids, valid).numpy()
    assert w[~valid.numpy()].sum() == 0
    assert np.isclose(w[valid.numpy()].mean(), 1.0)
    totals = [w[ids == k].sum() for k in (0, 1, 2)]
    np.testing.assert_allclose(totals, [totals[0]] * 3, rtol=1e-6)
    assert np.all(object_balance(ids, torch.zeros_like(valid)).numpy() == 0)


def test_balanced_loss_equals_the_plain_loss_when_objects_are_equal():
    from pipeline.sbd.data import object_balance
    from pipeline.sbd.train import _masked_l1

    ids = np.zeros((8, 8), np.int64)
    ids[:, 4:] = 1  # two objects of 32 pixels
    valid = torch.from_numpy(ids >= 0)
    pred, target = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    w = object_balance(ids, valid)[None]
    plain = _masked_l1(pred, target, valid[None], channel_dim=1)
    balanced = _masked_l1(pred, target, valid[None], channel_dim=1, weight=w)
    assert torch.allclose(plain, balanced)
    ids[:, 1:] = 1  # now 8 vs 56 pixels: the small object's error counts 3.5x more than before
    w = object_balance(ids, valid)[None]
    err = torch.zeros(1, 3, 8, 8)
    err[..., :1] = 1.0
    assert _masked_l1(err, torch.zeros_like(err), valid[None], channel_dim=1, weight=w) > 3 * _masked_l1(
        err, torch.zeros_like(err), valid[None], channel_dim=1)
