"""Convert a pickled PyTorch checkpoint (.pth/.pt) into safetensors, once.

This is the only place a pickle is ever opened, and only with `torch.load(weights_only=True)`,
which rebuilds tensors, containers and plain numbers and refuses every other Python object
before anything of it runs. Training checkpoints as released also carry a few harmless
objects: upstream's `argparse.Namespace` of training arguments and numpy scalars. Exactly those
types are allowed through torch's safe-globals mechanism (`SAFE_GLOBALS`); anything else is
still refused. Every stage loads weights from safetensors through `load_state_dict`, which
refuses pickles with a message that names this command.

Formats are told apart by content (`checkpoint_format`), not by suffix or one byte: a
safetensors file is an 8-byte little-endian header length followed by that many bytes of JSON;
a torch file is a zip archive holding `data.pkl`; a legacy torch file is a pickle (protocol 2+).

Nested checkpoints are unwrapped: the state dict is taken from `--key` if given, else from the
first of `model_state_dict`, `state_dict`, `model` that holds tensors (4DLangVGGT training
checkpoints, SAM 2 and PAGE-4D files), else the file itself (StreamVGGT, VGGT-1B, 4DLangSplat
autoencoders). A DDP `module.` prefix is stripped. The other top-level entries that are plain
data (training arguments, epoch, loss, scaler state) are kept as JSON in the metadata key
`training`; entries holding tensors (optimizer state) are dropped and named in `dropped_keys`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import UserError

NESTED_KEYS = ("model_state_dict", "state_dict", "model")
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header


def _numpy_safe_globals() -> list:
    """numpy scalars (e.g. a loss saved as np.float64): a dtype and the bytes of one number."""
    import numpy as np

    try:
        scalar = np._core.multiarray.scalar
    except AttributeError:  # numpy < 2
        scalar = np.core.multiarray.scalar
    numeric = (np.number, np.bool_)
    dtypes = [c for c in vars(np.dtypes).values()
              if isinstance(c, type) and issubclass(c, np.dtype) and issubclass(getattr(c, "type", object), numeric)]
    return list(dict.fromkeys([scalar, np.dtype, *dtypes]))


def safe_globals() -> list:
    """The non-tensor types a released checkpoint may hold and `convert-checkpoint` rebuilds."""
    return [argparse.Namespace, *_numpy_safe_globals()]


# ----------------------------------------------------------------------------- formats
def _safetensors_header(path: Path, size: int) -> dict | None:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        n = int.from_bytes(head, "little")
        if not 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER):
            return None
        first = fh.read(1)
        if first != b"{":
            return None
        raw = first + fh.read(n - 1)
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "))
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def checkpoint_format(path: str | os.PathLike) -> str:
    """'safetensors', 'torch-zip', 'zip' (not a torch file), 'pickle', 'text', 'empty' or 'unknown'."""
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return "empty"
    if _safetensors_header(p, size) is not None:
        return "safetensors"
    with open(p, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
        return "torch-zip" if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names) else "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 3:  # a multi-byte character cut at the 4096-byte boundary
                return "text"
    return "unknown"


def _describe(path: Path, fmt: str) -> str:
    if fmt == "text":
        with open(path, "rb") as fh:
            first = fh.read(200).decode("utf-8", errors="replace").splitlines()
        return f"a text file, not a checkpoint (it starts with {first[0][:60]!r})" if first else "a text file, not a checkpoint"
    return {
        "empty": "an empty file",
        "zip": "a zip archive without data.pkl, not a PyTorch checkpoint (an .npz?)",
        "pickle": "a pickled PyTorch checkpoint (legacy format)",
        "torch-zip": "a pickled PyTorch checkpoint (torch.save zip archive)",
        "safetensors": "a safetensors file",
    }.get(fmt, f"not a checkpoint: neither safetensors, a PyTorch zip archive nor a pickle (first bytes {_first_bytes(path)})")


def _first_bytes(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(8).hex(" ")


def _converted_name(p: Path) -> Path:
    """Where to write a conversion of `p`: never `p` itself (a pickle renamed .safetensors)."""
    if p.suffix == ".safetensors":
        return p.with_name(f"{p.stem}.converted.safetensors")
    return p.with_suffix(".safetensors")


def require_safetensors(path: str | os.PathLike | None, *, config_key: str, what: str) -> Path:
    """`path` as a Path if it is a safetensors file; else one clear line saying what it is."""
    if path is None or str(path) == "":
        raise UserError(f"no {what} checkpoint configured: set `{config_key}` to a .safetensors file")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} checkpoint not found: {p} (config key `{config_key}`; expected a .safetensors file)")
    fmt = checkpoint_format(p)
    if fmt in ("pickle", "torch-zip"):
        raise UserError(
            f"{p} is {_describe(p, fmt)}; pickles are not loaded here (config key `{config_key}`). "
            f"Convert it once: python -m pipeline convert-checkpoint --in {p} --out {_converted_name(p)}"
        )
    if fmt != "safetensors":
        raise UserError(f"{what} checkpoint {p} (config key `{config_key}`) is {_describe(p, fmt)}; expected a .safetensors file")
    return p


def load_state_dict(path: str | os.PathLike | None, *, config_key: str, what: str, device: str = "cpu"):
    """Tensors of a safetensors checkpoint; clear errors for a missing file, a pickle or anything else."""
    from safetensors.torch import load_file

    p = require_safetensors(path, config_key=config_key, what=what)
    try:
        return load_file(str(p), device=device)
    except Exception as exc:
        raise UserError(f"{what} checkpoint {p} is not a readable safetensors file ({exc})") from None


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


# ----------------------------------------------------------------------------- conversion
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


class _NotPlainData(Exception):
    pass


def _plain(value: Any) -> Any:
    """JSON-ready copy of plain data (Namespace -> dict, 0-d tensors and numpy scalars -> numbers)."""
    import numpy as np
    import torch

    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise _NotPlainData
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise _NotPlainData


def _training_metadata(obj, used: str | None) -> dict[str, str]:
    """`training` (JSON of the plain-data top-level entries) and `dropped_keys` of a training dict."""
    if used is None or not isinstance(obj, Mapping):
        return {}
    kept, dropped = {}, []
    for k, v in obj.items():
        if k == used:
            continue
        try:
            kept[str(k)] = _plain(v)
        except _NotPlainData:
            dropped.append(str(k))
    meta = {"training": json.dumps(kept, sort_keys=True)} if kept else {}
    if dropped:
        meta["dropped_keys"] = json.dumps(sorted(dropped))
    return meta


def _unsafe_globals(src: Path, fmt: str, exc: Exception) -> list[str]:
    """The Python objects that made weights_only refuse `src`, found without running any of them."""
    import torch

    if fmt == "torch-zip":
        try:
            allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
            return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(src)) if g not in allowed]
        except Exception:
            pass
    return re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, key: str | None = None) -> dict[str, str]:
    """Write the state dict found in pickle `src` to safetensors `dst`; return its metadata."""
    import torch
    from safetensors.torch import save_file

    from pipeline.store import atomic_path, file_sha256

    src = Path(src)
    if not src.is_file():
        raise UserError(f"checkpoint not found: {src}")
    fmt = checkpoint_format(src)
    if fmt == "safetensors":
        raise UserError(f"{src} is already a safetensors file: name it in the config as it is, no conversion needed")
    if fmt not in ("pickle", "torch-zip"):
        raise UserError(f"{src} is {_describe(src, fmt)}; convert-checkpoint reads .pth/.pt files written by torch.save")
    try:
        # a file object, not the path: torch would pick a loader by the file name
        with open(src, "rb") as fh, torch.serialization.safe_globals(safe_globals()):
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = _unsafe_globals(src, fmt, exc)
        what = f"Python objects of types {', '.join(found)}" if found else f"data weights_only=True cannot read ({exc.__class__.__name__})"
        raise UserError(
            f"{src} holds {what}, beyond tensors, plain data and argparse.Namespace; it was not loaded (nothing of it ran). "
            "In a Python session you trust, load it and torch.save just its state dict, then convert that"
        ) from None
    state, used = _find_state_dict(obj, key)
    state = {k: v.contiguous() for k, v in state.items()}
    meta = {"source": src.name, "source_sha256": file_sha256(src), "source_key": used or "", "format": "pt"}
    meta.update(_training_metadata(obj, used))
    with atomic_path(dst) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return meta


def add_arguments(parser) -> None:
    parser.add_argument("--in", dest="src", required=True, help="pickled checkpoint (.pth/.pt)")
    parser.add_argument("--out", dest="dst", required=True, help="safetensors file to write")
    parser.add_argument("--key", default=None, help="top-level key holding the state dict (default: auto)")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(convert_checkpoint, args, summary=lambda meta: json.dumps({"out": args.dst, **meta}))
