"""A small scene results folder for the viewer tests: the evaluation's synthetic render, a
geometry.zarr whose depth and cameras are known, scene.json and the upstream annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import evaluate_synthetic as syn

FOCAL = 60.0


def camera(t: int) -> np.ndarray:
    """World->camera [3,4]: the camera slides along +x, 0.05 per frame, looking down +z."""
    E = np.zeros((3, 4), np.float32)
    E[:, :3] = np.eye(3)
    E[0, 3] = -0.05 * t
    return E


def depth(t: int) -> np.ndarray:
    """A wall at z=4 with the ball 1 unit in front of it; a few invalid pixels (0)."""
    d = np.full((syn.H, syn.W), 4.0, np.float32)
    top, left, h, w = syn.ball_box(t)
    d[top : top + h, left : left + w] = 3.0
    d[0, :3] = 0.0
    return d


def write_geometry(path: Path, *, points: bool = False) -> Path:
    from pipeline.store import create_group, frame_array

    g = create_group(path)
    T, H, W = syn.T, syn.H, syn.W
    arr = {name: frame_array(g, name, shape, "float32") for name, shape in (
        ("depth", (T, H, W)), ("depth_conf", (T, H, W)), ("extrinsics", (T, 3, 4)), ("intrinsics", (T, 3, 3)))}
    K = np.array([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]], np.float32)
    for t in range(T):
        arr["depth"][t] = depth(t)
        conf = np.ones((H, W), np.float32) * 2.0
        conf[:, : W // 4] = 1.1  # the left quarter is least confident
        arr["depth_conf"][t] = conf
        arr["extrinsics"][t] = camera(t)
        arr["intrinsics"][t] = K
    g.attrs.update({"image_size": [H, W], "transform": {"source_size": [H, W], "resize_to": None, "crop": [0, 0, H, W]},
                    "source_indices": list(range(T)),
                    "provenance": {"stage": "geometry", "checkpoints": {"geometry": {"path": "x", "sha256": "0"}}}})
    return path


def write_results(root: Path) -> Path:
    """results/<dataset>/<scene> with render.zarr, geometry.zarr, scene.json (annotations of the source)."""
    source = syn.write_scene(root)
    scene = root / "results" / "synthetic" / "balls"
    scene.mkdir(parents=True)
    syn.write_render(scene / "render.zarr")
    write_geometry(scene / "geometry.zarr")
    info = {"dataset": "synthetic", "scene": "balls", "num_frames": syn.T, "height": syn.H, "width": syn.W, "fps": 5,
            "annotations": {"coco": str(source / "annotations/train/_annotations.coco.json"),
                            "video": str(source / "annotations/video_annotations.json")},
            "cameras": None, "gt": {}}
    (scene / "scene.json").write_text(json.dumps(info))
    return scene
