"""Train the Semantic Bridging Decoder on geometry tokens and autoencoded feature targets.

One scene, or several (repeat --tokens/--masks/--clip-latents/--frames once per scene, in the
same order; --video-latents likewise, `-` for a scene without video features). Losses as
4DLangVGGT: masked L1 (x lambda_l1) + cosine (x lambda_cos) on the s/m/l language latents, RGB
reconstruction lambda_rgb*L1 + (1-lambda_rgb)*L2; the video head, when the scenes have video
latents, gets the same L1 + cosine on its latents. AdamW with linear warm-up then constant or
cosine learning rate, grad clip, AMP on CUDA only, seeded.

Checkpoints (safetensors: weights, optimizer and RNG state, training log) go to
--checkpoint-dir every --save-every epochs; a rerun with the same settings, inputs and code
(the inputs' recipe digests cover the code that made them) resumes from the newest one and ends
with the same weights as an uninterrupted run; any other checkpoint is removed, never resumed.
Writes the final weights (`--out`, with architecture, token layers, output placement and latent
spaces in its metadata), a Parquet training log and a loss-curve PNG.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from pipeline.sbd.checkpointing import (  # noqa: F401  (the trainer's pieces, also read from here)
    CHECKPOINT_FORMAT,
    LOG_COLUMNS,
    WEIGHTS_FORMAT,
    _checkpoint_path,
    _fingerprint,
    find_resume_point,
    load_train_state,
    plot_losses,
    save_decoder,
    save_train_state,
)
from pipeline.sbd.data import PLACEMENTS, SceneSources
from pipeline.sbd.losses import LOSS_COLUMNS, _cos_loss, _masked_l1, param_groups, sbd_losses  # noqa: F401
from pipeline.sbd.loop import CACHE_BYTES, train_sbd  # noqa: F401
from pipeline.sbd.settings import TrainSettings, lr_at  # noqa: F401

# Modules, one job each: `settings` (TrainSettings, lr_at), `losses` (losses, optimiser groups),
# `checkpointing` (resumable checkpoints, final weights, loss plot), `loop` (train_sbd); this one
# is the command line.


# ----------------------------------------------------------------------------- command line
def _scene_list(args) -> list[SceneSources]:
    n = len(args.tokens)
    for flag, values in (("--masks", args.masks), ("--clip-latents", args.clip_latents), ("--frames", args.frames)):
        if len(values) != n:
            raise UserError(f"{flag} given {len(values)} times but --tokens {n} times: give one per scene, in order")
    video = args.video_latents or []
    if video and len(video) != n:
        raise UserError(f"--video-latents given {len(video)} times for {n} scenes: give one per scene ('-' for none)")
    video = video or ["-"] * n
    return [
        SceneSources(
            tokens=Path(t), masks=Path(m), clip_latents=Path(c), frames=Path(f), video_latents=None if v in ("-", "") else Path(v)
        )
        for t, m, c, f, v in zip(args.tokens, args.masks, args.clip_latents, args.frames, video)
    ]


def add_arguments(parser) -> None:
    d = TrainSettings()
    g = parser.add_argument_group("inputs (repeat once per scene, same order)")
    g.add_argument("--tokens", action="append", required=True, help="tokens.zarr")
    g.add_argument("--masks", action="append", required=True, help="masks.zarr")
    g.add_argument("--clip-latents", action="append", required=True, help="clip_latents.zarr")
    g.add_argument("--frames", action="append", required=True, help="frames.zarr (RGB target)")
    g.add_argument("--video-latents", action="append", default=None, help="video_latents.zarr, or '-' for none")
    o = parser.add_argument_group("outputs")
    o.add_argument("--out", required=True, help="final weights, sbd.safetensors")
    o.add_argument("--log", default=None, help="training log Parquet (default: beside --out, train_log.parquet)")
    o.add_argument("--plot", default=None, help="loss-curve PNG (default: beside --out, loss.png)")
    o.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (default: <out stem>_checkpoints beside --out)")
    o.add_argument("--save-every", type=int, default=5, help="checkpoint every N epochs (default 5)")
    o.add_argument("--keep-checkpoints", type=int, default=2, help="how many recent checkpoints to keep (default 2)")
    o.add_argument("--no-resume", action="store_true", help="start fresh even if a matching checkpoint exists")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="frames per step")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--min-lr", type=float, default=d.min_lr)
    t.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    t.add_argument("--schedule", choices=["constant", "cosine"], default=d.schedule)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument("--lambda-l1", type=float, default=d.lambda_l1)
    t.add_argument("--lambda-cos", type=float, default=d.lambda_cos)
    t.add_argument("--lambda-rgb", type=float, default=d.lambda_rgb, help="L1 share of the RGB loss (rest is L2)")
    t.add_argument("--no-rgb-loss", action="store_true", help="train without RGB reconstruction")
    t.add_argument("--lambda-video", type=float, default=d.lambda_video)
    t.add_argument("--cos-over-width", action="store_true", help="upstream quirk: cosine over the image-width axis")
    t.add_argument("--balance-objects", action="store_true", help="weight latent losses so every object counts equally")
    t.add_argument("--output-placement", choices=list(PLACEMENTS), default=d.output_placement,
                   help="resize: output resized to the whole frame (upstream); crop: the geometry crop box only")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader workers prefetching batches")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    a = parser.add_argument_group("architecture")
    a.add_argument("--features", type=int, default=d.features)
    a.add_argument("--hidden-dim", type=int, default=d.hidden_dim)
    a.add_argument("--out-channels", type=int, nargs=4, default=list(d.out_channels), help="DPT projection widths")
    a.add_argument("--video-dim", type=int, default=None, help="video head width (default: from the video latents; 0 = none)")
    a.add_argument("--video-hidden-dim", type=int, default=d.video_hidden_dim)


def run(args) -> None:
    from pipeline.cli import run_stage, stage_kwargs

    settings = TrainSettings(**stage_kwargs(TrainSettings, args, values={
        "out_channels": tuple(args.out_channels), "rgb_loss": not args.no_rgb_loss, "amp": not args.no_amp}))
    run_stage(train_sbd, args, values={"scenes": _scene_list(args), "settings": settings, "log_path": args.log,
                                       "plot_path": args.plot, "resume": not args.no_resume})
