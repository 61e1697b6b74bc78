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
    """[H,W] -> [H,W,3] uint8 with matplotlib's turbo colormap, min/max stretched unless given."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float32)
    lo = float(np.nanmin(v)) if vmin is None else vmin
    hi = float(np.nanmax(v)) if vmax is None else vmax
    n = np.clip((v - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return (colormaps["turbo"](n)[..., :3] * 255).astype(np.uint8)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).clip(0, 255).astype(np.uint8)


def draw_outline(image: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    import cv2

    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image.copy())
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), max(1, round(min(image.shape[:2]) / 200)))
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


def overlay_figure(path: str | Path, query: str, panels: list[Panel]) -> Path:
    """One row per frame: image + ground truth (green), relevancy overlay, prediction (red) vs GT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(panels))
    h, w = panels[0].image.shape[:2] if panels else (1, 1)
    cell = 3.0
    fig, axes = plt.subplots(rows, 3, figsize=(3 * cell * max(w / h, 0.5), rows * cell), squeeze=False)
    for r, p in enumerate(panels):
        gt_img = draw_outline(p.image, p.gt, (0, 255, 0)) if p.gt is not None else p.image
        over = blend(p.image, heat_rgb(p.relevancy))
        pred_img = draw_outline(p.image, p.pred, (255, 40, 40))
        if p.gt is not None:
            pred_img = draw_outline(pred_img, p.gt, (0, 255, 0))
        titles = [f"frame {p.frame}: ground truth", f"relevancy (level {p.level})",
                  "prediction" + (f"  IoU {100 * p.iou:.1f}" if p.iou is not None and np.isfinite(p.iou) else "")]
        for c, (img, title) in enumerate(zip((gt_img, over, pred_img), titles)):
            axes[r, c].imshow(img)
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle(f"“{query}”", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
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
