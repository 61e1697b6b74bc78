"""Prediction heads on the aggregator's tokens: camera (pose encoding) and DPT dense heads
(the DPT itself is `pipeline.nets.dpt`, shared with the decoder).

The camera head refines a 9-d pose encoding (translation, quaternion xyzw, field of view)
over a few iterations; its trunk attends across frames, so it takes the same time mask and
caches as the aggregator. Each refinement iteration attends to the same iteration of
earlier frames, so streaming equals the causal batch pass (upstream's streaming code lets
iterations see each other's cache entries; that quirk is deliberately not reproduced).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.geometry.layers import Block, Mlp
from pipeline.geometry.time_cache import KVCache, TimeContext, TimeMask
from pipeline.nets.dpt import DPT, FusionBlock, ResidualConvUnit, uv_embedding  # noqa: F401  (also read from here)

POSE_DIM = 9


class CameraHead(nn.Module):
    def __init__(self, dim_in: int = 2048, *, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01, iterations: int = 4):
        super().__init__()
        self.iterations = iterations
        self.trunk = nn.Sequential(
            *[Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values) for _ in range(trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_DIM)

    def new_cache(self, window: int | None) -> list[list[KVCache]]:
        return [[KVCache(window=window) for _ in self.trunk] for _ in range(self.iterations)]

    def forward(self, camera_tokens: torch.Tensor, *, mask: TimeMask = TimeMask(), cache=None) -> list[torch.Tensor]:
        """camera_tokens [B, S, 2C] (token 0 of the last layer) -> pose encodings [B, S, 9] per iteration."""
        B, S, _ = camera_tokens.shape
        tokens = self.token_norm(camera_tokens)
        pose = None
        outputs = []
        for it in range(self.iterations):
            prev = self.empty_pose_tokens.expand(B, S, -1) if pose is None else pose.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(prev)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            for b, block in enumerate(self.trunk):
                x = block(x, time=TimeContext(1, mask, cache[it][b] if cache is not None else None))
            delta = self.pose_branch(self.trunk_norm(x))
            pose = delta if pose is None else pose + delta
            outputs.append(torch.cat([pose[..., :7], F.relu(pose[..., 7:])], dim=-1))
        return outputs


# ----------------------------------------------------------------------------- pose encoding
def quaternion_to_matrix(quat: torch.Tensor) -> torch.Tensor:
    """Scalar-last quaternions (x, y, z, w) [..., 4] -> rotation matrices [..., 3, 3]."""
    x, y, z, w = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1)
    m = torch.stack(
        [
            1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
            s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
            s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(*quat.shape[:-1], 3, 3)


def pose_encoding_to_cameras(pose_enc: torch.Tensor, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 9] -> extrinsics [..., 3, 4] (OpenCV camera-from-world) and intrinsics [..., 3, 3]."""
    H, W = image_hw
    t, quat, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    extrinsics = torch.cat([quaternion_to_matrix(quat), t[..., None]], dim=-1)
    fy = (H / 2.0) / torch.tan(fov_h / 2.0)
    fx = (W / 2.0) / torch.tan(fov_w / 2.0)
    K = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    K[..., 0, 0], K[..., 1, 1] = fx, fy
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = W / 2.0, H / 2.0, 1.0
    return extrinsics, K


# ----------------------------------------------------------------------------- DPT
class DPTHead(DPT):
    """The depth and point heads: the shared DPT with its prediction convs, plus their activations."""

    def __init__(self, dim_in: int = 2048, *, patch_size: int = 14, output_dim: int = 2, activation: str = "exp",
                 conf_activation: str = "expp1", features: int = 256, out_channels=(256, 512, 1024, 1024),
                 layers=(4, 11, 17, 23)):
        super().__init__(dim_in, patch_size=patch_size, features=features, out_channels=out_channels, output_dim=output_dim)
        self.activation = activation
        self.conf_activation = conf_activation
        self.layers = tuple(layers)

    def _frames(self, tokens: dict[int, torch.Tensor], patch_start: int, H: int, W: int):
        rows, cols = H // self.patch_size, W // self.patch_size
        grids = [tokens[layer][:, patch_start:].reshape(-1, rows, cols, tokens[layer].shape[-1]) for layer in self.layers]
        out = DPT.forward(self, grids, image_hw=(H, W)).permute(0, 2, 3, 1)  # [N, H, W, output_dim]
        values, conf = out[..., :-1], out[..., -1]
        if self.activation == "exp":
            values = values.exp()
        elif self.activation == "inv_log":
            values = torch.sign(values) * torch.expm1(values.abs())
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.conf_activation != "expp1":
            raise ValueError(f"unknown confidence activation {self.conf_activation!r}")
        return values, 1 + conf.exp()

    def forward(self, tokens: dict[int, torch.Tensor], image_hw: tuple[int, int], patch_start: int, chunk: int = 8):
        """tokens {layer: [B, S, P, C]} -> values [B, S, H, W, output_dim - 1], confidence [B, S, H, W]."""
        B, S = next(iter(tokens.values())).shape[:2]
        values, confs = [], []
        for a in range(0, S, chunk):
            part = {k: tokens[k][:, a : a + chunk].reshape(-1, *tokens[k].shape[2:]) for k in self.layers}
            v, c = self._frames(part, patch_start, *image_hw)
            values.append(v.reshape(B, -1, *v.shape[1:]))
            confs.append(c.reshape(B, -1, *c.shape[1:]))
        return torch.cat(values, dim=1), torch.cat(confs, dim=1)
