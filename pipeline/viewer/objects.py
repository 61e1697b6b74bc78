"""Object boxes the viewer draws: `objects3d.parquet` of the GPT4Scene stage (scene3d), per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import UserError


def read_objects(p: Path, T: int) -> list[dict] | None:
    """Boxes of `objects3d.parquet` or None where it has not run.

    Each: id, name, centre [3] and size [3] over the video (None where unknown), frames (the
    visible frames, None = all) and per-frame boxes {t: (centre, size)}: the object's track."""
    if not p.is_file():
        return None
    import pandas as pd

    try:
        df = pd.read_parquet(p)
    except Exception as exc:
        raise UserError(f"{p} is not a readable Parquet table ({exc.__class__.__name__}); rerun the scene3d stage") from None
    rows = [_object_row(r, T) for r in df.to_dict("records")]
    return [r for r in rows if r is not None]


def box_on_frame(ob: dict, t: int):
    """(centre, size) of object `ob` on frame t: its track's box there, else its box over the video
    where it has no track; None where it is not visible on t."""
    if t in ob["per_frame"]:
        return ob["per_frame"][t]
    if ob["centre"] is not None and (ob["frames"] is None or not ob["per_frame"]):
        return ob["centre"], ob["size"]
    return None


def _vec3(row: dict, *names: str):
    for n in names:
        parts = [row.get(f"{n}_{a}") for a in "xyz"]
        if all(x is not None for x in parts):
            return np.asarray(parts, dtype=np.float64)
    return None


def _object_row(row: dict, T: int) -> dict | None:
    """One object of objects3d.parquet: `id`, `name`, `center_x/y/z`, `size_x/y/z` (the box over the
    video; NaN where the object never had depth), `frames_visible` and `frame_boxes` (one
    [cx, cy, cz, sx, sy, sz] per visible frame: the object's track). None when it has no box at all."""
    centre = _vec3(row, "center", "centre")
    size = _vec3(row, "size")
    frames = row.get("frames_visible")
    frames = None if frames is None else [int(f) for f in np.asarray(frames).ravel()]
    per_frame = {}
    boxes = row.get("frame_boxes")
    if boxes is not None and frames is not None:
        for t, b in zip(frames, list(boxes)):
            b = np.asarray(b, dtype=np.float64).ravel()
            if b.size == 6 and np.isfinite(b).all():
                per_frame[t] = (b[:3], b[3:])
    whole = centre is not None and size is not None and bool(np.isfinite(centre).all() and np.isfinite(size).all())
    if not whole and not per_frame:
        return None
    name = row.get("name")
    return {"id": row.get("id"), "name": "" if name is None else str(name), "centre": centre if whole else None,
            "size": size if whole else None, "frames": None if frames is None else set(frames), "per_frame": per_frame,
            "moving": bool(row.get("moving", False))}
