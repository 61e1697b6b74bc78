"""A generalizable radiance field on geometry tokens (VGGT-NeRF: MVSNeRF with VGGT features).

Pieces, in the order a ray meets them:

1. `TokenFeatures`: the source views' patch tokens (the last stored layer of tokens.zarr,
   `[V, h, w, C]`) -> a 1x1 convolution to `feature_dim` channels -> bilinear upsampling to a
   quarter of the image size, as VGGT-NeRF replaces MVSNeRF's CNN feature net.
2. `cost_volume`: the source features warped onto `planes` fronto-parallel depth planes of the
   reference view (source 0) by plane-induced homographies, reduced to their variance over the
   views, with the warped source colours appended (MVSNeRF's cost volume + images).
3. `CostRegNet`: a small 3D U-Net turning the cost volume into a neural encoding volume.
4. `Renderer`: points along each target ray (`samples` per ray between near and far) are mapped
   into the reference view's normalised frustum, where the encoding volume is sampled
   trilinearly; with the source colours seen at the point and positional encodings of the
   point and the viewing direction an MLP predicts density and colour, and `volume_render`
   composites them (standard alpha compositing).

Camera geometry (the pixel convention, homographies, rays) is in `cameras`, the networks in
`networks`; this module puts them together and loads saved weights. Colour head (`colour`):
`direct` predicts RGB (upstream); `blend` (ours) predicts weights over the source colours seen
at the point plus a residual, which trains much faster on few steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.nerf.cameras import (normalise_pixels, plane_depths, plane_homographies, relative_pose, scale_intrinsics,
                                   warp_homography)  # fmt: skip
from pipeline.nerf.networks import CostRegNet, Renderer, TokenFeatures, volume_render

COLOUR_HEADS = ("direct", "blend")
WEIGHTS_FORMAT = "langfield4d-nerf/1"


@dataclass(frozen=True)
class NerfConfig:
    """Architecture; the defaults are VGGT-NeRF's (MVSNeRF's renderer and cost volume)."""

    dim_in: int = 2048  # token width (frame + global attention outputs)
    feature_dim: int = 32  # 1x1 conv output
    num_sources: int = 3
    planes: int = 128  # depth planes of the cost volume
    samples: int = 128  # points per ray (no importance sampling)
    cnn_channels: tuple[int, ...] = (8, 16, 32, 64)  # 3D U-Net widths, one per level
    net_depth: int = 6
    net_width: int = 128
    multires: int = 10  # positional-encoding frequencies of the point
    multires_views: int = 4  # ... of the viewing direction
    colour: str = "direct"
    volume_downscale: int = 4  # the feature maps and the cost volume are at 1/4 of the image size (upstream)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cnn_channels"] = list(self.cnn_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NerfConfig":
        d = dict(d)
        d["cnn_channels"] = tuple(d["cnn_channels"])
        return cls(**d)


@dataclass
class Views:
    """A target and its sources: images [V, 3, H, W] in [0, 1], tokens [V, h, w, C], cameras."""

    images: torch.Tensor
    tokens: torch.Tensor
    intrinsics: torch.Tensor  # [V, 3, 3]
    extrinsics: torch.Tensor  # [V, 3, 4]
    near: float
    far: float
    extra: dict = field(default_factory=dict)


class GeneralizableNerf(nn.Module):
    def __init__(self, config: NerfConfig):
        super().__init__()
        self.config = config
        self.features = TokenFeatures(config.dim_in, config.feature_dim, config.volume_downscale)
        self.cost_reg = CostRegNet(config.feature_dim + 3 * config.num_sources, tuple(config.cnn_channels))
        self.renderer = Renderer(config, self.cost_reg.out_channels)

    # ------------------------------------------------------------------ encoding volume
    def encode(self, views: Views) -> dict[str, torch.Tensor]:
        """The reference view's neural encoding volume [1, C, D, h, w] from the source views."""
        images, K, E = views.images, views.intrinsics, views.extrinsics
        H, W = images.shape[-2:]
        feats = self.features(views.tokens, (H, W))  # [V, F, h, w]
        h, w = feats.shape[-2:]
        small = F.interpolate(images, size=(h, w), mode="area")
        K_small = scale_intrinsics(K, h / H, w / W)
        depths = plane_depths(views.near, views.far, self.config.planes, images.device)
        warped_f, warped_c = [], []
        for i in range(images.shape[0]):
            R, t = relative_pose(E[0], E[i])
            Hs = plane_homographies(K_small[0], K_small[i], R, t, depths)
            both = warp_homography(torch.cat([feats[i], small[i]], 0), Hs, (h, w))
            warped_f.append(both[: feats.shape[1]])
            warped_c.append(both[feats.shape[1] :])
        stack = torch.stack(warped_f)  # [V, F, D, h, w]
        variance = (stack**2).mean(0) - stack.mean(0) ** 2
        volume = torch.cat([variance, *warped_c], 0).unsqueeze(0)
        return {"volume": self.cost_reg(volume), "hw": torch.tensor([h, w])}

    # ------------------------------------------------------------------ rays
    def render_rays(self, encoded, views: Views, origins, dirs, *, perturb: torch.Generator | None = None):
        """Rays in world coordinates (dirs with camera-space z = 1, so depth = z): rgb, depth, opacity."""
        rays, samples = origins.shape[0], self.config.samples
        z = self._sample_depths(views, rays, origins.device, perturb)
        flat = (origins.unsqueeze(1) + dirs.unsqueeze(1) * z.unsqueeze(-1)).reshape(-1, 3)  # the [R, S] points
        ndc = self._reference_frustum(flat, views)
        feat = self._volume_features(encoded["volume"], ndc, rays)
        colours = self._source_colours(flat, views, rays)
        view_dirs = F.normalize(dirs @ views.extrinsics[0, :3, :3].T, dim=-1).unsqueeze(1).expand(-1, samples, -1)
        sigma, rgb = self.renderer(ndc.reshape(rays, samples, 3).to(feat.dtype), feat, colours.to(feat.dtype),
                                   view_dirs.to(feat.dtype))  # fmt: skip
        return volume_render(sigma.float(), rgb.float(), z)

    def _sample_depths(self, views: Views, rays: int, device, perturb: torch.Generator | None) -> torch.Tensor:
        """[R, S] depths between near and far; with `perturb`, stratified: one uniform point per interval."""
        samples = self.config.samples
        steps = torch.linspace(0.0, 1.0, samples, device=device)
        z = views.near + (views.far - views.near) * steps
        z = z.expand(rays, samples).clone()
        if perturb is not None:
            mids = 0.5 * (z[:, 1:] + z[:, :-1])
            lower = torch.cat([z[:, :1], mids], -1)
            upper = torch.cat([mids, z[:, -1:]], -1)
            u = torch.rand(z.shape, generator=perturb, device="cpu").to(z.device)
            z = lower + (upper - lower) * u
        return z

    def _reference_frustum(self, flat: torch.Tensor, views: Views) -> torch.Tensor:
        """Points [N, 3] -> the reference view's normalised frustum [N, 3]: pixel position, depth between near and far."""
        planes = self.config.planes
        K, E = views.intrinsics, views.extrinsics
        H, W = views.images.shape[-2:]
        cam = flat @ E[0, :3, :3].T + E[0, :3, 3]
        depth_ref = cam[:, 2]
        uv = (cam @ K[0].T)[:, :2] / depth_ref.clamp_min(1e-6).unsqueeze(-1)
        xy = normalise_pixels(uv, H, W)
        # plane k (depth near + k (far - near) / (D - 1)) is voxel k along the depth axis
        plane = (depth_ref - views.near) / max(views.far - views.near, 1e-6) * (planes - 1)
        zn = (plane + 0.5) / planes * 2.0 - 1.0
        ndc = torch.cat([xy, zn.unsqueeze(-1)], -1)
        return torch.where((depth_ref > 1e-6).unsqueeze(-1), ndc, torch.full_like(ndc, -2.0))

    def _volume_features(self, vol: torch.Tensor, ndc: torch.Tensor, rays: int) -> torch.Tensor:
        """The encoding volume sampled trilinearly at the points: [R, S, C]."""
        samples = self.config.samples
        grid = ndc.reshape(1, rays, samples, 1, 3).to(vol.dtype)
        feat = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return feat.reshape(vol.shape[1], rays, samples).permute(1, 2, 0)

    def _source_colours(self, flat: torch.Tensor, views: Views, rays: int) -> torch.Tensor:
        """The colour each source view sees at the points: [R, S, V, 3]."""
        samples = self.config.samples
        K, E, images = views.intrinsics, views.extrinsics, views.images
        H, W = images.shape[-2:]
        colours = []
        for i in range(images.shape[0]):
            ci = flat @ E[i, :3, :3].T + E[i, :3, 3]
            uvi = (ci @ K[i].T)[:, :2] / ci[:, 2:3].clamp_min(1e-6)
            xyi = torch.where((ci[:, 2:3] > 1e-6), normalise_pixels(uvi, H, W), torch.full_like(uvi, -2.0))
            sample = F.grid_sample(images[i : i + 1], xyi.reshape(1, rays, samples, 2).to(images.dtype),
                                   mode="bilinear", padding_mode="zeros", align_corners=False)  # fmt: skip
            colours.append(sample[0].permute(1, 2, 0))  # [R, S, 3]
        return torch.stack(colours, -2)

    def forward(self, views: Views, origins, dirs, *, perturb=None):
        return self.render_rays(self.encode(views), views, origins, dirs, perturb=perturb)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def load_nerf(path: str | Path, device="cpu") -> tuple[GeneralizableNerf, dict[str, Any]]:
    """Weights written by `train_nerf` -> (model in eval mode, metadata with JSON values decoded)."""
    from safetensors.torch import load_file

    from pipeline.checkpoints import checkpoint_metadata

    path = Path(path)
    if not path.is_file():
        raise UserError(f"radiance-field weights not found: {path}")
    raw = checkpoint_metadata(path)
    if raw.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path} is not radiance-field weights (format {raw.get('format')!r}, expected {WEIGHTS_FORMAT})")
    meta = {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
    model = GeneralizableNerf(NerfConfig.from_dict(meta["architecture"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval(), meta
