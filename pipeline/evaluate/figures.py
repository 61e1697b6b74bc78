"""Pictures of relevancy: per-query overlay figures (PNG) and overlay videos (mp4, PyAV)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.store import atomic_path


def slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return (s[:limit] or "query")


def heat_rgb(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """[H,W] -> [H,W,3] uint8 RGB with the turbo colormap, min/max stretched unless given."""
    import cv2

    v = np.asarray(values, dtype=np.float32)
    lo = float(np.nanmin(v)) if vmin is None else vmin
    hi = float(np.nanmax(v)) if vmax is None else vmax
    n = np.clip((v - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return cv2.applyColorMap((n * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).clip(0, 255).astype(np.uint8)


def draw_outline(image: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    import cv2

    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image.copy())
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), max(1, round(min(image.shape[:2]) / 300)))
    return out


@dataclass
class Panel:
    frame: int
    image: np.ndarray  # [H,W,3] uint8
    relevancy: np.ndarray  # [H,W] smoothed relevancy of the chosen level
    pred: np.ndarray  # [H,W] bool (after majority smoothing)
    gt: np.ndarray | None  # [H,W] bool
    level: str
    iou: float | None


def _titled(img: np.ndarray, title: str, min_side: int = 240) -> np.ndarray:
    """Upscale small panels (nearest) and put a one-line title above."""
    import cv2

    h, w = img.shape[:2]
    f = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if f > 1:
        img = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    band = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, img], axis=0)


def overlay_panels(panel: Panel) -> np.ndarray:
    """One figure row: image + ground truth (green), relevancy overlay, prediction (red) vs GT."""
    gt_img = draw_outline(panel.image, panel.gt, (0, 255, 0)) if panel.gt is not None else panel.image
    over = blend(panel.image, heat_rgb(panel.relevancy))
    pred_img = panel.image.copy()
    pred_img[panel.pred] = blend(panel.image[panel.pred], np.array([255, 40, 40], np.uint8), 0.6)
    if panel.gt is not None:
        pred_img = draw_outline(pred_img, panel.gt, (0, 255, 0))
    score = f"  IoU {100 * panel.iou:.1f}" if panel.iou is not None and np.isfinite(panel.iou) else ""
    has_gt = panel.gt is not None
    cells = [_titled(gt_img, f"frame {panel.frame}" + (": ground truth" if has_gt else "")),
             _titled(over, f"relevancy, level {panel.level}"),
             _titled(pred_img, ("prediction (red), GT (green)" if has_gt else "mask (red)") + score)]
    gap = np.full((cells[0].shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([cells[0], gap, cells[1], gap, cells[2]], axis=1)


def overlay_figure(path: str | Path, query: str, panels: list[Panel]) -> Path:
    """A PNG with one row per frame (see `overlay_panels`) under the query as a heading."""
    import cv2

    rows = [overlay_panels(p) for p in panels]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    head = np.full((30, width, 3), 255, np.uint8)
    cv2.putText(head, f'"{query}"', (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    image = np.concatenate([head, *rows], axis=0)
    path = Path(path)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", image[..., ::-1])
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {path}")
        tmp.write_bytes(buf.tobytes())
    return path


def write_video(path: str | Path, frames, fps: float = 10.0) -> Path:
    """Write [H,W,3] uint8 frames (an iterable) to an H.264 mp4 (even sizes enforced by padding)."""
    import av

    path = Path(path)
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        stream = None
        try:
            for img in frames:
                img = np.asarray(img, dtype=np.uint8)
                h, w = img.shape[:2]
                ph, pw = h + (h % 2), w + (w % 2)
                if (ph, pw) != (h, w):
                    img = np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
                if stream is None:
                    stream = container.add_stream("libx264", rate=max(1, int(round(fps))))
                    stream.width, stream.height = pw, ph
                    stream.pix_fmt = "yuv420p"
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    container.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
        finally:
            container.close()
    return path


# ----------------------------------------------------------------------------- evaluation figures
def _frame_image(scene_dir: Path, render, t: int, source_index: int, shape) -> np.ndarray:
    """The picture under an overlay: the scene's own frame if it has the annotation size, else the
    render's reconstructed RGB, else grey."""
    import cv2

    for name in (f"{source_index + 1:06d}.png", f"{source_index:06d}.png"):
        p = scene_dir / "rgb" / "2x" / name
        if p.is_file():
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None and img.shape[:2] == tuple(shape):
                return img[..., ::-1].copy()
    if "rgb" in render:
        img = (np.asarray(render["rgb"][t], dtype=np.float32).clip(0, 1) * 255).astype(np.uint8)
        if img.shape[:2] != tuple(shape):
            img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        return img
    return np.full((*shape, 3), 128, dtype=np.uint8)


def _pick_evenly(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in sorted(set(idx))]


def _panel_frames(frames, figure_frames: int) -> dict[str, set[int]]:
    """Which frames get a figure panel, per query: a few spread over its annotated frames."""
    frames_of: dict[str, list[int]] = {}
    for af in frames:
        for label in af.masks:
            frames_of.setdefault(label, []).append(af.frame)
    return {q: set(_pick_evenly(sorted(set(fs)), figure_frames)) for q, fs in frames_of.items()}
