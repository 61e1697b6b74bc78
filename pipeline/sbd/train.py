"""Train the Semantic Bridging Decoder on geometry tokens and autoencoded feature targets.

One scene, or several (repeat --tokens/--masks/--clip-latents/--frames once per scene, in the
same order; --video-latents likewise, `-` for a scene without video features). Losses as
4DLangVGGT: masked L1 (x lambda_l1) + cosine (x lambda_cos) on the s/m/l language latents, RGB
reconstruction lambda_rgb*L1 + (1-lambda_rgb)*L2; the video head, when the scenes have video
latents, gets the same L1 + cosine on its latents. AdamW with linear warm-up then constant or
cosine learning rate, grad clip, AMP on CUDA only, seeded.

Checkpoints (safetensors: weights, optimizer and RNG state, training log) go to
--checkpoint-dir every --save-every epochs; a rerun with the same settings, inputs and code
(the inputs' recipe digests cover the code that made them) resumes from the newest one and ends
with the same weights as an uninterrupted run; any other checkpoint is removed, never resumed.
Writes the final weights (`--out`, with architecture, token layers, output placement and latent
spaces in its metadata), a Parquet training log and a loss-curve PNG.
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
import torch.nn.functional as F

from pipeline import store
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.sbd.data import PLACEMENTS, SceneData, SceneSources, iterate_steps, steps_per_epoch
from pipeline.sbd.model import DecoderConfig, SemanticBridgingDecoder

LOSS_COLUMNS = ("loss", "lang_l1", "lang_cos", "rgb_l1", "rgb_l2", "video_l1", "video_cos")
LOG_COLUMNS = ("epoch", "step") + LOSS_COLUMNS + ("lr", "seconds")
CHECKPOINT_FORMAT = "langfield4d-sbd-train-state/1"
WEIGHTS_FORMAT = "langfield4d-sbd/1"
CACHE_BYTES = 2 << 30  # keep per-pixel targets in memory up to this size (single-process loading)


@dataclass(frozen=True)
class TrainSettings:
    """Upstream defaults (4DLangVGGT train.py) unless noted."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 4e-5
    min_lr: float = 1e-6
    warmup_epochs: float = 20.0
    schedule: str = "constant"  # or "cosine"
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    features: int = 128
    hidden_dim: int = 32
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    video_dim: int | None = None  # None: from video_latents.zarr (0 when no scene has them)
    video_hidden_dim: int = 64  # upstream referenced LanguageHead_Video(hidden_dim=64), never released
    lambda_l1: float = 0.2
    lambda_cos: float = 0.01
    lambda_rgb: float = 0.5  # share of L1 in the RGB loss (upstream lambda_img)
    rgb_loss: bool = True  # upstream --joint_train
    lambda_video: float = 1.0  # ours: weight of the video head's L1 + cosine
    cos_over_width: bool = False  # upstream quirk: cosine over the image-width axis
    balance_objects: bool = False  # ours: every object of a frame weighs the same in the latent losses
    output_placement: str = "resize"  # upstream: output resized to the whole frame; "crop": the crop box only
    seed: int = 42
    amp: bool = True  # CUDA only; CPU always runs fp32

    def fingerprint_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def lr_at(settings: TrainSettings, epoch_float: float) -> float:
    """Per-step learning rate: linear warm-up from 0, then constant or cosine to min_lr."""
    if epoch_float < settings.warmup_epochs:
        return settings.lr * epoch_float / settings.warmup_epochs
    if settings.schedule == "constant":
        return settings.lr
    span = max(settings.epochs - settings.warmup_epochs, 1e-12)
    progress = min(1.0, (epoch_float - settings.warmup_epochs) / span)
    return settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- losses
def _cos_loss(pred, target, valid, *, channel_dim: int, over_width: bool, weight=None) -> torch.Tensor:
    if over_width:
        # Upstream: 1 - cos over the last (image-width) axis of the masked tensors.
        m = valid.unsqueeze(channel_dim).to(pred.dtype)
        return 1.0 - F.cosine_similarity(pred * m, target * m, dim=-1).mean()
    cos = F.cosine_similarity(pred, target, dim=channel_dim)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    if weight is None:
        return (1.0 - cos)[valid].mean()
    return ((1.0 - cos) * weight)[valid].sum() / weight[valid].sum().clamp_min(1e-12)


def _masked_l1(pred, target, valid, *, channel_dim: int, weight=None) -> torch.Tensor:
    # As upstream: L1 of the masked tensors, averaged over every element (masked ones count as 0).
    m = valid.unsqueeze(channel_dim).to(pred.dtype)
    if weight is not None:  # per-pixel weights averaging 1 over the valid pixels
        m = m * weight.unsqueeze(channel_dim).to(pred.dtype)
    return (pred * m - target * m).abs().mean()


def sbd_losses(pred: dict[str, torch.Tensor], batch: dict[str, Any], settings: TrainSettings) -> dict[str, torch.Tensor]:
    lang = pred["lang"].float()
    balance = settings.balance_objects
    lang_weight = batch["lang_weight"] if balance else None
    parts = {
        "lang_l1": _masked_l1(lang, batch["lang"], batch["lang_valid"], channel_dim=2, weight=lang_weight),
        "lang_cos": _cos_loss(lang, batch["lang"], batch["lang_valid"], channel_dim=2,
                              over_width=settings.cos_over_width, weight=lang_weight),
    }
    total = settings.lambda_l1 * parts["lang_l1"] + settings.lambda_cos * parts["lang_cos"]
    rgb = pred["rgb"].float()
    parts["rgb_l1"] = (rgb - batch["rgb"]).abs().mean()
    parts["rgb_l2"] = ((rgb - batch["rgb"]) ** 2).mean()
    if settings.rgb_loss:
        total = total + settings.lambda_rgb * parts["rgb_l1"] + (1.0 - settings.lambda_rgb) * parts["rgb_l2"]
    if "video" in pred and "video" in batch:
        video = pred["video"].float()
        video_weight = batch["video_weight"] if balance else None
        parts["video_l1"] = _masked_l1(video, batch["video"], batch["video_valid"], channel_dim=1, weight=video_weight)
        parts["video_cos"] = _cos_loss(video, batch["video"], batch["video_valid"], channel_dim=1,
                                       over_width=settings.cos_over_width, weight=video_weight)
        total = total + settings.lambda_video * (settings.lambda_l1 * parts["video_l1"] + settings.lambda_cos * parts["video_cos"])
    parts["loss"] = total
    return parts


# ----------------------------------------------------------------------------- optimizer
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- checkpoints
def _fingerprint(settings: TrainSettings, scenes: Sequence[SceneSources]) -> str:
    """What a checkpoint must match to be resumed: settings, the trainer's code, and the inputs'
    recipe digests (which carry the settings and code of every stage that made them)."""
    from pipeline.code_digest import stage_digest

    record = {
        "settings": settings.fingerprint_dict(),
        "code": stage_digest("train"),
        "scenes": [
            {k: (None if v is None else store.input_digest(v)) for k, v in dataclasses.asdict(s).items()} for s in scenes
        ],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _checkpoint_path(directory: Path, epoch: int) -> Path:
    return directory / f"epoch_{epoch:04d}.safetensors"


def save_train_state(path: Path, *, model, optimizer, scaler, epoch: int, step: int, seconds: float, log_rows, fingerprint: str) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors["log"] = torch.tensor(np.asarray(log_rows, dtype=np.float64).reshape(-1, len(LOG_COLUMNS)))
    meta = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "epoch": str(epoch),
        "step": str(step),
        "seconds": repr(float(seconds)),
        "param_groups": json.dumps(opt["param_groups"]),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}),
        "log_columns": json.dumps(list(LOG_COLUMNS)),
    }
    with store.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def find_resume_point(directory: Path, fingerprint: str) -> Path | None:
    """Newest checkpoint in `directory` written by a run with the same fingerprint (settings, inputs, code)."""
    from pipeline.checkpoints import checkpoint_metadata

    if not directory.is_dir():
        return None
    for path in sorted(directory.glob("epoch_*.safetensors"), reverse=True):
        try:
            meta = checkpoint_metadata(path)
        except Exception:
            continue
        if meta.get("format") == CHECKPOINT_FORMAT and meta.get("fingerprint") == fingerprint:
            return path
    return None


def load_train_state(path: Path, *, model, optimizer, scaler, device) -> tuple[int, int, float, list]:
    from safetensors.torch import load_file

    from pipeline.checkpoints import checkpoint_metadata

    meta = checkpoint_metadata(path)
    tensors = load_file(str(path))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    scaler_state = json.loads(meta.get("scaler") or "{}")
    if scaler is not None and scaler.is_enabled() and scaler_state:
        scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    log_rows = tensors["log"].numpy().tolist()
    return int(meta["epoch"]), int(meta["step"]), float(meta["seconds"]), log_rows


# ----------------------------------------------------------------------------- outputs
def save_decoder(path: str | Path, model: SemanticBridgingDecoder, metadata: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {k: (v if isinstance(v, str) else json.dumps(v, default=store._json_default)) for k, v in metadata.items()}
    with store.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def plot_losses(log, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for col in LOSS_COLUMNS:
        values = log[col].to_numpy(dtype=float)
        if np.isfinite(values).any() and np.nanmax(np.abs(values)) > 0:
            ax.plot(log["step"], values, label=col, lw=1.0 if col != "loss" else 2.0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Semantic Bridging Decoder training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with store.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------- training
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

    if not scenes:
        raise UserError("no scenes to train on (config key `sbd.scenes`)")
    if settings.schedule not in ("constant", "cosine"):
        raise UserError(f"sbd.schedule must be 'constant' or 'cosine', got {settings.schedule!r}")
    if settings.epochs < 1 or settings.batch_size < 1:
        raise UserError("sbd.epochs and sbd.batch_size must be >= 1")
    if settings.output_placement not in PLACEMENTS:
        raise UserError(f"sbd.output_placement must be one of {list(PLACEMENTS)}, got {settings.output_placement!r}")
    out = Path(out)
    log_path = Path(log_path) if log_path else out.with_name("train_log.parquet")
    plot_path = Path(plot_path) if plot_path else out.with_name("loss.png")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.stem + "_checkpoints")
    dev = torch.device(resolve_device(device))
    use_amp = bool(settings.amp and dev.type == "cuda")

    data = [SceneData(s, placement=settings.output_placement) for s in scenes]
    if cache is None:
        cache = num_workers == 0 and sum(d.target_bytes() * len(d) for d in data) <= CACHE_BYTES
    for d in data:
        d.set_cache(cache)
    info = _scene_attrs(data)
    video_dim = info["video_dim"] if settings.video_dim is None else int(settings.video_dim)
    if video_dim and info["video_dim"] and video_dim != info["video_dim"]:
        raise UserError(f"sbd.video_dim={video_dim} but the video latents are {info['video_dim']}-d")
    config = DecoderConfig(
        dim_in=info["dim_in"],
        patch_size=info["patch_size"],
        features=settings.features,
        lang_dim=info["lang_dim"],
        hidden_dim=settings.hidden_dim,
        out_channels=tuple(settings.out_channels),
        video_dim=video_dim,
        video_hidden_dim=settings.video_hidden_dim,
    )

    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed % (2**32))
    model = SemanticBridgingDecoder.from_config(config).to(dev)
    optimizer = torch.optim.AdamW(
        param_groups(model, settings.weight_decay), lr=settings.lr, betas=(settings.beta1, settings.beta2)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    fingerprint = _fingerprint(settings, scenes)
    lengths = [len(d) for d in data]
    n_steps = steps_per_epoch(lengths, settings.batch_size)
    start_epoch, step, seconds, log_rows = 0, 0, 0.0, []
    resumed_from = None
    if resume:
        ckpt = find_resume_point(checkpoint_dir, fingerprint)
        if ckpt is not None:
            start_epoch, step, seconds, log_rows = load_train_state(ckpt, model=model, optimizer=optimizer, scaler=scaler, device=dev)
            resumed_from = str(ckpt)
            print(f"resuming from {ckpt} (epoch {start_epoch})", flush=True)
    if resumed_from is None and checkpoint_dir.is_dir():
        # Checkpoints of another recipe (other settings, inputs or code) are never resumed.
        stale = sorted(checkpoint_dir.glob("epoch_*.safetensors"))
        if stale:
            print(f"starting fresh: removing {len(stale)} checkpoint(s) of other settings, inputs or code in {checkpoint_dir}", flush=True)
        for path in stale:
            path.unlink(missing_ok=True)

    bar = tqdm(
        total=settings.epochs * n_steps, initial=step, desc="train sbd", unit="step", disable=not progress, mininterval=2.0
    )
    model.train()
    t_start = time.perf_counter() - seconds
    if step != start_epoch * n_steps:
        raise UserError(f"checkpoint {resumed_from} is inconsistent: step {step} is not epoch {start_epoch} x {n_steps} steps")
    stream = iterate_steps(data, settings.batch_size, settings.seed, step, settings.epochs * n_steps, num_workers)
    for batch in stream:
        epoch, i = divmod(step, n_steps)
        lr = lr_at(settings, epoch + i / n_steps)
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
        values = [float(parts[c].detach()) if c in parts else float("nan") for c in LOSS_COLUMNS]
        log_rows.append([epoch, step, *values, lr, time.perf_counter() - t_start])
        step += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{values[0]:.4g}", refresh=False)
        if i < n_steps - 1:
            continue
        done = epoch + 1
        if done % max(1, save_every) == 0 or done == settings.epochs:
            save_train_state(
                _checkpoint_path(checkpoint_dir, done),
                model=model,
                optimizer=optimizer,
                scaler=scaler,
                epoch=done,
                step=step,
                seconds=time.perf_counter() - t_start,
                log_rows=log_rows,
                fingerprint=fingerprint,
            )
            old = sorted(checkpoint_dir.glob("epoch_*.safetensors"))
            for path in old[: max(0, len(old) - max(1, keep_checkpoints))]:
                path.unlink(missing_ok=True)
        if on_epoch_end is not None:
            on_epoch_end(done)
    bar.close()

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
    metadata = {
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
    model.eval()
    save_decoder(out, model, metadata)
    store.write_parquet(log_path, log, provenance=prov)
    plot_losses(log, plot_path)
    return {
        "out": str(out),
        "log": str(log_path),
        "plot": str(plot_path),
        "steps": step,
        "first_loss": float(log["loss"].iloc[0]) if len(log) else None,
        "final_loss": metadata["final_loss"],
        "resumed_from": resumed_from,
        "video_dim": config.video_dim,
    }


# ----------------------------------------------------------------------------- command line
def _scene_list(args) -> list[SceneSources]:
    n = len(args.tokens)
    for flag, values in (("--masks", args.masks), ("--clip-latents", args.clip_latents), ("--frames", args.frames)):
        if len(values) != n:
            raise UserError(f"{flag} given {len(values)} times but --tokens {n} times: give one per scene, in order")
    video = args.video_latents or []
    if video and len(video) != n:
        raise UserError(f"--video-latents given {len(video)} times for {n} scenes: give one per scene ('-' for none)")
    video = video or ["-"] * n
    return [
        SceneSources(
            tokens=Path(t), masks=Path(m), clip_latents=Path(c), frames=Path(f), video_latents=None if v in ("-", "") else Path(v)
        )
        for t, m, c, f, v in zip(args.tokens, args.masks, args.clip_latents, args.frames, video)
    ]


def add_arguments(parser) -> None:
    d = TrainSettings()
    g = parser.add_argument_group("inputs (repeat once per scene, same order)")
    g.add_argument("--tokens", action="append", required=True, help="tokens.zarr")
    g.add_argument("--masks", action="append", required=True, help="masks.zarr")
    g.add_argument("--clip-latents", action="append", required=True, help="clip_latents.zarr")
    g.add_argument("--frames", action="append", required=True, help="frames.zarr (RGB target)")
    g.add_argument("--video-latents", action="append", default=None, help="video_latents.zarr, or '-' for none")
    o = parser.add_argument_group("outputs")
    o.add_argument("--out", required=True, help="final weights, sbd.safetensors")
    o.add_argument("--log", default=None, help="training log Parquet (default: beside --out, train_log.parquet)")
    o.add_argument("--plot", default=None, help="loss-curve PNG (default: beside --out, loss.png)")
    o.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (default: <out stem>_checkpoints beside --out)")
    o.add_argument("--save-every", type=int, default=5, help="checkpoint every N epochs (default 5)")
    o.add_argument("--keep-checkpoints", type=int, default=2, help="how many recent checkpoints to keep (default 2)")
    o.add_argument("--no-resume", action="store_true", help="start fresh even if a matching checkpoint exists")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="frames per step")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--min-lr", type=float, default=d.min_lr)
    t.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    t.add_argument("--schedule", choices=["constant", "cosine"], default=d.schedule)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument("--lambda-l1", type=float, default=d.lambda_l1)
    t.add_argument("--lambda-cos", type=float, default=d.lambda_cos)
    t.add_argument("--lambda-rgb", type=float, default=d.lambda_rgb, help="L1 share of the RGB loss (rest is L2)")
    t.add_argument("--no-rgb-loss", action="store_true", help="train without RGB reconstruction")
    t.add_argument("--lambda-video", type=float, default=d.lambda_video)
    t.add_argument("--cos-over-width", action="store_true", help="upstream quirk: cosine over the image-width axis")
    t.add_argument("--balance-objects", action="store_true", help="weight latent losses so every object counts equally")
    t.add_argument("--output-placement", choices=list(PLACEMENTS), default=d.output_placement,
                   help="resize: output resized to the whole frame (upstream); crop: the geometry crop box only")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader workers prefetching batches")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    a = parser.add_argument_group("architecture")
    a.add_argument("--features", type=int, default=d.features)
    a.add_argument("--hidden-dim", type=int, default=d.hidden_dim)
    a.add_argument("--out-channels", type=int, nargs=4, default=list(d.out_channels), help="DPT projection widths")
    a.add_argument("--video-dim", type=int, default=None, help="video head width (default: from the video latents; 0 = none)")
    a.add_argument("--video-hidden-dim", type=int, default=d.video_hidden_dim)


def run(args) -> None:
    from pipeline.cli import run_stage, stage_kwargs

    settings = TrainSettings(**stage_kwargs(TrainSettings, args, values={
        "out_channels": tuple(args.out_channels), "rgb_loss": not args.no_rgb_loss, "amp": not args.no_amp}))
    run_stage(train_sbd, args, values={"scenes": _scene_list(args), "settings": settings, "log_path": args.log,
                                       "plot_path": args.plot, "resume": not args.no_resume})
