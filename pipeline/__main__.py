"""`python -m pipeline <stage> ...`: the command-line face of every stage.

Stage modules are imported only when called, so `--help` and light stages start fast.
Each stage module defines `add_arguments(parser)` and `run(args)`; its docstring is the help.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from pipeline.errors import UserError

# name -> (module, one-line summary)
STAGES: dict[str, tuple[str, str]] = {
    "demo-scene": ("pipeline.demo_scene", "render the built-in synthetic dynamic scene with its ground truth"),
    "frames": ("pipeline.frames", "read a video, image folder, HyperNeRF or Neu3D scene into frames.zarr + scene.json"),
    "segment": ("pipeline.segment.stage", "multi-level masks with ids stable over time -> masks.zarr"),
    "clip-features": ("pipeline.features.clip_stage", "per-mask CLIP-slot embeddings (time-agnostic)"),
    "video-features": ("pipeline.features.video_stage", "per-object state captions -> text embeddings (time-sensitive)"),
    "autoencoder-train": ("pipeline.features.autoencoder_train", "train the feature autoencoder (512->3, video->6)"),
    "autoencode": ("pipeline.features.autoencode", "encode features into the latents the decoder trains on"),
    "convert-checkpoint": ("pipeline.checkpoints", "turn a pickled .pth/.pt checkpoint into safetensors, once"),
    "geometry": ("pipeline.geometry.stage", "StreamVGGT/VGGT tokens -> tokens.zarr + geometry.zarr"),
    "train": ("pipeline.sbd.train", "train the Semantic Bridging Decoder on tokens + feature targets"),
    "render": ("pipeline.sbd.render", "render per-pixel language features with a trained decoder -> render.zarr"),
    "evaluate": ("pipeline.evaluate.stage", "the 4DLangSplat evaluation protocol -> metrics.parquet + figures"),
    "query": ("pipeline.evaluate.query", "relevancy maps and an overlay video for any text on a trained scene"),
    "scene3d": ("pipeline.scene3d.stage", "GPT4Scene inputs: objects in 3D, cloud.ply, BEV + marked frames, 3D grounding"),
    "scene3d-answer": ("pipeline.scene3d.answer", "answer questions on a scene prompt with a local Qwen2-VL -> answers.parquet"),
    "report": ("pipeline.evaluate.report", "gather per-scene metrics into cross-scene tables"),
    "view": ("pipeline.viewer.app", "serve a rendered scene in the browser: scrub time, type any text, see it in 3D"),
    "nerf-train": ("pipeline.nerf.train", "train the generalizable radiance field (VGGT-NeRF) on tokens + cameras + frames"),
    "nerf-render": ("pipeline.nerf.render", "render a scene's held-out frames (and a camera path) with the radiance field"),
    "nerf-evaluate": ("pipeline.nerf.evaluate", "PSNR/SSIM/LPIPS and depth of the held-out renders, with two baselines"),
}


def _print_stages() -> None:
    print("usage: python -m pipeline <stage> [options]   (python -m pipeline <stage> --help)\n")
    print("stages:")
    for name, (_, summary) in STAGES.items():
        print(f"  {name:<20} {summary}")


# A disk or folder that takes no more (or refuses us): the job fails, and the user must act on the storage.
STORAGE_ERRORS = {
    errno.ENOSPC: ("cannot write", "no space left on the device: free some space there (or put results/ on a bigger disk)"),
    errno.EDQUOT: ("cannot write", "disk quota exceeded: free some space there or ask for a larger quota"),
    errno.EFBIG: ("cannot write", "the file is larger than this file system or your limits allow: use another disk"),
    errno.EROFS: ("cannot write", "the file system is read-only: make the results folder writable (or run from a writable copy)"),
    errno.EACCES: ("cannot access", "permission denied: make it readable, and the results folder writable, for you"),
    errno.EPERM: ("cannot access", "operation not permitted: make the results folder writable for you"),
}


def _storage_error(exc: OSError) -> str | None:
    """One line naming the path and what to do, for the storage failures a user can fix."""
    if exc.errno not in STORAGE_ERRORS:
        return None
    verb, advice = STORAGE_ERRORS[exc.errno]
    path = exc.filename if exc.filename is not None else "a file (path unknown)"
    return (f"{verb} {path}: {advice}; then run the same command again "
            "(finished results are kept; this job's partial output was removed)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        _print_stages()
        return 0
    name = argv[0]
    if name not in STAGES:
        print(f"error: unknown stage {name!r}; run `python -m pipeline --help` for the list", file=sys.stderr)
        return 2
    module_name, summary = STAGES[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline {name}",
        description=(module.__doc__ or summary).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        module.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        line = _storage_error(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing partial was left in place of the output", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
