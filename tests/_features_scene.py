"""A small hand-made scene in the artifact formats the feature stages read (docs/formats.md).

Two ground-truth objects over T frames: a "red cup" (object 1) that slides right and a "lamp"
(object 2) with parts "lamp shade" (21) and "lamp base" (22). State captions change half-way.
Mask levels: default = s = parts (shade 0, base 1, cup 2); m = l = objects (cup 0, lamp 1),
so id 0 is a real object and -1 the background, as formats.md says.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.store import create_group, frame_array, write_json, provenance

T, H, W = 8, 40, 56
OBJECTS = [
    {"id": 1, "name": "red cup", "parts": []},
    {"id": 2, "name": "lamp", "parts": [{"id": 21, "name": "lamp shade"}, {"id": 22, "name": "lamp base"}]},
]
CAPTIONS = {
    "1": ["the cup is full of coffee"] * (T // 2) + ["the cup is empty"] * (T - T // 2),
    "2": ["the lamp is switched off"] * (T // 2) + ["the lamp is switched on and glowing"] * (T - T // 2),
}


def gt_maps(t: int) -> tuple[np.ndarray, np.ndarray]:
    inst = np.zeros((H, W), np.uint16)
    part = np.zeros((H, W), np.uint16)
    x = 4 + 2 * t
    inst[24:34, x : x + 8] = 1  # cup
    inst[6:16, 36:48] = 2  # lamp shade
    inst[16:30, 40:44] = 2  # lamp base
    part[6:16, 36:48] = 21
    part[16:30, 40:44] = 22
    return inst, part


def build_scene(root: Path, *, with_names: bool = False, frames_seed: int = 0) -> dict[str, Path]:
    """Write frames.zarr, masks.zarr, objects.parquet, scene.json and gt/ under `root`."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(frames_seed)
    gt = root / "src" / "gt"
    for sub in ("instance", "part"):
        (gt / sub).mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}" for i in range(T)]
    rgb = np.zeros((T, H, W, 3), np.uint8)
    masks = np.full((4, T, H, W), -1, np.int32)
    for t in range(T):
        inst, part = gt_maps(t)
        cv2.imwrite(str(gt / "instance" / f"{names[t]}.png"), inst)
        cv2.imwrite(str(gt / "part" / f"{names[t]}.png"), part)
        img = rng.integers(60, 120, (H, W, 3), dtype=np.uint8)
        img[inst == 1] = (220, 30, 30)
        img[part == 21] = (240, 220, 60) if t >= T // 2 else (90, 90, 40)
        img[part == 22] = (50, 50, 50)
        rgb[t] = img
        parts_level = np.full((H, W), -1, np.int32)
        parts_level[part == 21] = 0
        parts_level[part == 22] = 1
        parts_level[inst == 1] = 2
        objects_level = np.full((H, W), -1, np.int32)
        objects_level[inst == 1] = 0
        objects_level[inst == 2] = 1
        masks[:, t] = np.stack([parts_level, parts_level, objects_level, objects_level])
    (gt / "objects.json").write_text(json.dumps(OBJECTS))
    (gt / "captions.json").write_text(json.dumps(CAPTIONS))

    frames_path = root / "frames.zarr"
    g = create_group(frames_path)
    frame_array(g, "rgb", rgb.shape, "uint8")[...] = rgb
    g.attrs.update({"frame_names": names, "source_indices": list(range(T)), "fps": 10,
                    "provenance": provenance("frames", {"test": True})})
    masks_path = root / "masks.zarr"
    g = create_group(masks_path)
    frame_array(g, "masks", masks.shape, "int32", frame_axis=1, fill_value=-1)[...] = masks
    g.attrs.update({"levels": ["default", "s", "m", "l"], "provenance": provenance("segment", {"test": True})})
    records = []
    for li, level in enumerate(["default", "s", "m", "l"]):
        for obj in np.unique(masks[li][masks[li] >= 0]).tolist():
            present = [t for t in range(T) if (masks[li, t] == obj).any()]
            rec = {"level": level, "id": obj, "first_frame": present[0], "last_frame": present[-1],
                   "frames": len(present), "pixel_count": int((masks[li] == obj).sum())}
            if with_names:
                rec["name"] = (["lamp shade", "lamp base", "red cup"] if li < 2 else ["red cup", "lamp"])[obj]
            records.append(rec)
    pd.DataFrame.from_records(records).to_parquet(root / "objects.parquet")
    scene = {
        "scene": "handmade", "dataset": "test", "num_frames": T, "height": H, "width": W, "fps": 10,
        "frame_names": names, "source_indices": list(range(T)),
        "gt": {"instance_dir": str(gt / "instance"), "part_dir": str(gt / "part"),
               "objects": str(gt / "objects.json"), "captions": str(gt / "captions.json")},
    }
    write_json(root / "scene.json", scene)
    return {"frames": frames_path, "masks": masks_path, "scene": root / "scene.json",
            "objects": root / "objects.parquet", "root": root}
