"""Readers for the scene sources a user can point the workflow at.

Each reader checks its input up front (so bad input fails before anything is written) and
returns a `Source`: frame names, an iterator over (source index, name, RGB uint8 frame),
fps, cameras and paths to any ground truth or annotations that come with the scene.

Kinds: `hypernerf` (a HyperNeRF scene folder, also the built-in demo scene), `neu3d` (a Neu3D
scene: one mp4 per camera), `video` (any single video file, decoded with PyAV) and `images`
(a folder of images).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
KINDS = ("hypernerf", "neu3d", "video", "images")

Frames = Iterator[tuple[int, str, np.ndarray]]


@dataclass
class Source:
    kind: str
    path: Path
    size: tuple[int, int]  # (H, W) of the source frames
    num_frames: int | None  # None when a container does not say
    fps: float | None
    frames: Callable[[set[int] | None], Frames]  # yields only the wanted source indices
    names: list[str] | None = None
    cameras: dict | None = None  # {"intrinsics": [N,3,3], "extrinsics": [N,3,4]} at source size, per source index
    gt: dict = field(default_factory=dict)
    annotations: dict | None = None
    camera: str | None = None


def natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_source(kind: str, path: str | Path, *, resolution: str = "2x", camera: str | None = None) -> Source:
    if kind not in KINDS:
        raise UserError(f"unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
    p = Path(path)
    if not p.exists():
        raise UserError(f"scene path does not exist: {p}")
    if kind == "hypernerf":
        return read_hypernerf(p, resolution=resolution)
    if kind == "neu3d":
        return read_neu3d(p, camera=camera or "cam00")
    if kind == "video":
        return read_video(p)
    return read_images(p)


# ----------------------------------------------------------------------------- image folders
def image_files(folder: Path, *, config_key: str | None = None) -> list[Path]:
    """The images of a folder in natural order (frame2 before frame10): the one image-folder order."""
    where = f" (`{config_key}`)" if config_key else ""
    if not folder.is_dir():
        raise UserError(f"not a folder of images: {folder}{where}")
    files = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda f: natural_key(f.name))  # fmt: skip
    if not files:
        raise UserError(f"no images in {folder}{where}; expected {', '.join(sorted(IMAGE_SUFFIXES))} files")
    return files


def load_rgb(path: Path) -> np.ndarray:
    """An image as RGB uint8; transparent pixels blended onto white, as upstream's loader does."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # blend onto white, as upstream
                return (rgb * 255.0 + 0.5).astype(np.uint8)
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def image_size(files: list[Path]) -> tuple[int, int]:
    """(H, W) shared by every image, or a line listing the sizes found."""
    from PIL import Image

    sizes: dict[tuple[int, int], Path] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.setdefault((im.height, im.width), f)
        except OSError as exc:
            raise UserError(f"cannot read image {f}: {exc}") from None
    if len(sizes) > 1:
        listing = "; ".join(f"{h}x{w} (e.g. {f.name})" for (h, w), f in sizes.items())
        raise UserError(f"images in {files[0].parent} have different sizes (mixed sizes: {listing}); all frames must share one size")
    return next(iter(sizes))


def _folder_frames(files: list[Path]) -> Callable[[set[int] | None], Frames]:
    def frames(wanted: set[int] | None) -> Frames:
        for i, f in enumerate(files):
            if wanted is None or i in wanted:
                yield i, f.stem, load_rgb(f)

    return frames


def read_images(folder: Path) -> Source:
    files = image_files(folder)
    size = image_size(files)
    return Source("images", folder.resolve(), size, len(files), None, _folder_frames(files), names=[f.stem for f in files])


# ----------------------------------------------------------------------------- HyperNeRF (and the demo scene)
def read_hypernerf(scene: Path, *, resolution: str = "2x") -> Source:
    rgb_dir = scene / "rgb" / resolution
    if not rgb_dir.is_dir():
        raise UserError(f"{scene} is not a HyperNeRF scene: {rgb_dir} is missing")
    files = image_files(rgb_dir)
    size = image_size(files)
    factor = float(resolution.rstrip("x")) if resolution.rstrip("x").replace(".", "").isdigit() else 1.0
    source = Source(
        "hypernerf", scene.resolve(), size, len(files), None, _folder_frames(files), names=[f.stem for f in files]
    )
    cams = [scene / "camera" / f"{f.stem}.json" for f in files]
    if all(c.is_file() for c in cams):
        source.cameras = _hypernerf_cameras(cams, 1.0 / factor)
    source.gt = {
        key: str((scene / rel).resolve())
        for key, rel in {
            "instance_dir": "gt/instance",
            "part_dir": "gt/part",
            "depth_dir": "gt/depth",
            "objects": "gt/objects.json",
            "captions": "gt/captions.json",
            "boxes": "gt/boxes.json",
            "grounding": "gt/grounding.json",
        }.items()
        if (scene / rel).exists()
    }
    source.annotations = _annotations(scene)
    return source


def _hypernerf_cameras(files: list[Path], scale: float) -> dict:
    """HyperNeRF camera JSONs -> OpenCV intrinsics/extrinsics (world->camera), scaled to the frames."""
    intrinsics, extrinsics = [], []
    for f in files:
        cam = json.loads(f.read_text())
        rot = np.asarray(cam["orientation"], dtype=np.float64)
        centre = np.asarray(cam["position"], dtype=np.float64)
        fx = float(cam["focal_length"]) * scale
        fy = fx * float(cam.get("pixel_aspect_ratio", 1.0))
        cx, cy = (float(v) * scale for v in cam["principal_point"])
        intrinsics.append([[fx, float(cam.get("skew", 0.0)) * scale, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        extrinsics.append(np.concatenate([rot, (-rot @ centre)[:, None]], 1).tolist())
    return {"intrinsics": intrinsics, "extrinsics": extrinsics}


def _annotations(scene: Path) -> dict | None:
    coco = scene / "annotations" / "train" / "_annotations.coco.json"
    video = scene / "annotations" / "video_annotations.json"
    found = {k: str(v.resolve()) for k, v in {"coco": coco, "video": video}.items() if v.is_file()}
    return found or None


# ----------------------------------------------------------------------------- videos
def _open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise UserError(f"cannot read video {path}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} holds no video stream")
    return container


def _probe_video(path: Path) -> tuple[tuple[int, int], int | None, float | None]:
    """Size, frame count (if the container says) and fps; decodes the first frame to be sure."""
    import av

    with _open_video(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        count = int(stream.frames) or None
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise UserError(f"cannot decode video {path}: {exc}") from None
        if first is None:
            raise UserError(f"video {path} has no frames")
        return (first.height, first.width), count, fps


class TruncatedVideo(UserError):
    """A video that ends (or stops decoding) before the frames its container declares."""

    def __init__(self, path: Path, frames_read: int, declared: int | None, detail: str | None = None):
        self.path, self.frames_read, self.declared = path, frames_read, declared
        of = f" of the {declared} its container declares" if declared else ""
        self.reason = f"decoding fails there: {detail}" if detail else "the file ends there"
        super().__init__(
            f"video {path} breaks off at frame {frames_read}{of} ({self.reason}; a truncated or damaged file); "
            f"set `frames.allow_truncated: true` (or the scene's `allow_truncated`) to keep the {frames_read} "
            "frame(s) before it"
        )


def _video_frames(path: Path, declared: int | None) -> Callable[[set[int] | None], Frames]:
    """Decode frames in order; a video that breaks off before a wanted frame raises TruncatedVideo
    after the frames before the break were yielded (frame threading would hide the decode error,
    so it is not used)."""

    def frames(wanted: set[int] | None) -> Frames:
        import av

        last = max(wanted) if wanted else None
        decoded = 0
        with _open_video(path) as container:
            stream = container.streams.video[0]
            try:
                for frame in container.decode(stream):
                    if last is not None and decoded > last:
                        return
                    if wanted is None or decoded in wanted:
                        yield decoded, f"{decoded:06d}", frame.to_ndarray(format="rgb24")
                    decoded += 1
            except av.error.FFmpegError as exc:
                raise TruncatedVideo(path, decoded, declared, getattr(exc, "strerror", None) or str(exc)) from None
        if declared and decoded < declared and (last is None or decoded <= last):
            raise TruncatedVideo(path, decoded, declared)

    return frames


def read_video(path: Path) -> Source:
    if not path.is_file():
        raise UserError(f"not a video file: {path}")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"{path.name}: unsupported video type {path.suffix!r}; expected {', '.join(sorted(VIDEO_SUFFIXES))}")
    size, count, fps = _probe_video(path)
    return Source("video", path.resolve(), size, count, fps, _video_frames(path, count))


# ----------------------------------------------------------------------------- Neu3D
def read_neu3d(scene: Path, *, camera: str = "cam00") -> Source:
    """One camera of a Neu3D scene: `<scene>/<camera>.mp4`, cameras from `poses_bounds.npy`."""
    videos = sorted(scene.glob("cam*.mp4"), key=lambda f: natural_key(f.name))
    if not videos:
        raise UserError(f"{scene} is not a Neu3D scene: no cam*.mp4 files")
    wanted = scene / f"{camera}.mp4"
    if wanted not in videos:
        raise UserError(f"Neu3D camera {camera!r} not in {scene}; found {', '.join(v.stem for v in videos)}")
    source = read_video(wanted)
    source.kind, source.path, source.camera = "neu3d", scene.resolve(), camera
    poses = scene / "poses_bounds.npy"
    if poses.is_file():
        source.cameras = _llff_camera(np.load(poses), videos.index(wanted), source.size, source.num_frames)
    source.annotations = _annotations(scene)
    return source


def _llff_camera(poses_bounds: np.ndarray, index: int, size: tuple[int, int], count: int | None) -> dict | None:
    """LLFF rows ([R|t] with columns down, right, back; then h, w, f) -> OpenCV, repeated per frame."""
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or index >= len(poses_bounds) or not count:
        return None
    mat = poses_bounds[index, :15].reshape(3, 5)
    down, right, back, centre = mat[:, 0], mat[:, 1], mat[:, 2], mat[:, 3]
    h, w, focal = mat[:, 4]
    rot_c2w = np.stack([right, down, -back], 1)
    rot = rot_c2w.T
    extr = np.concatenate([rot, (-rot @ centre)[:, None]], 1)
    scale = size[0] / h  # poses_bounds is given at the full video resolution
    intr = [[focal * scale, 0.0, size[1] / 2], [0.0, focal * scale, size[0] / 2], [0.0, 0.0, 1.0]]
    return {"intrinsics": [intr] * count, "extrinsics": [extr.tolist()] * count}
