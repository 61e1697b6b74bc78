"""Seconds from typing a query in the viewer to the new point colours, and the viewer's memory.

Builds two synthetic scene results folders at HyperNeRF size (536x960): one frame, and --frames
(default 200) frames, each with render.zarr (three 3-d latent levels, float16), geometry.zarr
(depth, confidence, cameras) and an upstream-sized CLIP autoencoder (3 -> 16 32 64 128 256 256
512, seeded random weights). Text vectors are fixed unit vectors (text encoding is the encoder's
cost, not the viewer's). For each scene, through the viewer's own code path (the text box's
update handler, then the point cloud sent to the page):
- open: scene + server + first frame's points;
- decoding the shown frame's features (the viewer starts it in the background on opening);
- three queries on that frame (cached features: what typing costs);
- a frame change with a query set (decode and query), and back to the cached frame;
- resident memory (RSS) after opening and at the end, and the feature cache's bytes.
Writes JSON to --out (default benchmarks/results/viewer.json). Run with OMP_NUM_THREADS set to
the threads you want measured (the JSON records torch's thread count). `--frames 1` measures the
one-frame scene only; `--size` a smaller frame where the full one is too heavy for the machine.
`--baseline DIR` first runs the same measurement on the `pipeline` package of another checkout
(e.g. main before a change) in a subprocess, and records its numbers and the ratios beside ours.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import machine, write_result

H, W = 536, 960
SPACE = {"kind": "bench-clip", "dim": 512}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_scene(root: Path, T: int, seed: int = 0) -> Path:
    from pipeline.store import create_group, frame_array

    scene = root / "results" / "bench" / f"t{T}"
    scene.mkdir(parents=True)
    g = create_group(scene / "render.zarr")
    arrays = {lv: frame_array(g, f"lang_{lv}", (T, H, W, 3), "float16") for lv in ("s", "m", "l")}
    rgb = frame_array(g, "rgb", (T, H, W, 3), "float16")
    yy, xx = np.meshgrid(np.linspace(0, 1, H, dtype=np.float32), np.linspace(0, 1, W, dtype=np.float32), indexing="ij")
    geo = create_group(scene / "geometry.zarr")
    depth = frame_array(geo, "depth", (T, H, W), "float32")
    conf = frame_array(geo, "depth_conf", (T, H, W), "float32")
    ext = frame_array(geo, "extrinsics", (T, 3, 4), "float32")
    K = frame_array(geo, "intrinsics", (T, 3, 3), "float32")
    for t in range(T):
        ph = 2 * np.pi * t / max(T, 1)
        for i, lv in enumerate(arrays):
            v = np.stack([np.sin(6 * xx + ph + i), np.cos(5 * yy - ph), 0.5 + 0.3 * np.sin(3 * (xx + yy) + i)], -1)
            arrays[lv][t] = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float16)
        rgb[t] = np.stack([xx, yy, 0.5 + 0 * xx], -1).astype(np.float16)
        depth[t] = 2.0 + 0.5 * np.sin(4 * xx + ph) * np.cos(3 * yy)
        conf[t] = 1.0 + yy
        e = np.zeros((3, 4), np.float32)
        e[:, :3] = np.eye(3)
        e[0, 3] = -0.01 * t
        ext[t] = e
        K[t] = np.array([[500, 0, W / 2], [0, 500, H / 2], [0, 0, 1]], np.float32)
    g.attrs.update({"source_indices": list(range(T)), "clip_space": SPACE})
    geo.attrs.update({"transform": {"source_size": [H, W], "resize_to": None, "crop": [0, 0, H, W]}})
    (scene / "scene.json").write_text(json.dumps({"dataset": "bench", "scene": f"t{T}", "fps": 10}))
    return scene


def autoencoder(path: Path) -> Path:
    from pipeline.features.autoencoder import Autoencoder, save_autoencoder

    torch.manual_seed(0)
    save_autoencoder(Autoencoder(512, [256, 128, 64, 32, 3], [16, 32, 64, 128, 256, 256, 512]), path, space=SPACE)
    return path


def measure(scene: Path, ae: Path, device: str, cache_mb: int) -> dict:
    from pipeline.evaluate.encoders import TextVectors
    from pipeline.viewer.app import Viewer
    from pipeline.viewer.scene_engine import engine_for_scene
    from pipeline.viewer.scene import SceneData

    g = torch.Generator().manual_seed(1)
    names = ["a cookie", "a cup", "a hand", "object", "things", "stuff", "texture"]
    vec = torch.nn.functional.normalize(torch.randn(len(names), 512, generator=g), dim=-1).numpy()
    vectors = TextVectors(dict(zip(names, vec)), SPACE)
    out: dict = {"rss_start_mb": rss_mb()}
    t0 = time.perf_counter()
    data = SceneData(scene)
    engine = engine_for_scene(scene, data.render, autoencoder=str(ae), device=device, cache_bytes=cache_mb << 20,
                              text_vectors=lambda texts: vectors)
    viewer = Viewer(data, engine, port=0)
    out["open_s"] = time.perf_counter() - t0
    out["rss_open_mb"] = rss_mb()
    out["points_shown"] = int(len(viewer.point_colors))
    out["points_total"] = int(data.cloud(0).total)

    def query(text: str) -> float:
        t = time.perf_counter()
        viewer.gui_text.value = text  # the text box's update: relevancy, colours, point cloud to the page
        return time.perf_counter() - t

    t = time.perf_counter()
    engine.frame_features(0)  # the viewer decodes the frame it shows in the background; wait for it
    out["decode_frame_s"] = time.perf_counter() - t
    out["query_s"] = [query(text) for text in ("a cookie", "a cup", "a hand")]  # cached features: what typing costs
    out["query_median_s"] = float(np.median(out["query_s"]))
    last = data.T - 1
    if last > 0:
        t = time.perf_counter()
        viewer.gui_frame.value = last
        out["frame_change_with_query_s"] = time.perf_counter() - t  # decodes the new frame
        t = time.perf_counter()
        viewer.gui_frame.value = 0
        out["back_to_cached_frame_s"] = time.perf_counter() - t
    out["chosen_level"] = ["s", "m", "l"][viewer.relevancy.chosen]
    out["cache_dtype"] = str(engine.dtype).replace("torch.", "")
    out["cache_mb"] = engine.cache_nbytes() / 2**20
    out["cached_frames"] = engine.cached_frames()
    out["rss_end_mb"] = rss_mb()
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    viewer.stop()
    return out


RATIOS = ("decode_frame_s", "query_median_s", "cache_mb", "rss_end_mb", "rss_peak_mb")


def baseline(checkout: str, args: list[str]) -> dict:
    """This measurement on another checkout's `pipeline` (its commit recorded), in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve())}
        subprocess.run([sys.executable, __file__, *args, "--out", str(out)], env=env, check=True)
        result = json.loads(out.read_text())
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result["commit"] = commit.stdout.strip()
    return result


def main() -> None:
    global H, W
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, nargs=2, default=[H, W], metavar=("H", "W"))
    ap.add_argument("--baseline", metavar="DIR", help="a checkout whose pipeline package to measure first, for ratios")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-mb", type=int, default=4096)
    ap.add_argument("--workdir", help="where the synthetic scenes go (default: a temporary folder)")
    ap.add_argument("--out", default="benchmarks/results/viewer.json")
    args = ap.parse_args()
    H, W = args.size
    import pipeline

    before = None
    if args.baseline:
        same = ["--frames", str(args.frames), "--device", args.device, "--cache-mb", str(args.cache_mb),
                "--size", str(H), str(W), *(["--workdir", args.workdir] if args.workdir else [])]
        before = baseline(args.baseline, same)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        ae = autoencoder(root / "clip_autoencoder.safetensors")
        result = {"size": [H, W], "device": args.device, "machine": machine(), "cache_budget_mb": args.cache_mb,
                  "pipeline": str(Path(pipeline.__file__).parent)}
        for T in sorted({1, args.frames}):
            t = time.perf_counter()
            scene = write_scene(root, T)
            result[f"write_scene_{T}_frames_s"] = time.perf_counter() - t
            result[f"frames_{T}"] = measure(scene, ae, args.device, args.cache_mb)
            print(json.dumps({f"frames_{T}": result[f"frames_{T}"]}), flush=True)
    if before is not None:
        result["baseline"] = before
        result["ratio_to_baseline"] = {
            f"frames_{T}": {k: result[f"frames_{T}"][k] / before[f"frames_{T}"][k] for k in RATIOS
                            if before.get(f"frames_{T}", {}).get(k)}
            for T in sorted({1, args.frames})}
    write_result(args.out, result, echo=False)


if __name__ == "__main__":
    main()
