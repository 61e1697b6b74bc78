"""Image metrics of novel views: PSNR and SSIM (skimage), LPIPS (VGG) with a local backbone only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import UserError

VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # lpips' vgg16 slices of torchvision's `features`


def psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    """PSNR in dB of two [H, W, 3] images in [0, 1] (skimage)."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(np.asarray(gt, np.float64), np.asarray(pred, np.float64), data_range=1.0))


def ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    """SSIM of two [H, W, 3] images in [0, 1] (skimage, channel axis last, 7x7 uniform window)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(gt, np.float64), np.asarray(pred, np.float64), channel_axis=-1,
                                       data_range=1.0))  # fmt: skip


def _backbone_state(path: Path) -> dict:
    """A torchvision VGG16 state dict from .safetensors or .pth (tensors only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def _lpips_keys(state: dict) -> dict:
    """torchvision `features.N.*` keys -> lpips' `net.sliceK.N.*` keys."""
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features":
            parts = parts[1:]
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        index = int(parts[0])
        for k, (lo, hi) in enumerate(VGG_SLICES):
            if lo <= index < hi:
                mapped[f"net.slice{k + 1}.{index}.{parts[1]}"] = value
    return mapped


class Lpips:
    """LPIPS (VGG) with a local backbone; `reason` says why it is unavailable (then `__call__` is never used)."""

    def __init__(self, backbone: str | Path | None, device: str = "cpu"):
        self.model, self.reason, self.device = None, None, device
        if not backbone:
            self.reason = "no local LPIPS backbone configured (nerf.lpips_backbone); LPIPS weights are never downloaded"
            return
        path = Path(backbone)
        if not path.is_file():
            raise UserError(f"nerf.lpips_backbone: {path} not found (expected torchvision VGG16 weights, .safetensors or .pth)")
        try:
            import lpips
        except ImportError:
            self.reason = "the lpips package is not installed"
            return
        state = _backbone_state(path)
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        mapped = _lpips_keys(state)
        expected = {k for k in model.state_dict() if k.startswith("net.")}
        if set(mapped) != expected:
            raise UserError(f"nerf.lpips_backbone: {path} is not a VGG16 `features` state dict "
                            f"(missing {sorted(expected - set(mapped))[:3]} ...)")  # fmt: skip
        model.load_state_dict(mapped, strict=False)
        self.model = model.eval().to(device)

    def __call__(self, gt: np.ndarray, pred: np.ndarray) -> float:
        import torch

        def tensor(x):
            return torch.from_numpy(np.asarray(x, np.float32)).permute(2, 0, 1)[None].to(self.device) * 2 - 1

        with torch.no_grad():
            return float(self.model(tensor(gt), tensor(pred)).item())
