"""What the radiance field reads of a scene: frames, the last token layer, cameras, depth range.

Held-out frames: frame t is held out when t % holdout_every == holdout_every // 2 (every k-th
frame, starting in the middle of the first block, so the demo's are all between training
frames). Held-out frames are never a training target or source. Sources of a target: the
`num_sources` training frames nearest to it in time (ties: the earlier frame), the nearest first;
it is the reference view of the cost volume. A training target is never its own source.

Cameras (`nerf.cameras`): `scene` = scene.json's (the dataset's own, at frame resolution),
`geometry` = geometry.zarr's (model input resolution, mapped back to frame pixels through the
geometry crop and resize), `auto` = the scene's where it has them, else the geometry stage's.
Depth range (`nerf.near`, `nerf.far`): given, or from the geometry stage's depth (2nd and 98th
percentiles over the training frames, widened by 20%), scaled to the cameras in use by the
ratio of their camera-centre spread to the geometry cameras' spread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline import store
from pipeline.errors import UserError
from pipeline.tokenstore import open_layers

CAMERA_CHOICES = ("auto", "scene", "geometry")


def held_out_frames(num_frames: int, every: int) -> list[int]:
    if every < 2:
        raise UserError(f"nerf.holdout_every={every} holds out every frame and leaves nothing to train on; "
                        "expected an integer >= 2")  # fmt: skip
    return [t for t in range(num_frames) if t % every == every // 2]


def nearest_sources(target: int, candidates: Sequence[int], count: int) -> list[int]:
    """The `count` candidates nearest to `target` in time (not `target` itself), nearest first."""
    pool = sorted((abs(c - target), c) for c in candidates if c != target)
    return [c for _, c in pool[:count]]


@dataclass(frozen=True)
class SceneSources:
    frames: Path
    tokens: Path
    scene_json: Path
    geometry: Path


def _frame_cameras_from_geometry(geo, frame_hw) -> tuple[np.ndarray, np.ndarray]:
    """geometry.zarr cameras (model input pixels) -> frame pixels through the crop and resize."""
    K = np.asarray(geo["intrinsics"][:], dtype=np.float64).copy()
    E = np.asarray(geo["extrinsics"][:], dtype=np.float64)
    transform = dict(geo.attrs).get("transform") or {}
    crop = transform.get("crop")
    resized = transform.get("resize_to") or transform.get("source_size") or list(frame_hw)
    if crop is not None:
        K[:, 0, 2] += float(crop[1])
        K[:, 1, 2] += float(crop[0])
    sy, sx = frame_hw[0] / float(resized[0]), frame_hw[1] / float(resized[1])
    K[:, 0, :] *= sx
    K[:, 1, :] *= sy
    return K, E


def camera_centres(extrinsics: np.ndarray) -> np.ndarray:
    R, t = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    return -np.einsum("nji,nj->ni", R, t)


def centre_spread(extrinsics: np.ndarray) -> float:
    c = camera_centres(extrinsics)
    return float(np.sqrt(((c - c.mean(0)) ** 2).sum(-1).mean()))


class SceneData:
    """One scene for the radiance field; frames and tokens are read on demand (a few cached)."""

    def __init__(self, sources: SceneSources, *, holdout_every: int, num_sources: int, cameras: str = "auto",
                 near: float | None = None, far: float | None = None, name: str | None = None):  # fmt: skip
        self.sources = sources
        self.name = name or sources.frames.parent.name
        if cameras not in CAMERA_CHOICES:
            raise UserError(f"nerf.cameras must be one of {', '.join(CAMERA_CHOICES)}, got {cameras!r}")
        frames = store.open_group(sources.frames, what="frames.zarr")
        store.require_arrays(frames, ["rgb"], what=f"frames.zarr {sources.frames}")
        self._rgb = frames["rgb"]
        self.num_frames, self.height, self.width = (int(v) for v in self._rgb.shape[:3])
        tokens = store.open_group(sources.tokens, what="tokens.zarr")
        layers = list(dict(tokens.attrs).get("layers") or [])
        if not layers:
            raise UserError(f"tokens.zarr {sources.tokens} records no `layers` attribute")
        self.layer = int(max(layers))
        (self._tokens,) = open_layers(tokens, [self.layer], what=f"tokens.zarr {sources.tokens}")
        if self._tokens.shape[0] != self.num_frames:
            raise UserError(f"tokens.zarr {sources.tokens} has {self._tokens.shape[0]} frames but frames.zarr "
                            f"{self.num_frames}; rerun the geometry stage")  # fmt: skip
        self.dim_in = int(self._tokens.shape[-1])
        self.geometry = store.open_group(sources.geometry, what="geometry.zarr")
        store.require_arrays(self.geometry, ["depth", "intrinsics", "extrinsics"], what=f"geometry.zarr {sources.geometry}")
        scene = json.loads(Path(sources.scene_json).read_text())
        self.scene_json = scene
        self.held_out = held_out_frames(self.num_frames, holdout_every)
        self.train_frames = [t for t in range(self.num_frames) if t not in set(self.held_out)]
        need = num_sources + 1
        if not self.held_out or len(self.train_frames) < need:
            raise UserError(
                f"scene {self.name} has {self.num_frames} frames: nerf.num_sources={num_sources} sources + 1 target to "
                f"train on and held-out frames every nerf.holdout_every={holdout_every} need at least "
                f"{need} training frames and 1 held-out frame (it leaves {len(self.train_frames)} and "
                f"{len(self.held_out)}); use a longer clip, fewer sources or a larger holdout_every"
            )
        self.num_sources = num_sources
        self.camera_source = self._pick_cameras(cameras, scene)
        self._check_cameras()
        self.near, self.far = self._depth_range(near, far)
        self._cache_tokens = lru_cache(maxsize=32)(self._read_tokens)
        self._cache_image = lru_cache(maxsize=32)(self._read_image)

    # ------------------------------------------------------------------ cameras
    def _pick_cameras(self, choice: str, scene: dict) -> str:
        own = scene.get("cameras")
        if choice in ("auto", "scene") and own:
            K = np.asarray(own["intrinsics"], dtype=np.float64)
            E = np.asarray(own["extrinsics"], dtype=np.float64)
            if K.shape != (self.num_frames, 3, 3) or E.shape != (self.num_frames, 3, 4):
                raise UserError(f"scene.json {self.sources.scene_json} cameras have shapes {K.shape} / {E.shape}, "
                                f"expected ({self.num_frames}, 3, 3) / ({self.num_frames}, 3, 4) (nerf.cameras: scene)")  # fmt: skip
            self.intrinsics, self.extrinsics = K, E
            return "scene"
        if choice == "scene":
            raise UserError(f"nerf.cameras is `scene` but scene {self.name} has no cameras in {self.sources.scene_json}; "
                            "expected a scene with its own cameras (HyperNeRF, Neu3D) or nerf.cameras: geometry")  # fmt: skip
        self.intrinsics, self.extrinsics = _frame_cameras_from_geometry(self.geometry, (self.height, self.width))
        if self.intrinsics.shape[0] != self.num_frames:
            raise UserError(f"geometry.zarr {self.sources.geometry} has cameras for {self.intrinsics.shape[0]} frames, "
                            f"frames.zarr {self.num_frames}; rerun the geometry stage")  # fmt: skip
        return "geometry"

    def _check_cameras(self) -> None:
        E, K = self.extrinsics, self.intrinsics
        key = f"nerf.cameras ({self.camera_source})"
        if not (np.isfinite(E).all() and np.isfinite(K).all()):
            raise UserError(f"scene {self.name}: cameras contain non-finite values ({key}); expected finite poses")
        if np.any(np.abs(np.linalg.det(K)) < 1e-9) or np.any(np.abs(np.linalg.det(E[:, :3, :3])) < 1e-6):
            raise UserError(f"scene {self.name}: degenerate cameras (a singular intrinsic or rotation matrix) ({key})")
        centres = camera_centres(E)
        spread = np.linalg.norm(centres - centres.mean(0), axis=1).max()
        scale = max(1.0, float(np.linalg.norm(centres, axis=1).max()))
        if spread < 1e-6 * scale:
            raise UserError(
                f"scene {self.name}: degenerate cameras, all {self.num_frames} frames at one position ({key}); a "
                "radiance field needs a moving camera (a static camera's video cannot show novel views)"
            )

    def _depth_range(self, near: float | None, far: float | None) -> tuple[float, float]:
        if near is not None and far is not None:
            if not 0 < near < far:
                raise UserError(f"nerf.near={near} and nerf.far={far}: expected 0 < near < far")
            return float(near), float(far)
        depth = np.asarray(self.geometry["depth"].get_orthogonal_selection((self.train_frames,)), dtype=np.float64)
        valid = depth[np.isfinite(depth) & (depth > 0)]
        if valid.size == 0:
            raise UserError(f"geometry.zarr {self.sources.geometry} has no valid depth to set the depth range; "
                            "set nerf.near and nerf.far")  # fmt: skip
        lo, hi = np.percentile(valid, [2, 98])
        scale = 1.0
        if self.camera_source == "scene":
            geo_spread = centre_spread(np.asarray(self.geometry["extrinsics"][:], dtype=np.float64))
            if geo_spread < 1e-9:
                raise UserError(f"scene {self.name}: the geometry cameras do not move, so their depth cannot be scaled "
                                "to the scene's cameras; set nerf.near and nerf.far")  # fmt: skip
            scale = centre_spread(self.extrinsics) / geo_spread
        auto_near = max(lo * scale / 1.2, 1e-3)
        auto_far = hi * scale * 1.2
        return float(near if near is not None else auto_near), float(far if far is not None else max(auto_far, auto_near * 1.5))

    # ------------------------------------------------------------------ reading
    def _read_image(self, t: int) -> np.ndarray:
        return np.asarray(self._rgb[t], dtype=np.float32) / 255.0

    def _read_tokens(self, t: int) -> np.ndarray:
        return np.asarray(self._tokens[t], dtype=np.float32)

    def image(self, t: int) -> np.ndarray:
        return self._cache_image(int(t))

    def tokens(self, t: int) -> np.ndarray:
        return self._cache_tokens(int(t))

    def sources_of(self, target: int) -> list[int]:
        return nearest_sources(target, self.train_frames, self.num_sources)

    def views(self, target: int, sources: Sequence[int], device="cpu"):
        """(model.Views of the sources, target image [H, W, 3] tensor, target K, target extrinsics)."""
        import torch

        from pipeline.nerf.model import Views

        images = torch.from_numpy(np.stack([self.image(s) for s in sources])).permute(0, 3, 1, 2)
        tokens = torch.from_numpy(np.stack([self.tokens(s) for s in sources]))
        views = Views(
            images=images.to(device),
            tokens=tokens.to(device),
            intrinsics=torch.tensor(self.intrinsics[list(sources)], dtype=torch.float32, device=device),
            extrinsics=torch.tensor(self.extrinsics[list(sources)], dtype=torch.float32, device=device),
            near=self.near,
            far=self.far,
        )
        target_image = torch.from_numpy(self.image(target)).to(device)
        K = torch.tensor(self.intrinsics[target], dtype=torch.float32, device=device)
        E = torch.tensor(self.extrinsics[target], dtype=torch.float32, device=device)
        return views, target_image, K, E

    def describe(self) -> dict:
        return {
            "name": self.name,
            "frames": str(self.sources.frames),
            "num_frames": self.num_frames,
            "size": [self.height, self.width],
            "held_out": self.held_out,
            "train_frames": self.train_frames,
            "cameras": self.camera_source,
            "near": self.near,
            "far": self.far,
            "token_layer": self.layer,
        }
