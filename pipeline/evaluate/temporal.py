"""Time-sensitive scoring as 4DLangSplat evaluates state prompts: frame Acc and vIoU.

Per state prompt, the similarities of the annotated frames (sorted by frame index) are smoothed
with [0.1, 0.8, 0.1] over that list, so neighbours are the adjacent *annotated* frames and the
first and last keep their raw value. A frame is predicted "in state" when its smoothed
similarity is >= the threshold; upstream takes the mean of the raw values for video features
and the mean of the smoothed values for the CLIP variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def temporal_smooth(values, weights=(0.1, 0.8, 0.1)) -> np.ndarray:
    """Three-tap smoothing over a list; the two ends keep their raw values (float32 as upstream)."""
    v = np.asarray(values, dtype=np.float32)
    out = v.copy()
    if len(v) >= 3:
        w = np.asarray(weights, dtype=np.float32)
        out[1:-1] = w[0] * v[:-2] + w[1] * v[1:-1] + w[2] * v[2:]
    return out


def threshold_for(raw: np.ndarray, smoothed: np.ndarray, rule: str) -> float:
    if rule == "raw_mean":
        return float(np.mean(raw))
    if rule == "smoothed_mean":
        return float(np.mean(smoothed))
    raise ValueError(f"unknown threshold rule {rule!r}")


@dataclass
class TemporalScore:
    frames: np.ndarray  # sorted annotated frames
    raw: np.ndarray
    smoothed: np.ndarray
    threshold: float
    pred: np.ndarray  # bool
    label: np.ndarray  # bool
    accuracy: float
    viou: float


def frame_accuracy(pred, label) -> float:
    pred = np.asarray(pred, dtype=bool)
    label = np.asarray(label, dtype=bool)
    return float(np.mean(pred == label)) if len(pred) else float("nan")


def video_iou(pred, label, ious) -> float:
    """Sum over frames in pred | label of (IoU where pred & label, else 0) / |pred | label|.

    Undefined (nan) when neither predicts nor labels any frame.
    """
    pred = np.asarray(pred, dtype=bool)
    label = np.asarray(label, dtype=bool)
    ious = np.asarray(ious, dtype=np.float32)
    union = pred | label
    if not union.any():
        return float("nan")
    both = pred & label
    return float(np.sum(np.where(both, ious, 0.0)) / union.sum())


def score_state_prompt(
    frames, similarities, ious, intervals, *, weights=(0.1, 0.8, 0.1), threshold_rule: str = "raw_mean"
) -> TemporalScore:
    """Acc and vIoU of one state prompt from its per-frame similarity and spatial IoU."""
    frames = np.asarray(frames, dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    frames = frames[order]
    raw = np.asarray(similarities, dtype=np.float32)[order]
    ious = np.asarray(ious, dtype=np.float32)[order]
    smoothed = temporal_smooth(raw, weights)
    thr = threshold_for(raw, smoothed, threshold_rule)
    pred = smoothed >= np.float32(thr)
    label = np.array([any(lo <= f <= hi for lo, hi in intervals) for f in frames], dtype=bool)
    return TemporalScore(frames=frames, raw=raw, smoothed=smoothed, threshold=thr, pred=pred, label=label,
                         accuracy=frame_accuracy(pred, label), viou=video_iou(pred, label, ious))
