"""Transformer pieces shared by the patch embed, the aggregator and the camera head; temporal
attention reads its frames, mask and cache from `pipeline.geometry.time_cache`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.geometry.time_cache import TimeContext


class RotaryEmbedding2D(nn.Module):
    """2-D RoPE: first half of the head dim rotated by the row index, second half by the column.

    Non-interleaved (rotate-half) convention with angles duplicated [theta, theta], as in the
    checkpoints' training code. No parameters.
    """

    def __init__(self, frequency: float = 100.0):
        super().__init__()
        self.frequency = frequency

    def _rotate_1d(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
        angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        half = dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, heads, N, head_dim]; positions [N, 2] integer (row, col)."""
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat([self._rotate_1d(rows, positions[:, 0]), self._rotate_1d(cols, positions[:, 1])], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, qkv_bias=True, proj_bias=True, qk_norm=False, rope=None, norm_eps=1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, time: TimeContext | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        match = k  # what token merging compares: the normalised keys before RoPE
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        # Under autocast the normalised q/k are fp32 while v is low precision: attend in v's dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v) if time is None else attend_in_time(q, k, v, match, time)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


def attend_in_time(q, k, v, match, time: TimeContext) -> torch.Tensor:
    """Attention of this pass's frames to themselves and the cached ones, under the time mask.

    Additive terms on the logits: -inf outside the time mask, log(size) of merged cached keys,
    and PAGE-4D's `mask_alpha * key_mask` on special-token queries only. The special queries
    are recomputed separately, so patch queries go through exactly the plain computation.
    """
    B, _, N, _ = q.shape
    per = time.tokens_per_frame
    cache = time.cache
    past = list(cache.frame_tokens) if cache is not None else []
    frame_mask = time.mask.frame_mask(N // per, len(past), q.device)
    key_mask = time.key_mask
    log_size = None
    if cache is not None:
        k, v, key_mask, log_size = cache.extend(k, v, per, key_mask=key_mask, match=match)
    bias = None
    if frame_mask is not None:
        counts = torch.tensor(past + [per] * (N // per), device=q.device)
        bias = frame_mask.repeat_interleave(per, dim=0).repeat_interleave(counts, dim=1)  # bool [N, keys]
    if log_size is not None:
        floor = torch.zeros((), dtype=q.dtype, device=q.device)
        bias = floor if bias is None else torch.where(bias, floor, float("-inf"))
        bias = bias + log_size.to(q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    if time.mask_alpha and key_mask is not None and time.special_tokens:
        rows = (torch.arange(N // per, device=q.device)[:, None] * per
                + torch.arange(time.special_tokens, device=q.device)).flatten()
        extra = (time.mask_alpha * key_mask.to(q.dtype))[:, None, None, :]  # [B, 1, 1, keys]
        rows_bias = extra
        if bias is not None:
            if bias.dtype == torch.bool:
                bias = torch.where(bias, torch.zeros((), dtype=q.dtype, device=q.device), float("-inf"))
            bias = bias if bias.dim() == 4 else bias[None, None]
            rows_bias = (bias if bias.shape[-2] == 1 else bias[..., rows, :]) + extra
        out[:, :, rows] = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=rows_bias)
    return out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim, num_heads, *, mlp_ratio=4.0, init_values=0.01, qk_norm=False, rope=None, norm_eps=1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x, pos=None, time: TimeContext | None = None):
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, time=time))
        return x + self.ls2(self.mlp(self.norm2(x)))
