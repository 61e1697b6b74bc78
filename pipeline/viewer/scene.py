"""What the viewer shows of one scene: point clouds per frame, cameras, queries, object boxes.

Points come from `geometry.zarr` (`world_points` where the geometry stage wrote them, else
depth unprojected with the predicted cameras) or, where the scene has them and the geometry
came from random weights (the demo), from the scene's ground-truth depth and cameras
(`scene.json` `gt.depth_dir` and `cameras`). Every point remembers the render pixel it
came from, so relevancy maps of `render.zarr` colour it directly. Large frames are subsampled
on a regular pixel grid to at most `max_points` points.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

POINT_SOURCES = ("auto", "geometry", "gt")


@dataclass
class FrameCloud:
    """One frame's points: world xyz, colour, confidence and the flat render pixel of each."""

    xyz: np.ndarray  # [N,3] float32
    rgb: np.ndarray  # [N,3] uint8
    conf: np.ndarray  # [N] float32 (ones where the source has no confidence)
    pixels: np.ndarray  # [N] int64, y * W + x in the render's frame
    total: int  # points before subsampling (valid depth)


@dataclass
class Camera:
    c2w: np.ndarray  # [4,4] camera-to-world (OpenCV axes)
    K: np.ndarray  # [3,3] in the pixels of `size`
    size: tuple[int, int]  # (h, w) of the image K refers to


def _run_hint(scene_dir: Path, artifact: str) -> str:
    """`snakemake` target that makes `artifact` of this scene (and the one-scene target rule)."""
    target = scene_dir / artifact
    rule = "scene_" + "".join(c if c.isalnum() else "_" for c in scene_dir.name)
    return f"run `snakemake --cores 2 {target}` (or `snakemake --cores 2 {rule}`) first"


def resolve_scene_dir(scene: str | Path, results: str | Path = "results") -> Path:
    """The results folder of `scene` (a folder, or an id <dataset>/<scene> under `results`),
    refused in one line naming what to run when it is missing or not rendered yet."""
    p = Path(scene)
    cands = [p] if p.is_absolute() else [Path(results) / p, p]
    found = next((c for c in cands if (c / "render.zarr").exists()), None)
    if found is None:
        where = next((c for c in cands if c.is_dir()), cands[0])
        if not where.is_dir():
            raise UserError(f"no results for scene {str(scene)!r} ({cands[0]} does not exist): add it to `scenes` in "
                            f"config.yaml and {_run_hint(cands[0], 'render.zarr')}")
        raise UserError(f"{where} has no render.zarr (the scene is not rendered yet): {_run_hint(where, 'render.zarr')}")
    return found


class SceneData:
    """A scene's results folder, opened for viewing (arrays are read lazily, frame by frame)."""

    def __init__(self, scene_dir: str | Path, *, points: str = "auto", max_points: int = 200_000, cache_frames: int = 64):
        from pipeline.store import open_group

        if points not in POINT_SOURCES:
            raise UserError(f"--points must be one of {list(POINT_SOURCES)}, got {points!r}")
        self.dir = Path(scene_dir)
        self.render = open_group(self.dir / "render.zarr", what="render")
        names = [f"lang_{lv}" for lv in ("s", "m", "l")]
        missing = [n for n in names if n not in self.render]
        if missing:
            raise UserError(f"{self.dir / 'render.zarr'} lacks {', '.join(missing)}: {_run_hint(self.dir, 'render.zarr')}")
        self.T, self.H, self.W, _ = self.render["lang_s"].shape
        attrs = dict(self.render.attrs)
        self.source_indices = [int(v) for v in attrs.get("source_indices") or range(self.T)]
        self.frame_names = [str(v) for v in attrs.get("frame_names") or [f"{i:06d}" for i in self.source_indices]]
        sj = self.dir / "scene.json"
        self.info = json.loads(sj.read_text()) if sj.is_file() else {}
        self.name = f"{self.info.get('dataset', self.dir.parent.name)}/{self.info.get('scene', self.dir.name)}"
        self.fps = float(self.info.get("fps") or 10.0)
        self.geometry = open_group(self.dir / "geometry.zarr", what="geometry") if (self.dir / "geometry.zarr").exists() else None
        self.frames = None
        if (self.dir / "frames.zarr").exists():
            g = open_group(self.dir / "frames.zarr", what="frames")
            if "rgb" in g and tuple(g["rgb"].shape[1:3]) == (self.H, self.W):
                self.frames = g["rgb"]
        self.point_source = self._choose_points(points)
        self.max_points = int(max_points)
        self._cache: OrderedDict[int, FrameCloud] = OrderedDict()
        self._cache_frames = cache_frames
        self.cameras = self._cameras()

    # ------------------------------------------------------------------ sources
    def _gt_available(self) -> bool:
        gt = self.info.get("gt") or {}
        cams = self.info.get("cameras") or {}
        if not gt.get("depth_dir") or cams.get("extrinsics") is None or cams.get("intrinsics") is None:
            return False
        if len(cams["extrinsics"]) != self.T:
            return False
        return self._gt_depth_file(0) is not None

    def _gt_depth_file(self, t: int) -> Path | None:
        from pipeline.evaluate.stage import _depth_file

        return _depth_file(Path(self.info["gt"]["depth_dir"]), self.frame_names[t], self.source_indices[t])

    def _random_geometry(self) -> bool:
        """True when geometry.zarr came from seeded random weights (the demo), not a checkpoint."""
        prov = dict(self.geometry.attrs).get("provenance") or {}
        cks = prov.get("checkpoints") or {}
        return "geometry" in cks and cks["geometry"] is None

    def _choose_points(self, requested: str) -> str:
        gt = self._gt_available()
        if requested == "gt":
            if not gt:
                raise UserError(f"--points gt: {self.dir / 'scene.json'} has no ground-truth depth and cameras for these frames")
            return "gt"
        if self.geometry is None:
            if requested == "auto" and gt:
                return "gt"
            raise UserError(f"{self.dir} has no geometry.zarr: {_run_hint(self.dir, 'geometry.zarr')}")
        if "depth" not in self.geometry and "world_points" not in self.geometry:
            raise UserError(f"{self.dir / 'geometry.zarr'} holds neither depth nor world_points: {_run_hint(self.dir, 'geometry.zarr')}")
        if requested == "auto" and gt and self._random_geometry():
            return "gt"
        return "geometry"

    def describe_points(self) -> str:
        if self.point_source == "gt":
            return "ground-truth depth and cameras (scene.json)"
        if "world_points" in self.geometry:
            return "geometry.zarr world_points"
        return "geometry.zarr depth + cameras"

    # ------------------------------------------------------------------ cameras
    def _cameras(self) -> list[Camera]:
        if self.point_source == "gt":
            cams = self.info["cameras"]
            E = np.asarray(cams["extrinsics"], dtype=np.float64)
            K = np.asarray(cams["intrinsics"], dtype=np.float64)
            size = (self.H, self.W)
        else:
            E = np.asarray(self.geometry["extrinsics"][:], dtype=np.float64)
            K = np.asarray(self.geometry["intrinsics"][:], dtype=np.float64)
            size = tuple(int(v) for v in (self.geometry["depth"].shape[1:3] if "depth" in self.geometry
                                          else self.geometry["world_points"].shape[1:3]))
        out = []
        for t in range(len(E)):
            w2c = np.eye(4)
            w2c[:3, :4] = E[t]
            out.append(Camera(c2w=np.linalg.inv(w2c), K=K[t], size=size))
        return out

    # ------------------------------------------------------------------ pixels
    def _geometry_to_frame(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Geometry-grid pixels -> render pixels (undo the crop, then the resize)."""
        tr = dict(self.geometry.attrs).get("transform") or {}
        top, left = (int(v) for v in (tr.get("crop") or [0, 0])[:2])
        src = tr.get("source_size") or [self.H, self.W]
        rs = tr.get("resize_to") or src
        sy, sx = self.H / float(rs[0]), self.W / float(rs[1])
        fy = np.clip(np.round((ys + top + 0.5) * sy - 0.5), 0, self.H - 1).astype(np.int64)
        fx = np.clip(np.round((xs + left + 0.5) * sx - 0.5), 0, self.W - 1).astype(np.int64)
        return fy, fx

    def image(self, t: int) -> np.ndarray:
        """[H,W,3] uint8 frame t (frames.zarr, else the render's RGB, else grey)."""
        if self.frames is not None:
            return np.asarray(self.frames[t], dtype=np.uint8)
        if "rgb" in self.render:
            return (np.asarray(self.render["rgb"][t], dtype=np.float32).clip(0, 1) * 255).astype(np.uint8)
        return np.full((self.H, self.W, 3), 128, np.uint8)

    def stride_for(self, h: int, w: int) -> int:
        return max(1, math.ceil(math.sqrt(h * w / max(1, self.max_points))))

    def cloud(self, t: int) -> FrameCloud:
        if t in self._cache:
            self._cache.move_to_end(t)
            return self._cache[t]
        cloud = self._gt_cloud(t) if self.point_source == "gt" else self._geometry_cloud(t)
        self._cache[t] = cloud
        while len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return cloud

    def _unproject(self, depth: np.ndarray, cam: Camera, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        z = depth[ys, xs].astype(np.float64)
        K = cam.K
        x = (xs - K[0, 2]) / K[0, 0] * z
        y = (ys - K[1, 2]) / K[1, 1] * z
        pc = np.stack([x, y, z, np.ones_like(z)], axis=-1)
        return (pc @ cam.c2w.T)[:, :3].astype(np.float32)

    def _grid(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.stride_for(h, w)
        ys, xs = np.meshgrid(np.arange(s // 2, h, s), np.arange(s // 2, w, s), indexing="ij")
        return ys.ravel(), xs.ravel()

    def _gt_cloud(self, t: int) -> FrameCloud:
        f = self._gt_depth_file(t)
        if f is None:
            raise UserError(f"ground-truth depth of frame {t} ({self.frame_names[t]}) not found in {self.info['gt']['depth_dir']}")
        depth = np.load(f).astype(np.float32)
        if depth.shape != (self.H, self.W):
            raise UserError(f"{f} is {depth.shape[0]}x{depth.shape[1]} but the render is {self.H}x{self.W}; use --points geometry")
        ys, xs = self._grid(self.H, self.W)
        ok = np.isfinite(depth[ys, xs]) & (depth[ys, xs] > 0)
        total = int((np.isfinite(depth) & (depth > 0)).sum())
        ys, xs = ys[ok], xs[ok]
        xyz = self._unproject(depth, self.cameras[t], ys, xs)
        rgb = self.image(t)[ys, xs]
        return FrameCloud(xyz=xyz, rgb=rgb, conf=np.ones(len(ys), np.float32), pixels=ys * self.W + xs, total=total)

    def _geometry_cloud(self, t: int) -> FrameCloud:
        g = self.geometry
        if "world_points" in g:
            pts = np.asarray(g["world_points"][t], dtype=np.float32)
            conf = np.asarray(g["world_points_conf"][t], dtype=np.float32) if "world_points_conf" in g else None
            h, w = pts.shape[:2]
            ys, xs = self._grid(h, w)
            xyz = pts[ys, xs]
            valid_all = np.isfinite(pts).all(-1)
        else:
            depth = np.asarray(g["depth"][t], dtype=np.float32).squeeze()
            conf = np.asarray(g["depth_conf"][t], dtype=np.float32).squeeze() if "depth_conf" in g else None
            h, w = depth.shape
            ys, xs = self._grid(h, w)
            xyz = self._unproject(depth, self.cameras[t], ys, xs)
            valid_all = np.isfinite(depth) & (depth > 0)
        ok = valid_all[ys, xs] & np.isfinite(xyz).all(-1)
        ys, xs, xyz = ys[ok], xs[ok], xyz[ok]
        c = conf[ys, xs] if conf is not None else np.ones(len(ys), np.float32)
        fy, fx = self._geometry_to_frame(ys, xs)
        rgb = self.image(t)[fy, fx]
        return FrameCloud(xyz=xyz.astype(np.float32), rgb=rgb, conf=c.astype(np.float32), pixels=fy * self.W + fx,
                          total=int(valid_all.sum()))

    def extent(self) -> float:
        """A length for sizing points and frustums: the spread of the camera path and the first frame."""
        c = self.cloud(0).xyz
        centres = np.stack([cam.c2w[:3, 3] for cam in self.cameras])
        spread = float(np.linalg.norm(np.percentile(c, 95, axis=0) - np.percentile(c, 5, axis=0))) if len(c) else 0.0
        spread = max(spread, float(np.linalg.norm(centres.max(0) - centres.min(0))))
        return spread if np.isfinite(spread) and spread > 0 else 1.0

    # ------------------------------------------------------------------ queries and objects
    def annotation_queries(self) -> tuple[list[str], dict[str, list[tuple[int, int]]]]:
        """(time-agnostic labels, state prompt -> inclusive source-frame intervals) of the scene's
        annotations, or nothing where it has none."""
        from pipeline.evaluate import coco

        ann = self.info.get("annotations") or {}
        labels: list[str] = []
        states: dict[str, list[tuple[int, int]]] = {}
        cp = ann.get("coco")
        if cp and Path(cp).is_file():
            try:
                data = json.loads(Path(cp).read_text())
                used = {int(a["category_id"]) for a in data.get("annotations", []) if a.get("segmentation")}
                labels = [str(c["name"]) for c in data.get("categories", []) if int(c["id"]) in used]
            except (OSError, ValueError, KeyError, TypeError):
                labels = []
        vp = ann.get("video")
        if vp and Path(vp).is_file():
            for prompts in coco.load_video_annotations(vp).values():
                states.update(prompts)
        return labels, states

    def objects(self) -> list[dict] | None:
        """Boxes of `objects3d.parquet` (the GPT4Scene stage, scene3d) or None where it has not run (see `objects`)."""
        from pipeline.viewer.objects import read_objects

        return read_objects(self.dir / "objects3d.parquet", self.T)
