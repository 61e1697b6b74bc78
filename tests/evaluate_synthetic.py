"""A small synthetic scene for the evaluation tests: render.zarr + upstream annotations + decoders.

Latents decode through tiny linear decoders to known unit embeddings, so every relevancy, mask,
IoU and similarity is known by construction:
- CLIP space R^8: "red ball" = e0, "blue cube" = e1, background = e2, negatives = e4..e7.
  Ball latent (1,0,0) -> e0 in levels m and l, (0.6,0,0.8) -> 0.6 e0 + 0.8 e2 in level s (so m wins);
  cube latent (0,1,0) -> e1 in every level (a tie: s, the first, wins).
- video text space R^4: "the ball rolls" = f0, "the ball rests" = f1; video latent (1,0) -> f0, (0,1) -> f1.
Frames 0..9 are rendered; the ball is annotated on frames 0,2,4,6,8,10 (10 is not rendered) and
moves 2 px a frame; the cube is annotated on 0,4,8 with its polygon shifted 5 px right of the
rendered cube (IoU 1/3).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

H, W, T = 48, 80, 10
BALL = (10, 6, 10, 10)  # top, left at frame 0, height, width
CUBE = (30, 50, 10, 10)
CUBE_GT_SHIFT = 5
BALL_FRAMES = [0, 2, 4, 6, 8, 10]
CUBE_FRAMES = [0, 4, 8]
NEGATIVES = ["object", "things", "stuff", "texture"]
CLIP_SPACE = {"kind": "test-clip", "dim": 8}
VIDEO_SPACE = {"kind": "test-video-text", "dim": 4}
ROLLING, RESTING = "the ball rolls", "the ball rests"


def ball_box(frame: int):
    top, left, h, w = BALL
    return top, left + 2 * frame, h, w


def video_latent(frame: int) -> tuple[float, float]:
    if frame == 4:
        return (0.6, 0.8)  # ambiguous frame
    return (1.0, 0.0) if frame <= 5 else (0.0, 1.0)


class LinearUnitDecoder(torch.nn.Module):
    """decode(z) = normalise(z @ basis): latent i -> basis row i."""

    def __init__(self, basis: np.ndarray):
        super().__init__()
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        f = z.float() @ self.basis
        return f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def clip_decoder() -> LinearUnitDecoder:
    return LinearUnitDecoder(np.eye(8, dtype=np.float32)[:3])


def video_decoder() -> LinearUnitDecoder:
    return LinearUnitDecoder(np.eye(4, dtype=np.float32)[:2])


def clip_vectors() -> dict[str, np.ndarray]:
    e = np.eye(8, dtype=np.float32)
    out = {"red ball": e[0], "blue cube": e[1], ROLLING: e[0], RESTING: e[0]}
    out.update({n: e[4 + i] for i, n in enumerate(NEGATIVES)})
    return out


def video_text_vectors() -> dict[str, np.ndarray]:
    f = np.eye(4, dtype=np.float32)
    return {ROLLING: f[0], RESTING: f[1]}


def rect_polygon(top, left, h, w):
    # cv2.fillPoly fills both end points: a polygon over [left, left+w-1] x [top, top+h-1] covers h*w pixels
    x0, y0, x1, y1 = left, top, left + w - 1, top + h - 1
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def write_scene(root: Path) -> Path:
    """Scene folder with annotations/ (COCO + video) in the upstream layout."""
    scene = root / "scene"
    (scene / "annotations" / "train").mkdir(parents=True)
    images, anns = [], []
    frames = sorted(set(BALL_FRAMES) | set(CUBE_FRAMES))
    for i, f in enumerate(frames):
        images.append({"id": i, "file_name": f"{f + 1:06d}_png.rf.{i:04x}abcd.jpg", "height": H, "width": W})
        if f in BALL_FRAMES:
            anns.append({"id": len(anns), "image_id": i, "category_id": 1, "segmentation": [rect_polygon(*ball_box(f))]})
        if f in CUBE_FRAMES:
            top, left, h, w = CUBE
            anns.append({"id": len(anns), "image_id": i, "category_id": 2,
                         "segmentation": [rect_polygon(top, left + CUBE_GT_SHIFT, h, w)]})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 0, "name": "objects"}, {"id": 1, "name": "red ball"}, {"id": 2, "name": "blue cube"}]}
    (scene / "annotations" / "train" / "_annotations.coco.json").write_text(json.dumps(coco))
    video = {"red ball": {ROLLING: [[0, 5]], RESTING: [[6, 11]]}}
    (scene / "annotations" / "video_annotations.json").write_text(json.dumps(video))
    return scene


def write_render(path: Path, *, clip_space=CLIP_SPACE, video_space=VIDEO_SPACE, stride: int = 1) -> Path:
    """render.zarr at the annotation size, or subsampled by `stride` (a render smaller than the GT)."""
    from pipeline.store import create_group, frame_array

    g = create_group(path)
    lat = {lv: np.zeros((T, H, W, 3), np.float32) for lv in ("s", "m", "l")}
    video = np.zeros((T, H, W, 2), np.float32)
    for lv in lat:
        lat[lv][..., 2] = 1.0  # background -> e2
    for t in range(T):
        top, left, h, w = ball_box(t)
        for lv in lat:
            lat[lv][t, top : top + h, left : left + w] = (0.6, 0.0, 0.8) if lv == "s" else (1.0, 0.0, 0.0)
        video[t, top : top + h, left : left + w] = video_latent(t)
        ct, cl, ch, cw = CUBE
        for lv in lat:
            lat[lv][t, ct : ct + ch, cl : cl + cw] = (0.0, 1.0, 0.0)
    if stride > 1:
        lat = {lv: arr[:, ::stride, ::stride] for lv, arr in lat.items()}
        video = video[:, ::stride, ::stride]
    for lv, arr in lat.items():
        a = frame_array(g, f"lang_{lv}", arr.shape, "float16")
        a[:] = arr.astype(np.float16)
    a = frame_array(g, "video", video.shape, "float16")
    a[:] = video.astype(np.float16)
    rgb = np.full((T, H // stride, W // stride, 3), 0.5, np.float16)
    a = frame_array(g, "rgb", rgb.shape, "float16")
    a[:] = rgb
    g.attrs.update({"source_indices": list(range(T)), "frame_names": [f"{t + 1:06d}" for t in range(T)],
                    "clip_space": clip_space, "video_space": video_space})
    return path


def write_query_embeddings(path: Path, *, clip_space=CLIP_SPACE, video_space=VIDEO_SPACE, video_prefix="video") -> Path:
    """`video_prefix="e5"` writes the key names used before the rename."""
    c, v = clip_vectors(), video_text_vectors()
    np.savez(path, clip_names=np.array(list(c)), clip_vectors=np.stack(list(c.values())),
             clip_space=np.array(json.dumps(clip_space)),
             **{f"{video_prefix}_names": np.array(list(v)), f"{video_prefix}_vectors": np.stack(list(v.values())),
                f"{video_prefix}_space": np.array(json.dumps(video_space))})
    return path
