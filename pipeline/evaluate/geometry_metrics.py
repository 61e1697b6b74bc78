"""Depth and camera-pose metrics as the video-depth / relpose literature computes them.

Depth (CUT3R / StreamVGGT / PAGE-4D `depth_evaluation`): one alignment per sequence over all
valid pixels (0 < gt < max_depth): `scale` = an L1 fit of one scale by IRLS (Weiszfeld, 10
iterations from mean(gt)/mean(pred), s >= 1e-3); `scale_shift` = an L1 fit of s*pred + t
(upstream fits it with Adam; here by IRLS, deterministic); `median` = per-frame median
scaling; `none`. Metrics over the flattened sequence; the valid-pixel count is the weight of
the sequence in a dataset mean.

Pose (evo APE / RPE): the predicted trajectory is aligned to the ground truth by Sim(3)
Umeyama on the camera centres; ATE = RMSE of the centre errors; RPE over pairs (i, i+delta)
of the relative-pose error inv(Q_i^-1 Q_j) (P_i^-1 P_j): translation RMSE and rotation-angle
RMSE in degrees.
"""

from __future__ import annotations

import numpy as np

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1.25", "delta_1.25^2", "delta_1.25^3")


# ----------------------------------------------------------------------------- depth
def valid_depth_mask(gt: np.ndarray, pred: np.ndarray, max_depth: float | None = 70.0) -> np.ndarray:
    valid = np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    if max_depth is not None:
        valid &= gt < max_depth
    return valid


def fit_scale_l1(pred: np.ndarray, gt: np.ndarray, iterations: int = 10, eps: float = 1e-6) -> float:
    """One scale s minimising sum |s*pred - gt| by iteratively reweighted least squares."""
    p = pred.astype(np.float64)
    g = gt.astype(np.float64)
    s = g.mean() / max(p.mean(), eps)
    for _ in range(iterations):
        w = 1.0 / np.maximum(np.abs(s * p - g), eps)
        s = float(np.sum(w * p * g) / max(np.sum(w * p * p), eps))
        s = max(s, 1e-3)
    return float(s)


def fit_scale_shift_l1(pred: np.ndarray, gt: np.ndarray, iterations: int = 50, eps: float = 1e-6) -> tuple[float, float]:
    """(s, t) minimising sum |s*pred + t - gt| by IRLS, started at s = median(gt)/median(pred), t = 0."""
    p = pred.astype(np.float64)
    g = gt.astype(np.float64)
    s = float(np.median(g) / max(np.median(p), eps))
    t = 0.0
    A = np.stack([p, np.ones_like(p)], axis=1)
    for _ in range(iterations):
        w = 1.0 / np.maximum(np.abs(s * p + t - g), eps)
        Aw = A * w[:, None]
        try:
            s_new, t_new = np.linalg.solve(A.T @ Aw, Aw.T @ g)
        except np.linalg.LinAlgError:
            break
        done = abs(s_new - s) < 1e-9 and abs(t_new - t) < 1e-9
        s, t = float(s_new), float(t_new)
        if done:
            break
    return s, t


def depth_errors(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Metrics over matching 1-D arrays of valid, aligned predictions and ground truth."""
    p = pred.astype(np.float64)
    g = gt.astype(np.float64)
    ratio = np.maximum(p / g, g / np.maximum(p, 1e-12))
    diff = p - g
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "log_rmse": float(np.sqrt(np.mean((np.log(np.maximum(p, 1e-5)) - np.log(g)) ** 2))),
        "delta_1.25": float(np.mean(ratio < 1.25)),
        "delta_1.25^2": float(np.mean(ratio < 1.25**2)),
        "delta_1.25^3": float(np.mean(ratio < 1.25**3)),
    }


def sequence_depth_metrics(
    preds: list[np.ndarray], gts: list[np.ndarray], align: str = "scale", max_depth: float | None = 70.0
) -> dict[str, float]:
    """Metrics of one sequence under one alignment; adds `valid_pixels` and the fitted `scale`/`shift`."""
    masks = [valid_depth_mask(g, p, max_depth) for p, g in zip(preds, gts)]
    n = int(sum(int(m.sum()) for m in masks))
    if n == 0:
        return {k: float("nan") for k in DEPTH_METRICS} | {"valid_pixels": 0}
    scale, shift = 1.0, 0.0
    if align == "median":
        p_all = np.concatenate([p[m] * (np.median(g[m]) / max(np.median(p[m]), 1e-12)) for p, g, m in zip(preds, gts, masks) if m.any()])
        g_all = np.concatenate([g[m] for g, m in zip(gts, masks) if m.any()])
    else:
        p_all = np.concatenate([p[m] for p, m in zip(preds, masks)]).astype(np.float64)
        g_all = np.concatenate([g[m] for g, m in zip(gts, masks)]).astype(np.float64)
        if align == "scale":
            scale = fit_scale_l1(p_all, g_all)
        elif align == "scale_shift":
            scale, shift = fit_scale_shift_l1(p_all, g_all)
        elif align != "none":
            raise ValueError(f"unknown depth alignment {align!r}")
        p_all = scale * p_all + shift
    out = depth_errors(p_all, g_all)
    out["valid_pixels"] = n
    if align in ("scale", "scale_shift"):
        out["scale"] = scale
    if align == "scale_shift":
        out["shift"] = shift
    return out


# ----------------------------------------------------------------------------- pose
def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """(R, t, s) minimising sum ||dst_i - (s R src_i + t)||^2 (Umeyama 1991)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or len(src) < 3:
        raise ValueError("umeyama needs two matching [N>=3, d] point sets")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    if np.linalg.matrix_rank(cov) < src.shape[1] - 1:
        raise ValueError("degenerate covariance rank: the trajectory does not span enough directions")
    S = np.eye(src.shape[1])
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[-1, -1] = -1
    R = U @ S @ Vt
    var_s = np.mean(np.sum(xs**2, axis=1))
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return R, t, s


def camera_to_world(extrinsics: np.ndarray) -> np.ndarray:
    """[T,3,4] world->camera (OpenCV) -> [T,4,4] camera->world poses."""
    E = np.asarray(extrinsics, dtype=np.float64)
    R, t = E[:, :3, :3], E[:, :3, 3]
    out = np.tile(np.eye(4), (len(E), 1, 1))
    out[:, :3, :3] = np.transpose(R, (0, 2, 1))
    out[:, :3, 3] = -np.einsum("tji,tj->ti", R, t)
    return out


def poses_from_tum(rows: np.ndarray) -> np.ndarray:
    """[N,7] rows `tx ty tz qx qy qz qw` -> [N,4,4] poses."""
    rows = np.asarray(rows, dtype=np.float64)
    x, y, z, w = (rows[:, 3 + i] for i in range(4))
    n = np.sqrt(x * x + y * y + z * z + w * w)
    x, y, z, w = x / n, y / n, z / n, w / n
    R = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)
    out = np.tile(np.eye(4), (len(rows), 1, 1))
    out[:, :3, :3] = R
    out[:, :3, 3] = rows[:, :3]
    return out


def align_sim3(est: np.ndarray, ref: np.ndarray, with_scale: bool = True) -> tuple[np.ndarray, float]:
    """Apply the Umeyama alignment of the estimated centres to the reference to whole poses."""
    R, t, s = umeyama(est[:, :3, 3], ref[:, :3, 3], with_scale)
    out = est.copy()
    out[:, :3, :3] = R @ est[:, :3, :3]
    out[:, :3, 3] = s * est[:, :3, 3] @ R.T + t
    return out, s


def _rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def trajectory_metrics(est: np.ndarray, ref: np.ndarray, *, delta: int = 1, with_scale: bool = True) -> dict[str, float]:
    """ATE (RMSE, reference units) and RPE trans / rot (RMSE; rot in degrees) after Sim(3) alignment.

    est, ref: [N,4,4] camera->world poses of the same frames.
    """
    est = np.asarray(est, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"trajectories differ in shape: {est.shape} vs {ref.shape}")
    aligned, scale = align_sim3(est, ref, with_scale)
    ate = float(np.sqrt(np.mean(np.sum((aligned[:, :3, 3] - ref[:, :3, 3]) ** 2, axis=1))))
    out = {"ate": ate, "sim3_scale": scale, "n_poses": len(est)}
    if len(est) > delta:
        rel_ref = np.linalg.inv(ref[:-delta]) @ ref[delta:]
        rel_est = np.linalg.inv(aligned[:-delta]) @ aligned[delta:]
        err = np.linalg.inv(rel_ref) @ rel_est
        out["rpe_trans"] = float(np.sqrt(np.mean(np.sum(err[:, :3, 3] ** 2, axis=1))))
        out["rpe_rot"] = float(np.sqrt(np.mean(_rotation_angle_deg(err[:, :3, :3]) ** 2)))
    return out
