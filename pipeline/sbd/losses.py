"""The decoder's losses (as 4DLangVGGT): masked L1 + cosine on the latents, L1/L2 on RGB.

The video head, when the scenes have video latents, gets the same L1 + cosine on its latents,
weighted by `lambda_video`. `LOSS_COLUMNS` names the parts as the training log records them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pipeline.sbd.settings import TrainSettings

LOSS_COLUMNS = ("loss", "lang_l1", "lang_cos", "rgb_l1", "rgb_l2", "video_l1", "video_cos")


def _cos_loss(pred, target, valid, *, channel_dim: int, over_width: bool, weight=None) -> torch.Tensor:
    if over_width:
        # Upstream: 1 - cos over the last (image-width) axis of the masked tensors.
        m = valid.unsqueeze(channel_dim).to(pred.dtype)
        return 1.0 - F.cosine_similarity(pred * m, target * m, dim=-1).mean()
    cos = F.cosine_similarity(pred, target, dim=channel_dim)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    if weight is None:
        return (1.0 - cos)[valid].mean()
    return ((1.0 - cos) * weight)[valid].sum() / weight[valid].sum().clamp_min(1e-12)


def _masked_l1(pred, target, valid, *, channel_dim: int, weight=None) -> torch.Tensor:
    # As upstream: L1 of the masked tensors, averaged over every element (masked ones count as 0).
    m = valid.unsqueeze(channel_dim).to(pred.dtype)
    if weight is not None:  # per-pixel weights averaging 1 over the valid pixels
        m = m * weight.unsqueeze(channel_dim).to(pred.dtype)
    return (pred * m - target * m).abs().mean()


def sbd_losses(pred: dict[str, torch.Tensor], batch: dict[str, Any], settings: TrainSettings) -> dict[str, torch.Tensor]:
    lang = pred["lang"].float()
    balance = settings.balance_objects
    lang_weight = batch["lang_weight"] if balance else None
    parts = {
        "lang_l1": _masked_l1(lang, batch["lang"], batch["lang_valid"], channel_dim=2, weight=lang_weight),
        "lang_cos": _cos_loss(lang, batch["lang"], batch["lang_valid"], channel_dim=2,
                              over_width=settings.cos_over_width, weight=lang_weight),
    }
    total = settings.lambda_l1 * parts["lang_l1"] + settings.lambda_cos * parts["lang_cos"]
    rgb = pred["rgb"].float()
    parts["rgb_l1"] = (rgb - batch["rgb"]).abs().mean()
    parts["rgb_l2"] = ((rgb - batch["rgb"]) ** 2).mean()
    if settings.rgb_loss:
        total = total + settings.lambda_rgb * parts["rgb_l1"] + (1.0 - settings.lambda_rgb) * parts["rgb_l2"]
    if "video" in pred and "video" in batch:
        video = pred["video"].float()
        video_weight = batch["video_weight"] if balance else None
        parts["video_l1"] = _masked_l1(video, batch["video"], batch["video_valid"], channel_dim=1, weight=video_weight)
        parts["video_cos"] = _cos_loss(video, batch["video"], batch["video_valid"], channel_dim=1,
                                       over_width=settings.cos_over_width, weight=video_weight)
        total = total + settings.lambda_video * (settings.lambda_l1 * parts["video_l1"] + settings.lambda_cos * parts["video_cos"])
    parts["loss"] = total
    return parts


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
