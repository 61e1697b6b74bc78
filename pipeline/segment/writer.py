"""Write id maps frame by frame, then renumber each level densely (0..n-1) in order of appearance.

Backends hand over raw ids (tracker counters, dataset ids); the stored ids are dense so that
later stages can index tables with them, and the object table is counted on the way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.segment import LEVELS
from pipeline.store import frame_array

COLUMNS = ["level", "id", "first_frame", "last_frame", "frames", "pixel_count"]


class MaskWriter:
    def __init__(self, group, num_frames: int, height: int, width: int):
        self.array = frame_array(
            group, "masks", (len(LEVELS), num_frames, height, width), "int32", frame_axis=1, fill_value=-1
        )
        self.array.attrs["levels"] = list(LEVELS)
        self.num_frames = num_frames
        # per level: raw id -> [first, last, frames, pixels]
        self._stats: list[dict[int, list[int]]] = [{} for _ in LEVELS]
        self._written = np.zeros(num_frames, dtype=bool)

    def write(self, t: int, id_maps: np.ndarray) -> None:
        """id_maps: [4,H,W] integer raw ids, -1 = no mask."""
        self.array[:, t] = id_maps.astype(np.int32, copy=False)
        self._written[t] = True
        for level, id_map in enumerate(id_maps):
            ids, counts = np.unique(id_map[id_map >= 0], return_counts=True)
            stats = self._stats[level]
            for raw, n in zip(ids.tolist(), counts.tolist()):
                rec = stats.get(raw)
                if rec is None:
                    stats[raw] = [t, t, 1, n]
                else:
                    rec[0], rec[1] = min(rec[0], t), max(rec[1], t)
                    rec[2] += 1
                    rec[3] += n

    def finish(self) -> tuple[pd.DataFrame, list[dict[int, int]]]:
        """Renumber in place; return the object table and, per level, raw id -> stored id."""
        missing = np.flatnonzero(~self._written)
        if len(missing):
            raise RuntimeError(f"frames {missing[:5].tolist()} were never written")
        remaps = []
        for stats in self._stats:
            order = sorted(stats, key=lambda raw: (stats[raw][0], raw))
            remaps.append({raw: dense for dense, raw in enumerate(order)})
        if any(any(raw != dense for raw, dense in m.items()) for m in remaps):
            luts = [_lookup(m) for m in remaps]
            for t in range(self.num_frames):
                frame = self.array[:, t]
                self.array[:, t] = np.stack([lut(f) for lut, f in zip(luts, frame)])
        rows = [
            (LEVELS[level], remaps[level][raw], *stats[raw])
            for level, stats in enumerate(self._stats)
            for raw in stats
        ]
        table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["level", "id"], key=_level_order).reset_index(drop=True)
        for col in COLUMNS[1:]:
            table[col] = table[col].astype("int64")
        return table, remaps


def _level_order(column: pd.Series) -> pd.Series:
    return column.map(LEVELS.index) if column.name == "level" else column


def _lookup(remap: dict[int, int]):
    keys = np.array(sorted(remap), dtype=np.int64)
    values = np.array([remap[k] for k in keys], dtype=np.int32)

    def apply(id_map: np.ndarray) -> np.ndarray:
        out = np.full(id_map.shape, -1, dtype=np.int32)
        present = id_map >= 0
        out[present] = values[np.searchsorted(keys, id_map[present])]
        return out

    return apply
