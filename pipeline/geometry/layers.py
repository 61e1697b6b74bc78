"""Transformer pieces shared by the patch embed, the aggregator and the camera head.

Attention can look back in time: a `KVCache` holds the keys/values of earlier frames and a
`TimeMask` says which frames each query frame may see (causal, within a sliding window).
One code path serves the three modes: offline (no cache, bidirectional), batch (a chunk of
frames with a block-causal banded mask, continuing from the cache) and stream (one frame at a
time against the cache, no mask needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TimeMask:
    """Which key frames a query frame sees: j <= i when causal, and i - j <= window if set."""

    causal: bool = False
    window: int | None = None

    def frame_mask(self, n_query: int, n_past: int, device) -> torch.Tensor | None:
        """[n_query, n_past + n_query] bool (True = attend), or None when every key is visible."""
        if not self.causal:
            if n_past:
                raise ValueError("a key/value cache needs causal attention")
            return None
        qi = torch.arange(n_query, device=device)[:, None] + n_past
        kj = torch.arange(n_past + n_query, device=device)[None, :]
        allowed = kj <= qi
        if self.window is not None:
            allowed &= (qi - kj) <= self.window
        return None if bool(allowed.all()) else allowed


@dataclass
class KVCache:
    """Keys (after qk-norm and RoPE) and values of earlier frames for one attention layer.

    Caching the rotated, normalised keys is equivalent to upstream's caching of raw keys and
    re-normalising them every step (RoPE positions repeat per frame), and cheaper.
    """

    window: int | None = None
    k: torch.Tensor | None = None  # [B, heads, frames * tokens_per_frame, head_dim]
    v: torch.Tensor | None = None
    frames: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor, n_frames: int, tokens_per_frame: int):
        """Add the new frames; return all keys/values to attend to (before the window drops any)."""
        k_all = k if self.k is None else torch.cat([self.k, k], dim=2)
        v_all = v if self.v is None else torch.cat([self.v, v], dim=2)
        self.k, self.v = k_all, v_all
        self.frames += n_frames
        if self.window is not None and self.frames > self.window:
            drop = (self.frames - self.window) * tokens_per_frame
            self.k, self.v = k_all[:, :, drop:], v_all[:, :, drop:]
            self.frames = self.window
        return k_all, v_all

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


@dataclass
class TimeContext:
    """What a temporal attention layer needs besides its input: frame size, mask, cache."""

    tokens_per_frame: int
    mask: TimeMask = field(default_factory=TimeMask)
    cache: KVCache | None = None


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
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        # Under autocast the normalised q/k are fp32 while v is low precision: attend in v's dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        mask = None
        if time is not None:
            per = time.tokens_per_frame
            cache = time.cache
            n_past = cache.frames if cache is not None else 0
            frame_mask = time.mask.frame_mask(N // per, n_past, x.device)
            if cache is not None:
                k, v = cache.append(k, v, N // per, per)
            if frame_mask is not None:
                mask = frame_mask.repeat_interleave(per, dim=0).repeat_interleave(per, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


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
