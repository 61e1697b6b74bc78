"""The settings of the evaluation protocol.

The defaults reproduce 4DLangSplat's `eval/eval.py` (commit 96f1d92) choice for choice, so the
numbers compare with the published tables. Fixes of upstream mistakes (all polygons, rounded
polygon coordinates, consistent time-sensitive thresholds, raw-peak level choice) are opt-in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.levels import LANGUAGE_LEVELS as LEVELS  # noqa: F401  (also read from here)

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
LEVEL_STRATEGIES = ("smoothed_peak", "raw_peak")
THRESHOLD_RULES = ("raw_mean", "smoothed_mean")
DEPTH_ALIGNS = ("scale", "scale_shift", "median", "none")


@dataclass(frozen=True)
class Protocol:
    # ground truth
    frame_offset: int = -1  # HyperNeRF: int(file_name.split('_')[0]) - 1; Neu3D: 0
    all_polygons: bool = False  # upstream fills segmentation[0] only
    round_polygons: bool = False  # upstream truncates coordinates (int32 cast)
    # relevancy
    negatives: tuple[str, ...] = CANONICAL_NEGATIVES
    temperature: float = 10.0  # softmax(temperature * [pos, neg])
    remap_positive: bool = True  # upstream maps latents x*2-1 when a frame's minimum over levels is > 0
    # maps -> masks
    smooth_kernel: int = 29  # AvgPool2d(k, 1, k//2, count_include_pad=False), averaged with the raw map in place
    mask_thresh: float = 0.4  # on clip(2*normalised - 1, 0, 1), i.e. normalised > 0.7
    majority_kernel: int = 7  # AvgPool2d(k, 1, k//2, count_include_pad=False) of the mask > majority_thresh
    majority_thresh: float = 0.5
    level_strategy: str = "smoothed_peak"  # upstream `--chose_mask_strategy point` on the in-place smoothed map
    # time-sensitive
    temporal_weights: tuple[float, float, float] = (0.1, 0.8, 0.1)  # over the list of annotated frames
    video_threshold: str = "raw_mean"  # upstream: mean of the raw video similarities
    clip_threshold: str = "smoothed_mean"  # upstream: mean of the smoothed clip similarities
    # geometry
    depth_align: tuple[str, ...] = ("scale", "scale_shift")
    max_depth: float = 70.0  # valid GT pixels: 0 < gt < max_depth
    rpe_delta: int = 1

    def __post_init__(self) -> None:
        if self.level_strategy not in LEVEL_STRATEGIES:
            raise UserError(f"evaluate.level_strategy must be one of {LEVEL_STRATEGIES}, got {self.level_strategy!r}")
        for key in ("video_threshold", "clip_threshold"):
            if getattr(self, key) not in THRESHOLD_RULES:
                raise UserError(f"evaluate.{key} must be one of {THRESHOLD_RULES}, got {getattr(self, key)!r}")
        for a in self.depth_align:
            if a not in DEPTH_ALIGNS:
                raise UserError(f"evaluate.depth_align entries must be in {DEPTH_ALIGNS}, got {a!r}")
        for key in ("smooth_kernel", "majority_kernel"):
            k = getattr(self, key)
            if k < 1 or k % 2 == 0:
                raise UserError(f"evaluate.{key} must be an odd positive integer, got {k}")
        if len(self.temporal_weights) != 3:
            raise UserError("evaluate.temporal_weights must hold three weights (previous, this, next)")
        if not self.negatives:
            raise UserError("evaluate.negatives must name at least one canonical negative")

    def as_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}


def add_protocol_arguments(parser) -> None:
    """Command-line options for every Protocol field, defaults = upstream's."""
    d = Protocol()
    g = parser.add_argument_group("protocol (defaults reproduce 4DLangSplat eval.py)")
    g.add_argument("--frame-offset", type=int, default=d.frame_offset,
                   help="annotation frame = int(file_name.split('_')[0]) + offset (HyperNeRF -1, Neu3D 0)")
    g.add_argument("--all-polygons", action="store_true", help="fill every polygon of an annotation (fix; upstream: segmentation[0] only)")
    g.add_argument("--round-polygons", action="store_true", help="round polygon coordinates (fix; upstream truncates)")
    g.add_argument("--negatives", nargs="+", default=list(d.negatives), help="canonical negatives")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--no-remap-positive", action="store_true", help="never map all-positive latents with x*2-1")
    g.add_argument("--smooth-kernel", type=int, default=d.smooth_kernel)
    g.add_argument("--mask-thresh", type=float, default=d.mask_thresh)
    g.add_argument("--majority-kernel", type=int, default=d.majority_kernel)
    g.add_argument("--majority-thresh", type=float, default=d.majority_thresh)
    g.add_argument("--level-strategy", choices=LEVEL_STRATEGIES, default=d.level_strategy)
    g.add_argument("--temporal-weights", type=float, nargs=3, default=list(d.temporal_weights))
    g.add_argument("--video-threshold", choices=THRESHOLD_RULES, default=d.video_threshold)
    g.add_argument("--clip-threshold", choices=THRESHOLD_RULES, default=d.clip_threshold)
    g.add_argument("--depth-align", nargs="+", choices=DEPTH_ALIGNS, default=list(d.depth_align))
    g.add_argument("--max-depth", type=float, default=d.max_depth)
    g.add_argument("--rpe-delta", type=int, default=d.rpe_delta)


def protocol_from_args(args) -> Protocol:
    return Protocol(
        frame_offset=args.frame_offset,
        all_polygons=args.all_polygons,
        round_polygons=args.round_polygons,
        negatives=tuple(args.negatives),
        temperature=args.temperature,
        remap_positive=not args.no_remap_positive,
        smooth_kernel=args.smooth_kernel,
        mask_thresh=args.mask_thresh,
        majority_kernel=args.majority_kernel,
        majority_thresh=args.majority_thresh,
        level_strategy=args.level_strategy,
        temporal_weights=tuple(args.temporal_weights),
        video_threshold=args.video_threshold,
        clip_threshold=args.clip_threshold,
        depth_align=tuple(args.depth_align),
        max_depth=args.max_depth,
        rpe_delta=args.rpe_delta,
    )

