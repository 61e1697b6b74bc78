"""A contact sheet of mask overlays: frames across, levels down, one colour per id.

An id keeps its colour in every frame, so a glance along a row shows whether ids stay
stable over time.
"""

from __future__ import annotations

import colorsys
import os

import numpy as np

from pipeline.segment import LEVELS
from pipeline.store import atomic_path

ALPHA = 0.6
CELL_WIDTH = 240


def id_colours(n: int) -> np.ndarray:
    """[n,3] float colours in [0,1], well apart for neighbouring ids (golden-ratio hues)."""
    hues = (np.arange(n) * 0.618033988749895 + 0.1) % 1.0
    values = np.where(np.arange(n) % 2 == 0, 0.95, 0.75)
    return np.array([colorsys.hsv_to_rgb(h, 0.8, v) for h, v in zip(hues, values)]).reshape(n, 3)


def overlay(rgb: np.ndarray, id_map: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Frame with a colour per id and dark id boundaries; float [H,W,3] in [0,1]."""
    image = rgb.astype(np.float32) / 255.0
    present = id_map >= 0
    if present.any():
        image[present] = (1 - ALPHA) * image[present] + ALPHA * colours[id_map[present] % len(colours)]
    edge = np.zeros(id_map.shape, dtype=bool)
    edge[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
    edge[1:, :] |= id_map[1:, :] != id_map[:-1, :]
    image[edge] *= 0.25
    return image


def pick_frames(num_frames: int, columns: int) -> list[int]:
    if num_frames <= columns:
        return list(range(num_frames))
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, columns)})


def write_contact_sheet(path: str | os.PathLike, rgb, masks, *, columns: int = 6, title: str = "") -> None:
    """rgb: [T,H,W,3] uint8 array-like, masks: [4,T,H,W] int32 array-like (zarr is fine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_frames, height, width = rgb.shape[:3]
    frames = pick_frames(num_frames, columns)
    step = max(1, int(np.ceil(width / CELL_WIDTH)))
    counts = [0] * len(LEVELS)
    cells: list[list[np.ndarray]] = [[] for _ in range(len(LEVELS) + 1)]
    max_id = -1
    level_frames = {}
    for t in frames:
        level_frames[t] = np.asarray(masks[:, t])[:, ::step, ::step]
        max_id = max(max_id, int(level_frames[t].max()))
    colours = id_colours(max(1, max_id + 1))
    for t in frames:
        image = np.asarray(rgb[t])[::step, ::step]
        cells[0].append(image.astype(np.float32) / 255.0)
        for level in range(len(LEVELS)):
            id_map = level_frames[t][level]
            cells[level + 1].append(overlay(image, id_map, colours))
    for level in range(len(LEVELS)):
        ids = set()
        for t in frames:
            ids.update(np.unique(level_frames[t][level]).tolist())
        ids.discard(-1)
        counts[level] = len(ids)

    h, w = cells[0][0].shape[:2]
    scale = 2.2 / max(h, w)
    fig, axes = plt.subplots(
        len(cells), len(frames), figsize=(len(frames) * w * scale + 0.6, len(cells) * h * scale + 0.5), squeeze=False
    )
    row_names = ["frames"] + [f"{name}\n{counts[i]} ids" for i, name in enumerate(LEVELS)]
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            ax = axes[r][c]
            ax.imshow(np.clip(cell, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {frames[c]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(row_names[r], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
