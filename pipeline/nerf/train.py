"""Train the generalizable radiance field (VGGT-NeRF) on one or several scenes.

Repeat --frames/--tokens/--scene-json/--geometry once per scene, in the same order. Each step
takes one training frame of one scene as the target, builds the cost volume from its
`num_sources` nearest training frames (never a held-out frame, never the target itself),
renders `rays` random pixels of the target and minimises the RGB MSE (MVSNeRF's loss). An epoch
is every training frame of every scene once, in a seeded order. Adam, cosine learning-rate
decay, bfloat16 autocast on CUDA only, seeded.

Resumable: checkpoints (safetensors: weights, optimizer and RNG state, the log so far) go to
--checkpoint-dir every --save-every epochs with the sbd trainer's helpers; a rerun with the same
settings, inputs and code resumes from the newest and ends with the weights an uninterrupted run
would have; others are removed, never resumed. Bad input (too few frames, missing or static
cameras, a held-out stride that leaves nothing to train on) fails before any checkpoint is
touched. Writes the weights (`--out`, the architecture and every scene's held-out frames in its
metadata), a Parquet training log (each step's scene, target and source frames) and a loss curve.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline import store
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.nerf.data import CAMERA_CHOICES, SceneData, SceneSources
from pipeline.nerf.model import COLOUR_HEADS, GeneralizableNerf, NerfConfig, camera_rays, pixel_grid, psnr_from_mse
from pipeline.sbd.checkpointing import plot_losses, resume_or_clear, save_decoder, save_train_state

CHECKPOINT_FORMAT = "langfield4d-nerf-train-state/1"
WEIGHTS_FORMAT = "langfield4d-nerf/1"


@dataclass(frozen=True)
class NerfSettings:
    """Training settings; defaults follow VGGT-NeRF / MVSNeRF unless noted."""

    epochs: int = 10
    rays: int = 1024  # rays per step
    lr: float = 5e-5
    min_lr: float = 0.0
    holdout_every: int = 8  # ours: every 8th frame held out (the LLFF convention)
    cameras: str = "auto"
    near: float | None = None
    far: float | None = None
    seed: int = 42
    amp: bool = True  # bfloat16 autocast, CUDA only

    def fingerprint_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def log_columns(num_sources: int) -> tuple[str, ...]:
    return ("epoch", "step", "scene", "target", *(f"source_{i}" for i in range(num_sources)), "loss", "psnr", "lr", "seconds")


def lr_at(settings: NerfSettings, progress: float) -> float:
    return settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(scenes: Sequence[SceneData], seed: int, epoch: int) -> list[tuple[int, int]]:
    """(scene index, target frame) pairs of one epoch, in a seeded order."""
    pairs = [(i, t) for i, s in enumerate(scenes) for t in s.train_frames]
    order = np.random.default_rng([seed, epoch]).permutation(len(pairs))
    return [pairs[k] for k in order]


def step_generator(seed: int, step: int) -> torch.Generator:
    """Rays and sample jitter of a step depend only on (seed, step): a resumed run draws the same."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def load_scenes(sources: Sequence[SceneSources], settings: NerfSettings, num_sources: int, names=None) -> list[SceneData]:
    if not sources:
        raise UserError("no scenes to train the radiance field on (config key `nerf.scenes`)")
    if settings.cameras not in CAMERA_CHOICES:
        raise UserError(f"nerf.cameras must be one of {', '.join(CAMERA_CHOICES)}, got {settings.cameras!r}")
    scenes = [
        SceneData(s, holdout_every=settings.holdout_every, num_sources=num_sources, cameras=settings.cameras,
                  near=settings.near, far=settings.far, name=None if names is None else names[i])  # fmt: skip
        for i, s in enumerate(sources)
    ]
    for s in scenes[1:]:
        if s.dim_in != scenes[0].dim_in:
            raise UserError(f"scenes cannot share one radiance field: token width {s.dim_in} ({s.sources.tokens}) vs "
                            f"{scenes[0].dim_in} ({scenes[0].sources.tokens})")  # fmt: skip
    return scenes


def _fingerprint(settings: NerfSettings, config: NerfConfig, sources: Sequence[SceneSources]) -> str:
    from pipeline.code_digest import stage_digest

    record = {
        "settings": settings.fingerprint_dict(),
        "architecture": config.to_dict(),
        "code": stage_digest("nerf-train"),
        "scenes": [{k: store.input_digest(v) for k, v in dataclasses.asdict(s).items()} for s in sources],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def train_step_batch(scene: SceneData, target: int, rays: int, gen: torch.Generator, device):
    """Views of the target's sources, and `rays` random target pixels: (views, sources, origins, dirs, rgb)."""
    sources = scene.sources_of(target)
    views, image, K, E = scene.views(target, sources, device)
    H, W = scene.height, scene.width
    idx = torch.randint(0, H * W, (rays,), generator=gen)
    pixels = pixel_grid(H, W)[idx].to(device)
    origins, dirs = camera_rays(K, E, pixels)
    return views, sources, origins, dirs, image.reshape(-1, 3)[idx.to(device)]


def train_nerf(
    sources: Sequence[SceneSources],
    out: str | Path,
    *,
    config: NerfConfig = NerfConfig(),
    settings: NerfSettings = NerfSettings(),
    names: Sequence[str] | None = None,
    log_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    save_every: int = 1,
    keep_checkpoints: int = 2,
    resume: bool = True,
    device: str = "auto",
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    if settings.epochs < 1 or settings.rays < 1:
        raise UserError("nerf.epochs and nerf.rays must be >= 1")
    if config.colour not in COLOUR_HEADS:
        raise UserError(f"nerf.colour must be one of {', '.join(COLOUR_HEADS)}, got {config.colour!r}")
    if config.planes < 2 or config.samples < 2:
        raise UserError("nerf.planes and nerf.samples must be >= 2")
    scenes = load_scenes(sources, settings, config.num_sources, names)  # every check before any checkpoint is touched
    config = dataclasses.replace(config, dim_in=scenes[0].dim_in)
    out = Path(out)
    log_path = Path(log_path) if log_path else out.with_name("nerf_log.parquet")
    plot_path = Path(plot_path) if plot_path else out.with_name("nerf_loss.png")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.stem + "_checkpoints")
    dev = torch.device(resolve_device(device))
    use_amp = bool(settings.amp and dev.type == "cuda")
    columns = log_columns(config.num_sources)

    torch.manual_seed(settings.seed)
    model = GeneralizableNerf(config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    fingerprint = _fingerprint(settings, config, sources)
    n_steps = sum(len(s.train_frames) for s in scenes)
    total = settings.epochs * n_steps
    start_epoch, step, seconds, log_rows, resumed_from = resume_or_clear(
        checkpoint_dir, fingerprint, resume, model=model, optimizer=optimizer, scaler=None, dev=dev, format=CHECKPOINT_FORMAT)

    bar = tqdm(total=total, initial=step, desc="train nerf", unit="step", disable=not progress, mininterval=2.0)
    model.train()
    t_start = time.perf_counter() - seconds
    for epoch in range(start_epoch, settings.epochs):
        for i, (s_idx, target) in enumerate(epoch_order(scenes, settings.seed, epoch)):
            lr = lr_at(settings, step / total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            gen = step_generator(settings.seed, step)
            views, srcs, origins, dirs, rgb = train_step_batch(scenes[s_idx], target, settings.rays, gen, dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                pred = model(views, origins, dirs, perturb=gen)
            loss = ((pred["rgb"].float() - rgb) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            log_rows.append([epoch, step, s_idx, target, *srcs, value, psnr_from_mse(value), lr, time.perf_counter() - t_start])
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, psnr=f"{psnr_from_mse(value):.2f}", refresh=False)
        done = epoch + 1
        if done % max(1, save_every) == 0 or done == settings.epochs:
            from pipeline.sbd.checkpointing import _checkpoint_path

            save_train_state(_checkpoint_path(checkpoint_dir, done), model=model, optimizer=optimizer, scaler=None, epoch=done,
                             step=step, seconds=time.perf_counter() - t_start, log_rows=log_rows, fingerprint=fingerprint,
                             log_columns=columns, format=CHECKPOINT_FORMAT)  # fmt: skip
            old = sorted(checkpoint_dir.glob("epoch_*.safetensors"))
            for path in old[: max(0, len(old) - max(1, keep_checkpoints))]:
                path.unlink(missing_ok=True)
        if on_epoch_end is not None:
            on_epoch_end(done)
    bar.close()

    import pandas as pd

    log = pd.DataFrame(log_rows, columns=list(columns))
    for c in columns:
        if c in ("epoch", "step", "scene", "target") or c.startswith("source_"):
            log[c] = log[c].astype("int64")
    described = [s.describe() for s in scenes]
    params = {**settings.fingerprint_dict(), "architecture": config.to_dict(), "save_every": save_every}
    inputs = {f"{k}[{i}]": v for i, s in enumerate(sources) for k, v in dataclasses.asdict(s).items()}
    prov = store.provenance("nerf-train", params, inputs, extra={"resumed_from": resumed_from, "scenes": described})
    metadata = {
        "format": WEIGHTS_FORMAT,
        "architecture": config.to_dict(),
        "settings": settings.fingerprint_dict(),
        "scenes": described,
        "held_out": {s.name: s.held_out for s in scenes},
        "final_psnr": float(log["psnr"].iloc[-10:].mean()) if len(log) else None,
        "provenance": prov,
    }
    model.eval()
    save_decoder(out, model, metadata)
    log_prov = {**prov, "held_out": metadata["held_out"], "scene_names": [s.name for s in scenes]}
    store.write_parquet(log_path, log, provenance=log_prov)
    plot_losses(log, plot_path, columns=("loss",), title="Radiance field training (RGB MSE)")
    return {
        "out": str(out),
        "log": str(log_path),
        "plot": str(plot_path),
        "steps": step,
        "first_psnr": float(log["psnr"].iloc[:10].mean()) if len(log) else None,
        "final_psnr": metadata["final_psnr"],
        "resumed_from": resumed_from,
        "held_out": metadata["held_out"],
        "seconds": float(log["seconds"].iloc[-1]) if len(log) else 0.0,
    }


def load_nerf(path: str | Path, device="cpu") -> tuple[GeneralizableNerf, dict[str, Any]]:
    """Weights written by `train_nerf` -> (model in eval mode, metadata with JSON values decoded)."""
    from safetensors.torch import load_file

    from pipeline.checkpoints import checkpoint_metadata

    path = Path(path)
    if not path.is_file():
        raise UserError(f"radiance-field weights not found: {path}")
    raw = checkpoint_metadata(path)
    if raw.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path} is not radiance-field weights (format {raw.get('format')!r}, expected {WEIGHTS_FORMAT})")
    meta = {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
    model = GeneralizableNerf(NerfConfig.from_dict(meta["architecture"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------- command line
def add_scene_arguments(parser) -> None:
    g = parser.add_argument_group("inputs (repeat once per scene, same order)")
    g.add_argument("--frames", action="append", required=True, help="frames.zarr")
    g.add_argument("--tokens", action="append", required=True, help="tokens.zarr (the last stored layer is used)")
    g.add_argument("--scene-json", action="append", required=True, help="scene.json (the scene's own cameras)")
    g.add_argument("--geometry", action="append", required=True, help="geometry.zarr (depth range, cameras fallback)")
    g.add_argument("--name", action="append", default=None, help="scene name (default: the frames' folder name)")


def scene_sources(args) -> list[SceneSources]:
    n = len(args.frames)
    for flag, values in (("--tokens", args.tokens), ("--scene-json", args.scene_json), ("--geometry", args.geometry)):
        if len(values) != n:
            raise UserError(f"{flag} given {len(values)} times but --frames {n} times: give one per scene, in order")
    if args.name and len(args.name) != n:
        raise UserError(f"--name given {len(args.name)} times for {n} scenes")
    return [SceneSources(Path(f), Path(t), Path(j), Path(g)) for f, t, j, g in zip(args.frames, args.tokens, args.scene_json, args.geometry)]


def add_arguments(parser) -> None:
    c, s = NerfConfig(), NerfSettings()
    add_scene_arguments(parser)
    o = parser.add_argument_group("outputs")
    o.add_argument("--out", required=True, help="final weights, nerf.safetensors")
    o.add_argument("--log", default=None, help="training log Parquet (default: beside --out, nerf_log.parquet)")
    o.add_argument("--plot", default=None, help="loss-curve PNG (default: beside --out, nerf_loss.png)")
    o.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (default: <out stem>_checkpoints)")
    o.add_argument("--save-every", type=int, default=1, help="checkpoint every N epochs")
    o.add_argument("--no-resume", action="store_true")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=s.epochs)
    t.add_argument("--rays", type=int, default=s.rays, help="rays per step")
    t.add_argument("--lr", type=float, default=s.lr)
    t.add_argument("--min-lr", type=float, default=s.min_lr)
    t.add_argument("--holdout-every", type=int, default=s.holdout_every, help="every k-th frame is held out")
    t.add_argument("--cameras", choices=list(CAMERA_CHOICES), default=s.cameras)
    t.add_argument("--near", type=float, default=None)
    t.add_argument("--far", type=float, default=None)
    t.add_argument("--seed", type=int, default=s.seed)
    t.add_argument("--device", default="auto")
    t.add_argument("--no-amp", action="store_true")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true")
    a = parser.add_argument_group("architecture")
    a.add_argument("--feature-dim", type=int, default=c.feature_dim)
    a.add_argument("--num-sources", type=int, default=c.num_sources)
    a.add_argument("--planes", type=int, default=c.planes)
    a.add_argument("--samples", type=int, default=c.samples)
    a.add_argument("--cnn-channels", type=int, nargs="+", default=list(c.cnn_channels))
    a.add_argument("--net-depth", type=int, default=c.net_depth)
    a.add_argument("--net-width", type=int, default=c.net_width)
    a.add_argument("--multires", type=int, default=c.multires)
    a.add_argument("--multires-views", type=int, default=c.multires_views)
    a.add_argument("--colour", choices=list(COLOUR_HEADS), default=c.colour)
    a.add_argument("--volume-downscale", type=int, default=c.volume_downscale, help="cost volume at 1/N of the image size")


def config_from_args(args) -> NerfConfig:
    return NerfConfig(feature_dim=args.feature_dim, num_sources=args.num_sources, planes=args.planes, samples=args.samples,
                      cnn_channels=tuple(args.cnn_channels), net_depth=args.net_depth, net_width=args.net_width,
                      multires=args.multires, multires_views=args.multires_views, colour=args.colour,
                      volume_downscale=args.volume_downscale)  # fmt: skip


def run(args) -> None:
    from pipeline.cli import run_stage, stage_kwargs

    settings = NerfSettings(**stage_kwargs(NerfSettings, args, values={"amp": not args.no_amp}))
    run_stage(train_nerf, args, values={"sources": scene_sources(args), "config": config_from_args(args), "settings": settings,
                                        "names": args.name, "log_path": args.log, "plot_path": args.plot,
                                        "resume": not args.no_resume})  # fmt: skip
