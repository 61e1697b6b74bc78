"""Train the generalizable radiance field (VGGT-NeRF) on one or several scenes.

Repeat --frames/--tokens/--scene-json/--geometry once per scene, in the same order. Each step
takes one training frame of one scene as the target, builds the cost volume from its
`num_sources` nearest training frames (never a held-out frame, never the target itself),
renders `rays` random pixels of the target and minimises the RGB MSE (MVSNeRF's loss). An epoch
is every training frame of every scene once, in a seeded order. Adam, cosine learning-rate
decay, bfloat16 autocast on CUDA only, seeded.

Resumable: checkpoints (safetensors: weights, optimizer and RNG state, the log so far) go to
--checkpoint-dir every --save-every epochs with the sbd trainer's helpers; a rerun with the same
settings, inputs and code resumes from the newest and ends with the weights an uninterrupted run
would have; others are removed, never resumed. Bad input (too few frames, missing or static
cameras, a held-out stride that leaves nothing to train on) fails before any checkpoint is
touched. Writes the weights (`--out`, the architecture and every scene's held-out frames in its
metadata), a Parquet training log (each step's scene, target and source frames) and a loss curve.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from pipeline.nerf.data import CAMERA_CHOICES, SceneSources
from pipeline.nerf.loop import train_nerf
from pipeline.nerf.model import COLOUR_HEADS, NerfConfig
from pipeline.nerf.settings import NerfSettings

# Modules, one job each: `settings` (NerfSettings, the schedule), `loop` (train_nerf), `model`
# (the field, load_nerf), `cameras` and `networks` (its pieces); this one is the command line.


# ----------------------------------------------------------------------------- command line
def add_scene_arguments(parser) -> None:
    g = parser.add_argument_group("inputs (repeat once per scene, same order)")
    g.add_argument("--frames", action="append", required=True, help="frames.zarr")
    g.add_argument("--tokens", action="append", required=True, help="tokens.zarr (the last stored layer is used)")
    g.add_argument("--scene-json", action="append", required=True, help="scene.json (the scene's own cameras)")
    g.add_argument("--geometry", action="append", required=True, help="geometry.zarr (depth range, cameras fallback)")
    g.add_argument("--name", action="append", default=None, help="scene name (default: the frames' folder name)")


def scene_sources(args) -> list[SceneSources]:
    n = len(args.frames)
    for flag, values in (("--tokens", args.tokens), ("--scene-json", args.scene_json), ("--geometry", args.geometry)):
        if len(values) != n:
            raise UserError(f"{flag} given {len(values)} times but --frames {n} times: give one per scene, in order")
    if args.name and len(args.name) != n:
        raise UserError(f"--name given {len(args.name)} times for {n} scenes")
    return [SceneSources(Path(f), Path(t), Path(j), Path(g)) for f, t, j, g in zip(args.frames, args.tokens, args.scene_json, args.geometry)]


def add_arguments(parser) -> None:
    c, s = NerfConfig(), NerfSettings()
    add_scene_arguments(parser)
    o = parser.add_argument_group("outputs")
    o.add_argument("--out", required=True, help="final weights, nerf.safetensors")
    o.add_argument("--log", default=None, help="training log Parquet (default: beside --out, nerf_log.parquet)")
    o.add_argument("--plot", default=None, help="loss-curve PNG (default: beside --out, nerf_loss.png)")
    o.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (default: <out stem>_checkpoints)")
    o.add_argument("--save-every", type=int, default=1, help="checkpoint every N epochs")
    o.add_argument("--no-resume", action="store_true")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=s.epochs)
    t.add_argument("--rays", type=int, default=s.rays, help="rays per step")
    t.add_argument("--lr", type=float, default=s.lr)
    t.add_argument("--min-lr", type=float, default=s.min_lr)
    t.add_argument("--holdout-every", type=int, default=s.holdout_every, help="every k-th frame is held out")
    t.add_argument("--cameras", choices=list(CAMERA_CHOICES), default=s.cameras)
    t.add_argument("--near", type=float, default=None)
    t.add_argument("--far", type=float, default=None)
    t.add_argument("--seed", type=int, default=s.seed)
    t.add_argument("--device", default="auto")
    t.add_argument("--no-amp", action="store_true")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true")
    a = parser.add_argument_group("architecture")
    a.add_argument("--feature-dim", type=int, default=c.feature_dim)
    a.add_argument("--num-sources", type=int, default=c.num_sources)
    a.add_argument("--planes", type=int, default=c.planes)
    a.add_argument("--samples", type=int, default=c.samples)
    a.add_argument("--cnn-channels", type=int, nargs="+", default=list(c.cnn_channels))
    a.add_argument("--net-depth", type=int, default=c.net_depth)
    a.add_argument("--net-width", type=int, default=c.net_width)
    a.add_argument("--multires", type=int, default=c.multires)
    a.add_argument("--multires-views", type=int, default=c.multires_views)
    a.add_argument("--colour", choices=list(COLOUR_HEADS), default=c.colour)
    a.add_argument("--volume-downscale", type=int, default=c.volume_downscale, help="cost volume at 1/N of the image size")


def config_from_args(args) -> NerfConfig:
    return NerfConfig(feature_dim=args.feature_dim, num_sources=args.num_sources, planes=args.planes, samples=args.samples,
                      cnn_channels=tuple(args.cnn_channels), net_depth=args.net_depth, net_width=args.net_width,
                      multires=args.multires, multires_views=args.multires_views, colour=args.colour,
                      volume_downscale=args.volume_downscale)  # fmt: skip


def run(args) -> None:
    from pipeline.cli import run_stage, stage_kwargs

    settings = NerfSettings(**stage_kwargs(NerfSettings, args, values={"amp": not args.no_amp}))
    run_stage(train_nerf, args, values={"sources": scene_sources(args), "config": config_from_args(args), "settings": settings,
                                        "names": args.name, "log_path": args.log, "plot_path": args.plot,
                                        "resume": not args.no_resume})  # fmt: skip
