"""The Semantic Bridging Decoder (4DLangVGGT's `LanguageHead_Multi`), plus an optional video head.

Parameter names follow the released checkpoint key for key
(`shared/reference/sbd_state_dict_keys.json`), so `checkpoint_epoch_100.pth`, once converted to
safetensors, loads strictly into `SemanticBridgingDecoder()` built with upstream arguments.
Numerics follow the released code where a checkpoint depends on them:

- the DPT residual conv units apply an in-place ReLU to their input, so the skip path carries
  `relu(x)`, not `x`;
- fusion and the final DPT resize use bilinear with `align_corners=True`; the UNet decoder's
  skip alignment and the output resize use `align_corners=False`;
- the output size is an explicit argument (upstream defaulted to 518x518 whatever the input).

The time-sensitive head (video latents, 6-d by default) was never released upstream. Here it is a
separate UNet encoder/decoder pair on the shared DPT features, registered after every released
module and present only when `video_dim > 0`, so the released layout is untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.levels import LANGUAGE_LEVELS as LEVELS  # noqa: F401  (also read from here)
from pipeline.nets.dpt import DPT, FusionBlock, ResidualConvUnit  # noqa: F401  (also read from here)
from pipeline.nets.dpt import resize as _resize

UPSTREAM_LAYERS = (4, 11, 17, 23)


@dataclass(frozen=True)
class DecoderConfig:
    """Constructor arguments; upstream's released model is `DecoderConfig()`."""

    dim_in: int = 2048
    patch_size: int = 14
    features: int = 128
    lang_dim: int = 3
    hidden_dim: int = 32
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    video_dim: int = 0
    video_hidden_dim: int = 64

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out_channels"] = list(self.out_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "DecoderConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "out_channels" in known:
            known["out_channels"] = tuple(int(c) for c in known["out_channels"])
        return cls(**known)


# ----------------------------------------------------------------------------- DPT (shared: pipeline.nets.dpt)
class DPTFeatureExtractor(DPT):
    """Four token layers -> one dense feature map at patch resolution x patch_size (feature-only DPT)."""

    def __init__(self, dim_in: int, patch_size: int, features: int, out_channels: Sequence[int]):
        super().__init__(dim_in, patch_size=patch_size, features=features, out_channels=out_channels, output_dim=None)


FeatureFusionBlock = FusionBlock


# ----------------------------------------------------------------------------- UNet
def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        h = hidden
        self.down1 = _double_conv(in_channels, h)
        self.pool1 = nn.Conv2d(h, h, 2, stride=2)
        self.down2 = _double_conv(h, 2 * h)
        self.pool2 = nn.Conv2d(2 * h, 2 * h, 2, stride=2)
        self.down3 = _double_conv(2 * h, 4 * h)
        self.pool3 = nn.Conv2d(4 * h, 4 * h, 2, stride=2)
        self.down4 = _double_conv(4 * h, 8 * h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x1 = self.down1(x)
        x2 = self.down2(self.pool1(x1))
        x3 = self.down3(self.pool2(x2))
        x4 = self.down4(self.pool3(x3))
        return x1, x2, x3, x4


class UNetDecoder(nn.Module):
    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        h = hidden
        self.up1 = nn.ConvTranspose2d(8 * h, 4 * h, 2, stride=2)
        self.conv1 = _double_conv(8 * h, 4 * h)
        self.up2 = nn.ConvTranspose2d(4 * h, 2 * h, 2, stride=2)
        self.conv2 = _double_conv(4 * h, 2 * h)
        self.up3 = nn.ConvTranspose2d(2 * h, h, 2, stride=2)
        self.conv3 = _double_conv(2 * h, h)
        self.final_conv = nn.Conv2d(h, out_channels, 3, padding=1)

    def forward(self, skips: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x1, x2, x3, x4 = skips
        x = self.conv1(torch.cat([_resize(self.up1(x4), x3.shape[-2:], align_corners=False), x3], dim=1))
        x = self.conv2(torch.cat([_resize(self.up2(x), x2.shape[-2:], align_corners=False), x2], dim=1))
        x = self.conv3(torch.cat([_resize(self.up3(x), x1.shape[-2:], align_corners=False), x1], dim=1))
        return self.final_conv(x)


# ----------------------------------------------------------------------------- decoder
class SemanticBridgingDecoder(nn.Module):
    """Geometry tokens -> per-pixel language latents (levels s/m/l), RGB, and optional video latents."""

    def __init__(
        self,
        dim_in: int = 2048,
        patch_size: int = 14,
        features: int = 128,
        lang_dim: int = 3,
        hidden_dim: int = 32,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        video_dim: int = 0,
        video_hidden_dim: int = 64,
    ):
        super().__init__()
        self.config = DecoderConfig(
            dim_in=dim_in,
            patch_size=patch_size,
            features=features,
            lang_dim=lang_dim,
            hidden_dim=hidden_dim,
            out_channels=tuple(int(c) for c in out_channels),
            video_dim=video_dim,
            video_hidden_dim=video_hidden_dim,
        )
        self.feature_extractor = DPTFeatureExtractor(dim_in, patch_size, features, out_channels)
        self.lang_encoder = UNetEncoder(features, hidden_dim)
        self.rgb_encoder = UNetEncoder(features, hidden_dim)
        self.lang_decoder_small = UNetDecoder(hidden_dim, lang_dim)
        self.lang_decoder_middle = UNetDecoder(hidden_dim, lang_dim)
        self.lang_decoder_large = UNetDecoder(hidden_dim, lang_dim)
        self.rgb_decoder = nn.Sequential(UNetDecoder(hidden_dim, 3), nn.Sigmoid())
        if video_dim > 0:
            self.video_encoder = UNetEncoder(features, video_hidden_dim)
            self.video_decoder = UNetDecoder(video_hidden_dim, video_dim)

    @classmethod
    def from_config(cls, config: DecoderConfig) -> "SemanticBridgingDecoder":
        return cls(**config.to_dict())

    @property
    def has_video(self) -> bool:
        return self.config.video_dim > 0

    def forward(self, layers: Sequence[torch.Tensor], out_size: Sequence[int]) -> dict[str, torch.Tensor]:
        """`layers`: four `[N, h, w, dim_in]` token grids; `out_size`: (H, W) of the outputs.

        Returns `lang` `[N, 3, lang_dim, H, W]` (levels s, m, l; raw, unnormalised), `rgb`
        `[N, 3, H, W]` in [0, 1], and `video` `[N, video_dim, H, W]` when the head exists.
        """
        if len(layers) != 4:
            raise ValueError(f"expected 4 token layers, got {len(layers)}")
        feats = self.feature_extractor(layers)
        lang_skips = self.lang_encoder(feats)
        lang = torch.stack(
            [self.lang_decoder_small(lang_skips), self.lang_decoder_middle(lang_skips), self.lang_decoder_large(lang_skips)],
            dim=1,
        )
        n, _, c, h, w = lang.shape
        lang = _resize(lang.reshape(n, 3 * c, h, w), out_size, align_corners=False).reshape(n, 3, c, *out_size)
        rgb = _resize(self.rgb_decoder(self.rgb_encoder(feats)), out_size, align_corners=False)
        out = {"lang": lang, "rgb": rgb}
        if self.has_video:
            out["video"] = _resize(self.video_decoder(self.video_encoder(feats)), out_size, align_corners=False)
        return out


VIDEO_PREFIXES = ("video_encoder.", "video_decoder.")


def infer_config(state: Mapping[str, torch.Tensor], *, patch_size: int = 14) -> DecoderConfig:
    """Architecture from a state dict's shapes (released checkpoints carry no metadata)."""
    try:
        video_dim = int(state["video_decoder.final_conv.weight"].shape[0]) if "video_decoder.final_conv.weight" in state else 0
        return DecoderConfig(
            dim_in=int(state["feature_extractor.norm.weight"].shape[0]),
            patch_size=patch_size,
            features=int(state["feature_extractor.scratch.layer1_rn.weight"].shape[0]),
            lang_dim=int(state["lang_decoder_small.final_conv.weight"].shape[0]),
            hidden_dim=int(state["lang_encoder.down1.0.weight"].shape[0]),
            out_channels=tuple(int(state[f"feature_extractor.projects.{j}.weight"].shape[0]) for j in range(4)),
            video_dim=video_dim,
            video_hidden_dim=int(state["video_encoder.down1.0.weight"].shape[0]) if video_dim else 64,
        )
    except KeyError as exc:
        raise KeyError(f"not a Semantic Bridging Decoder state dict: missing {exc.args[0]}") from None


def load_weights(model: SemanticBridgingDecoder, state: Mapping[str, torch.Tensor], *, allow_missing_video: bool = False) -> None:
    """Strict load; optionally let a video-head model take a released (video-less) state dict."""
    if allow_missing_video and model.has_video and not any(k.startswith(VIDEO_PREFIXES) for k in state):
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
        bad = [k for k in missing if not k.startswith(VIDEO_PREFIXES)]
        if bad or unexpected:
            raise RuntimeError(f"state dict mismatch: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")
        return
    model.load_state_dict(dict(state), strict=True)
