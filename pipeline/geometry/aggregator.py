"""The alternating-attention trunk: per-frame blocks and cross-frame (global) blocks.

Each frame becomes [camera token, register tokens, patch tokens]. Frame blocks attend within
a frame; global blocks attend across frames, bidirectionally (VGGT) or causally with a
sliding window over a key/value cache (StreamVGGT). Layer i's output is the frame-block
output concatenated with the global-block output, 2 x width channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.geometry.layers import Block, KVCache, RotaryEmbedding2D, TimeContext, TimeMask
from pipeline.geometry.patch_embed import ConvPatchEmbed, DinoViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AggregatorCache:
    """Per global layer key/value caches for streaming; frames seen so far."""

    layers: list[KVCache]
    frames_seen: int = 0

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)


class Aggregator(nn.Module):
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
        patch_embed: str = "dinov2",
        patch_embed_depth: int = 24,
        patch_embed_heads: int = 16,
        qk_norm: bool = True,
        rope_freq: float = 100.0,
        init_values: float = 0.01,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.num_register_tokens = num_register_tokens
        self.patch_start_idx = 1 + num_register_tokens
        if patch_embed == "dinov2":
            self.patch_embed = DinoViT(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=embed_dim,
                depth=patch_embed_depth,
                num_heads=patch_embed_heads,
                mlp_ratio=mlp_ratio,
                num_register_tokens=num_register_tokens,
            )
        elif patch_embed == "conv":
            self.patch_embed = ConvPatchEmbed(patch_size, embed_dim)
        else:
            raise ValueError(f"unknown patch embed {patch_embed!r}; expected 'dinov2' or 'conv'")
        rope = RotaryEmbedding2D(rope_freq) if rope_freq > 0 else None

        def block():
            return Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, qk_norm=qk_norm, rope=rope)

        self.frame_blocks = nn.ModuleList(block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(block() for _ in range(depth))
        # index 0: the first (reference) frame; index 1: every later frame
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, num_register_tokens, embed_dim))
        if not self.camera_token.is_meta:
            nn.init.normal_(self.camera_token, std=1e-6)
            nn.init.normal_(self.register_token, std=1e-6)

    def new_cache(self, window: int | None) -> AggregatorCache:
        return AggregatorCache([KVCache(window=window) for _ in range(self.depth)])

    def _special_tokens(self, first_frame: int, n_frames: int, batch: int) -> torch.Tensor:
        which = torch.tensor([0 if first_frame + s == 0 else 1 for s in range(n_frames)], device=self.camera_token.device)
        special = torch.cat([self.camera_token, self.register_token], dim=2)[0, which]  # [S, 1+R, C]
        return special.unsqueeze(0).expand(batch, -1, -1, -1).reshape(batch * n_frames, *special.shape[1:])

    def _positions(self, rows: int, cols: int, device) -> torch.Tensor:
        grid = torch.cartesian_prod(torch.arange(rows, device=device), torch.arange(cols, device=device)) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype, device=device)
        return torch.cat([special, grid], dim=0)

    def forward(
        self,
        images: torch.Tensor,
        *,
        keep_layers,
        mask: TimeMask = TimeMask(),
        cache: AggregatorCache | None = None,
    ) -> dict[int, torch.Tensor]:
        """images [B, S, 3, H, W] in [0, 1] -> {layer: tokens [B, S, P, 2C]} for `keep_layers`.

        With a cache the S frames continue the stream: they see the cached frames and the
        cache is extended with them.
        """
        B, S, _, H, W = images.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        first = cache.frames_seen if cache is not None else 0
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        x = ((images - mean) / std).reshape(B * S, 3, H, W)
        patches = self.patch_embed(x)
        tokens = torch.cat([self._special_tokens(first, S, B).to(patches.dtype), patches], dim=1)
        P, C = tokens.shape[1], tokens.shape[2]
        pos = self._positions(H // self.patch_size, W // self.patch_size, images.device)
        pos_all = pos.repeat(S, 1)
        keep = set(keep_layers)
        out: dict[int, torch.Tensor] = {}
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.reshape(B * S, P, C), pos=pos)
            frame_out = tokens.reshape(B, S, P, C)
            time = TimeContext(P, mask, cache.layers[i] if cache is not None else None)
            tokens = self.global_blocks[i](tokens.reshape(B, S * P, C), pos=pos_all, time=time)
            if i in keep:
                out[i] = torch.cat([frame_out, tokens.reshape(B, S, P, C)], dim=-1)
        if cache is not None:
            cache.frames_seen += S
        return out
