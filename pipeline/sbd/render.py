"""Render per-pixel language latents with a trained decoder -> render.zarr.

Writes float16 `lang_s`, `lang_m`, `lang_l` [T,H,W,C], `video` [T,H,W,Cv] when the decoder has
the time-sensitive head, and `rgb` [T,H,W,3], at the frames' resolution. Raw latents, not images.
Where the decoder output goes (`--output-placement`, recorded in the weights by training and in
the render's attrs): `resize`, upstream's, resizes it (bilinear, align_corners=False) to the whole
frame; `crop` makes it cover the geometry stage's crop box (mapped to frame pixels, so a resize is
undone too), placed at the crop offset, the border filled by repeating the edge.

Takes our `sbd.safetensors` (architecture and token layers in its metadata) or the released
4DLangVGGT checkpoint after `convert-checkpoint` (architecture read from the weights' shapes,
token layers 4/11/17/23, trained with the `resize` placement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline import store
from pipeline.checkpoints import checkpoint_metadata, load_state_dict
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.sbd.data import PLACEMENTS, TokenReader
from pipeline.sbd.model import LEVELS, UPSTREAM_LAYERS, DecoderConfig, SemanticBridgingDecoder, infer_config


def _meta_json(meta: dict[str, str], key: str, default=None):
    raw = meta.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def load_sbd(path: str | Path, *, patch_size: int = 14, config_key: str = "sbd.checkpoint", device="cpu"):
    """(model in eval mode, metadata dict) from a safetensors decoder checkpoint."""
    state = load_state_dict(path, config_key=config_key, what="Semantic Bridging Decoder")
    raw = checkpoint_metadata(path)
    meta = {k: _meta_json(raw, k) for k in raw}
    try:
        config = DecoderConfig.from_dict(meta["architecture"]) if isinstance(meta.get("architecture"), dict) else infer_config(state, patch_size=patch_size)
        model = SemanticBridgingDecoder.from_config(config)
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{path} (config key `{config_key}`) is not a Semantic Bridging Decoder checkpoint: {str(exc).splitlines()[0]}") from None
    meta.setdefault("layers", list(UPSTREAM_LAYERS))
    return model.to(device).eval(), meta


def place_in_frame(x: torch.Tensor, box: tuple[int, int, int, int], frame_hw: tuple[int, int]) -> torch.Tensor:
    """`x` [N,C,h,w] covering `box` (top, left, h, w) -> [N,C,H,W], border = repeated edge."""
    top, left, h, w = box
    H, W = frame_hw
    # Clip the box to the frame (a box may overhang after rounding or padding upstream).
    y0, x0 = max(0, -top), max(0, -left)
    y1, x1 = min(h, H - top), min(w, W - left)
    if y1 <= y0 or x1 <= x0:
        raise UserError(f"crop box {box} lies outside the {H}x{W} frame")
    x = x[..., y0:y1, x0:x1]
    top, left = top + y0, left + x0
    pad = (left, W - left - x.shape[-1], top, H - top - x.shape[-2])
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x


def _placement(recorded: str | None, requested: str | None, checkpoint) -> str:
    """The placement to render with: the one training used (released weights: upstream's resize)."""
    for value in (recorded, requested):
        if value is not None and value not in PLACEMENTS:
            raise UserError(f"sbd.output_placement must be one of {list(PLACEMENTS)}, got {value!r}")
    if recorded is not None and requested is not None and recorded != requested:
        raise UserError(
            f"{checkpoint} was trained with output placement {recorded!r} but rendering asks for {requested!r} "
            "(config key `sbd.output_placement`): set it back, or retrain"
        )
    return requested or recorded or "resize"


def _check_tokens_fit(meta: dict, cfg, tokens: TokenReader, checkpoint, tokens_path) -> None:
    if [int(k) for k in meta["layers"]] != tokens.layers:
        raise UserError(
            f"{checkpoint} was trained on token layers {meta['layers']} but {tokens_path} holds layers {tokens.layers} "
            "(tokens.zarr attrs `layers`)"
        )
    if cfg.dim_in != tokens.dim_in:
        raise UserError(f"{checkpoint} expects {cfg.dim_in}-wide tokens; {tokens_path} has {tokens.dim_in}")


def _render_arrays(group, model, T: int, H: int, W: int) -> dict:
    cfg = model.config
    arrays = {f"lang_{lv}": store.frame_array(group, f"lang_{lv}", (T, H, W, cfg.lang_dim), "float16") for lv in LEVELS}
    if model.has_video:
        arrays["video"] = store.frame_array(group, "video", (T, H, W, cfg.video_dim), "float16")
    arrays["rgb"] = store.frame_array(group, "rgb", (T, H, W, 3), "float16")
    return arrays


def _decode_frames(model, tokens: TokenReader, arrays: dict, box, dev, batch_size: int, progress: bool) -> None:
    """Decode every frame in batches and write each head's output, placed in the full frame."""
    from tqdm.auto import tqdm

    H, W = tokens.frame_hw
    T = tokens.num_frames
    with torch.inference_mode():
        for t0 in tqdm(range(0, T, batch_size), desc="render sbd", unit="batch", disable=not progress, mininterval=2.0):
            frames = list(range(t0, min(T, t0 + batch_size)))
            layers = [x.to(dev).float() for x in tokens.read(frames)]
            pred = model(layers, box[2:])
            outputs = {f"lang_{lv}": pred["lang"][:, i] for i, lv in enumerate(LEVELS)}
            outputs["rgb"] = pred["rgb"]
            if "video" in pred:
                outputs["video"] = pred["video"]
            for name, value in outputs.items():
                full = place_in_frame(value, box, (H, W)).permute(0, 2, 3, 1)
                arrays[name][t0 : t0 + len(frames)] = full.to(torch.float16).cpu().numpy()


def _render_attrs(model, meta: dict, tokens: TokenReader, placement: str, box, prov: dict) -> dict:
    return {
        "frame_names": tokens.frame_names,
        "source_indices": [int(i) for i in tokens.source_indices],
        "clip_space": meta.get("clip_space"),
        "video_space": meta.get("video_space") if model.has_video else None,
        "levels": list(LEVELS),
        "lang_dim": model.config.lang_dim,
        "video_dim": model.config.video_dim,
        "crop_box": list(tokens.crop_box()),
        "output_placement": placement,
        "output_box": list(box),
        "provenance": prov,
    }


def render_sbd(
    tokens_path: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    *,
    batch_size: int = 4,
    device: str = "auto",
    config_key: str = "sbd.checkpoint",
    output_placement: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render every frame of `tokens_path`; `output_placement` None = the one the weights record."""
    dev = torch.device(resolve_device(device))
    tokens = TokenReader(tokens_path)
    model, meta = load_sbd(checkpoint, patch_size=tokens.patch_size, config_key=config_key, device=dev)
    _check_tokens_fit(meta, model.config, tokens, checkpoint, tokens_path)
    placement = _placement(meta.get("output_placement"), output_placement, checkpoint)
    box = tokens.output_box(placement)
    H, W = tokens.frame_hw
    T = tokens.num_frames
    params = {"batch_size": batch_size, "layers": tokens.layers, "output_placement": placement,
              "crop_box": list(tokens.crop_box()), "output_box": list(box), "frame_size": [H, W]}
    prov = store.provenance("render", params, {"tokens": tokens_path}, checkpoints={"sbd": checkpoint})

    with store.atomic_path(out) as tmp:
        group = store.create_group(tmp)
        arrays = _render_arrays(group, model, T, H, W)
        _decode_frames(model, tokens, arrays, box, dev, batch_size, progress)
        group.attrs.update(_render_attrs(model, meta, tokens, placement, box, prov))
    return {"out": str(out), "frames": T, "size": [H, W], "arrays": sorted(arrays), "crop_box": list(tokens.crop_box()),
            "output_placement": placement}


def add_arguments(parser) -> None:
    parser.add_argument("--tokens", required=True, help="tokens.zarr")
    parser.add_argument("--checkpoint", required=True, help="decoder weights (.safetensors)")
    parser.add_argument("--out", required=True, help="render.zarr to write")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--output-placement", choices=list(PLACEMENTS), default=None,
                        help="resize (upstream) or crop; default: what the weights record, else resize")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(render_sbd, args, names={"tokens_path": "tokens"})
