"""Image -> patch tokens: a DINOv2-style ViT with register tokens, or a plain strided conv.

The ViT matches DINOv2 ViT-L/14-reg as VGGT uses it: a learned position table for a square
`img_size` grid, resized bicubically (antialiased) to other grids; the table is added to the
class and patch tokens before the registers are inserted; only the normalised patch tokens
leave the module. The conv variant exists for tiny test and demo models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.geometry.layers import Block


class ConvPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    def __init__(
        self,
        *,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_register_tokens = num_register_tokens
        self.patch_embed = ConvPatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # kept for the key layout; unused
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if not self.pos_embed.is_meta:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            nn.init.normal_(self.register_tokens, std=1e-6)

    def _position_table(self, rows: int, cols: int, dtype) -> torch.Tensor:
        table = self.pos_embed
        if rows * cols == self.grid * self.grid and rows == cols:
            return table.to(dtype)
        table = table.float()
        patch = table[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(rows, cols), mode="bicubic", antialias=True)
        patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([table[:, :1], patch], dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] (normalised) -> patch tokens [N, (H/p)(W/p), C]."""
        n, _, h, w = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
        x = x + self._position_table(h // self.patch_size, w // self.patch_size, x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
