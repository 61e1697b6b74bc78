"""The up axis of a reconstruction and an orthographic top-down (bird's-eye) view of its cloud.

Up comes from the data: the dominant plane of the cloud whose normal is closest to the mean camera
up (`floor`, RANSAC), or the mean camera up itself (`camera`: OpenCV cameras look along +z with +y
down, so a camera's up in the world is minus the second row of its rotation). The BEV basis puts
the first camera's right to the image's right and its viewing direction (flattened) to the image's
top. The view is a z-buffered splat: each pixel shows the highest point over it, after the points
above the `ceiling_quantile` of heights were dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def camera_up(extrinsics: np.ndarray) -> np.ndarray:
    """Mean world up of OpenCV cameras [T,3,4] (world -> camera)."""
    ups = -np.asarray(extrinsics, dtype=np.float64)[:, 1, :3]
    up = ups.mean(0)
    return up / max(np.linalg.norm(up), 1e-12)


def camera_centres(extrinsics: np.ndarray) -> np.ndarray:
    E = np.asarray(extrinsics, dtype=np.float64)
    return -np.einsum("tji,tj->ti", E[:, :, :3], E[:, :, 3])


def floor_up(points: np.ndarray, prior: np.ndarray | None, *, threshold: float, iterations: int = 300,
             max_angle: float = 60.0, seed: int = 0) -> np.ndarray | None:
    """Normal of the plane with most inliers among those within `max_angle` of `prior` (any plane
    without a prior), refined by least squares, signed toward `prior`; None if no plane is found."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return None
    rng = np.random.default_rng(seed)
    if len(pts) > 20000:
        pts = pts[rng.choice(len(pts), 20000, replace=False)]
    best, best_count = None, 0
    cos_limit = np.cos(np.deg2rad(max_angle))
    for _ in range(iterations):
        a, b, c = pts[rng.choice(len(pts), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        if prior is not None and abs(n @ prior) < cos_limit:
            continue
        count = int((np.abs((pts - a) @ n) < threshold).sum())
        if count > best_count:
            best, best_count = (n, a), count
    if best is None or best_count < 3:
        return None
    n, a = best
    inliers = pts[np.abs((pts - a) @ n) < threshold]
    centred = inliers - inliers.mean(0)
    n = np.linalg.svd(centred, full_matrices=False)[2][-1]
    if prior is not None and n @ prior < 0:
        n = -n
    return n / np.linalg.norm(n)


def estimate_up(points: np.ndarray, extrinsics: np.ndarray | None, *, method: str = "floor", threshold: float = 0.02,
                seed: int = 0) -> tuple[np.ndarray, str]:
    """(unit up vector, how it was found)."""
    prior = camera_up(extrinsics) if extrinsics is not None and len(extrinsics) else None
    if method == "floor":
        up = floor_up(points, prior, threshold=threshold, seed=seed)
        if up is not None:
            if prior is None and extrinsics is None:
                return up, "floor plane (sign unknown: no cameras)"
            return up, "floor plane"
        if prior is None:
            return np.array([0.0, 0.0, 1.0]), "none found: +z assumed"
        return prior, "mean camera up (no floor plane found)"
    if prior is None:
        return np.array([0.0, 0.0, 1.0]), "no cameras: +z assumed"
    return prior, "mean camera up"


def bev_basis(up: np.ndarray, extrinsics: np.ndarray | None) -> np.ndarray:
    """Rotation [3,3] whose rows are the BEV's right, forward (image up) and height axes."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    forward = np.asarray(extrinsics, dtype=np.float64)[0, 2, :3] if extrinsics is not None and len(extrinsics) else None
    if forward is None or np.linalg.norm(forward - (forward @ up) * up) < 1e-6:
        forward = np.eye(3)[int(np.argmin(np.abs(up)))]
    forward = forward - (forward @ up) * up
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    return np.stack([right, forward, up])


@dataclass
class BevFrame:
    """Pixel <-> world of a BEV image: u = (x_b - x0) / s, v = (y1 - y_b) / s, [x_b, y_b, h] = R @ p."""

    rotation: np.ndarray  # [3,3]
    x0: float
    y1: float
    pixel_size: float
    width: int
    height: int
    ceiling: float  # height above which points were dropped

    def world_to_pixel(self) -> np.ndarray:
        """[3,4]: (u, v, height) = M @ (x, y, z, 1)."""
        R, s = self.rotation, self.pixel_size
        A = np.stack([R[0] / s, -R[1] / s, R[2]])
        b = np.array([-self.x0 / s, self.y1 / s, 0.0])
        return np.concatenate([A, b[:, None]], 1)

    def pixel_to_world(self) -> np.ndarray:
        """[3,4]: (x, y, z) = M @ (u, v, height, 1)."""
        M = self.world_to_pixel()
        inv = np.linalg.inv(M[:, :3])
        return np.concatenate([inv, (-inv @ M[:, 3])[:, None]], 1)

    def to_pixel(self, points: np.ndarray) -> np.ndarray:
        M = self.world_to_pixel()
        return (np.asarray(points, dtype=np.float64) @ M[:, :3].T + M[:, 3])[:, :2]

    def as_dict(self) -> dict:
        return {"world_to_pixel": self.world_to_pixel().tolist(), "pixel_to_world": self.pixel_to_world().tolist(),
                "rotation": self.rotation.tolist(), "pixel_size": self.pixel_size, "size": [self.height, self.width],
                "ceiling_height": self.ceiling,
                "convention": "u right, v down, pixel centre at (u + 0.5, v + 0.5) in the image"}


def plan_bev(points: np.ndarray, rotation: np.ndarray, *, size: int = 512, ceiling_quantile: float = 0.98,
             extent_quantile: float = 0.01, margin: float = 0.05, framing: np.ndarray | None = None) -> BevFrame:
    """The BEV's extent (quantiles of the footprint of `framing`, default the cloud, plus a margin of
    the span on each side) and its pixel size; the ceiling is a quantile of the cloud's heights."""
    q = np.asarray(points, dtype=np.float64) @ rotation.T
    if len(q) == 0:
        return BevFrame(rotation, -1.0, 1.0, 2.0 / size, size, size, np.inf)
    ceiling = float(np.quantile(q[:, 2], ceiling_quantile)) if ceiling_quantile < 1 else float(q[:, 2].max())
    keep = q if framing is None or len(framing) == 0 else np.asarray(framing, dtype=np.float64) @ rotation.T
    keep = keep[keep[:, 2] <= ceiling] if (keep[:, 2] <= ceiling).any() else keep
    lo = np.quantile(keep[:, :2], extent_quantile, axis=0)
    hi = np.quantile(keep[:, :2], 1.0 - extent_quantile, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    span = hi - lo
    pixel = float(span.max() / size)
    width, height = max(1, int(np.ceil(span[0] / pixel))), max(1, int(np.ceil(span[1] / pixel)))
    return BevFrame(rotation, float(lo[0]), float(hi[1]), pixel, width, height, ceiling)


def render_bev(points: np.ndarray, colors: np.ndarray, frame: BevFrame, *, radius: int = 1,
               background=(255, 255, 255)) -> tuple[np.ndarray, np.ndarray]:
    """RGB [H,W,3] uint8 and height map [H,W] (NaN empty) of the highest point per pixel, each point a
    (2 radius + 1)^2 square."""
    img = np.empty((frame.height, frame.width, 3), np.uint8)
    img[:] = background
    zmap = np.full((frame.height, frame.width), np.nan, np.float32)
    if len(points) == 0:
        return img, zmap
    q = np.asarray(points, dtype=np.float64) @ frame.rotation.T
    keep = q[:, 2] <= frame.ceiling
    q, cols = q[keep], np.asarray(colors)[keep]
    uv = frame.to_pixel(np.asarray(points, dtype=np.float64)[keep])
    u, v = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    us, vs, hs, idx = [], [], [], []
    base = np.arange(len(q))
    for dv in range(-radius, radius + 1):
        for du in range(-radius, radius + 1):
            uu, vv = u + du, v + dv
            ok = (uu >= 0) & (uu < frame.width) & (vv >= 0) & (vv < frame.height)
            us.append(uu[ok]); vs.append(vv[ok]); hs.append(q[ok, 2]); idx.append(base[ok])  # noqa: E702
    uu, vv, hh, ii = (np.concatenate(a) for a in (us, vs, hs, idx))
    if len(uu) == 0:
        return img, zmap
    lin = vv * frame.width + uu
    order = np.lexsort((-hh, lin))  # by pixel, highest first
    lin, hh, ii = lin[order], hh[order], ii[order]
    first = np.ones(len(lin), bool)
    first[1:] = lin[1:] != lin[:-1]
    img.reshape(-1, 3)[lin[first]] = cols[ii[first]]
    zmap.reshape(-1)[lin[first]] = hh[first]
    return img, zmap
