"""Ask a rendered scene any text: relevancy maps per level and an overlay video.

`python -m pipeline query --scene results/<dataset>/<scene> "a text"` reads the scene's
render.zarr, decodes each level with the CLIP-slot autoencoder (the one recorded in
clip_latents.zarr unless --autoencoder is given), scores the text against the canonical
negatives as the evaluation does, and writes under `<scene>/queries/<text>/` (or --out):
`relevancy.zarr` (`relevancy` [T,3,H,W] float16 smoothed relevancy per level s/m/l, `mask`
[T,H,W] uint8 at the chosen level, attrs text/levels/chosen_level/source_indices),
`overlay.mp4` and `overlay.png` (a few frames).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.evaluate.encoders import (
    Decoder,
    TextVectors,
    decoded_cosines,
    encode_texts,
    load_autoencoder_decoder,
    load_query_embeddings,
    parse_space,
    require_same_space,
)
from pipeline.evaluate.figures import Panel, blend, draw_outline, heat_rgb, overlay_figure, slug, write_video
from pipeline.evaluate.protocol import LEVELS, Protocol
from pipeline.evaluate.relevancy import choose_level, masks_for_level, relevancy_from_cosines


def _frame_images(scene_dir: Path | None, render, shape):
    """Callable t -> RGB uint8 frame: frames.zarr beside the render if its size matches, else the render's rgb."""
    from pipeline.store import open_group

    frames = None
    if scene_dir is not None and (scene_dir / "frames.zarr").exists():
        g = open_group(scene_dir / "frames.zarr", what="frames")
        if "rgb" in g and tuple(g["rgb"].shape[1:3]) == tuple(shape):
            frames = g["rgb"]

    def image(t: int) -> np.ndarray:
        if frames is not None:
            return np.asarray(frames[t], dtype=np.uint8)
        if "rgb" in render:
            return (np.asarray(render["rgb"][t], dtype=np.float32).clip(0, 1) * 255).astype(np.uint8)
        return np.full((*shape, 3), 128, np.uint8)

    return image


def query_render(
    render, text: str, out: str | Path, *, decoder: Decoder, vectors: TextVectors, protocol: Protocol = Protocol(),
    level: str = "auto", scene_dir: str | Path | None = None, fps: float | None = None, figure_frames: int = 4,
) -> dict:
    """Write relevancy maps, an overlay video and a figure for `text`; return a summary."""
    from pipeline.store import atomic_path, create_group, frame_array

    names = [f"lang_{lv}" for lv in LEVELS]
    missing = [n for n in names if n not in render]
    if missing:
        raise UserError(f"render lacks {', '.join(missing)}")
    T, H, W, C = render[names[0]].shape
    attrs = dict(render.attrs)
    source_indices = [int(v) for v in attrs.get("source_indices", range(T))]
    text_m = vectors.matrix([text, *protocol.negatives])
    image = _frame_images(Path(scene_dir) if scene_dir else None, render, (H, W))
    fixed = None if level == "auto" else LEVELS.index(level)
    out = Path(out)
    chosen_levels: list[str] = []
    peaks: list[float] = []
    panel_ts = set(np.linspace(0, T - 1, min(T, figure_frames)).round().astype(int).tolist())
    panels: list[Panel] = []
    with atomic_path(out / "relevancy.zarr") as tmp:
        g = create_group(tmp)
        rel_arr = frame_array(g, "relevancy", (T, len(LEVELS), H, W), "float16")
        mask_arr = frame_array(g, "mask", (T, H, W), "uint8")

        def overlays():
            for t in range(T):
                lat = [torch.as_tensor(np.asarray(render[n][t], dtype=np.float32)) for n in names]
                if protocol.remap_positive and min(float(x.min()) for x in lat) > 0:
                    lat = [x * 2 - 1 for x in lat]
                lvls = []
                for x in lat:
                    cos = decoded_cosines(decoder, x.reshape(-1, C), text_m)
                    rel = relevancy_from_cosines(cos[:, :1], cos[:, 1:], protocol.temperature)[:, 0].reshape(H, W)
                    lvls.append(masks_for_level(rel, protocol))
                k = choose_level(lvls, protocol.level_strategy) if fixed is None else fixed
                rel_arr[t] = np.stack([lv.smoothed.numpy() for lv in lvls]).astype(np.float16)
                mask = lvls[k].post.numpy()
                mask_arr[t] = mask.astype(np.uint8)
                chosen_levels.append(LEVELS[k])
                peaks.append(lvls[k].peak)
                img = image(t)
                if t in panel_ts:
                    panels.append(Panel(frame=source_indices[t], image=img, relevancy=lvls[k].smoothed.numpy(),
                                        pred=mask, gt=None, level=LEVELS[k], iou=None))
                yield draw_outline(blend(img, heat_rgb(lvls[k].smoothed.numpy())), mask, (255, 255, 255))

        write_video(out / "overlay.mp4", overlays(), fps=fps or float(attrs.get("fps") or 10.0))
        g.attrs.update({"text": text, "levels": list(LEVELS), "chosen_level": chosen_levels,
                        "peak_relevancy": peaks, "source_indices": source_indices,
                        "negatives": list(protocol.negatives), "clip_space": attrs.get("clip_space")})
    overlay_figure(out / "overlay.png", text, panels)
    return {"text": text, "frames": T, "out": str(out), "chosen_level": chosen_levels,
            "max_relevancy": float(max(peaks)) if peaks else float("nan")}


def _autoencoder_from_scene(scene_dir: Path, render_attrs: dict) -> str | None:
    """The CLIP autoencoder the scene's latents were made with (render attrs, else clip_latents.zarr)."""
    for key in ("clip_autoencoder", "autoencoder"):
        v = render_attrs.get(key)
        if isinstance(v, dict) and v.get("path"):
            return v["path"]
    return latents_autoencoder(scene_dir, "clip")


def latents_autoencoder(scene_dir: Path, kind: str) -> str | None:
    """The autoencoder path recorded in `<kind>_latents.zarr` (kind: clip or video), if any."""
    lat = scene_dir / f"{kind}_latents.zarr"
    if lat.exists():
        from pipeline.store import open_group

        v = dict(open_group(lat, what=f"{kind} latents").attrs).get("autoencoder")
        if isinstance(v, dict) and v.get("path"):
            return v["path"]
    return None


def _note(message: str) -> None:
    print(message, file=sys.stderr)  # stdout carries the command's JSON summary


def query(
    scene: str | Path, text: str, *, render: str | Path | None = None, autoencoder: str | Path | None = None,
    query_embeddings: str | Path | None = None, out: str | Path | None = None, level: str = "auto",
    protocol: Protocol = Protocol(), decoder: Decoder | None = None,
) -> dict:
    from pipeline.store import open_group

    scene_dir = Path(scene)
    if not scene_dir.exists() and (Path("results") / scene_dir).is_dir():
        scene_dir = Path("results") / scene_dir  # an id like <dataset>/<scene>
    render_path = Path(render) if render else scene_dir / "render.zarr"
    group = open_group(render_path, what="render")
    attrs = dict(group.attrs)
    clip_space = parse_space(attrs.get("clip_space"))
    if decoder is None:
        autoencoder = autoencoder or _autoencoder_from_scene(scene_dir, attrs)
        if autoencoder is None:
            raise UserError(f"no CLIP autoencoder recorded for {scene_dir}; pass --autoencoder "
                            "(config key `evaluate.autoencoder`)")
        decoder, ae_space, _ = load_autoencoder_decoder(autoencoder, config_key="evaluate.autoencoder", what="CLIP autoencoder")
        require_same_space(clip_space, ae_space, what="clip_space", other=f"the space of {autoencoder}", log=_note)
        clip_space = clip_space or ae_space
    if query_embeddings:
        vectors, _ = load_query_embeddings(query_embeddings)
        require_same_space(clip_space, vectors.space, what="clip_space", other=f"clip_space of {query_embeddings}", log=_note)
    else:
        vectors = encode_texts(clip_space, [text, *protocol.negatives], query=False, what="clip")
    out = Path(out) if out else scene_dir / "queries" / slug(text)
    return query_render(group, text, out, decoder=decoder, vectors=vectors, protocol=protocol, level=level,
                        scene_dir=scene_dir)


def add_arguments(parser) -> None:
    parser.add_argument("text", help="the text to look for")
    parser.add_argument("--scene", required=True, help="the scene's results folder, or its id <dataset>/<scene> under ./results")
    parser.add_argument("--render", help="render.zarr (default: <scene>/render.zarr)")
    parser.add_argument("--autoencoder", help="CLIP autoencoder (default: the one recorded by the scene's latents)")
    parser.add_argument("--query-embeddings", help="npz with clip_names/clip_vectors holding the text and negatives")
    parser.add_argument("--level", choices=["auto", *LEVELS], default="auto",
                        help="level to show; auto = the highest smoothed peak per frame")
    parser.add_argument("--negatives", nargs="+", default=list(Protocol().negatives))
    parser.add_argument("--out", help="output folder (default: <scene>/queries/<text>)")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(query, args, values={"protocol": Protocol(negatives=tuple(args.negatives))},
              summary=lambda s: json.dumps({k: v for k, v in s.items() if k != "chosen_level"}))
