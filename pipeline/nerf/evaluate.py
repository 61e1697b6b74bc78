"""Image metrics of the radiance field's held-out renders, with two baselines -> nerf/metrics.parquet.

For each held-out frame (nerf_render.zarr), against the real frame (frames.zarr):
- `nerf`: the radiance field's render;
- `copy_nearest`: the nearest training frame in time, copied unchanged;
- `reproject_depth`: that frame forward-warped into the held-out camera with the geometry
  stage's depth (scaled to the cameras in use as the depth range is), nearest surface winning;
  pixels no source pixel lands on keep the copied frame's colour.
PSNR = -10 log10(MSE) and SSIM (`skimage.metrics`, on [0, 1] RGB, channel axis last: the
formulas MVSNeRF's evaluation uses). LPIPS (VGG, images scaled to [-1, 1]) only when a local VGG16
backbone file is given (`nerf.lpips_backbone`; torchvision `features.N.*` keys, .safetensors or
.pth); LPIPS weights are never downloaded, so without one (or without the `lpips` package) the
LPIPS rows are NaN with the reason in `note` and the report shows "n/a". Depth: the rendered
depth against the scene's ground-truth depth where it has one (no alignment, and per-frame median
scaling). Rows per frame (`aggregation` none) and a mean row per method (`frame_mean`), long format
as the evaluation stage's; `strip.png` shows held-out / rendered / baseline images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import store
from pipeline.errors import UserError
from pipeline.nerf.data import SceneData, SceneSources
from pipeline.nerf.image_metrics import Lpips, psnr, ssim

METHODS = ("nerf", "copy_nearest", "reproject_depth")
IMAGE_METRICS = ("psnr", "ssim", "lpips")
UNITS = {"psnr": "dB", "ssim": "ratio", "lpips": "distance"}
TASK, DEPTH_TASK = "novel_view", "novel_view_depth"


# ----------------------------------------------------------------------------- baselines
def reproject(src: np.ndarray, depth: np.ndarray, K_s, E_s, K_t, E_t, fill: np.ndarray) -> tuple[np.ndarray, float]:
    """Forward-warp `src` [H, W, 3] with its depth [H, W] into the target camera (z-buffered);
    returns the image and the share of target pixels a source pixel landed on (the rest = `fill`)."""
    H, W = depth.shape
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    z = depth.reshape(-1).astype(np.float64)
    ok = np.isfinite(z) & (z > 0)
    cam = (pix @ np.linalg.inv(K_s).T) * z[:, None]
    world = (cam - E_s[:3, 3]) @ E_s[:3, :3]  # R^T (x - t)
    tgt = world @ E_t[:3, :3].T + E_t[:3, 3]
    zt = tgt[:, 2]
    ok &= zt > 1e-6
    uv = (tgt @ K_t.T)[:, :2] / np.where(ok, zt, 1.0)[:, None]
    col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    ok &= (col >= 0) & (col < W) & (row >= 0) & (row < H)
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(-zt[idx], kind="stable")]  # far first: the nearest surface is written last and wins
    out = fill.reshape(-1, 3).copy()
    hit = np.zeros(H * W, bool)
    target = row[order] * W + col[order]
    out[target] = src.reshape(-1, 3)[order]
    hit[target] = True
    return out.reshape(H, W, 3), float(hit.mean())


def geometry_depth_in_frame(scene: SceneData, t: int) -> np.ndarray:
    """The geometry stage's depth of frame t on the frame's pixels, in the scale of the cameras in use."""
    import cv2

    from pipeline.nerf.data import centre_spread

    geo = scene.geometry
    depth = np.asarray(geo["depth"][t], dtype=np.float32).squeeze()
    transform = dict(geo.attrs).get("transform") or {}
    from pipeline.sbd.data import crop_box_in_frame

    top, left, h, w = crop_box_in_frame(transform, (scene.height, scene.width))
    full = np.zeros((scene.height, scene.width), np.float32)
    full[top : top + h, left : left + w] = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    if scene.camera_source == "scene":
        geo_spread = centre_spread(np.asarray(geo["extrinsics"][:], dtype=np.float64))
        full *= centre_spread(scene.extrinsics) / max(geo_spread, 1e-12)
    return full


def _gt_depth(scene: SceneData, t: int) -> np.ndarray | None:
    gt = (scene.scene_json.get("gt") or {}).get("depth_dir")
    if not gt:
        return None
    names = scene.scene_json.get("frame_names") or []
    indices = scene.scene_json.get("source_indices") or list(range(scene.num_frames))
    cands = ([Path(gt) / (Path(names[t]).stem + ".npy")] if t < len(names) else []) + [
        Path(gt) / f"{indices[t] + 1:06d}.npy", Path(gt) / f"{indices[t]:06d}.npy"]  # fmt: skip
    found = next((c for c in cands if c.is_file()), None)
    return None if found is None else np.load(found).astype(np.float32)


# ----------------------------------------------------------------------------- the stage
def _row(**kw) -> dict[str, Any]:
    base = {"dataset": "", "scene": "", "task": TASK, "query": None, "level": None, "frame": None, "metric": "",
            "value": float("nan"), "aggregation": "none", "variant": None, "threshold": None, "n_items": 1,
            "unit": None, "note": None}  # fmt: skip
    base.update(kw)
    return base


def strip_figure(path: str | Path, panels: list[tuple[int, list[tuple[str, np.ndarray]]]]) -> None:
    """A grid: one row per held-out frame, columns held-out / rendered / baselines, with titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(panels), len(panels[0][1])
    h, w = panels[0][1][0][1].shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.6 * h / w + 0.3), dpi=100, squeeze=False)
    for r, (t, images) in enumerate(panels):
        for c, (title, image) in enumerate(images):
            ax = axes[r][c]
            ax.imshow(np.clip(image, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title} (frame {t})" if c == 0 else title, fontsize=8)
    fig.tight_layout()
    with store.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _open_render(render, weights, sources: SceneSources, scene_name: str):
    """(render group, its attrs, the scene as the weights split it, held-out frames); refused if they disagree."""
    from pipeline.nerf.model import load_nerf
    from pipeline.nerf.render import scene_for_weights

    group = store.open_group(render, what="nerf_render.zarr")
    store.require_arrays(group, ["rgb", "depth"], what=f"nerf_render.zarr {render}")
    attrs = dict(group.attrs)
    _, meta = load_nerf(weights, "cpu")
    scene = scene_for_weights(sources, meta, scene_name or None)
    frames = [int(t) for t in attrs["frames"]]
    if frames != scene.held_out:
        raise UserError(f"{render} holds frames {frames} but the weights hold out {scene.held_out}; rerun nerf-render")
    return group, attrs, scene, frames


def _frame_images(scene: SceneData, group, attrs, k: int, t: int):
    """(the held-out frame, {method: image}, nearest training frame, reprojected share) of held-out frame k (= t)."""
    gt = scene.image(t)
    nearest = int(attrs["sources"][k][0])
    copy = scene.image(nearest)
    reproj, coverage = reproject(copy, geometry_depth_in_frame(scene, nearest), scene.intrinsics[nearest],
                                 scene.extrinsics[nearest], scene.intrinsics[t], scene.extrinsics[t], copy)  # fmt: skip
    images = {"nerf": np.asarray(group["rgb"][k], np.float32) / 255.0, "copy_nearest": copy, "reproject_depth": reproj}
    return gt, images, nearest, coverage


def _image_rows(base: dict, t: int, gt, images: dict, metric_lpips: Lpips, nearest: int, coverage: float) -> list[dict]:
    rows = []
    for method, image in images.items():
        values = {"psnr": psnr(gt, image), "ssim": ssim(gt, image),
                  "lpips": float("nan") if metric_lpips.reason else metric_lpips(gt, image)}  # fmt: skip
        for metric, value in values.items():
            note = metric_lpips.reason if metric == "lpips" else None
            if method == "reproject_depth" and metric == "psnr":
                note = f"{coverage:.3f} of the pixels reprojected, the rest copied"
            elif method != "nerf" and metric == "psnr":
                note = f"source frame {nearest}"
            rows.append(_row(**base, frame=t, metric=metric, value=value, variant=method, unit=UNITS[metric], note=note))
    return rows


def _mean_rows(frame_rows: list[dict], base: dict) -> list[dict]:
    """One `frame_mean` row per (method, metric) over the finite per-frame values."""
    import pandas as pd

    rows = []
    for (method, metric), grp in pd.DataFrame(frame_rows).groupby(["variant", "metric"], sort=False):
        values = grp["value"].to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        rows.append(_row(**base, metric=metric, value=float(values[ok].mean()) if ok.any() else float("nan"),
                         aggregation="frame_mean", variant=method, n_items=int(ok.sum()), unit=UNITS[metric],
                         note=grp["note"].iloc[0] if metric == "lpips" else None))  # fmt: skip
    return rows


def _depth_rows(depth_pairs: list[tuple[np.ndarray, np.ndarray]], base: dict, max_depth: float) -> list[dict]:
    """Rendered against ground-truth depth over the sequence, unaligned and median-scaled."""
    from pipeline.evaluate.geometry_metrics import sequence_depth_metrics

    rows = []
    for align in ("none", "median"):
        m = sequence_depth_metrics([p for p, _ in depth_pairs], [g for _, g in depth_pairs], align=align, max_depth=max_depth)
        n = int(m.pop("valid_pixels"))
        for metric in ("abs_rel", "rmse", "delta_1.25"):
            rows.append(_row(**base, task=DEPTH_TASK, metric=metric, value=m[metric], aggregation="sequence",
                             variant=f"nerf/{align}", n_items=n, unit="depth" if metric == "rmse" else "ratio"))  # fmt: skip
    return rows


def _write_table(out, rows: list[dict], *, render, weights, sources: SceneSources, lpips_backbone, strip_frames: int,
                 max_depth: float):  # fmt: skip
    import pandas as pd

    table = pd.DataFrame(rows)
    table["frame"] = table["frame"].astype("Int64")
    table["n_items"] = table["n_items"].astype("Int64")
    prov = store.provenance("nerf-evaluate", {"lpips_backbone": lpips_backbone, "strip_frames": strip_frames,
                                              "max_depth": max_depth},
                            {"render": render, "weights": weights, "frames": sources.frames, "geometry": sources.geometry,
                             "scene_json": sources.scene_json},
                            checkpoints={"lpips_backbone": lpips_backbone})  # fmt: skip
    store.write_parquet(out, table, provenance=prov)
    return table


def evaluate_novel_views(render: str | Path, weights: str | Path, sources: SceneSources, out: str | Path, *,
                         strip: str | Path | None = None, dataset: str = "", scene_name: str = "",
                         lpips_backbone: str | None = None, strip_frames: int = 4, max_depth: float = 70.0,
                         device: str = "cpu", log=print) -> "pd.DataFrame":  # noqa: F821  # fmt: skip
    group, attrs, scene, frames = _open_render(render, weights, sources, scene_name)
    info = scene.scene_json
    base = {"dataset": dataset or info.get("dataset", ""), "scene": scene_name or info.get("scene", scene.name)}
    metric_lpips = Lpips(lpips_backbone, device)
    if metric_lpips.reason:
        log(f"note: LPIPS not evaluated: {metric_lpips.reason}")
    rows: list[dict] = []
    panels = []
    depth_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for k, t in enumerate(frames):
        gt, images, nearest, coverage = _frame_images(scene, group, attrs, k, t)
        rows += _image_rows(base, t, gt, images, metric_lpips, nearest, coverage)
        if len(panels) < strip_frames:
            panels.append((t, [("held-out", gt), ("rendered", images["nerf"]), (f"copied {nearest}", images["copy_nearest"]),
                               ("reprojected", images["reproject_depth"])]))  # fmt: skip
        g = _gt_depth(scene, t)
        if g is not None and g.shape == (scene.height, scene.width):
            depth_pairs.append((np.asarray(group["depth"][k], np.float32), g))
    rows += _mean_rows(rows, base)
    if depth_pairs:
        rows += _depth_rows(depth_pairs, base, max_depth)
    else:
        log("note: the scene has no ground-truth depth; rendered depth not evaluated")
    table = _write_table(out, rows, render=render, weights=weights, sources=sources, lpips_backbone=lpips_backbone,
                         strip_frames=strip_frames, max_depth=max_depth)  # fmt: skip
    if strip is not None and panels:
        strip_figure(strip, panels)
    return table


def summary_line(table) -> str:
    means = table[(table.aggregation == "frame_mean") & (table.metric == "psnr")]
    return ", ".join(f"{r.variant} PSNR {r.value:.2f} dB" for r in means.itertuples())


def add_arguments(parser) -> None:
    from pipeline.nerf.train import add_scene_arguments

    parser.add_argument("--render", required=True, help="nerf_render.zarr")
    parser.add_argument("--weights", required=True, help="nerf.safetensors (the held-out frames and settings)")
    add_scene_arguments(parser)
    parser.add_argument("--out", required=True, help="metrics Parquet (nerf/metrics.parquet)")
    parser.add_argument("--strip", default=None, help="PNG strip of held-out / rendered / baseline images")
    parser.add_argument("--dataset", default="")
    parser.add_argument("--scene-name", default="")
    parser.add_argument("--lpips-backbone", default=None, help="local VGG16 weights for LPIPS (never downloaded)")
    parser.add_argument("--strip-frames", type=int, default=4)
    parser.add_argument("--max-depth", type=float, default=70.0)
    parser.add_argument("--device", default="cpu")


def run(args) -> None:
    from pipeline.cli import run_stage
    from pipeline.nerf.train import scene_sources

    sources = scene_sources(args)
    if len(sources) != 1:
        raise UserError("nerf-evaluate evaluates one scene: give --frames/--tokens/--scene-json/--geometry once")
    table = run_stage(evaluate_novel_views, args, values={"sources": sources[0]}, summary=summary_line)
    print(json.dumps({"out": str(args.out), "rows": len(table)}))
