"""Multi-level masks with ids that stay the same over time -> masks.zarr, objects.parquet, masks.png.

Four levels as LangSplat defines them: `default` (all three SAM multimask outputs), `s`, `m`,
`l` (output 0, 1, 2), each filtered with LangSplat's mask NMS. Backends:

  sam2  SAM 2 automatic masks every --detect-every frames, tracked in between with SAM 2's
        video propagation (in place of 4DLangSplat's DEVA); new objects start where no
        tracked mask of their level is. Weights: a local .safetensors file (--checkpoint;
        convert the official .pt once with `python -m pipeline convert-checkpoint`).
        Runs on CUDA when present, else on the CPU.
  gt    the scene's ground-truth masks (scene.json `gt`): parts for default/s, objects for m/l.

Output: masks.zarr/masks [4,T,H,W] int32 (levels default, s, m, l; -1 = no mask; ids dense
0..n-1 per level, in order of first appearance), an object table (level, id, first_frame,
last_frame, frames, pixel_count; gt adds name and gt_id) and a contact sheet PNG.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.defaults import schema_default
from pipeline.errors import UserError
from pipeline.segment import LEVELS
from pipeline.segment.generator import GeneratorSettings
from pipeline.segment.tracker import TrackerSettings
from pipeline.store import atomic_path, create_group, open_group, provenance, require_arrays, write_parquet

BACKENDS = ("sam2", "gt")
DEFAULT_MODEL_CONFIG = schema_default("segment.model_config")


def segment(
    frames: str | os.PathLike,
    scene_json: str | os.PathLike,
    out: str | os.PathLike,
    objects: str | os.PathLike,
    contact_sheet: str | os.PathLike,
    *,
    backend: str = "sam2",
    model_config: str = DEFAULT_MODEL_CONFIG,
    checkpoint: str | os.PathLike | None = None,
    random_init: int | None = None,
    device: str = "auto",
    generator: GeneratorSettings = GeneratorSettings(),
    tracker: TrackerSettings = TrackerSettings(),
    sheet_columns: int = 6,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every frame of `frames` at four levels; return the object table."""
    if backend not in BACKENDS:
        raise UserError(f"unknown segmentation backend {backend!r} (config key `segment.backend`); use one of {BACKENDS}")
    if tracker.detect_every < 1:
        raise UserError(f"segment.detect_every must be >= 1, got {tracker.detect_every}")
    group = open_group(frames, what="frames.zarr")
    require_arrays(group, ["rgb"], what=f"frames.zarr {frames}")
    rgb = group["rgb"]
    num_frames, height, width = (int(x) for x in rgb.shape[:3])
    scene = _read_scene(scene_json)

    params, inputs, checkpoints, names = _recipe(backend, scene, scene_json, frames, model_config=model_config,
                                                 checkpoint=checkpoint, random_init=random_init, generator=generator,
                                                 tracker=tracker)
    with atomic_path(out) as tmp:
        store = create_group(tmp)
        from pipeline.segment.writer import MaskWriter

        writer = MaskWriter(store, num_frames, height, width)
        if backend == "gt":
            from pipeline.segment.gt import gt_id_maps

            for t, id_maps in gt_id_maps(scene, str(scene_json), num_frames, height, width):
                writer.write(t, id_maps)
            used_device = "cpu"
        else:
            used_device = _run_sam2(
                rgb, writer, model_config=model_config, checkpoint=checkpoint, random_init=random_init,
                device=device, generator=generator, tracker=tracker, out=Path(out), progress=progress,
            )  # fmt: skip
        table, remaps = writer.finish()
        if backend == "gt":
            table = _with_gt_names(table, remaps, names)
        record = provenance("segment", params, inputs, checkpoints=checkpoints,
                            extra={"device": used_device, "levels": list(LEVELS)})
        store.attrs.update(_mask_attrs(record, backend, dict(group.attrs), scene))
        write_parquet(objects, table, provenance=record)
        title = f"{scene.get('dataset', '')}/{scene.get('scene', '')}  segment: {backend}".strip()
        from pipeline.segment.contact_sheet import write_contact_sheet

        write_contact_sheet(contact_sheet, rgb, store["masks"], columns=sheet_columns, title=title)
    return table


def _recipe(backend: str, scene: dict, scene_json, frames, *, model_config, checkpoint, random_init, generator,
            tracker) -> tuple[dict, dict, dict, dict | None]:
    """(params, inputs, checkpoints) the provenance records, and the ground-truth names (backend gt)."""
    params: dict = {"backend": backend}
    inputs: dict = {"frames": frames, "scene_json": scene_json}
    checkpoints: dict = {}
    names = None
    if backend == "sam2":
        params.update(model_config=model_config, random_init=random_init, **asdict(generator), **asdict(tracker))
        if random_init is None:
            checkpoints["segment.checkpoint"] = checkpoint
    else:
        from pipeline.segment.gt import gt_sources

        instance_dir, part_dir, names = gt_sources(scene, str(scene_json))
        inputs.update(gt_instance=instance_dir, gt_part=part_dir)
    return params, inputs, checkpoints, names


def _mask_attrs(record: dict, backend: str, frame_attrs: dict, scene: dict) -> dict:
    return {
        "provenance": record,
        "levels": list(LEVELS),
        "backend": backend,
        "frame_names": list(frame_attrs.get("frame_names", scene.get("frame_names", []))),
        "source_indices": list(frame_attrs.get("source_indices", scene.get("source_indices", []))),
    }


def _read_scene(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"scene.json not found: {p}")
    try:
        scene = json.loads(p.read_text())
    except ValueError as exc:
        raise UserError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(scene, dict):
        raise UserError(f"{p} does not hold a JSON object")
    return scene


def _with_gt_names(table: pd.DataFrame, remaps: list[dict[int, int]], names: dict[str, dict[int, str]]) -> pd.DataFrame:
    from pipeline.segment.gt import LEVEL_SOURCE

    gt_ids, labels = [], []
    inverse = [{dense: raw for raw, dense in m.items()} for m in remaps]
    for level, dense in zip(table["level"], table["id"]):
        raw = inverse[LEVELS.index(level)][int(dense)]
        gt_ids.append(raw)
        labels.append(names[LEVEL_SOURCE[level]].get(raw, f"{LEVEL_SOURCE[level]} {raw}"))
    table = table.copy()
    table["name"] = labels
    table["gt_id"] = np.asarray(gt_ids, dtype="int64")
    return table


def working_shape(height: int, width: int, working_size: int) -> tuple[int, int]:
    """Frame size the model sees: short side `working_size`, never enlarged."""
    short = min(height, width)
    if working_size <= 0 or short <= working_size:
        return height, width
    scale = working_size / short
    return max(1, round(height * scale)), max(1, round(width * scale))


@contextlib.contextmanager
def _quiet_sam2_bars():
    """SAM 2 draws a progress bar per propagation call (one per detection interval); one overall bar is enough."""
    import sam2.sam2_video_predictor as video
    import sam2.utils.misc as misc

    saved = video.tqdm, misc.tqdm
    video.tqdm = misc.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        video.tqdm, misc.tqdm = saved


def _run_sam2(
    rgb, writer, *, model_config, checkpoint, random_init, device, generator, tracker, out: Path, progress: bool
) -> str:
    import cv2
    import torch
    from PIL import Image
    from tqdm import tqdm

    from pipeline.segment.generator import MultiLevelMaskGenerator
    from pipeline.devices import resolve_device
    from pipeline.segment.sam2_model import build_sam2_tracker
    from pipeline.segment.tracker import track

    num_frames, height, width = (int(x) for x in rgb.shape[:3])
    dev = torch.device(resolve_device(device))
    model = build_sam2_tracker(model_config, checkpoint, device=dev, random_init=random_init)
    work_h, work_w = working_shape(height, width, tracker.working_size)

    def working_frame(t: int) -> np.ndarray:
        frame = np.asarray(rgb[t])
        if (work_h, work_w) != (height, width):
            frame = cv2.resize(frame, (work_w, work_h), interpolation=cv2.INTER_AREA)
        return frame

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.jpeg-") as jpeg_dir,
        autocast,
        _quiet_sam2_bars(),
    ):
        for t in range(num_frames):  # SAM 2's video loader reads a folder of numbered JPEGs
            Image.fromarray(working_frame(t)).save(Path(jpeg_dir) / f"{t:05d}.jpg", quality=95)
        masks_of = MultiLevelMaskGenerator(model, generator)
        with tqdm(total=num_frames, desc="segment", unit="frame", disable=not progress) as bar:
            for t, id_maps in track(model, jpeg_dir, num_frames, masks_of, tracker, progress=bar):
                if (work_h, work_w) != (height, width):
                    id_maps = np.stack(
                        [cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in id_maps]
                    )
                writer.write(t, id_maps)
    return dev.type  # not the index: which GPU ran it does not change the result


# ----------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    parser.add_argument("--frames", required=True, help="frames.zarr from the frames stage")
    parser.add_argument("--scene-json", required=True, help="scene.json from the frames stage")
    parser.add_argument("--out", required=True, help="masks.zarr to write")
    parser.add_argument("--objects", required=True, help="object table (.parquet) to write")
    parser.add_argument("--contact-sheet", required=True, help="mask overlay PNG to write")
    parser.add_argument("--backend", choices=BACKENDS, default=schema_default("segment.backend"), help="segment.backend")
    parser.add_argument("--model-config", default=DEFAULT_MODEL_CONFIG, help="segment.model_config: a sam2 package config")
    parser.add_argument("--checkpoint", default=None, help="segment.checkpoint: SAM 2 weights (.safetensors)")
    parser.add_argument(
        "--random-init", type=int, default=None, metavar="SEED",
        help="TESTS AND BENCHMARKS ONLY: random SAM 2 weights from SEED instead of --checkpoint",
    )  # fmt: skip
    parser.add_argument("--device", default=schema_default("segment.device"), help="auto (a leased GPU when there is one, else cpu), cpu, cuda[:k]")
    parser.add_argument("--sheet-columns", type=int, default=6, help="frames shown in the contact sheet")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for settings, group_name in ((GeneratorSettings, "automatic masks"), (TrackerSettings, "tracking")):
        group = parser.add_argument_group(group_name)
        for f in fields(settings):
            group.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f"default {f.default}")


def run(args) -> None:
    from pipeline.cli import run_stage

    def pick(settings):
        return settings(**{f.name: getattr(args, f.name) for f in fields(settings)})

    def summary(table) -> str:
        counts = table.groupby("level", sort=False)["id"].count().reindex(LEVELS, fill_value=0)
        return json.dumps({"out": str(args.out), "objects_per_level": {k: int(v) for k, v in counts.items()}})

    run_stage(segment, args, values={"generator": pick(GeneratorSettings), "tracker": pick(TrackerSettings)}, summary=summary)
