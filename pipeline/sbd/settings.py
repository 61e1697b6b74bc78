"""The decoder's training settings (upstream 4DLangVGGT's defaults) and its learning-rate schedule."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainSettings:
    """Upstream defaults (4DLangVGGT train.py) unless noted."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 4e-5
    min_lr: float = 1e-6
    warmup_epochs: float = 20.0
    schedule: str = "constant"  # or "cosine"
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    features: int = 128
    hidden_dim: int = 32
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    video_dim: int | None = None  # None: from video_latents.zarr (0 when no scene has them)
    video_hidden_dim: int = 64  # upstream referenced LanguageHead_Video(hidden_dim=64), never released
    lambda_l1: float = 0.2
    lambda_cos: float = 0.01
    lambda_rgb: float = 0.5  # share of L1 in the RGB loss (upstream lambda_img)
    rgb_loss: bool = True  # upstream --joint_train
    lambda_video: float = 1.0  # ours: weight of the video head's L1 + cosine
    cos_over_width: bool = False  # upstream quirk: cosine over the image-width axis
    balance_objects: bool = False  # ours: every object of a frame weighs the same in the latent losses
    output_placement: str = "resize"  # upstream: output resized to the whole frame; "crop": the crop box only
    seed: int = 42
    amp: bool = True  # CUDA only; CPU always runs fp32

    def fingerprint_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def lr_at(settings: TrainSettings, epoch_float: float) -> float:
    """Per-step learning rate: linear warm-up from 0, then constant or cosine to min_lr."""
    if epoch_float < settings.warmup_epochs:
        return settings.lr * epoch_float / settings.warmup_epochs
    if settings.schedule == "constant":
        return settings.lr
    span = max(settings.epochs - settings.warmup_epochs, 1e-12)
    progress = min(1.0, (epoch_float - settings.warmup_epochs) / span)
    return settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
