"""3D grounding scores on axis-aligned boxes (centre xyz, size xyz), as ScanRefer and Multi3DRefer
score them: IoU of the chosen box with the ground truth, Acc@k = share of queries with IoU >= k;
for a set of boxes, Hungarian matching on IoU and F1@k = 2 TP / (|pred| + |gt|), where a query
with no target and no prediction scores 1. Also the scene's grounding queries and their metric rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

THRESHOLDS = (0.25, 0.5)


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


def read_grounding(scene: dict) -> tuple[list[dict], dict[int, np.ndarray]] | None:
    """(queries [{query, targets}], gt id -> box) from scene.json's gt.grounding / gt.boxes, else None."""
    gt = scene.get("gt") or {}
    if not gt.get("boxes") or not gt.get("grounding"):
        return None
    try:
        boxes = json.loads(Path(gt["boxes"]).read_text())
        queries = json.loads(Path(gt["grounding"]).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"ground-truth boxes or grounding queries not readable ({exc})") from None
    gt_boxes = {int(k): np.asarray(v["box"], dtype=np.float64) for k, v in boxes["objects"].items()}
    return [{"query": str(q["query"]), "targets": [int(t) for t in q.get("targets", [])]} for q in queries], gt_boxes


def grounding_rows(queries, gt_boxes, cand_ids, cand_boxes, scores, *, base: dict, margin: float, min_score: float):
    """Metric rows: per query IoU / F1, and the query means Acc@k (single-target) and F1@k (all)."""
    from pipeline.evaluate.table import _row

    rows, ious, chance, f1s = [], [], [], {k: [] for k in THRESHOLDS}
    for qi, q in enumerate(queries):
        targets = [gt_boxes[t] for t in q["targets"] if t in gt_boxes]
        single = len(q["targets"]) == 1
        chosen = choose_objects(scores[:, qi], multi=not single, margin=margin, min_score=min_score) if len(cand_ids) else []
        pred = [cand_boxes[i] for i in chosen]
        note = "chose " + ",".join(f"<OBJ{cand_ids[i]:03d}>" for i in chosen) if chosen else "chose none"
        if single and targets:
            iou = box_iou(pred[0], targets[0]) if pred else 0.0
            ious.append(iou)
            chance.append(np.mean([box_iou(b, targets[0]) >= THRESHOLDS[0] for b in cand_boxes]) if cand_boxes else 0.0)
            rows.append(_row(**base, task="grounding", query=q["query"], metric="iou", value=iou, aggregation="none",
                             unit="fraction", note=note))
        for k in THRESHOLDS:
            f1 = hungarian_f1(pred, targets, k)
            f1s[k].append(f1)
            rows.append(_row(**base, task="grounding", query=q["query"], metric=f"F1@{k:g}", value=f1, aggregation="none",
                             threshold=k, unit="fraction", note=note))
    for k in THRESHOLDS:
        if ious:
            rows.append(_row(**base, task="grounding", metric=f"Acc@{k:g}", value=accuracy_at(ious, k),
                             aggregation="query_mean", threshold=k, n_items=len(ious), unit="fraction"))
        if f1s[k]:
            rows.append(_row(**base, task="grounding", metric=f"F1@{k:g}", value=float(np.mean(f1s[k])),
                             aggregation="query_mean", threshold=k, n_items=len(f1s[k]), unit="fraction"))
    if chance:
        rows.append(_row(**base, task="grounding", metric="chance_Acc@0.25", value=float(np.mean(chance)),
                         aggregation="query_mean", threshold=0.25, n_items=len(chance), unit="fraction",
                         note="expected Acc@0.25 of an object picked at random"))
    return rows


def evaluate_grounding(scene: dict, ids: list[int], boxes: dict, feats: dict, space, *, base: dict, margin: float,
                       min_score: float, note, log) -> list[dict]:
    """Grounding metric rows, or one `grounding_not_evaluated` row saying why there are none."""
    from pipeline.evaluate.table import _row
    from pipeline.scene3d.language import text_vectors

    spec = read_grounding(scene)
    cand = [k for k in ids if k in boxes and k in feats]
    if spec is None:
        why = "the scene has no ground-truth boxes and grounding queries (gt.boxes, gt.grounding)"
    elif not feats:
        why = "no language field (render + CLIP autoencoder) to choose objects with"
    else:
        why = None
    if why is not None:
        log(f"note: 3D grounding not evaluated: {why}")
        return [_row(**base, task="grounding", metric="grounding_not_evaluated", value=1.0, aggregation="count", note=why)]
    queries, gt_boxes = spec
    qvec = text_vectors(space, [q["query"] for q in queries])
    scores = np.stack([feats[k] for k in cand]) @ qvec.T if cand else np.zeros((0, len(queries)))
    rows = grounding_rows(queries, gt_boxes, cand, [boxes[k] for k in cand], scores, base=base,
                          margin=margin, min_score=min_score)
    if not cand:
        note("no object has both a box and language features: every grounding query fails")
    return rows
