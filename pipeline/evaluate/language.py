"""Language metrics of one rendered scene with the 4DLangSplat protocol.

Time-agnostic queries (COCO category names): per frame and level, decode the latents, LERF
relevancy against the canonical negatives, smoothing / threshold / majority, the level with the
highest smoothed peak, IoU and pixel accuracy against the polygon ground truth; mean over a
query's frames, then over queries (mIoU, mAcc). Time-sensitive state prompts: the decoded video
features under the prompt's mask against its query embedding (and the CLIP peak), temporal
smoothing and thresholds -> frame Acc and vIoU. Overlay figures for a few frames per query.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.evaluate import coco
from pipeline.evaluate.encoders import Decoder, TextVectors, decode_unit, decoded_cosines
from pipeline.evaluate.figures import Panel, _frame_image, _panel_frames, _pick_evenly, overlay_figure, slug  # noqa: F401
from pipeline.evaluate.protocol import LEVELS, Protocol
from pipeline.evaluate.relevancy import choose_level, iou, masks_for_level, pixel_accuracy, relevancy_from_cosines
from pipeline.evaluate.report import NOT_EVALUATED
from pipeline.evaluate.table import _row
from pipeline.evaluate.temporal import score_state_prompt


def time_sensitive_gap(render, video_decoder, video_text) -> str | None:
    """Why time-sensitive queries cannot be evaluated on this render, or None when they can."""
    if "video" not in render:
        return ("the render has no `video` array: its decoder has no time-sensitive head "
                "(the released 4DLangVGGT decoder has none)")
    if video_decoder is None:
        return "no video autoencoder given (--video-autoencoder; config `autoencoder.video`)"
    if video_text is None:
        return "no embeddings of the state prompts (evaluate.query_embeddings holds no video vectors)"
    return None


@dataclass
class _StateRecord:
    frames: list[int] = field(default_factory=list)
    video_sim: list[float] = field(default_factory=list)
    clip_sim: list[float] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)


def _render_attr_list(group, key: str, n: int) -> list[int]:
    value = dict(group.attrs).get(key)
    return list(range(n)) if value is None else [int(v) for v in value]


def _resize_maps(x: torch.Tensor, shape) -> torch.Tensor:
    """[N,H,W] -> [N,h,w] bilinear (align_corners=False)."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    return F.interpolate(x[None].float(), size=tuple(shape), mode="bilinear", align_corners=False)[0]


def _annotated_frames(render, scene_dir: Path, protocol: Protocol, log):
    """(annotations, latent array names, source index -> render frame, the annotated frames rendered, skipped)."""
    ann = coco.load_scene_annotations(scene_dir, frame_offset=protocol.frame_offset,
                                      all_polygons=protocol.all_polygons, round_polygons=protocol.round_polygons)
    names = [f"lang_{lv}" for lv in LEVELS]
    missing = [n for n in names if n not in render]
    if missing:
        raise UserError(f"render lacks {', '.join(missing)}; has {sorted(render.array_keys())}")
    T = render[names[0]].shape[0]
    source_indices = _render_attr_list(render, "source_indices", T)
    to_render = {s: t for t, s in enumerate(source_indices)}
    frames = [af for af in ann.frames if af.frame in to_render]
    skipped = sorted({af.frame for af in ann.frames if af.frame not in to_render})
    if skipped:
        log(f"note: {len(skipped)} annotated frame(s) were not rendered and are not evaluated: {skipped[:20]}"
            + (" ..." if len(skipped) > 20 else ""))
    if not frames:
        raise UserError(
            f"none of the {len(ann.frames)} annotated frames (source indices {sorted({a.frame for a in ann.frames})[:10]}...) "
            f"is among the rendered frames (source_indices {source_indices[:10]}...); check evaluate.frame_offset"
        )
    return ann, names, to_render, frames, skipped


def _coverage_rows(base: dict, frames, skipped, state_of: dict, why: str | None, log) -> list[dict]:
    """How much of the annotation was evaluated, and why time-sensitive queries were not."""
    rows = [
        _row(**base, task="coverage", metric="annotated_frames_evaluated", value=float(len({a.frame for a in frames})),
             aggregation="count", unit="frames"),
        _row(**base, task="coverage", metric="annotated_frames_not_rendered", value=float(len(skipped)),
             aggregation="count", unit="frames"),
    ]
    if why is not None:
        log(f"note: {len(state_of)} time-sensitive quer{'y' if len(state_of) == 1 else 'ies'} not evaluated: {why}")
        rows.append(_row(**base, task="coverage", metric=NOT_EVALUATED, value=float(len(state_of)),
                         aggregation="count", n_items=len(state_of), unit="queries", note=why))
        annotated = {label: sum(label in af.masks for af in frames) for label in set(state_of.values())}
        for prompt, label in state_of.items():
            rows.append(_row(**base, task="coverage", query=prompt, metric="not_evaluated",
                             value=float(annotated[label]), aggregation="count", unit="frames", note=why))
    return rows


@dataclass
class _Queries:
    """The text side of one evaluation: positives, their vectors and where each sits."""

    clip_text: torch.Tensor  # [P + negatives, D]
    index_of: dict[str, int]
    state_of: dict[str, str]  # state prompt -> base label
    state_list: list[str]
    video_text: torch.Tensor | None  # [states, D'] when time-sensitive queries are scored

    @property
    def num_positives(self) -> int:
        return len(self.index_of)


def _queries(ann, clip_text: TextVectors, video_text: TextVectors | None, protocol: Protocol, time_sensitive: bool) -> _Queries:
    state_of = ann.state_prompts
    # state prompts are positives only when they can be scored (their relevancy drives vIoU)
    positives_all = list(dict.fromkeys([*ann.labels, *(state_of if time_sensitive else [])]))
    text = clip_text.matrix(positives_all + list(protocol.negatives))
    state_list = list(state_of)
    video = video_text.matrix(state_list) if time_sensitive else None
    return _Queries(text, {p: i for i, p in enumerate(positives_all)}, state_of, state_list, video)


def _frame_relevancy(render, names, t: int, af, queries: _Queries, clip_decoder: Decoder, protocol: Protocol,
                     time_sensitive: bool):  # fmt: skip
    """(positives of the frame, per level [k, h, w] relevancy at annotation size, video latents or None)."""
    lat = [torch.as_tensor(np.asarray(render[n][t], dtype=np.float32)) for n in names]  # [H,W,C] each
    if protocol.remap_positive and min(float(x.min()) for x in lat) > 0:
        lat = [x * 2 - 1 for x in lat]
    H, W, C = lat[0].shape
    shape = (af.height, af.width)
    positives = [p for p in af.masks if p in queries.index_of]
    cols = [queries.index_of[p] for p in positives]
    P = queries.num_positives
    rel_levels = []  # per level: [len(positives), h, w] relevancy at annotation size
    for x in lat:
        cos = decoded_cosines(clip_decoder, x.reshape(-1, C), queries.clip_text)  # [HW, P+J]
        rel = relevancy_from_cosines(cos[:, cols], cos[:, P:], protocol.temperature)  # [HW, k]
        rel_levels.append(_resize_maps(rel.T.reshape(len(positives), H, W), shape))
    video_lat = None
    if time_sensitive:
        v = torch.as_tensor(np.asarray(render["video"][t], dtype=np.float32))
        if (H, W) != shape:
            v = _resize_maps(v.permute(2, 0, 1), shape).permute(1, 2, 0)
        video_lat = v
    return positives, rel_levels, video_lat


def _state_similarity(video_decoder: Decoder, video_lat, pre_mask, target: torch.Tensor) -> float:
    pix = video_lat[pre_mask]
    if not len(pix):
        return float("nan")
    feats = decode_unit(video_decoder, pix)
    return float((feats @ target).mean().to(torch.float32))


def _agnostic_rows(base: dict, per_query: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """Mean over a query's frames, then over queries (mIoU, mAcc)."""
    rows, q_iou, q_acc = [], [], []
    for q, vals in per_query.items():
        ious = np.asarray([v[0] for v in vals], dtype=np.float32)
        accs = np.asarray([v[1] for v in vals], dtype=np.float32)
        q_iou.append(float(ious.mean()))
        q_acc.append(float(accs.mean()))
        rows.append(_row(**base, task="time_agnostic", query=q, metric="iou", value=q_iou[-1],
                         aggregation="frame_mean", n_items=len(vals), unit="fraction"))
        rows.append(_row(**base, task="time_agnostic", query=q, metric="acc", value=q_acc[-1],
                         aggregation="frame_mean", n_items=len(vals), unit="fraction"))
    if per_query:
        rows.append(_row(**base, task="time_agnostic", metric="mIoU", value=float(np.mean(q_iou)),
                         aggregation="query_mean", n_items=len(q_iou), unit="fraction"))
        rows.append(_row(**base, task="time_agnostic", metric="mAcc", value=float(np.mean(q_acc)),
                         aggregation="query_mean", n_items=len(q_acc), unit="fraction"))
    return rows


def _prompt_rows(base: dict, prompt: str, sc, variant: str) -> list[dict]:
    """Per-frame similarities and decisions of one state prompt, then its Acc and vIoU."""
    rows = []
    for i, f in enumerate(sc.frames):
        for metric, value in (("similarity", sc.raw[i]), ("similarity_smoothed", sc.smoothed[i]),
                              ("predicted_in_state", sc.pred[i]), ("labelled_in_state", sc.label[i])):
            rows.append(_row(**base, task="time_sensitive", query=prompt, frame=int(f), metric=metric,
                             value=float(value), aggregation="none", variant=variant,
                             threshold=sc.threshold, unit="cosine" if "similarity" in metric else "bool"))
    for metric, value in (("acc", sc.accuracy), ("viou", sc.viou)):
        rows.append(_row(**base, task="time_sensitive", query=prompt, metric=metric, value=value,
                         aggregation="frames", variant=variant, threshold=sc.threshold,
                         n_items=len(sc.frames), unit="fraction"))
    return rows


def _sensitive_rows(base: dict, states: dict[str, "_StateRecord"], ann, protocol: Protocol) -> list[dict]:
    """Per state prompt, both variants (papers report `video`); then the means over prompts."""
    rows: list[dict] = []
    per_variant: dict[str, list[tuple[float, float]]] = {"video": [], "clip": []}
    for prompt, rec in states.items():
        intervals = ann.states[ann.state_prompts[prompt]][prompt]
        for variant, sims, rule in (("video", rec.video_sim, protocol.video_threshold),
                                    ("clip", rec.clip_sim, protocol.clip_threshold)):
            sc = score_state_prompt(rec.frames, sims, rec.ious, intervals,
                                    weights=protocol.temporal_weights, threshold_rule=rule)
            per_variant[variant].append((sc.accuracy, sc.viou))
            rows += _prompt_rows(base, prompt, sc, variant)
    for variant, vals in per_variant.items():
        if vals:
            accs = np.asarray([v[0] for v in vals], dtype=np.float64)
            vious = np.asarray([v[1] for v in vals], dtype=np.float64)
            rows.append(_row(**base, task="time_sensitive", metric="Acc", value=float(np.mean(accs)),
                             aggregation="query_mean", variant=variant, n_items=len(vals), unit="fraction"))
            rows.append(_row(**base, task="time_sensitive", metric="vIoU",
                             value=float(np.nanmean(vious)) if np.isfinite(vious).any() else float("nan"),
                             aggregation="query_mean", variant=variant, n_items=int(np.isfinite(vious).sum()),
                             unit="fraction"))
    return rows


@dataclass
class _Scores:
    """What the per-frame loop gathers: rows, per-query (IoU, Acc), state records, figure panels."""

    rows: list[dict] = field(default_factory=list)
    per_query: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    states: dict[str, _StateRecord] = field(default_factory=dict)
    panels: dict[str, list[Panel]] = field(default_factory=dict)


def _score_prompt(scores: _Scores, base: dict, af, prompt: str, relevancy: list[torch.Tensor], *, queries: _Queries,
                  protocol: Protocol, video_decoder, video_lat, time_sensitive: bool) -> tuple[int, np.ndarray, np.ndarray, float, list]:  # fmt: skip
    """Score one query on one frame; returns (chosen level, predicted mask, GT mask, IoU, level masks)."""
    lvls = [masks_for_level(relevancy[i], protocol) for i in range(len(LEVELS))]
    chosen = choose_level(lvls, protocol.level_strategy)
    gt = af.masks[prompt].astype(bool)
    post = lvls[chosen].post.numpy()
    v_iou = iou(post, gt)
    if prompt in queries.state_of:
        if time_sensitive:
            rec = scores.states.setdefault(prompt, _StateRecord())
            target = queries.video_text[queries.state_list.index(prompt)]
            rec.frames.append(af.frame)
            rec.video_sim.append(_state_similarity(video_decoder, video_lat, lvls[chosen].pre, target))
            rec.clip_sim.append(lvls[chosen].peak)
            rec.ious.append(v_iou)
            scores.rows.append(_row(**base, task="time_sensitive", query=prompt, level=LEVELS[chosen], frame=af.frame,
                                    metric="iou", value=v_iou, aggregation="none", unit="fraction"))
    else:
        acc = pixel_accuracy(post, gt)
        scores.per_query.setdefault(prompt, []).append((v_iou, acc))
        for metric, value in (("iou", v_iou), ("acc", acc)):
            scores.rows.append(_row(**base, task="time_agnostic", query=prompt, level=LEVELS[chosen], frame=af.frame,
                                    metric=metric, value=value, aggregation="none", unit="fraction"))
    return chosen, post, gt, v_iou, lvls


def evaluate_language(
    render, scene_dir: str | Path, *, clip_decoder: Decoder, clip_text: TextVectors,
    video_decoder: Decoder | None = None, video_text: TextVectors | None = None,
    protocol: Protocol = Protocol(), dataset: str = "", scene: str = "",
    figures_dir: str | Path | None = None, figure_frames: int = 3, log=print,
) -> list[dict]:
    """Time-agnostic and time-sensitive metrics of one rendered scene (an open render.zarr group)."""
    from tqdm import tqdm

    scene_dir = Path(scene_dir)
    ann, names, to_render, frames, skipped = _annotated_frames(render, scene_dir, protocol, log)
    base = dict(dataset=dataset, scene=scene)
    state_of = ann.state_prompts
    why = time_sensitive_gap(render, video_decoder, video_text) if state_of else None
    time_sensitive = bool(state_of) and why is None
    scores = _Scores(rows=_coverage_rows(base, frames, skipped, state_of, why, log))
    queries = _queries(ann, clip_text, video_text, protocol, time_sensitive)
    panel_frames = _panel_frames(frames, figure_frames)
    for af in tqdm(frames, desc="evaluate", unit="frame", file=sys.stderr, disable=len(frames) < 5):
        t = to_render[af.frame]
        positives, rel_levels, video_lat = _frame_relevancy(render, names, t, af, queries, clip_decoder, protocol,
                                                            time_sensitive)  # fmt: skip
        for k, prompt in enumerate(positives):
            chosen, post, gt, v_iou, lvls = _score_prompt(
                scores, base, af, prompt, [rel[k] for rel in rel_levels], queries=queries, protocol=protocol,
                video_decoder=video_decoder, video_lat=video_lat, time_sensitive=time_sensitive)
            if figures_dir is not None and af.frame in panel_frames.get(prompt, ()):
                scores.panels.setdefault(prompt, []).append(Panel(
                    frame=af.frame, image=_frame_image(scene_dir, render, t, af.frame, (af.height, af.width)),
                    relevancy=lvls[chosen].smoothed.numpy(), pred=post, gt=gt, level=LEVELS[chosen], iou=v_iou))
    rows = scores.rows + _agnostic_rows(base, scores.per_query) + _sensitive_rows(base, scores.states, ann, protocol)
    if figures_dir is not None:
        for q, ps in scores.panels.items():
            overlay_figure(Path(figures_dir) / f"{slug(q)}.png", q, sorted(ps, key=lambda p: p.frame))
    return rows
