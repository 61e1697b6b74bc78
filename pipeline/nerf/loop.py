"""The radiance field's training loop: checks, seeded model, resume, steps, final outputs.

Checkpoints, final weights and the loss plot are written with the decoder trainer's helpers
(`pipeline.sbd.checkpointing`, `save_rotating_checkpoint`) in this trainer's format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pipeline import store
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.nerf.cameras import camera_rays, pixel_grid
from pipeline.nerf.data import CAMERA_CHOICES, SceneData, SceneSources
from pipeline.nerf.model import COLOUR_HEADS, WEIGHTS_FORMAT, GeneralizableNerf, NerfConfig, psnr_from_mse
from pipeline.nerf.settings import NerfSettings, epoch_order, log_columns, lr_at, step_generator
from pipeline.sbd.checkpointing import plot_losses, resume_or_clear, save_decoder, save_rotating_checkpoint

CHECKPOINT_FORMAT = "langfield4d-nerf-train-state/1"


def _check_settings(config: NerfConfig, settings: NerfSettings) -> None:
    if settings.epochs < 1 or settings.rays < 1:
        raise UserError("nerf.epochs and nerf.rays must be >= 1")
    if config.colour not in COLOUR_HEADS:
        raise UserError(f"nerf.colour must be one of {', '.join(COLOUR_HEADS)}, got {config.colour!r}")
    if config.planes < 2 or config.samples < 2:
        raise UserError("nerf.planes and nerf.samples must be >= 2")


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


def _output_paths(out, log_path, plot_path, checkpoint_dir) -> tuple[Path, Path, Path, Path]:
    """(weights, log, plot, checkpoint folder), the last three beside the weights unless given."""
    out = Path(out)
    log_path = Path(log_path) if log_path else out.with_name("nerf_log.parquet")
    plot_path = Path(plot_path) if plot_path else out.with_name("nerf_loss.png")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.stem + "_checkpoints")
    return out, log_path, plot_path, checkpoint_dir


def _seeded_model(settings: NerfSettings, config: NerfConfig, dev: torch.device):
    """(model, optimizer), the weights drawn from `settings.seed`."""
    torch.manual_seed(settings.seed)
    model = GeneralizableNerf(config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    return model, optimizer


def train_step_batch(scene: SceneData, target: int, rays: int, gen: torch.Generator, device):
    """Views of the target's sources, and `rays` random target pixels: (views, sources, origins, dirs, rgb)."""
    sources = scene.sources_of(target)
    views, image, K, E = scene.views(target, sources, device)
    H, W = scene.height, scene.width
    idx = torch.randint(0, H * W, (rays,), generator=gen)
    pixels = pixel_grid(H, W)[idx].to(device)
    origins, dirs = camera_rays(K, E, pixels)
    return views, sources, origins, dirs, image.reshape(-1, 3)[idx.to(device)]


def _train_step(model, optimizer, scene: SceneData, target: int, settings: NerfSettings, step: int, lr: float, dev,
                use_amp: bool) -> tuple[list[int], float]:  # fmt: skip
    """One optimiser step on `rays` pixels of `target`: (its source frames, the RGB MSE)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    gen = step_generator(settings.seed, step)
    views, srcs, origins, dirs, rgb = train_step_batch(scene, target, settings.rays, gen, dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        pred = model(views, origins, dirs, perturb=gen)
    loss = ((pred["rgb"].float() - rgb) ** 2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return srcs, float(loss.detach())


def _training_log(log_rows, columns: Sequence[str]):
    import pandas as pd

    log = pd.DataFrame(log_rows, columns=list(columns))
    for c in columns:
        if c in ("epoch", "step", "scene", "target") or c.startswith("source_"):
            log[c] = log[c].astype("int64")
    return log


def _write_outputs(out: Path, log_path: Path, plot_path: Path, *, model, config: NerfConfig, settings: NerfSettings,
                   sources, scenes, log_rows, columns, save_every: int, resumed_from) -> dict[str, Any]:  # fmt: skip
    """Final weights (architecture and held-out frames in their metadata), Parquet log and loss plot."""
    log = _training_log(log_rows, columns)
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
        "first_psnr": float(log["psnr"].iloc[:10].mean()) if len(log) else None,
        "final_psnr": metadata["final_psnr"],
        "resumed_from": resumed_from,
        "held_out": metadata["held_out"],
        "seconds": float(log["seconds"].iloc[-1]) if len(log) else 0.0,
    }


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
    """Train one radiance field on `sources`; write `out` (+ log, plot). Returns a summary dict."""
    from tqdm.auto import tqdm

    _check_settings(config, settings)
    scenes = load_scenes(sources, settings, config.num_sources, names)  # every check before any checkpoint is touched
    config = dataclasses.replace(config, dim_in=scenes[0].dim_in)
    out, log_path, plot_path, checkpoint_dir = _output_paths(out, log_path, plot_path, checkpoint_dir)
    dev = torch.device(resolve_device(device))
    use_amp = bool(settings.amp and dev.type == "cuda")
    columns = log_columns(config.num_sources)
    model, optimizer = _seeded_model(settings, config, dev)
    fingerprint = _fingerprint(settings, config, sources)
    total = settings.epochs * sum(len(s.train_frames) for s in scenes)
    start_epoch, step, seconds, log_rows, resumed_from = resume_or_clear(
        checkpoint_dir, fingerprint, resume, model=model, optimizer=optimizer, scaler=None, dev=dev, format=CHECKPOINT_FORMAT)
    bar = tqdm(total=total, initial=step, desc="train nerf", unit="step", disable=not progress, mininterval=2.0)
    model.train()
    t_start = time.perf_counter() - seconds
    for epoch in range(start_epoch, settings.epochs):
        for s_idx, target in epoch_order(scenes, settings.seed, epoch):
            lr = lr_at(settings, step / total)
            srcs, value = _train_step(model, optimizer, scenes[s_idx], target, settings, step, lr, dev, use_amp)
            log_rows.append([epoch, step, s_idx, target, *srcs, value, psnr_from_mse(value), lr, time.perf_counter() - t_start])
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, psnr=f"{psnr_from_mse(value):.2f}", refresh=False)
        done = epoch + 1
        if done % max(1, save_every) == 0 or done == settings.epochs:
            save_rotating_checkpoint(checkpoint_dir, done, keep_checkpoints, model=model, optimizer=optimizer, scaler=None, step=step,
                             seconds=time.perf_counter() - t_start, log_rows=log_rows, fingerprint=fingerprint,
                             log_columns=columns, format=CHECKPOINT_FORMAT)  # fmt: skip
        if on_epoch_end is not None:
            on_epoch_end(done)
    bar.close()
    return {"out": str(out), "log": str(log_path), "plot": str(plot_path), "steps": step,
            **_write_outputs(out, log_path, plot_path, model=model, config=config, settings=settings, sources=sources,
                             scenes=scenes, log_rows=log_rows, columns=columns, save_every=save_every,
                             resumed_from=resumed_from)}  # fmt: skip
