"""Frames per second of the segment stage.

CPU: the sam2 backend at the test config (tiny SAM 2.1, random weights, 3x3 points, relaxed
thresholds, 64x96 frames, detection every 2nd frame), with the gt backend on the same frames
as a reference within the same run.
GPU (skipped without CUDA): tiny and base-plus at SAM 2's native 1024 input on 576x1024
frames, upstream settings (32 points per side, working size 1024), random weights.

    python benchmarks/bench_segment.py [--out benchmarks/results/segment.json] [--frames 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.segment.generator import GeneratorSettings  # noqa: E402
from pipeline.segment.stage import segment  # noqa: E402
from pipeline.segment.tracker import TrackerSettings  # noqa: E402
from pipeline.store import create_group, frame_array  # noqa: E402

from _common import machine, write_result

TEST_GENERATOR = GeneratorSettings(
    points_per_side=3, pred_iou_thresh=-1e9, stability_score_thresh=0.0, min_mask_region_area=4, nms_score_thr=0.0
)


def make_inputs(root: Path, num_frames: int, height: int, width: int, with_gt: bool) -> tuple[Path, Path]:
    """Moving blocks; with gt, a matching instance/part folder."""
    group = create_group(root / "frames.zarr")
    rgb = frame_array(group, "rgb", (num_frames, height, width, 3), "uint8")
    gt = None
    if with_gt:
        (root / "gt/instance").mkdir(parents=True)
        (root / "gt/part").mkdir(parents=True)
        gt = {"instance_dir": str(root / "gt/instance"), "part_dir": str(root / "gt/part")}
    for t in range(num_frames):
        img = np.full((height, width, 3), 90, np.uint8)
        ids = np.zeros((height, width), np.uint16)
        y0, y1, x0 = height // 8, height // 2, width // 16 + t * max(1, width // 32)
        img[y0:y1, x0 : x0 + width // 3] = (200, 40, 40)
        ids[y0:y1, x0 : x0 + width // 3] = 1
        img[height // 2 :, width // 2 :] = (40, 170, 60)
        ids[height // 2 :, width // 2 :] = 2
        rgb[t] = img
        if with_gt:
            cv2.imwrite(str(root / f"gt/instance/{t + 1:06d}.png"), ids)
            cv2.imwrite(str(root / f"gt/part/{t + 1:06d}.png"), ids * 10)
    scene = {"scene": "bench", "dataset": "bench", "frame_names": [f"{t + 1:06d}" for t in range(num_frames)],
             "source_indices": list(range(num_frames)), "gt": gt}  # fmt: skip
    (root / "scene.json").write_text(json.dumps(scene))
    return root / "frames.zarr", root / "scene.json"


def timed_run(num_frames: int, height: int, width: int, **kwargs) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames, scene = make_inputs(root, num_frames, height, width, with_gt=kwargs.get("backend") == "gt")
        start = time.perf_counter()
        table = segment(frames, scene, root / "masks.zarr", root / "objects.parquet", root / "masks.png", **kwargs)
        seconds = time.perf_counter() - start
    return {
        "frames": num_frames,
        "size": [height, width],
        "seconds": round(seconds, 3),
        "frames_per_s": round(num_frames / seconds, 4),
        "objects": int(len(table)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/segment.json")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict = {
        "machine": machine(),
        "cpu": {},
        "gpu": {},
    }
    results["cpu"]["gt"] = timed_run(args.frames, 64, 96, backend="gt")
    results["cpu"]["sam2_tiny_test_config"] = timed_run(
        args.frames, 64, 96, backend="sam2", model_config="configs/sam2.1/sam2.1_hiera_t.yaml", random_init=0,
        device="cpu", generator=TEST_GENERATOR, tracker=TrackerSettings(detect_every=2, max_objects=2),
    )  # fmt: skip
    results["machine"]["load_average_after_cpu_runs"] = [round(x, 2) for x in os.getloadavg()]
    results["cpu"]["gt_over_sam2_speed"] = round(
        results["cpu"]["gt"]["frames_per_s"] / results["cpu"]["sam2_tiny_test_config"]["frames_per_s"], 1
    )

    if torch.cuda.is_available():
        results["gpu"]["device"] = torch.cuda.get_device_name()
        for name, config in (("tiny", "sam2.1_hiera_t"), ("base_plus", "sam2.1_hiera_b+")):
            results["gpu"][name] = timed_run(
                max(args.frames, 10), 576, 1024, backend="sam2", model_config=f"configs/sam2.1/{config}.yaml",
                random_init=0, device="cuda", generator=GeneratorSettings(),
                tracker=TrackerSettings(working_size=1024),
            )  # fmt: skip
    else:
        results["gpu"]["skipped"] = "no CUDA device on this machine"
        print("GPU part skipped: no CUDA device", file=sys.stderr)

    write_result(args.out, results)


if __name__ == "__main__":
    main()
