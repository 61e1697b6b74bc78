"""Drive the geometry model over a frame sequence in one of three modes.

- `stream` (StreamVGGT): one frame at a time; global attention sees the frame itself and the
  key/value cache of at most `cache_window` earlier frames (None = all earlier frames).
- `batch`: the same causal, windowed result computed `chunk_size` frames per pass (None = the
  whole sequence in one pass) with a block-causal banded mask; the cache carries the window
  across chunks. Equal to `stream` up to float rounding.
- `offline` (VGGT): every frame attends to every other frame, in one pass; no window.

The aggregator runs under bf16 autocast when asked; the heads always run in fp32, as upstream.
For long streams two training-free savings are optional: `cache_dtype="bfloat16"` stores the
key/value cache in bf16 whatever the compute precision, and `merge_ratio` (stream mode) merges
that share of each cached frame's patch tokens into similar ones (`layers.merge_frames`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.geometry.heads import pose_encoding_to_cameras
from pipeline.geometry.time_cache import MAX_MERGE_RATIO, TimeMask
from pipeline.geometry.model import GeometryModel

MODES = ("stream", "batch", "offline")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class FrameOutput:
    """Everything the stage stores for one frame (CPU tensors, fp32)."""

    index: int
    tokens: dict[int, torch.Tensor]  # layer -> [P, 2C], all tokens (camera, registers, patches)
    camera_token: torch.Tensor  # [2C], token 0 of the last layer
    pose_enc: torch.Tensor  # [9]
    extrinsics: torch.Tensor  # [3, 4]
    intrinsics: torch.Tensor  # [3, 3]
    depth: torch.Tensor  # [H, W]
    depth_conf: torch.Tensor  # [H, W]
    world_points: torch.Tensor | None = None  # [H, W, 3] when asked for
    world_points_conf: torch.Tensor | None = None  # [H, W]
    dynamic_mask: torch.Tensor | None = None  # [h, w], PAGE-4D models only


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _as_tensor(frame) -> torch.Tensor:
    """uint8 [H, W, 3] array (or float [3, H, W] tensor in [0, 1]) -> float [3, H, W]."""
    if isinstance(frame, torch.Tensor) and frame.dtype.is_floating_point:
        return frame.float()
    arr = np.asarray(frame)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0


def _chunks(frames: Iterable, size: int | None) -> Iterator[list]:
    buf = []
    for f in frames:
        buf.append(f)
        if size is not None and len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


@torch.no_grad()
def run_geometry(
    model: GeometryModel,
    frames: Iterable,
    *,
    mode: str = "stream",
    cache_window: int | None = 128,
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    keep_layers=None,
    points: bool = False,
    cache_dtype: str | None = None,
    merge_ratio: float = 0.0,
) -> Iterator[FrameOutput]:
    """Yield one FrameOutput per input frame, in order, as soon as its chunk is done."""
    _check_run_options(mode, dtype, cache_window, chunk_size, cache_dtype, merge_ratio)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    amp = DTYPES[dtype]
    cfg = model.config
    last = cfg.depth - 1
    store = set(cfg.dpt_layers if keep_layers is None else keep_layers)
    bad = sorted(i for i in store if not 0 <= i <= last)
    if bad:
        raise UserError(f"token layers {bad} do not exist in a model of depth {cfg.depth}")
    needed = store | set(cfg.dpt_layers) | {last}
    mask, size, agg_cache, cam_cache = _attention_plan(model, mode, cache_window, chunk_size, cache_dtype, merge_ratio)
    index = 0
    for chunk in _chunks(frames, size):
        images = torch.stack([_as_tensor(f) for f in chunk]).unsqueeze(0).to(device)  # [1, S, 3, H, W]
        H, W = images.shape[-2:]
        with _autocast(device, amp):
            agg = model.aggregator(images, keep_layers=needed, mask=mask, cache=agg_cache)
        tokens = {k: v.float() for k, v in agg.layers.items()}
        with torch.autocast(device_type=device.type, enabled=False):
            poses = model.camera_head(tokens[last][:, :, 0], mask=mask, cache=cam_cache)[-1]
            depth, depth_conf = model.depth_head(tokens, (H, W), model.patch_start)
            world, world_conf = model.point_head(tokens, (H, W), model.patch_start) if points else (None, None)
            extr, intr = pose_encoding_to_cameras(poses, (H, W))
        for s in range(images.shape[1]):
            yield FrameOutput(
                index=index,
                tokens={k: tokens[k][0, s].cpu() for k in sorted(store)},
                camera_token=tokens[last][0, s, 0].cpu(),
                pose_enc=poses[0, s].cpu(),
                extrinsics=extr[0, s].cpu(),
                intrinsics=intr[0, s].cpu(),
                depth=depth[0, s, ..., 0].cpu(),
                depth_conf=depth_conf[0, s].cpu(),
                world_points=None if world is None else world[0, s].cpu(),
                world_points_conf=None if world is None else world_conf[0, s].cpu(),
                dynamic_mask=None if agg.dynamic_mask is None else agg.dynamic_mask[0, s].float().cpu(),
            )
            index += 1


def _check_run_options(mode: str, dtype: str, cache_window, chunk_size, cache_dtype, merge_ratio: float) -> None:
    if mode not in MODES:
        raise UserError(f"unknown geometry mode {mode!r}; expected one of {', '.join(MODES)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if cache_window is not None and cache_window < 1:
        raise UserError(f"cache window must be at least 1 frame (or None for unbounded), got {cache_window}")
    if chunk_size is not None and chunk_size < 1:
        raise UserError(f"chunk size must be at least 1 frame, got {chunk_size}")
    if cache_dtype is not None and cache_dtype not in DTYPES:
        raise UserError(f"unknown cache dtype {cache_dtype!r}; expected one of {', '.join(DTYPES)}")
    if not 0 <= merge_ratio <= MAX_MERGE_RATIO:
        raise UserError(f"token merge ratio must be in [0, {MAX_MERGE_RATIO}], got {merge_ratio}")
    if merge_ratio and mode != "stream":
        raise UserError(f"token merging works on the cache of `stream` mode, not {mode!r} (`geometry.merge_ratio`)")


def _attention_plan(model, mode: str, cache_window, chunk_size, cache_dtype, merge_ratio: float):
    """(time mask, frames per chunk (None: all at once), aggregator cache, camera-head cache) of a mode."""
    if mode == "offline":
        return TimeMask(causal=False), None, None, None
    mask = TimeMask(causal=True, window=cache_window)
    size = 1 if mode == "stream" else chunk_size
    agg_cache = model.aggregator.new_cache(cache_window, dtype=cache_dtype and DTYPES[cache_dtype], merge_ratio=merge_ratio)
    return mask, size, agg_cache, model.camera_head.new_cache(cache_window)
