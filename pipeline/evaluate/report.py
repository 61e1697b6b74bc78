"""Gather per-scene metrics into cross-scene tables laid out like the papers.

`python -m pipeline report --in results/*/*/eval/metrics.parquet --out results/reports` writes
`metrics.parquet` (every per-scene row plus cross-scene mean rows, long format), `metrics.md`
(one table per dataset and task: a row per scene and a mean row, percentages like the papers)
and `metrics.html` (the same tables, for `snakemake --report`).

Means over scenes: unweighted for language metrics (the papers' "Avg") and for pose (evo's
convention); weighted by valid pixels for depth (the CUT3R / StreamVGGT convention). A scene whose
time-sensitive queries could not be evaluated (its coverage rows say why, e.g. a decoder without
a time-sensitive head) shows "n/a" in that table, with the reason under it.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError

MEAN = "mean"
NOT_EVALUATED = "time_sensitive_queries_not_evaluated"  # coverage metric of a scene; its `note` says why
NA = "n/a"

# (task, metric, variant, column title, scale, decimals); variant None = any
LANGUAGE_COLUMNS = {
    "time_agnostic": [("mIoU", None, "mIoU (%)", 100, 2), ("mAcc", None, "mAcc (%)", 100, 2)],
    "time_sensitive": [("Acc", "video", "Acc (%)", 100, 2), ("vIoU", "video", "vIoU (%)", 100, 2)],
    "grounding": [("Acc@0.25", None, "Acc@0.25 (%)", 100, 2), ("Acc@0.5", None, "Acc@0.5 (%)", 100, 2),
                  ("F1@0.25", None, "F1@0.25 (%)", 100, 2), ("F1@0.5", None, "F1@0.5 (%)", 100, 2),
                  ("chance_Acc@0.25", None, "random object Acc@0.25 (%)", 100, 2)],
}
GEOMETRY_COLUMNS = {
    "depth": [("abs_rel", "Abs Rel", 1, 4), ("delta_1.25", "δ<1.25 (%)", 100, 2)],
    "pose": [("ate", "ATE", 1, 4), ("rpe_trans", "RPE trans", 1, 4), ("rpe_rot", "RPE rot (deg)", 1, 3)],
}
# novel views (pipeline.nerf.evaluate): (metric, column title, scale, decimals) per method
NOVEL_VIEW_COLUMNS = [("psnr", "PSNR", 1, 2), ("ssim", "SSIM", 1, 3), ("lpips", "LPIPS", 1, 3)]
NOVEL_VIEW_METHODS = ("nerf", "copy_nearest", "reproject_depth")
TITLES = {
    "time_agnostic": "time-agnostic queries (mIoU / mAcc)",
    "time_sensitive": "time-sensitive queries (Acc / vIoU, video features)",
    "grounding": "3D grounding from the language field (ScanRefer Acc@k, Multi3DRefer F1@k)",
    "depth": "video depth",
    "pose": "camera pose (Sim(3)-aligned)",
    "novel_view": "novel views of held-out frames (radiance field vs copied / reprojected nearest frame)",
}


def read_metrics(paths) -> pd.DataFrame:
    frames = []
    seen: dict[tuple, Path] = {}  # per scene and task: grounding and novel-view tables sit beside the metrics
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise UserError(f"metrics table not found: {p}")
        try:
            table = pd.read_parquet(p)
        except Exception as exc:
            raise UserError(f"{p} is not a readable Parquet table ({exc.__class__.__name__})") from None
        if {"dataset", "scene"} <= set(table.columns):
            # one table per scene and task: the evaluation's and the novel-view stage's tables sit side by side
            keys = ["dataset", "scene"] + (["task"] if "task" in table.columns else [])
            for key in table[keys].drop_duplicates().itertuples(index=False, name=None):
                if key in seen:
                    raise UserError(f"scene {key[0]}/{key[1]} appears in both {seen[key]} and {p}; give one table per scene")
                seen[key] = p
        frames.append(table)
    if not frames:
        raise UserError("no metrics tables given")
    df = pd.concat(frames, ignore_index=True)
    need = {"dataset", "scene", "task", "metric", "value", "aggregation"}
    if not need <= set(df.columns):
        raise UserError(f"metrics tables lack columns {sorted(need - set(df.columns))}")
    return df


def _scene_values(df: pd.DataFrame, task: str, metric: str, variant: str | None) -> pd.DataFrame:
    sel = (df.task == task) & (df.metric == metric) & (df.scene != MEAN)
    if task in LANGUAGE_COLUMNS:
        sel &= df.aggregation == "query_mean"
    elif task == "novel_view":
        sel &= df.aggregation == "frame_mean"
    else:
        sel &= df.aggregation == "sequence"
    if variant is not None:
        sel &= df.variant == variant
    return df[sel.fillna(False)]


def cross_scene_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Mean rows per dataset (scene = "mean"): unweighted, or pixel-weighted for depth."""
    rows = []
    keys = ["dataset", "task", "metric", "variant"]
    scene_level = df[(df.scene != MEAN) & (
        (df.task.isin(list(LANGUAGE_COLUMNS)) & (df.aggregation == "query_mean"))
        | (df.task.isin(list(GEOMETRY_COLUMNS)) & (df.aggregation == "sequence"))
        | ((df.task == "novel_view") & (df.aggregation == "frame_mean"))
    ).fillna(False)]
    for key, grp in scene_level.groupby(keys, dropna=False):
        dataset, task, metric, variant = key
        values = grp.value.to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        if not ok.any():
            continue
        if task == "depth":
            w = grp.n_items.to_numpy(dtype=np.float64)[ok]
            value, agg = float(np.sum(values[ok] * w) / max(np.sum(w), 1)), "pixel_weighted_scene_mean"
            n = int(np.sum(w))
        else:
            value, agg, n = float(np.mean(values[ok])), "scene_mean", int(ok.sum())
        rows.append({"dataset": dataset, "scene": MEAN, "task": task, "metric": metric,
                     "variant": None if pd.isna(variant) else variant, "value": value, "aggregation": agg,
                     "n_items": n, "unit": grp.unit.iloc[0] if "unit" in grp else None})
    return pd.DataFrame(rows)


def not_evaluated(df: pd.DataFrame) -> dict[str, str]:
    """scene -> why its time-sensitive queries were not evaluated (from its coverage rows)."""
    if "note" not in df:
        return {}
    sel = df[((df.task == "coverage") & (df.metric == NOT_EVALUATED) & (df.value > 0)).fillna(False)]
    return {str(r.scene): str(r.note) for r in sel.itertuples()}


def paper_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per dataset and task: a row per scene, then the mean row; notes in `table.attrs`."""
    out = []
    means = df[df.scene == MEAN]
    for dataset in sorted(df.dataset.dropna().unique()):
        d = df[df.dataset == dataset]
        for task in [*LANGUAGE_COLUMNS, *GEOMETRY_COLUMNS]:
            if task in LANGUAGE_COLUMNS:
                specs = [(m, v, t, s, k) for m, v, t, s, k in LANGUAGE_COLUMNS[task]]
            else:
                variants = sorted(d[(d.task == task)].variant.dropna().unique()) or [None]
                specs = [(m, v, f"{t} [{v}]" if v and task == "depth" else t, s, k)
                         for v in variants for m, t, s, k in GEOMETRY_COLUMNS[task]]
            table: dict[str, dict[str, str]] = {}
            for metric, variant, title, scale, dec in specs:
                for _, r in _scene_values(d, task, metric, variant).iterrows():
                    table.setdefault(r.scene, {})[title] = _fmt(r.value, scale, dec)
                m = means[(means.dataset == dataset) & (means.task == task) & (means.metric == metric)]
                if variant is not None:
                    m = m[m.variant == variant]
                if len(m):
                    table.setdefault(MEAN, {})[title] = _fmt(m.value.iloc[0], scale, dec)
            cols = [t for _, _, t, _, _ in specs]
            missing = not_evaluated(d) if task == "time_sensitive" else {}
            for scene in missing:
                table.setdefault(scene, {c: NA for c in cols})
            if missing and MEAN not in table:
                table[MEAN] = {c: NA for c in cols}
            if not table:
                continue
            scenes = sorted(s for s in table if s != MEAN) + ([MEAN] if MEAN in table else [])
            frame = pd.DataFrame([[table[s].get(c, "–") for c in cols] for s in scenes], index=scenes, columns=cols)
            frame.index.name = "scene"
            frame.attrs["notes"] = [f"{NA} for {scene}: not evaluated, {why}" for scene, why in sorted(missing.items())]
            out.append((f"{dataset}: {TITLES[task]}", frame))
        novel = novel_view_table(d, means[means.dataset == dataset])
        if novel is not None:
            out.append((f"{dataset}: {TITLES['novel_view']}", novel))
    return out


def novel_view_table(d: pd.DataFrame, means: pd.DataFrame) -> pd.DataFrame | None:
    """A row per scene (and the mean row): PSNR / SSIM / LPIPS of each method; NaN with a note is "n/a"."""
    rows = d[((d.task == "novel_view") & (d.aggregation == "frame_mean") & (d.scene != MEAN)).fillna(False)]
    if not len(rows):
        return None
    methods = [m for m in NOVEL_VIEW_METHODS if m in set(rows.variant)]
    cols = [f"{title} [{m}]" for m in methods for _, title, _, _ in NOVEL_VIEW_COLUMNS]
    table: dict[str, dict[str, str]] = {}
    notes: dict[str, str] = {}
    for r in rows.itertuples():
        spec = next((c for c in NOVEL_VIEW_COLUMNS if c[0] == r.metric), None)
        if spec is None or r.variant not in methods:
            continue
        col = f"{spec[1]} [{r.variant}]"
        note = getattr(r, "note", None)
        if not np.isfinite(r.value) and isinstance(note, str) and note:
            table.setdefault(r.scene, {})[col] = NA
            notes[f"{spec[1]} of {r.scene}"] = note
        else:
            table.setdefault(r.scene, {})[col] = _fmt(r.value, spec[2], spec[3])
    for r in means[(means.task == "novel_view")].itertuples():
        spec = next((c for c in NOVEL_VIEW_COLUMNS if c[0] == r.metric), None)
        if spec is not None and r.variant in methods:
            table.setdefault(MEAN, {})[f"{spec[1]} [{r.variant}]"] = _fmt(r.value, spec[2], spec[3])
    scenes = sorted(s for s in table if s != MEAN) + ([MEAN] if MEAN in table else [])
    frame = pd.DataFrame([[table[s].get(c, NA if c.startswith("LPIPS") else "–") for c in cols] for s in scenes],
                         index=scenes, columns=cols)  # fmt: skip
    frame.index.name = "scene"
    frame.attrs["notes"] = [f"{NA} for {what}: {why}" for what, why in sorted(notes.items())]
    return frame


def _fmt(value, scale, decimals) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value * scale:.{decimals}f}"


def markdown(tables, strips=(), out: Path | None = None) -> str:
    import os

    lines = ["# Metrics", ""]
    for title, t in tables:
        lines += [f"## {title}", "", "| scene | " + " | ".join(t.columns) + " |",
                  "|---|" + "---:|" * len(t.columns)]
        for scene, row in t.iterrows():
            name = f"**{scene}**" if scene == MEAN else scene
            lines.append(f"| {name} | " + " | ".join(row.tolist()) + " |")
        lines.append("")
        for note in t.attrs.get("notes", []):
            lines += [note, ""]
    if strips:
        lines += ["## novel views: held-out / rendered / copied / reprojected", ""]
        for title, path in strips:
            rel = os.path.relpath(path, out) if out is not None else str(path)
            lines += [f"![{title}]({rel})", ""]
    lines.append("Language metrics in %, means over queries per scene and unweighted over scenes; mAcc = pixel "
                 "accuracy of the predicted mask over the frame (our definition). Depth means are weighted by "
                 "valid pixels; pose means are unweighted.")
    return "\n".join(lines) + "\n"


def html_page(tables, strips=()) -> str:
    import base64

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Metrics</title><style>",
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}",
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}",
             "tr.mean{font-weight:bold;background:#f3f3f3}</style></head><body><h1>Metrics</h1>"]
    for title, t in tables:
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr><th>scene</th>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + "</tr>")
        for scene, row in t.iterrows():
            cls = " class='mean'" if scene == MEAN else ""
            parts.append(f"<tr{cls}><td>{html.escape(str(scene))}</td>"
                         + "".join(f"<td>{html.escape(v)}</td>" for v in row.tolist()) + "</tr>")
        parts.append("</table>")
        parts += [f"<p class='note'>{html.escape(note)}</p>" for note in t.attrs.get("notes", [])]
    if strips:
        parts.append("<h2>novel views: held-out / rendered / copied / reprojected</h2>")
        for title, path in strips:
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append("<p>Language metrics in %; mAcc = pixel accuracy of the predicted mask (our definition). "
                 "Depth means weighted by valid pixels; pose means unweighted.</p></body></html>")
    return "\n".join(parts)


def report(inputs, out: str | Path, strips=()) -> pd.DataFrame:
    """Write metrics.parquet, metrics.md and metrics.html under `out`; return the combined table.

    `strips`: the novel-view stage's image strips (`<dataset>/<scene>/nerf/strip.png`), shown under their scene.
    """
    from pipeline.store import atomic_path, provenance, write_parquet

    df = read_metrics(inputs)
    df = df[df.scene != MEAN]
    means = cross_scene_rows(df)
    combined = pd.concat([df, means.reindex(columns=df.columns)], ignore_index=True) if len(means) else df
    for c in ("frame", "n_items"):
        if c in combined:
            combined[c] = combined[c].astype("Int64")
    tables = paper_tables(combined)
    out = Path(out)
    prov = provenance("report", {}, {f"metrics_{i}": p for i, p in enumerate(inputs)})
    write_parquet(out / "metrics.parquet", combined, provenance=prov)
    titled = []
    for path in strips or ():
        p = Path(path)
        if not p.is_file():
            raise UserError(f"novel-view strip not found: {p}")
        titled.append((f"{p.parent.parent.parent.name}/{p.parent.parent.name}", p))
    for name, text in (("metrics.md", markdown(tables, titled, out)), ("metrics.html", html_page(tables, titled))):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    return combined


def add_arguments(parser) -> None:
    parser.add_argument("--in", dest="inputs", nargs="+", required=True, help="per-scene metrics.parquet files")
    parser.add_argument("--out", required=True, help="report folder (results/reports)")
    parser.add_argument("--strips", nargs="*", default=[], help="novel-view strips (<dataset>/<scene>/nerf/strip.png)")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(report, args, summary=lambda _: (Path(args.out) / "metrics.md").read_text())
