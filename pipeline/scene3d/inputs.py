"""What the scene3d stage reads: the vocabulary, one mask level, and per-frame depth and cameras
(the scene's ground truth, or geometry.zarr's predictions mapped to frame pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.levels import MASK_LEVELS
from pipeline.scene3d.lift import FrameView


def read_vocabulary(value, *, config_key: str = "scene3d.vocabulary") -> list[str]:
    """A list of texts, or a text file with one per line (`#` comments); missing file: one line."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    p = Path(str(value))
    if not p.is_file():
        raise UserError(f"config error at `{config_key}`: vocabulary file {p} not found (expected a text file, one name per line)")
    words = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise UserError(f"config error at `{config_key}`: vocabulary file {p} holds no names")
    return list(dict.fromkeys(words))


def _depth_file(depth_dir: Path, name: str | None, source_index: int) -> Path | None:
    """The frame's depth file: named like the frame, else by its 1- or 0-based source index."""
    if name:
        cands = [depth_dir / f"{Path(name).stem}.npy"]
    else:
        cands = [depth_dir / f"{source_index + 1:06d}.npy", depth_dir / f"{source_index:06d}.npy"]
    return next((c for c in cands if c.is_file()), None)


def gt_views(scene: dict, height: int, width: int):
    """FrameViews from scene.json's ground-truth cameras and depth (at frame resolution)."""
    import cv2

    cams = scene.get("cameras")
    depth_dir = (scene.get("gt") or {}).get("depth_dir")
    if not cams or not depth_dir:
        raise UserError("config error at `scene3d.geometry`: `gt` needs ground-truth cameras and depth in scene.json "
                        f"(cameras: {'yes' if cams else 'no'}, gt.depth_dir: {depth_dir or 'no'}); use `predicted`")
    K = np.asarray(cams["intrinsics"], dtype=np.float64)
    E = np.asarray(cams["extrinsics"], dtype=np.float64)
    names = scene.get("frame_names") or []
    sources = scene.get("source_indices") or list(range(len(E)))
    rows, cols = np.arange(height), np.arange(width)
    for t in range(len(E)):
        f = _depth_file(Path(depth_dir), names[t] if t < len(names) else None, int(sources[t]))
        if f is None:
            depth = np.zeros((height, width), np.float32)
        else:
            depth = np.load(f).astype(np.float32).squeeze()
            if depth.shape != (height, width):
                depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
        valid = np.isfinite(depth) & (depth > 0)
        yield FrameView(t, depth, K[t], E[t], valid, rows, cols)


def predicted_views(geometry, height: int, width: int, confidence_percentile: float):
    """FrameViews from geometry.zarr: depth on the model's (resized, cropped) grid, mapped to frame pixels."""
    from pipeline.store import require_arrays

    require_arrays(geometry, ["depth", "intrinsics", "extrinsics"], what="geometry.zarr")
    attrs = dict(geometry.attrs)
    T = geometry["depth"].shape[0]
    transform = attrs.get("transform") or {}
    h, w = geometry["depth"].shape[1:3]
    top, left = (transform.get("crop") or [0, 0, h, w])[:2]
    rh, rw = transform.get("resize_to") or transform.get("source_size") or (height, width)
    rows = np.clip(np.floor((top + np.arange(h) + 0.5) * height / rh).astype(int), 0, height - 1)
    cols = np.clip(np.floor((left + np.arange(w) + 0.5) * width / rw).astype(int), 0, width - 1)
    has_conf = "depth_conf" in geometry
    for t in range(T):
        depth = np.asarray(geometry["depth"][t], dtype=np.float32).reshape(h, w)
        valid = np.isfinite(depth) & (depth > 0)
        if has_conf and confidence_percentile > 0 and valid.any():
            conf = np.asarray(geometry["depth_conf"][t], dtype=np.float32).reshape(h, w)
            valid &= conf >= np.percentile(conf[valid], confidence_percentile)
        yield FrameView(t, depth, np.asarray(geometry["intrinsics"][t], dtype=np.float64),
                        np.asarray(geometry["extrinsics"][t], dtype=np.float64), valid, rows, cols)


def frame_views(geometry_source: str, scene: dict, geometry, height: int, width: int, confidence_percentile: float):
    """(FrameViews of every frame, a line saying where depth and cameras came from)."""
    from pipeline.store import open_group

    if geometry_source == "gt":
        return gt_views(scene, height, width), "ground-truth depth and cameras of the scene (scene.json cameras, gt.depth_dir)"
    if geometry is None:
        raise UserError("config error at `scene3d.geometry`: `predicted` needs --geometry (geometry.zarr)")
    views = predicted_views(open_group(geometry, what="geometry"), height, width, confidence_percentile)
    return views, "predicted depth and cameras (geometry.zarr)"


def read_scene_json(scene_json: Path) -> dict:
    if not scene_json.is_file():
        raise UserError(f"scene.json not found: {scene_json}")
    return json.loads(scene_json.read_text())


class MaskLevel:
    """One level of masks.zarr/masks [4,T,H,W], read a frame at a time."""

    def __init__(self, array, level: int):
        self.array, self.level = array, level
        self.shape = tuple(array.shape[1:])

    def __getitem__(self, t: int) -> np.ndarray:
        return np.asarray(self.array[self.level, t])


def open_mask_level(masks, level: str) -> MaskLevel:
    from pipeline.store import open_group

    mgroup = open_group(masks, what="masks")
    if level not in MASK_LEVELS:
        raise UserError(f"config error at `scene3d.level`: {level!r} is not one of {', '.join(MASK_LEVELS)}")
    levels = list(dict(mgroup["masks"].attrs).get("levels", MASK_LEVELS))
    return MaskLevel(mgroup["masks"], levels.index(level))
