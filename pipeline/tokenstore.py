"""tokens.zarr's token layers: float16, or int8 / int4 codes with per-group scales beside them.

The one place that knows how geometry tokens are stored. The geometry stage writes through
`TokenCodec`; every reader (the decoder's loader, render, outside tools) opens a layer with
`open_layers` and gets float16 `[..., h, w, C]` back whatever the storage. Needs only numpy and
zarr, so outside tools can `from pipeline.tokenstore import read_tokens` without torch.

Storage of layer L (array names from `layer_array_name`):
- `float16`: `layer_LL` `[T,h,w,C]` float16.
- `int8`:    `layer_LL` `[T,h,w,C]` int8 codes in [-127, 127] and `layer_LL_scale`
             `[T,h,w,C/G]` float16; value = code * scale of its group of G channels.
- `int4`:    `layer_LL` `[T,h,w,C/2]` uint8 holding two codes in [-7, 7], each stored as
             code + 8 (channel 2j in the low nibble, 2j+1 in the high one), and `layer_LL_scale`.
Symmetric absmax quantisation: scale = max |x| of the group / 127 (or / 7), rounded up to
float16, so |x - decoded| <= scale / 2 (before the float16 rounding of the decoded value).
The group size G is in tokens.zarr's attrs (`token_codec`); without that attribute the
layers are float16 (stores written before quantisation existed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import UserError

TOKEN_DTYPES = ("float16", "int8", "int4")
QMAX = {"int8": 127, "int4": 7}
GROUP_SIZE = {"int8": None, "int4": 64}  # None = one scale per token (all its channels)


def layer_array_name(layer: int) -> str:
    return f"layer_{int(layer):02d}"


@dataclass(frozen=True)
class TokenCodec:
    """How token layers are stored: `dtype` in TOKEN_DTYPES, channels per scale `group_size`."""

    dtype: str = "float16"
    group_size: int | None = None

    @classmethod
    def for_dtype(cls, dtype: str, channels: int) -> "TokenCodec":
        if dtype not in TOKEN_DTYPES:
            raise UserError(f"unknown token dtype {dtype!r} (`geometry.token_dtype`); expected one of {', '.join(TOKEN_DTYPES)}")
        if dtype == "float16":
            return cls("float16", None)
        group = GROUP_SIZE[dtype] or channels
        group = min(group, channels)
        if channels % group or (dtype == "int4" and channels % 2):
            raise UserError(f"{dtype} tokens need a width divisible by {group} (and even), got {channels}")
        return cls(dtype, group)

    @classmethod
    def from_attrs(cls, attrs: dict) -> "TokenCodec":
        spec = attrs.get("token_codec")
        if not spec:
            return cls()
        dtype = spec.get("dtype")
        if dtype not in TOKEN_DTYPES:
            raise UserError(f"tokens.zarr attrs token_codec.dtype {dtype!r} is not one of {', '.join(TOKEN_DTYPES)}")
        return cls(dtype, spec.get("group_size"))

    def to_attrs(self) -> dict:
        return {"dtype": self.dtype, "group_size": self.group_size, "scheme": "symmetric absmax, float16 scales"
                if self.dtype != "float16" else "none"}

    # ---------------------------------------------------------------- writing
    def create(self, group, layer: int, frames: int, h: int, w: int, channels: int) -> "TokenLayer":
        from pipeline import store

        name = layer_array_name(layer)
        if self.dtype == "float16":
            codes = store.frame_array(group, name, (frames, h, w, channels), "float16")
            return TokenLayer(self, codes, None, channels)
        width = channels // 2 if self.dtype == "int4" else channels
        codes = store.frame_array(group, name, (frames, h, w, width), "uint8" if self.dtype == "int4" else "int8")
        scale = store.frame_array(group, f"{name}_scale", (frames, h, w, channels // self.group_size), "float16")
        return TokenLayer(self, codes, scale, channels)

    def _scales(self, x: np.ndarray) -> np.ndarray:
        qmax = QMAX[self.dtype]
        groups = np.abs(x.astype(np.float32)).reshape(*x.shape[:-1], -1, self.group_size).max(axis=-1)
        with np.errstate(over="ignore"):
            scale = (groups / qmax).astype(np.float16)
            low = scale.astype(np.float32) * qmax < groups  # rounded down: step up one float16
            scale[low] = np.nextafter(scale[low], np.float16(np.inf))
        return scale

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
        """x [..., C] float -> (codes, scales or None, count of values that do not fit)."""
        x = np.asarray(x, dtype=np.float32)
        if self.dtype == "float16":
            with np.errstate(over="ignore"):
                half = x.astype(np.float16)
            return half, None, int(np.count_nonzero(~np.isfinite(half)))
        qmax = QMAX[self.dtype]
        scale = self._scales(x)
        overflow = int(np.count_nonzero(~np.isfinite(scale)))
        safe = np.where(np.isfinite(scale) & (scale > 0), scale, np.float16(1)).astype(np.float32)
        grouped = x.reshape(*x.shape[:-1], -1, self.group_size) / safe[..., None]
        codes = np.clip(np.rint(np.nan_to_num(grouped)), -qmax, qmax).astype(np.int8).reshape(x.shape)
        if self.dtype == "int4":
            nibbles = (codes + 8).astype(np.uint8)
            codes = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
        return codes, scale, overflow

    def decode(self, codes: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
        """Stored codes (+ scales) -> float16 values [..., C]."""
        if self.dtype == "float16":
            return np.asarray(codes, dtype=np.float16)
        codes = np.asarray(codes)
        if self.dtype == "int4":
            packed = codes.astype(np.int16)
            codes = np.stack([(packed & 15) - 8, (packed >> 4) - 8], axis=-1).reshape(*codes.shape[:-1], -1)
        grouped = codes.reshape(*codes.shape[:-1], -1, self.group_size).astype(np.float32)
        values = grouped * np.asarray(scale, dtype=np.float32)[..., None]
        return values.reshape(codes.shape).astype(np.float16)


@dataclass
class TokenLayer:
    """One stored token layer: index it by frame(s) to read float16 `[..., h, w, C]`; assign to write."""

    codec: TokenCodec
    codes: object  # zarr array
    scale: object | None  # zarr array or None
    channels: int
    overflow: int = 0  # values written so far that did not fit the storage (non-finite)

    @property
    def shape(self) -> tuple[int, ...]:
        """The decoded shape, `[T, h, w, C]`."""
        return tuple(int(n) for n in self.codes.shape[:-1]) + (int(self.channels),)

    def __getitem__(self, frames) -> np.ndarray:
        return self.codec.decode(self.codes[frames], None if self.scale is None else self.scale[frames])

    def __setitem__(self, frame: int, values: np.ndarray) -> None:
        """Write one frame [h, w, C] (counting the values that do not fit in `overflow`)."""
        codes, scale, overflow = self.codec.encode(values)
        self.codes[frame] = codes
        if self.scale is not None:
            self.scale[frame] = scale
        self.overflow += overflow

    def read(self, frames: Sequence[int]) -> np.ndarray:
        """float16 `[len(frames), h, w, C]`; consecutive frames are read in one slice."""
        frames = [int(t) for t in frames]
        if frames and frames == list(range(frames[0], frames[0] + len(frames))):
            return self[frames[0] : frames[0] + len(frames)]
        return np.stack([self[t] for t in frames])


def open_layers(group, layers: Sequence[int], *, what: str = "tokens.zarr") -> list[TokenLayer]:
    """The stored token layers of an open tokens.zarr group, decoded on read."""
    from pipeline import store

    codec = TokenCodec.from_attrs(dict(group.attrs))
    names = [layer_array_name(k) for k in layers]
    if codec.dtype != "float16":
        names += [f"{n}_scale" for n in names]
    store.require_arrays(group, sorted(set(names)), what=what)
    out = []
    for k in layers:
        name = layer_array_name(k)
        codes = group[name]
        scale = group[f"{name}_scale"] if codec.dtype != "float16" else None
        width = int(codes.shape[-1]) * (2 if codec.dtype == "int4" else 1)
        out.append(TokenLayer(codec, codes, scale, width))
    return out


def read_tokens(path: str | Path, layer: int, frames: Sequence[int] | None = None) -> np.ndarray:
    """float16 `[T', h, w, C]` patch tokens of one layer of a tokens.zarr (all frames by default)."""
    from pipeline import store

    group = store.open_group(path, what="tokens.zarr")
    (tokens,) = open_layers(group, [layer], what=f"tokens.zarr {path}")
    return tokens.read(range(tokens.shape[0]) if frames is None else frames)
