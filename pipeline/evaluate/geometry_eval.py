"""Geometry metrics of one scene where it has ground truth: depth (per-sequence alignment) and
poses (ATE / RPE after Sim(3)), as rows of the metrics table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluate.geometry_metrics import camera_to_world, sequence_depth_metrics, trajectory_metrics
from pipeline.evaluate.protocol import Protocol
from pipeline.evaluate.table import _row


def _depth_file(depth_dir: Path, frame_name: str | None, source_index: int) -> Path | None:
    cands = []
    if frame_name:
        cands.append(depth_dir / (Path(frame_name).stem + ".npy"))
    cands += [depth_dir / f"{source_index + 1:06d}.npy", depth_dir / f"{source_index:06d}.npy"]
    return next((c for c in cands if c.is_file()), None)


def _pred_depth_on_gt(pred: np.ndarray, gt_shape, transform: dict | None) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The prediction resampled onto the GT pixels it covers: (pred window, GT window slices)."""
    import cv2

    from pipeline.geometry.inputs import crop_box_in_frame

    gh, gw = gt_shape
    win = (slice(0, gh), slice(0, gw))
    if transform and transform.get("crop"):
        top, left, ch, cw = crop_box_in_frame(transform, gt_shape)
        win = (slice(max(0, top), min(gh, top + ch)), slice(max(0, left), min(gw, left + cw)))
    h = win[0].stop - win[0].start
    w = win[1].stop - win[1].start
    if pred.shape != (h, w):
        pred = cv2.resize(pred.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return pred, win


def evaluate_geometry(geometry, scene_json: str | Path, *, protocol: Protocol = Protocol(), dataset: str = "",
                      scene: str = "", log=print) -> list[dict]:
    """Depth and pose rows where the scene has ground truth; nothing (and a note) where it has none."""
    p = Path(scene_json)
    if not p.is_file():
        raise UserError(f"scene.json not found: {p}")
    info = json.loads(p.read_text())
    base = dict(dataset=dataset or info.get("dataset", ""), scene=scene or info.get("scene", ""))
    gt = info.get("gt") or {}
    rows: list[dict] = []
    attrs = dict(geometry.attrs)
    source_indices = [int(v) for v in (attrs.get("source_indices") or info.get("source_indices") or [])]
    frame_names = list(attrs.get("frame_names") or info.get("frame_names") or [])
    if "depth" in geometry and gt.get("depth_dir"):
        depth_dir = Path(gt["depth_dir"])
        T = geometry["depth"].shape[0]
        if not source_indices:
            source_indices = list(range(T))
        preds, gts = [], []
        for t in range(T):
            f = _depth_file(depth_dir, frame_names[t] if t < len(frame_names) else None, source_indices[t])
            if f is None:
                continue
            g = np.load(f).astype(np.float32)
            pred, win = _pred_depth_on_gt(np.asarray(geometry["depth"][t], dtype=np.float32).squeeze(), g.shape,
                                          attrs.get("transform"))
            preds.append(pred)
            gts.append(g[win])
        if preds:
            for align in protocol.depth_align:
                m = sequence_depth_metrics(preds, gts, align=align, max_depth=protocol.max_depth)
                n = int(m.pop("valid_pixels"))
                for metric, value in m.items():
                    rows.append(_row(**base, task="depth", metric=metric, value=value, aggregation="sequence",
                                     variant=align, n_items=n, unit="ratio" if metric not in ("rmse", "scale", "shift", "log_rmse") else "depth"))
        else:
            log(f"note: no ground-truth depth files in {depth_dir} match the frames; depth not evaluated")
    cams = info.get("cameras")
    if "extrinsics" in geometry and cams and cams.get("extrinsics") is not None:
        est = camera_to_world(np.asarray(geometry["extrinsics"][:], dtype=np.float64))
        ref = camera_to_world(np.asarray(cams["extrinsics"], dtype=np.float64))
        if len(est) != len(ref):
            raise UserError(f"geometry has {len(est)} poses but scene.json has {len(ref)} ground-truth cameras")
        try:
            m = trajectory_metrics(est, ref, delta=protocol.rpe_delta)
        except ValueError as exc:
            log(f"note: pose metrics skipped ({exc})")
        else:
            n = int(m.pop("n_poses"))
            for metric, value in m.items():
                unit = "deg" if metric == "rpe_rot" else "ratio" if metric == "sim3_scale" else "scene_units"
                rows.append(_row(**base, task="pose", metric=metric, value=value, aggregation="sequence",
                                 variant="sim3", n_items=n, unit=unit))
    return rows
