"""A tiny synthetic scene in the artifact formats the decoder reads (tokens, masks, latents, frames).

Objects are rectangles that drift over time; tokens carry a noisy embedding of the object under
each patch, so a decoder can learn the per-pixel latents and colours from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.sbd.data import SceneSources
from pipeline.tokenstore import layer_array_name

N_OBJECTS = 3


def _object_map(t: int, hw: tuple[int, int]) -> np.ndarray:
    """[H,W] int: -1 background, 0..N_OBJECTS-1 objects (rectangles moving right over time)."""
    H, W = hw
    ids = np.full((H, W), -1, np.int64)
    boxes = [(0.10, 0.10, 0.45, 0.40), (0.50, 0.20, 0.90, 0.55), (0.15, 0.60, 0.60, 0.95)]
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        dx = 0.03 * t * (1 if k % 2 == 0 else -1)
        ys = slice(int(y0 * H), int(y1 * H))
        xs = slice(max(0, int((x0 + dx) * W)), min(W, int((x1 + dx) * W)))
        ids[ys, xs] = k
    return ids


def _unit(rng, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def make_scene(
    root: str | Path,
    *,
    frames: int = 4,
    frame_hw: tuple[int, int] = (64, 80),
    crop: tuple[int, int, int, int] = (4, 5, 56, 70),
    resize_to: tuple[int, int] | None = None,
    dim_in: int = 32,
    layers: tuple[int, ...] = (0, 1, 2, 3),
    patch_size: int = 14,
    lang_dim: int = 3,
    video_dim: int | None = 6,
    seed: int = 0,
) -> SceneSources:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    T, (H, W) = frames, frame_hw
    top, left, ch, cw = crop
    gh, gw = ch // patch_size, cw // patch_size
    resized = resize_to or (H, W)
    obj = np.stack([_object_map(t, (H, W)) for t in range(T)])  # [T,H,W]

    # masks: default = object, s = halves of objects (part ids 2k, 2k+1), m = object, l = all objects one id
    masks = np.full((4, T, H, W), -1, np.int32)
    masks[0] = obj
    half = (np.arange(W)[None, None, :] >= W // 2).astype(np.int64)
    masks[1] = np.where(obj >= 0, 2 * obj + half, -1)
    masks[2] = obj
    masks[3] = np.where(obj >= 0, np.where(obj == 2, 1, 0), -1)
    mg = store.create_group(root / "masks.zarr")
    store.frame_array(mg, "masks", masks.shape, "int32", frame_axis=1, fill_value=-1)[...] = masks
    mg.attrs.update({"levels": ["default", "s", "m", "l"], "provenance": store.provenance("segment", {"seed": seed})})

    # clip latents: one row per (level, id), the same row in every frame; s-level id 5 has no row
    K = 2 * N_OBJECTS
    rows = np.full((4, T, K), -1, np.int32)
    n = 0
    for level, count in ((0, N_OBJECTS), (1, 2 * N_OBJECTS), (2, N_OBJECTS), (3, 2)):
        for k in range(count):
            if level == 1 and k == 5:
                continue
            rows[level, :, k] = n
            n += 1
    cg = store.create_group(root / "clip_latents.zarr")
    cg.create_array("features", data=_unit(rng, n, lang_dim), compressors=store.zstd())
    store.frame_array(cg, "rows", rows.shape, "int32", frame_axis=1, fill_value=-1)[...] = rows
    cg.attrs.update(
        {
            "levels": ["default", "s", "m", "l"],
            "dim": lang_dim,
            "space": {"kind": "synthetic-clip", "dim": 512},
            "autoencoder": {"path": "synthetic", "sha256": "0" * 64},
            "provenance": store.provenance("autoencode", {"seed": seed, "what": "clip"}),
        }
    )

    video = None
    if video_dim:
        # video latents: per (large-level id, frame) a state that changes over time
        vrows = np.full((1, T, 2), -1, np.int32)
        for t in range(T):
            vrows[0, t] = [2 * t, 2 * t + 1]
        vg = store.create_group(root / "video_latents.zarr")
        vg.create_array("features", data=_unit(rng, 2 * T, video_dim), compressors=store.zstd())
        store.frame_array(vg, "rows", vrows.shape, "int32", frame_axis=1, fill_value=-1)[...] = vrows
        vg.attrs.update(
            {
                "levels": ["l"],
                "dim": video_dim,
                "space": {"kind": "synthetic-text", "dim": 384},
                "autoencoder": {"path": "synthetic", "sha256": "1" * 64},
                "provenance": store.provenance("autoencode", {"seed": seed, "what": "video"}),
            }
        )
        video = root / "video_latents.zarr"

    # frames: a colour per object on a grey background
    colours = rng.integers(30, 225, size=(N_OBJECTS + 1, 3)).astype(np.uint8)
    rgb = colours[obj + 1]
    fg = store.create_group(root / "frames.zarr")
    store.frame_array(fg, "rgb", rgb.shape, "uint8")[...] = rgb
    names = [f"{t + 1:06d}" for t in range(T)]
    fg.attrs.update({"fps": 10, "frame_names": names, "source_indices": list(range(T)), "provenance": store.provenance("frames", {"seed": seed})})

    # tokens: per patch, a noisy embedding of the object at the patch centre (in resized-crop
    # coordinates) plus one of its state in that frame
    embed = rng.normal(size=(N_OBJECTS + 1, dim_in)).astype(np.float32)
    # an object's look changes with its state, so its tokens do too
    state_embed = rng.normal(size=(T, N_OBJECTS + 1, dim_in)).astype(np.float32)
    tg = store.create_group(root / "tokens.zarr")
    sy, sx = H / resized[0], W / resized[1]
    cy = ((top + (np.arange(gh) + 0.5) * patch_size) * sy).astype(int).clip(0, H - 1)
    cx = ((left + (np.arange(gw) + 0.5) * patch_size) * sx).astype(int).clip(0, W - 1)
    for k in sorted(set(layers)):
        under = obj[:, cy][:, :, cx] + 1  # [T,gh,gw] object under each patch centre
        base = embed[under] + state_embed[np.arange(T)[:, None, None], under]
        noisy = base + 0.1 * rng.normal(size=base.shape).astype(np.float32) + 0.05 * k
        store.frame_array(tg, layer_array_name(k), noisy.shape, "float16")[...] = noisy.astype(np.float16)
    store.frame_array(tg, "camera", (T, dim_in), "float16")[...] = np.zeros((T, dim_in), np.float16)
    tg.attrs.update(
        {
            "image_size": [gh * patch_size, gw * patch_size],
            "patch_size": patch_size,
            "layers": list(layers),
            "mode": "synthetic",
            "cache_window": 0,
            "transform": {"source_size": [H, W], "resize_to": list(resize_to) if resize_to else None, "crop": [top, left, ch, cw]},
            "random_init": seed,
            "frame_names": names,
            "source_indices": list(range(T)),
            "provenance": store.provenance("geometry", {"seed": seed}),
        }
    )
    return SceneSources(
        tokens=root / "tokens.zarr",
        masks=root / "masks.zarr",
        clip_latents=root / "clip_latents.zarr",
        frames=root / "frames.zarr",
        video_latents=video,
    )


TINY_ARCH = dict(features=16, hidden_dim=8, out_channels=(8, 16, 32, 32), video_hidden_dim=8)
