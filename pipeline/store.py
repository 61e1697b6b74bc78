"""Artifacts on disk: zarr groups chunked one frame per chunk, atomic writes, provenance.

Every artifact is written beside its final path and renamed into place only when complete,
so a killed job never leaves something a later run would take as finished. Every artifact
carries `provenance` in its attrs / metadata: stage, parameters, package version, the digest
of the stage's code, the recipe digests of its inputs, and checkpoint sha256 where a model was
loaded. Recipe digests chain: an artifact's digest changes whenever the settings, inputs or code
of any stage that led to it changed, so a resumable checkpoint or a cache keyed on them is
never reused for other inputs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pipeline import __version__
from pipeline.errors import UserError


# ----------------------------------------------------------------------------- atomic writes
TMP_MARK = ".tmp-"
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # a disk or folder that takes no more
HOST = socket.gethostname().replace("-", "_") or "localhost"  # `-` separates the pid in temporary names


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    The temporary is `<name>.tmp-<host>-<pid>`. A kill -9 leaves it behind; the next write into
    the same folder removes the ones whose writer is gone (same host, pid not running).
    A full disk or read-only folder while writing is reported with this output's path.
    """
    final = Path(path)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{HOST}-{os.getpid()}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent)
        _remove(tmp)
        try:
            yield tmp
        except BaseException:
            _remove(tmp)
            raise
        _remove(final)
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS and (exc.filename is None or str(exc.filename).startswith(str(tmp))):
            exc.filename = str(final)  # name the output, not its temporary
        raise


def _writer_alive(host: str, pid: int) -> bool:
    """Whether the process that owns a temporary may still be writing it (unknown hosts: yes)."""
    if host != HOST:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove `*.tmp-<host>-<pid>` entries of `folder` left by writers that no longer run."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        _, mark, owner = entry.name.rpartition(TMP_MARK)
        host, _, pid = owner.rpartition("-")
        if not mark or not pid.isdigit():
            continue
        if not _writer_alive(host or HOST, int(pid)):  # `.tmp-<pid>`: written here by an older version
            try:
                _remove(entry)
            except FileNotFoundError:  # another run cleaned it first
                continue
            removed.append(entry)
            print(f"removed {entry}: a temporary left by a killed run (pid {pid})", file=sys.stderr)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike, frame, provenance: Mapping[str, Any] | None = None) -> None:
    """Write a pandas DataFrame as Parquet with provenance in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if provenance is not None:
        meta = dict(table.schema.metadata or {})
        meta[b"provenance"] = json.dumps(provenance, sort_keys=True, default=_json_default).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- zarr
def zstd():
    import zarr

    return zarr.codecs.ZstdCodec(level=3)


def create_group(path: str | os.PathLike):
    import zarr

    return zarr.open_group(str(path), mode="w", zarr_format=3)


def frame_array(group, name: str, shape: tuple[int, ...], dtype, *, frame_axis: int = 0, fill_value=0):
    """Create an array chunked one frame per chunk (along `frame_axis`), zstd-compressed."""
    chunks = list(shape)
    chunks[frame_axis] = 1
    for axis in range(frame_axis):
        chunks[axis] = 1
    return group.create_array(
        name,
        shape=shape,
        chunks=tuple(max(1, c) for c in chunks),
        dtype=dtype,
        compressors=zstd(),
        fill_value=fill_value,
    )


def open_group(path: str | os.PathLike, *, what: str = "artifact"):
    """Open a finished zarr group for reading, or fail with a line that names it."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    try:
        return zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises several kinds for "not a group"
        raise UserError(f"{what} at {p} is not a readable zarr group ({exc.__class__.__name__})") from None


def require_arrays(group, names: list[str], *, what: str) -> None:
    missing = [n for n in names if n not in group]
    if missing:
        raise UserError(f"{what} lacks array(s) {', '.join(missing)}; has {sorted(group.array_keys())}")


# ----------------------------------------------------------------------------- provenance
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_digest(path: str | os.PathLike) -> str:
    """Digest of an input: its recipe digest if it is one of our artifacts, else its content.

    Folders that are not artifacts (image folders, scene folders, the generated demo scene,
    model folders of many GB) are hashed by their file listing with sizes and modification
    times: cheap, and it changes whenever a file is added, removed or rewritten.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"input not found: {p}")
    recorded = read_provenance(p)
    if recorded and "digest" in recorded:
        return recorded["digest"]
    if p.is_file():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        stat = f.stat()
        h.update(f"{f.relative_to(p).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """Provenance recorded in a zarr group, a Parquet file or a JSON file we wrote; else None."""
    p = Path(path)
    try:
        if p.is_dir() and (p / "zarr.json").exists():
            import zarr

            return dict(zarr.open_group(str(p), mode="r").attrs).get("provenance")
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.read_schema(p).metadata or {}
            raw = meta.get(b"provenance")
            return json.loads(raw) if raw else None
        if p.suffix == ".json" and p.stat().st_size < (1 << 24):
            obj = json.loads(p.read_text())
            return obj.get("provenance") if isinstance(obj, dict) else None
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="np") as fh:
                raw = (fh.metadata() or {}).get("provenance")
            return json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    return None


def provenance(
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str | os.PathLike] | None = None,
    *,
    checkpoints: Mapping[str, str | os.PathLike | None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Provenance for a new artifact; `digest` identifies its recipe (stage, params, inputs, code).

    `stage` is a registered command (`python -m pipeline <stage>`); `code` is the digest of
    everything that command runs (`pipeline.code_digest`), the same value its rule passes.
    """
    from pipeline.code_digest import stage_digest

    record: dict[str, Any] = {
        "stage": stage,
        "params": json.loads(json.dumps(dict(params), default=_json_default)),
        "package": "langfield4d",
        "version": __version__,
        "code": stage_digest(stage),
        "inputs": {k: {"path": str(v), "digest": input_digest(v)} for k, v in (inputs or {}).items()},
        "checkpoints": {
            k: (None if v is None else {"path": str(v), "sha256": file_sha256(v)}) for k, v in (checkpoints or {}).items()
        },
    }
    if extra:
        record.update(json.loads(json.dumps(dict(extra), default=_json_default)))
    recipe = json.dumps(record, sort_keys=True).encode()
    record["digest"] = hashlib.sha256(recipe).hexdigest()
    record["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return record
