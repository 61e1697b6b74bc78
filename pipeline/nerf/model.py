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

Pixel convention: pixel (i, j) covers [j, j+1) x [i, i+1) in the intrinsics' coordinates, so
its centre is at (j + 0.5, i + 0.5) (the demo scene's and HyperNeRF's convention). Cameras are
OpenCV world->camera extrinsics `[3, 4]` and intrinsics `[3, 3]` at the image's resolution.
Colour head (`colour`): `direct` predicts RGB (upstream); `blend` (ours) predicts weights over
the source colours seen at the point plus a residual, which trains much faster on few steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

COLOUR_HEADS = ("direct", "blend")


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


# ----------------------------------------------------------------------------- geometry
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


# ----------------------------------------------------------------------------- networks
class TokenFeatures(nn.Module):
    """Patch tokens [V, h, w, C] -> features [V, feature_dim, H/s, W/s] (1x1 conv + bilinear upsampling, s = 4)."""

    def __init__(self, dim_in: int, feature_dim: int, downscale: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, feature_dim, kernel_size=1)
        self.downscale = int(downscale)

    def forward(self, tokens: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        x = self.proj(tokens.permute(0, 3, 1, 2))
        size = (max(1, image_hw[0] // self.downscale), max(1, image_hw[1] // self.downscale))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _conv3d(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


class CostRegNet(nn.Module):
    """A 3D U-Net: a stride-2 level per width after the first, trilinear upsampling with skips."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]):
        super().__init__()
        self.inp = _conv3d(in_channels, channels[0])
        self.down = nn.ModuleList(
            nn.Sequential(_conv3d(a, b, stride=2), _conv3d(b, b)) for a, b in zip(channels[:-1], channels[1:])
        )
        self.up = nn.ModuleList(_conv3d(b, a) for a, b in zip(channels[:-1], channels[1:]))
        self.out_channels = channels[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inp(x)]
        for layer in self.down:
            skips.append(layer(skips[-1]))
        y = skips.pop()
        for layer in reversed(self.up):
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-3:], mode="trilinear", align_corners=False)
            y = skip + layer(y)
        return y


def positional_encoding(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[..., D] -> [..., D (1 + 2 F)]: x, sin(2^k x), cos(2^k x) for k < F."""
    if frequencies <= 0:
        return x
    scales = 2.0 ** torch.arange(frequencies, device=x.device, dtype=x.dtype)
    xs = (x.unsqueeze(-1) * scales).flatten(-2)
    return torch.cat([x, torch.sin(xs), torch.cos(xs)], -1)


class Renderer(nn.Module):
    """Per-point MLP: (PE(point), volume feature, source colours) -> density; + PE(direction) -> colour."""

    def __init__(self, config: NerfConfig, volume_channels: int):
        super().__init__()
        self.config = config
        width, depth = config.net_width, config.net_depth
        in_dim = 3 * (1 + 2 * config.multires) + volume_channels + 3 * config.num_sources
        self.skip = depth // 2 if depth > 2 else None
        layers = []
        for i in range(depth):
            cin = in_dim if i == 0 else width + (in_dim if i == self.skip else 0)
            layers.append(nn.Linear(cin, width))
        self.layers = nn.ModuleList(layers)
        self.sigma = nn.Linear(width, 1)
        view_dim = 3 * (1 + 2 * config.multires_views)
        self.feature = nn.Linear(width, width)
        self.colour_hidden = nn.Linear(width + view_dim, max(1, width // 2))
        out = 3 if config.colour == "direct" else config.num_sources + 3
        self.colour = nn.Linear(max(1, width // 2), out)

    def forward(self, points: torch.Tensor, volume_feat: torch.Tensor, colours: torch.Tensor, dirs: torch.Tensor):
        """points [..., 3] normalised; volume_feat [..., Cv]; colours [..., V, 3]; dirs [..., 3] -> (sigma, rgb)."""
        x0 = torch.cat([positional_encoding(points, self.config.multires), volume_feat, colours.flatten(-2)], -1)
        h = x0
        for i, layer in enumerate(self.layers):
            if i == self.skip:
                h = torch.cat([h, x0], -1)
            h = F.relu(layer(h))
        sigma = F.softplus(self.sigma(h).squeeze(-1) - 1.0)
        v = positional_encoding(dirs, self.config.multires_views)
        c = F.relu(self.colour_hidden(torch.cat([self.feature(h), v], -1)))
        out = self.colour(c)
        if self.config.colour == "direct":
            return sigma, torch.sigmoid(out)
        weights = torch.softmax(out[..., : self.config.num_sources], -1)
        blend = (weights.unsqueeze(-1) * colours).sum(-2).clamp(1e-3, 1.0 - 1e-3)
        return sigma, torch.sigmoid(torch.logit(blend) + out[..., self.config.num_sources :])


def volume_render(sigma: torch.Tensor, rgb: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Alpha compositing along rays: sigma [R, S], rgb [R, S, 3], sample depths z [R, S] (increasing).

    alpha_i = 1 - exp(-sigma_i delta_i) with delta_i = z_{i+1} - z_i (the last one 1e10);
    w_i = alpha_i prod_{j<i} (1 - alpha_j). Returns rgb [R, 3], depth [R], opacity [R], weights [R, S].
    """
    delta = torch.cat([z[..., 1:] - z[..., :-1], torch.full_like(z[..., :1], 1e10)], -1)
    alpha = 1.0 - torch.exp(-sigma * delta)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-10], -1), -1)[..., :-1]
    weights = alpha * transmittance
    return {
        "rgb": (weights.unsqueeze(-1) * rgb).sum(-2),
        "depth": (weights * z).sum(-1),
        "opacity": weights.sum(-1),
        "weights": weights,
    }


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
        cfg = self.config
        R_count = origins.shape[0]
        steps = torch.linspace(0.0, 1.0, cfg.samples, device=origins.device)
        z = views.near + (views.far - views.near) * steps
        z = z.expand(R_count, cfg.samples).clone()
        if perturb is not None:  # stratified: one uniform point per interval
            mids = 0.5 * (z[:, 1:] + z[:, :-1])
            lower = torch.cat([z[:, :1], mids], -1)
            upper = torch.cat([mids, z[:, -1:]], -1)
            u = torch.rand(z.shape, generator=perturb, device="cpu").to(z.device)
            z = lower + (upper - lower) * u
        pts = origins.unsqueeze(1) + dirs.unsqueeze(1) * z.unsqueeze(-1)  # [R, S, 3]
        flat = pts.reshape(-1, 3)
        K, E, images = views.intrinsics, views.extrinsics, views.images
        H, W = images.shape[-2:]
        # reference frustum: normalised pixel position and depth between near and far
        cam = flat @ E[0, :3, :3].T + E[0, :3, 3]
        depth_ref = cam[:, 2]
        uv = (cam @ K[0].T)[:, :2] / depth_ref.clamp_min(1e-6).unsqueeze(-1)
        xy = normalise_pixels(uv, H, W)
        # plane k (depth near + k (far - near) / (D - 1)) is voxel k along the depth axis
        plane = (depth_ref - views.near) / max(views.far - views.near, 1e-6) * (cfg.planes - 1)
        zn = (plane + 0.5) / cfg.planes * 2.0 - 1.0
        ndc = torch.cat([xy, zn.unsqueeze(-1)], -1)
        ndc = torch.where((depth_ref > 1e-6).unsqueeze(-1), ndc, torch.full_like(ndc, -2.0))
        vol = encoded["volume"]
        grid = ndc.reshape(1, R_count, cfg.samples, 1, 3).to(vol.dtype)
        feat = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        feat = feat.reshape(vol.shape[1], R_count, cfg.samples).permute(1, 2, 0)
        # the colour each source view sees at the point
        colours = []
        for i in range(images.shape[0]):
            ci = flat @ E[i, :3, :3].T + E[i, :3, 3]
            uvi = (ci @ K[i].T)[:, :2] / ci[:, 2:3].clamp_min(1e-6)
            xyi = torch.where((ci[:, 2:3] > 1e-6), normalise_pixels(uvi, H, W), torch.full_like(uvi, -2.0))
            sample = F.grid_sample(images[i : i + 1], xyi.reshape(1, R_count, cfg.samples, 2).to(images.dtype),
                                   mode="bilinear", padding_mode="zeros", align_corners=False)  # fmt: skip
            colours.append(sample[0].permute(1, 2, 0))  # [R, S, 3]
        colours = torch.stack(colours, -2)  # [R, S, V, 3]
        view_dirs = F.normalize(dirs @ E[0, :3, :3].T, dim=-1).unsqueeze(1).expand(-1, cfg.samples, -1)
        sigma, rgb = self.renderer(ndc.reshape(R_count, cfg.samples, 3).to(feat.dtype), feat, colours.to(feat.dtype),
                                   view_dirs.to(feat.dtype))  # fmt: skip
        return volume_render(sigma.float(), rgb.float(), z)

    def forward(self, views: Views, origins, dirs, *, perturb=None):
        return self.render_rays(self.encode(views), views, origins, dirs, perturb=perturb)


def camera_rays(K: torch.Tensor, extr: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space origins and directions (camera z = 1) through pixel centres `pixels` [N, 3] (homogeneous)."""
    R, t = extr[:3, :3], extr[:3, 3]
    cam = pixels @ torch.linalg.inv(K).T  # z = 1
    dirs = cam @ R  # R^T cam
    origin = -(R.T @ t)
    return origin.expand_as(dirs), dirs


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)
