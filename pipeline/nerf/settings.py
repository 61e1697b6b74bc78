"""The radiance field's training settings and schedule: `NerfSettings`, learning rate, step order."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.nerf.data import SceneData


@dataclass(frozen=True)
class NerfSettings:
    """Training settings; defaults follow VGGT-NeRF / MVSNeRF unless noted."""

    epochs: int = 10
    rays: int = 1024  # rays per step
    lr: float = 5e-5
    min_lr: float = 0.0
    holdout_every: int = 8  # ours: every 8th frame held out (the LLFF convention)
    cameras: str = "auto"
    near: float | None = None
    far: float | None = None
    seed: int = 42
    amp: bool = True  # bfloat16 autocast, CUDA only

    def fingerprint_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def log_columns(num_sources: int) -> tuple[str, ...]:
    return ("epoch", "step", "scene", "target", *(f"source_{i}" for i in range(num_sources)), "loss", "psnr", "lr", "seconds")


def lr_at(settings: NerfSettings, progress: float) -> float:
    return settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(scenes: Sequence[SceneData], seed: int, epoch: int) -> list[tuple[int, int]]:
    """(scene index, target frame) pairs of one epoch, in a seeded order."""
    pairs = [(i, t) for i, s in enumerate(scenes) for t in s.train_frames]
    order = np.random.default_rng([seed, epoch]).permutation(len(pairs))
    return [pairs[k] for k in order]


def step_generator(seed: int, step: int) -> torch.Generator:
    """Rays and sample jitter of a step depend only on (seed, step): a resumed run draws the same."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
