"""The alternating-attention trunk: per-frame blocks and cross-frame (global) blocks.

Each frame becomes [camera token, register tokens, patch tokens]. Frame blocks attend within
a frame; global blocks attend across frames, bidirectionally (VGGT) or causally with a
sliding window over a key/value cache (StreamVGGT). Layer i's output is the frame-block
output concatenated with the global-block output, 2 x width channels.

PAGE-4D adds a dynamic mask: a small head on the frame-block output of one layer gives each
patch a value in (-0.5, 0.5), and in the global blocks of later layers the logits of each
frame's camera and register queries get `alpha * mask[key patch]` added. Patch queries are
untouched; with alpha = 0 the network is plain VGGT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import torch.nn.functional as F

from pipeline.geometry.layers import Block, RotaryEmbedding2D
from pipeline.geometry.time_cache import KVCache, TimeContext, TimeMask
from pipeline.geometry.patch_embed import ConvPatchEmbed, DinoViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DynamicMaskHead(nn.Module):
    """PAGE-4D's per-patch dynamic mask from one frame's patch tokens (checkpoint keys `head0.*`).

    Each channel is standardised over the frame's patch grid (unbiased std, floored at 1e-6);
    then mask = sigmoid(head0(x) + mean over channels of x) - 0.5, with head0 = depth-wise
    3x3 conv, GELU, 1x1 conv to `hidden`, GELU, 1x1 conv to 1. Always computed in fp32.
    """

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.head0 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(), nn.Conv2d(dim, hidden, 1), nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, patches: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """patches [N, rows*cols, C] -> mask [N, rows, cols] in (-0.5, 0.5)."""
        with torch.autocast(device_type=patches.device.type, enabled=False):
            x = patches.float().transpose(1, 2).reshape(patches.shape[0], -1, rows, cols)
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
            return torch.sigmoid(self.head0(x) + x.mean(dim=1, keepdim=True))[:, 0] - 0.5


@dataclass
class AggregatorOutput:
    """Token layers kept, {layer: [B, S, P, 2C]}, and PAGE-4D's dynamic mask [B, S, h, w] (or None)."""

    layers: dict[int, torch.Tensor]
    dynamic_mask: torch.Tensor | None = None


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
        mask_from_layer: int = 9,
        mask_layers=tuple(range(10, 20)),
        mask_alpha: float = 64.0,
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
        # a DynamicMaskHead for PAGE-4D, set by the model after all other parameters are made
        self.spatial_mask_head: DynamicMaskHead | None = None
        self.mask_from_layer, self.mask_layers, self.mask_alpha = mask_from_layer, set(mask_layers), mask_alpha
        if not self.camera_token.is_meta:
            nn.init.normal_(self.camera_token, std=1e-6)
            nn.init.normal_(self.register_token, std=1e-6)

    def new_cache(self, window: int | None, *, dtype: torch.dtype | None = None, merge_ratio: float = 0.0) -> AggregatorCache:
        """Empty caches for the global blocks: `dtype` to store them in, `merge_ratio` of cached patch tokens merged."""
        return AggregatorCache([KVCache(window=window, dtype=dtype, merge_ratio=merge_ratio,
                                        special_tokens=self.patch_start_idx) for _ in range(self.depth)])

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
    ) -> AggregatorOutput:
        """images [B, S, 3, H, W] in [0, 1] -> token layers `keep_layers` (+ the dynamic mask).

        With a cache the S frames continue the stream: they see the cached frames and the
        cache is extended with them (each frame's dynamic mask beside its keys).
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
        rows, cols = H // self.patch_size, W // self.patch_size
        pos = self._positions(rows, cols, images.device)
        pos_all = pos.repeat(S, 1)
        keep = set(keep_layers)
        out: dict[int, torch.Tensor] = {}
        dynamic = key_mask = None
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.reshape(B * S, P, C), pos=pos)
            frame_out = tokens.reshape(B, S, P, C)
            if self.spatial_mask_head is not None and i == self.mask_from_layer:
                dynamic = self.spatial_mask_head(tokens[:, self.patch_start_idx :], rows, cols)  # [B*S, rows, cols]
                key_mask = F.pad(dynamic.reshape(B * S, -1), (self.patch_start_idx, 0)).reshape(B, S * P)
            time = TimeContext(P, mask, cache.layers[i] if cache is not None else None)
            if key_mask is not None and i in self.mask_layers:
                time.key_mask, time.mask_alpha, time.special_tokens = key_mask, self.mask_alpha, self.patch_start_idx
            tokens = self.global_blocks[i](tokens.reshape(B, S * P, C), pos=pos_all, time=time)
            if i in keep:
                out[i] = torch.cat([frame_out, tokens.reshape(B, S, P, C)], dim=-1)
        if cache is not None:
            cache.frames_seen += S
        return AggregatorOutput(out, None if dynamic is None else dynamic.reshape(B, S, rows, cols))
