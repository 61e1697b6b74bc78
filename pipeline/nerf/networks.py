"""The radiance field's networks: token features, the 3D U-Net, the per-point MLP, compositing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from pipeline.nerf.model import NerfConfig


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
