"""Relevancy of typed text on one rendered frame, as the evaluation computes it, fast enough to type.

Decoding the latents (3 levels x H x W through the autoencoder's decoder) costs far more than
scoring a text, so each frame is decoded once into a cache bounded in bytes. What is cached is
not the 512-d unit features but the decoder's activations before its last linear layer, scaled
by 1 / |W h + b|, and that 1 / |W h + b| (`encoders.SplitDecoder`): a text's cosine with the
unit features is then one [HW, 256] x [256] product plus a scaled offset, exact to float
rounding, at half the bytes and without the last layer's output ever being kept (float32, or
float16 where one frame's float32 cache exceeds the whole budget). With them the cache keeps
the frame's cosine with its hardest canonical negative per pixel (float32): LERF relevancy is
the minimum over the negatives of softmax(t * [pos, neg_j])[0], which is reached at the largest
neg_j, so `relevancy_from_cosines` against that one negative gives the same value as against
all of them. A query then runs the evaluation's own `relevancy_from_cosines`, `masks_for_level`
(whose threshold masks are built only for the level that is read) and `choose_level`. On a GPU
the cache and the products stay on the device. `prefetch` decodes a frame in the background
(the viewer asks for the frame it shows), so a query typed a moment later finds it ready.

Time-sensitive queries follow the evaluation's `video` variant (mean cosine of the decoded video
features under the query's mask with its embedding, three-tap smoothing over the frames, the mean
as threshold), or its `clip` variant (the chosen level's smoothed peak) where the render has no
video head or no video autoencoder is known.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.evaluate.encoders import Decoder, TextVectors, decode_unit, split_decoder
from pipeline.evaluate.protocol import LEVELS, Protocol
from pipeline.evaluate.relevancy import LevelMasks, choose_level, masks_for_level, relevancy_from_cosines
from pipeline.evaluate.temporal import temporal_smooth, threshold_for


@dataclass
class FrameRelevancy:
    text: str
    frame: int
    levels: list[LevelMasks]  # s, m, l
    chosen: int  # index into LEVELS (evaluation's choice, or the picked level)
    seconds: float
    cached: bool  # the frame's features were already decoded

    @property
    def smoothed(self) -> np.ndarray:
        """[H,W] float32 smoothed relevancy at the chosen level (what the evaluation's figures show)."""
        return self.levels[self.chosen].smoothed.numpy()

    @property
    def mask(self) -> np.ndarray:
        return self.levels[self.chosen].post.numpy()


@dataclass
class StateTrack:
    """A time-sensitive query over every rendered frame."""

    text: str
    variant: str  # "video" | "clip"
    similarity: np.ndarray  # [T] raw
    smoothed: np.ndarray  # [T]
    threshold: float
    holds: np.ndarray  # [T] bool


@dataclass
class _Frame:
    scaled: list[torch.Tensor]  # per level [HW, m] h / |W h + b| (cache dtype, device)
    inv_norm: list[torch.Tensor]  # per level [HW] float32 1 / |W h + b|
    neg_cos: list[torch.Tensor]  # per level [HW, 1] float32 cosine with the hardest negative
    nbytes: int


class RelevancyEngine:
    """Relevancy of any text on any frame of an open render.zarr group."""

    def __init__(self, render, *, decoder: Decoder, text_vectors: Callable[[list[str]], TextVectors],
                 protocol: Protocol = Protocol(), device: str = "cpu", cache_bytes: int = 4 << 30,
                 video_decoder: Decoder | None = None, video_text_vectors: Callable[[list[str]], TextVectors] | None = None,
                 chunk: int = 8192):
        self.render = render
        self.names = [f"lang_{lv}" for lv in LEVELS]
        self.T, self.H, self.W, self.C = render[self.names[0]].shape
        self.decoder = decoder
        self.split = split_decoder(decoder)
        self.text_vectors = text_vectors
        self.protocol = protocol
        self.device = torch.device(device)
        self.cache_bytes = int(cache_bytes)
        self.video_decoder = video_decoder if "video" in render else None
        self.video_text_vectors = video_text_vectors
        self.chunk = chunk
        self._frames: OrderedDict[int, _Frame] = OrderedDict()
        self._inflight: dict[int, threading.Event] = {}
        self._prefetch_want: int | None = None
        self._prefetch_wake = threading.Event()
        self._prefetcher: threading.Thread | None = None
        self._closed = False
        self._texts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._video_text: dict[str, torch.Tensor] = {}
        self._tracks: dict[tuple[str, str], StateTrack] = {}
        self._lock = threading.RLock()
        self.negatives = self.split.text_side(self._matrix(list(protocol.negatives)))
        self.dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ text
    def _matrix(self, texts: list[str]) -> torch.Tensor:
        return self.text_vectors(texts).matrix(texts).to(self.device)

    def text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(W^T q [m], b . q) of the text's unit vector q in the scene's CLIP space (cached)."""
        with self._lock:
            if text not in self._texts:
                u, c = self.split.text_side(self._matrix([text]))
                self._texts[text] = (u[:, 0], c[0])
            return self._texts[text]

    # ------------------------------------------------------------------ per-frame features
    def _latents(self, t: int) -> list[torch.Tensor]:
        lat = [torch.as_tensor(np.asarray(self.render[n][t], dtype=np.float32)) for n in self.names]
        if self.protocol.remap_positive and min(float(x.min()) for x in lat) > 0:
            lat = [x * 2 - 1 for x in lat]  # as the evaluation does
        return [x.reshape(-1, self.C) for x in lat]

    def _decode(self, t: int) -> _Frame:
        scaled, inv, negs, nbytes = [], [], [], 0
        for lat in self._latents(t):
            a, r = self.split.scaled_hidden(lat.to(self.device), chunk=self.chunk)
            u, c = self.negatives
            negs.append((a @ u + r[:, None] * c).max(dim=-1, keepdim=True).values)
            if self.dtype is None:
                per_frame = 4 * a.numel() * len(self.names)
                self.dtype = torch.float32 if per_frame <= self.cache_bytes else torch.float16
            scaled.append(a.to(self.dtype))
            inv.append(r)
            nbytes += scaled[-1].numel() * scaled[-1].element_size() + (r.numel() + negs[-1].numel()) * 4
        return _Frame(scaled=scaled, inv_norm=inv, neg_cos=negs, nbytes=nbytes)

    def frame_features(self, t: int) -> tuple[_Frame, bool]:
        """(decoded features of frame t, whether they were cached already)."""
        if not 0 <= t < self.T:
            raise UserError(f"frame {t} is outside the render's {self.T} frames")
        while True:
            with self._lock:
                if t in self._frames:
                    self._frames.move_to_end(t)
                    return self._frames[t], True
                busy = self._inflight.get(t)
                if busy is None:
                    busy = self._inflight[t] = threading.Event()
                    break
            busy.wait()  # another thread is decoding this frame: take its result
        try:
            fr = self._decode(t)
            with self._lock:
                self._frames[t] = fr
                while len(self._frames) > 1 and sum(f.nbytes for f in self._frames.values()) > self.cache_bytes:
                    self._frames.popitem(last=False)
        finally:
            with self._lock:
                self._inflight.pop(t).set()
        return fr, False

    def prefetch(self, t: int) -> None:
        """Decode frame t in the background (the latest request wins; one frame at a time)."""
        with self._lock:
            if self._closed or t in self._frames or t in self._inflight:
                return
            self._prefetch_want = t
            if self._prefetcher is None:
                self._prefetcher = threading.Thread(target=self._prefetch_loop, name="viewer-prefetch", daemon=True)
                self._prefetcher.start()
        self._prefetch_wake.set()

    def _prefetch_loop(self) -> None:
        while not self._closed:
            self._prefetch_wake.wait()
            self._prefetch_wake.clear()
            with self._lock:
                t, self._prefetch_want = self._prefetch_want, None
            if t is not None and not self._closed:
                self.frame_features(t)

    def close(self) -> None:
        self._closed = True
        self._prefetch_wake.set()
        if self._prefetcher is not None:
            self._prefetcher.join(timeout=2)  # a decode under way finishes on its own (daemon thread)

    def cached_frames(self) -> list[int]:
        with self._lock:
            return list(self._frames)

    def cache_nbytes(self) -> int:
        with self._lock:
            return sum(f.nbytes for f in self._frames.values())

    # ------------------------------------------------------------------ relevancy
    def _cosines(self, scaled: torch.Tensor, inv_norm: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """[HW] cosines of the unit features with the text: scaled_h @ W^T q + (b . q) / |W h + b|."""
        u, c = text
        if scaled.dtype == torch.float32:
            out = scaled @ u
        else:
            out = torch.empty(len(scaled), dtype=torch.float32, device=scaled.device)
            for i in range(0, len(scaled), self.chunk):
                out[i : i + self.chunk] = scaled[i : i + self.chunk].float() @ u
        return out.add_(inv_norm * c)

    def frame(self, t: int, text: str, level: str = "auto") -> FrameRelevancy:
        """Smoothed relevancy, masks and the chosen level of `text` on frame t."""
        start = time.perf_counter()
        q = self.text(text)
        fr, cached = self.frame_features(t)
        lvls = []
        for scaled, inv, neg in zip(fr.scaled, fr.inv_norm, fr.neg_cos):
            pos = self._cosines(scaled, inv, q)[:, None]
            rel = relevancy_from_cosines(pos, neg, self.protocol.temperature)[:, 0].reshape(self.H, self.W)
            lvls.append(masks_for_level(rel.cpu(), self.protocol))
        k = choose_level(lvls, self.protocol.level_strategy) if level == "auto" else LEVELS.index(level)
        return FrameRelevancy(text=text, frame=t, levels=lvls, chosen=k, seconds=time.perf_counter() - start,
                              cached=cached)

    # ------------------------------------------------------------------ time-sensitive
    @property
    def state_variant(self) -> str:
        return "video" if self.video_decoder is not None and self.video_text_vectors is not None else "clip"

    def track(self, text: str, progress: Callable[[int, int], None] | None = None) -> StateTrack:
        """The frames where a time-sensitive `text` holds (every rendered frame is scored)."""
        variant = self.state_variant
        key = (text, variant)
        with self._lock:
            if key in self._tracks:
                return self._tracks[key]
        e5 = None
        if variant == "video":
            if text not in self._video_text:
                self._video_text[text] = self.video_text_vectors([text]).matrix([text])[0]
            e5 = self._video_text[text]
        sims = np.zeros(self.T, np.float32)
        for t in range(self.T):
            rel = self.frame(t, text)
            chosen = rel.levels[rel.chosen]
            if variant == "clip":
                sims[t] = chosen.peak
            else:
                v = torch.as_tensor(np.asarray(self.render["video"][t], dtype=np.float32)).reshape(self.H, self.W, -1)
                pix = v[chosen.pre]
                if len(pix):
                    sims[t] = float((decode_unit(self.video_decoder, pix) @ e5.cpu()).mean().to(torch.float32))
                else:
                    sims[t] = np.nan
            if progress is not None:
                progress(t + 1, self.T)
        smoothed = temporal_smooth(sims, self.protocol.temporal_weights)
        rule = self.protocol.video_threshold if variant == "video" else self.protocol.clip_threshold
        valid = np.isfinite(sims)
        thr = threshold_for(sims[valid], smoothed[valid], rule) if valid.any() else float("nan")
        holds = np.where(np.isfinite(smoothed), smoothed >= np.float32(thr), False)
        tr = StateTrack(text=text, variant=variant, similarity=sims, smoothed=smoothed, threshold=thr, holds=holds)
        with self._lock:
            self._tracks[key] = tr
        return tr


def heat_colors(smoothed: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """[N,3] uint8 turbo colours of the points at `pixels` (flat indices), stretched over the whole
    frame's min/max exactly as the evaluation's overlay figures (`figures.heat_rgb`) are."""
    from pipeline.evaluate.figures import heat_rgb

    return heat_rgb(smoothed).reshape(-1, 3)[pixels]
