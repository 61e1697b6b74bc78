"""Train the feature autoencoder (CLIP 512 -> 3, video 4096 -> 6 upstream) -> .safetensors.

Give one features zarr (per-scene model) or several (one model shared across scenes, as the
multi-scene 4DLangVGGT needs a common latent space); all must live in the same language space.
Training set: one row per (level, frame, mask) occurrence, as upstream's per-frame tables.
Adam, batch 64, loss = MSE + cos_weight * (1 - cos); the checkpoint kept is the one with the
lowest full-set loss (MSE + (1 - cos)) over the last epochs (upstream: epochs > 90 of 100).
Defaults are upstream's: `--kind clip` (lr 7e-4, dims 256..3 / 16..512, cos 1e-3) and
`--kind video` (lr 7e-5, dims 2048..6 / 32..4096, cos 1e-2); the decoder's last width is set
to the features' width when it differs from upstream's (e.g. 384 for MiniLM).
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Sequence

import numpy as np

from pipeline.errors import UserError


def _loss(out, x, cos_weight: float, upstream_cos_axis: bool):
    import torch.nn.functional as F

    mse = ((out - x) ** 2).mean()
    cos = 1 - F.cosine_similarity(out, x, dim=0 if upstream_cos_axis else -1).mean()
    return mse + cos_weight * cos, mse, cos


def load_training_rows(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict, list[int]]:
    """(rows [M,D] float32, shared space, rows per input) from one or several feature zarrs."""
    from pipeline.features.artifacts import read_feature_table
    from pipeline.features.text import require_same_space

    if not paths:
        raise UserError("autoencoder-train needs at least one features zarr")
    chunks, counts, space = [], [], None
    for p in paths:
        table = read_feature_table(p, what="features")
        if space is None:
            space = table.space
        else:
            require_same_space(space, table.space, what=f"features {p} vs {paths[0]}")
        rows = table.features[table.used_rows()]
        chunks.append(rows)
        counts.append(len(rows))
    data = np.concatenate(chunks).astype(np.float32)
    if len(data) < 2:
        raise UserError(f"too few feature rows to train an autoencoder ({len(data)}) in {list(map(str, paths))}")
    return data, space, counts


def _fit_decoder_dims(decoder_dims: Sequence[int], dim: int) -> list[int]:
    """The decoder's widths with the last one set to the features' width (the reconstruction's)."""
    decoder_dims = list(decoder_dims)
    if decoder_dims and decoder_dims[-1] != dim:
        decoder_dims[-1] = dim
    return decoder_dims


def _train_epoch(model, optimizer, x_all, order, batch_size: int, cos_weight: float, upstream_cos_axis: bool) -> float:
    """One pass over the rows in `order`; the summed loss x rows."""
    model.train()
    total = 0.0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on one row
            continue
        x = x_all[idx]
        loss, _, _ = _loss(model(x), x, cos_weight, upstream_cos_axis)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total


def _eval_loss(model, x_all, upstream_cos_axis: bool) -> float:
    """MSE + (1 - cos) on the full set, in eval mode: what picks the kept checkpoint."""
    import torch

    model.eval()
    with torch.no_grad():
        _, mse, cos = _loss(model(x_all), x_all, 1.0, upstream_cos_axis)
    return float(mse + cos)


def _fit(model, optimizer, x_all, *, epochs: int, batch_size: int, cos_weight: float, upstream_cos_axis: bool, seed: int,
         progress: bool):  # fmt: skip
    """Train `epochs` epochs; ((best eval loss, its epoch, its state dict), history), the best over the last epochs."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    first_eval = min(int(0.9 * epochs) + 1, epochs - 1)
    best = (float("inf"), -1, None)
    history = []
    for epoch in tqdm(range(epochs), desc="autoencoder", unit="epoch", disable=not progress):
        order = torch.randperm(len(x_all), generator=gen).to(x_all.device)
        total = _train_epoch(model, optimizer, x_all, order, batch_size, cos_weight, upstream_cos_axis)
        record = {"epoch": epoch, "train_loss": total / len(x_all)}
        if epoch >= first_eval:
            eval_loss = _eval_loss(model, x_all, upstream_cos_axis)
            record["eval_loss"] = eval_loss
            if eval_loss < best[0]:
                best = (eval_loss, epoch, copy.deepcopy(model.state_dict()))
        history.append(record)
    return best, history


def _reconstruction_cosine(model, x_all) -> float:
    import torch

    with torch.no_grad():
        model.eval()
        return float(torch.nn.functional.cosine_similarity(model(x_all), x_all, dim=-1).mean())


def train_autoencoder(
    features_paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    encoder_dims: Sequence[int],
    decoder_dims: Sequence[int],
    lr: float,
    epochs: int,
    cos_weight: float,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    upstream_cos_axis: bool = False,
    config_key: str = "autoencoder.clip",
    progress: bool = True,
) -> dict[str, Any]:
    import torch

    from pipeline.features.autoencoder import Autoencoder, save_autoencoder
    from pipeline.features.text import resolve_device
    from pipeline.store import provenance

    if epochs < 1 or batch_size < 2:
        raise UserError(f"`{config_key}`: epochs must be >= 1 and batch_size >= 2 (BatchNorm needs 2 rows)")
    device = resolve_device(device)
    data, space, counts = load_training_rows(features_paths)
    dim = data.shape[1]
    decoder_dims = _fit_decoder_dims(decoder_dims, dim)
    torch.manual_seed(seed)
    model = Autoencoder(dim, encoder_dims, decoder_dims).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x_all = torch.from_numpy(data).to(device)
    start = time.perf_counter()
    best, history = _fit(model, optimizer, x_all, epochs=epochs, batch_size=batch_size, cos_weight=cos_weight,
                         upstream_cos_axis=upstream_cos_axis, seed=seed, progress=progress)  # fmt: skip
    model.load_state_dict(best[2])
    seconds = time.perf_counter() - start
    params = {"encoder_dims": list(encoder_dims), "decoder_dims": decoder_dims, "lr": lr, "epochs": epochs,
              "batch_size": batch_size, "cos_weight": cos_weight, "seed": seed, "upstream_cos_axis": upstream_cos_axis}
    prov = provenance("autoencoder-train", params, {f"features_{i}": p for i, p in enumerate(features_paths)}, extra={"space": space})
    save_autoencoder(model, out_path, space=space,
                     extra={"provenance": prov, "best_epoch": best[1], "best_eval_loss": best[0], "training_rows": counts})
    return {
        "out": str(out_path),
        "rows": int(len(data)),
        "input_dim": int(dim),
        "latent_dim": int(model.latent_dim),
        "encoder_dims": list(encoder_dims),
        "decoder_dims": decoder_dims,
        "best_epoch": best[1],
        "best_eval_loss": best[0],
        "mean_reconstruction_cosine": _reconstruction_cosine(model, x_all),
        "seconds": round(seconds, 3),
        "device": device,
        "history": history,
    }


def kind_defaults(kind: str) -> dict:
    """The training defaults of `--kind` clip or video (autoencoder.<kind> in the config schema)."""
    from pipeline.defaults import section_defaults

    return section_defaults(f"autoencoder.{kind}")


def add_arguments(parser) -> None:
    from pipeline.features.autoencoder import CLIP_DEFAULTS

    parser.add_argument("--features", nargs="+", required=True, help="features zarr(s); several = one shared model")
    parser.add_argument("--out", required=True, help=".safetensors checkpoint to write")
    parser.add_argument("--kind", choices=("clip", "video"), default="clip", help="which upstream defaults to start from")
    parser.add_argument("--encoder-dims", type=int, nargs="+", default=None, help=f"autoencoder.<kind>.encoder_dims (clip: {CLIP_DEFAULTS['encoder_dims']})")
    parser.add_argument("--decoder-dims", type=int, nargs="+", default=None, help="autoencoder.<kind>.decoder_dims")
    parser.add_argument("--lr", type=float, default=None, help="autoencoder.<kind>.lr")
    parser.add_argument("--epochs", type=int, default=None, help="autoencoder.<kind>.epochs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--cos-weight", type=float, default=None, help="autoencoder.<kind>.cos_weight")
    parser.add_argument("--seed", type=int, default=None, help="autoencoder.<kind>.seed")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (the rule's {threads})")
    parser.add_argument("--device", default=None, help="autoencoder.<kind>.device")
    parser.add_argument("--upstream-cos-axis", action="store_true", help="LangSplat's cosine over the batch axis (dim=0)")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> None:
    from pipeline.cli import run_stage

    defaults = kind_defaults(args.kind)
    chosen = {name: defaults[name] if getattr(args, name) is None else getattr(args, name)
              for name in ("encoder_dims", "decoder_dims", "lr", "epochs", "cos_weight", "batch_size", "seed", "device")}
    run_stage(train_autoencoder, args, names={"features_paths": "features", "out_path": "out"},
              values={**chosen, "config_key": f"autoencoder.{args.kind}"},
              summary=lambda s: json.dumps({k: v for k, v in s.items() if k != "history"}))
