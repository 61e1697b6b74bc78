"""Convert a pickled PyTorch checkpoint (.pth/.pt) into safetensors, once.

This is the only place a pickle is ever opened, and only with `torch.load(weights_only=True)`,
which refuses arbitrary Python objects. Every stage loads weights from safetensors through
`load_state_dict`, which refuses pickles with a message that names this command.

Nested checkpoints are unwrapped: the state dict is taken from `--key` if given, else from the
first of `model_state_dict`, `state_dict`, `model` that holds tensors (4DLangVGGT training
checkpoints, SAM 2 and PAGE-4D files), else the file itself (StreamVGGT, VGGT-1B, autoencoders).
A DDP `module.` prefix is stripped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from pipeline.errors import UserError

NESTED_KEYS = ("model_state_dict", "state_dict", "model")
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch zip archive, legacy pickle protocol 2+


def is_pickle(path: str | os.PathLike) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return any(head.startswith(m) for m in _PICKLE_MAGIC)


def load_state_dict(path: str | os.PathLike | None, *, config_key: str, what: str, device: str = "cpu"):
    """Tensors of a safetensors checkpoint; clear errors for a missing file or a pickle."""
    from safetensors.torch import load_file

    if path is None or str(path) == "":
        raise UserError(f"no {what} checkpoint configured: set `{config_key}` to a .safetensors file")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} checkpoint not found: {p} (config key `{config_key}`; expected a .safetensors file)")
    if is_pickle(p):
        raise UserError(
            f"{p} is a pickled checkpoint; pickles are not loaded here (config key `{config_key}`). "
            f"Convert it once: python -m pipeline convert-checkpoint --in {p} --out {p.with_suffix('.safetensors')}"
        )
    try:
        return load_file(str(p), device=device)
    except Exception as exc:
        raise UserError(f"{what} checkpoint {p} is not a readable safetensors file ({exc})") from None


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _find_state_dict(obj, key: str | None):
    import torch

    def all_tensors(d) -> bool:
        return isinstance(d, Mapping) and len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())

    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise UserError(f"checkpoint has no key {key!r}; top-level keys: {found}")
        obj, used = obj[key], key
    else:
        used = None
        if isinstance(obj, Mapping) and not all_tensors(obj):
            for k in NESTED_KEYS:
                if all_tensors(obj.get(k)):
                    obj, used = obj[k], k
                    break
    if not all_tensors(obj):
        raise UserError("could not find a state dict of tensors in the checkpoint; name it with --key")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}
    return state, used


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, key: str | None = None) -> dict[str, str]:
    """Write the state dict found in pickle `src` to safetensors `dst`; return its metadata."""
    import torch
    from safetensors.torch import save_file

    from pipeline.store import atomic_path, file_sha256

    src = Path(src)
    if not src.is_file():
        raise UserError(f"checkpoint not found: {src}")
    try:
        obj = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{src} could not be loaded with weights_only=True ({exc.__class__.__name__}): "
            "it holds Python objects beyond tensors; re-save its state dict with plain torch.save"
        ) from None
    state, used = _find_state_dict(obj, key)
    state = {k: v.contiguous() for k, v in state.items()}
    meta = {"source": src.name, "source_sha256": file_sha256(src), "source_key": used or "", "format": "pt"}
    with atomic_path(dst) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return meta


def add_arguments(parser) -> None:
    parser.add_argument("--in", dest="src", required=True, help="pickled checkpoint (.pth/.pt)")
    parser.add_argument("--out", dest="dst", required=True, help="safetensors file to write")
    parser.add_argument("--key", default=None, help="top-level key holding the state dict (default: auto)")


def run(args) -> None:
    meta = convert_checkpoint(args.src, args.dst, key=args.key)
    print(json.dumps({"out": args.dst, **meta}))
