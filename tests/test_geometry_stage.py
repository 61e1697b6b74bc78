import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import store
from pipeline.errors import UserError
from pipeline.geometry import stage as geometry_stage
from pipeline.geometry.inputs import apply_transform, open_frames, plan_transform
from pipeline.geometry.runner import run_geometry
from pipeline.geometry.stage import build_model, compute_geometry

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_embed": "conv"}


def write_frames_zarr(path, n=4, h=60, w=80, seed=0):
    group = store.create_group(path)
    rgb = store.frame_array(group, "rgb", (n, h, w, 3), "uint8")
    data = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    rgb[:] = data
    names = [f"{i + 1:06d}" for i in range(n)]
    group.attrs.update({"frame_names": names, "source_indices": [3 * i for i in range(n)], "fps": 10})
    return path, data


def test_zarr_layout_and_attrs(tmp_path):
    frames, data = write_frames_zarr(tmp_path / "frames.zarr")
    summary = compute_geometry(frames, tmp_path / "out", random_init=7, architecture=TINY, layers=[0, 1, 3],
                               mode="stream", cache_window=2, token_dtype="float16")
    tokens = store.open_group(tmp_path / "out" / "tokens.zarr")
    geometry = store.open_group(tmp_path / "out" / "geometry.zarr")
    H, W, h, w = 56, 70, 4, 5  # 60x80 centre-cropped to multiples of 14
    assert summary["image_size"] == [H, W]
    assert sorted(tokens.array_keys()) == ["camera", "layer_00", "layer_01", "layer_03"]
    for name in ("layer_00", "layer_01", "layer_03"):
        arr = tokens[name]
        assert arr.shape == (4, h, w, 64) and str(arr.dtype) == "float16" and arr.chunks == (1, h, w, 64)
    assert tokens["camera"].shape == (4, 64)
    a = dict(tokens.attrs)
    assert a["image_size"] == [H, W] and a["patch_size"] == 14 and a["layers"] == [0, 1, 3]
    assert a["mode"] == "stream" and a["cache_window"] == 2 and a["random_init"] == 7
    assert a["transform"] == {"source_size": [60, 80], "resize_to": None, "crop": [2, 5, H, W]}
    assert a["frame_names"] == ["000001", "000002", "000003", "000004"]
    assert a["source_indices"] == [0, 3, 6, 9]
    assert a["provenance"]["stage"] == "geometry" and a["provenance"]["weights"] == {"kind": "random", "seed": 7}
    shapes = {k: geometry[k].shape for k in geometry.array_keys()}
    assert shapes == {"depth": (4, H, W), "depth_conf": (4, H, W), "pose_enc": (4, 9),
                      "extrinsics": (4, 3, 4), "intrinsics": (4, 3, 3)}
    assert all(geometry[k].chunks[0] == 1 for k in shapes)
    assert dict(geometry.attrs)["frame_names"] == a["frame_names"]

    # the stored values are the model's: same seed, same cropped frames, patch tokens on the grid
    model, _ = build_model(random_init=7, architecture=TINY, layers=[0, 1, 3])
    crop = [d[2 : 2 + H, 5 : 5 + W] for d in data]
    expected = list(run_geometry(model.eval(), crop, mode="stream", cache_window=2, keep_layers=[0, 1, 3]))
    for t, out in enumerate(expected):
        patch = out.tokens[3][5:].reshape(h, w, 64).numpy().astype(np.float16)
        # a separately built model: float noise may flip a float16 rounding, nothing more
        np.testing.assert_allclose(np.asarray(tokens["layer_03"][t], np.float32), patch.astype(np.float32), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(geometry["depth"][t], out.depth.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tokens["camera"][t], out.camera_token.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(geometry["pose_enc"][t], out.pose_enc.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_stage_equals_stream_stage_and_offline_differs(tmp_path):
    frames, _ = write_frames_zarr(tmp_path / "frames.zarr", n=5, h=56, w=56)
    tokens, geometry = {}, {}
    for mode in ("stream", "batch", "offline"):
        compute_geometry(frames, tmp_path / mode, random_init=1, architecture=TINY, mode=mode, cache_window=2,
                         chunk_size=3)
        tokens[mode] = store.open_group(tmp_path / mode / "tokens.zarr")
        geometry[mode] = store.open_group(tmp_path / mode / "geometry.zarr")
    s, b, o = (tokens[m]["layer_03"][:].astype(np.float32) for m in ("stream", "batch", "offline"))
    np.testing.assert_allclose(s, b, atol=2e-3)  # float16 storage
    for name, group in (("camera", tokens), ("pose_enc", geometry), ("depth", geometry)):
        s, b, o = (group[m][name][:] for m in ("stream", "batch", "offline"))
        np.testing.assert_allclose(s, b, atol=1e-5, rtol=1e-5)
        if name != "depth":  # a tiny random depth head barely reacts to the small token changes
            assert np.abs(s - o).max() > 1e-4, name
    assert dict(tokens["offline"].attrs)["cache_window"] is None


def test_point_maps_shape_dtype_chunking_and_values(tmp_path):
    frames, data = write_frames_zarr(tmp_path / "frames.zarr", n=3)
    compute_geometry(frames, tmp_path / "out", random_init=7, architecture=TINY, cache_window=2, points=True)
    geometry = store.open_group(tmp_path / "out" / "geometry.zarr")
    H, W = 56, 70
    points, conf = geometry["world_points"], geometry["world_points_conf"]
    assert points.shape == (3, H, W, 3) and str(points.dtype) == "float32" and points.chunks == (1, H, W, 3)
    assert conf.shape == (3, H, W) and str(conf.dtype) == "float32" and conf.chunks == (1, H, W)
    model, _ = build_model(random_init=7, architecture=TINY)
    crop = [d[2 : 2 + H, 5 : 5 + W] for d in data]
    expected = list(run_geometry(model.eval(), crop, mode="stream", cache_window=2, points=True))
    np.testing.assert_allclose(points[:], np.stack([o.world_points.numpy() for o in expected]), rtol=1e-6)
    np.testing.assert_allclose(conf[:], np.stack([o.world_points_conf.numpy() for o in expected]), rtol=1e-6)
    assert dict(store.open_group(tmp_path / "out" / "tokens.zarr").attrs)["provenance"]["params"]["points"] is True


def test_failed_run_leaves_no_output(tmp_path, monkeypatch):
    frames, _ = write_frames_zarr(tmp_path / "frames.zarr")

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(geometry_stage, "run_geometry", broken)
    with pytest.raises(RuntimeError):
        compute_geometry(frames, tmp_path / "out", random_init=0, architecture=TINY)
    assert not (tmp_path / "out" / "tokens.zarr").exists() and not (tmp_path / "out" / "geometry.zarr").exists()
    assert not list((tmp_path / "out").glob("*.tmp-*"))


def test_preprocessing_plan():
    same = plan_transform(392, 518, max_size=518)
    assert same.resize_to is None and same.crop == (0, 0, 392, 518)
    img = np.random.default_rng(0).integers(0, 256, (392, 518, 3), dtype=np.uint8)
    assert np.array_equal(apply_transform(img, same), img)
    big = plan_transform(960, 536, max_size=518)  # portrait HyperNeRF 2x frames
    assert big.resize_to == (518, 289) and big.crop == (0, 4, 518, 280)
    assert apply_transform(np.zeros((960, 536, 3), np.uint8), big).shape == (518, 280, 3)
    keep = plan_transform(960, 536, max_size=960)  # upstream 4DLangVGGT: no resize, 532x952
    assert keep.resize_to is None and keep.crop == (4, 2, 952, 532)


def _png(path, size, mode="RGB"):
    Image.new(mode, size, (10, 20, 30, 128)[: len(mode)]).save(path)


def test_image_folder_input(tmp_path):
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(3):
        _png(folder / f"{i + 1:06d}.png", (70, 56))
    _png(folder / "000004.png", (70, 56), "RGBA")
    (folder / "notes.txt").write_text("not an image")
    src = open_frames(folder)
    assert len(src) == 4 and src.size == (56, 70) and src.frame_names[0] == "000001"
    assert src.source_indices == [0, 1, 2, 3]
    last = list(src.frames())[-1]
    assert last.shape == (56, 70, 3) and last.dtype == np.uint8
    # RGBA is blended onto white, as upstream's loader does
    assert np.allclose(last[0, 0], [10 * 0.5 + 255 * 0.5, 20 * 0.5 + 255 * 0.5, 30 * 0.5 + 255 * 0.5], atol=2)


def test_bad_inputs_get_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images in"):
        open_frames(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _png(mixed / "a.png", (70, 56))
    _png(mixed / "b.png", (84, 56))
    with pytest.raises(UserError, match="different sizes"):
        open_frames(mixed)
    with pytest.raises(UserError, match="frames not found"):
        open_frames(tmp_path / "absent.zarr")
    with pytest.raises(UserError, match="explicit small architecture"):
        build_model(random_init=0, architecture={"embed_dim": 32})
    with pytest.raises(UserError, match="not divisible"):
        build_model(random_init=0, architecture={"embed_dim": 30, "depth": 2, "num_heads": 4})
    frames, _ = write_frames_zarr(tmp_path / "frames.zarr")
    with pytest.raises(UserError, match="token layers"):
        compute_geometry(frames, tmp_path / "out", random_init=0, architecture=TINY, layers=[0, 9])
    with pytest.raises(UserError, match="cache window"):
        compute_geometry(frames, tmp_path / "out", random_init=0, architecture=TINY, cache_window=-1)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", "geometry", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_smoke(tmp_path):
    frames, _ = write_frames_zarr(tmp_path / "frames.zarr", n=3)
    ok = _cli("--frames", frames, "--out", tmp_path / "out", "--random-init", 0, "--embed-dim", 32, "--depth", 4,
              "--heads", 2, "--patch-embed", "conv", "--layers", 0, 1, 2, 3, "--cache-window", 2, "--no-progress")
    assert ok.returncode == 0, ok.stderr
    tokens = store.open_group(tmp_path / "out" / "tokens.zarr")
    layers = ["layer_00", "layer_01", "layer_02", "layer_03"]
    # the default store is int8: codes with a float16 scale per token beside them
    assert sorted(tokens.array_keys()) == sorted(["camera", *layers, *(f"{n}_scale" for n in layers)])
    assert str(tokens["layer_00"].dtype) == "int8" and tokens["layer_00"].shape[0] == 3
    page4d = _cli("--frames", frames, "--out", tmp_path / "page4d", "--random-init", 0, "--embed-dim", 32, "--depth", 4,
                  "--heads", 2, "--backbone", "page4d", "--page4d-mask", "--points", "--token-dtype", "int4",
                  "--mode", "offline", "--dtype", "float32", "--no-progress")
    # float32: torch's bfloat16 masked-SDPA kernel on CPU fails under ATEN_CPU_CAPABILITY=avx2 on an
    # AVX512 machine ("pack_vnni2 is only supported when avx512 is supported"), how CI's CPUs are emulated
    assert page4d.returncode == 0, page4d.stderr
    geometry = store.open_group(tmp_path / "page4d" / "geometry.zarr")
    assert {"dynamic_mask", "world_points", "world_points_conf"} <= set(geometry.array_keys())
    assert dict(store.open_group(tmp_path / "page4d" / "tokens.zarr").attrs)["token_dtype"] == "int4"
    bad = _cli("--frames", frames, "--out", tmp_path / "out2", "--checkpoint", tmp_path / "missing.safetensors")
    assert bad.returncode == 2
    assert "geometry.checkpoint" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "out2" / "tokens.zarr").exists()
