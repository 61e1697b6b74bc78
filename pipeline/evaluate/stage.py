"""Evaluate a rendered scene with the 4DLangSplat protocol -> metrics.parquet + relevancy figures.

Time-agnostic queries (COCO category names): decode the latents of each level, LERF relevancy
against the canonical negatives, upstream's smoothing / threshold / majority, the level with the
highest smoothed peak, IoU against the polygon ground truth -> mIoU. mAcc (not defined by any
released code) is reported separately as the pixel accuracy of the predicted mask over the frame.
Time-sensitive state prompts (video_annotations.json): mean cosine of the decoded video features
under the prompt's mask with the prompt's query embedding, temporal smoothing over the annotated
frames, threshold -> frame Acc and vIoU. With --geometry and --scene-json, also depth Abs Rel /
delta < 1.25 (per-sequence scale and scale&shift) and ATE / RPE after Sim(3), where GT exists.

Annotation frames (HyperNeRF: int(file_name.split('_')[0]) - 1) are matched to rendered frames
through the render's `source_indices`; annotated frames that were not rendered are skipped and
listed. Defaults reproduce upstream's choices; fixes are explicit options.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.evaluate import coco
from pipeline.evaluate.encoders import (
    Decoder,
    TextVectors,
    decode_unit,
    decoded_cosines,
    encode_texts,
    load_decoder,
    load_query_embeddings,
    parse_space,
    require_same_space,
)
from pipeline.evaluate.figures import Panel, overlay_figure, slug
from pipeline.evaluate.geometry_metrics import camera_to_world, sequence_depth_metrics, trajectory_metrics
from pipeline.evaluate.protocol import LEVELS, Protocol, add_protocol_arguments, protocol_from_args
from pipeline.evaluate.relevancy import choose_level, iou, masks_for_level, pixel_accuracy, relevancy_from_cosines
from pipeline.evaluate.report import NOT_EVALUATED
from pipeline.evaluate.temporal import score_state_prompt

COLUMNS = ["dataset", "scene", "task", "query", "level", "frame", "metric", "value",
           "aggregation", "variant", "threshold", "n_items", "unit", "note"]


def _row(**kw) -> dict:
    return {c: kw.get(c) for c in COLUMNS}


def metrics_frame(rows: list[dict]):
    """Rows -> the long metrics table with stable column types."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("dataset", "scene", "task", "query", "level", "metric", "aggregation", "variant", "unit", "note"):
        df[c] = df[c].astype("string")
    df["frame"] = df["frame"].astype("Int64")
    df["n_items"] = df["n_items"].astype("Int64")
    df["value"] = df["value"].astype("float64")
    df["threshold"] = df["threshold"].astype("float64")
    return df


def time_sensitive_gap(render, video_decoder, e5_text) -> str | None:
    """Why time-sensitive queries cannot be evaluated on this render, or None when they can."""
    if "video" not in render:
        return ("the render has no `video` array: its decoder has no time-sensitive head "
                "(the released 4DLangVGGT decoder has none)")
    if video_decoder is None:
        return "no video autoencoder given (--video-autoencoder; config `autoencoder.video`)"
    if e5_text is None:
        return "no embeddings of the state prompts (evaluate.query_embeddings holds no e5 vectors)"
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


def _frame_image(scene_dir: Path, render, t: int, source_index: int, shape) -> np.ndarray:
    """The picture under an overlay: the scene's own frame if it has the annotation size, else the
    render's reconstructed RGB, else grey."""
    import cv2

    for name in (f"{source_index + 1:06d}.png", f"{source_index:06d}.png"):
        p = scene_dir / "rgb" / "2x" / name
        if p.is_file():
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None and img.shape[:2] == tuple(shape):
                return img[..., ::-1].copy()
    if "rgb" in render:
        img = (np.asarray(render["rgb"][t], dtype=np.float32).clip(0, 1) * 255).astype(np.uint8)
        if img.shape[:2] != tuple(shape):
            img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        return img
    return np.full((*shape, 3), 128, dtype=np.uint8)


def _pick_evenly(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in sorted(set(idx))]


def _resize_maps(x: torch.Tensor, shape) -> torch.Tensor:
    """[N,H,W] -> [N,h,w] bilinear (align_corners=False)."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    return F.interpolate(x[None].float(), size=tuple(shape), mode="bilinear", align_corners=False)[0]


def evaluate_language(
    render, scene_dir: str | Path, *, clip_decoder: Decoder, clip_text: TextVectors,
    video_decoder: Decoder | None = None, e5_text: TextVectors | None = None,
    protocol: Protocol = Protocol(), dataset: str = "", scene: str = "",
    figures_dir: str | Path | None = None, figure_frames: int = 3, log=print,
) -> list[dict]:
    """Time-agnostic and time-sensitive metrics of one rendered scene (an open render.zarr group)."""
    scene_dir = Path(scene_dir)
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
    base = dict(dataset=dataset, scene=scene)
    rows: list[dict] = [
        _row(**base, task="coverage", metric="annotated_frames_evaluated", value=float(len({a.frame for a in frames})),
             aggregation="count", unit="frames"),
        _row(**base, task="coverage", metric="annotated_frames_not_rendered", value=float(len(skipped)),
             aggregation="count", unit="frames"),
    ]
    state_of = ann.state_prompts  # state prompt -> base label
    why = time_sensitive_gap(render, video_decoder, e5_text) if state_of else None
    time_sensitive = bool(state_of) and why is None
    if why is not None:
        log(f"note: {len(state_of)} time-sensitive quer{'y' if len(state_of) == 1 else 'ies'} not evaluated: {why}")
        rows.append(_row(**base, task="coverage", metric=NOT_EVALUATED, value=float(len(state_of)),
                         aggregation="count", n_items=len(state_of), unit="queries", note=why))
        annotated = {label: sum(label in af.masks for af in frames) for label in set(state_of.values())}
        for prompt, label in state_of.items():
            rows.append(_row(**base, task="coverage", query=prompt, metric="not_evaluated",
                             value=float(annotated[label]), aggregation="count", unit="frames", note=why))

    # state prompts are positives only when they can be scored (their relevancy drives vIoU)
    positives_all = list(dict.fromkeys([*ann.labels, *(state_of if time_sensitive else [])]))
    negatives = list(protocol.negatives)
    text = clip_text.matrix(positives_all + negatives)
    state_list = list(state_of)
    e5 = e5_text.matrix(state_list) if time_sensitive else None
    index_of = {p: i for i, p in enumerate(positives_all)}
    P = len(positives_all)

    # which frames get a figure panel, per query
    frames_of: dict[str, list[int]] = {}
    for af in frames:
        for label in af.masks:
            frames_of.setdefault(label, []).append(af.frame)
    panel_frames = {q: set(_pick_evenly(sorted(set(fs)), figure_frames)) for q, fs in frames_of.items()}
    panels: dict[str, list[Panel]] = {}

    per_query: dict[str, list[tuple[float, float]]] = {}
    states: dict[str, _StateRecord] = {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    iterator = tqdm(frames, desc="evaluate", unit="frame", file=sys.stderr, disable=len(frames) < 5) if tqdm else frames
    for af in iterator:
        t = to_render[af.frame]
        lat = [torch.as_tensor(np.asarray(render[n][t], dtype=np.float32)) for n in names]  # [H,W,C] each
        if protocol.remap_positive and min(float(x.min()) for x in lat) > 0:
            lat = [x * 2 - 1 for x in lat]
        H, W, C = lat[0].shape
        shape = (af.height, af.width)
        positives = [p for p in af.masks if p in index_of]
        cols = [index_of[p] for p in positives]
        rel_levels = []  # per level: [len(positives), h, w] relevancy at annotation size
        for x in lat:
            cos = decoded_cosines(clip_decoder, x.reshape(-1, C), text)  # [HW, P+J]
            rel = relevancy_from_cosines(cos[:, cols], cos[:, P:], protocol.temperature)  # [HW, k]
            rel_levels.append(_resize_maps(rel.T.reshape(len(positives), H, W), shape))
        video_lat = None
        if time_sensitive:
            v = torch.as_tensor(np.asarray(render["video"][t], dtype=np.float32))
            if (H, W) != shape:
                v = _resize_maps(v.permute(2, 0, 1), shape).permute(1, 2, 0)
            video_lat = v
        for k, prompt in enumerate(positives):
            lvls = [masks_for_level(rel_levels[i][k], protocol) for i in range(len(LEVELS))]
            chosen = choose_level(lvls, protocol.level_strategy)
            gt = af.masks[prompt].astype(bool)
            post = lvls[chosen].post.numpy()
            v_iou = iou(post, gt)
            if prompt in state_of:
                if time_sensitive:
                    rec = states.setdefault(prompt, _StateRecord())
                    pix = video_lat[lvls[chosen].pre]
                    if len(pix):
                        feats = decode_unit(video_decoder, pix)
                        sim = float((feats @ e5[state_list.index(prompt)]).mean().to(torch.float32))
                    else:
                        sim = float("nan")
                    rec.frames.append(af.frame)
                    rec.video_sim.append(sim)
                    rec.clip_sim.append(lvls[chosen].peak)
                    rec.ious.append(v_iou)
                    rows.append(_row(**base, task="time_sensitive", query=prompt, level=LEVELS[chosen], frame=af.frame,
                                     metric="iou", value=v_iou, aggregation="none", unit="fraction"))
            else:
                acc = pixel_accuracy(post, gt)
                per_query.setdefault(prompt, []).append((v_iou, acc))
                rows.append(_row(**base, task="time_agnostic", query=prompt, level=LEVELS[chosen], frame=af.frame,
                                 metric="iou", value=v_iou, aggregation="none", unit="fraction"))
                rows.append(_row(**base, task="time_agnostic", query=prompt, level=LEVELS[chosen], frame=af.frame,
                                 metric="acc", value=acc, aggregation="none", unit="fraction"))
            if figures_dir is not None and af.frame in panel_frames.get(prompt, ()):
                panels.setdefault(prompt, []).append(Panel(
                    frame=af.frame, image=_frame_image(scene_dir, render, t, af.frame, shape),
                    relevancy=lvls[chosen].smoothed.numpy(), pred=post, gt=gt, level=LEVELS[chosen], iou=v_iou))

    # time-agnostic aggregates: mean over a query's frames, then over queries
    q_iou, q_acc = [], []
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

    # time-sensitive: per state prompt, both variants (papers report `video`)
    per_variant: dict[str, list[tuple[float, float]]] = {"video": [], "clip": []}
    for prompt, rec in states.items():
        base_label = state_of[prompt]
        intervals = ann.states[base_label][prompt]
        for variant, sims, rule in (("video", rec.video_sim, protocol.video_threshold),
                                    ("clip", rec.clip_sim, protocol.clip_threshold)):
            sc = score_state_prompt(rec.frames, sims, rec.ious, intervals,
                                    weights=protocol.temporal_weights, threshold_rule=rule)
            per_variant[variant].append((sc.accuracy, sc.viou))
            for i, f in enumerate(sc.frames):
                for metric, value in (("similarity", sc.raw[i]), ("similarity_smoothed", sc.smoothed[i]),
                                      ("predicted_in_state", sc.pred[i]), ("labelled_in_state", sc.label[i])):
                    rows.append(_row(**base, task="time_sensitive", query=prompt, frame=int(f), metric=metric,
                                     value=float(value), aggregation="none", variant=variant,
                                     threshold=sc.threshold, unit="cosine" if "similarity" in metric else "bool"))
            rows.append(_row(**base, task="time_sensitive", query=prompt, metric="acc", value=sc.accuracy,
                             aggregation="frames", variant=variant, threshold=sc.threshold,
                             n_items=len(sc.frames), unit="fraction"))
            rows.append(_row(**base, task="time_sensitive", query=prompt, metric="viou", value=sc.viou,
                             aggregation="frames", variant=variant, threshold=sc.threshold,
                             n_items=len(sc.frames), unit="fraction"))
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

    if figures_dir is not None:
        figures_dir = Path(figures_dir)
        for q, ps in panels.items():
            overlay_figure(figures_dir / f"{slug(q)}.png", q, sorted(ps, key=lambda p: p.frame))
    return rows


# ----------------------------------------------------------------------------- geometry
def _depth_file(depth_dir: Path, frame_name: str | None, source_index: int) -> Path | None:
    cands = []
    if frame_name:
        cands.append(depth_dir / (Path(frame_name).stem + ".npy"))
    cands += [depth_dir / f"{source_index + 1:06d}.npy", depth_dir / f"{source_index:06d}.npy"]
    return next((c for c in cands if c.is_file()), None)


def _pred_depth_on_gt(pred: np.ndarray, gt_shape, transform: dict | None) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The prediction resampled onto the GT pixels it covers: (pred window, GT window slices)."""
    import cv2

    from pipeline.geometry.inputs import crop_box_in_frame

    gh, gw = gt_shape
    win = (slice(0, gh), slice(0, gw))
    if transform and transform.get("crop"):
        top, left, ch, cw = crop_box_in_frame(transform, gt_shape)
        win = (slice(max(0, top), min(gh, top + ch)), slice(max(0, left), min(gw, left + cw)))
    h = win[0].stop - win[0].start
    w = win[1].stop - win[1].start
    if pred.shape != (h, w):
        pred = cv2.resize(pred.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return pred, win


def evaluate_geometry(geometry, scene_json: str | Path, *, protocol: Protocol = Protocol(), dataset: str = "",
                      scene: str = "", log=print) -> list[dict]:
    """Depth and pose rows where the scene has ground truth; nothing (and a note) where it has none."""
    p = Path(scene_json)
    if not p.is_file():
        raise UserError(f"scene.json not found: {p}")
    info = json.loads(p.read_text())
    base = dict(dataset=dataset or info.get("dataset", ""), scene=scene or info.get("scene", ""))
    gt = info.get("gt") or {}
    rows: list[dict] = []
    attrs = dict(geometry.attrs)
    source_indices = [int(v) for v in (attrs.get("source_indices") or info.get("source_indices") or [])]
    frame_names = list(attrs.get("frame_names") or info.get("frame_names") or [])
    if "depth" in geometry and gt.get("depth_dir"):
        depth_dir = Path(gt["depth_dir"])
        T = geometry["depth"].shape[0]
        if not source_indices:
            source_indices = list(range(T))
        preds, gts = [], []
        for t in range(T):
            f = _depth_file(depth_dir, frame_names[t] if t < len(frame_names) else None, source_indices[t])
            if f is None:
                continue
            g = np.load(f).astype(np.float32)
            pred, win = _pred_depth_on_gt(np.asarray(geometry["depth"][t], dtype=np.float32).squeeze(), g.shape,
                                          attrs.get("transform"))
            preds.append(pred)
            gts.append(g[win])
        if preds:
            for align in protocol.depth_align:
                m = sequence_depth_metrics(preds, gts, align=align, max_depth=protocol.max_depth)
                n = int(m.pop("valid_pixels"))
                for metric, value in m.items():
                    rows.append(_row(**base, task="depth", metric=metric, value=value, aggregation="sequence",
                                     variant=align, n_items=n, unit="ratio" if metric not in ("rmse", "scale", "shift", "log_rmse") else "depth"))
        else:
            log(f"note: no ground-truth depth files in {depth_dir} match the frames; depth not evaluated")
    cams = info.get("cameras")
    if "extrinsics" in geometry and cams and cams.get("extrinsics") is not None:
        est = camera_to_world(np.asarray(geometry["extrinsics"][:], dtype=np.float64))
        ref = camera_to_world(np.asarray(cams["extrinsics"], dtype=np.float64))
        if len(est) != len(ref):
            raise UserError(f"geometry has {len(est)} poses but scene.json has {len(ref)} ground-truth cameras")
        try:
            m = trajectory_metrics(est, ref, delta=protocol.rpe_delta)
        except ValueError as exc:
            log(f"note: pose metrics skipped ({exc})")
        else:
            n = int(m.pop("n_poses"))
            for metric, value in m.items():
                unit = "deg" if metric == "rpe_rot" else "ratio" if metric == "sim3_scale" else "scene_units"
                rows.append(_row(**base, task="pose", metric=metric, value=value, aggregation="sequence",
                                 variant="sim3", n_items=n, unit=unit))
    return rows


# ----------------------------------------------------------------------------- the stage
def resolve_queries(clip_space: dict | None, video_space: dict | None, query_embeddings, *, need_e5: bool,
                    texts: list[str], states: list[str], negatives: list[str], log=print) -> tuple[TextVectors, TextVectors | None]:
    """Text vectors for the scene's queries, from an npz or the encoders the spaces name; refuses
    vectors from a different language space than the features they are compared with."""
    if query_embeddings is not None:
        clip_text, e5_text = load_query_embeddings(query_embeddings)
        require_same_space(clip_space, clip_text.space, what="clip_space", other=f"clip_space of {query_embeddings}", log=log)
        if need_e5 and e5_text.vectors:
            require_same_space(video_space, e5_text.space, what="video_space", other=f"e5_space of {query_embeddings}", log=log)
        return clip_text, (e5_text if e5_text.vectors else None)
    clip_text = encode_texts(clip_space, texts + negatives, query=False, what="clip")
    e5_text = encode_texts(video_space, states, query=True, what="video") if need_e5 and states else None
    return clip_text, e5_text


def evaluate(
    render: str | Path, scene_dir: str | Path, out: str | Path, *, autoencoder: str | Path | None,
    video_autoencoder: str | Path | None = None, query_embeddings: str | Path | None = None,
    geometry: str | Path | None = None, scene_json: str | Path | None = None, protocol: Protocol = Protocol(),
    dataset: str | None = None, scene: str | None = None, figure_frames: int = 3,
    clip_decoder: Decoder | None = None, video_decoder: Decoder | None = None, device: str = "cpu", log=print,
):
    """Write `<out>/metrics.parquet` and `<out>/figures/*.png` for one scene; return the table.

    `clip_decoder` / `video_decoder` replace loading the autoencoder checkpoints (tests, notebooks).
    """
    from pipeline.store import atomic_path, open_group, provenance, write_parquet

    from pipeline.devices import resolve_device

    device = resolve_device(device)
    out = Path(out)
    group = open_group(render, what="render")
    attrs = dict(group.attrs)
    scene_dir = Path(scene_dir)
    scene_info = json.loads(Path(scene_json).read_text()) if scene_json and Path(scene_json).is_file() else {}
    dataset = dataset or scene_info.get("dataset") or scene_dir.parent.name
    scene = scene or scene_info.get("scene") or scene_dir.name

    # The latents are compared in the space their autoencoder decodes to: the render's record of it,
    # else the autoencoder's own (a render of the released decoder records none).
    clip_space = parse_space(attrs.get("clip_space"))
    video_space = parse_space(attrs.get("video_space"))
    has_video = "video" in group
    if clip_decoder is None:
        clip_decoder, ae_space, _ = load_decoder(autoencoder, config_key="evaluate.autoencoder", what="CLIP autoencoder",
                                                device=device)
        require_same_space(clip_space, ae_space, what="clip_space", other=f"the space of {autoencoder}", log=log)
        clip_space = clip_space or ae_space
    if video_decoder is None and video_autoencoder and has_video:
        video_decoder, vae_space, _ = load_decoder(video_autoencoder, config_key="evaluate.video_autoencoder",
                                                   what="video autoencoder", device=device)
        require_same_space(video_space, vae_space, what="video_space", other=f"the space of {video_autoencoder}", log=log)
        video_space = video_space or vae_space

    ann = coco.load_scene_annotations(scene_dir, frame_offset=protocol.frame_offset)
    need_e5 = video_decoder is not None and bool(ann.state_prompts) and has_video
    clip_text, e5_text = resolve_queries(clip_space, video_space, query_embeddings, need_e5=need_e5,
                                         texts=[*ann.labels, *ann.state_prompts], states=list(ann.state_prompts),
                                         negatives=list(protocol.negatives), log=log)

    with atomic_path(out / "figures") as fig_tmp:
        fig_tmp.mkdir(parents=True)
        rows = evaluate_language(group, scene_dir, clip_decoder=clip_decoder, clip_text=clip_text,
                                 video_decoder=video_decoder, e5_text=e5_text, protocol=protocol, dataset=dataset,
                                 scene=scene, figures_dir=fig_tmp, figure_frames=figure_frames, log=log)
    if geometry is not None:
        if scene_json is None:
            raise UserError("--geometry needs --scene-json (the ground-truth cameras and depth paths)")
        rows += evaluate_geometry(open_group(geometry, what="geometry"), scene_json, protocol=protocol,
                                  dataset=dataset, scene=scene, log=log)
    table = metrics_frame(rows)
    inputs = {"render": render, "annotations": scene_dir / coco.COCO_RELATIVE}
    if geometry is not None:
        inputs["geometry"] = geometry
    checkpoints = {"autoencoder": autoencoder if autoencoder and Path(autoencoder).is_file() else None,
                   "video_autoencoder": video_autoencoder if video_autoencoder and Path(video_autoencoder).is_file() else None}
    prov = provenance("evaluate", protocol.as_dict(), inputs, checkpoints=checkpoints,
                      extra={"dataset": dataset, "scene": scene,
                             "query_embeddings": str(query_embeddings) if query_embeddings else None})
    write_parquet(out / "metrics.parquet", table, provenance=prov)
    return table


def summary_lines(table) -> list[str]:
    lines = [f"{r['task']}: {int(r['value'])} time-sensitive queries not evaluated: {r['note']}"
             for _, r in table[table["metric"] == NOT_EVALUATED].iterrows()]
    sel = table[table["aggregation"] == "query_mean"]
    for _, r in sel.iterrows():
        v = f" [{r['variant']}]" if isinstance(r["variant"], str) else ""
        lines.append(f"{r['task']}: {r['metric']}{v} = {100 * r['value']:.2f}% over {r['n_items']} queries")
    for _, r in table[table["task"].isin(["depth", "pose"])].iterrows():
        lines.append(f"{r['task']} [{r['variant']}]: {r['metric']} = {r['value']:.4f}")
    return lines


def add_arguments(parser) -> None:
    from pipeline.defaults import schema_default

    parser.add_argument("--render", required=True, help="render.zarr of the scene")
    parser.add_argument("--scene", required=True, help="scene folder holding annotations/ (upstream layout)")
    parser.add_argument("--autoencoder", help="CLIP-slot autoencoder (.safetensors, 4DLangSplat key layout)")
    parser.add_argument("--video-autoencoder", help="video autoencoder (.safetensors); enables time-sensitive queries")
    parser.add_argument("--query-embeddings", help="npz with clip_names/clip_vectors and e5_names/e5_vectors "
                        "(+ optional clip_space/e5_space JSON) instead of running text encoders")
    parser.add_argument("--geometry", help="geometry.zarr: adds depth and pose metrics where GT exists")
    parser.add_argument("--scene-json", help="scene.json of the frames stage (GT depth paths and cameras)")
    parser.add_argument("--dataset", help="dataset name in the table (default: scene.json, else the scene's parent folder)")
    parser.add_argument("--scene-name", help="scene name in the table (default: scene.json, else the folder name)")
    parser.add_argument("--figure-frames", type=int, default=schema_default("evaluate.figure_frames"), help="frames per query in the overlay figures")
    parser.add_argument("--device", default=schema_default("evaluate.device"), help="torch device for decoding latents (cpu, auto, cuda)")
    parser.add_argument("--out", required=True, help="output folder: metrics.parquet + figures/")
    add_protocol_arguments(parser)


def run(args) -> None:
    if not args.autoencoder:
        raise UserError("--autoencoder is required (config key `evaluate.autoencoder`)")
    table = evaluate(
        args.render, args.scene, args.out, autoencoder=args.autoencoder, video_autoencoder=args.video_autoencoder,
        query_embeddings=args.query_embeddings, geometry=args.geometry, scene_json=args.scene_json,
        protocol=protocol_from_args(args), dataset=args.dataset, scene=args.scene_name,
        figure_frames=args.figure_frames, device=args.device,
    )
    for line in summary_lines(table):
        print(line)
