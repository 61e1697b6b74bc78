"""Frames for the geometry model: from frames.zarr or an image folder, sized for 14-px patches.

If the longest side exceeds `max_size` the frame is resized down (aspect kept, bicubic with
antialiasing); then each side is centre-cropped to a multiple of the patch size. A frame
whose sides are already multiples of the patch and within `max_size` goes in unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from pipeline.errors import UserError

@dataclass(frozen=True)
class Transform:
    """source_size [H, W] -> optional resize_to [h, w] -> crop [top, left, H', W'] (resized coords)."""

    source_size: tuple[int, int]
    resize_to: tuple[int, int] | None
    crop: tuple[int, int, int, int]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.crop[2], self.crop[3]

    def to_dict(self) -> dict:
        return {
            "source_size": list(self.source_size),
            "resize_to": None if self.resize_to is None else list(self.resize_to),
            "crop": list(self.crop),
        }


def plan_transform(height: int, width: int, *, max_size: int = 518, patch: int = 14) -> Transform:
    if max_size < patch:
        raise UserError(f"max size {max_size} is smaller than one {patch}-pixel patch")
    resize = None
    h, w = height, width
    if max(h, w) > max_size:
        scale = max_size / max(h, w)
        h, w = max(patch, round(h * scale)), max(patch, round(w * scale))
        resize = (h, w)
    ch, cw = h // patch * patch, w // patch * patch
    if ch == 0 or cw == 0:
        raise UserError(f"frames of {height}x{width} are smaller than one {patch}-pixel patch")
    return Transform((height, width), resize, ((h - ch) // 2, (w - cw) // 2, ch, cw))


def crop_box_in_frame(transform: dict | None, frame_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the model input's crop, in frame pixels.

    `transform` is tokens.zarr's {source_size, resize_to, crop [top, left, H', W']} with the crop
    in resized coordinates; without a crop the model input covers the whole frame.
    """
    H, W = int(frame_hw[0]), int(frame_hw[1])
    if not transform or transform.get("crop") is None:
        return 0, 0, H, W
    top, left, ch, cw = (float(v) for v in transform["crop"])
    resized = transform.get("resize_to") or transform.get("source_size") or [H, W]
    sy, sx = H / float(resized[0]), W / float(resized[1])
    y0, y1 = round(top * sy), round((top + ch) * sy)
    x0, x1 = round(left * sx), round((left + cw) * sx)
    if y1 <= y0 or x1 <= x0:
        raise UserError(f"tokens.zarr transform crop {transform['crop']} is empty in a {H}x{W} frame")
    return int(y0), int(x0), int(y1 - y0), int(x1 - x0)


def apply_transform(rgb: np.ndarray, t: Transform) -> np.ndarray:
    if t.resize_to is not None:
        from PIL import Image

        h, w = t.resize_to
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC))
    top, left, ch, cw = t.crop
    return rgb[top : top + ch, left : left + cw]


@dataclass
class FrameSource:
    """A sequence of same-sized RGB frames, read lazily one at a time."""

    path: Path
    kind: str  # "frames.zarr" or "images"
    size: tuple[int, int]
    frame_names: list[str]
    source_indices: list[int]
    _read: Callable[[int], np.ndarray]

    def __len__(self) -> int:
        return len(self.frame_names)

    def frames(self, transform: Transform | None = None) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            rgb = self._read(i)
            yield rgb if transform is None else apply_transform(rgb, transform)


def open_frames(path: str | Path, *, config_key: str = "geometry.frames") -> FrameSource:
    """frames.zarr (array `rgb`, attrs frame_names / source_indices) or a folder of images."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"frames not found: {p} (`{config_key}`; expected frames.zarr or an image folder)")
    if (p / "zarr.json").exists():
        from pipeline import store

        group = store.open_group(p, what="frames.zarr")
        store.require_arrays(group, ["rgb"], what=f"frames {p}")
        rgb = group["rgb"]
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or str(rgb.dtype) != "uint8":
            raise UserError(f"{p}/rgb must be [T,H,W,3] uint8, found {list(rgb.shape)} {rgb.dtype}")
        T = rgb.shape[0]
        if T == 0:
            raise UserError(f"{p} holds no frames")
        attrs = dict(group.attrs)
        names = list(attrs.get("frame_names") or [f"{i:06d}" for i in range(T)])
        indices = [int(i) for i in (attrs.get("source_indices") or range(T))]
        if len(names) != T or len(indices) != T:
            raise UserError(f"{p}: attrs frame_names/source_indices do not match its {T} frames")
        return FrameSource(p, "frames.zarr", tuple(rgb.shape[1:3]), names, indices, lambda i: np.asarray(rgb[i]))
    if not p.is_dir():
        raise UserError(f"{p} is neither a frames.zarr group nor an image folder (`{config_key}`)")
    from pipeline.readers import image_files, image_size, load_rgb

    files = image_files(p, config_key=config_key)
    size = image_size(files)
    return FrameSource(p, "images", size, [f.stem for f in files], list(range(len(files))), lambda i: load_rgb(files[i]))
