"""Reading the feature stages' inputs: frames, masks, objects table, scene ground truth.

The ground-truth backends (demo) need to know which ground-truth object or part each mask is.
The segment stage's `objects.parquet` may say so itself (`name`, and optionally `gt_id`);
otherwise every mask is matched to the ground-truth object or part it overlaps best (IoU summed
over all frames) using the scene's `gt/instance` and `gt/part` maps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.store import open_group, require_arrays

from pipeline.features.artifacts import LEVELS

BACKGROUND_NAME = "background"  # text for a mask that overlaps no ground-truth region
# stage parameter -> command-line option, where they differ (both feature stages)
FEATURE_OPTIONS = {"frames_path": "frames", "masks_path": "masks", "out_path": "out", "scene_path": "scene_json",
                   "objects_path": "objects"}


def open_frames(path: str | os.PathLike):
    group = open_group(path, what="frames")
    require_arrays(group, ["rgb"], what=f"frames {path}")
    return group["rgb"]


def open_masks(path: str | os.PathLike):
    """masks.zarr `masks` [4,T,H,W] int32 and its level names."""
    group = open_group(path, what="masks")
    require_arrays(group, ["masks"], what=f"masks {path}")
    masks = group["masks"]
    if masks.ndim != 4:
        raise UserError(f"masks {path}: expected [levels,T,H,W], got shape {masks.shape}")
    levels = list(group.attrs.get("levels", LEVELS[: masks.shape[0]]))
    return masks, levels


def open_frames_and_masks(frames_path, masks_path):
    """(frames, masks, mask levels), refusing frames and masks of different T,H,W."""
    masks, levels = open_masks(masks_path)
    frames = open_frames(frames_path)
    if tuple(frames.shape[:3]) != (masks.shape[1], *masks.shape[2:]):
        raise UserError(f"frames {tuple(frames.shape[:3])} and masks {tuple(masks.shape[1:])} disagree on T,H,W")
    return frames, masks, levels


def level_index(levels: list[str], level: str) -> int:
    if level not in levels:
        raise UserError(f"masks have no level {level!r} (levels: {levels})")
    return levels.index(level)


def read_scene(path: str | os.PathLike | None, *, what: str = "scene.json") -> dict[str, Any]:
    if path is None:
        raise UserError(f"{what} is required by this backend (pass --scene-json)")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    return json.loads(p.read_text())


def objects_path_for(masks_path: str | os.PathLike) -> Path:
    return Path(masks_path).parent / "objects.parquet"


def read_objects(path: str | os.PathLike | None):
    """The segment stage's objects table, or None if it is absent."""
    if path is None or not Path(path).is_file():
        return None
    import pandas as pd

    return pd.read_parquet(path)


def gt_objects(scene: dict[str, Any]) -> tuple[dict[int, str], dict[int, str]]:
    """({object id: name}, {part id: name}) from gt/objects.json."""
    path = (scene.get("gt") or {}).get("objects")
    if not path or not Path(path).is_file():
        raise UserError(f"scene {scene.get('scene')!r} has no ground-truth objects.json (scene.json gt.objects)")
    from pipeline.segment.gt import gt_names

    return gt_names(Path(path))


def gt_map(scene: dict[str, Any], kind: str, t: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Ground-truth id map (`kind` = instance | part) of stored frame `t`, resized to `shape`."""
    import cv2

    from pipeline.segment.gt import gt_file

    folder = (scene.get("gt") or {}).get(f"{kind}_dir")
    if not folder or not Path(folder).is_dir():
        return None
    candidate = gt_file(Path(folder), scene, t)
    img = cv2.imread(str(candidate), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"cannot read ground-truth map {candidate}")
    if img.ndim == 3:
        img = img[..., 0]
    if img.shape != tuple(shape):
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return img.astype(np.int64)


@dataclass
class GtMatch:
    name: str
    gt_id: int | None  # ground-truth object id (for captions); None for parts / background
    kind: str  # "object", "part", "background" or "table"


class OverlapCounter:
    """Accumulates mask-vs-ground-truth pixel overlaps over frames for one level."""

    def __init__(self) -> None:
        self.inter: dict[str, dict[tuple[int, int], int]] = {"instance": {}, "part": {}}
        self.gt_area: dict[str, dict[int, int]] = {"instance": {}, "part": {}}
        self.mask_area: dict[int, int] = {}

    def add(self, mask: np.ndarray, gts: dict[str, np.ndarray | None]) -> None:
        valid = mask >= 0
        ids, counts = np.unique(mask[valid], return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            self.mask_area[i] = self.mask_area.get(i, 0) + c
        for kind, g in gts.items():
            if g is None:
                continue
            gid, gc = np.unique(g[g > 0], return_counts=True)
            for i, c in zip(gid.tolist(), gc.tolist()):
                self.gt_area[kind][i] = self.gt_area[kind].get(i, 0) + c
            both = valid & (g > 0)
            if not both.any():
                continue
            base = int(g.max()) + 1
            pairs, pc = np.unique(mask[both].astype(np.int64) * base + g[both], return_counts=True)
            inter = self.inter[kind]
            for p, c in zip(pairs.tolist(), pc.tolist()):
                key = (p // base, p % base)
                inter[key] = inter.get(key, 0) + c

    def best(self, kinds: tuple[str, ...]) -> dict[int, tuple[str, int, float]]:
        """{mask id: (kind, gt id, IoU)} of the best-overlapping region among `kinds`."""
        out: dict[int, tuple[str, int, float]] = {}
        for kind in kinds:
            for (m, g), c in self.inter[kind].items():
                iou = c / (self.mask_area[m] + self.gt_area[kind][g] - c)
                if m not in out or iou > out[m][2]:
                    out[m] = (kind, g, iou)
        return out


def match_masks_to_gt(
    masks,
    levels: list[str],
    scene: dict[str, Any],
    *,
    use_levels: list[int],
    objects_table=None,
    objects_only: bool = False,
) -> dict[tuple[int, int], GtMatch]:
    """{(level index, mask id): GtMatch} for every id present in `use_levels`."""
    table: dict[tuple[int, int], GtMatch] = {}
    if objects_table is not None and "name" in objects_table.columns:
        has_gt = bool((scene.get("gt") or {}).get("objects"))
        by_name = {}
        for oid, name in (gt_objects(scene)[0] if has_gt else {}).items():
            by_name.setdefault(name, oid)
        for rec in objects_table.to_dict("records"):
            lvl = rec["level"]
            li = levels.index(lvl) if isinstance(lvl, str) else int(lvl)
            if li not in use_levels:
                continue
            gid = rec.get("gt_id")
            gid = int(gid) if gid is not None and not (isinstance(gid, float) and np.isnan(gid)) else by_name.get(rec["name"])
            table[(li, int(rec["id"]))] = GtMatch(str(rec["name"]), gid, "table")
        if table and (not objects_only or all(m.gt_id is not None for m in table.values())):
            return table
        table = {}
    objects, parts = gt_objects(scene)
    kinds = ("instance",) if objects_only else ("instance", "part")
    counters = {li: OverlapCounter() for li in use_levels}
    shape = tuple(masks.shape[2:])
    for t in range(masks.shape[1]):
        gts = {"instance": gt_map(scene, "instance", t, shape), "part": None if objects_only else gt_map(scene, "part", t, shape)}
        if gts["instance"] is None:
            raise UserError(f"scene {scene.get('scene')!r} has no ground-truth instance maps (scene.json gt.instance_dir)")
        for li in use_levels:
            counters[li].add(np.asarray(masks[li, t]), gts)
    for li, counter in counters.items():
        best = counter.best(kinds)
        for m in counter.mask_area:
            if m not in best:
                table[(li, m)] = GtMatch(BACKGROUND_NAME, None, "background")
                continue
            kind, g, _ = best[m]
            if kind == "instance":
                table[(li, m)] = GtMatch(objects.get(g, f"object {g}"), g, "object")
            else:
                table[(li, m)] = GtMatch(parts.get(g, f"part {g}"), None, "part")
    return table
