"""Per-frame geometry tokens, depth and cameras with StreamVGGT / VGGT / PAGE-4D -> tokens.zarr + geometry.zarr.

Weights come from a safetensors checkpoint (the official StreamVGGT `checkpoints.pth`, VGGT-1B
`model.pt` or a PAGE-4D checkpoint, converted once with `python -m pipeline convert-checkpoint`),
or, for the demo only, from `--random-init SEED` with an explicit small architecture; provenance
says which. A checkpoint that is configured but missing is an error, never a reason to fall back.

Modes: `stream` (StreamVGGT, causal, one frame at a time, key/value cache of at most
`--cache-window` earlier frames), `batch` (the same result, `--chunk-size` frames per pass),
`offline` (VGGT and PAGE-4D as released: bidirectional over all frames).

`--backbone page4d --page4d-mask` runs PAGE-4D's dynamic-mask variant (its mask head must be in
the checkpoint) and writes the per-patch mask to geometry.zarr; PAGE-4D's "nomask" checkpoint
runs as plain VGGT with `--ignore-keys aggregator.spatial_mask_head.` (config `geometry.ignore_keys`).
`--points` adds the point head's world points. `--token-dtype int8|int4` stores the tokens
quantised (`pipeline.tokenstore`).

examples:
  python -m pipeline geometry --frames results/hypernerf/americano/frames.zarr \\
      --checkpoint resources/streamvggt.safetensors --out results/hypernerf/americano --device cuda --dtype bfloat16
  python -m pipeline geometry --frames frames.zarr --out out --random-init 0 \\
      --embed-dim 64 --depth 4 --heads 4 --patch-embed conv --layers 0,1,2,3
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pipeline import store
from pipeline.checkpoints import load_state_dict
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.geometry.inputs import open_frames, plan_transform
from pipeline.geometry.model import (MASK_PREFIX, GeometryConfig, GeometryModel, config_from_state, load_weights,
                                     random_model)
from pipeline.geometry.outputs import shared_attrs, write_stores
from pipeline.geometry.runner import DTYPES, MODES, run_geometry
from pipeline.tokenstore import TOKEN_DTYPES, TokenCodec

CONFIG_KEY = "geometry.checkpoint"
BACKBONES = ("streamvggt", "vggt", "page4d")


def _check_mask_keys(state, *, backbone: str, page4d_mask: bool, ignore_keys, source: str, config_key: str) -> None:
    """A checkpoint's PAGE-4D mask head must be asked for, or explicitly ignored; never skipped silently."""
    mask_keys = sorted(k for k in state if k.startswith(MASK_PREFIX))
    ignored = [k for k in mask_keys if any(k.startswith(p) for p in ignore_keys)]
    if page4d_mask:
        if not mask_keys:
            raise UserError(f"`geometry.page4d_mask: true` needs PAGE-4D's mask head, but checkpoint {source} "
                            f"(`{config_key}`) has no {MASK_PREFIX}head0.* keys (expected {MASK_PREFIX}head0.0.weight ...)")
        if ignored:
            raise UserError(f"`geometry.ignore_keys` drops {ignored[0]}, which `geometry.page4d_mask: true` needs")
        return
    kept = [k for k in mask_keys if k not in ignored]
    if kept:
        fix = ("set `geometry.page4d_mask: true` to run the mask variant" if backbone == "page4d"
               else "set `geometry.backbone: page4d` and `geometry.page4d_mask: true` to run the mask variant")
        raise UserError(f"checkpoint {source} (`{config_key}`) has PAGE-4D mask-head key {kept[0]} but "
                        f"`geometry.page4d_mask` is false: {fix}, or list {MASK_PREFIX} in `geometry.ignore_keys` "
                        "to run without it (PAGE-4D's 'nomask' checkpoint)")


def build_model(*, checkpoint=None, random_init: int | None = None, architecture: dict | None = None,
                layers=None, ignore_keys=(), config_key: str = CONFIG_KEY, backbone: str = "streamvggt",
                page4d_mask: bool = False):
    """(model, weights record) from a safetensors checkpoint or from seeded random weights."""
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r} (`geometry.backbone`); expected one of {', '.join(BACKBONES)}")
    if page4d_mask and backbone != "page4d":
        raise UserError(f"`geometry.page4d_mask: true` needs `geometry.backbone: page4d`, not {backbone!r}")
    if random_init is not None:
        if checkpoint:
            raise UserError(f"give either a checkpoint (`{config_key}`) or --random-init, not both")
        arch = dict(architecture or {})
        missing = [k for k in ("embed_dim", "depth", "num_heads") if arch.get(k) is None]
        if missing:
            raise UserError(f"--random-init needs an explicit small architecture; missing {', '.join(missing)} "
                            "(e.g. --embed-dim 64 --depth 4 --heads 4 --patch-embed conv --layers 0,1,2,3)")
        dpt = tuple(layers) if layers is not None and len(layers) == 4 else None
        config = GeometryConfig.small(embed_dim=int(arch["embed_dim"]), depth=int(arch["depth"]),
                                      num_heads=int(arch["num_heads"]), patch_embed=arch.get("patch_embed") or "conv",
                                      dpt_layers=dpt, dynamic_mask=page4d_mask)
        config.validate()
        return random_model(config, random_init), {"kind": "random", "seed": int(random_init)}
    if architecture and any(v is not None for v in architecture.values()):
        raise UserError("architecture options are only for --random-init; a checkpoint carries its own")
    state = load_state_dict(checkpoint, config_key=config_key, what="StreamVGGT/VGGT/PAGE-4D")
    _check_mask_keys(state, backbone=backbone, page4d_mask=page4d_mask, ignore_keys=tuple(ignore_keys),
                     source=str(checkpoint), config_key=config_key)
    config = dataclasses.replace(config_from_state(state, source=str(checkpoint), config_key=config_key),
                                 dynamic_mask=page4d_mask)
    config.validate()
    with torch.device("meta"):
        model = GeometryModel(config)
    ignored = load_weights(model, state, source=str(checkpoint), config_key=config_key, ignore_prefixes=ignore_keys)
    return model, {"kind": "checkpoint", "path": str(checkpoint), "ignored_keys": ignored}


def _check_options(mode: str, dtype: str, token_dtype: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown geometry mode {mode!r}; expected one of {', '.join(MODES)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if token_dtype not in TOKEN_DTYPES:
        raise UserError(f"unknown token dtype {token_dtype!r} (`geometry.token_dtype`); expected one of "
                        f"{', '.join(TOKEN_DTYPES)}")


def _checked_layers(cfg, layers) -> list[int]:
    layers = list(cfg.dpt_layers if layers is None else layers)
    if any(not 0 <= i < cfg.depth for i in layers) or len(set(layers)) != len(layers):
        raise UserError(f"token layers {layers} must be distinct indices below the model depth {cfg.depth}")
    return layers


def compute_geometry(
    frames: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    random_init: int | None = None,
    architecture: dict | None = None,
    mode: str = "stream",
    cache_window: int | None = 128,
    chunk_size: int = 8,
    device: str = "auto",
    dtype: str = "float32",
    max_size: int = 518,
    layers=None,
    ignore_keys=(),
    backbone: str = "streamvggt",
    page4d_mask: bool = False,
    points: bool = False,
    token_dtype: str = "int8",
    cache_dtype: str | None = None,
    merge_ratio: float = 0.0,
    config_key: str = CONFIG_KEY,
    progress: bool = False,
) -> dict:
    """Run the geometry model over `frames`; write `<out_dir>/tokens.zarr` and `<out_dir>/geometry.zarr`."""
    _check_options(mode, dtype, token_dtype)
    source = open_frames(frames)
    model, weights = build_model(checkpoint=checkpoint, random_init=random_init, architecture=architecture,
                                 layers=layers, ignore_keys=ignore_keys, config_key=config_key, backbone=backbone,
                                 page4d_mask=page4d_mask)
    cfg = model.config
    layers = _checked_layers(cfg, layers)
    transform = plan_transform(*source.size, max_size=max_size, patch=cfg.patch_size)
    H, W = transform.image_size
    grid = (H // cfg.patch_size, W // cfg.patch_size)
    T = len(source)
    window = None if mode == "offline" else cache_window
    dev = torch.device(resolve_device(device))
    model = model.to(dev).eval()
    codec = TokenCodec.for_dtype(token_dtype, 2 * cfg.embed_dim)
    params = {"mode": mode, "cache_window": window, "chunk_size": chunk_size if mode == "batch" else None,
              "dtype": dtype, "max_size": max_size, "layers": layers, "backbone": backbone, "page4d_mask": page4d_mask,
              "points": points, "token_dtype": token_dtype, "cache_dtype": cache_dtype, "merge_ratio": merge_ratio}
    prov = store.provenance(
        "geometry", params, {"frames": source.path},
        checkpoints={"geometry": checkpoint} if weights["kind"] == "checkpoint" else None,
        extra={"weights": weights, "architecture": cfg.to_dict()},
    )
    stream = run_geometry(model, source.frames(transform), mode=mode, cache_window=window,
                          chunk_size=params["chunk_size"], device=dev, dtype=dtype,
                          keep_layers=layers, points=points, cache_dtype=cache_dtype, merge_ratio=merge_ratio)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=T, desc=f"geometry ({mode})", unit="frame")
    out_dir = Path(out_dir)
    attrs = shared_attrs(source, transform, cfg, params, prov)
    seconds, overflow = write_stores(out_dir, stream, model, T, transform.image_size, codec, params, attrs, weights, prov)
    return {"frames": T, "image_size": [H, W], "grid": list(grid), "layers": layers, "mode": mode, "backbone": backbone,
            "token_dtype": token_dtype, "seconds": round(seconds, 3), "float16_overflow": overflow,
            "weights": weights["kind"],
            "tokens": str(out_dir / "tokens.zarr"), "geometry": str(out_dir / "geometry.zarr")}


def add_arguments(parser) -> None:
    from pipeline.defaults import schema_default

    parser.add_argument("--frames", required=True, help="frames.zarr (array rgb [T,H,W,3] uint8) or an image folder")
    parser.add_argument("--out", required=True, help="folder to write tokens.zarr and geometry.zarr into")
    weights = parser.add_argument_group("weights (exactly one)")
    weights.add_argument("--checkpoint", default=None, help=f"StreamVGGT/VGGT-1B safetensors (`{CONFIG_KEY}`)")
    weights.add_argument("--random-init", type=int, default=None, metavar="SEED",
                         help="seeded random weights for the demo; needs --embed-dim, --depth, --heads")
    arch = parser.add_argument_group("architecture (only with --random-init)")
    arch.add_argument("--embed-dim", type=int, default=None)
    arch.add_argument("--depth", type=int, default=None, help="number of frame/global block pairs")
    arch.add_argument("--heads", type=int, default=None)
    arch.add_argument("--patch-embed", choices=("conv", "dinov2"), default=None)
    run = parser.add_argument_group("run")
    run.add_argument("--mode", choices=MODES, default=schema_default("geometry.mode"))
    run.add_argument("--cache-window", type=int, default=schema_default("geometry.cache_window"),
                     help="earlier frames a frame attends to in stream/batch mode; 0 = all")
    run.add_argument("--chunk-size", type=int, default=schema_default("geometry.chunk_size"), help="frames per pass in batch mode ")
    run.add_argument("--device", default=schema_default("geometry.device"), help="auto (a leased GPU when there is one, else cpu), cpu, cuda[:k]")
    run.add_argument("--dtype", choices=tuple(DTYPES), default=schema_default("geometry.dtype"),
                     help="aggregator precision; bfloat16 = autocast (heads stay fp32)")
    run.add_argument("--max-size", type=int, default=schema_default("geometry.max_size"), help="longest side after resizing")
    run.add_argument("--layers", type=int, nargs="+", default=None,
                     help="aggregator layers to store (default: the DPT layers, 4 11 17 23 at full size)")
    run.add_argument("--backbone", choices=BACKBONES, default=schema_default("geometry.backbone"),
                     help="weights family; page4d allows --page4d-mask (run vggt/page4d with --mode offline as released)")
    run.add_argument("--page4d-mask", action="store_true",
                     help="PAGE-4D's dynamic-mask variant: the mask head (in the checkpoint) biases pose tokens; "
                          "writes geometry.zarr/dynamic_mask")
    run.add_argument("--ignore-keys", nargs="+", default=schema_default("geometry.ignore_keys"), metavar="PREFIX",
                     help="checkpoint key prefixes to leave unloaded on purpose (track_head. always is), "
                          "e.g. aggregator.spatial_mask_head. for PAGE-4D's nomask checkpoint")
    run.add_argument("--points", action="store_true", help="also run the point head: geometry.zarr/world_points")
    run.add_argument("--token-dtype", choices=TOKEN_DTYPES, default=schema_default("geometry.token_dtype"),
                     help="tokens.zarr storage: float16, or int8 / int4 codes with per-group scales")
    run.add_argument("--cache-dtype", choices=tuple(DTYPES), default=schema_default("geometry.cache_dtype"),
                     help="store the key/value cache in this precision (default: as computed)")
    run.add_argument("--merge-ratio", type=float, default=float(schema_default("geometry.merge_ratio")),
                     help="stream mode: share of each cached frame's patch tokens merged into similar ones (0 = off)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> None:
    from pipeline.cli import run_stage

    architecture = {"embed_dim": args.embed_dim, "depth": args.depth, "num_heads": args.heads,
                    "patch_embed": args.patch_embed}
    run_stage(compute_geometry, args, names={"out_dir": "out"},
              values={"architecture": architecture, "cache_window": None if args.cache_window == 0 else args.cache_window,
                      "ignore_keys": tuple(args.ignore_keys)})  # fmt: skip
