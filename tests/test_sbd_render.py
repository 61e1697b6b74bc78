import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from pipeline import store
from pipeline.errors import UserError
from pipeline.sbd.data import TokenReader
from pipeline.sbd.model import SemanticBridgingDecoder
from pipeline.sbd.render import place_in_frame, render_sbd
from pipeline.sbd.train import save_decoder
from sbd_synthetic import TINY_ARCH, make_scene

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _decoder(tmp_path, *, video_dim=6, metadata=True, placement=None):
    torch.manual_seed(0)
    model = SemanticBridgingDecoder(dim_in=32, video_dim=video_dim, **TINY_ARCH).eval()
    path = tmp_path / "sbd.safetensors"
    meta = {"architecture": model.config.to_dict(), "layers": [0, 1, 2, 3], "clip_space": {"kind": "c"}, "video_space": {"kind": "v"}}
    if placement:
        meta["output_placement"] = placement
    save_decoder(path, model, meta if metadata else {"source": "converted"})
    return model, path


def test_place_in_frame_puts_the_box_at_its_offset_and_repeats_edges():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    full = place_in_frame(x, (1, 2, 2, 3), (4, 6))
    assert full.shape == (1, 1, 4, 6)
    assert torch.equal(full[0, 0, 1:3, 2:5], x[0, 0])
    assert torch.equal(full[0, 0, 0, 2:5], x[0, 0, 0]) and torch.equal(full[0, 0, 3, 2:5], x[0, 0, 1])
    assert torch.equal(full[0, 0, 1:3, 0], x[0, 0, :, 0]) and torch.equal(full[0, 0, 1:3, 5], x[0, 0, :, 2])
    assert float(full[0, 0, 0, 0]) == 0.0 and float(full[0, 0, 3, 5]) == 5.0
    overhang = place_in_frame(x, (-1, 4, 2, 3), (3, 6))  # box sticks out top and right
    assert overhang.shape == (1, 1, 3, 6) and float(overhang[0, 0, 0, 4]) == 3.0


def test_crop_placement_undoes_crop_and_resize_at_frame_resolution(tmp_path):
    # 96x120 frames resized to 64x80, cropped to 56x70 at (4, 5): box (6, 8, 84, 104) in frame pixels
    src = make_scene(tmp_path / "scene", frames=3, frame_hw=(96, 120), resize_to=(64, 80), crop=(4, 5, 56, 70))
    model, ckpt = _decoder(tmp_path, placement="crop")
    out = tmp_path / "render.zarr"
    summary = render_sbd(src.tokens, ckpt, out, batch_size=2, device="cpu", progress=False)
    assert summary["crop_box"] == [6, 8, 84, 104] and summary["output_placement"] == "crop"
    group = zarr.open_group(str(out), mode="r")
    for name, c in (("lang_s", 3), ("lang_m", 3), ("lang_l", 3), ("video", 6), ("rgb", 3)):
        assert group[name].shape == (3, 96, 120, c) and group[name].dtype == np.float16, name
        assert group[name].chunks[0] == 1
    attrs = dict(group.attrs)
    assert attrs["output_placement"] == "crop" and attrs["output_box"] == [6, 8, 84, 104]
    assert attrs["frame_names"] == ["000001", "000002", "000003"] and attrs["source_indices"] == [0, 1, 2]
    assert attrs["clip_space"] == {"kind": "c"} and attrs["video_space"] == {"kind": "v"}
    assert attrs["provenance"]["stage"] == "render"

    tokens = TokenReader(src.tokens)
    with torch.no_grad():
        pred = model([x.float() for x in tokens.read([1])], (84, 104))
    lang_m = np.asarray(group["lang_m"][1], dtype=np.float32)
    expected = pred["lang"][0, 1].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lang_m[6:90, 8:112], expected, atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(lang_m[:6, 8:112], np.broadcast_to(lang_m[6:7, 8:112], (6, 104, 3)))
    np.testing.assert_array_equal(lang_m[6:90, 112:], np.broadcast_to(lang_m[6:90, 111:112], (84, 8, 3)))
    rgb = np.asarray(group["rgb"][...], dtype=np.float32)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert not list(tmp_path.glob("render.zarr.tmp-*"))


def test_resize_placement_is_upstreams_output_resized_to_the_whole_frame(tmp_path):
    # HyperNeRF-like: 536x960 frames go in cropped to 532x952 at (2, 4); here 60x76 -> 56x70 at (2, 3)
    src = make_scene(tmp_path / "scene", frames=2, frame_hw=(60, 76), crop=(2, 3, 56, 70))
    model, ckpt = _decoder(tmp_path)  # no recorded placement: upstream's
    out = tmp_path / "render.zarr"
    summary = render_sbd(src.tokens, ckpt, out, device="cpu", progress=False)
    assert summary["output_placement"] == "resize"
    group = zarr.open_group(str(out), mode="r")
    assert dict(group.attrs)["output_placement"] == "resize" and dict(group.attrs)["output_box"] == [0, 0, 60, 76]
    tokens = TokenReader(src.tokens)
    with torch.no_grad():
        native = model([x.float() for x in tokens.read([1])], (56, 70))["lang"][0].reshape(9, 56, 70)
    expected = F.interpolate(native[None], size=(60, 76), mode="bilinear", align_corners=False)[0]
    got = torch.from_numpy(np.asarray(group["lang_m"][1], dtype=np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(got, expected[3:6], atol=2e-3, rtol=2e-3)
    # the crop placement of the same output sits 2-3 px away: the two differ inside the frame
    render_sbd(src.tokens, ckpt, tmp_path / "crop.zarr", device="cpu", output_placement="crop", progress=False)
    cropped = np.asarray(zarr.open_group(str(tmp_path / "crop.zarr"), mode="r")["lang_m"][1], dtype=np.float32)
    assert np.abs(cropped - got.permute(1, 2, 0).numpy()).max() > 1e-2


def test_placements_agree_when_frames_are_whole_patches(tmp_path):
    # the demo's case: 42x56 frames are 3x4 patches, no crop, so both placements are one computation
    src = make_scene(tmp_path / "scene", frames=2, frame_hw=(42, 56), crop=(0, 0, 42, 56))
    _, ckpt = _decoder(tmp_path)
    for placement in ("resize", "crop"):
        render_sbd(src.tokens, ckpt, tmp_path / f"{placement}.zarr", device="cpu", output_placement=placement, progress=False)
    a, b = (zarr.open_group(str(tmp_path / f"{p}.zarr"), mode="r") for p in ("resize", "crop"))
    for name in ("lang_s", "lang_m", "lang_l", "video", "rgb"):
        # no resize, no padding: the same numbers (up to kernel noise between two loads of the weights)
        np.testing.assert_allclose(np.asarray(a[name][...], np.float32), np.asarray(b[name][...], np.float32), atol=1e-3, rtol=1e-3)


def test_render_refuses_a_placement_other_than_the_trained_one(tmp_path):
    src = make_scene(tmp_path / "scene", frames=2, frame_hw=(36, 48), crop=(4, 3, 28, 42))
    _, ckpt = _decoder(tmp_path, placement="crop")
    with pytest.raises(UserError, match=r"trained with output placement 'crop'.*sbd\.output_placement"):
        render_sbd(src.tokens, ckpt, tmp_path / "render.zarr", device="cpu", output_placement="resize", progress=False)
    assert not (tmp_path / "render.zarr").exists()


def test_render_with_a_converted_checkpoint_and_no_video_head(tmp_path):
    src = make_scene(tmp_path / "scene", frames=2, frame_hw=(36, 48), crop=(4, 3, 28, 42), layers=(4, 11, 17, 23))
    _, ckpt = _decoder(tmp_path, video_dim=0, metadata=False)  # no metadata: layers 4/11/17/23 assumed
    render_sbd(src.tokens, ckpt, tmp_path / "render.zarr", device="cpu", progress=False)
    group = zarr.open_group(str(tmp_path / "render.zarr"), mode="r")
    assert sorted(group.array_keys()) == ["lang_l", "lang_m", "lang_s", "rgb"]
    assert group["lang_s"].shape == (2, 36, 48, 3)
    assert group.attrs["video_space"] is None


def test_render_refuses_tokens_from_other_layers(tmp_path):
    src = make_scene(tmp_path / "scene", frames=2, frame_hw=(36, 48), crop=(4, 3, 28, 42), layers=(1, 2, 3, 5))
    _, ckpt = _decoder(tmp_path)
    with pytest.raises(UserError, match="layers"):
        render_sbd(src.tokens, ckpt, tmp_path / "render.zarr", device="cpu", progress=False)
    assert not (tmp_path / "render.zarr").exists()


def _cli(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_trains_two_scenes_and_renders(tmp_path):
    a = make_scene(tmp_path / "a", frames=2, frame_hw=(36, 48), crop=(4, 3, 28, 42))
    b = make_scene(tmp_path / "b", frames=2, frame_hw=(44, 40), crop=(1, 6, 42, 28), video_dim=None, seed=1)
    zarr.open_group(str(b.clip_latents), mode="r+").attrs["autoencoder"] = dict(
        zarr.open_group(str(a.clip_latents), mode="r").attrs["autoencoder"]
    )
    out = tmp_path / "model" / "sbd.safetensors"
    train = _cli(
        "train",
        "--tokens", a.tokens, "--masks", a.masks, "--clip-latents", a.clip_latents, "--frames", a.frames,
        "--video-latents", a.video_latents,
        "--tokens", b.tokens, "--masks", b.masks, "--clip-latents", b.clip_latents, "--frames", b.frames,
        "--video-latents", "-",
        "--out", out, "--epochs", 2, "--batch-size", 2, "--warmup-epochs", 1, "--save-every", 1,
        "--features", 16, "--hidden-dim", 8, "--out-channels", 8, 16, 32, 32, "--video-hidden-dim", 8,
        "--threads", 1, "--quiet",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["video_dim"] == 6
    for name in ("sbd.safetensors", "train_log.parquet", "loss.png"):
        assert (tmp_path / "model" / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "model" / "sbd_checkpoints").iterdir()) == ["epoch_0001.safetensors", "epoch_0002.safetensors"]

    render = _cli("render", "--tokens", b.tokens, "--checkpoint", out, "--out", tmp_path / "render_b.zarr", "--quiet", "--threads", 1)
    assert render.returncode == 0, render.stderr
    group = zarr.open_group(str(tmp_path / "render_b.zarr"), mode="r")
    assert group["video"].shape == (2, 44, 40, 6) and group["lang_l"].shape == (2, 44, 40, 3)



def test_cli_missing_checkpoint_is_one_line_naming_file_and_config_key(tmp_path, capsys):
    from pipeline.__main__ import main

    src = make_scene(tmp_path / "a", frames=2, frame_hw=(36, 48), crop=(4, 3, 28, 42))
    code = main(["render", "--tokens", str(src.tokens), "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "r.zarr")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "sbd.checkpoint" in err and "nope.safetensors" in err
    assert not (tmp_path / "r.zarr").exists()
