"""Decoder training throughput and tokens.zarr loader throughput, measured in one run.

- train: samples (frames) per second of full training steps (forward, losses, backward, AdamW)
  at a tiny config on CPU, on a synthetic demo-sized scene (default 24 frames of 168x224);
  the upstream-size decoder on CUDA when a GPU is present (skipped, and said so, otherwise).
- loader: frames per second reading tokens from tokens.zarr (4 layers, one-frame chunks, zstd),
  at the demo grid and at the full StreamVGGT grid (38x68 patches x 2048, fp16), plus the
  per-frame target building (masks -> latents), compared with the training step time.

    PYTHONPATH=. python benchmarks/bench_sbd.py [--out benchmarks/results/sbd.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from pipeline import store  # noqa: E402
from pipeline.sbd.data import SceneData, TokenReader  # noqa: E402
from pipeline.sbd.model import SemanticBridgingDecoder  # noqa: E402
from pipeline.sbd.train import TrainSettings, sbd_losses, train_sbd  # noqa: E402
from pipeline.tokenstore import layer_array_name  # noqa: E402
from sbd_synthetic import make_scene  # noqa: E402

from _common import machine, write_result


def bench_train_cpu(root: Path, args) -> dict:
    src = make_scene(root / "demo", frames=args.frames, frame_hw=(168, 224), crop=(0, 0, 168, 224), dim_in=args.dim_in)
    settings = TrainSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, warmup_epochs=1,
        features=args.features, hidden_dim=args.hidden_dim, out_channels=tuple(args.out_channels), video_hidden_dim=args.hidden_dim,
    )  # fmt: skip
    t0 = time.perf_counter()
    summary = train_sbd([src], root / "demo" / "sbd.safetensors", settings=settings, save_every=args.epochs, device="cpu", progress=False)
    wall = time.perf_counter() - t0
    import pandas as pd

    log = pd.read_parquet(root / "demo" / "train_log.parquet")
    steps_s = np.diff(np.concatenate([[0.0], log["seconds"].to_numpy()]))
    samples = args.frames * args.epochs
    train_seconds = float(log["seconds"].iloc[-1])
    return {
        "config": {"frames": args.frames, "frame_size": [168, 224], "grid": [12, 16], "dim_in": args.dim_in,
                   "features": args.features, "hidden_dim": args.hidden_dim, "out_channels": args.out_channels,
                   "video_dim": 6, "batch_size": args.batch_size, "epochs": args.epochs, "threads": torch.get_num_threads()},
        "samples_per_s": samples / train_seconds,
        "step_s_median": float(np.median(steps_s[1:])) if len(steps_s) > 1 else float(steps_s[0]),
        "train_seconds": train_seconds,
        "wall_seconds_incl_setup_and_outputs": wall,
        "first_loss": summary["first_loss"],
        "final_loss": summary["final_loss"],
    }  # fmt: skip


def bench_train_gpu() -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device in this environment"}
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = SemanticBridgingDecoder().to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    B, gh, gw, out = 8, 38, 68, (536, 960)
    tokens = [torch.randn(B, gh, gw, 2048, device=dev) for _ in range(4)]
    batch = {
        "lang": torch.randn(B, 3, 3, *out, device=dev),
        "lang_valid": torch.rand(B, 3, *out, device=dev) > 0.3,
        "rgb": torch.rand(B, 3, *out, device=dev),
    }
    settings = TrainSettings()
    times = []
    for i in range(8):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16):
            pred = model(tokens, out)
        loss = sbd_losses(pred, batch, settings)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    step = float(np.median(times))
    return {"device": torch.cuda.get_device_name(0), "batch": B, "grid": [gh, gw], "out": list(out), "amp": "fp16",
            "step_s_median": step, "samples_per_s": B / step, "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip


def _write_tokens(path: Path, frames: int, grid: tuple[int, int], dim: int) -> None:
    rng = np.random.default_rng(0)
    g = store.create_group(path)
    for k in (4, 11, 17, 23):
        arr = store.frame_array(g, layer_array_name(k), (frames, *grid, dim), "float16")
        for t in range(frames):
            arr[t] = rng.standard_normal((*grid, dim), dtype=np.float32).astype(np.float16)
    g.attrs.update({"layers": [4, 11, 17, 23], "patch_size": 14, "image_size": [grid[0] * 14, grid[1] * 14]})


def bench_loader(root: Path, frames: int, grid: tuple[int, int], dim: int, batch: int) -> dict:
    path = root / f"tokens_{grid[0]}x{grid[1]}x{dim}.zarr"
    _write_tokens(path, frames, grid, dim)
    reader = TokenReader(path)
    t = time.perf_counter()
    n = 0
    order = np.random.default_rng(1).permutation(frames)
    for i in range(0, frames, batch):
        layers = reader.read(order[i : i + batch].tolist())
        n += layers[0].shape[0]
    dt = time.perf_counter() - t
    mb = sum(a.nbytes for a in reader.arrays) / frames / 2**20
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / frames / 2**20
    return {"grid": list(grid), "dim": dim, "frames": frames, "frames_per_s": n / dt, "mb_per_frame_fp16": mb, "mb_per_frame_on_disk": disk}


def bench_targets(root: Path) -> dict:
    scene = SceneData(make_scene(root / "targets", frames=8, frame_hw=(536, 960), crop=(2, 4, 532, 952), dim_in=16), cache=False)
    t = time.perf_counter()
    for f in range(8):
        scene.targets(f)
    dt = time.perf_counter() - t
    return {"frame_size": [536, 960], "frames_per_s": 8 / dt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sbd.json"))
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dim-in", type=int, default=128)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden-dim", type=int, default=8)
    p.add_argument("--out-channels", type=int, nargs=4, default=[16, 32, 64, 64])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full-frames", type=int, default=6, help="frames in the full-size tokens.zarr loader test")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = bench_train_cpu(root, args)
        loader_demo = bench_loader(root, args.frames, (12, 16), args.dim_in, args.batch_size)
        loader_full = bench_loader(root, args.full_frames, (38, 68), 2048, 2)
        targets = bench_targets(root)
        gpu = bench_train_gpu()
    result = {
        "machine": machine(),
        "train_cpu_tiny": train,
        "train_gpu_full": gpu,
        "loader_tokens_demo_grid": loader_demo,
        "loader_tokens_full_grid": loader_full,
        "targets_full_frame": targets,
        "ratios": {
            "demo_loader_frames_per_s_over_train_samples_per_s": loader_demo["frames_per_s"] / train["samples_per_s"],
            "full_loader_frames_per_s_over_train_samples_per_s_cpu_tiny": loader_full["frames_per_s"] / train["samples_per_s"],
        },
    }
    if "samples_per_s" in gpu:
        result["ratios"]["full_loader_frames_per_s_over_gpu_samples_per_s"] = loader_full["frames_per_s"] / gpu["samples_per_s"]
    write_result(args.out, result)


if __name__ == "__main__":
    main()
