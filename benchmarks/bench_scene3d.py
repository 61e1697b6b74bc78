"""Cost of the scene3d stage at HyperNeRF size: lifting and the BEV render, per frame.

A synthetic room (floor, four walls, ceiling) seen by a camera that pans and moves along a line,
536x960 frames, 200 of them by default, with six object regions on the floor (one moving). Depth
is exact (ray casting against the room's planes). Measures seconds per frame for lifting
(back-projection, per-frame voxel downsampling, per-frame object boxes) and for the BEV (plan +
z-buffered splat of the fused cloud, once, reported per frame of video), the cloud's point count
before and after downsampling, and the peak resident memory of the process.

    python benchmarks/bench_scene3d.py [--out benchmarks/results/scene3d.json] [--frames 200] [--stride 1]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.scene3d import bev as bevmod  # noqa: E402
from pipeline.scene3d.lift import FrameView, lift_video  # noqa: E402

from _common import machine, write_result

H, W, FOCAL = 536, 960, 800.0
ROOM = (-4.0, 4.0, -3.0, 3.0, 0.0, 3.0)  # x0 x1 y0 y1 z0 z1, z up
OBJECTS = [(-2.5, -1.5, -2.0, -1.0), (0.5, 1.5, -2.5, -1.5), (2.0, 3.0, 0.0, 1.0), (-1.0, 0.0, 1.0, 2.0),
           (1.0, 2.0, 1.5, 2.5), (-3.5, -2.5, 1.0, 2.0)]  # floor footprints; the first one moves


def camera(t: int, n: int) -> np.ndarray:
    yaw = np.deg2rad(-40 + 80 * t / max(1, n - 1))
    centre = np.array([-1.0 + 2.0 * t / max(1, n - 1), -2.5, 1.6])
    forward = np.array([np.sin(yaw), np.cos(yaw), -0.35])
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return np.concatenate([R, (-R @ centre)[:, None]], 1)


def render(t: int, n: int, E: np.ndarray):
    K = np.array([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    dirs_cam = np.stack([(u - W / 2) / FOCAL, (v - H / 2) / FOCAL, np.ones_like(u)], -1)
    R = E[:, :3]
    centre = -R.T @ E[:, 3]
    dirs = dirs_cam @ R  # world, z component of the camera = 1
    best = np.full((H, W), np.inf)
    for axis, lo, hi in ((0, ROOM[0], ROOM[1]), (1, ROOM[2], ROOM[3]), (2, ROOM[4], ROOM[5])):
        for plane in (lo, hi):
            with np.errstate(divide="ignore", invalid="ignore"):
                s = (plane - centre[axis]) / dirs[..., axis]
            s[~np.isfinite(s) | (s <= 0)] = np.inf
            best = np.minimum(best, s)
    hit = centre + best[..., None] * dirs
    ids = np.full((H, W), -1, np.int64)
    on_floor = np.abs(hit[..., 2]) < 1e-6
    shift = 2.0 * t / max(1, n - 1)
    for k, (x0, x1, y0, y1) in enumerate(OBJECTS):
        dx = shift if k == 0 else 0.0
        inside = on_floor & (hit[..., 0] >= x0 + dx) & (hit[..., 0] < x1 + dx) & (hit[..., 1] >= y0) & (hit[..., 1] < y1)
        ids[inside] = k
    rgb = (np.abs(np.sin(hit * 3.0)) * 255).astype(np.uint8)
    return best.astype(np.float32), K, rgb, ids  # z depth = the ray parameter (camera z of dirs is 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scene3d.json"))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--voxel", type=float, default=0.02)
    parser.add_argument("--bev-size", type=int, default=512)
    args = parser.parse_args()
    n = args.frames
    cams = [camera(t, n) for t in range(n)]
    cache: dict[int, tuple] = {}

    def frame(t):
        if t not in cache:
            cache.clear()
            cache[t] = render(t, n, cams[t])
        return cache[t]

    synth = 0.0

    def views():
        nonlocal synth
        rows, cols = np.arange(H), np.arange(W)
        for t in range(n):
            t0 = time.perf_counter()
            depth, K, _, _ = frame(t)
            synth += time.perf_counter() - t0
            yield FrameView(t, depth, K, cams[t], np.isfinite(depth) & (depth > 0), rows, cols)

    start = time.perf_counter()
    lifted = lift_video(views(), lambda t: frame(t)[2], lambda t: frame(t)[3], voxel=args.voxel, stride=args.stride,
                        trim=0.02)
    lift_s = time.perf_counter() - start - synth
    t0 = time.perf_counter()
    E = np.asarray(cams)
    up, how = bevmod.estimate_up(lifted.points, E, method="floor", threshold=2 * args.voxel)
    up_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = bevmod.plan_bev(lifted.points, bevmod.bev_basis(up, E), size=args.bev_size)
    img, _ = bevmod.render_bev(lifted.points, lifted.colors, plan, radius=1)
    bev_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "frames": n, "height": H, "width": W, "pixel_stride": args.stride, "voxel_size": args.voxel,
        "lift_seconds_per_frame": lift_s / n, "lift_seconds_total": lift_s,
        "up_axis_seconds": up_s, "up_axis_error_deg": float(np.degrees(np.arccos(np.clip(up @ [0, 0, 1.0], -1, 1)))),
        "up_from": how,
        "bev_seconds_total": bev_s, "bev_seconds_per_frame": bev_s / n, "bev_size": [plan.height, plan.width],
        "points_before_downsampling": int(lifted.raw_points), "points_after_downsampling": int(len(lifted.points)),
        "objects_tracked": len(lifted.frame_boxes), "peak_rss_mb": peak_mb,
        "synthesis_seconds_excluded": synth, "machine": machine(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
