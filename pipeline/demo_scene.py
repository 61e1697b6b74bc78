"""Render the built-in synthetic dynamic scene, with its ground truth, in HyperNeRF layout.

A camera orbits a small set of named objects on a floor: a lamp that switches on half-way
(its shade and the floor around it light up), a blue ball that rolls and then rests, a
green box with a lid and a red cup. The renderer is an exact ray caster, so instance masks,
part masks and depth are ground truth by construction. Annotations are written in the
formats 4DLangSplat uses (COCO polygons, video_annotations.json), so the same reader and
evaluator serve this scene and real HyperNeRF scenes. Same seed, same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.demo_render import render_frame
from pipeline.demo_world import (ANNOTATE_EVERY, BACKGROUND, FOCAL, GROUNDING, HEIGHT, OBJECTS, STATE_PROMPTS, WIDTH,
                                 object_boxes, scene_parts, state_captions)
from pipeline.errors import UserError


def _ground_truth_boxes(n: int, parts, layout, visible: dict[int, list[bool]]) -> dict:
    """gt/boxes.json: per object its box over the whole video (the union of its frame boxes) and per frame."""
    frames = [object_boxes(t, n, parts, layout) for t in range(n)]
    objects = {}
    for k, name in OBJECTS.items():
        boxes = np.asarray([f[k] for f in frames])
        lo = (boxes[:, :3] - boxes[:, 3:] / 2).min(0)
        hi = (boxes[:, :3] + boxes[:, 3:] / 2).max(0)
        objects[str(k)] = {
            "name": name,
            "box": [*((lo + hi) / 2).tolist(), *(hi - lo).tolist()],
            "frames": [f[k] for f in frames],
            "visible": visible[k],
        }
    return {"box_format": "centre xyz, size xyz; world frame of gt/cameras.json (y up)", "objects": objects}


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons, largest first."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted((c for c in contours if len(c) >= 3), key=cv2.contourArea, reverse=True)
    return [[float(v) for v in c.reshape(-1)] for c in contours]


def _hypernerf_camera(rot: np.ndarray, centre: np.ndarray) -> dict:
    """HyperNeRF camera JSON, at 1x scale (the frames are the 2x resolution)."""
    return {
        "orientation": rot.tolist(),
        "position": centre.tolist(),
        "focal_length": FOCAL * 2,
        "principal_point": [WIDTH, HEIGHT],
        "skew": 0.0,
        "pixel_aspect_ratio": 1.0,
        "radial_distortion": [0.0, 0.0, 0.0],
        "tangential_distortion": [0.0, 0.0],
        "image_size": [WIDTH * 2, HEIGHT * 2],
    }


def _coco_annotations(obj: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    """COCO polygon annotations of every visible annotated object in one frame's instance map."""
    category_ids = {name: k for k, name in OBJECTS.items()}
    out = []
    for k, name in OBJECTS.items():
        polys = _polygons(obj == k)
        if not polys:
            continue
        ys, xs = np.nonzero(obj == k)
        out.append({
            "id": first_id + len(out),
            "image_id": image_id,
            "category_id": category_ids[name],
            "segmentation": polys,
            "area": int((obj == k).sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "iscrowd": 0,
        })
    return out


@dataclass
class _Record:
    """What the frames add up to: cameras, captions, COCO entries, per-object visibility."""

    intrinsics: list = field(default_factory=list)
    extrinsics: list = field(default_factory=list)
    captions: dict = field(default_factory=lambda: {str(k): [] for k in [*OBJECTS, *BACKGROUND]})
    coco_images: list = field(default_factory=list)
    coco_annotations: list = field(default_factory=list)
    visible: dict = field(default_factory=lambda: {k: [] for k in OBJECTS})


def _write_frame(tmp: Path, t: int, frame_id: str, num_frames: int, parts, layout, rng, rec: _Record) -> None:
    from PIL import Image

    rgb, obj, part, depth, (rot, centre) = render_frame(t, num_frames, parts, layout, rng)
    Image.fromarray(rgb).save(tmp / "rgb/2x" / f"{frame_id}.png")
    Image.fromarray(obj.astype(np.uint16)).save(tmp / "gt/instance" / f"{frame_id}.png")
    Image.fromarray(part.astype(np.uint16)).save(tmp / "gt/part" / f"{frame_id}.png")
    np.save(tmp / "gt/depth" / f"{frame_id}.npy", depth)
    for k in OBJECTS:
        rec.visible[k].append(bool((obj == k).any()))
    (tmp / "camera" / f"{frame_id}.json").write_text(json.dumps(_hypernerf_camera(rot, centre), indent=2) + "\n")
    rec.intrinsics.append([[FOCAL, 0.0, WIDTH / 2], [0.0, FOCAL, HEIGHT / 2], [0.0, 0.0, 1.0]])
    rec.extrinsics.append(np.concatenate([rot, (-rot @ centre)[:, None]], 1).tolist())
    for k, caption in state_captions(t, num_frames, layout).items():
        rec.captions[str(k)].append(caption)
    if t % ANNOTATE_EVERY:
        return
    image_id = len(rec.coco_images)
    rec.coco_images.append({"id": image_id, "file_name": f"{frame_id}_png.rf.demo{t:04d}.jpg", "height": HEIGHT, "width": WIDTH})
    rec.coco_annotations += _coco_annotations(obj, image_id, len(rec.coco_annotations))


def _scene_files(rec: _Record, ids: list[str], parts, layout, seed: int) -> dict[str, object]:
    """Relative path -> JSON content of every annotation and ground-truth file."""
    num_frames = len(ids)
    switch = num_frames // 2
    on_prompt, off_prompt = STATE_PROMPTS["lamp"]
    video_annotations = {"lamp": {on_prompt: [[switch, num_frames - 1]], off_prompt: [[0, switch - 1]]}}
    coco = {
        "info": {"description": "langfield4d demo scene", "seed": seed},
        "categories": [{"id": 0, "name": "demo-objects", "supercategory": "none"}]
        + [{"id": k, "name": name, "supercategory": "demo-objects"} for k, name in OBJECTS.items()],
        "images": rec.coco_images,
        "annotations": rec.coco_annotations,
    }
    objects = [
        {"id": k, "name": name, "parts": [{"id": p.part_id, "name": p.name} for o, p in parts if o == k]}
        for k, name in OBJECTS.items()
    ] + [{"id": k, "name": name, "parts": [{"id": part, "name": name}]} for k, (name, part) in BACKGROUND.items()]
    return {
        "annotations/train/_annotations.coco.json": coco,
        "annotations/video_annotations.json": video_annotations,
        "gt/objects.json": objects,
        "gt/captions.json": rec.captions,
        "gt/cameras.json": {"intrinsics": rec.intrinsics, "extrinsics": rec.extrinsics},
        "gt/boxes.json": _ground_truth_boxes(num_frames, parts, layout, rec.visible),
        "gt/grounding.json": GROUNDING,
        "dataset.json": {"count": num_frames, "num_exemplars": num_frames, "ids": ids, "train_ids": ids, "val_ids": []},
        "metadata.json": {fid: {"time_id": t, "warp_id": t, "appearance_id": t, "camera_id": 0} for t, fid in enumerate(ids)},
        "scene.json": {"scale": 1.0, "center": [0.0, 0.0, 0.0], "near": 0.5, "far": 8.0},
    }


def make_demo_scene(out: str | os.PathLike, *, seed: int = 0, num_frames: int = 24) -> Path:
    """Write the demo scene to `out` (atomically) and return its path."""
    from pipeline.store import atomic_path

    if num_frames < 8:
        raise UserError(f"the demo scene needs at least 8 frames, got {num_frames}")
    rng = np.random.default_rng(seed)
    parts, layout = scene_parts(rng)
    out = Path(out)
    with atomic_path(out) as tmp:
        for sub in ("rgb/2x", "camera", "gt/instance", "gt/part", "gt/depth", "annotations/train"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        ids = [f"{i + 1:06d}" for i in range(num_frames)]
        rec = _Record()
        for t, frame_id in enumerate(ids):
            _write_frame(tmp, t, frame_id, num_frames, parts, layout, rng, rec)
        for rel, obj in _scene_files(rec, ids, parts, layout, seed).items():
            (tmp / rel).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder to write (HyperNeRF layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed for object placement and sensor noise")
    parser.add_argument("--frames", type=int, default=24, help="number of frames (>= 8)")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(make_demo_scene, args, names={"num_frames": "frames"}, summary=lambda path: f"demo scene written to {path}")
