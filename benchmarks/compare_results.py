"""Compare two result folders artifact by artifact: `python benchmarks/compare_results.py A B`.

For every zarr group (each array in it), Parquet table (each column), safetensors file (each
tensor) and JSON file (each number) found under A or B, prints one line with the largest absolute
difference between the two runs, and the artifacts that exist in only one of them. Values that
are not numbers (strings, names) count as a difference of `inf` where they differ. Provenance and
other metadata (zarr attributes, Parquet schema metadata, safetensors header metadata) record
when, where and with which code a file was made; they are left out, since two runs of the same
recipe differ there by design. Images and videos (figures) are not compared.

Exit status: 0 when every artifact exists in both and all differences are <= --tol (default 0),
1 otherwise. Useful to check that a refactor kept the outputs, or how far two runs drift apart.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

KINDS = (".zarr", ".parquet", ".safetensors", ".json")
SKIP_PARTS = (".snakemake", "__pycache__")
JSON_SKIP_KEYS = {"provenance"}


def find_artifacts(root: Path) -> dict[str, str]:
    """relative path -> kind, for every artifact below `root` (a zarr group's own files excluded)."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_PARTS for part in rel.parts) or any(p.endswith(".zarr") for p in rel.parts[:-1]):
            continue
        kind = next((k for k in KINDS if path.name.endswith(k)), None)
        if kind == ".zarr" and path.is_dir() or kind not in (None, ".zarr") and path.is_file():
            found[str(rel)] = kind
    return found


def _array_diff(a, b) -> float:
    """Largest |a - b| (inf where shapes, kinds or non-numeric values differ; 0 for equal NaNs)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    numeric = all(x.dtype.kind in "biuf" for x in (a, b))
    if not numeric:
        return 0.0 if all(map(_same_object, a.ravel().tolist(), b.ravel().tolist())) else math.inf
    a64, b64 = np.atleast_1d(a.astype(np.float64)), np.atleast_1d(b.astype(np.float64))
    with np.errstate(invalid="ignore"):
        diff = np.where(a64 == b64, 0.0, np.abs(a64 - b64))  # equal infinities: 0
    diff[np.isnan(a64) & np.isnan(b64)] = 0.0
    diff[np.isnan(diff)] = math.inf  # NaN on one side only
    return float(diff.max())


def _same_object(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return _array_diff(x, y) == 0.0
    return x == y


def _zarr_members(path: Path) -> dict[str, np.ndarray]:
    import warnings

    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(g, prefix: str) -> None:
        for name, array in g.arrays():
            out[prefix + name] = array
        for name, sub in g.groups():
            walk(sub, f"{prefix}{name}/")

    with warnings.catch_warnings():  # snakemake's timestamp files inside a group are not zarr's
        warnings.simplefilter("ignore")
        walk(zarr.open_group(str(path), mode="r"), "")
    return out


def _parquet_members(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _safetensors_members(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key).float().numpy() for key in f.keys()}


def _json_members(path: Path) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in JSON_SKIP_KEYS:
                    walk(v, f"{key}/{k}" if key else str(k))
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            out[key] = np.asarray(value, dtype=np.float64)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        else:
            out[key] = value

    walk(json.loads(path.read_text()), "")
    return out


READERS = {".zarr": _zarr_members, ".parquet": _parquet_members, ".safetensors": _safetensors_members, ".json": _json_members}


def compare_artifact(a: Path, b: Path, kind: str) -> tuple[float, str]:
    """(largest difference over the artifact's members, the member where it is or a note)."""
    ma, mb = READERS[kind](a), READERS[kind](b)
    only = sorted(set(ma) ^ set(mb))
    if only:
        return math.inf, f"members in one only: {', '.join(only[:5])}"
    worst, where = 0.0, None
    for key in sorted(ma):
        d = _array_diff(_values(ma[key]), _values(mb[key]))
        if d > worst:
            worst, where = d, key
    return worst, where or f"{len(ma)} members equal"


def _values(member):
    """A zarr array read whole; anything else as it is."""
    return member[...] if hasattr(member, "shape") and not isinstance(member, np.ndarray) else member


def compare(a: Path, b: Path, tol: float = 0.0, out=sys.stdout) -> bool:
    """Print one line per artifact; True when every artifact is in both and within `tol`."""
    arts_a, arts_b = find_artifacts(a), find_artifacts(b)
    ok = True
    for rel in sorted(set(arts_a) | set(arts_b)):
        if rel not in arts_b or rel not in arts_a:
            print(f"only in {'A' if rel in arts_a else 'B'}  {rel}", file=out)
            ok = False
            continue
        try:
            worst, note = compare_artifact(a / rel, b / rel, arts_a[rel])
        except Exception as exc:  # an unreadable artifact is a difference, reported, not a crash
            worst, note = math.inf, f"could not read: {exc}"
        ok &= worst <= tol
        print(f"{worst:<12.4g} {rel}  ({note})", file=out)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="first result folder (e.g. a run's results/)")
    parser.add_argument("b", type=Path, help="second result folder")
    parser.add_argument("--tol", type=float, default=0.0, help="largest difference still counted as equal")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
    print("max |A-B|    artifact  (member with the largest difference)")
    return 0 if compare(args.a, args.b, args.tol) else 1


if __name__ == "__main__":
    sys.exit(main())
