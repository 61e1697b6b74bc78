"""GPT4Scene scene prompts: objects lifted to 3D, a fused cloud, a BEV and marked frames, 3D grounding.

Each large-level object (masks.zarr level `l`, ids stable over time) is lifted to world points by
back-projecting its masked pixels with depth, intrinsics and extrinsics (geometry.zarr, or the
scene's ground truth with `--geometry-source gt`), confidence-filtered and voxel-downsampled.
Writes `objects3d.parquet` (a box over the video and a box per frame, so a moving object has a
track), `cloud.ply` (the fused coloured cloud), `scene_prompt/` (the BEV, N uniformly sampled
frames with the objects' numbered markers, `manifest.json`, `prompt.txt`, `contact_sheet.png`)
and a grounding metrics table: each grounding query of the scene picks the object whose language
features (the render's latents decoded by the CLIP autoencoder, averaged over the object's
pixels) match it best, scored against ground-truth boxes (Acc@0.25/0.5, Hungarian F1@0.25/0.5).
Bad scene content (no objects, an object without valid depth, frames without depth) is a note in
the manifest and the log, not an error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.scene3d.grounding import evaluate_grounding
from pipeline.scene3d.inputs import frame_views, open_mask_level, read_scene_json, read_vocabulary
from pipeline.scene3d.language import load_object_features, name_objects
from pipeline.scene3d.lift import lift_video, write_ply
from pipeline.scene3d.objects import background_ids, is_moving, object_boxes, objects_table
from pipeline.scene3d.prompt import SceneObjects, plan_scene_bev, write_prompt_images


@dataclass
class Settings:
    level: str = "l"
    num_frames: int = 8  # marked frames (upstream: 8 zero-shot, 32 fine-tuned)
    max_side: int = 512
    voxel_size: float = 0.0  # 0: 1% of the first frame's median depth
    pixel_stride: int = 1
    confidence_percentile: float = 10.0  # predicted depth: drop this share (%) of each frame's least confident pixels
    trim: float = 0.02
    up_axis: str = "floor"  # floor | camera
    ceiling_quantile: float = 0.98
    extent_quantile: float = 0.01
    bev_extent: str = "cloud"  # cloud | objects (the footprint of the objects smaller than half the scene)
    bev_margin: float = 0.05
    bev_size: int = 512
    bev_windows: int = 0
    splat_radius: int = 1
    moving_threshold: float = 0.25  # track spread / box diagonal above which an object counts as moving
    min_marker_area: int = 30
    features_per_frame: int = 256
    multi_margin: float = 0.05
    min_score: float = 0.0
    seed: int = 0


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, disable=not enabled)


def _lift(views, rgb, masks_level, s: Settings, T: int, progress: bool):
    """(the lifted video, the cameras' extrinsics [T,3,4] or None)."""
    bar = _progress(T, "lift", progress)
    extrinsics = []

    def keep(vs):
        for v in vs:
            extrinsics.append(v.E)
            yield v

    lifted = lift_video(keep(views), lambda t: np.asarray(rgb[t]), lambda t: np.asarray(masks_level[t]),
                        voxel=s.voxel_size or None, stride=s.pixel_stride, trim=s.trim, progress=bar)
    bar.close()
    return lifted, (np.asarray(extrinsics) if extrinsics else None)


def _read_objects(objects, level: str, note):
    """(object ids at `level`, id -> frames with 2D masks, id -> ground-truth name)."""
    import pandas as pd

    table = pd.read_parquet(objects)
    table = table[table["level"] == level] if "level" in table else table
    ids = sorted(int(k) for k in table["id"])
    if not ids:
        note(f"the scene has no objects at the `{level}` level: no boxes, markers or grounding")
    frames_2d = {int(r.id): int(r.frames) for r in table.itertuples()} if len(table) else {}
    gt_names = dict(zip(table["id"].astype(int), table["name"])) if "name" in table else {}
    return ids, frames_2d, gt_names


def _inputs(frames, masks, objects, scene_json, geometry, render, autoencoder) -> dict:
    inputs = {"frames": frames, "masks": masks, "objects": objects, "scene_json": scene_json}
    for key, path in (("geometry", geometry), ("render", render), ("autoencoder", autoencoder)):
        if path is not None:
            inputs[key] = path
    return inputs


def build_scene(
    *, frames: str | Path, masks: str | Path, objects: str | Path, scene_json: str | Path, objects3d: str | Path,
    cloud: str | Path, prompt_dir: str | Path, metrics: str | Path, geometry: str | Path | None = None,
    geometry_source: str = "predicted", render: str | Path | None = None, autoencoder: str | Path | None = None,
    vocabulary=None, settings: Settings = Settings(), dataset: str | None = None, scene_name: str | None = None,
    progress: bool = True, log=print,
) -> dict:
    """Write objects3d.parquet, cloud.ply, scene_prompt/ and the grounding metrics; return the manifest."""
    from pipeline.evaluate.table import metrics_frame
    from pipeline.store import atomic_path, open_group, provenance, write_parquet

    s = settings
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        log(f"note: {text}")

    words = read_vocabulary(vocabulary)
    scene_json = Path(scene_json)
    scene = read_scene_json(scene_json)
    dataset = dataset or scene.get("dataset", "")
    scene_name = scene_name or scene.get("scene", "")
    rgb = open_group(frames, what="frames")["rgb"]
    T, H, W = rgb.shape[:3]
    masks_level = open_mask_level(masks, s.level)
    ids, frames_2d, gt_names = _read_objects(objects, s.level, note)
    views, source_note = frame_views(geometry_source, scene, geometry, H, W, s.confidence_percentile)
    lifted, cams = _lift(views, rgb, masks_level, s, T, progress)
    if lifted.empty_frames:
        note(f"{len(lifted.empty_frames)} frame(s) without valid depth, not lifted: {lifted.empty_frames[:20]}")
    boxes = object_boxes(lifted, ids, s.trim, note)
    feats, space = load_object_features(render, autoencoder, masks_level, ids, level=s.level,
                                        per_frame=s.features_per_frame, seed=s.seed)
    names, name_scores = name_objects(words, feats, space, ids, gt_names, note)
    background = background_ids(lifted, boxes)
    moving = {k: k not in background and is_moving(lifted.frame_boxes.get(k, {}), s.moving_threshold) for k in ids}
    objs = SceneObjects(ids, boxes, names, name_scores, moving, background, lifted.frame_boxes)
    plan, up, how = plan_scene_bev(lifted, cams, objs, s, note)
    inputs = _inputs(frames, masks, objects, scene_json, geometry, render, autoencoder)
    with atomic_path(Path(prompt_dir)) as tmp:
        tmp.mkdir(parents=True)
        images = write_prompt_images(tmp, lifted, plan, objs, rgb, masks_level, s, T)
        prov = provenance("scene3d", {**asdict(s), "geometry_source": geometry_source, "vocabulary": words}, inputs,
                          extra={"geometry": source_note})
        manifest = {
            "scene": scene_name, "dataset": dataset, "scene_anno": {scene_name: [im["file"] for im in images]},
            "images": images, "legend": objs.legend(), "bev": plan.as_dict(), "up": up.tolist(), "up_from": how,
            "geometry": source_note, "voxel_size": lifted.voxel,
            "points": {"raw": int(lifted.raw_points), "downsampled": int(len(lifted.points))},
            "notes": notes, "provenance": prov,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=float) + "\n")
    write_parquet(objects3d, objects_table(ids, boxes, names, name_scores, lifted, frames_2d, moving, background), provenance=prov)
    write_ply(cloud, lifted.points, lifted.colors)
    rows = evaluate_grounding(scene, ids, boxes, feats, space, base=dict(dataset=dataset, scene=scene_name),
                              margin=s.multi_margin, min_score=s.min_score, note=note, log=log)
    mprov = provenance("scene3d", {**asdict(s), "geometry_source": geometry_source}, inputs, extra={"geometry": source_note})
    write_parquet(metrics, metrics_frame(rows), provenance=mprov)
    return manifest


def add_arguments(parser) -> None:
    parser.add_argument("--frames", required=True)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--objects", required=True, help="objects.parquet of the segment stage")
    parser.add_argument("--scene-json", required=True)
    parser.add_argument("--geometry", help="geometry.zarr (needed with --geometry-source predicted)")
    parser.add_argument("--geometry-source", choices=["predicted", "gt"], default="predicted")
    parser.add_argument("--render", help="render.zarr: the language field that names and grounds objects")
    parser.add_argument("--autoencoder", help="the CLIP autoencoder that decodes the render's latents")
    parser.add_argument("--vocabulary", help="text file, one object name per line")
    parser.add_argument("--objects3d", required=True)
    parser.add_argument("--cloud", required=True)
    parser.add_argument("--prompt-dir", required=True)
    parser.add_argument("--metrics", required=True, help="grounding metrics table (.parquet)")
    parser.add_argument("--dataset")
    parser.add_argument("--scene-name")
    parser.add_argument("--no-progress", action="store_true")
    group = parser.add_argument_group("settings")
    for f in fields(Settings):
        group.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f"default {f.default}")


def run(args) -> None:
    from pipeline.cli import run_stage

    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})

    def summary(m: dict) -> str:
        return (f"{len(m['legend'])} objects, {m['points']['raw']} points -> {m['points']['downsampled']} after "
                f"downsampling, up from {m['up_from']}; {len(m['images'])} images in {args.prompt_dir}")

    run_stage(build_scene, args, values={"settings": settings}, summary=summary)
