"""Time-agnostic scoring: relevancy maps, upstream's smoothing and thresholds, IoU and pixel accuracy.

Order of operations as in 4DLangSplat `eval.py` (`activate_stream`):
relevancy -> in-place 0.5*(AvgPool + raw) -> min/max normalise -> clip(2n-1) > thresh -> 7x7
majority -> IoU. The level is chosen on the smoothed map's peak, the time-sensitive similarity
reads the mask before the majority smoothing, and IoU reads the mask after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.evaluate.protocol import Protocol


def relevancy_from_cosines(pos: torch.Tensor, neg: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """LERF relevancy: softmax(t*[pos, neg_j])[0] against the hardest negative.

    pos: [..., P] cosines with the positives; neg: [..., J] cosines with the canonical negatives.
    Returns [..., P]: for each positive the smallest positive-probability over the negatives.
    softmax(t*[p, n])[0] = sigmoid(t*(p - n)) falls as n grows, so the minimum over the negatives
    is sigmoid(t*(p - max_j n_j)): the same values (to float rounding) without the [..., P, J, 2]
    pairs, several times faster.
    """
    hardest = neg.max(dim=-1, keepdim=True).values  # [..., 1]
    return torch.sigmoid(temperature * (pos - hardest))


def _avg_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Mean over a k x k window, edges averaged over the pixels that exist.

    Equals `AvgPool2d(k, stride=1, padding=k//2, count_include_pad=False)` (to float rounding) but
    costs O(HW) instead of O(HW k^2): window sums from a float64 integral image.
    """
    if kernel == 1:
        return x.float()
    r = kernel // 2
    H, W = x.shape
    ii = torch.zeros((H + 1, W + 1), dtype=torch.float64)
    ii[1:, 1:] = x.double().cumsum(0).cumsum(1)
    y0 = torch.clamp(torch.arange(H) - r, 0, H)
    y1 = torch.clamp(torch.arange(H) + r + 1, 0, H)
    x0 = torch.clamp(torch.arange(W) - r, 0, W)
    x1 = torch.clamp(torch.arange(W) + r + 1, 0, W)
    sums = ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0]
    counts = (y1 - y0).double()[:, None] * (x1 - x0).double()[None, :]
    return (sums / counts).float()


def _avg_pool_reference(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """torch's AvgPool2d with upstream's arguments (what `_avg_pool` reproduces)."""
    return F.avg_pool2d(x[None, None].float(), kernel, stride=1, padding=kernel // 2, count_include_pad=False)[0, 0]


def smooth_relevancy(relevancy: torch.Tensor, kernel: int = 29) -> torch.Tensor:
    """Upstream's in-place smoothing: 0.5 * (AvgPool(k) + raw); every later step sees this map."""
    relevancy = relevancy.float()
    return 0.5 * (_avg_pool(relevancy, kernel) + relevancy)


def stretch(smoothed: torch.Tensor) -> torch.Tensor:
    """Normalise to [0, 1] by min/max (+1e-9), then clip(2n - 1, 0, 1): only the top half survives."""
    out = smoothed - smoothed.min()
    out = out / (out.max() + 1e-9)
    return torch.clip(out * 2.0 - 1.0, 0.0, 1.0)


def majority_smooth(mask: torch.Tensor, kernel: int = 7, thresh: float = 0.5) -> torch.Tensor:
    """Strict majority over a k x k window (ties at borders give 0), as upstream `smooth_cuda`."""
    return _avg_pool(mask.float(), kernel) > thresh


@dataclass
class LevelMasks:
    """A level's smoothed relevancy and peaks; its threshold masks are built when first read, so
    only the chosen level (the one evaluation and the viewer read) pays for them."""

    smoothed: torch.Tensor  # [H,W] float32, relevancy after the in-place smoothing
    peak: float  # max of the smoothed map (level choice)
    raw_peak: float  # max of the raw relevancy
    protocol: Protocol = field(default_factory=Protocol, repr=False)

    @cached_property
    def pre(self) -> torch.Tensor:
        """[H,W] bool, thresholded mask before majority smoothing."""
        return stretch(self.smoothed) > self.protocol.mask_thresh

    @cached_property
    def post(self) -> torch.Tensor:
        """[H,W] bool, after majority smoothing (what IoU scores)."""
        return majority_smooth(self.pre, self.protocol.majority_kernel, self.protocol.majority_thresh)


def masks_for_level(relevancy: torch.Tensor, protocol: Protocol) -> LevelMasks:
    smoothed = smooth_relevancy(relevancy, protocol.smooth_kernel)
    return LevelMasks(smoothed=smoothed, peak=float(smoothed.max()), raw_peak=float(relevancy.max()), protocol=protocol)


def choose_level(levels: list[LevelMasks], strategy: str = "smoothed_peak") -> int:
    """Index of the level with the highest peak; the first wins ties (as argmax upstream)."""
    peaks = [lv.peak if strategy == "smoothed_peak" else lv.raw_peak for lv in levels]
    return int(np.argmax(np.asarray(peaks, dtype=np.float32)))


def iou(pred, gt) -> float:
    """Intersection over union of two boolean masks; int64 sums divided in float32 as upstream (0/0 -> nan)."""
    pred = torch.as_tensor(np.asarray(pred)).bool()
    gt = torch.as_tensor(np.asarray(gt)).bool()
    inter = (pred & gt).sum()
    union = (pred | gt).sum()
    return float((inter / union).to(torch.float32))


def pixel_accuracy(pred, gt) -> float:
    """mAcc's per-frame term (our definition; upstream never released one): share of the frame's
    pixels where the predicted mask agrees with the ground truth (foreground and background)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    return float(np.float32((pred == gt).mean()))
