"""Geometry stage benchmarks: cost per frame, long streams, point maps, token storage, GPU.

Sections (`--only a,b`; default: cost, long, points, tokens):
- `cost`: `stream` with a cache window vs without one vs `offline` (VGGT, recomputing all
  frames so far for the newest one), small random config on CPU, at frame counts well past
  the point where the window fills: newest-frame latency, cache bytes, peak RSS (fresh process).
- `long`: a 4000-frame stream at the tiny config in a fresh process, RSS and cache sampled
  along the way (must stay flat); token merging and the bfloat16 cache against the plain
  stream on the same frames: time per frame and token difference.
- `points`: the point head's share of the stage's time (`compute_geometry` with and without
  `points`), at the demo config and at a larger tiny config.
- `tokens`: tokens.zarr bytes per frame at 532x952 (upstream 4DLangVGGT's frame size) per
  token dtype, on Gaussian tokens and (with `--full-size-tokens`, minutes on CPU) on tokens of
  the full-size model with random weights; quantisation error and a full-size random
  decoder's output difference against float16 tokens.
- `demo` (`--only demo`, ~4 min per dtype): the demo DAG in temp copies of the workflow with
  `geometry.token_dtype` overridden, same seed: metrics, bytes per frame, and the fp16-trained
  decoder's output on the quantised tokens against fp16.
- `gpu` (`--gpu`): full size at 518x392, bf16 autocast, SDPA, random weights: ms per frame at
  window 16 and 128 (aggregator and heads apart), peak GB, 1000 frames' peak memory, token
  merging and the bf16 cache at window 128, and the ratio to the physical limit (dense FLOPs
  at 800 TFLOP/s). Skipped without CUDA; `--gpu --tiny` runs the same code on the CPU at a
  tiny size (a check that one GPU run will give every number).

Ratios are compared within one run; absolute CPU times depend on the machine and its load.

    python benchmarks/bench_geometry.py [--out benchmarks/results/geometry.json] [--quick] [--only long,points]
    python benchmarks/bench_geometry.py --gpu --out benchmarks/results/geometry_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL = dict(embed_dim=128, depth=4, num_heads=4, patch_embed="conv")
SMALL_HW = (112, 112)  # 8x8 patches, 69 tokens per frame
DEMO = dict(embed_dim=64, depth=4, num_heads=4, patch_embed="conv")  # config.yaml's random_init
DEMO_HW = (168, 224)  # the demo scene's frames
PEAK_TFLOPS = 800.0  # dense bf16 on an H100-class GPU, as the issue takes it


def _small_model(seed=0, arch=SMALL):
    from pipeline.geometry.model import GeometryConfig, random_model

    return random_model(GeometryConfig.small(**arch), seed).eval()


def _frames(n, hw, seed=0):
    """Frames made on demand, so a long stream does not hold its whole input in memory."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.rand(3, *hw, generator=g)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- cost vs frames
def child_cost(mode: str, n: int, window: int | None) -> dict:
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
        from pipeline.geometry.time_cache import TimeMask

        mask = TimeMask(causal=True, window=window)
        agg, cam = model.aggregator.new_cache(window), model.camera_head.new_cache(window)
        last = model.config.depth - 1
        needed = set(model.config.dpt_layers) | {last}
        times, cpu_times = [], []
        with torch.no_grad():
            for img in _frames(n, SMALL_HW):
                start, cpu = time.perf_counter(), time.process_time()
                tokens = model.aggregator(img[None, None], keep_layers=needed, mask=mask, cache=agg).layers
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


def _spawn(*args) -> dict:
    cmd = [sys.executable, __file__, "--child", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cost_vs_frames(counts, window) -> dict:
    rows = []
    for n in counts:
        for mode, w in (("stream", window), ("stream", None), ("offline", None)):
            row = _spawn("cost", mode, n, w or 0)
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


# ----------------------------------------------------------------------------- long streams
def child_long(n: int, window: int, every: int) -> dict:
    """A stream of `n` frames through the whole runner (heads included), RSS and cache sampled."""
    import torch

    torch.set_num_threads(1)
    from pipeline.geometry.runner import run_geometry

    model = _small_model()
    samples = []
    start = time.perf_counter()
    for out in run_geometry(model, _frames(n, SMALL_HW), mode="stream", cache_window=window):
        if (out.index + 1) % every == 0:
            samples.append({"frame": out.index + 1, "rss_mb": round(_rss_mb(), 1),
                            "s_per_frame": (time.perf_counter() - start) / every})
            start = time.perf_counter()
    after = [s["rss_mb"] for s in samples if s["frame"] > window + every]
    return {"frames": n, "window": window, "samples": samples,
            "rss_spread_after_window_mb": (max(after) - min(after)) if after else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_savings(frames: int, window: int, hw=SMALL_HW, ratios=(0.25, 0.5, 0.75)) -> dict:
    """Token merging and the bf16 cache against the plain stream on the same frames (tiny config, CPU)."""
    import torch

    torch.set_num_threads(1)
    from pipeline.geometry.runner import run_geometry

    model = _small_model()
    imgs = list(_frames(frames, hw, 3))

    def run(**kw):
        list(run_geometry(model, imgs[:4], mode="stream", cache_window=window, **kw))  # warm-up
        best, outs = None, None
        for _ in range(2):  # the faster of two runs resists load from other processes
            start = time.process_time()
            outs = list(run_geometry(model, imgs, mode="stream", cache_window=window, **kw))
            took = (time.process_time() - start) / frames
            best = took if best is None else min(best, took)
        return best, outs

    base_s, base = run()
    last = model.config.depth - 1
    scale = max(o.tokens[last].abs().max().item() for o in base)

    C = model.config.embed_dim

    def update(out, k):  # what layer k's global block added to its input: global half - frame half
        return out.tokens[k][:, C:] - out.tokens[k][:, :C]

    def compare(label, seconds, outs):
        tok = max((a.tokens[k] - b.tokens[k]).abs().max().item() for a, b in zip(base, outs) for k in a.tokens)
        rel = [((a.tokens[k] - b.tokens[k]).norm() / a.tokens[k].norm()).item() for a, b in zip(base, outs) for k in a.tokens]
        # random weights keep the residual stream dominant (LayerScale 0.01), so the change of the
        # global blocks' own contribution is the telling number
        upd = [((update(a, last) - update(b, last)).norm() / update(a, last).norm()).item() for a, b in zip(base, outs)]
        pose = max((a.pose_enc - b.pose_enc).abs().max().item() for a, b in zip(base, outs))
        depth = max(((a.depth - b.depth).abs() / a.depth).max().item() for a, b in zip(base, outs))
        row = {"label": label, "cpu_ms_per_frame": 1000 * seconds, "speedup": base_s / seconds,
               "token_max_abs_diff_rel_to_max": tok / scale, "token_rel_l2_mean": statistics.mean(rel),
               "token_rel_l2_max": max(rel), "global_update_rel_l2_mean": statistics.mean(upd),
               "global_update_rel_l2_max": max(upd), "pose_enc_max_abs_diff": pose, "depth_max_rel_diff": depth}
        print(f"  {label:<16} {row['cpu_ms_per_frame']:7.2f} ms/frame cpu  x{row['speedup']:.2f}  "
              f"token rel L2 {row['token_rel_l2_mean']:.2e} (max {row['token_rel_l2_max']:.2e})  "
              f"last global update rel L2 {row['global_update_rel_l2_mean']:.2e}  pose {pose:.2e}", flush=True)
        return row

    rows = [compare("plain", base_s, base)]
    for ratio in ratios:
        rows.append(compare(f"merge {ratio}", *run(merge_ratio=ratio)))
    rows.append(compare("bf16 cache", *run(cache_dtype="bfloat16")))
    return {"config": {**SMALL, "image_hw": list(hw), "frames": frames, "window": window, "threads": 1},
            "rows": rows}


def bench_long(n: int, window: int, every: int) -> dict:
    print(f"  {n} frames, window {window} (fresh process) ...", flush=True)
    flat = _spawn("long", n, window, every)
    for s in flat["samples"]:
        print(f"    frame {s['frame']:>5}: RSS {s['rss_mb']:8.1f} MB, {1000 * s['s_per_frame']:.1f} ms/frame", flush=True)
    print(f"  RSS spread after the window filled: {flat['rss_spread_after_window_mb']} MB", flush=True)
    return {"flat_memory": flat, "savings": bench_savings_both()}


def bench_savings_both() -> list[dict]:
    """At the tiny config (heads and linear layers dominate) and with 4x the tokens and twice the
    window (global attention dominates, as at full size)."""
    print("  tiny config, 112x112, window 32:", flush=True)
    small = bench_savings(frames=160, window=32)
    print("  tiny config, 224x224, window 64 (attention-bound):", flush=True)
    return [small, bench_savings(frames=96, window=64, hw=(224, 224))]


# ----------------------------------------------------------------------------- point maps
def _write_frames(path: Path, n: int, hw) -> Path:
    import numpy as np

    from pipeline import store

    group = store.create_group(path)
    rgb = store.frame_array(group, "rgb", (n, *hw, 3), "uint8")
    rng = np.random.default_rng(0)
    for t in range(n):
        rgb[t] = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    return path


def bench_points(repeats: int = 3) -> dict:
    """Share of the stage's time the point head adds: compute_geometry with and without points."""
    import torch

    torch.set_num_threads(1)
    from pipeline.geometry.stage import compute_geometry

    configs = {"demo": (DEMO, DEMO_HW, 24), "larger tiny": (dict(embed_dim=256, depth=8, num_heads=8, patch_embed="conv"),
                                                             (392, 518), 8)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, hw, n) in configs.items():
            frames = _write_frames(Path(tmp) / f"{name}.zarr", n, hw)
            times = {False: [], True: []}
            for r in range(repeats):  # interleaved, best of `repeats`, so load spikes hit both alike
                for points in (False, True):
                    out = Path(tmp) / f"out-{name}-{points}"
                    start = time.process_time()
                    compute_geometry(frames, out, random_init=0, architecture=arch, points=points, device="cpu")
                    times[points].append(time.process_time() - start)
                    shutil.rmtree(out)
            plain, with_points = min(times[False]), min(times[True])
            row = {"config": name, **arch, "image_hw": list(hw), "frames": n, "stage_cpu_s": plain,
                   "stage_with_points_cpu_s": with_points, "points_share": (with_points - plain) / plain}
            rows.append(row)
            print(f"  {name:<12} {hw[0]}x{hw[1]} x{n}: stage {plain:.2f} s cpu, with points {with_points:.2f} s "
                  f"(+{100 * row['points_share']:.1f}%)", flush=True)
    return {"rows": rows, "threshold": 0.15,
            "default_on": all(r["points_share"] <= 0.15 for r in rows)}


# ----------------------------------------------------------------------------- token storage
def _store_bytes(codec, tokens_per_layer, hw) -> int:
    """Bytes on disk per frame of 4 layers written with `codec` (+ the camera token array)."""
    import numpy as np

    from pipeline import store

    h, w = hw
    frames, C = len(tokens_per_layer[0]), tokens_per_layer[0][0].shape[-1]
    with tempfile.TemporaryDirectory() as tmp:
        group = store.create_group(Path(tmp) / "tokens.zarr")
        group.attrs["token_codec"] = codec.to_attrs()
        cam = store.frame_array(group, "camera", (frames, C), "float32")
        for i, per_frame in enumerate(tokens_per_layer):
            layer = codec.create(group, i, frames, h, w, C)
            for t, x in enumerate(per_frame):
                layer[t] = x
                cam[t] = np.zeros(C, np.float32) + float(x[0, 0, 0])
        return sum(f.stat().st_size for f in (Path(tmp) / "tokens.zarr").rglob("*") if f.is_file()) // frames


def _full_size_tokens(hw, frames: int):
    """Tokens of layers 4/11/17/23 from the full-size model with random weights (minutes on CPU)."""
    import torch

    from pipeline.geometry.model import GeometryConfig, random_model
    from pipeline.geometry.runner import run_geometry

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    model = random_model(GeometryConfig(), 0).eval()
    print(f"    built the full-size model in {time.perf_counter() - start:.0f} s", flush=True)
    layers = [[], [], [], []]
    start = time.perf_counter()
    for out in run_geometry(model, _frames(frames, hw, 5), mode="stream", cache_window=None):
        for j, k in enumerate((4, 11, 17, 23)):
            layers[j].append(out.tokens[k][5:].reshape(hw[0] // 14, hw[1] // 14, -1).numpy())
    print(f"    {frames} frame(s) at {hw[0]}x{hw[1]} in {time.perf_counter() - start:.0f} s", flush=True)
    del model
    return layers


def _decoder_difference(layers, hw) -> dict:
    """A full-size random decoder's output on decoded tokens of each dtype vs float16 tokens."""
    import numpy as np
    import torch

    from pipeline.sbd.model import SemanticBridgingDecoder
    from pipeline.tokenstore import TokenCodec

    torch.manual_seed(0)
    decoder = SemanticBridgingDecoder(dim_in=layers[0][0].shape[-1], video_dim=6).eval()
    out = {}
    ref = None
    for dtype in ("float16", "int8", "int4"):
        codec = TokenCodec.for_dtype(dtype, layers[0][0].shape[-1])
        decoded = [torch.from_numpy(codec.decode(*codec.encode(per[0])[:2]).astype(np.float32))[None] for per in layers]
        with torch.inference_mode():
            pred = decoder(decoded, hw)
        lang = pred["lang"].float()
        if ref is None:
            ref = lang
        rms = ref.pow(2).mean().sqrt().item()
        out[dtype] = {"lang_max_abs_diff": (lang - ref).abs().max().item(),
                      "lang_rms_diff_rel": ((lang - ref).pow(2).mean().sqrt() / rms).item()}
    return out


def bench_token_bytes(hw=(532, 952), full_size: bool = False) -> dict:
    """tokens.zarr bytes per frame at upstream's frame size per token dtype, with the quantisation error."""
    import numpy as np

    from pipeline.tokenstore import TokenCodec

    h, w = hw[0] // 14, hw[1] // 14
    C2 = 2048
    P = 5 + h * w
    upstream = 24 * P * C2 * 4  # 24 layers, all tokens, fp32 (np.save of the token list)
    rng = np.random.default_rng(0)
    sources = {"gaussian": [[rng.standard_normal((h, w, C2), dtype=np.float32) for _ in range(2)] for _ in range(4)]}
    if full_size:
        sources["full-size random weights"] = _full_size_tokens(hw, frames=1)
    result = {"image_hw": list(hw), "grid": [h, w], "tokens_per_frame": P, "upstream_mb": upstream / 1e6,
              "float16_uncompressed_mb": (4 * h * w * C2 * 2 + C2 * 4) / 1e6, "sources": {}}
    for name, layers in sources.items():
        rows = {}
        for dtype in ("float16", "int8", "int4"):
            codec = TokenCodec.for_dtype(dtype, C2)
            size = _store_bytes(codec, layers, (h, w))
            errors = []
            for per in layers:
                x = per[0]
                d = codec.decode(*codec.encode(x)[:2]).astype(np.float32)
                errors.append(float(np.linalg.norm(d - x) / np.linalg.norm(x)))
            rows[dtype] = {"mb_per_frame": size / 1e6, "ratio_to_upstream": upstream / size,
                           "token_rel_l2_error": max(errors)}
            print(f"  {name:<26} {dtype:<8} {size / 1e6:6.2f} MB/frame (upstream/{upstream / size:.0f}), "
                  f"token rel L2 error {max(errors):.2e}", flush=True)
        if name != "gaussian":
            rows["decoder_output_difference"] = _decoder_difference(layers, hw)
            print(f"  decoder output vs float16 tokens: {json.dumps(rows['decoder_output_difference'])}", flush=True)
        result["sources"][name] = rows
    return result


# ----------------------------------------------------------------------------- demo per dtype
def _demo_metrics(workdir: Path) -> dict:
    import pandas as pd

    table = pd.read_parquet(workdir / "results" / "reports" / "metrics.parquet")
    table = table[table["aggregation"] == "query_mean"]
    out = {}
    for task, metric, variant in (("time_agnostic", "mIoU", None), ("time_agnostic", "mAcc", None),
                                  ("time_sensitive", "Acc", "video"), ("time_sensitive", "vIoU", "video"),
                                  ("time_sensitive", "Acc", "clip"), ("time_sensitive", "vIoU", "clip")):
        rows = table[(table["task"] == task) & (table["metric"] == metric)]
        if variant is not None:
            rows = rows[rows["variant"] == variant]
        out[f"{metric}" + (f" ({variant})" if variant else "")] = round(100 * float(rows["value"].mean()), 2)
    return out


def bench_demo_dtypes(dtypes=("float16", "int8", "int4")) -> dict:
    """The whole demo DAG per token dtype (same seed, same machine), in temp copies of the workflow."""
    import numpy as np
    import yaml

    from pipeline import store
    from pipeline.sbd.render import render_sbd

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    base = Path(tempfile.mkdtemp(prefix="bench-demo-dtypes-"))
    runs = {}
    for dtype in dtypes:
        work = base / dtype
        work.mkdir()
        for name in ("Snakefile", "config.yaml", "rules", "workflow", "envs"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
        cfg = yaml.safe_load((work / "config.yaml").read_text())
        cfg["geometry"]["token_dtype"] = dtype
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        start = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--resources", "gpu=0"],
                              cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"demo run with token_dtype {dtype} failed:\n{proc.stderr[-3000:]}")
        scene = work / "results" / "demo" / "demo"
        tokens = scene / "tokens.zarr"
        frames = store.open_group(tokens)["camera"].shape[0]
        size = sum(f.stat().st_size for f in tokens.rglob("*") if f.is_file() and "camera" not in f.parts)
        runs[dtype] = {"wall_s": round(time.perf_counter() - start, 1), "metrics": _demo_metrics(work),
                       "token_bytes_per_frame": size / frames}
        print(f"  {dtype:<8} {runs[dtype]['wall_s']:6.0f} s  {size / frames / 1e3:7.1f} kB/frame  "
              f"{runs[dtype]['metrics']}", flush=True)
    # the float16-trained decoder on each run's (quantised) tokens, against its float16 output
    ref_dir = base / "float16" / "results" / "demo" / "demo"
    ckpt = ref_dir / "sbd.safetensors"
    renders = {}
    for dtype in dtypes:
        out = base / f"render-{dtype}.zarr"
        render_sbd(base / dtype / "results" / "demo" / "demo" / "tokens.zarr", ckpt, out, device="cpu", progress=False)
        group = store.open_group(out)
        renders[dtype] = {k: np.asarray(group[k][:], np.float32) for k in ("lang_s", "lang_m", "lang_l", "video")}
    for dtype in dtypes:
        diffs = {k: float(np.abs(renders[dtype][k] - renders["float16"][k]).max()) for k in renders[dtype]}
        runs[dtype]["fp16_decoder_max_abs_diff"] = diffs
    shutil.rmtree(base, ignore_errors=True)
    return {"runs": runs}


# ----------------------------------------------------------------------------- GPU
def aggregator_flops(config, tokens_per_frame: int, keys_frames: int) -> float:
    """Dense FLOPs of the aggregator (patch embed, frame and global blocks) for one frame.

    Linear layers 24 C^2 per token per block (qkv, proj, MLP 4x), attention 4 N K C;
    global attention sees `keys_frames` frames of keys (the window plus the frame itself).
    """
    C, P = config.embed_dim, tokens_per_frame
    patches = P - 1 - config.num_register_tokens
    linear = 2 * 12 * C * C
    embed = 2 * 3 * config.patch_size**2 * C * patches
    if config.patch_embed == "dinov2":
        embed += config.patch_embed_depth * (P * linear + 4 * P * P * C)
    frame = config.depth * (P * linear + 4 * P * P * C)
    glob = config.depth * (P * linear + 4 * P * (keys_frames * P) * C)
    return float(embed + frame + glob)


def _timed_stream(model, n: int, hw, window, device, *, merge_ratio=0.0, cache_dtype=None, sample_every=0):
    """Per-frame aggregator and heads time (synchronised), peak memory, for an `n`-frame stream."""
    import torch

    from pipeline.geometry.time_cache import TimeMask
    from pipeline.geometry.runner import DTYPES

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mask = TimeMask(causal=True, window=window)
    agg = model.aggregator.new_cache(window, dtype=cache_dtype and DTYPES[cache_dtype], merge_ratio=merge_ratio)
    cam = model.camera_head.new_cache(window)
    last = model.config.depth - 1
    needed = set(model.config.dpt_layers) | {last}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device=device).manual_seed(0)
    agg_ms, head_ms, memory = [], [], []
    with torch.no_grad():
        for t in range(n):
            img = torch.rand(1, 1, 3, *hw, generator=gen, device=device)
            sync()
            a = time.perf_counter()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                tokens = model.aggregator(img, keep_layers=needed, mask=mask, cache=agg).layers
            sync()
            b = time.perf_counter()
            tokens = {k: v.float() for k, v in tokens.items()}
            with torch.autocast(device_type=device.type, enabled=False):
                model.camera_head(tokens[last][:, :, 0], mask=mask, cache=cam)
                model.depth_head(tokens, hw, model.patch_start)
            sync()
            c = time.perf_counter()
            agg_ms.append(1000 * (b - a))
            head_ms.append(1000 * (c - b))
            if sample_every and (t + 1) % sample_every == 0:
                memory.append({"frame": t + 1, "allocated_gb": torch.cuda.memory_allocated() / 1e9 if cuda else None,
                               "cache_gb": agg.nbytes() / 1e9})
    steady = slice(-min(32, max(1, n - (window or 0))), None)
    return {
        "frames": n, "window": window, "merge_ratio": merge_ratio, "cache_dtype": cache_dtype,
        "aggregator_ms": statistics.median(agg_ms[steady]), "heads_ms": statistics.median(head_ms[steady]),
        "ms_per_frame": statistics.median([x + y for x, y in zip(agg_ms[steady], head_ms[steady])]),
        "first_frame_ms": agg_ms[0] + head_ms[0],
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "cache_gb": agg.nbytes() / 1e9, "memory_samples": memory,
    }


def bench_gpu(tiny: bool = False) -> dict:
    """Full size at 518x392 on CUDA (or the same code at a tiny size on the CPU with `tiny`)."""
    import torch

    if not tiny and not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine (numbers not measured)"}
    from pipeline.geometry.model import GeometryConfig, random_model

    torch.backends.cuda.matmul.allow_tf32 = True
    if tiny:
        config, hw, windows, long_frames, device = GeometryConfig.small(**SMALL), SMALL_HW, (2, 4), 12, torch.device("cpu")
    else:
        config, hw, windows, long_frames, device = GeometryConfig(), (392, 518), (16, 128), 1000, torch.device("cuda")
    start = time.perf_counter()
    model = random_model(config, 0).to(device).eval()
    built = time.perf_counter() - start
    P = 1 + config.num_register_tokens + (hw[0] // 14) * (hw[1] // 14)
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (tiny dry run)",
              "torch": torch.__version__, "image_hw": list(hw), "tokens_per_frame": P, "dtype": "bfloat16 autocast",
              "attention": "torch SDPA", "build_s": built, "peak_tflops_assumed": PEAK_TFLOPS, "runs": []}
    _timed_stream(model, 3, hw, windows[0], device)  # warm-up: kernels, allocator
    for window in windows:
        row = _timed_stream(model, window + 32, hw, window, device)
        limit_ms = 1000 * aggregator_flops(config, P, window + 1) / (PEAK_TFLOPS * 1e12)
        row.update(aggregator_limit_ms=limit_ms, aggregator_ratio_to_limit=row["aggregator_ms"] / limit_ms,
                   total_ratio_to_limit=row["ms_per_frame"] / limit_ms)
        result["runs"].append(row)
        print(f"  window {window:>4}: {row['ms_per_frame']:.1f} ms/frame (aggregator {row['aggregator_ms']:.1f}, "
              f"heads {row['heads_ms']:.1f}), limit {limit_ms:.1f} ms -> x{row['aggregator_ratio_to_limit']:.2f}, "
              f"peak {row['peak_gb']} GB", flush=True)
    big = windows[-1]
    for extra in ({"merge_ratio": 0.5}, {"cache_dtype": "bfloat16"}):
        row = _timed_stream(model, big + 32, hw, big, device, **extra)
        result["runs"].append(row)
        print(f"  window {big} {extra}: {row['ms_per_frame']:.1f} ms/frame, cache {row['cache_gb']:.2f} GB, "
              f"peak {row['peak_gb']} GB", flush=True)
    long = _timed_stream(model, long_frames, hw, big, device, sample_every=max(1, long_frames // 10))
    result["long_stream"] = long
    print(f"  {long_frames} frames at window {big}: peak {long['peak_gb']} GB, "
          f"{long['ms_per_frame']:.1f} ms/frame at the end", flush=True)
    return result


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "geometry.json"))
    parser.add_argument("--quick", action="store_true", help="fewer frames (cost: 8, 32, 64 at window 16; long: 1000)")
    parser.add_argument("--only", default="cost,long,points,tokens",
                        help="comma-separated sections: cost, long (includes savings), savings, points, tokens, demo")
    parser.add_argument("--full-size-tokens", action="store_true",
                        help="tokens: also measure tokens of the full-size random-weight model (minutes, ~8 GB RAM)")
    parser.add_argument("--gpu", action="store_true", help="only the GPU section (skips cleanly without CUDA)")
    parser.add_argument("--tiny", action="store_true", help="with --gpu: run the GPU section's code on the CPU, tiny")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "cost":
            print(json.dumps(child_cost(rest[0], int(rest[1]), int(rest[2]) or None)))
        else:
            print(json.dumps(child_long(*map(int, rest))))
        return
    result = {"machine": machine()}
    sections = ["gpu"] if args.gpu else [s.strip() for s in args.only.split(",") if s.strip()]
    for section in sections:
        print(f"== {section}", flush=True)
        if section == "cost":
            counts, window = ((8, 32, 64), 16) if args.quick else ((8, 32, 128, 256), 32)
            result["cost_vs_frames"] = bench_cost_vs_frames(counts, window)
            print(json.dumps(result["cost_vs_frames"]["after_window_full"]))
        elif section == "long":
            result["long"] = bench_long(1000 if args.quick else 4000, 32, 250)
        elif section == "savings":
            result["savings"] = bench_savings_both()
        elif section == "points":
            result["points"] = bench_points()
        elif section == "tokens":
            result["token_bytes"] = bench_token_bytes(full_size=args.full_size_tokens)
        elif section == "demo":
            result["demo_token_dtypes"] = bench_demo_dtypes()
        elif section == "gpu":
            result["gpu"] = bench_gpu(tiny=args.tiny)
            print(json.dumps({k: v for k, v in result["gpu"].items() if k != "runs"}, default=str)[:2000])
        else:
            raise SystemExit(f"unknown section {section!r}")
    write_result(args.out, result, echo=False)


if __name__ == "__main__":
    main()
