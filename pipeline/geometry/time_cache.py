"""Attention that looks back in time: a `KVCache` holds the keys/values of earlier frames (merged
when `merge_ratio` > 0) and a `TimeMask` says which frames each query frame may see (causal,
within a sliding window). One code path serves the three modes: offline (no cache,
bidirectional), batch (a chunk of frames with a block-causal banded mask, continuing from the
cache) and stream (one frame at a time against the cache, no mask needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


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
    re-normalising them every step (RoPE positions repeat per frame), and cheaper. Beside the
    keys it can hold, per key, PAGE-4D's dynamic mask (`key_mask`) and, when cached frames are
    token-merged, the log of how many tokens each key stands for (`log_size`). `dtype` stores
    the cache in another precision than it is computed in (e.g. bfloat16 under fp32 compute).
    """

    window: int | None = None
    dtype: torch.dtype | None = None
    merge_ratio: float = 0.0
    special_tokens: int = 0  # tokens at the start of each frame that are never merged
    k: torch.Tensor | None = None  # [B, heads, keys, head_dim]
    v: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None  # [B, keys]
    log_size: torch.Tensor | None = None  # [B, keys]
    frame_tokens: list[int] = field(default_factory=list)  # keys held per cached frame

    @property
    def frames(self) -> int:
        return len(self.frame_tokens)

    def extend(self, k, v, tokens_per_frame: int, *, key_mask=None, match=None):
        """Add the new frames; return (k, v, key_mask, log_size) to attend to, before the window drops any.

        The new frames take part unmerged; they are stored merged (if `merge_ratio` > 0) and in
        the cache's dtype, and frames beyond the window are dropped.
        """
        att_k, att_v = _joined(self.k, k, 2), _joined(self.v, v, 2)
        att_mask = None if key_mask is None else _joined(self.key_mask, key_mask, 1)
        att_log = None if self.log_size is None else _joined(self.log_size, self.log_size.new_zeros(k.shape[0], k.shape[2]), 1)
        if self.merge_ratio > 0:
            new_k, new_v, new_mask, new_log, counts = merge_frames(
                k, v, key_mask, match, tokens_per_frame, self.merge_ratio, self.special_tokens)
            self.log_size = _joined(self.log_size, new_log, 1)
        else:
            new_k, new_v, new_mask, counts = k, v, key_mask, [tokens_per_frame] * (k.shape[2] // tokens_per_frame)
        if self.merge_ratio > 0 or (self.dtype is not None and self.dtype != k.dtype):
            store = self.dtype or k.dtype
            self.k, self.v = _joined(self.k, new_k.to(store), 2), _joined(self.v, new_v.to(store), 2)
            self.key_mask = None if new_mask is None else _joined(self.key_mask, new_mask, 1)
        else:  # what is attended to is what is kept: no second copy
            self.k, self.v, self.key_mask = att_k, att_v, att_mask
        self.frame_tokens = self.frame_tokens + counts
        if self.window is not None and self.frames > self.window:
            excess = self.frames - self.window
            drop = sum(self.frame_tokens[:excess])
            self.frame_tokens = self.frame_tokens[excess:]
            self.k, self.v = self.k[:, :, drop:], self.v[:, :, drop:]
            self.key_mask = None if self.key_mask is None else self.key_mask[:, drop:]
            self.log_size = None if self.log_size is None else self.log_size[:, drop:]
        return att_k, att_v, att_mask, att_log

    def nbytes(self) -> int:
        held = (self.k, self.v, self.key_mask, self.log_size)
        return sum(t.numel() * t.element_size() for t in held if t is not None)


def _joined(old: torch.Tensor | None, new: torch.Tensor, dim: int) -> torch.Tensor:
    """`new` after `old` along `dim`, in `new`'s dtype."""
    return new if old is None else torch.cat([old.to(new.dtype), new], dim=dim)


MERGE_DST_STRIDE = 4  # every 4th patch token of a frame receives merges, so at most 3/4 merge away
MAX_MERGE_RATIO = 1 - 1 / MERGE_DST_STRIDE


def merge_frames(k, v, key_mask, match, tokens_per_frame: int, ratio: float, special: int):
    """Merge the most similar patch tokens of each frame (training-free, as ToMe / FastVGGT).

    Per frame, every `MERGE_DST_STRIDE`-th patch token is a destination; every other patch token
    finds its most similar destination (cosine of `match`, the normalised keys before RoPE, all
    heads together), and the `ratio` share of the patch tokens with the best matches is averaged
    into their destinations (keys, values and dynamic mask alike, weighted by size). Special
    tokens are kept. Attending with `log_size` added to the logits makes a merged key count as
    the tokens it replaced, so merging identical tokens changes nothing.
    Returns k, v [B, heads, keys, head_dim], key_mask [B, keys] or None, log_size [B, keys] and
    the keys kept per frame.
    """
    B, H, N, D = k.shape
    S, per = N // tokens_per_frame, tokens_per_frame
    n_patch = per - special
    patch = torch.arange(n_patch, device=k.device)
    dst, src = patch[patch % MERGE_DST_STRIDE == 0], patch[patch % MERGE_DST_STRIDE != 0]
    n_merge = min(int(round(ratio * n_patch)), src.numel())

    def token_major(x):  # [B, H, S*per, D] -> [B, S, per, H*D]
        return x.reshape(B, H, S, per, D).permute(0, 2, 3, 1, 4).reshape(B, S, per, H * D).float()

    channels = [token_major(k), token_major(v)]
    if key_mask is not None:
        channels.append(key_mask.reshape(B, S, per, 1).float())
    x = torch.cat(channels, dim=-1)  # [B, S, per, features]
    feat = F.normalize(token_major(match)[:, :, special:], dim=-1)
    best, target = (feat[:, :, src] @ feat[:, :, dst].transpose(-1, -2)).max(dim=-1)  # [B, S, src]
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged, kept = order[..., :n_merge], order[..., n_merge:].sort(dim=-1).values
    into = target.gather(-1, merged)
    patches_src = x[:, :, special:][:, :, src]
    width = x.shape[-1]
    sums = x[:, :, special:][:, :, dst].clone()
    sums.scatter_add_(2, into[..., None].expand(-1, -1, -1, width),
                      patches_src.gather(2, merged[..., None].expand(-1, -1, -1, width)))
    size = torch.ones(B, S, dst.numel(), device=k.device)
    size.scatter_add_(2, into, torch.ones_like(into, dtype=size.dtype))
    rest = patches_src.gather(2, kept[..., None].expand(-1, -1, -1, width))
    out = torch.cat([x[:, :, :special], sums / size[..., None], rest], dim=2)  # [B, S, per', features]
    zeros = size.new_zeros
    log_size = torch.cat([zeros(B, S, special), size.log(), zeros(B, S, rest.shape[2])], dim=2).reshape(B, -1)
    kept_per_frame = out.shape[2]

    def heads_major(y, dtype):  # [B, S, per', H*D] -> [B, H, S*per', D]
        return y.reshape(B, S, kept_per_frame, H, D).permute(0, 3, 1, 2, 4).reshape(B, H, -1, D).to(dtype)

    hd = H * D
    new_mask = None if key_mask is None else out[..., 2 * hd].reshape(B, -1).to(key_mask.dtype)
    return (heads_major(out[..., :hd], k.dtype), heads_major(out[..., hd : 2 * hd], v.dtype), new_mask, log_size,
            [kept_per_frame] * S)


@dataclass
class TimeContext:
    """What a temporal attention layer needs besides its input: frame size, mask, cache.

    `key_mask` [B, keys of this pass] is PAGE-4D's dynamic mask (0 on special tokens); with
    `mask_alpha` != 0 the logits of the first `special_tokens` queries of every frame get
    `mask_alpha * key_mask[key]` added (PAGE-4D's dynamics-aware global attention).
    """

    tokens_per_frame: int
    mask: TimeMask = field(default_factory=TimeMask)
    cache: KVCache | None = None
    key_mask: torch.Tensor | None = None
    mask_alpha: float = 0.0
    special_tokens: int = 0
