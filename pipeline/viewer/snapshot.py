"""The "save view" picture when no browser can render one: coloured points through a pinhole camera."""

from __future__ import annotations

import numpy as np


def render_points(xyz: np.ndarray, rgb: np.ndarray, c2w: np.ndarray, K: np.ndarray, size: tuple[int, int],
                  radius: int = 1, background=(255, 255, 255)) -> np.ndarray:
    """A picture of coloured points through a pinhole camera (nearest point wins): the saved view
    when no browser can render one."""
    h, w = size
    w2c = np.linalg.inv(c2w)
    pc = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    ok = z > 1e-6
    u = np.round(K[0, 0] * pc[ok, 0] / z[ok] + K[0, 2]).astype(np.int64)
    v = np.round(K[1, 1] * pc[ok, 1] / z[ok] + K[1, 2]).astype(np.int64)
    col, z = rgb[ok], z[ok]
    img = np.empty((h, w, 3), np.uint8)
    img[:] = background
    order = np.argsort(-z)  # far first, near last: near points overwrite
    for dy in range(-radius + 1, radius):
        for dx in range(-radius + 1, radius):
            uu, vv = u[order] + dx, v[order] + dy
            inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            img[vv[inside], uu[inside]] = col[order][inside]
    return img
