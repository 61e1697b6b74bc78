"""Render a scene's held-out frames with a trained radiance field -> nerf_render.zarr.

Each held-out frame is rendered at the frames' resolution from its `num_sources` nearest
training frames in time (the frames the model may see; the held-out frames are the ones it
never saw), with the held-out frame's own camera. The held-out frames, cameras and depth range
are recomputed with the settings recorded in the weights, so they are the ones training left
out. Optionally (`--path-frames N --path-video out.mp4`) a smooth camera path through the
training cameras (rotations interpolated spherically, centres linearly, in N steps) is rendered
as an mp4, each view from the training frames nearest its position in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline import store
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.nerf.data import SceneData, SceneSources, nearest_sources
from pipeline.nerf.cameras import camera_rays, pixel_grid
from pipeline.nerf.model import GeneralizableNerf, Views


@torch.no_grad()
def render_view(model: GeneralizableNerf, views: Views, K: torch.Tensor, E: torch.Tensor, height: int, width: int,
                *, chunk: int = 8192, amp: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """rgb [H, W, 3] float32 in [0, 1], depth [H, W], opacity [H, W] of a camera (K, E) from `views`."""
    device = views.images.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        encoded = model.encode(views)
        pixels = pixel_grid(height, width, device)
        outs = {"rgb": [], "depth": [], "opacity": []}
        for start in range(0, pixels.shape[0], chunk):
            origins, dirs = camera_rays(K, E, pixels[start : start + chunk])
            out = model.render_rays(encoded, views, origins, dirs)
            for k in outs:
                outs[k].append(out[k].float().cpu())
    rgb = torch.cat(outs["rgb"]).reshape(height, width, 3).clamp(0, 1).numpy()
    return {"rgb": rgb, "depth": torch.cat(outs["depth"]).reshape(height, width).numpy(),
            "opacity": torch.cat(outs["opacity"]).reshape(height, width).numpy()}  # fmt: skip


def scene_for_weights(sources: SceneSources, meta: dict, name: str | None = None) -> SceneData:
    settings, arch = meta["settings"], meta["architecture"]
    return SceneData(sources, holdout_every=int(settings["holdout_every"]), num_sources=int(arch["num_sources"]),
                     cameras=settings["cameras"], near=settings["near"], far=settings["far"], name=name)  # fmt: skip


def _slerp(q0: np.ndarray, q1: np.ndarray, u: float) -> np.ndarray:
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + u * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(d)
    return (np.sin((1 - u) * theta) * q0 + np.sin(u * theta) * q1) / np.sin(theta)


def camera_path(scene: SceneData, count: int) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(time, K, world->camera [3,4]) of `count` views along the training cameras."""
    from scipy.spatial.transform import Rotation

    frames = scene.train_frames
    E = scene.extrinsics[frames]
    quats = Rotation.from_matrix(E[:, :3, :3]).as_quat()
    centres = -np.einsum("nji,nj->ni", E[:, :3, :3], E[:, :3, 3])
    out = []
    for k in range(count):
        pos = k * (len(frames) - 1) / max(1, count - 1)
        i = min(int(pos), len(frames) - 2)
        u = pos - i
        R = Rotation.from_quat(_slerp(quats[i], quats[i + 1], u)).as_matrix()
        c = (1 - u) * centres[i] + u * centres[i + 1]
        time_ = (1 - u) * frames[i] + u * frames[i + 1]
        K = (1 - u) * scene.intrinsics[frames[i]] + u * scene.intrinsics[frames[i + 1]]
        out.append((time_, K, np.concatenate([R, (-R @ c)[:, None]], 1)))
    return out


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 10) -> None:
    import av

    with store.atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            h, w = frames[0].shape[:2]
            stream.width, stream.height = w - w % 2, h - h % 2
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                image = np.ascontiguousarray(frame[: stream.height, : stream.width])
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def render_held_out(weights: str | Path, sources: SceneSources, out: str | Path, *, name: str | None = None,
                    device: str = "auto", chunk: int = 8192, path_frames: int = 0, path_video: str | Path | None = None,
                    progress: bool = True) -> dict:  # fmt: skip
    from tqdm.auto import tqdm

    from pipeline.nerf.model import load_nerf

    dev = torch.device(resolve_device(device))
    model, meta = load_nerf(weights, dev)
    scene = scene_for_weights(sources, meta, name)
    amp = bool(meta["settings"].get("amp", True))
    H, W = scene.height, scene.width
    held = scene.held_out
    group_tmp = None
    rendered = {"rgb": [], "depth": [], "opacity": []}
    source_lists = []
    for t in tqdm(held, desc="render held-out", unit="frame", disable=not progress):
        srcs = scene.sources_of(t)
        views, _, K, E = scene.views(t, srcs, dev)
        out_t = render_view(model, views, K, E, H, W, chunk=chunk, amp=amp)
        rendered["rgb"].append(np.round(out_t["rgb"] * 255).astype(np.uint8))
        rendered["depth"].append(out_t["depth"].astype(np.float32))
        rendered["opacity"].append(out_t["opacity"].astype(np.float32))
        source_lists.append(srcs)
    frames_attrs = dict(store.open_group(sources.frames, what="frames.zarr").attrs)
    prov = store.provenance("nerf-render", {"chunk": chunk, "path_frames": path_frames},
                            {"weights": weights, "frames": sources.frames, "tokens": sources.tokens,
                             "scene_json": sources.scene_json, "geometry": sources.geometry})  # fmt: skip
    with store.atomic_path(out) as tmp:
        group_tmp = store.create_group(tmp)
        for key, dtype, shape in (("rgb", "uint8", (len(held), H, W, 3)), ("depth", "float32", (len(held), H, W)),
                                  ("opacity", "float32", (len(held), H, W))):  # fmt: skip
            arr = store.frame_array(group_tmp, key, shape, dtype)
            arr[:] = np.stack(rendered[key])
        names = frames_attrs.get("frame_names") or []
        group_tmp.attrs.update({
            "frames": held,
            "frame_names": [names[t] for t in held] if len(names) == scene.num_frames else [],
            "sources": source_lists,
            "train_frames": scene.train_frames,
            "cameras": scene.camera_source,
            "near": scene.near,
            "far": scene.far,
            "provenance": prov,
        })
    summary = {"out": str(out), "frames": held, "sources": source_lists}
    if path_frames and path_video:
        images = []
        for time_, K, E in tqdm(camera_path(scene, int(path_frames)), desc="render path", unit="view", disable=not progress):
            srcs = nearest_sources(int(round(time_)), scene.train_frames, scene.num_sources + 1)[: scene.num_sources]
            views, _, _, _ = scene.views(srcs[0], srcs, dev)
            Kt = torch.tensor(K, dtype=torch.float32, device=dev)
            Et = torch.tensor(E, dtype=torch.float32, device=dev)
            images.append(np.round(render_view(model, views, Kt, Et, H, W, chunk=chunk, amp=amp)["rgb"] * 255).astype(np.uint8))
        write_video(path_video, images)
        summary["path_video"] = str(path_video)
    return summary


def add_arguments(parser) -> None:
    from pipeline.nerf.train import add_scene_arguments

    parser.add_argument("--weights", required=True, help="nerf.safetensors")
    add_scene_arguments(parser)
    parser.add_argument("--out", required=True, help="nerf_render.zarr")
    parser.add_argument("--path-frames", type=int, default=0, help="also render a camera path of N views (0: none)")
    parser.add_argument("--path-video", default=None, help="mp4 of the camera path (with --path-frames)")
    parser.add_argument("--chunk", type=int, default=8192, help="rays per forward pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")


def run(args) -> None:
    from pipeline.cli import run_stage
    from pipeline.nerf.train import scene_sources

    sources = scene_sources(args)
    if len(sources) != 1:
        raise UserError("nerf-render renders one scene: give --frames/--tokens/--scene-json/--geometry once")
    if args.path_frames and not args.path_video:
        raise UserError("--path-frames needs --path-video (config `nerf.path_frames`)")
    run_stage(render_held_out, args, values={"sources": sources[0], "name": (args.name or [None])[0]})
