"""Automatic mask generation on one frame, split into LangSplat's four levels.

A grid of single-point prompts goes through SAM 2's mask decoder with multimask output. The
three outputs per point are kept apart: `s`, `m`, `l` take output 0, 1, 2 and `default`
takes all three. Each level is then filtered on its own, the way SAM's automatic generator
filters one list (predicted-IoU and stability thresholds, box NMS, small-region cleanup),
and finally by LangSplat's mask NMS. One image encoding serves all four levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.segment import LEVELS
from pipeline.segment.mask_nms import mask_nms

STABILITY_OFFSET = 1.0  # SAM's stability score: IoU of the mask at logit thresholds +-1


@dataclass(frozen=True)
class GeneratorSettings:
    """Automatic-mask settings; defaults are LangSplat's (4DLangSplat's DEVA run noted beside)."""

    points_per_side: int = 32  # 4DLS/DEVA: 64
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.7  # 4DLS/DEVA: 0.88
    stability_score_thresh: float = 0.85  # 4DLS/DEVA: 0.95
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 100  # 4DLS/DEVA: 0; in working-resolution pixels
    nms_iou_thr: float = 0.8  # LangSplat masks_update(iou_thr, score_thr, inner_thr)
    nms_score_thr: float = 0.7
    nms_inner_thr: float = 0.5


@dataclass
class LevelMasks:
    """One level's masks on one frame, best score first."""

    masks: torch.Tensor  # [N,H,W] bool
    scores: torch.Tensor  # [N] stability x predicted IoU

    def __len__(self) -> int:
        return int(self.masks.shape[0])


class MultiLevelMaskGenerator:
    def __init__(self, model, settings: GeneratorSettings):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model)
        self.settings = settings
        side = settings.points_per_side
        offset = 0.5 / side
        ticks = np.linspace(offset, 1.0 - offset, side)
        xs, ys = np.meshgrid(ticks, ticks)
        self.grid = np.stack([xs.ravel(), ys.ravel()], axis=1)  # [P,2] in [0,1], x then y

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> dict[str, LevelMasks]:
        """Masks of `image` ([H,W,3] uint8) per level."""
        self.predictor.set_image(image)
        return self._generate(*image.shape[:2])

    @torch.inference_mode()
    def from_backbone(self, backbone_out: dict, height: int, width: int) -> dict[str, LevelMasks]:
        """Masks from image features the video predictor already computed for this frame."""
        p = self.predictor
        p.reset_predictor()
        _, vision_feats, _, _ = p.model._prepare_backbone_features(backbone_out)
        if p.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + p.model.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).view(1, -1, *size) for feat, size in zip(vision_feats[::-1], p._bb_feat_sizes[::-1])
        ][::-1]
        p._features = {"image_embed": feats[-1], "high_res_feats": feats[:-1]}
        p._orig_hw = [(height, width)]
        p._is_image_set = True
        return self._generate(height, width)

    def _generate(self, h: int, w: int) -> dict[str, LevelMasks]:
        s = self.settings
        device = self.predictor.device
        points = torch.as_tensor(self.grid * np.array([w, h]), dtype=torch.float32, device=device)
        found: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(points), s.points_per_batch):
            batch = points[start : start + s.points_per_batch]
            coords = self.predictor._transforms.transform_coords(batch, normalize=True, orig_hw=(h, w))
            labels = torch.ones(len(batch), 1, dtype=torch.int, device=device)
            logits, iou, _ = self.predictor._predict(coords[:, None, :], labels, multimask_output=True, return_logits=True)
            found.append(self._threshold(logits, iou))
        self.predictor.reset_predictor()
        candidates = {k: torch.cat([f[k] for f in found]) for k in found[0]}
        return {level: self._filter_level(candidates, level) for level in LEVELS}

    def _threshold(self, logits: torch.Tensor, iou: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keep the point outputs that pass the quality thresholds; logits [B,3,H,W]."""
        s = self.settings
        output = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        logits, iou, output = logits.flatten(0, 1), iou.flatten(0, 1), output.flatten(0, 1)
        threshold = self.predictor.mask_threshold
        high = (logits > threshold + STABILITY_OFFSET).flatten(1).sum(1)
        low = (logits > threshold - STABILITY_OFFSET).flatten(1).sum(1)
        stability = high.float() / low.float().clamp_min(1.0)
        masks = logits > threshold
        keep = (iou > s.pred_iou_thresh) & (stability >= s.stability_score_thresh) & masks.flatten(1).any(1)
        return {"masks": masks[keep], "iou": iou[keep].float(), "stability": stability[keep], "output": output[keep]}

    def _filter_level(self, candidates: dict[str, torch.Tensor], level: str) -> LevelMasks:
        from sam2.utils.amg import batched_mask_to_box
        from torchvision.ops import nms

        s = self.settings
        if level != "default":
            pick = candidates["output"] == LEVELS.index(level) - 1
            candidates = {k: v[pick] for k, v in candidates.items()}
        masks, iou, stability = candidates["masks"], candidates["iou"], candidates["stability"]
        if len(masks):
            keep = nms(batched_mask_to_box(masks).float(), iou, s.box_nms_thresh)
            masks, iou, stability = masks[keep], iou[keep], stability[keep]
        if len(masks) and s.min_mask_region_area > 0:
            masks = _remove_small_regions(masks, s.min_mask_region_area)
            present = masks.flatten(1).any(1)
            masks, iou, stability = masks[present], iou[present], stability[present]
        scores = stability * iou
        keep = mask_nms(masks, scores, iou_thr=s.nms_iou_thr, score_thr=s.nms_score_thr, inner_thr=s.nms_inner_thr)
        return LevelMasks(masks=masks[keep], scores=scores[keep])


def _remove_small_regions(masks: torch.Tensor, min_area: int) -> torch.Tensor:
    """Fill holes and drop islands smaller than `min_area` pixels (SAM's post-processing)."""
    from sam2.utils.amg import remove_small_regions

    cleaned = []
    for mask in masks.cpu().numpy():
        mask, _ = remove_small_regions(mask, min_area, mode="holes")
        mask, _ = remove_small_regions(mask, min_area, mode="islands")
        cleaned.append(mask)
    return torch.from_numpy(np.stack(cleaned)).to(masks.device)
