"""3D grounding scores on axis-aligned boxes (centre xyz, size xyz), as ScanRefer and Multi3DRefer
score them: IoU of the chosen box with the ground truth, Acc@k = share of queries with IoU >= k;
for a set of boxes, Hungarian matching on IoU and F1@k = 2 TP / (|pred| + |gt|), where a query
with no target and no prediction scores 1."""

from __future__ import annotations

import numpy as np


def box_iou(a, b) -> float:
    """IoU of two axis-aligned boxes (cx, cy, cz, sx, sy, sz)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lo = np.maximum(a[:3] - a[3:] / 2, b[:3] - b[3:] / 2)
    hi = np.minimum(a[:3] + a[3:] / 2, b[:3] + b[3:] / 2)
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = float(np.prod(a[3:]) + np.prod(b[3:]) - inter)
    return inter / union if union > 0 else 0.0


def iou_matrix(pred, gt) -> np.ndarray:
    return np.array([[box_iou(p, g) for g in gt] for p in pred], dtype=np.float64).reshape(len(pred), len(gt))


def accuracy_at(ious, threshold: float) -> float:
    """Share of queries whose chosen box has IoU >= threshold (NaN for no queries)."""
    ious = np.asarray(ious, dtype=np.float64)
    return float((ious >= threshold).mean()) if len(ious) else float("nan")


def hungarian_f1(pred, gt, threshold: float) -> float:
    """F1 of predicted boxes against ground-truth boxes after one-to-one matching that maximises IoU."""
    from scipy.optimize import linear_sum_assignment

    if len(pred) == 0 and len(gt) == 0:
        return 1.0
    if len(pred) == 0 or len(gt) == 0:
        return 0.0
    ious = iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-ious)
    tp = int((ious[rows, cols] >= threshold).sum())
    return 2.0 * tp / (len(pred) + len(gt))


def choose_objects(scores: np.ndarray, *, multi: bool, margin: float, min_score: float) -> list[int]:
    """Indices of the chosen objects: the best one (single target); for a multi-target query every
    object within `margin` of the best, none if the best is below `min_score`."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return []
    best = int(np.argmax(scores))
    if not multi:
        return [best]
    if scores[best] < min_score:
        return []
    return [int(i) for i in np.flatnonzero(scores >= scores[best] - margin)]
