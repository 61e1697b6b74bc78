"""The files the decoder's training writes: resumable checkpoints, final weights, the loss plot.

A checkpoint (safetensors: weights, optimizer and RNG state, training log) records the
fingerprint of its run: settings, the trainer's code and the inputs' recipe digests. Only a run
with the same fingerprint resumes from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipeline import store
from pipeline.sbd.data import SceneSources
from pipeline.sbd.losses import LOSS_COLUMNS
from pipeline.sbd.model import SemanticBridgingDecoder
from pipeline.sbd.settings import TrainSettings

LOG_COLUMNS = ("epoch", "step") + LOSS_COLUMNS + ("lr", "seconds")
CHECKPOINT_FORMAT = "langfield4d-sbd-train-state/1"
WEIGHTS_FORMAT = "langfield4d-sbd/1"


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


def save_train_state(path: Path, *, model, optimizer, scaler, epoch: int, step: int, seconds: float, log_rows, fingerprint: str,
                     log_columns: Sequence[str] = LOG_COLUMNS, format: str = CHECKPOINT_FORMAT) -> None:
    """A resumable training state (weights, optimizer, RNG, the log so far); `format` and `log_columns`
    let another trainer keep its own checkpoints with the same helpers."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors["log"] = torch.tensor(np.asarray(log_rows, dtype=np.float64).reshape(-1, len(log_columns)))
    meta = {
        "format": format,
        "fingerprint": fingerprint,
        "epoch": str(epoch),
        "step": str(step),
        "seconds": repr(float(seconds)),
        "param_groups": json.dumps(opt["param_groups"]),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}),
        "log_columns": json.dumps(list(log_columns)),
    }
    with store.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def save_rotating_checkpoint(checkpoint_dir: Path, done: int, keep: int, **state) -> None:
    """Write the epoch-`done` checkpoint and keep only the `keep` newest."""
    save_train_state(_checkpoint_path(checkpoint_dir, done), epoch=done, **state)
    old = sorted(checkpoint_dir.glob("epoch_*.safetensors"))
    for path in old[: max(0, len(old) - max(1, keep))]:
        path.unlink(missing_ok=True)


def find_resume_point(directory: Path, fingerprint: str, format: str = CHECKPOINT_FORMAT) -> Path | None:
    """Newest checkpoint in `directory` written by a run with the same fingerprint (settings, inputs, code)."""
    from pipeline.checkpoints import checkpoint_metadata

    if not directory.is_dir():
        return None
    for path in sorted(directory.glob("epoch_*.safetensors"), reverse=True):
        try:
            meta = checkpoint_metadata(path)
        except Exception:
            continue
        if meta.get("format") == format and meta.get("fingerprint") == fingerprint:
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


def resume_or_clear(checkpoint_dir: Path, fingerprint: str, resume: bool, *, model, optimizer, scaler, dev,
                    format: str = CHECKPOINT_FORMAT):
    """(start epoch, step, seconds, log rows, resumed from) from the newest matching checkpoint;
    checkpoints of another recipe (other settings, inputs or code) are removed, never resumed."""
    start_epoch, step, seconds, log_rows = 0, 0, 0.0, []
    resumed_from = None
    if resume:
        ckpt = find_resume_point(checkpoint_dir, fingerprint, format)
        if ckpt is not None:
            start_epoch, step, seconds, log_rows = load_train_state(ckpt, model=model, optimizer=optimizer, scaler=scaler, device=dev)
            resumed_from = str(ckpt)
            print(f"resuming from {ckpt} (epoch {start_epoch})", flush=True)
    if resumed_from is None and checkpoint_dir.is_dir():
        stale = sorted(checkpoint_dir.glob("epoch_*.safetensors"))
        if stale:
            print(f"starting fresh: removing {len(stale)} checkpoint(s) of other settings, inputs or code in {checkpoint_dir}", flush=True)
        for path in stale:
            path.unlink(missing_ok=True)
    return start_epoch, step, seconds, log_rows, resumed_from


def save_decoder(path: str | Path, model: SemanticBridgingDecoder, metadata: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {k: (v if isinstance(v, str) else json.dumps(v, default=store._json_default)) for k, v in metadata.items()}
    with store.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def plot_losses(log, path: str | Path, *, columns: Sequence[str] = LOSS_COLUMNS,
                title: str = "Semantic Bridging Decoder training") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for col in columns:
        values = log[col].to_numpy(dtype=float)
        if np.isfinite(values).any() and np.nanmax(np.abs(values)) > 0:
            ax.plot(log["step"], values, label=col, lw=1.0 if col != "loss" else 2.0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with store.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
