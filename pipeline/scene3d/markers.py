"""Numbered object markers: where they go in a frame (inside the mask) and how they are drawn.

A frame marker sits at the pixel of the object's mask farthest from the mask's border (the
distance-transform maximum), so it is inside the mask even for a ring or an L shape. The number
drawn is the object's large-level id, the same number as in `<OBJ###>` and on the BEV.
"""

from __future__ import annotations

import numpy as np

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
                    [240, 50, 230], [210, 245, 60], [0, 128, 128], [170, 110, 40], [128, 0, 0], [0, 0, 128]], np.uint8)


def colour_of(obj_id: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[int(obj_id) % len(PALETTE)])


def interior_point(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the mask pixel farthest from the mask's border; None for an empty mask."""
    import cv2

    m = np.ascontiguousarray(mask.astype(np.uint8))
    if not m.any():
        return None
    dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def frame_markers(id_map: np.ndarray, ids, *, min_area: int = 30) -> dict[int, tuple[int, int]]:
    """id -> (x, y) for each object of `ids` covering at least `min_area` pixels of `id_map`."""
    out = {}
    for k in ids:
        mask = id_map == k
        if int(mask.sum()) >= min_area:
            p = interior_point(mask)
            if p is not None:
                out[int(k)] = p
    return out


def resize_nearest(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downsize (never enlarge) so that max(H, W) <= max_side with nearest resampling; (image, scale)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.NEAREST)), scale


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow without scalable default font
        return ImageFont.load_default()


def draw_markers(image: np.ndarray, markers: dict[int, tuple[float, float]], *, size: int = 12) -> np.ndarray:
    """The image with each id as a number in a filled box centred on its (x, y)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(im)
    font = _font(size)
    for k, (x, y) in sorted(markers.items()):
        text = str(k)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 4, bottom - top + 4
        x0, y0 = int(round(x - w / 2)), int(round(y - h / 2))
        colour = colour_of(k)
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour, outline=(255, 255, 255))
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)
    return np.asarray(im)


def contact_sheet(images: list[tuple[str, np.ndarray]], *, tile: int = 256, columns: int = 5) -> np.ndarray:
    """Labelled thumbnails on a grid (the BEV first), for the report."""
    from PIL import Image, ImageDraw

    if not images:
        return np.full((tile, tile, 3), 255, np.uint8)
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 16)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(images):
        thumb = Image.fromarray(img)
        thumb.thumbnail((tile, tile), Image.NEAREST)
        x, y = (i % columns) * tile, (i // columns) * (tile + 16)
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + 16 + (tile - thumb.height) // 2))
        draw.text((x + 4, y + 2), label, fill=(0, 0, 0), font=_font(11))
    return np.asarray(sheet)


def sample_frames(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly over the video (all frames when it has fewer)."""
    if num_frames <= count:
        return list(range(num_frames))
    return sorted(set(np.linspace(0, num_frames - 1, count).round().astype(int).tolist()))
