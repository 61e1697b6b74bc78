"""The feature autoencoder of LangSplat / 4DLangSplat: an MLP with unit-norm latents and outputs.

Parameter names follow upstream's `Autoencoder` exactly, so its released `clip_best_ckpt.pth` /
`video_best_ckpt.pth` load after `convert-checkpoint`:
  encoder = [Linear(in, e0), BatchNorm1d(e0), ReLU, Linear(e0, e1), BatchNorm1d(e1), ReLU, ...]
            -> keys encoder.0.*, encoder.1.* (BN: weight, bias, running_mean, running_var,
               num_batches_tracked), encoder.3.*, encoder.4.*, encoder.6.*, ...
  decoder = [Linear(e_last, d0), ReLU, Linear(d0, d1), ReLU, ...] -> decoder.0.*, decoder.2.*, ...
Latents (encoder output) and reconstructions (decoder output) are L2-normalised.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pipeline.defaults import section_defaults
from pipeline.errors import UserError

# upstream defaults (4DLangSplat scripts/train_autoencoder.sh, LangSplat), from the config schema
TRAINING_KEYS = ("encoder_dims", "decoder_dims", "lr", "epochs", "batch_size", "cos_weight")
CLIP_DEFAULTS = {k: v for k, v in section_defaults("autoencoder.clip").items() if k in TRAINING_KEYS}
VIDEO_DEFAULTS = {k: v for k, v in section_defaults("autoencoder.video").items() if k in TRAINING_KEYS}


class Autoencoder(nn.Module):
    def __init__(self, input_dim: int, encoder_dims: Sequence[int], decoder_dims: Sequence[int]):
        super().__init__()
        if not encoder_dims or not decoder_dims:
            raise UserError("autoencoder needs at least one encoder and one decoder layer")
        if decoder_dims[-1] != input_dim:
            raise UserError(
                f"autoencoder decoder must end at the feature width {input_dim}, got decoder dims {list(decoder_dims)}"
            )
        self.input_dim = int(input_dim)
        self.encoder_dims = [int(d) for d in encoder_dims]
        self.decoder_dims = [int(d) for d in decoder_dims]
        enc: list[nn.Module] = [nn.Linear(input_dim, encoder_dims[0])]
        for prev, cur in zip(encoder_dims[:-1], encoder_dims[1:]):
            enc += [nn.BatchNorm1d(prev), nn.ReLU(), nn.Linear(prev, cur)]
        dec: list[nn.Module] = [nn.Linear(encoder_dims[-1], decoder_dims[0])]
        for prev, cur in zip(decoder_dims[:-1], decoder_dims[1:]):
            dec += [nn.ReLU(), nn.Linear(prev, cur)]
        self.encoder = nn.ModuleList(enc)
        self.decoder = nn.ModuleList(dec)

    @property
    def latent_dim(self) -> int:
        return self.encoder_dims[-1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            x = layer(x)
        return nn.functional.normalize(x, dim=-1, eps=1e-12)

    def decode_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """Activations before the last Linear: `decode` is normalize(decoder[-1](decode_hidden(z))), so
        cosines of decoded features with texts can be scored from these (`evaluate.encoders.SplitDecoder`)."""
        for layer in self.decoder[:-1]:
            z = layer(z)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.decoder[-1](self.decode_hidden(z)), dim=-1, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


_LINEAR = re.compile(r"^(encoder|decoder)\.(\d+)\.weight$")


def dims_from_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[int, list[int], list[int]]:
    """(input_dim, encoder_dims, decoder_dims) read off the Linear weight shapes."""
    linears: dict[str, list[tuple[int, torch.Size]]] = {"encoder": [], "decoder": []}
    for key, value in state.items():
        m = _LINEAR.match(key)
        if m and value.ndim == 2:
            linears[m.group(1)].append((int(m.group(2)), value.shape))
    if not linears["encoder"] or not linears["decoder"]:
        raise UserError("not an autoencoder state dict: no encoder.N.weight / decoder.N.weight matrices")
    enc = [s for _, s in sorted(linears["encoder"])]
    dec = [s for _, s in sorted(linears["decoder"])]
    return int(enc[0][1]), [int(s[0]) for s in enc], [int(s[0]) for s in dec]


def save_autoencoder(
    model: Autoencoder, path: str | os.PathLike, *, space: Mapping[str, Any] | None, extra: Mapping[str, Any] | None = None
) -> None:
    """safetensors in upstream's key layout; dims and language space as JSON metadata."""
    from safetensors.torch import save_file

    from pipeline.store import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": "pt",
        "input_dim": json.dumps(model.input_dim),
        "encoder_dims": json.dumps(model.encoder_dims),
        "decoder_dims": json.dumps(model.decoder_dims),
        "space": json.dumps(dict(space) if space else None),
    }
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v, sort_keys=True, default=str)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_autoencoder(
    path: str | os.PathLike, *, config_key: str = "autoencoder.checkpoint", device: str = "cpu"
) -> tuple[Autoencoder, dict[str, Any]]:
    """(model in eval mode, metadata). Dims come from metadata, else from the weight shapes
    (a converted upstream checkpoint carries none); `metadata["space"]` is None when unknown."""
    from pipeline.checkpoints import checkpoint_metadata, load_state_dict

    state = load_state_dict(path, config_key=config_key, what="autoencoder", device=device)
    raw = checkpoint_metadata(path)
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (TypeError, ValueError):
            meta[k] = v
    input_dim, enc, dec = dims_from_state_dict(state)
    for name, found in (("input_dim", input_dim), ("encoder_dims", enc), ("decoder_dims", dec)):
        if name in meta and meta[name] != found:
            raise UserError(f"autoencoder {path}: metadata {name}={meta[name]} disagrees with the weights ({found})")
    model = Autoencoder(input_dim, enc, dec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"autoencoder {path} (config key `{config_key}`) does not have the Autoencoder layout: {exc}") from None
    meta.update({"input_dim": input_dim, "encoder_dims": enc, "decoder_dims": dec})
    meta.setdefault("space", None)
    return model.to(device).eval(), meta


@torch.no_grad()
def _map_rows(fn, rows, width: int, *, batch_size: int, device: str):
    """fn over float rows in batches -> float32 numpy [N, width]."""
    import numpy as np

    out = []
    for i in range(0, len(rows), batch_size):
        x = torch.as_tensor(np.asarray(rows[i : i + batch_size]), dtype=torch.float32, device=device)
        out.append(fn(x).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def encode_array(model: Autoencoder, features, *, batch_size: int = 65536, device: str = "cpu"):
    """Latents of float rows [N, D] -> float32 numpy [N, latent] (eval mode)."""
    model.eval()
    return _map_rows(model.encode, features, model.latent_dim, batch_size=batch_size, device=device)


def decode_array(model: Autoencoder, latents, *, batch_size: int = 65536, device: str = "cpu"):
    """Unit features of latent rows [N, latent] -> float32 numpy [N, D] (eval mode)."""
    model.eval()
    return _map_rows(model.decode, latents, model.input_dim, batch_size=batch_size, device=device)
