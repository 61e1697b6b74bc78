"""Read a scene source into `frames.zarr` (T,H,W,3 uint8, one chunk per frame) + `scene.json`.

Sources: a HyperNeRF scene folder (the built-in demo scene uses the same layout), a Neu3D
scene (one camera per sequence), any single video file (mp4/mov/avi/mkv/webm, via PyAV) or a
folder of images. Frames are taken every `--stride` frames, at most `--max-frames`, and
resized down (Lanczos, aspect kept) only when their longest side exceeds `--max-size`;
frames already within the size are stored unchanged. `scene.json` records the source, the
transform applied, fps, cameras scaled to the stored frames, and where the ground truth and
annotations that came with the scene live.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from pipeline import readers, store
from pipeline.errors import UserError


def target_size(size: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """(H, W) after fitting the longest side into `max_size`; unchanged when it already fits."""
    h, w = size
    if not max_size or max(h, w) <= max_size:
        return h, w
    scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if rgb.shape[:2] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def _scale_cameras(cameras: dict | None, indices: list[int], src: tuple[int, int], dst: tuple[int, int]) -> dict | None:
    if not cameras:
        return None
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    scale = np.diag([sx, sy, 1.0])
    intr = np.asarray(cameras["intrinsics"], dtype=np.float64)[indices]
    extr = np.asarray(cameras["extrinsics"], dtype=np.float64)[indices]
    return {"intrinsics": (scale @ intr).tolist(), "extrinsics": extr.tolist()}


def _wanted(count: int | None, stride: int, max_frames: int | None) -> tuple[list[int] | None, int]:
    """(the wanted source indices, the array's first capacity); a container that does not say how many
    frames it has is read until it ends (None), and the array shrunk to what arrived."""
    if count is not None:
        wanted = list(range(0, count, stride))[: max_frames or None]
        return wanted, len(wanted)
    return None, max_frames or 1024


def _copy_frames(source, rgb, wanted, names: list[str], indices: list[int], *, stride: int, max_frames: int | None,
                 bar) -> None:
    """Resize each wanted frame into `rgb` (grown as needed), appending its name and source index: what
    was kept is in `names` / `indices` even when the video breaks off."""
    height, width = rgb.shape[1:3]
    for index, name, frame in source.frames(set(wanted) if wanted is not None else None):
        if wanted is None and index % stride:
            continue
        if frame.shape[:2] != source.size:
            raise UserError(f"frame {name} of {source.path} is {frame.shape[1]}x{frame.shape[0]}, "
                            f"the first was {source.size[1]}x{source.size[0]}: mixed sizes")  # fmt: skip
        t = len(names)
        if t >= rgb.shape[0]:
            rgb.resize((2 * rgb.shape[0], height, width, 3))
        rgb[t] = _resize(frame, (height, width))
        names.append(name)
        indices.append(index)
        bar.update(1)
        if max_frames is not None and len(names) >= max_frames:
            break


def _truncation(cut, source, kept: int) -> dict:
    print(f"warning: {source.path} breaks off at frame {cut.frames_read} ({cut.reason}); "
          f"frames.allow_truncated is set, so the {kept} frame(s) read are kept", file=sys.stderr)
    return {"frames_read": cut.frames_read, "declared_frames": cut.declared, "reason": cut.reason, "frames_kept": kept}


def _scene_record(source, *, scene: str, dataset: str, kind: str, size: tuple[int, int], names, indices,
                  stride: int, max_frames: int | None, fps: float | None, truncated) -> dict:
    height, width = size
    return {
        "scene": scene,
        "dataset": dataset,
        "source": {"kind": kind, "path": str(source.path), "camera": source.camera},
        "num_frames": len(names),
        "height": height,
        "width": width,
        "fps": fps or (source.fps / stride if source.fps else None),
        "frame_names": names,
        "source_indices": indices,
        "transform": {
            "source_size": list(source.size),
            "resize_to": None if (height, width) == source.size else [height, width],
            "stride": stride,
            "max_frames": max_frames,
            "camera": source.camera,
        },
        "cameras": _scale_cameras(source.cameras, indices, source.size, (height, width)),
        "gt": source.gt,
        "annotations": source.annotations,
        "truncated": truncated,
    }


def extract_frames(
    kind: str,
    path: str | os.PathLike,
    out_zarr: str | os.PathLike,
    scene_json: str | os.PathLike,
    *,
    scene: str,
    dataset: str,
    stride: int = 1,
    max_frames: int | None = None,
    max_size: int | None = None,
    camera: str | None = None,
    resolution: str = "2x",
    fps: float | None = None,
    allow_truncated: bool = False,
    progress: bool = True,
) -> dict:
    """Write frames.zarr and scene.json for one scene; return the scene record.

    A video that breaks off before its declared length is an error naming the file and the
    frame, unless `allow_truncated`: then the frames before the break are kept and the
    shortfall is recorded in scene.json (`truncated`) and printed to the log.
    """
    from tqdm import tqdm

    if stride < 1:
        raise UserError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"max_frames must be >= 1, got {max_frames}")
    source = readers.read_source(kind, path, resolution=resolution, camera=camera)
    height, width = target_size(source.size, max_size)
    wanted, capacity = _wanted(source.num_frames, stride, max_frames)
    params = {
        "kind": kind, "stride": stride, "max_frames": max_frames, "max_size": max_size,
        "camera": camera, "resolution": resolution, "allow_truncated": allow_truncated,
    }  # fmt: skip
    with store.atomic_path(out_zarr) as tmp:
        group = store.create_group(tmp)
        rgb = store.frame_array(group, "rgb", (capacity, height, width, 3), "uint8")
        truncated = None
        bar = tqdm(total=capacity if wanted is not None else None, desc=f"frames {scene}", unit="frame", disable=not progress)
        names: list[str] = []
        indices: list[int] = []
        try:
            _copy_frames(source, rgb, wanted, names, indices, stride=stride, max_frames=max_frames, bar=bar)
        except readers.TruncatedVideo as cut:
            bar.close()  # before any message, so the bar does not end the log
            if not allow_truncated or not names:
                raise
            truncated = _truncation(cut, source, len(names))
        finally:
            bar.close()
        if not names:
            raise UserError(f"no frames could be read from {source.path}")
        if len(names) != rgb.shape[0]:
            rgb.resize((len(names), height, width, 3))
        record = _scene_record(source, scene=scene, dataset=dataset, kind=kind, size=(height, width), names=names,
                               indices=indices, stride=stride, max_frames=max_frames, fps=fps, truncated=truncated)
        prov = store.provenance("frames", params, {"source": source.path})
        group.attrs.update({"provenance": prov, "fps": record["fps"], "frame_names": names, "source_indices": indices})
        record["provenance"] = prov
        store.write_json(scene_json, record)
    return record


def add_arguments(parser) -> None:
    from pipeline.defaults import schema_default

    parser.add_argument("--source", required=True, help="scene source: a video file, an image folder or a scene folder")
    parser.add_argument("--kind", required=True, choices=readers.KINDS, help="how to read --source")
    parser.add_argument("--out", required=True, help="frames.zarr to write")
    parser.add_argument("--scene-json", required=True, help="scene.json to write")
    parser.add_argument("--scene", required=True, help="scene id (recorded in scene.json)")
    parser.add_argument("--dataset", default="custom", help="dataset name (recorded in scene.json)")
    parser.add_argument("--stride", type=int, default=schema_default("frames.stride"), help="keep every N-th frame")
    parser.add_argument("--max-frames", type=int, default=schema_default("frames.max_frames"), help="keep at most N frames (after stride)")
    parser.add_argument("--max-size", type=int, default=schema_default("frames.max_size"),
                        help="resize down so the longest side is at most N px")
    parser.add_argument("--camera", default=None, help="Neu3D camera (default cam00, the test camera)")
    parser.add_argument("--resolution", default=schema_default("frames.resolution"), help="HyperNeRF rgb/<resolution> folder")
    parser.add_argument("--fps", type=float, default=None, help="override the frame rate (image folders have none)")
    parser.add_argument("--allow-truncated", action="store_true",
                        help="keep the frames of a video that breaks off early (recorded in scene.json) instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(extract_frames, args, names={"path": "source", "out_zarr": "out"},
              summary=lambda r: f"{r['num_frames']} frames of {r['width']}x{r['height']} -> {Path(args.out)}")
