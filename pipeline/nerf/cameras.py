"""Camera geometry of the radiance field: plane-sweep homographies, pixel grids, rays.

Pixel convention: pixel (i, j) covers [j, j+1) x [i, i+1) in the intrinsics' coordinates, so
its centre is at (j + 0.5, i + 0.5) (the demo scene's and HyperNeRF's convention). Cameras are
OpenCV world->camera extrinsics `[3, 4]` and intrinsics `[3, 3]` at the image's resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relative_pose(ref_extr: torch.Tensor, src_extr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, t) taking reference-camera coordinates to source-camera coordinates."""
    R_ref, t_ref = ref_extr[..., :3, :3], ref_extr[..., :3, 3]
    R_src, t_src = src_extr[..., :3, :3], src_extr[..., :3, 3]
    R = R_src @ R_ref.transpose(-1, -2)
    t = t_src - (R @ t_ref.unsqueeze(-1)).squeeze(-1)
    return R, t


def plane_homographies(K_ref, K_src, R, t, depths) -> torch.Tensor:
    """[D, 3, 3] homographies mapping reference pixels to source pixels through the planes
    z = d (in the reference camera), d in `depths`: H = K_src (R + t n^T / d) K_ref^-1, n = (0,0,1)."""
    n = torch.tensor([0.0, 0.0, 1.0], dtype=K_ref.dtype, device=K_ref.device)
    K_ref_inv = torch.linalg.inv(K_ref)
    plane = R.unsqueeze(0) + (t.unsqueeze(-1) * n.unsqueeze(0)).unsqueeze(0) / depths.view(-1, 1, 1)
    return K_src.unsqueeze(0) @ plane @ K_ref_inv.unsqueeze(0)


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[H*W, 3] homogeneous pixel centres (j + 0.5, i + 0.5, 1), row-major."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                          torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")  # fmt: skip
    return torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)


def normalise_pixels(uv: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates -> grid_sample's [-1, 1] (align_corners=False: edges of the border pixels)."""
    return torch.stack([uv[..., 0] / width * 2.0 - 1.0, uv[..., 1] / height * 2.0 - 1.0], -1)


def warp_homography(image: torch.Tensor, H: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Sample `image` [C, Hs, Ws] at H @ (reference pixel) for each of the D homographies.

    Returns [C, D, Ho, Wo]; pixels that land outside the image (or behind the camera) are 0.
    """
    C, Hs, Ws = image.shape
    Ho, Wo = out_hw
    grid = pixel_grid(Ho, Wo, image.device, image.dtype)  # [P, 3]
    p = torch.einsum("dij,pj->dpi", H.to(image.dtype), grid)  # [D, P, 3]
    z = p[..., 2:3]
    uv = p[..., :2] / z.clamp_min(1e-6)
    xy = normalise_pixels(uv, Hs, Ws)
    xy = torch.where(z > 1e-6, xy, torch.full_like(xy, -2.0))
    out = F.grid_sample(image.unsqueeze(0), xy.reshape(1, -1, Wo, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # fmt: skip
    return out.reshape(C, H.shape[0], Ho, Wo)


def scale_intrinsics(K: torch.Tensor, sy: float, sx: float) -> torch.Tensor:
    S = torch.tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]], dtype=K.dtype, device=K.device)
    return S @ K


def plane_depths(near: float, far: float, planes: int, device=None) -> torch.Tensor:
    return torch.linspace(float(near), float(far), int(planes), device=device)


def camera_rays(K: torch.Tensor, extr: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space origins and directions (camera z = 1) through pixel centres `pixels` [N, 3] (homogeneous)."""
    R, t = extr[:3, :3], extr[:3, 3]
    cam = pixels @ torch.linalg.inv(K).T  # z = 1
    dirs = cam @ R  # R^T cam
    origin = -(R.T @ t)
    return origin.expand_as(dirs), dirs
