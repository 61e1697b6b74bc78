"""Feature tables on disk: `features [N,D]` + `rows [L,T,K]`, the contract of docs/formats.md.

One layout serves CLIP features, video features and their autoencoder latents: a row table of
unit vectors and, per (level, frame, mask id), the row to paint at that mask's pixels (-1 where
the id is absent). Identical vectors may share a row (the ground-truth backends embed each
distinct text once), so `N` counts distinct vectors, not masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.levels import MASK_LEVELS as LEVELS  # noqa: F401  (also read from here)
from pipeline.store import atomic_path, create_group, frame_array, open_group, require_arrays, zstd

FEATURE_CHUNK_ROWS = 8192


@dataclass
class FeatureTable:
    features: np.ndarray  # [N, D] float32
    rows: Any  # zarr array [L, T, K] int32 (read lazily, one frame per chunk)
    attrs: dict

    @property
    def space(self) -> dict | None:
        return self.attrs.get("space")

    @property
    def levels(self) -> list[str]:
        return list(self.attrs.get("levels", []))

    def used_rows(self) -> np.ndarray:
        """Row index of every (level, frame, mask) occurrence: what upstream's per-frame tables held."""
        rows = np.asarray(self.rows[...])
        return rows[rows >= 0].astype(np.int64)


def rows_from_assignments(
    assignments: Mapping[tuple[int, int, int], int], *, num_levels: int, num_frames: int
) -> np.ndarray:
    """Dense `[L,T,K]` int32 (-1 = absent) from {(level, frame, id): row}."""
    k = 1 + max((key[2] for key in assignments), default=0)
    rows = np.full((num_levels, num_frames, k), -1, np.int32)
    for (level, t, obj), row in assignments.items():
        rows[level, t, obj] = row
    return rows


def write_feature_table(
    path: str | os.PathLike,
    features: np.ndarray,
    rows: np.ndarray,
    *,
    levels: Sequence[str],
    space: Mapping[str, Any],
    provenance: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write a feature table group; `features` rows must be unit vectors."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be [N,D], got {features.shape}")
    if rows.ndim != 3 or rows.shape[0] != len(levels):
        raise ValueError(f"rows must be [L,T,K] with L={len(levels)}, got {rows.shape}")
    if rows.size and rows.max() >= len(features):
        raise ValueError("rows point past the feature table")
    with atomic_path(path) as tmp:
        group = create_group(tmp)
        n, d = features.shape
        arr = group.create_array(
            "features",
            shape=(n, d),
            chunks=(max(1, min(n, FEATURE_CHUNK_ROWS)), max(1, d)),
            dtype="float32",
            compressors=zstd(),
        )
        if n:
            arr[...] = features
        out = frame_array(group, "rows", rows.shape, "int32", frame_axis=1, fill_value=-1)
        out[...] = rows.astype(np.int32)
        group.attrs.update(
            {
                "levels": list(levels),
                "dim": int(d),
                "num_rows": int(n),
                "space": dict(space),
                "provenance": dict(provenance),
                **dict(attrs or {}),
            }
        )


def read_feature_table(path: str | os.PathLike, *, what: str = "feature table") -> FeatureTable:
    group = open_group(path, what=what)
    require_arrays(group, ["features", "rows"], what=f"{what} {path}")
    attrs = dict(group.attrs)
    if "space" not in attrs:
        raise UserError(f"{what} {path} records no language space (attrs['space']); rebuild it with this version")
    return FeatureTable(np.asarray(group["features"][...], dtype=np.float32), group["rows"], attrs)


def paint(table: FeatureTable, level: int, t: int, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Per-pixel features `[H,W,D]` of one level and frame (`fill` where there is no mask)."""
    rows = np.asarray(table.rows[level, t])
    out = np.full(mask.shape + (table.features.shape[1],), fill, np.float32)
    valid = (mask >= 0) & (mask < len(rows))
    idx = np.full(mask.shape, -1, np.int64)
    idx[valid] = rows[mask[valid]]
    has = idx >= 0
    out[has] = table.features[idx[has]]
    return out
