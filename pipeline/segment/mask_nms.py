"""LangSplat's mask NMS: the filter that makes each level a set of distinct, non-nested masks.

Masks are ranked by score (stability x predicted IoU). A mask is dropped when
- its IoU with any higher-ranked mask exceeds `iou_thr` (the test is on the full ranking,
  not greedy: a dropped mask still suppresses lower ones),
- its score is not above `score_thr` (if no mask passes, the three best are let through),
- it lies mostly inside another, much larger mask of the same level: at least 85 % of it is
  covered by the other, which in turn is less than half covered by it, and the product of
  those two coverages is below `inner_thr`.
"""

from __future__ import annotations

import torch

INSIDE = 0.85  # "mostly inside": share of the smaller mask covered by the larger one
OUTSIDE = 0.5  # ... while the larger one is covered by less than this share
KEEP_IF_NONE_PASS = 3


def mask_nms(
    masks: torch.Tensor, scores: torch.Tensor, *, iou_thr: float = 0.8, score_thr: float = 0.7, inner_thr: float = 0.5
) -> torch.Tensor:
    """Indices (into `masks`, best score first) of the masks to keep. masks: [N,H,W] bool."""
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    order = torch.argsort(scores.float(), descending=True)
    flat = masks[order].reshape(n, -1).float()
    area = flat.sum(1).clamp_min(1.0)
    with torch.autocast(device_type=masks.device.type, enabled=False):  # pixel counts need float32
        inter = flat @ flat.T
    union = area[:, None] + area[None, :] - inter
    iou = inter / union.clamp_min(1.0)
    ranked_above = torch.triu(torch.ones(n, n, dtype=torch.bool, device=masks.device), diagonal=1)  # [i, j]: i above j
    duplicate = ((iou > iou_thr) & ranked_above).any(0)

    share_of_row = inter / area[:, None]  # [i, j]: share of mask i covered by mask j
    share_of_col = share_of_row.T  # [i, j]: share of mask j covered by mask i
    # [i, j]: mask i sits inside mask j
    nested = (share_of_row >= INSIDE) & (share_of_col < OUTSIDE) & (share_of_row * share_of_col < inner_thr)
    nested.fill_diagonal_(False)
    inner = nested.any(1)

    sorted_scores = scores.float()[order]
    confident = sorted_scores > score_thr
    if not confident.any():
        confident[: min(KEEP_IF_NONE_PASS, n)] = True
    keep = confident & ~duplicate & ~inner
    return order[keep]
