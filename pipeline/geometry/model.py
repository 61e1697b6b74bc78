"""The whole geometry network, its architecture settings, and strict checkpoint loading.

Parameter names and shapes match the official StreamVGGT `checkpoints.pth`, VGGT-1B `model.pt`
and PAGE-4D's checkpoints (after `python -m pipeline convert-checkpoint`), so they load key for
key. The track head is not built: its keys are the only ones a checkpoint may carry beyond the
model, and they are dropped by name (`IGNORED_PREFIXES`), never by a non-strict load. PAGE-4D's
mask head (`MASK_PREFIX`) is built when `dynamic_mask` is on and then loads strictly too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.geometry.aggregator import Aggregator, DynamicMaskHead
from pipeline.geometry.heads import CameraHead, DPTHead

# Checkpoint keys that are known and deliberately not loaded, with the reason.
IGNORED_PREFIXES = {"track_head.": "the track head is not built (point tracking is not used by the pipeline)"}
MASK_PREFIX = "aggregator.spatial_mask_head."  # PAGE-4D's dynamic-mask head


@dataclass(frozen=True)
class GeometryConfig:
    """Architecture settings; the defaults are VGGT-1B / StreamVGGT."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    patch_embed: str = "dinov2"  # or "conv" (tiny models)
    patch_embed_depth: int = 24
    patch_embed_heads: int = 16
    rope_freq: float = 100.0
    camera_trunk_depth: int = 4
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    # PAGE-4D: the mask head reads the frame-block output of `mask_from_layer`; its mask biases
    # the special-token queries of the global blocks in `mask_layers` with strength `mask_alpha`
    dynamic_mask: bool = False
    mask_hidden: int = 256
    mask_from_layer: int = 9
    mask_layers: tuple[int, ...] = tuple(range(10, 20))
    mask_alpha: float = 64.0

    @classmethod
    def small(cls, *, embed_dim: int, depth: int, num_heads: int, patch_embed: str = "conv",
              dpt_layers=None, patch_embed_depth: int | None = None, img_size: int = 518,
              dynamic_mask: bool = False, mask_alpha: float = 64.0) -> "GeometryConfig":
        """A scaled-down model for tests and the weight-free demo; head widths follow the width.

        Below 24 layers the PAGE-4D mask layers are spread like the DPT layers: the mask comes
        from the layer at 9/23 of the depth and biases the layers after it up to 19/23.
        """
        if dpt_layers is None:
            dpt_layers = tuple(round(i * (depth - 1) / 3) for i in range(4))
        return cls(
            img_size=img_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            patch_embed=patch_embed,
            patch_embed_depth=depth if patch_embed_depth is None else patch_embed_depth,
            patch_embed_heads=num_heads,
            dpt_features=max(8, embed_dim // 4),
            dpt_out_channels=(max(4, embed_dim // 4), max(4, embed_dim // 2), embed_dim, embed_dim),
            dpt_layers=tuple(int(i) for i in dpt_layers),
            dynamic_mask=dynamic_mask,
            mask_hidden=mask_hidden_for(embed_dim),
            mask_alpha=mask_alpha,
            **mask_layers_for(depth),
        )

    def validate(self) -> None:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        elif (self.embed_dim // self.num_heads) % 4:
            problems.append("the head dim must be a multiple of 4 for 2-D RoPE")
        if len(self.dpt_layers) != 4 or any(not 0 <= i < self.depth for i in self.dpt_layers):
            problems.append(f"dpt_layers {list(self.dpt_layers)} must be 4 layer indices below depth {self.depth}")
        if self.dynamic_mask:
            if not 0 <= self.mask_from_layer < self.depth - 1:
                problems.append(f"the dynamic mask needs a layer after mask_from_layer {self.mask_from_layer} "
                                f"(depth {self.depth}, at least 2)")
            elif not self.mask_layers or any(not self.mask_from_layer < i < self.depth for i in self.mask_layers):
                problems.append(f"mask_layers {list(self.mask_layers)} must lie after mask_from_layer "
                                f"{self.mask_from_layer} and below depth {self.depth}")
        if self.patch_embed not in ("dinov2", "conv"):
            problems.append(f"patch_embed {self.patch_embed!r} must be 'dinov2' or 'conv'")
        if problems:
            raise UserError("bad geometry architecture: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


class GeometryModel(nn.Module):
    """Aggregator + camera, depth and point heads (VGGT / StreamVGGT layout, no track head)."""

    def __init__(self, config: GeometryConfig = GeometryConfig()):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.aggregator = Aggregator(
            img_size=c.img_size,
            patch_size=c.patch_size,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            num_register_tokens=c.num_register_tokens,
            patch_embed=c.patch_embed,
            patch_embed_depth=c.patch_embed_depth,
            patch_embed_heads=c.patch_embed_heads,
            rope_freq=c.rope_freq,
            mask_from_layer=c.mask_from_layer,
            mask_layers=c.mask_layers,
            mask_alpha=c.mask_alpha,
        )
        dim = 2 * c.embed_dim
        self.camera_head = CameraHead(dim, trunk_depth=c.camera_trunk_depth, num_heads=c.num_heads,
                                      mlp_ratio=c.mlp_ratio, iterations=c.camera_iterations)
        dpt = dict(patch_size=c.patch_size, features=c.dpt_features, out_channels=c.dpt_out_channels, layers=c.dpt_layers)
        self.depth_head = DPTHead(dim, output_dim=2, activation="exp", **dpt)
        self.point_head = DPTHead(dim, output_dim=4, activation="inv_log", **dpt)
        if c.dynamic_mask:  # made last, so a seed gives the same other weights with and without it
            self.aggregator.spatial_mask_head = DynamicMaskHead(c.embed_dim, c.mask_hidden)

    @property
    def patch_start(self) -> int:
        return self.aggregator.patch_start_idx


def mask_hidden_for(embed_dim: int) -> int:
    """Hidden width of the mask head: PAGE-4D's 256 at full width, the token width below it."""
    return 256 if embed_dim >= 1024 else max(8, embed_dim)


def mask_layers_for(depth: int) -> dict:
    """PAGE-4D's mask source layer (9) and biased layers (10-19) at `depth` layers."""
    if depth == 24:
        return {"mask_from_layer": 9, "mask_layers": tuple(range(10, 20))}
    source = min(max(depth - 2, 0), (9 * (depth - 1)) // 23)
    last = max(source + 1, min(depth - 1, round(19 * (depth - 1) / 23)))
    return {"mask_from_layer": source, "mask_layers": tuple(range(source + 1, last + 1))}


def random_model(config: GeometryConfig, seed: int) -> GeometryModel:
    """A model with seeded random weights, identical on every machine (built on the CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GeometryModel(config)


def _summarise(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(model: GeometryModel, state: dict[str, torch.Tensor], *, source: str, config_key: str,
                 ignore_prefixes=()) -> dict[str, int]:
    """Load `state` strictly; only keys under IGNORED_PREFIXES (plus `ignore_prefixes`) may be left out.

    Returns {prefix: number of keys ignored}. Every other mismatch is a UserError naming the
    file, the config key and the offending keys.
    """
    prefixes = tuple(IGNORED_PREFIXES) + tuple(ignore_prefixes)
    ignored = {p: 0 for p in prefixes}
    kept = {}
    for k, v in state.items():
        hit = next((p for p in prefixes if k.startswith(p)), None)
        if hit is None:
            kept[k] = v
        else:
            ignored[hit] += 1
    expected = model.state_dict()
    missing = set(expected) - set(kept)
    unexpected = set(kept) - set(expected)
    wrong = [f"{k} {tuple(kept[k].shape)} != {tuple(expected[k].shape)}" for k in set(kept) & set(expected)
             if tuple(kept[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_summarise(missing)}")
        if unexpected:
            hint = ""
            if any(k.startswith(MASK_PREFIX) for k in unexpected):
                hint = (" [a PAGE-4D mask head: set `geometry.backbone: page4d` and `geometry.page4d_mask: true` "
                        f"to use it, or list {MASK_PREFIX} in `geometry.ignore_keys` to run without it]")
            parts.append(f"unexpected {len(unexpected)} key(s): {_summarise(unexpected)}{hint}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es): {_summarise(wrong, 4)}")
        raise UserError(
            f"checkpoint {source} (config key `{config_key}`) does not fit the geometry model "
            f"(expected the StreamVGGT/VGGT-1B layout for {model.config.embed_dim}-wide, depth {model.config.depth}): "
            + "; ".join(parts)
        )
    dtypes = {k: v.dtype for k, v in expected.items()}
    kept = {k: v.to(dtypes[k]) for k, v in kept.items()}
    model.load_state_dict(kept, strict=True, assign=True)
    return ignored


# the keys the architecture is read from, with their number of dimensions
LAYOUT_KEYS = {
    "aggregator.camera_token": 4, "aggregator.register_token": 4, "aggregator.frame_blocks.0.attn.q_norm.weight": 1,
    "aggregator.frame_blocks.0.mlp.fc1.weight": 2, "depth_head.scratch.layer1_rn.weight": 4,
    **{f"depth_head.projects.{i}.weight": 4 for i in range(4)},
}  # fmt: skip
PATCH_KEYS = ("aggregator.patch_embed.patch_embed.proj.weight", "aggregator.patch_embed.proj.weight")  # dinov2, conv


def _layout_error(state, source: str, config_key: str) -> str | None:
    """What keeps `state` from being read as StreamVGGT/VGGT: missing keys, odd shapes, what it has instead."""
    missing = [k for k in LAYOUT_KEYS if k not in state]
    if not any(k in state for k in PATCH_KEYS):
        missing.append(" or ".join(PATCH_KEYS))
    if not any(k.startswith("camera_head.trunk.") for k in state):
        missing.append("camera_head.trunk.*")
    odd = [f"{k} {tuple(state[k].shape)}" for k, ndim in LAYOUT_KEYS.items() if k in state and state[k].ndim != ndim]
    if not missing and not odd:
        return None
    head = f"checkpoint {source} (config key `{config_key}`) does not have the StreamVGGT/VGGT key layout: "
    if odd:
        return head + f"unexpected shape(s) {_summarise(odd, 4)}"
    heads = {k.split(".", 1)[0] for k in state}
    nested = f"; every key starts with `{heads.pop()}.` (weights nested one level too deep?)" if len(heads) == 1 else ""
    return head + f"missing {_summarise(missing, 4)}; it has {len(state)} key(s), e.g. {_summarise(list(state), 4)}{nested}"


def config_from_state(state: dict[str, torch.Tensor], dpt_layers=None, *, source: str = "(state dict)",
                      config_key: str = "geometry.checkpoint") -> GeometryConfig:
    """The architecture a checkpoint was trained with, read off its parameter shapes.

    The DPT layer indices leave no trace in the weights: (4, 11, 17, 23) for 24 blocks,
    else `dpt_layers` or the spread `GeometryConfig.small` uses.
    """
    problem = _layout_error(state, source, config_key)
    if problem:
        raise UserError(problem)
    try:
        embed = state["aggregator.camera_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("aggregator.frame_blocks."))
        head_dim = state["aggregator.frame_blocks.0.attn.q_norm.weight"].shape[0]
        n_reg = state["aggregator.register_token"].shape[2]
        dino = "aggregator.patch_embed.pos_embed" in state
        patch = state[
            "aggregator.patch_embed.patch_embed.proj.weight" if dino else "aggregator.patch_embed.proj.weight"
        ].shape[-1]
        kw: dict = dict(embed_dim=embed, depth=depth, num_heads=embed // head_dim, num_register_tokens=n_reg,
                        patch_size=patch, patch_embed="dinov2" if dino else "conv")
        if dino:
            grid = round((state["aggregator.patch_embed.pos_embed"].shape[1] - 1) ** 0.5)
            kw["img_size"] = grid * patch
            kw["patch_embed_depth"] = 1 + max(int(k.split(".")[3]) for k in state
                                              if k.startswith("aggregator.patch_embed.blocks."))
            kw["patch_embed_heads"] = kw["num_heads"]
        kw["camera_trunk_depth"] = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("camera_head.trunk."))
        kw["dpt_out_channels"] = tuple(state[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4))
        kw["dpt_features"] = state["depth_head.scratch.layer1_rn.weight"].shape[0]
        kw["mlp_ratio"] = state["aggregator.frame_blocks.0.mlp.fc1.weight"].shape[0] / embed
        kw.update(mask_layers_for(depth), mask_hidden=mask_hidden_for(embed))
        if f"{MASK_PREFIX}head0.2.weight" in state:
            kw.update(dynamic_mask=True, mask_hidden=state[f"{MASK_PREFIX}head0.2.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as exc:
        raise UserError(f"checkpoint {source} (config key `{config_key}`) does not have the StreamVGGT/VGGT key "
                        f"layout: a tensor has an unexpected shape or a key is missing ({exc.__class__.__name__}: {exc})") from None
    if dpt_layers is None:
        dpt_layers = (4, 11, 17, 23) if depth == 24 else tuple(round(i * (depth - 1) / 3) for i in range(4))
    return GeometryConfig(**kw, dpt_layers=tuple(int(i) for i in dpt_layers))
