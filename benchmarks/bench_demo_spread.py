"""Spread of the demo's metrics over training seeds, torch thread counts and CPU kernels.

The demo's language chain (autoencoders -> decoder training -> render -> evaluate) learns, so its
numbers move with floating-point details. This reruns that chain with the real `snakemake`, reusing
one finished run's frames, masks, features and tokens, for every (seed, threads, kernel) combination,
and writes JSON with every run's metrics and their min / median / max:

    python benchmarks/bench_demo_spread.py --seeds 0 1 2 3 4 --threads 1 2 --kernels native avx2

`--threads N` runs the jobs under `snakemake --cores N` (the rules' thread counts are capped to it);
`--kernels` sets ATEN_CPU_CAPABILITY (and MKL_ENABLE_INSTRUCTIONS=AVX2 for avx2/default), which is how
another CPU's kernels are reproduced at home. `--set key=value` overrides config keys (dotted paths,
YAML values) for experiments. Runs execute `--parallel` at a time (each with its own --cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from _common import write_result

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "workflow", "envs")
METRICS = {  # name -> (task, metric, variant)
    "mIoU": ("time_agnostic", "mIoU", None),
    "mAcc": ("time_agnostic", "mAcc", None),
    "Acc": ("time_sensitive", "Acc", "video"),
    "vIoU": ("time_sensitive", "vIoU", "video"),
}
TARGETS = {"mIoU": 0.60, "Acc": 0.80, "vIoU": 0.50}  # issue 11: minimum over all runs
FIRST_RERUN_RULE = "autoencoder_train"  # everything from here on is the learned chain


def environment(kernel: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    env.pop("ATEN_CPU_CAPABILITY", None)
    env.pop("MKL_ENABLE_INSTRUCTIONS", None)
    if kernel != "native":
        env["ATEN_CPU_CAPABILITY"] = kernel
        env["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
    return env


def set_key(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        cfg = cfg.setdefault(name, {})
    cfg[last] = value


def run_config(base: dict, overrides: list[str], seed: int | None) -> dict:
    cfg = json.loads(json.dumps(base))
    for item in overrides:
        key, _, raw = item.partition("=")
        set_key(cfg, key, yaml.safe_load(raw))
    if seed is not None:
        for key in ("sbd.seed", "autoencoder.clip.seed", "autoencoder.video.seed"):
            set_key(cfg, key, seed)
    return cfg


def snakemake(workdir: Path, cores: int, env: dict, *args: str) -> float:
    start = time.perf_counter()
    cmd = [SNAKEMAKE, "--cores", str(cores), "--resources", "gpu=0", "--configfile", "run.yaml", *args]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed in {workdir}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def prepare_base(root: Path, cfg: dict, reuse: Path | None) -> Path:
    """A workflow copy with the whole demo DAG run once: the shared upstream artifacts."""
    base = root / "base"
    base.mkdir()
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, base / name)
    if reuse is not None:  # a finished run of this workflow: its artifacts and Snakemake's records
        for name in ("results", "resources", ".snakemake"):
            shutil.copytree(reuse / name, base / name, symlinks=True, ignore=shutil.ignore_patterns("locks", "log"))
    (base / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print("running the demo DAG once for the shared frames, masks, features and tokens ...", flush=True)
    snakemake(base, 2, environment("native"), "--omit-from", FIRST_RERUN_RULE)
    return base


def read_metrics(workdir: Path) -> dict[str, float]:
    import pandas as pd

    table = pd.read_parquet(next((workdir / "results").glob("*/*/eval/metrics.parquet")))
    rows = table[table["aggregation"] == "query_mean"]
    out = {}
    for name, (task, metric, variant) in METRICS.items():
        sel = rows[(rows["task"] == task) & (rows["metric"] == metric)]
        if variant is not None:
            sel = sel[sel["variant"] == variant]
        out[name] = float(sel["value"].iloc[0]) if len(sel) else float("nan")
    per_query = table[(table["task"] == "time_agnostic") & (table["aggregation"] == "frame_mean") & (table["metric"] == "iou")]
    out["query_iou"] = {str(q): round(float(v), 4) for q, v in zip(per_query["query"], per_query["value"])}
    return out


def one_run(base: Path, root: Path, cfg: dict, seed: int, threads: int, kernel: str, keep: Path | None) -> dict:
    work = root / f"seed{seed}_t{threads}_{kernel}"
    shutil.copytree(base, work, symlinks=True)
    (work / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    seconds = snakemake(work, threads, environment(kernel), "--forcerun", FIRST_RERUN_RULE)
    result = {"seed": seed, "threads": threads, "kernel": kernel, "seconds": round(seconds, 1), **read_metrics(work)}
    if keep is not None:  # the run's whole metrics table (per-frame similarities included), for a closer look
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(next((work / "results").glob("*/*/eval/metrics.parquet")), keep / f"{work.name}.parquet")
    shutil.rmtree(work / "results", ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for name in METRICS:
        values = [r[name] for r in runs if r[name] == r[name]]
        if values:
            summary[name] = {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}
    summary["targets"] = {k: {"min_required": v, "met": summary.get(k, {}).get("min", -1) >= v} for k, v in TARGETS.items()}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kernels", nargs="+", default=["native"], help="native, avx2, default, avx512")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--reuse", type=Path, default=None, help="a finished demo workdir (e.g. the repo after make demo)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (each uses its own --cores)")
    parser.add_argument("--keep-metrics", type=Path, default=None, help="copy each run's metrics.parquet here")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/demo_spread.json"))
    args = parser.parse_args()

    base_cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    combos = list(itertools.product(args.seeds, args.threads, args.kernels))
    with tempfile.TemporaryDirectory(prefix="demo-spread-") as tmp:
        root = Path(tmp)
        base = prepare_base(root, run_config(base_cfg, args.overrides, None), args.reuse)
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            futures = [pool.submit(one_run, base, root, run_config(base_cfg, args.overrides, s), s, t, k, args.keep_metrics)
                       for s, t, k in combos]
            runs = [f.result() for f in futures]
    result = {"overrides": args.overrides, "runs": runs, "summary": summarise(runs)}
    write_result(args.out, result, echo=result["summary"])


if __name__ == "__main__":
    main()
