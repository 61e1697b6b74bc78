"""Cost of the time-agnostic evaluation of one frame at HyperNeRF resolution, on CPU (and GPU if any).

Measures, for one frame of H x W with three levels and P positives:
- decode + cosines with an upstream-sized CLIP decoder (3 -> 16 32 64 128 256 512, random weights),
- relevancy (softmax against the hardest of four negatives),
- the 29x29 smoothing: our integral-image box filter vs torch's AvgPool2d (ratio in one run),
- the whole per-prompt mask chain (smoothing, stretch, threshold, 7x7 majority, IoU).
Writes JSON to --out (default benchmarks/results/evaluate.json). GPU timings are skipped, and
the JSON says so, when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.evaluate.encoders import decoded_cosines
from pipeline.evaluate.protocol import Protocol
from pipeline.evaluate.relevancy import _avg_pool, _avg_pool_reference, iou, masks_for_level, relevancy_from_cosines

from _common import machine, write_result


def upstream_decoder(dims=(16, 32, 64, 128, 256, 512), latent=3) -> torch.nn.Module:
    layers, d = [], latent
    for i, w in enumerate(dims):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(d, w))
        d = w
    return torch.nn.Sequential(*layers).eval()


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def bench(device: str, H: int, W: int, prompts: int, repeat: int) -> dict:
    g = torch.Generator().manual_seed(0)
    dec = upstream_decoder().to(device)
    text = torch.nn.functional.normalize(torch.randn(prompts + 4, 512, generator=g), dim=-1).to(device)
    lat = torch.nn.functional.normalize(torch.randn(H * W, 3, generator=g), dim=-1).to(device)

    def decode(z):
        with torch.no_grad():
            return dec(z)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    out = {}

    def decode_level():
        decoded_cosines(decode, lat, text)
        sync()

    out["decode_cosines_per_level_s"] = timed(decode_level, repeat)
    cos = decoded_cosines(decode, lat, text)
    out["relevancy_per_level_s"] = timed(lambda: relevancy_from_cosines(cos[:, :prompts], cos[:, prompts:]), repeat)
    rel = relevancy_from_cosines(cos[:, :prompts], cos[:, prompts:])[:, 0].reshape(H, W).cpu()
    out["box_filter_integral_s"] = timed(lambda: _avg_pool(rel, 29), repeat)
    out["box_filter_torch_avgpool_s"] = timed(lambda: _avg_pool_reference(rel, 29), max(1, repeat // 2))
    out["box_filter_speedup"] = out["box_filter_torch_avgpool_s"] / out["box_filter_integral_s"]
    gt = rel > rel.median()
    p = Protocol()
    out["mask_chain_per_prompt_level_s"] = timed(lambda: iou(masks_for_level(rel, p).post.numpy(), gt.numpy()), repeat)
    out["frame_estimate_s"] = 3 * (out["decode_cosines_per_level_s"] + out["relevancy_per_level_s"]) + \
        3 * prompts * out["mask_chain_per_prompt_level_s"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=960)
    ap.add_argument("--width", type=int, default=536)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/evaluate.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"height": args.height, "width": args.width, "prompts": args.prompts, "threads": args.threads,
              "machine": machine(),
              "cpu": bench("cpu", args.height, args.width, args.prompts, args.repeat)}
    if torch.cuda.is_available():
        result["cuda"] = bench("cuda", args.height, args.width, args.prompts, args.repeat)
        result["cuda_device"] = torch.cuda.get_device_name(0)
    else:
        result["cuda"] = "skipped: no CUDA device"
    write_result(args.out, result)


if __name__ == "__main__":
    main()
