"""Radiance-field (VGGT-NeRF) throughput: rays per second training and rendering, peak memory,
and the time to render one 536x960 frame (HyperNeRF 2x).

- cpu: the demo's configuration (config.yaml `nerf`) at the demo size (168x224, 12x16 tokens of
  the demo's 128-d geometry model), one thread unless --threads.
- gpu (--gpu): the upstream configuration (128 planes and samples, 6x128 MLP, 2048-d tokens on a
  37x46 grid) at 512x640 with bfloat16 autocast, and one 536x960 frame; skipped, and said so in the
  JSON, when no CUDA device is present.
Inputs are synthetic (random tokens and images, cameras on a small arc): throughput does not
depend on the content.

    PYTHONPATH=. python benchmarks/bench_nerf.py [--gpu] [--out benchmarks/results/nerf.json]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.nerf.cameras import camera_rays, pixel_grid  # noqa: E402
from pipeline.nerf.model import GeneralizableNerf, NerfConfig, Views  # noqa: E402
from pipeline.nerf.render import render_view  # noqa: E402

from _common import machine, write_result


def demo_config() -> NerfConfig:
    import yaml

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["nerf"]
    keys = {k: cfg[k] for k in NerfConfig().to_dict() if k in cfg}
    if "cnn_channels" in keys:
        keys["cnn_channels"] = tuple(keys["cnn_channels"])
    return NerfConfig(dim_in=128, **keys)


def synthetic_views(config: NerfConfig, hw, grid, device, seed=0) -> tuple[Views, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    V, (H, W) = config.num_sources + 1, hw
    images = torch.rand(V, 3, H, W, generator=g)
    tokens = torch.randn(V, grid[0], grid[1], config.dim_in, generator=g)
    K = torch.tensor([[0.9 * W, 0.0, W / 2], [0.0, 0.9 * W, H / 2], [0.0, 0.0, 1.0]]).expand(V, 3, 3)
    extr = []
    for i in range(V):
        a = 0.05 * (i - V / 2)
        R = torch.tensor([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]], dtype=torch.float32)
        extr.append(torch.cat([R, torch.tensor([[0.0], [0.0], [2.5]])], 1))
    E = torch.stack(extr)
    views = Views(images[1:].to(device), tokens[1:].to(device), K[1:].contiguous().to(device), E[1:].to(device), 1.0, 4.5)
    return views, K[0].to(device), E[0].to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(config: NerfConfig, hw, grid, device, *, rays: int, steps: int, amp: bool) -> dict:
    torch.manual_seed(0)
    model = GeneralizableNerf(config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    views, K, E = synthetic_views(config, hw, grid, device)
    target = torch.rand(rays, 3, device=device)
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        idx = torch.randint(0, hw[0] * hw[1], (rays,), generator=g)
        origins, dirs = camera_rays(K, E, pixel_grid(*hw)[idx].to(device))
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(views, origins, dirs, perturb=g)
        loss = ((out["rgb"].float() - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {"rays_per_step": rays, "steps": steps, "step_s_median": step_s, "rays_per_s": rays / step_s}


def bench_render(config: NerfConfig, hw, grid, device, *, amp: bool, chunk: int, repeats: int = 2) -> dict:
    model = GeneralizableNerf(config).to(device).eval()
    views, K, E = synthetic_views(config, hw, grid, device)
    render_view(model, views, K, E, *hw, chunk=chunk, amp=amp)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        render_view(model, views, K, E, *hw, chunk=chunk, amp=amp)
        _sync(device)
        times.append(time.perf_counter() - t0)
    frame_s = float(min(times))
    return {"size": list(hw), "frame_s": frame_s, "rays_per_s": hw[0] * hw[1] / frame_s, "chunk": chunk}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_section(args) -> dict:
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    config = demo_config()
    demo_hw, demo_grid = (168, 224), (12, 16)
    train = bench_train(config, demo_hw, demo_grid, dev, rays=args.rays, steps=args.steps, amp=False)
    render = bench_render(config, demo_hw, demo_grid, dev, amp=False, chunk=8192)
    big = bench_render(config, (536, 960), (38, 68), dev, amp=False, chunk=8192, repeats=1)
    return {"config": {**config.to_dict(), "threads": args.threads, "size": list(demo_hw), "token_grid": list(demo_grid)},
            "train": train, "render": render, "render_536x960": big, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def gpu_section(args) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    dev = torch.device("cuda")
    config = NerfConfig()  # upstream sizes
    hw, grid = (512, 640), (37, 46)  # VGGT-NeRF resizes 512x640 to 518x644 for the tokens
    torch.cuda.reset_peak_memory_stats()
    train = bench_train(config, hw, grid, dev, rays=1024, steps=args.steps, amp=True)
    train["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    render = bench_render(config, hw, grid, dev, amp=True, chunk=32768)
    render["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    big = bench_render(config, (536, 960), (38, 68), dev, amp=True, chunk=32768, repeats=1)
    return {"device": torch.cuda.get_device_name(0), "config": {**config.to_dict(), "size": list(hw), "token_grid": list(grid),
            "amp": "bfloat16"}, "train": train, "render": render, "render_536x960": big}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "nerf.json"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rays", type=int, default=512, help="rays per training step on CPU (the demo's)")
    p.add_argument("--gpu", action="store_true", help="also the upstream configuration at 512x640 on CUDA")
    args = p.parse_args()
    result = {"machine": machine(),
              "cpu_demo": cpu_section(args)}  # fmt: skip
    if args.gpu:
        result["gpu_512x640"] = gpu_section(args)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
