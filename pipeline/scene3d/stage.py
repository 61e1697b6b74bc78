"""GPT4Scene scene prompts: objects lifted to 3D, a fused cloud, a BEV and marked frames, 3D grounding.

Each large-level object (masks.zarr level `l`, ids stable over time) is lifted to world points by
back-projecting its masked pixels with depth, intrinsics and extrinsics (geometry.zarr, or the
scene's ground truth with `--geometry-source gt`), confidence-filtered and voxel-downsampled.
Writes `objects3d.parquet` (a box over the video and a box per frame, so a moving object has a
track), `cloud.ply` (the fused coloured cloud), `scene_prompt/` (the BEV, N uniformly sampled
frames with the objects' numbered markers, `manifest.json`, `prompt.txt`, `contact_sheet.png`)
and a grounding metrics table: each grounding query of the scene picks the object whose language
features (the render's latents decoded by the CLIP autoencoder, averaged over the object's
pixels) match it best, scored against ground-truth boxes (Acc@0.25/0.5, Hungarian F1@0.25/0.5).
Bad scene content (no objects, an object without valid depth, frames without depth) is a note in
the manifest and the log, not an error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.scene3d import bev as bevmod
from pipeline.scene3d import grounding as gmod
from pipeline.scene3d.lift import FrameView, lift_video, object_box, union_box, write_ply
from pipeline.scene3d.markers import contact_sheet, draw_markers, frame_markers, resize_nearest, sample_frames

LEVEL_NAMES = ("default", "s", "m", "l")
THRESHOLDS = (0.25, 0.5)


@dataclass
class Settings:
    level: str = "l"
    num_frames: int = 8  # marked frames (upstream: 8 zero-shot, 32 fine-tuned)
    max_side: int = 512
    voxel_size: float = 0.0  # 0: 1% of the first frame's median depth
    pixel_stride: int = 1
    confidence_percentile: float = 10.0  # predicted depth: drop this share (%) of each frame's least confident pixels
    trim: float = 0.02
    up_axis: str = "floor"  # floor | camera
    ceiling_quantile: float = 0.98
    extent_quantile: float = 0.01
    bev_extent: str = "cloud"  # cloud | objects (the footprint of the objects smaller than half the scene)
    bev_margin: float = 0.05
    bev_size: int = 512
    bev_windows: int = 0
    splat_radius: int = 1
    moving_threshold: float = 0.25  # track spread / box diagonal above which an object counts as moving
    min_marker_area: int = 30
    features_per_frame: int = 256
    multi_margin: float = 0.05
    min_score: float = 0.0
    seed: int = 0


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, disable=not enabled)


# ----------------------------------------------------------------------------- inputs
def read_vocabulary(value, *, config_key: str = "scene3d.vocabulary") -> list[str]:
    """A list of texts, or a text file with one per line (`#` comments); missing file: one line."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    p = Path(str(value))
    if not p.is_file():
        raise UserError(f"config error at `{config_key}`: vocabulary file {p} not found (expected a text file, one name per line)")
    words = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise UserError(f"config error at `{config_key}`: vocabulary file {p} holds no names")
    return list(dict.fromkeys(words))


def _depth_file(depth_dir: Path, name: str | None, source_index: int) -> Path | None:
    """The frame's depth file: named like the frame, else by its 1- or 0-based source index."""
    if name:
        cands = [depth_dir / f"{Path(name).stem}.npy"]
    else:
        cands = [depth_dir / f"{source_index + 1:06d}.npy", depth_dir / f"{source_index:06d}.npy"]
    return next((c for c in cands if c.is_file()), None)


def gt_views(scene: dict, height: int, width: int, notes: list[str]):
    """FrameViews from scene.json's ground-truth cameras and depth (at frame resolution)."""
    import cv2

    cams = scene.get("cameras")
    depth_dir = (scene.get("gt") or {}).get("depth_dir")
    if not cams or not depth_dir:
        raise UserError("config error at `scene3d.geometry`: `gt` needs ground-truth cameras and depth in scene.json "
                        f"(cameras: {'yes' if cams else 'no'}, gt.depth_dir: {depth_dir or 'no'}); use `predicted`")
    K = np.asarray(cams["intrinsics"], dtype=np.float64)
    E = np.asarray(cams["extrinsics"], dtype=np.float64)
    names = scene.get("frame_names") or []
    sources = scene.get("source_indices") or list(range(len(E)))
    rows, cols = np.arange(height), np.arange(width)
    for t in range(len(E)):
        f = _depth_file(Path(depth_dir), names[t] if t < len(names) else None, int(sources[t]))
        if f is None:
            depth = np.zeros((height, width), np.float32)
        else:
            depth = np.load(f).astype(np.float32).squeeze()
            if depth.shape != (height, width):
                depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
        valid = np.isfinite(depth) & (depth > 0)
        yield FrameView(t, depth, K[t], E[t], valid, rows, cols)


def predicted_views(geometry, height: int, width: int, confidence_percentile: float):
    """FrameViews from geometry.zarr: depth on the model's (resized, cropped) grid, mapped to frame pixels."""
    from pipeline.store import require_arrays

    require_arrays(geometry, ["depth", "intrinsics", "extrinsics"], what="geometry.zarr")
    attrs = dict(geometry.attrs)
    T = geometry["depth"].shape[0]
    transform = attrs.get("transform") or {}
    h, w = geometry["depth"].shape[1:3]
    top, left = (transform.get("crop") or [0, 0, h, w])[:2]
    rh, rw = transform.get("resize_to") or transform.get("source_size") or (height, width)
    rows = np.clip(np.floor((top + np.arange(h) + 0.5) * height / rh).astype(int), 0, height - 1)
    cols = np.clip(np.floor((left + np.arange(w) + 0.5) * width / rw).astype(int), 0, width - 1)
    has_conf = "depth_conf" in geometry
    for t in range(T):
        depth = np.asarray(geometry["depth"][t], dtype=np.float32).reshape(h, w)
        valid = np.isfinite(depth) & (depth > 0)
        if has_conf and confidence_percentile > 0 and valid.any():
            conf = np.asarray(geometry["depth_conf"][t], dtype=np.float32).reshape(h, w)
            valid &= conf >= np.percentile(conf[valid], confidence_percentile)
        yield FrameView(t, depth, np.asarray(geometry["intrinsics"][t], dtype=np.float64),
                        np.asarray(geometry["extrinsics"][t], dtype=np.float64), valid, rows, cols)


# ----------------------------------------------------------------------------- language
def object_features(render, masks_level, ids: list[int], decoder, *, level: str, per_frame: int, seed: int = 0):
    """id -> unit feature: the mean of the decoded render latents over (a sample of) the object's pixels."""
    import torch

    from pipeline.evaluate.encoders import decode_unit

    name = f"lang_{level}"
    if name not in render:
        raise UserError(f"render lacks {name}; has {sorted(render.array_keys())}")
    rng = np.random.default_rng(seed)
    T = min(render[name].shape[0], masks_level.shape[0])
    chunks: dict[int, list[np.ndarray]] = {k: [] for k in ids}
    for t in range(T):
        id_map = np.asarray(masks_level[t])
        lat = np.asarray(render[name][t], dtype=np.float32)
        if lat.shape[:2] != id_map.shape:
            import cv2

            id_map = cv2.resize(id_map.astype(np.float32), (lat.shape[1], lat.shape[0]), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        if float(lat.min()) > 0:  # decoder outputs in [0, 1]: the evaluation's remap to [-1, 1]
            lat = lat * 2 - 1
        for k in ids:
            ys, xs = np.nonzero(id_map == k)
            if len(ys) == 0:
                continue
            if len(ys) > per_frame:
                pick = rng.choice(len(ys), per_frame, replace=False)
                ys, xs = ys[pick], xs[pick]
            chunks[k].append(lat[ys, xs])
    feats = {}
    for k, parts in chunks.items():
        if not parts:
            continue
        f = decode_unit(decoder, torch.as_tensor(np.concatenate(parts))).mean(0)
        feats[k] = (f / f.norm().clamp_min(1e-12)).numpy()
    return feats


def text_vectors(space, texts: list[str]) -> np.ndarray:
    from pipeline.evaluate.encoders import encode_texts

    vecs = encode_texts(space, texts, query=False, what="clip")
    return np.stack([vecs.vectors[t] for t in texts]).astype(np.float32)


# ----------------------------------------------------------------------------- grounding
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
        chosen = gmod.choose_objects(scores[:, qi], multi=not single, margin=margin, min_score=min_score) if len(cand_ids) else []
        pred = [cand_boxes[i] for i in chosen]
        note = "chose " + ",".join(f"<OBJ{cand_ids[i]:03d}>" for i in chosen) if chosen else "chose none"
        if single and targets:
            iou = gmod.box_iou(pred[0], targets[0]) if pred else 0.0
            ious.append(iou)
            chance.append(np.mean([gmod.box_iou(b, targets[0]) >= THRESHOLDS[0] for b in cand_boxes]) if cand_boxes else 0.0)
            rows.append(_row(**base, task="grounding", query=q["query"], metric="iou", value=iou, aggregation="none",
                             unit="fraction", note=note))
        for k in THRESHOLDS:
            f1 = gmod.hungarian_f1(pred, targets, k)
            f1s[k].append(f1)
            rows.append(_row(**base, task="grounding", query=q["query"], metric=f"F1@{k:g}", value=f1, aggregation="none",
                             threshold=k, unit="fraction", note=note))
    for k in THRESHOLDS:
        if ious:
            rows.append(_row(**base, task="grounding", metric=f"Acc@{k:g}", value=gmod.accuracy_at(ious, k),
                             aggregation="query_mean", threshold=k, n_items=len(ious), unit="fraction"))
        if f1s[k]:
            rows.append(_row(**base, task="grounding", metric=f"F1@{k:g}", value=float(np.mean(f1s[k])),
                             aggregation="query_mean", threshold=k, n_items=len(f1s[k]), unit="fraction"))
    if chance:
        rows.append(_row(**base, task="grounding", metric="chance_Acc@0.25", value=float(np.mean(chance)),
                         aggregation="query_mean", threshold=0.25, n_items=len(chance), unit="fraction",
                         note="expected Acc@0.25 of an object picked at random"))
    return rows


# ----------------------------------------------------------------------------- the stage
class _Level:
    """One level of masks.zarr/masks [4,T,H,W], read a frame at a time."""

    def __init__(self, array, level: int):
        self.array, self.level = array, level
        self.shape = tuple(array.shape[1:])

    def __getitem__(self, t: int) -> np.ndarray:
        return np.asarray(self.array[self.level, t])


def _moving(track: dict[int, np.ndarray], threshold: float) -> bool:
    if len(track) < 2:
        return False
    b = np.asarray(list(track.values()))
    spread = np.linalg.norm(b[:, :3].max(0) - b[:, :3].min(0))
    diag = float(np.median(np.linalg.norm(b[:, 3:], axis=1)))
    return bool(spread > threshold * max(diag, 1e-9))


def build_scene(
    *, frames: str | Path, masks: str | Path, objects: str | Path, scene_json: str | Path, objects3d: str | Path,
    cloud: str | Path, prompt_dir: str | Path, metrics: str | Path, geometry: str | Path | None = None,
    geometry_source: str = "predicted", render: str | Path | None = None, autoencoder: str | Path | None = None,
    vocabulary=None, settings: Settings = Settings(), dataset: str | None = None, scene_name: str | None = None,
    progress: bool = True, log=print,
) -> dict:
    """Write objects3d.parquet, cloud.ply, scene_prompt/ and the grounding metrics; return the manifest."""
    import pandas as pd
    from PIL import Image

    from pipeline.evaluate.table import _row, metrics_frame
    from pipeline.store import atomic_path, open_group, provenance, write_parquet

    s = settings
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        log(f"note: {text}")

    words = read_vocabulary(vocabulary)
    scene_json = Path(scene_json)
    if not scene_json.is_file():
        raise UserError(f"scene.json not found: {scene_json}")
    scene = json.loads(scene_json.read_text())
    dataset = dataset or scene.get("dataset", "")
    scene_name = scene_name or scene.get("scene", "")
    fgroup = open_group(frames, what="frames")
    rgb = fgroup["rgb"]
    T, H, W = rgb.shape[:3]
    mgroup = open_group(masks, what="masks")
    if s.level not in LEVEL_NAMES:
        raise UserError(f"config error at `scene3d.level`: {s.level!r} is not one of {', '.join(LEVEL_NAMES)}")
    levels = list(dict(mgroup["masks"].attrs).get("levels", LEVEL_NAMES))
    masks_level = _Level(mgroup["masks"], levels.index(s.level))
    table = pd.read_parquet(objects)
    table = table[table["level"] == s.level] if "level" in table else table
    ids = sorted(int(k) for k in table["id"])
    if not ids:
        note(f"the scene has no objects at the `{s.level}` level: no boxes, markers or grounding")

    if geometry_source == "gt":
        views = gt_views(scene, H, W, notes)
        source_note = "ground-truth depth and cameras of the scene (scene.json cameras, gt.depth_dir)"
    else:
        if geometry is None:
            raise UserError("config error at `scene3d.geometry`: `predicted` needs --geometry (geometry.zarr)")
        views = predicted_views(open_group(geometry, what="geometry"), H, W, s.confidence_percentile)
        source_note = "predicted depth and cameras (geometry.zarr)"
    cams = None
    bar = _progress(T, "lift", progress)
    view_list = []

    def keep(vs):
        for v in vs:
            view_list.append(v.E)
            yield v

    lifted = lift_video(keep(views), lambda t: np.asarray(rgb[t]), lambda t: np.asarray(masks_level[t]),
                        voxel=s.voxel_size or None, stride=s.pixel_stride, trim=s.trim, progress=bar)
    bar.close()
    cams = np.asarray(view_list) if view_list else None
    if lifted.empty_frames:
        note(f"{len(lifted.empty_frames)} frame(s) without valid depth, not lifted: {lifted.empty_frames[:20]}")

    # objects: boxes over the video and per frame
    frames_2d = {int(r.id): int(r.frames) for r in table.itertuples()} if len(table) else {}
    gt_names = dict(zip(table["id"].astype(int), table["name"])) if "name" in table else {}
    boxes: dict[int, np.ndarray] = {}
    for k in ids:
        b = object_box(lifted, k, s.trim) if lifted.object_points.get(k, 0) >= 2 else None
        if b is None:
            note(f"object {k} has no valid 3D points (never visible with valid depth): no box, no BEV marker")
        else:
            boxes[k] = b

    # language: object features, names from the vocabulary
    feats, space = {}, None
    if render is not None and autoencoder is not None:
        from pipeline.evaluate.encoders import load_decoder, parse_space

        rgroup = open_group(render, what="render")
        decoder, ae_space, _ = load_decoder(autoencoder, config_key="autoencoder.clip", what="CLIP autoencoder")
        space = parse_space(dict(rgroup.attrs).get("clip_space")) or ae_space
        feats = object_features(rgroup, masks_level, ids, decoder, level=s.level, per_frame=s.features_per_frame, seed=s.seed)
    names, name_scores = {}, {}
    if words and feats:
        vocab = text_vectors(space, words)
        for k, f in feats.items():
            sims = vocab @ f
            names[k], name_scores[k] = words[int(np.argmax(sims))], float(sims.max())
    elif words:
        note("a vocabulary is configured but there is no language field (render + autoencoder): objects named by id")
    for k in ids:
        names.setdefault(k, str(gt_names.get(k, f"object {k}")) if not words else f"object {k}")

    tracks = lifted.frame_boxes
    # regions as large as half the scene (floor, walls, sky) are background: never moving, not framing the BEV
    if len(lifted.points):
        lo, hi = np.quantile(lifted.points, [0.01, 0.99], axis=0)
        scene_diag = float(np.linalg.norm(hi - lo))
    else:
        scene_diag = 0.0
    background = {k for k, b in boxes.items() if np.linalg.norm(b[3:]) > 0.5 * scene_diag}
    moving = {k: k not in background and _moving(tracks.get(k, {}), s.moving_threshold) for k in ids}
    rows = []
    for k in ids:
        b = boxes.get(k)
        tr = tracks.get(k, {})
        rows.append({
            "id": k, "name": names[k], "name_score": name_scores.get(k, np.nan),
            **{f"center_{a}": (float(b[i]) if b is not None else np.nan) for i, a in enumerate("xyz")},
            **{f"size_{a}": (float(b[3 + i]) if b is not None else np.nan) for i, a in enumerate("xyz")},
            "n_points": int(lifted.object_points.get(k, 0)), "frames_2d": int(frames_2d.get(k, 0)),
            "frames_visible": [int(t) for t in sorted(tr)], "frame_boxes": [tr[t].tolist() for t in sorted(tr)],
            "moving": moving[k], "background": k in background,
        })
    obj_df = pd.DataFrame(rows, columns=["id", "name", "name_score", "center_x", "center_y", "center_z", "size_x",
                                         "size_y", "size_z", "n_points", "frames_2d", "frames_visible", "frame_boxes",
                                         "moving", "background"])

    # up axis and BEV
    up, how = bevmod.estimate_up(lifted.points, cams, method=s.up_axis, threshold=2 * max(lifted.voxel, 1e-6), seed=s.seed)
    rotation = bevmod.bev_basis(up, cams)
    framing = lifted.points
    if s.bev_extent == "objects":
        fg = [k for k in boxes if k not in background]
        if fg:
            framing = lifted.points[np.isin(lifted.labels, fg)]
        else:
            note("bev_extent `objects`: no object smaller than the scene to frame the BEV with; the whole cloud frames it")
    plan = bevmod.plan_bev(lifted.points, rotation, size=s.bev_size, ceiling_quantile=s.ceiling_quantile,
                           extent_quantile=s.extent_quantile, margin=s.bev_margin, framing=framing)
    images: list[dict] = []
    sheet: list[tuple[str, np.ndarray]] = []
    prompt_dir = Path(prompt_dir)
    with atomic_path(prompt_dir) as tmp:
        tmp.mkdir(parents=True)
        bev_img, _ = bevmod.render_bev(lifted.points, lifted.colors, plan, radius=s.splat_radius)
        bev_markers = {}
        for k, b in boxes.items():
            u, v = plan.to_pixel(b[None, :3])[0]
            if 0 <= u < plan.width and 0 <= v < plan.height:
                bev_markers[k] = (float(u), float(v))
        img = draw_markers(bev_img, bev_markers)
        Image.fromarray(img).save(tmp / "bev.png")
        images.append({"file": "bev.png", "kind": "bev", "frames": [0, T - 1],
                       "markers": {str(k): [round(x, 1), round(y, 1)] for k, (x, y) in bev_markers.items()}})
        sheet.append(("BEV", img))
        if s.bev_windows > 0 and T > 1:
            moving_ids = [k for k in ids if moving[k]]
            static = ~np.isin(lifted.labels, moving_ids)
            bounds = np.linspace(0, T, s.bev_windows + 1).round().astype(int)
            for w in range(s.bev_windows):
                a, b_ = int(bounds[w]), int(bounds[w + 1]) - 1
                if b_ < a:
                    continue
                sel = static | ((lifted.frames >= a) & (lifted.frames <= b_))
                wimg, _ = bevmod.render_bev(lifted.points[sel], lifted.colors[sel], plan, radius=s.splat_radius)
                marks = {}
                for k in ids:
                    box = union_box([tracks[k][t] for t in tracks.get(k, {}) if a <= t <= b_]) if moving[k] else boxes.get(k)
                    if box is None:
                        continue
                    u, v = plan.to_pixel(box[None, :3])[0]
                    if 0 <= u < plan.width and 0 <= v < plan.height:
                        marks[k] = (float(u), float(v))
                wimg = draw_markers(wimg, marks)
                fname = f"bev_window_{w:02d}.png"
                Image.fromarray(wimg).save(tmp / fname)
                images.append({"file": fname, "kind": "bev_window", "frames": [a, b_],
                               "markers": {str(k): [round(x, 1), round(y, 1)] for k, (x, y) in marks.items()}})
                sheet.append((f"BEV {a}-{b_}", wimg))
        for t in sample_frames(T, s.num_frames):
            frame, scale = resize_nearest(np.asarray(rgb[t]), s.max_side)
            id_map = np.asarray(masks_level[t])
            if scale < 1.0:
                id_map = np.asarray(Image.fromarray(id_map.astype(np.int32)).resize((frame.shape[1], frame.shape[0]), Image.NEAREST))
            marks = frame_markers(id_map, ids, min_area=max(1, int(round(s.min_marker_area * scale * scale))))
            img = draw_markers(frame, marks)
            fname = f"frame_{t:04d}.png"
            Image.fromarray(img).save(tmp / fname)
            images.append({"file": fname, "kind": "frame", "frame": int(t),
                           "markers": {str(k): list(p) for k, p in marks.items()}})
            sheet.append((f"frame {t}", img))
        Image.fromarray(contact_sheet(sheet)).save(tmp / "contact_sheet.png")
        legend = {f"{k:03d}": {"name": names[k], "score": name_scores.get(k),
                               "box": None if k not in boxes else [round(float(v), 4) for v in boxes[k]],
                               "moving": moving[k]} for k in ids}
        order = [im["file"] for im in images]
        prompt = prompt_text(len([i for i in images if i["kind"] == "frame"]), [i for i in images if i["kind"] != "frame"], legend)
        (tmp / "prompt.txt").write_text(prompt)
        inputs = {"frames": frames, "masks": masks, "objects": objects, "scene_json": scene_json}
        for key, path in (("geometry", geometry), ("render", render), ("autoencoder", autoencoder)):
            if path is not None:
                inputs[key] = path
        prov = provenance("scene3d", {**asdict(s), "geometry_source": geometry_source, "vocabulary": words}, inputs,
                          extra={"geometry": source_note})
        manifest = {
            "scene": scene_name, "dataset": dataset, "scene_anno": {scene_name: order}, "images": images,
            "legend": legend, "bev": plan.as_dict(), "up": up.tolist(), "up_from": how,
            "geometry": source_note, "voxel_size": lifted.voxel,
            "points": {"raw": int(lifted.raw_points), "downsampled": int(len(lifted.points))},
            "notes": notes, "provenance": prov,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=float) + "\n")
    write_parquet(objects3d, obj_df, provenance=prov)
    write_ply(cloud, lifted.points, lifted.colors)

    # grounding
    base = dict(dataset=dataset, scene=scene_name)
    mrows = []
    spec = read_grounding(scene)
    cand = [k for k in ids if k in boxes and k in feats]
    if spec is None:
        why = "the scene has no ground-truth boxes and grounding queries (gt.boxes, gt.grounding)"
    elif not feats:
        why = "no language field (render + CLIP autoencoder) to choose objects with"
    else:
        why = None
    if why is None:
        queries, gt_boxes = spec
        qvec = text_vectors(space, [q["query"] for q in queries])
        scores = np.stack([feats[k] for k in cand]) @ qvec.T if cand else np.zeros((0, len(queries)))
        mrows += grounding_rows(queries, gt_boxes, cand, [boxes[k] for k in cand], scores, base=base,
                                margin=s.multi_margin, min_score=s.min_score)
        if not cand:
            note("no object has both a box and language features: every grounding query fails")
    else:
        log(f"note: 3D grounding not evaluated: {why}")
        mrows.append(_row(**base, task="grounding", metric="grounding_not_evaluated", value=1.0, aggregation="count", note=why))
    mprov = provenance("scene3d", {**asdict(s), "geometry_source": geometry_source}, inputs, extra={"geometry": source_note})
    write_parquet(metrics, metrics_frame(mrows), provenance=mprov)
    return manifest


def prompt_text(num_frames: int, bevs: list[dict], legend: dict) -> str:
    lines = [
        f"You see {len(bevs)} bird's-eye view image(s) of a 3D scene reconstructed from a video, then {num_frames} "
        "frames sampled uniformly from the video.",
        "Objects carry numbered markers; the same number is the same object in every image.",
        "Refer to an object as <OBJ###> with its three-digit number, e.g. <OBJ001>.",
    ]
    if legend:
        lines.append("Objects: " + ", ".join(f"<OBJ{k}>" for k in legend) + ".")
    return "\n".join(lines) + "\n"


def add_arguments(parser) -> None:
    parser.add_argument("--frames", required=True)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--objects", required=True, help="objects.parquet of the segment stage")
    parser.add_argument("--scene-json", required=True)
    parser.add_argument("--geometry", help="geometry.zarr (needed with --geometry-source predicted)")
    parser.add_argument("--geometry-source", choices=["predicted", "gt"], default="predicted")
    parser.add_argument("--render", help="render.zarr: the language field that names and grounds objects")
    parser.add_argument("--autoencoder", help="the CLIP autoencoder that decodes the render's latents")
    parser.add_argument("--vocabulary", help="text file, one object name per line")
    parser.add_argument("--objects3d", required=True)
    parser.add_argument("--cloud", required=True)
    parser.add_argument("--prompt-dir", required=True)
    parser.add_argument("--metrics", required=True, help="grounding metrics table (.parquet)")
    parser.add_argument("--dataset")
    parser.add_argument("--scene-name")
    parser.add_argument("--no-progress", action="store_true")
    group = parser.add_argument_group("settings")
    for f in fields(Settings):
        group.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f"default {f.default}")


def run(args) -> None:
    from pipeline.cli import run_stage

    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})

    def summary(m: dict) -> str:
        return (f"{len(m['legend'])} objects, {m['points']['raw']} points -> {m['points']['downsampled']} after "
                f"downsampling, up from {m['up_from']}; {len(m['images'])} images in {args.prompt_dir}")

    run_stage(build_scene, args, values={"settings": settings}, summary=summary)
