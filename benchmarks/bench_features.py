"""Masks per second of the clip-features stage.

CPU: the tiny open_clip config of the tests (random weights saved as safetensors and loaded
through the stage's real local-file path), on a synthetic scene; batch sizes compared within
one run, plus the crop recipe alone (no model) to show where the time goes.
GPU (when CUDA is present): ViT-B-16 at upstream's fp16 with random weights; skipped otherwise.

    python benchmarks/bench_features.py [--out benchmarks/results/features.json] [--frames 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def synthetic_scene(root: Path, frames: int, height: int, width: int, grid: int) -> tuple[Path, Path, int]:
    """frames.zarr + masks.zarr with grid x grid rectangles per level (coarser grids on higher levels)."""
    from pipeline.store import create_group, frame_array

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    masks = np.full((4, frames, height, width), -1, np.int32)
    for level, g in enumerate([grid, grid, max(1, grid // 2), max(1, grid // 4)]):
        ys = np.minimum(np.arange(height) * g // height, g - 1)
        xs = np.minimum(np.arange(width) * g // width, g - 1)
        ids = ys[:, None] * g + xs[None, :]
        ids[:: max(2, height // 10), :] = -1  # some background
        masks[level, :] = ids
    fz = root / "frames.zarr"
    g = create_group(fz)
    frame_array(g, "rgb", rgb.shape, "uint8")[...] = rgb
    mz = root / "masks.zarr"
    g = create_group(mz)
    frame_array(g, "masks", masks.shape, "int32", frame_axis=1, fill_value=-1)[...] = masks
    g.attrs["levels"] = ["default", "s", "m", "l"]
    total = sum(len(np.unique(masks[l, t][masks[l, t] >= 0])) for l in range(4) for t in range(frames))
    return fz, mz, total


def random_checkpoint(root: Path, model_name: str, config: dict | None) -> tuple[str, Path]:
    import open_clip
    import torch
    from safetensors.torch import save_file

    if config is not None:
        cfg = root / f"{model_name}.json"
        cfg.write_text(json.dumps(config))
        open_clip.add_model_config(str(cfg))
        model_arg = str(cfg)
    else:
        model_arg = model_name
    torch.manual_seed(0)
    model = open_clip.create_model(model_name)
    ckpt = root / f"{model_name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return model_arg, ckpt


def time_stage(fz, mz, out, model_arg, ckpt, batch_size, device, masks_total, repeats=1):
    from pipeline.features.clip_stage import clip_features

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        summary = clip_features(fz, mz, out, model=model_arg, checkpoint=ckpt, batch_size=batch_size,
                                device=device, progress=False)
        best = min(best, time.perf_counter() - start)
    assert summary["masks_encoded"] == masks_total
    return {"batch_size": batch_size, "device": device, "seconds": round(best, 3),
            "masks_per_s": round(masks_total / best, 1)}


def time_crops(fz, mz, size):
    import zarr

    from pipeline.features.clip_stage import mask_boxes, mask_crop

    frames = zarr.open_group(str(fz), mode="r")["rgb"][...]
    masks = zarr.open_group(str(mz), mode="r")["masks"][...]
    n, start = 0, time.perf_counter()
    for t in range(masks.shape[1]):
        for level in range(4):
            m = masks[level, t]
            for obj, (y0, x0, y1, x1) in mask_boxes(m).items():  # as the stage does it
                mask_crop(frames[t][y0 : y1 + 1, x0 : x1 + 1], m[y0 : y1 + 1, x0 : x1 + 1] == obj,
                          (0, 0, y1 - y0, x1 - x0), size)
                n += 1
    seconds = time.perf_counter() - start
    return {"crop_size": size, "seconds": round(seconds, 3), "masks_per_s": round(n / seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/features.json")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--grid", type=int, default=6, help="masks per side on the finest level")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result: dict = {"benchmark": "clip-features masks/s", "torch_threads": args.threads,
                    "scene": {"frames": args.frames, "height": args.height, "width": args.width, "grid": args.grid}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fz, mz, total = synthetic_scene(root, args.frames, args.height, args.width, args.grid)
        result["scene"]["masks"] = total
        model_arg, ckpt = random_checkpoint(root, "tiny-clip-bench", TINY_CLIP)
        time_stage(fz, mz, root / "warm.zarr", model_arg, ckpt, 16, "cpu", total)  # warm-up (imports, caches)
        cpu = [time_stage(fz, mz, root / f"cpu{b}.zarr", model_arg, ckpt, b, "cpu", total, repeats=2) for b in (1, 16, 64)]
        result["cpu_tiny"] = {"model": "tiny test config (embed 32, 32 px, 1 layer)", "runs": cpu,
                              "ratio_batch64_vs_batch1": round(cpu[2]["masks_per_s"] / cpu[0]["masks_per_s"], 2)}
        result["crop_recipe_only"] = [time_crops(fz, mz, 32), time_crops(fz, mz, 224)]
        if torch.cuda.is_available():
            model_arg, ckpt = random_checkpoint(root, "ViT-B-16", None)
            time_stage(fz, mz, root / "gwarm.zarr", model_arg, ckpt, 64, "cuda", total)
            gpu = [time_stage(fz, mz, root / f"gpu{b}.zarr", model_arg, ckpt, b, "cuda", total, repeats=2) for b in (16, 64, 256)]
            result["gpu_vit_b_16"] = {"model": "ViT-B-16 fp16, random weights", "device_name": torch.cuda.get_device_name(),
                                      "runs": gpu}
        else:
            result["gpu_vit_b_16"] = {"skipped": "no CUDA device on this machine"}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
