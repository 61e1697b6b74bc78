"""The `gt` backend: the scene's own instance and part masks as the four levels.

Levels `default` and `s` are part ids, `m` and `l` object ids (a part map is the finest
ground truth the demo scene has, an object the coarsest). Dataset ids are the same object
in every frame, so ids are stable by construction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.errors import UserError
from pipeline.segment import LEVELS

LEVEL_SOURCE = {"default": "part", "s": "part", "m": "instance", "l": "instance"}


def gt_sources(scene: dict, scene_json: str) -> tuple[Path, Path, dict[str, dict[int, str]]]:
    """Instance folder, part folder and id -> name per source kind, from scene.json's `gt`."""
    gt = scene.get("gt") or {}
    need = [k for k in ("instance_dir", "part_dir") if not gt.get(k)]
    if need:
        raise UserError(
            f"the gt segmentation backend needs ground-truth masks, but {scene_json} has no gt.{' / gt.'.join(need)} "
            "(use `segment.backend: sam2` for scenes without instance masks)"
        )
    dirs = {k: Path(gt[k]) for k in ("instance_dir", "part_dir")}
    for key, path in dirs.items():
        if not path.is_dir():
            raise UserError(f"gt.{key} in {scene_json} points to {path}, which is not a folder")
    objects, parts = gt_names(Path(gt["objects"])) if gt.get("objects") else ({}, {})
    return dirs["instance_dir"], dirs["part_dir"], {"instance": objects, "part": parts}


def gt_names(path: Path) -> tuple[dict[int, str], dict[int, str]]:
    """({object id: name}, {part id: name}) from a ground-truth objects.json."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"gt.objects {path} is not readable JSON ({exc})") from None
    objects, parts = {}, {}
    for obj in records:
        objects[int(obj["id"])] = str(obj["name"])
        for part in obj.get("parts", []) or []:
            parts[int(part["id"])] = str(part["name"])
    return objects, parts


def gt_file(folder: Path, scene: dict, t: int) -> Path:
    """The mask file of stored frame t: named like the frame, else by its 1-based source index.

    The one ground-truth file lookup (segmentation and feature matching both use it)."""
    candidates = []
    names = scene.get("frame_names") or []
    if t < len(names):
        candidates.append(folder / f"{Path(str(names[t])).stem}.png")
    sources = scene.get("source_indices") or []
    if t < len(sources):
        candidates.append(folder / f"{int(sources[t]) + 1:06d}.png")
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates) or f"(scene.json has no frame_names / source_indices for frame {t})"
    raise UserError(f"ground-truth mask of frame {t} not found: tried {tried}")


def read_id_png(path: Path, height: int, width: int) -> np.ndarray:
    """A uint16 id PNG as int64, resized (nearest) to the frames' size."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2:
        raise UserError(f"{path} is not a single-channel id PNG")
    if image.shape != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
    return image.astype(np.int64)


def gt_id_maps(scene: dict, scene_json: str, num_frames: int, height: int, width: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (t, [4,H,W] raw id maps): dataset ids, -1 where the dataset has background (0)."""
    instance_dir, part_dir, _ = gt_sources(scene, scene_json)
    folders = {"instance": instance_dir, "part": part_dir}
    for t in range(num_frames):
        maps = {kind: read_id_png(gt_file(folder, scene, t), height, width) for kind, folder in folders.items()}
        stacked = np.stack([maps[LEVEL_SOURCE[level]] for level in LEVELS])
        stacked[stacked == 0] = -1
        yield t, stacked
