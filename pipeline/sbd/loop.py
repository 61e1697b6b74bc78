"""The decoder's training loop: data, model and optimiser set up, resume, steps, outputs.

AdamW with linear warm-up then constant or cosine learning rate, grad clip, AMP on CUDA only,
seeded; a rerun with the same settings, inputs and code resumes from the newest matching
checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline import store
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.sbd.checkpointing import (
    LOG_COLUMNS,
    WEIGHTS_FORMAT,
    _fingerprint,
    plot_losses,
    resume_or_clear,
    save_decoder,
    save_rotating_checkpoint,
)
from pipeline.sbd.data import PLACEMENTS, SceneData, SceneSources, iterate_steps, steps_per_epoch
from pipeline.sbd.losses import LOSS_COLUMNS, param_groups, sbd_losses
from pipeline.sbd.model import DecoderConfig, SemanticBridgingDecoder
from pipeline.sbd.settings import TrainSettings, lr_at

CACHE_BYTES = 2 << 30  # keep per-pixel targets in memory up to this size (single-process loading)


def _check_settings(settings: TrainSettings, scenes: Sequence[SceneSources]) -> None:
    if not scenes:
        raise UserError("no scenes to train on (config key `sbd.scenes`)")
    if settings.schedule not in ("constant", "cosine"):
        raise UserError(f"sbd.schedule must be 'constant' or 'cosine', got {settings.schedule!r}")
    if settings.epochs < 1 or settings.batch_size < 1:
        raise UserError("sbd.epochs and sbd.batch_size must be >= 1")
    if settings.output_placement not in PLACEMENTS:
        raise UserError(f"sbd.output_placement must be one of {list(PLACEMENTS)}, got {settings.output_placement!r}")


def _scene_attrs(scenes: Sequence[SceneData]) -> dict[str, Any]:
    """Checks that the scenes can share one decoder; returns what the weights' metadata records."""
    first = scenes[0]
    for s in scenes[1:]:
        for what, a, b in (
            ("token layers", s.tokens.layers, first.tokens.layers),
            ("token width", s.tokens.dim_in, first.tokens.dim_in),
            ("patch size", s.tokens.patch_size, first.tokens.patch_size),
            ("CLIP latent dim", s.clip.dim, first.clip.dim),
            ("CLIP latent space", s.clip.space, first.clip.space),
            ("CLIP autoencoder", (s.clip.autoencoder or {}).get("sha256"), (first.clip.autoencoder or {}).get("sha256")),
        ):
            if a != b:
                raise UserError(
                    f"scenes cannot share one decoder: {what} differs ({s.sources.tokens}: {a!r} vs "
                    f"{first.sources.tokens}: {b!r}); a multi-scene model needs one shared autoencoder"
                )
    videos = [s.video for s in scenes if s.video is not None]
    if any(v.dim != videos[0].dim or v.space != videos[0].space for v in videos):
        raise UserError("scenes cannot share one video head: their video latents differ in dim or space")
    return {
        "layers": first.tokens.layers,
        "dim_in": first.tokens.dim_in,
        "patch_size": first.tokens.patch_size,
        "lang_dim": first.clip.dim,
        "video_dim": videos[0].dim if videos else 0,
        "clip_space": first.clip.space,
        "video_space": videos[0].space if videos else None,
        "clip_autoencoder": first.clip.autoencoder,
        "video_autoencoder": videos[0].autoencoder if videos else None,
    }


def _load_data(scenes: Sequence[SceneSources], settings: TrainSettings, num_workers: int, cache: bool | None):
    """(per-scene data, what the weights record) with targets cached in memory when they fit."""
    data = [SceneData(s, placement=settings.output_placement) for s in scenes]
    if cache is None:
        cache = num_workers == 0 and sum(d.target_bytes() * len(d) for d in data) <= CACHE_BYTES
    for d in data:
        d.set_cache(cache)
    return data, _scene_attrs(data)


def _decoder_config(settings: TrainSettings, info: dict[str, Any]) -> DecoderConfig:
    video_dim = info["video_dim"] if settings.video_dim is None else int(settings.video_dim)
    if video_dim and info["video_dim"] and video_dim != info["video_dim"]:
        raise UserError(f"sbd.video_dim={video_dim} but the video latents are {info['video_dim']}-d")
    return DecoderConfig(
        dim_in=info["dim_in"],
        patch_size=info["patch_size"],
        features=settings.features,
        lang_dim=info["lang_dim"],
        hidden_dim=settings.hidden_dim,
        out_channels=tuple(settings.out_channels),
        video_dim=video_dim,
        video_hidden_dim=settings.video_hidden_dim,
    )


def _seeded_model(settings: TrainSettings, config: DecoderConfig, dev: torch.device, use_amp: bool):
    """(model, optimizer, grad scaler), the weights drawn from `settings.seed`."""
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed % (2**32))
    model = SemanticBridgingDecoder.from_config(config).to(dev)
    optimizer = torch.optim.AdamW(
        param_groups(model, settings.weight_decay), lr=settings.lr, betas=(settings.beta1, settings.beta2)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return model, optimizer, scaler


def _train_step(model, optimizer, scaler, batch, settings: TrainSettings, dev, use_amp: bool, lr: float) -> list[float]:
    """One optimiser step on `batch`; the loss parts in LOSS_COLUMNS order (NaN where absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    tokens = [t.to(dev, non_blocking=True).float() for t in batch["tokens"]]
    batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "tokens"}
    with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
        pred = model(tokens, batch["out_size"])
    parts = sbd_losses(pred, batch, settings)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(parts["loss"]).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return [float(parts[c].detach()) if c in parts else float("nan") for c in LOSS_COLUMNS]


def _weights_metadata(config: DecoderConfig, info: dict[str, Any], settings: TrainSettings, scenes, log, prov) -> dict:
    return {
        "format": WEIGHTS_FORMAT,
        "architecture": config.to_dict(),
        "layers": info["layers"],
        "output_placement": settings.output_placement,
        "lang_dim": config.lang_dim,
        "video_dim": config.video_dim,
        "clip_space": info["clip_space"],
        "video_space": info["video_space"],
        "clip_autoencoder": info["clip_autoencoder"],
        "video_autoencoder": info["video_autoencoder"],
        "scenes": [str(s.tokens) for s in scenes],
        "epochs": settings.epochs,
        "final_loss": float(log["loss"].iloc[-1]) if len(log) else None,
        "provenance": prov,
    }


def _write_outputs(out: Path, log_path: Path, plot_path: Path, *, model, config, info, settings, scenes, log_rows,
                   save_every: int, resumed_from) -> dict[str, Any]:  # fmt: skip
    """Final weights (with what rendering needs in their metadata), Parquet log and loss plot."""
    import pandas as pd

    log = pd.DataFrame(log_rows, columns=list(LOG_COLUMNS))
    log["epoch"] = log["epoch"].astype("int64")
    log["step"] = log["step"].astype("int64")
    params = {**settings.fingerprint_dict(), "save_every": save_every}
    inputs = {}
    for i, s in enumerate(scenes):
        for k, v in dataclasses.asdict(s).items():
            if v is not None:
                inputs[f"{k}[{i}]"] = v
    prov = store.provenance("train", params, inputs, extra={"resumed_from": resumed_from})
    metadata = _weights_metadata(config, info, settings, scenes, log, prov)
    model.eval()
    save_decoder(out, model, metadata)
    store.write_parquet(log_path, log, provenance=prov)
    plot_losses(log, plot_path)
    return {"first_loss": float(log["loss"].iloc[0]) if len(log) else None, "final_loss": metadata["final_loss"]}


def train_sbd(
    scenes: Sequence[SceneSources],
    out: str | Path,
    *,
    settings: TrainSettings = TrainSettings(),
    log_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    save_every: int = 5,
    keep_checkpoints: int = 2,
    resume: bool = True,
    device: str = "auto",
    num_workers: int = 0,
    cache: bool | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one decoder on `scenes`; write `out` (+ log, plot). Returns a summary dict."""
    from tqdm.auto import tqdm

    _check_settings(settings, scenes)
    out = Path(out)
    log_path = Path(log_path) if log_path else out.with_name("train_log.parquet")
    plot_path = Path(plot_path) if plot_path else out.with_name("loss.png")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.stem + "_checkpoints")
    dev = torch.device(resolve_device(device))
    use_amp = bool(settings.amp and dev.type == "cuda")
    data, info = _load_data(scenes, settings, num_workers, cache)
    config = _decoder_config(settings, info)
    model, optimizer, scaler = _seeded_model(settings, config, dev, use_amp)
    fingerprint = _fingerprint(settings, scenes)
    n_steps = steps_per_epoch([len(d) for d in data], settings.batch_size)
    start_epoch, step, seconds, log_rows, resumed_from = resume_or_clear(
        checkpoint_dir, fingerprint, resume, model=model, optimizer=optimizer, scaler=scaler, dev=dev)
    bar = tqdm(total=settings.epochs * n_steps, initial=step, desc="train sbd", unit="step", disable=not progress, mininterval=2.0)
    model.train()
    t_start = time.perf_counter() - seconds
    if step != start_epoch * n_steps:
        raise UserError(f"checkpoint {resumed_from} is inconsistent: step {step} is not epoch {start_epoch} x {n_steps} steps")
    for batch in iterate_steps(data, settings.batch_size, settings.seed, step, settings.epochs * n_steps, num_workers):
        epoch, i = divmod(step, n_steps)
        lr = lr_at(settings, epoch + i / n_steps)
        values = _train_step(model, optimizer, scaler, batch, settings, dev, use_amp, lr)
        log_rows.append([epoch, step, *values, lr, time.perf_counter() - t_start])
        step += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{values[0]:.4g}", refresh=False)
        if i < n_steps - 1:
            continue
        done = epoch + 1
        if done % max(1, save_every) == 0 or done == settings.epochs:
            save_rotating_checkpoint(checkpoint_dir, done, keep_checkpoints, model=model, optimizer=optimizer, scaler=scaler,
                             step=step, seconds=time.perf_counter() - t_start, log_rows=log_rows, fingerprint=fingerprint)
        if on_epoch_end is not None:
            on_epoch_end(done)
    bar.close()
    losses = _write_outputs(out, log_path, plot_path, model=model, config=config, info=info, settings=settings,
                            scenes=scenes, log_rows=log_rows, save_every=save_every, resumed_from=resumed_from)
    return {"out": str(out), "log": str(log_path), "plot": str(plot_path), "steps": step, **losses,
            "resumed_from": resumed_from, "video_dim": config.video_dim}
