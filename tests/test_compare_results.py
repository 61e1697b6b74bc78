"""benchmarks/compare_results.py: the largest difference per artifact of two result folders."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from pipeline.store import create_group

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_results  # noqa: E402


def _results(root: Path, *, bump: float = 0.0, label: str = "cup", extra: bool = False) -> Path:
    scene = root / "demo" / "demo"
    scene.mkdir(parents=True)
    group = create_group(scene / "render.zarr")
    group.create_array("lang_s", data=np.arange(12, dtype=np.float32).reshape(3, 4) + bump)
    group.attrs["provenance"] = {"created": str(root)}  # differs between runs by design: not compared
    pd.DataFrame({"query": [label, "lamp"], "value": [0.5, np.nan]}).to_parquet(scene / "metrics.parquet")
    save_file({"w": torch.ones(2, 2)}, str(scene / "sbd.safetensors"), metadata={"provenance": str(root)})
    (scene / "scene.json").write_text(json.dumps({"fps": 10, "size": [4, 3 + bump], "provenance": {"host": str(root)}}))
    if extra:
        (scene / "extra.json").write_text("{}")
    return root


def _lines(a: Path, b: Path) -> tuple[bool, dict[str, str]]:
    out = io.StringIO()
    ok = compare_results.compare(a, b, out=out)
    return ok, {line.split()[-1] if line.startswith("only") else line.split()[1]: line for line in out.getvalue().splitlines()}


def test_equal_runs_report_zero_everywhere(tmp_path):
    ok, lines = _lines(_results(tmp_path / "a"), _results(tmp_path / "b"))
    assert ok
    assert set(lines) == {f"demo/demo/{n}" for n in ("render.zarr", "metrics.parquet", "sbd.safetensors", "scene.json")}
    assert all(line.split()[0] == "0" for line in lines.values())


def test_differences_and_missing_artifacts_are_reported(tmp_path):
    ok, lines = _lines(_results(tmp_path / "a"), _results(tmp_path / "b", bump=0.25, label="mug", extra=True))
    assert not ok
    assert float(lines["demo/demo/render.zarr"].split()[0]) == 0.25 and "lang_s" in lines["demo/demo/render.zarr"]
    assert float(lines["demo/demo/scene.json"].split()[0]) == 0.25
    assert math.isinf(float(lines["demo/demo/metrics.parquet"].split()[0]))  # a string differs
    assert lines["demo/demo/extra.json"].startswith("only in B")
    assert compare_results.main([str(tmp_path / "a"), str(tmp_path / "a")]) == 0
