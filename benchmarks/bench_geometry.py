"""Geometry stage benchmarks: cost per frame against frame index, token storage, GPU throughput.

1. `stream` with a cache window vs `stream` without one vs `offline` (VGGT, recomputing all
   frames so far to produce the newest one), at a small random config on CPU, at frame
   counts well past the point where the window fills. Per point: latency of the newest
   frame, the key/value cache held (exact bytes) and peak RSS of a fresh process (measured).
   Once the window is full, windowed `stream` must stay flat in time and memory.
2. Bytes per frame of tokens.zarr at 532x952 (upstream 4DLangVGGT's frame size) against
   upstream's 509 MB per frame (24 fp32 layers, all tokens).
3. GPU only (skipped without one): full size at 518x392, bf16, stream mode with a window,
   ms per frame and peak GB (random weights; timing does not depend on the values).

Ratios are compared within one run; absolute CPU times depend on the machine and its load.

    python benchmarks/bench_geometry.py [--out benchmarks/results/geometry.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL = dict(embed_dim=128, depth=4, num_heads=4, patch_embed="conv")
SMALL_HW = (112, 112)  # 8x8 patches, 69 tokens per frame


def _small_model(seed=0):
    from pipeline.geometry.model import GeometryConfig, random_model

    return random_model(GeometryConfig.small(**SMALL), seed).eval()


def _frames(n, hw, seed=0):
    """Frames made on demand, so a long stream does not hold its whole input in memory."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.rand(3, *hw, generator=g)


def child(mode: str, n: int, window: int | None) -> dict:
    """Run `n` frames in this (fresh) process; newest-frame latency, cache bytes, peak RSS."""
    import torch

    torch.set_num_threads(1)
    from pipeline.geometry.runner import run_geometry

    model = _small_model()
    list(run_geometry(model, _frames(2, SMALL_HW, 1), mode="offline"))  # warm-up (allocator, kernels)
    list(run_geometry(model, _frames(4, SMALL_HW, 1), mode="stream", cache_window=window))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "offline":
        start, cpu = time.perf_counter(), time.process_time()
        list(run_geometry(model, _frames(n, SMALL_HW), mode="offline"))
        latency, cpu_latency = time.perf_counter() - start, time.process_time() - cpu
        cache_bytes = 0
    else:
        # drive the aggregator + camera head directly so the caches can be measured
        from pipeline.geometry.layers import TimeMask

        mask = TimeMask(causal=True, window=window)
        agg, cam = model.aggregator.new_cache(window), model.camera_head.new_cache(window)
        last = model.config.depth - 1
        needed = set(model.config.dpt_layers) | {last}
        times, cpu_times = [], []
        with torch.no_grad():
            for img in _frames(n, SMALL_HW):
                start, cpu = time.perf_counter(), time.process_time()
                tokens = model.aggregator(img[None, None], keep_layers=needed, mask=mask, cache=agg)
                model.camera_head(tokens[last][:, :, 0], mask=mask, cache=cam)
                model.depth_head(tokens, SMALL_HW, model.patch_start)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu)
        # the newest frames; the median resists load spikes from other processes
        latency, cpu_latency = statistics.median(times[-32:]), statistics.median(cpu_times[-32:])
        cache_bytes = agg.nbytes() + sum(c.nbytes() for it in cam for c in it)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "frames": n, "window": window, "newest_frame_s": latency, "newest_frame_cpu_s": cpu_latency,
            "cache_mb": cache_bytes / 1e6, "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base) / 1024}


def _spawn(mode, n, window) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(n), str(window or 0)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cost_vs_frames(counts, window) -> dict:
    rows = []
    for n in counts:
        for mode, w in (("stream", window), ("stream", None), ("offline", None)):
            row = _spawn(mode, n, w)
            row["label"] = f"stream(window={window})" if (mode == "stream" and w) else (
                "stream(unbounded)" if mode == "stream" else "offline")
            rows.append(row)
            print(f"  {row['label']:<22} frames={n:<4} newest frame {1000 * row['newest_frame_s']:8.1f} ms wall "
                  f"{1000 * row['newest_frame_cpu_s']:8.1f} ms cpu  "
                  f"cache {row['cache_mb']:7.2f} MB  peak RSS {row['peak_rss_mb']:7.1f} MB "
                  f"(+{row['rss_growth_mb']:.1f})", flush=True)

    def pick(label, n):
        return next(r for r in rows if r["label"] == label and r["frames"] == n)

    wl = f"stream(window={window})"
    full = [n for n in counts if n >= window]
    flat = {}
    if len(full) >= 2:
        a, b = pick(wl, full[0]), pick(wl, full[-1])
        flat = {
            "frames": [full[0], full[-1]],
            "latency_ratio": b["newest_frame_s"] / a["newest_frame_s"],
            "cpu_latency_ratio": b["newest_frame_cpu_s"] / a["newest_frame_cpu_s"],
            "cache_ratio": b["cache_mb"] / a["cache_mb"],
            "peak_rss_delta_mb": b["peak_rss_mb"] - a["peak_rss_mb"],
            "unbounded_cpu_latency_ratio": pick("stream(unbounded)", full[-1])["newest_frame_cpu_s"]
            / pick("stream(unbounded)", full[0])["newest_frame_cpu_s"],
            "unbounded_cache_ratio": pick("stream(unbounded)", full[-1])["cache_mb"]
            / pick("stream(unbounded)", full[0])["cache_mb"],
            "offline_cpu_latency_ratio": pick("offline", full[-1])["newest_frame_cpu_s"]
            / pick("offline", full[0])["newest_frame_cpu_s"],
        }
    return {"config": {**SMALL, "image_hw": list(SMALL_HW), "window": window, "device": "cpu", "threads": 1},
            "rows": rows, "after_window_full": flat}


def bench_token_bytes(hw=(532, 952), frames=2) -> dict:
    """tokens.zarr bytes per frame at upstream's frame size, written with the stage's layout."""
    import numpy as np

    from pipeline import store

    h, w = hw[0] // 14, hw[1] // 14
    layers, C2 = [4, 11, 17, 23], 2048
    P = 5 + h * w
    upstream = 24 * P * C2 * 4  # 24 layers, all tokens, fp32 (np.save of the token list)
    ours_raw = len(layers) * h * w * C2 * 2 + C2 * 4
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        group = store.create_group(Path(tmp) / "tokens.zarr")
        arrays = [store.frame_array(group, f"layer_{i:02d}", (frames, h, w, C2), "float16") for i in layers]
        cam = store.frame_array(group, "camera", (frames, C2), "float32")
        for t in range(frames):
            for arr in arrays:
                # Gaussian tokens: no structure for zstd to find, so this is close to the worst case
                arr[t] = rng.standard_normal((h, w, C2), dtype=np.float32).astype(np.float16)
            cam[t] = rng.standard_normal(C2, dtype=np.float32)
        on_disk = sum(f.stat().st_size for f in (Path(tmp) / "tokens.zarr").rglob("*") if f.is_file())
    per_frame = on_disk / frames
    return {
        "image_hw": list(hw), "grid": [h, w], "tokens_per_frame": P,
        "upstream_bytes_per_frame": upstream, "upstream_mb": upstream / 1e6,
        "ours_uncompressed_mb": ours_raw / 1e6, "ours_zstd_gaussian_mb": per_frame / 1e6,
        "ratio_uncompressed": upstream / ours_raw, "ratio_zstd_gaussian": upstream / per_frame,
        "note": "zstd size measured on Gaussian fp16 tokens (no real weights here); real tokens compress at least as well",
    }


def bench_gpu(frames=64, window=32, hw=(392, 518)) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine"}
    from pipeline.geometry.model import GeometryConfig, random_model
    from pipeline.geometry.runner import run_geometry

    model = random_model(GeometryConfig(), 0).to("cuda").eval()
    imgs = [torch.rand(3, *hw) for _ in range(frames)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    stamps = []
    start = time.perf_counter()
    for out in run_geometry(model, imgs, mode="stream", cache_window=window, device="cuda", dtype="bfloat16"):
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    per = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    steady = per[window:] or per[1:]
    return {
        "device": torch.cuda.get_device_name(0), "image_hw": list(hw), "frames": frames, "window": window,
        "dtype": "bfloat16", "mode": "stream",
        "ms_per_frame_first": 1000 * per[0], "ms_per_frame_steady": 1000 * sum(steady) / len(steady),
        "ms_per_frame_by_index": [round(1000 * p, 2) for p in per],
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "geometry.json"))
    parser.add_argument("--quick", action="store_true", help="fewer frames (8, 32, 64), window 16")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "N", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, window = args.child[0], int(args.child[1]), int(args.child[2]) or None
        print(json.dumps(child(mode, n, window)))
        return
    counts, window = ((8, 32, 64), 16) if args.quick else ((8, 32, 128, 256), 32)
    print(f"1. cost vs frame index (CPU, small random config, window {window})", flush=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}}
    result["cost_vs_frames"] = bench_cost_vs_frames(counts, window)
    print(json.dumps(result["cost_vs_frames"]["after_window_full"]))
    print("2. tokens.zarr bytes per frame at 532x952", flush=True)
    result["token_bytes"] = bench_token_bytes()
    print(json.dumps(result["token_bytes"], indent=1))
    print("3. GPU full size", flush=True)
    result["gpu"] = bench_gpu()
    print(json.dumps(result["gpu"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
