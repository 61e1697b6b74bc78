"""Training data for the decoder: tokens.zarr + masks.zarr + latents + frames, per frame.

Targets are per-pixel latents at the frames' resolution, over the region the decoder's output
covers (`output_box`), in frame coordinates. Two placements (config `sbd.output_placement`):

- `resize` (upstream's, the default): the output is resized (bilinear, align_corners=False) to
  the whole frame, the size before the geometry stage's resize and crop. 4DLangVGGT trains and
  renders this way (its loader returns the pre-crop size), so its released decoder expects it.
- `crop`: the output covers only the crop box the geometry stage fed to the model (tokens.zarr
  attrs `transform`, mapped back to frame pixels), and rendering places it at the crop offset.

Training and rendering use the same box, so predictions and targets compare pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from pipeline import store
from pipeline.errors import UserError
from pipeline.geometry.inputs import crop_box_in_frame  # noqa: F401  (also read from here)
from pipeline.levels import LANGUAGE_LEVELS, MASK_LEVELS
from pipeline.tokenstore import open_layers

LEVEL_ROWS = tuple(MASK_LEVELS.index(level) for level in LANGUAGE_LEVELS)  # masks / rows level of each language level
PLACEMENTS = ("resize", "crop")  # where the decoder output goes; see the module docstring
LARGE_ROW = 3


def output_box(crop_box: Sequence[int], frame_hw: Sequence[int], placement: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) in frame pixels that the decoder output covers."""
    if placement == "resize":
        return 0, 0, int(frame_hw[0]), int(frame_hw[1])
    if placement == "crop":
        return tuple(int(v) for v in crop_box)
    raise UserError(f"sbd.output_placement must be one of {list(PLACEMENTS)}, got {placement!r}")


@dataclass(frozen=True)
class SceneSources:
    """The artifacts of one scene that the decoder trains on."""

    tokens: Path
    masks: Path
    clip_latents: Path
    frames: Path
    video_latents: Path | None = None

    @property
    def name(self) -> str:
        return self.tokens.parent.name or str(self.tokens)


class TokenReader:
    """Reads the four token layers of tokens.zarr one frame chunk at a time (decoded by `pipeline.tokenstore`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        group = store.open_group(self.path, what="tokens.zarr")
        attrs = dict(group.attrs)
        layers = attrs.get("layers")
        if not layers or len(layers) != 4:
            raise UserError(f"{self.path}: attrs `layers` must list the 4 token layers the decoder reads, got {layers!r}")
        self.layers = [int(k) for k in layers]
        self.arrays = open_layers(group, self.layers, what=f"tokens.zarr {self.path}")
        shape = self.arrays[0].shape
        if any(a.shape != shape for a in self.arrays) or len(shape) != 4:
            raise UserError(f"{self.path}: token layers must all be [T,h,w,C]; got {[a.shape for a in self.arrays]}")
        self.num_frames, self.grid_h, self.grid_w, self.dim_in = (int(s) for s in shape)
        self.patch_size = int(attrs.get("patch_size", 14))
        self.transform = attrs.get("transform")
        self.image_size = attrs.get("image_size") or [self.grid_h * self.patch_size, self.grid_w * self.patch_size]
        source = (self.transform or {}).get("source_size") or self.image_size
        self.frame_hw = (int(source[0]), int(source[1]))
        self.frame_names = list(attrs.get("frame_names") or [])
        self.source_indices = list(attrs.get("source_indices") or range(self.num_frames))
        self.attrs = attrs

    def read(self, frames: Sequence[int]) -> list[torch.Tensor]:
        """Four float16 tensors `[B, h, w, C]` for the given frame indices."""
        return [torch.from_numpy(np.ascontiguousarray(arr.read(frames))) for arr in self.arrays]

    def crop_box(self) -> tuple[int, int, int, int]:
        return crop_box_in_frame(self.transform, self.frame_hw)

    def output_box(self, placement: str) -> tuple[int, int, int, int]:
        return output_box(self.crop_box(), self.frame_hw, placement)


class _Latents:
    """features [N,C] in memory + rows [L,T,K] read per frame."""

    def __init__(self, path: Path, what: str):
        group = store.open_group(path, what=what)
        store.require_arrays(group, ["features", "rows"], what=f"{what} {path}")
        self.features = torch.from_numpy(np.asarray(group["features"][...], dtype=np.float32))
        self.rows = group["rows"]
        self.dim = int(self.features.shape[1])
        attrs = dict(group.attrs)
        self.space = attrs.get("space")
        self.autoencoder = attrs.get("autoencoder")

    def pixel_targets(self, level_row: int, t: int, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """`ids` [H,W] mask ids -> (latents [C,H,W], valid [H,W]); invalid where id < 0 or row < 0."""
        rows = np.asarray(self.rows[level_row, t], dtype=np.int64)
        k = rows.shape[0]
        in_range = (ids >= 0) & (ids < k)
        row = np.where(in_range, rows[np.clip(ids, 0, max(k - 1, 0))] if k else -1, -1)
        valid = row >= 0
        feats = self.features[torch.from_numpy(np.where(valid, row, 0))]  # [H,W,C]
        valid_t = torch.from_numpy(valid)
        feats = feats * valid_t[..., None]
        return feats.permute(2, 0, 1).contiguous(), valid_t


def object_balance(ids: np.ndarray, valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights [H,W] giving every object of the frame the same total weight.

    Weights average 1 over the valid pixels, so a balanced loss keeps the plain loss's scale;
    without them a cup of 600 pixels weighs 35x less than the floor around it.
    """
    mask = valid.numpy()
    if not mask.any():
        return torch.zeros(mask.shape, dtype=torch.float32)
    labels, inverse, counts = np.unique(ids[mask], return_inverse=True, return_counts=True)
    weights = np.zeros(mask.shape, np.float32)
    weights[mask] = (mask.sum() / (len(labels) * counts))[inverse]
    return torch.from_numpy(weights)


class SceneData:
    """One scene's inputs and per-pixel targets, frame by frame."""

    def __init__(self, sources: SceneSources, *, cache: bool = False, placement: str = "resize"):
        self.sources = sources
        self.tokens = TokenReader(sources.tokens)
        masks = store.open_group(sources.masks, what="masks.zarr")
        store.require_arrays(masks, ["masks"], what=f"masks.zarr {sources.masks}")
        self.masks = masks["masks"]
        frames = store.open_group(sources.frames, what="frames.zarr")
        store.require_arrays(frames, ["rgb"], what=f"frames.zarr {sources.frames}")
        self.rgb = frames["rgb"]
        self.clip = _Latents(sources.clip_latents, "clip_latents.zarr")
        self.video = _Latents(sources.video_latents, "video_latents.zarr") if sources.video_latents else None

        T = self.tokens.num_frames
        H, W = int(self.rgb.shape[1]), int(self.rgb.shape[2])
        if self.rgb.shape[0] != T or self.masks.shape[1] != T:
            raise UserError(
                f"frame counts differ: tokens {T} ({sources.tokens}), frames {self.rgb.shape[0]} ({sources.frames}), "
                f"masks {self.masks.shape[1]} ({sources.masks})"
            )
        if tuple(self.masks.shape[2:]) != (H, W) or self.masks.shape[0] < 4:
            raise UserError(f"masks.zarr {sources.masks} is {list(self.masks.shape)}; expected [4,{T},{H},{W}]")
        if self.tokens.frame_hw != (H, W):
            raise UserError(
                f"tokens.zarr {sources.tokens} was made from {list(self.tokens.frame_hw)} frames "
                f"(attrs transform.source_size) but frames.zarr {sources.frames} is {H}x{W}"
            )
        self.frame_hw = (H, W)
        self.placement = placement
        self.box = self.tokens.output_box(placement)
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.tokens.num_frames

    def set_cache(self, enabled: bool) -> None:
        self._cache = {} if enabled else None

    def target_bytes(self) -> int:
        """Bytes of one frame's targets, to decide whether a scene's targets fit in memory."""
        per_pixel = 3 * (self.clip.dim * 4 + 5) + 3 * 4 + (self.video.dim * 4 + 5 if self.video is not None else 0)
        return self.box[2] * self.box[3] * per_pixel

    @property
    def out_size(self) -> tuple[int, int]:
        return self.box[2], self.box[3]

    def targets(self, t: int) -> dict[str, torch.Tensor]:
        """Per-pixel targets of frame t inside the output box (frame coordinates)."""
        if self._cache is not None and t in self._cache:
            return self._cache[t]
        top, left, h, w = self.box
        ys, xs = slice(top, top + h), slice(left, left + w)
        ids = np.asarray(self.masks[:, t, ys, xs], dtype=np.int64)
        lang, valid = zip(*(self.clip.pixel_targets(r, t, ids[r]) for r in LEVEL_ROWS))
        item = {
            "lang": torch.stack(lang),  # [3,C,h,w]
            "lang_valid": torch.stack(valid),  # [3,h,w]
            "lang_weight": torch.stack([object_balance(ids[r], v) for r, v in zip(LEVEL_ROWS, valid)]),
            "rgb": torch.from_numpy(np.asarray(self.rgb[t, ys, xs], dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous(),
        }
        if self.video is not None:
            item["video"], item["video_valid"] = self.video.pixel_targets(0, t, ids[LARGE_ROW])
            item["video_weight"] = object_balance(ids[LARGE_ROW], item["video_valid"])
        if self._cache is not None:
            self._cache[t] = item
        return item

    def batch(self, frames: Sequence[int]) -> dict[str, Any]:
        items = [self.targets(t) for t in frames]
        out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        out["tokens"] = self.tokens.read(frames)
        out["out_size"] = self.out_size
        out["frames"] = list(frames)
        return out


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[tuple[int, list[int]]]:
    """(scene, frames) batches of one epoch: a function of (seed, epoch) only, so resumes replay it.

    Batches never mix scenes (their token grids and crop boxes differ).
    """
    gen = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    batches = []
    for s, n in enumerate(lengths):
        order = torch.randperm(n, generator=gen).tolist()
        batches += [(s, order[i : i + batch_size]) for i in range(0, n, batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def steps_per_epoch(lengths: Sequence[int], batch_size: int) -> int:
    return sum(math.ceil(n / batch_size) for n in lengths)


class StepDataset(torch.utils.data.Dataset):
    """Item j = the batch of global step `first_step + j`, planned from (seed, epoch) alone.

    One DataLoader then covers the whole run (workers start once), and a resumed run replays
    exactly the batches an uninterrupted one would have seen.
    """

    def __init__(self, scenes: Sequence[SceneData], batch_size: int, seed: int, first_step: int, last_step: int):
        self.scenes, self.batch_size, self.seed = scenes, batch_size, seed
        self.lengths = [len(s) for s in scenes]
        self.n_steps = steps_per_epoch(self.lengths, batch_size)
        self.first_step, self.last_step = first_step, last_step
        self._plans: dict[int, list[tuple[int, list[int]]]] = {}

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step)

    def plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        if epoch not in self._plans:
            self._plans = {epoch: epoch_batches(self.lengths, self.batch_size, self.seed, epoch)}
        return self._plans[epoch]

    def __getitem__(self, j: int) -> dict[str, Any]:
        epoch, i = divmod(self.first_step + j, self.n_steps)
        s, frames = self.plan(epoch)[i]
        out = self.scenes[s].batch(frames)
        out["scene"] = s
        return out


def _identity(x):
    return x


def iterate_steps(
    scenes: Sequence[SceneData], batch_size: int, seed: int, first_step: int, last_step: int, num_workers: int = 0
) -> Iterator[dict[str, Any]]:
    dataset = StepDataset(scenes, batch_size, seed, first_step, last_step)
    if num_workers <= 0:
        for j in range(len(dataset)):
            yield dataset[j]
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity, pin_memory=torch.cuda.is_available()
    )
    yield from loader
