"""Writing tokens.zarr and geometry.zarr as the frames stream out of the model: arrays, the
per-frame writer, and the attrs that say how the frames were transformed and by which weights."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from pipeline import store


def shared_attrs(source, transform, cfg, params: dict, prov: dict) -> dict:
    """The attrs tokens.zarr and geometry.zarr both carry."""
    H, W = transform.image_size
    return {"image_size": [H, W], "grid": [H // cfg.patch_size, W // cfg.patch_size], "frame_names": source.frame_names,
            "source_indices": source.source_indices, "mode": params["mode"], "cache_window": params["cache_window"],
            "backbone": params["backbone"], "transform": transform.to_dict(), "provenance": prov}


def _token_attrs(shared: dict, cfg, params: dict, codec, weights: dict, prov: dict) -> dict:
    attrs = {**shared, "patch_size": cfg.patch_size, "layers": params["layers"], "dtype": params["dtype"],
             "token_dtype": params["token_dtype"], "token_codec": codec.to_attrs()}
    if weights["kind"] == "checkpoint":
        attrs["checkpoint_sha256"] = prov["checkpoints"]["geometry"]["sha256"]
    else:
        attrs["random_init"] = weights["seed"]
    return attrs


def _geometry_attrs(shared: dict, cfg, points: bool) -> dict:
    attrs = {**shared, "extrinsics": "OpenCV camera-from-world; world = camera of frame 0",
             "pose_enc": "translation(3), quaternion xyzw(4), field of view h, w (radians)"}
    if points:
        attrs["world_points"] = "x, y, z in the world frame (= camera of frame 0), from the point head"
    if cfg.dynamic_mask:
        attrs["dynamic_mask"] = ("PAGE-4D per-patch dynamic mask on the token grid, "
                                 "sigmoid(logit) - 0.5 in (-0.5, 0.5), higher = more dynamic")
    return attrs


def _geometry_arrays(geometry, T: int, H: int, W: int, grid: tuple[int, int], *, points: bool, dynamic_mask: bool) -> dict:
    geo = {
        "depth": store.frame_array(geometry, "depth", (T, H, W), "float32"),
        "depth_conf": store.frame_array(geometry, "depth_conf", (T, H, W), "float32"),
        "pose_enc": store.frame_array(geometry, "pose_enc", (T, 9), "float32"),
        "extrinsics": store.frame_array(geometry, "extrinsics", (T, 3, 4), "float32"),
        "intrinsics": store.frame_array(geometry, "intrinsics", (T, 3, 3), "float32"),
    }
    if points:
        geo["world_points"] = store.frame_array(geometry, "world_points", (T, H, W, 3), "float32")
        geo["world_points_conf"] = store.frame_array(geometry, "world_points_conf", (T, H, W), "float32")
    if dynamic_mask:
        geo["dynamic_mask"] = store.frame_array(geometry, "dynamic_mask", (T, *grid), "float32")
    return geo


def _write_frames(outputs, patch_start: int, tok_layers: dict, camera, geo: dict, grid: tuple[int, int], C2: int) -> None:
    """Each frame's kept token layers (patch tokens only), camera token and geometry, as they stream out."""
    h, w = grid
    for out in outputs:
        t = out.index
        for i, layer in tok_layers.items():
            layer[t] = out.tokens[i][patch_start:].reshape(h, w, C2).numpy()
        camera[t] = out.camera_token.numpy()
        for name, arr in geo.items():
            arr[t] = getattr(out, name).numpy()


def write_stores(out_dir: Path, stream, model, T: int, size: tuple[int, int], codec, params: dict, shared: dict,
                  weights: dict, prov: dict) -> tuple[float, int]:
    """Write tokens.zarr and geometry.zarr (both or neither) as frames stream out; (seconds, float16 overflow)."""
    cfg = model.config
    H, W = size
    grid = (H // cfg.patch_size, W // cfg.patch_size)
    C2 = 2 * cfg.embed_dim
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tokens = store.create_group(stack.enter_context(store.atomic_path(out_dir / "tokens.zarr")))
        geometry = store.create_group(stack.enter_context(store.atomic_path(out_dir / "geometry.zarr")))
        tok_layers = {i: codec.create(tokens, i, T, *grid, C2) for i in params["layers"]}
        camera = store.frame_array(tokens, "camera", (T, C2), "float32")
        geo = _geometry_arrays(geometry, T, H, W, grid, points=params["points"], dynamic_mask=cfg.dynamic_mask)
        _write_frames(stream, model.patch_start, tok_layers, camera, geo, grid, C2)
        seconds = time.perf_counter() - start
        overflow = sum(layer.overflow for layer in tok_layers.values())
        tokens.attrs.update({**_token_attrs(shared, cfg, params, codec, weights, prov), "float16_overflow": overflow})
        geometry.attrs.update(_geometry_attrs(shared, cfg, params["points"]))
    return seconds, overflow
