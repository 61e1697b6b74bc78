"""Back-projection of masked pixels to world points, voxel downsampling and axis-aligned boxes.

Cameras follow the project's convention: intrinsics K at the depth map's resolution, extrinsics
E = [R | t] world -> camera (OpenCV axes), pixel (x, y) has its centre at (x + 0.5, y + 0.5).
Boxes are (centre xyz, size xyz) in that world frame, as GPT4Scene's `locs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def back_project(depth: np.ndarray, K: np.ndarray, E: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """World points [N,3] of pixels (ys, xs) of a z-depth map."""
    K = np.asarray(K, dtype=np.float64)
    E = np.asarray(E, dtype=np.float64)
    z = depth[ys, xs].astype(np.float64)
    pix = np.stack([xs + 0.5, ys + 0.5, np.ones(len(xs))], 0)
    cam = np.linalg.solve(K, pix) * z  # [3,N]
    world = E[:, :3].T @ (cam - E[:, 3:4])
    return world.T


def project(points: np.ndarray, K: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [N,2] (x, y, continuous) and z depth [N] of world points."""
    cam = np.asarray(E)[:, :3] @ points.T + np.asarray(E)[:, 3:4]
    uv = (np.asarray(K) @ cam)[:2] / np.where(np.abs(cam[2]) < 1e-12, 1e-12, cam[2])
    return uv.T, cam[2]


def voxel_downsample(points: np.ndarray, voxel: float, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """One point per occupied voxel: the mean position and mean of each float `values` array;
    integer arrays keep the value of the voxel's first point."""
    if len(points) == 0 or voxel <= 0:
        return (points, *values)
    keys = np.floor(points / voxel).astype(np.int64)
    keys -= keys.min(0)
    span = keys.max(0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    uniq, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)[:, None]

    def mean(a):
        a2 = a.reshape(len(a), -1).astype(np.float64)
        out = np.stack([np.bincount(inverse, weights=a2[:, j], minlength=len(uniq)) for j in range(a2.shape[1])], 1)
        return (out / counts).reshape((len(uniq), *a.shape[1:]))

    outs = [mean(points).astype(points.dtype)]
    for a in values:
        outs.append(a[first] if np.issubdtype(a.dtype, np.integer) else mean(a).astype(a.dtype))
    return tuple(outs)


def fit_box(points: np.ndarray, trim: float = 0.0) -> np.ndarray | None:
    """Axis-aligned box (cx, cy, cz, sx, sy, sz) of points, each axis cut to its [trim, 1 - trim]
    quantiles (robust to flying pixels at mask borders); None for no points."""
    if len(points) == 0:
        return None
    if trim > 0 and len(points) >= 20:
        lo, hi = np.quantile(points, [trim, 1.0 - trim], axis=0)
    else:
        lo, hi = points.min(0), points.max(0)
    return np.concatenate([(lo + hi) / 2, hi - lo])


def union_box(boxes: list[np.ndarray]) -> np.ndarray | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    b = np.asarray(boxes)
    lo = (b[:, :3] - b[:, 3:] / 2).min(0)
    hi = (b[:, :3] + b[:, 3:] / 2).max(0)
    return np.concatenate([(lo + hi) / 2, hi - lo])


@dataclass
class FrameView:
    """One frame's depth and camera, and where its depth pixels sit in the frame (for masks, colours)."""

    t: int
    depth: np.ndarray  # [h,w] z depth
    K: np.ndarray  # [3,3] at depth resolution
    E: np.ndarray  # [3,4] world -> camera
    valid: np.ndarray  # [h,w] bool: depth usable (finite, > 0, confident)
    rows: np.ndarray  # [h] frame row of each depth row
    cols: np.ndarray  # [w] frame column of each depth column


@dataclass
class Lifted:
    """What lifting a video gives: the fused cloud and each object's points and boxes."""

    points: np.ndarray  # [N,3] float32, voxel-downsampled cloud
    colors: np.ndarray  # [N,3] uint8
    labels: np.ndarray  # [N] int32 large-level object id (-1 none)
    frames: np.ndarray  # [N] int32 frame of the voxel's first point
    raw_points: int  # points before downsampling
    voxel: float
    frame_boxes: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # id -> t -> box
    object_points: dict[int, int] = field(default_factory=dict)  # id -> downsampled point count
    empty_frames: list[int] = field(default_factory=list)  # frames without any valid depth


def lift_video(views, images, id_maps, *, voxel: float | None, stride: int = 1, trim: float = 0.02,
               min_points: int = 5, progress=None) -> Lifted:
    """Lift every frame: `views` FrameView per frame, `images(t)` [H,W,3] uint8 and `id_maps(t)` [H,W]
    int ids (-1 none) at frame resolution. Voxel None: 1% of the first valid frame's median depth."""
    chunks_p, chunks_c, chunks_l, chunks_f = [], [], [], []
    frame_boxes: dict[int, dict[int, np.ndarray]] = {}
    empty, raw = [], 0
    for view in views:
        valid = view.valid.copy()
        if stride > 1:
            keep = np.zeros_like(valid)
            keep[::stride, ::stride] = True
            valid &= keep
        ys, xs = np.nonzero(valid)
        if len(ys) == 0:
            empty.append(view.t)
            if progress is not None:
                progress.update(1)
            continue
        if voxel is None:
            voxel = float(np.median(view.depth[ys, xs])) / 100.0
        world = back_project(view.depth, view.K, view.E, ys, xs)
        fy, fx = view.rows[ys], view.cols[xs]
        rgb = images(view.t)[fy, fx]
        ids = id_maps(view.t)[fy, fx].astype(np.int32)
        raw += len(world)
        for k in np.unique(ids[ids >= 0]).tolist():
            pts = world[ids == k]
            if len(pts) >= min_points:
                frame_boxes.setdefault(int(k), {})[view.t] = fit_box(pts, trim)
        p, c, l = voxel_downsample(world.astype(np.float32), voxel, rgb.astype(np.float32), ids)
        chunks_p.append(p)
        chunks_c.append(c)
        chunks_l.append(l)
        chunks_f.append(np.full(len(p), view.t, np.int32))
        if progress is not None:
            progress.update(1)
    if not chunks_p:
        z3 = np.zeros((0, 3), np.float32)
        return Lifted(z3, np.zeros((0, 3), np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32), 0,
                      float(voxel or 0.0), {}, {}, empty)
    pts, cols, labels, frames = (np.concatenate(c) for c in (chunks_p, chunks_c, chunks_l, chunks_f))
    # downsample per object so an object's voxels keep their label
    outs = []
    for k in np.unique(labels).tolist():
        sel = labels == k
        outs.append(voxel_downsample(pts[sel], voxel, cols[sel], labels[sel], frames[sel]))
    pts, cols, labels, frames = (np.concatenate([o[i] for o in outs]) for i in range(4))
    counts = {int(k): int(n) for k, n in zip(*np.unique(labels[labels >= 0], return_counts=True))}
    return Lifted(pts.astype(np.float32), np.clip(cols + 0.5, 0, 255).astype(np.uint8), labels.astype(np.int32),
                  frames.astype(np.int32), raw, float(voxel), frame_boxes, counts, empty)


def object_box(lifted: Lifted, k: int, trim: float = 0.02) -> np.ndarray | None:
    """An object's box over the whole video, from its downsampled points."""
    return fit_box(lifted.points[lifted.labels == k].astype(np.float64), trim)


def write_ply(path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY: float x, y, z and uchar red, green, blue per vertex (atomic write)."""
    from pipeline.store import atomic_path

    n = len(points)
    header = ("ply\nformat binary_little_endian 1.0\ncomment langfield4d scene3d cloud\n"
              f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n").encode()
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    for i, a in enumerate("xyz"):
        rec[a] = points[:, i]
    for i, a in enumerate("rgb"):
        rec[a] = colors[:, i]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(rec.tobytes())


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """Points and colours of a PLY written by `write_ply`."""
    data = open(path, "rb").read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    n = int(next(line.split()[-1] for line in data[:end].decode().splitlines() if line.startswith("element vertex")))
    rec = np.frombuffer(data[end:], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")], count=n)
    return np.stack([rec["x"], rec["y"], rec["z"]], 1), np.stack([rec["r"], rec["g"], rec["b"]], 1)
