"""The long metrics table every evaluation writes (metrics.parquet): one row per value.

Columns: dataset, scene, task, query, level, frame, metric, value, aggregation, variant,
threshold, n_items, unit, note. `report` gathers these tables across scenes.
"""

from __future__ import annotations

from pipeline.evaluate.report import NOT_EVALUATED

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
