"""One DPT (dense prediction transformer head), shared by the geometry model and the decoder.

Four token layers of a ViT become one dense map: each layer is layer-normed (one LayerNorm for
all four), projected by a 1x1 conv, resized to a four-level pyramid (x4, x2, x1, /2), reduced to
`features` channels, fused coarse to fine by residual conv units, and upsampled to the image size.

Two uses, one module (VGGT's own code serves its depth head, its point head and every caller
with one DPT head the same way):
- a prediction head (`output_dim` set: the geometry model's depth and point heads): a sinusoidal
  uv embedding is added to the projections and before the last convs (`pos_embed`), which end in
  `output_dim` channels (values and a confidence);
- feature-only (`output_dim=None`: the Semantic Bridging Decoder): it stops after `output_conv1`,
  returning `features` channels at patch resolution x patch size.

Parameter names are those of the released checkpoints in both layouts (`norm`, `projects`,
`resize_layers`, `scratch.layer{1..4}_rn`, `scratch.refinenet{1..4}`, `scratch.output_conv1/2`),
registered in the released order, so both load key for key.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def uv_embedding(height: int, width: int, channels: int, aspect: float, device, omega0: float = 100.0) -> torch.Tensor:
    """Sinusoidal embedding [channels, height, width] of a centred uv grid spanning the unit diagonal."""
    diag = math.sqrt(aspect**2 + 1.0)
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=torch.float64, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=torch.float64, device=device)
    omega = 1.0 / omega0 ** (torch.arange(channels // 4, dtype=torch.float64, device=device) / (channels / 4.0))

    def sincos(coord):  # [H, W] -> [H, W, channels/2]
        angles = coord[..., None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    u = xs[None, :].expand(height, width)
    v = ys[:, None].expand(height, width)
    return torch.cat([sincos(u), sincos(v)], dim=-1).permute(2, 0, 1).float()


def resize(x: torch.Tensor, size: Sequence[int], *, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of [N, C, h, w] to `size`; a no-op when it already has that size."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upstream's in-place ReLU overwrote its input, so the released weights were trained
        # with the skip carrying relu(x); we reproduce that without mutating the caller's tensor.
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """Adds the (refined) skip, refines, upsamples to `size` (default x2), mixes with a 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        # Registration order (out_conv first) matches the released state_dict order.
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        x = resize(x, size, align_corners=True)
        return self.out_conv(x)


class DPT(nn.Module):
    """Four `[N, h, w, dim_in]` token grids -> a dense map at `h*patch_size x w*patch_size`.

    `output_dim=None`: feature-only, `forward` returns `[N, features, H, W]`. Otherwise
    `forward` returns the raw `[N, output_dim, H, W]` of the prediction convs (the caller applies
    its activations).
    """

    def __init__(self, dim_in: int, *, patch_size: int = 14, features: int = 256,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024), output_dim: int | None = None,
                 pos_embed: bool | None = None):  # fmt: skip
        super().__init__()
        self.patch_size = patch_size
        self.feature_only = output_dim is None
        self.pos_embed = not self.feature_only if pos_embed is None else pos_embed
        self.norm = nn.LayerNorm(dim_in)  # one LayerNorm shared by the four layers, as released
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, 1) for c in out_channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FusionBlock(features)
        self.scratch.refinenet2 = FusionBlock(features)
        self.scratch.refinenet3 = FusionBlock(features)
        self.scratch.refinenet4 = FusionBlock(features, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2 if output_dim else features, 3, padding=1, bias=True)
        if output_dim:
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, output_dim, 1)
            )

    def _with_uv(self, x: torch.Tensor, aspect: float) -> torch.Tensor:
        if not self.pos_embed:
            return x
        return x + 0.1 * uv_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect, x.device).to(x.dtype)

    def forward(self, layers: Sequence[torch.Tensor], image_hw: Sequence[int] | None = None) -> torch.Tensor:
        """`layers`: four `[N, h, w, dim_in]` token grids; `image_hw` sets the uv aspect (default: the grid's)."""
        n, h, w, _ = layers[0].shape
        H, W = h * self.patch_size, w * self.patch_size
        aspect = W / H if image_hw is None else image_hw[1] / image_hw[0]
        pyramid = []
        for j, tokens in enumerate(layers):
            x = self.norm(tokens).permute(0, 3, 1, 2)
            x = self._with_uv(self.projects[j](x), aspect)
            pyramid.append(self.resize_layers[j](x))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(pyramid[0]), s.layer2_rn(pyramid[1]), s.layer3_rn(pyramid[2]), s.layer4_rn(pyramid[3])
        x = s.refinenet4(l4, size=l3.shape[-2:])
        x = s.refinenet3(x, l3, size=l2.shape[-2:])
        x = s.refinenet2(x, l2, size=l1.shape[-2:])
        x = s.refinenet1(x, l1)
        x = resize(s.output_conv1(x), (H, W), align_corners=True)
        if self.feature_only:
            return x
        return s.output_conv2(self._with_uv(x, aspect))
