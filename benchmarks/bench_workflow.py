"""Workflow overhead: planning time for many scenes, and a no-op rerun of the finished demo.

Writes JSON: seconds for `snakemake -n` with 1 and 100 configured demo scenes (their ratio is the
planning cost per scene), and for `snakemake` on an up-to-date demo run (nothing to do).
Run from the repository after `make demo`:  python benchmarks/bench_workflow.py --out FILE
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import write_result

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def planning_seconds(scenes: int, workdir: Path) -> float:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["scenes"] = {f"s{i:03d}": {"dataset": "demo", "source": "demo", "seed": i} for i in range(scenes)}
    (workdir / "bench.yaml").write_text(yaml.safe_dump(cfg))
    return timed([SNAKEMAKE, "-n", "--cores", "2", "--configfile", "bench.yaml"], workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/workflow.json"))
    parser.add_argument("--scenes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("Snakefile", "config.yaml", "rules", "workflow", "envs"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
        one = planning_seconds(1, work)
        many = planning_seconds(args.scenes, work)
    result = {"dry_run_1_scene_s": round(one, 2), f"dry_run_{args.scenes}_scenes_s": round(many, 2),
              "planning_ratio": round(many / one, 2), "per_extra_scene_ms": round(1000 * (many - one) / (args.scenes - 1), 1)}  # fmt: skip
    if (REPO / "results/reports/metrics.md").exists():
        result["noop_rerun_demo_s"] = round(timed([SNAKEMAKE, "--cores", "2"], REPO), 2)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
