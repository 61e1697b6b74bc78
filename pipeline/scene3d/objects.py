"""The scene's objects in 3D: a box over the video, a track of per-frame boxes, moving or not,
background or not, and the objects3d.parquet table."""

from __future__ import annotations

import numpy as np

from pipeline.scene3d.lift import object_box

OBJECT_COLUMNS = ["id", "name", "name_score", "center_x", "center_y", "center_z", "size_x", "size_y", "size_z",
                  "n_points", "frames_2d", "frames_visible", "frame_boxes", "moving", "background"]


def object_boxes(lifted, ids: list[int], trim: float, note) -> dict[int, np.ndarray]:
    """id -> box over the whole video, for the objects with at least two valid 3D points."""
    boxes: dict[int, np.ndarray] = {}
    for k in ids:
        b = object_box(lifted, k, trim) if lifted.object_points.get(k, 0) >= 2 else None
        if b is None:
            note(f"object {k} has no valid 3D points (never visible with valid depth): no box, no BEV marker")
        else:
            boxes[k] = b
    return boxes


def background_ids(lifted, boxes: dict[int, np.ndarray]) -> set[int]:
    """Regions as large as half the scene (floor, walls, sky): never moving, not framing the BEV."""
    if len(lifted.points):
        lo, hi = np.quantile(lifted.points, [0.01, 0.99], axis=0)
        scene_diag = float(np.linalg.norm(hi - lo))
    else:
        scene_diag = 0.0
    return {k for k, b in boxes.items() if np.linalg.norm(b[3:]) > 0.5 * scene_diag}


def is_moving(track: dict[int, np.ndarray], threshold: float) -> bool:
    """The track's centres spread more than `threshold` times the object's median box diagonal."""
    if len(track) < 2:
        return False
    b = np.asarray(list(track.values()))
    spread = np.linalg.norm(b[:, :3].max(0) - b[:, :3].min(0))
    diag = float(np.median(np.linalg.norm(b[:, 3:], axis=1)))
    return bool(spread > threshold * max(diag, 1e-9))


def objects_table(ids, boxes, names, name_scores, lifted, frames_2d, moving, background):
    import pandas as pd

    tracks = lifted.frame_boxes
    rows = []
    for k in ids:
        b = boxes.get(k)
        tr = tracks.get(k, {})
        rows.append({
            "id": k, "name": names[k], "name_score": name_scores.get(k, np.nan),
            **{f"center_{a}": (float(b[i]) if b is not None else np.nan) for i, a in enumerate("xyz")},
            **{f"size_{a}": (float(b[3 + i]) if b is not None else np.nan) for i, a in enumerate("xyz")},
            "n_points": int(lifted.object_points.get(k, 0)), "frames_2d": int(frames_2d.get(k, 0)),
            "frames_visible": [int(t) for t in sorted(tr)], "frame_boxes": [tr[t].tolist() for t in sorted(tr)],
            "moving": moving[k], "background": k in background,
        })
    return pd.DataFrame(rows, columns=OBJECT_COLUMNS)
