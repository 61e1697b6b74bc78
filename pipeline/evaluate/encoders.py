"""Adapter between evaluation and the feature side: text encoders, autoencoder decoders, spaces.

Evaluation needs two things from the feature stages: a decoder from latents to the feature
space (`pipeline.features.autoencoder.load_autoencoder(path).decode`) and text vectors in that
same space (`pipeline.features.text.encode_texts(space, texts, query=...)`), or precomputed
vectors from an npz. Everything else in `pipeline.evaluate` works on the plain objects below,
so tests build them directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from pipeline.errors import UserError

Decoder = Callable[[torch.Tensor], torch.Tensor]  # [N, k] latents -> [N, D] unit features


@dataclass
class TextVectors:
    """Unit text vectors by name, in one feature space."""

    vectors: dict[str, np.ndarray]
    space: Mapping | None  # None when the source did not say

    def matrix(self, names) -> torch.Tensor:
        missing = [n for n in names if n not in self.vectors]
        if missing:
            raise UserError(f"no text embedding for {missing}; have {sorted(self.vectors)[:20]}")
        m = torch.as_tensor(np.stack([self.vectors[n] for n in names]), dtype=torch.float32)
        return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def require_same_space(render_space, other_space, *, what: str, other: str, log=None) -> None:
    """Refuse two recorded spaces that differ (`pipeline.features.text.same_space`, the one rule).

    A side that records no space (a converted upstream checkpoint, an npz without spaces) cannot
    be checked: that is said in a note, not silently passed and not refused.
    """
    from pipeline.features.text import same_space

    if render_space is None or other_space is None:
        if log is not None:
            missing = "the render" if render_space is None else other
            log(f"note: {missing} records no {what.replace('_', ' ')}; the language spaces of render and {other} are not checked")
        return
    if not same_space(render_space, other_space):
        raise UserError(
            f"language spaces differ: the render's {what} is {json.dumps(render_space, sort_keys=True)} but "
            f"{other} is {json.dumps(other_space, sort_keys=True)}; relevancy across spaces is meaningless"
        )


def parse_space(value) -> dict | None:
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    if isinstance(value, np.ndarray):
        value = value.item()
    try:
        out = json.loads(str(value))
    except ValueError:
        raise UserError(f"space description is not JSON: {str(value)[:80]!r}") from None
    return out if isinstance(out, dict) else None


def encode_texts(space: Mapping | None, texts: list[str], *, query: bool, what: str) -> TextVectors:
    """Encode texts with the encoder the space names (the feature side's text module)."""
    if space is None:
        raise UserError(f"the render does not record its {what} space; pass --query-embeddings with precomputed vectors")
    from pipeline.features.text import encode_texts as features_encode_texts

    texts = list(dict.fromkeys(texts))
    vecs = np.asarray(features_encode_texts(dict(space), texts, query=query), dtype=np.float32)
    return TextVectors(vectors=dict(zip(texts, vecs)), space=dict(space))


QUERY_EMBEDDING_GROUPS = {"clip": ("clip",), "video": ("video", "e5")}  # group -> npz key prefixes, newest first


def load_query_embeddings(path: str | Path) -> tuple[TextVectors, TextVectors]:
    """(clip, video) text vectors from an npz with `clip_names`/`clip_vectors`, `video_names`/`video_vectors`
    and optionally `clip_space`/`video_space` (JSON strings, as recorded in the render's attrs).

    Files written before the rename, with `e5_names`/`e5_vectors`/`e5_space`, read the same.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"query embeddings not found: {p} (config key `evaluate.query_embeddings`)")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{p} is not a readable npz ({exc.__class__.__name__})") from None

    def group(prefixes: tuple[str, ...]) -> TextVectors:
        prefix = next((k for k in prefixes if f"{k}_names" in data), None)
        if prefix is None:
            return TextVectors(vectors={}, space=None)
        names = [str(n) for n in data[f"{prefix}_names"]]
        if f"{prefix}_vectors" not in data:
            raise UserError(f"{p} has {prefix}_names but no {prefix}_vectors")
        vecs = np.asarray(data[f"{prefix}_vectors"], dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(names):
            raise UserError(f"{p}: {prefix}_vectors must be [{len(names)}, D], got {list(vecs.shape)}")
        space = parse_space(data[f"{prefix}_space"]) if f"{prefix}_space" in data else None
        return TextVectors(vectors=dict(zip(names, vecs)), space=space)

    return group(QUERY_EMBEDDING_GROUPS["clip"]), group(QUERY_EMBEDDING_GROUPS["video"])


def load_autoencoder_decoder(path: str | Path | None, *, config_key: str, what: str, device: str = "cpu") -> tuple[Decoder, dict | None, int]:
    """(decode function, recorded space or None, latent dim) of an autoencoder checkpoint."""
    if path is None or str(path) == "":
        raise UserError(f"no {what} configured: set `{config_key}` to a .safetensors autoencoder")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p} (config key `{config_key}`; expected a .safetensors autoencoder)")
    from pipeline.features.autoencoder import load_autoencoder

    module, meta = load_autoencoder(p)
    module.eval().to(device)
    space = parse_space(meta.get("space"))
    dims = meta.get("encoder_dims")
    dims = json.loads(dims) if isinstance(dims, str) else dims
    latent_dim = int(dims[-1]) if dims else -1

    return ModuleDecoder(module, device), space, latent_dim


class ModuleDecoder:
    """An autoencoder's `decode` as a Decoder, keeping the module so `split_decoder` can cut it."""

    def __init__(self, module, device: str = "cpu"):
        self.module = module
        self.device = device

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module.decode(latents.to(self.device))


@dataclass
class SplitDecoder:
    """A decoder cut before its last linear layer (weight W, bias b): its unit features are
    (W h + b) / |W h + b|, so their cosine with a unit text q is (h . W^T q + b . q) / |W h + b|.
    Keeping h / |W h + b| and 1 / |W h + b| per pixel scores any text exactly (to float rounding)
    with one [N, m] x [m] product, without the [N, D] features (m = 256 < D = 512 upstream)."""

    hidden: Decoder  # [N, k] latents -> [N, m] activations before the last layer
    weight: torch.Tensor | None  # [D, m]; None: the decoder's output is h itself (W = I, b = 0)
    bias: torch.Tensor | None  # [D]

    def scaled_hidden(self, latents: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """(h / |W h + b| [N, m], 1 / |W h + b| [N]) in float32, on the latents' device, in chunks."""
        hs, inv = [], []
        with torch.no_grad():
            for i in range(0, len(latents), chunk):
                h = self.hidden(latents[i : i + chunk].float()).float()
                out = h if self.weight is None else torch.nn.functional.linear(h, self.weight, self.bias)
                r = 1.0 / torch.linalg.vector_norm(out, dim=-1).clamp_min(1e-12)
                hs.append((h * r[:, None]).to(latents.device))
                inv.append(r.to(latents.device))
        if not hs:
            return torch.zeros((0, 0)), torch.zeros(0)
        return torch.cat(hs), torch.cat(inv)

    def text_side(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W^T q [m, Q], b . q [Q]) of unit texts [Q, D]: cosines = scaled_h @ W^T q + inv_norm * (b . q)."""
        text = text.float()
        if self.weight is None:
            return text.T, torch.zeros(len(text), device=text.device)
        w = self.weight.to(text.device).float()
        b = self.bias.to(text.device).float() if self.bias is not None else torch.zeros(len(w), device=text.device)
        return w.T @ text.T, text @ b


def split_decoder(decoder: Decoder) -> SplitDecoder:
    """An autoencoder's decoder cut before its last Linear; any other decoder uncut (W = I)."""
    module = getattr(decoder, "module", None)
    last = module.decoder[-1] if module is not None and hasattr(module, "decode_hidden") else None
    if not isinstance(last, torch.nn.Linear):
        return SplitDecoder(hidden=decoder, weight=None, bias=None)

    def hidden(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module.decode_hidden(latents.to(decoder.device))

    return SplitDecoder(hidden=hidden, weight=last.weight.detach(), bias=None if last.bias is None else last.bias.detach())


def decode_unit(decoder: Decoder, latents: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Decoded features in float32, L2-normalised again (a no-op for upstream decoders), in chunks."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(latents), chunk):
            f = decoder(latents[i : i + chunk].float()).float().cpu()
            outs.append(f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    if not outs:
        return torch.zeros((0, 0))
    return torch.cat(outs)


def decoded_cosines(decoder: Decoder, latents: torch.Tensor, text: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Cosines [N, Q] of decoded latents [N, k] with unit text vectors [Q, D], never holding [N, D]."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(latents), chunk):
            f = decoder(latents[i : i + chunk].float()).float()
            f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            outs.append((f @ text.to(f.device).T).cpu())
    return torch.cat(outs) if outs else torch.zeros((0, text.shape[0]))

