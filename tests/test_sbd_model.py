import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from pipeline.checkpoints import convert_checkpoint
from pipeline.sbd.model import (
    DecoderConfig,
    ResidualConvUnit,
    SemanticBridgingDecoder,
    infer_config,
    load_weights,
)
from pipeline.sbd.render import load_sbd
from conftest import shared_reference
from sbd_synthetic import TINY_ARCH



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(**kw):
    return SemanticBridgingDecoder(dim_in=32, **{**TINY_ARCH, **kw})


def test_upstream_size_has_exactly_the_released_keys_and_shapes():
    manifest = json.loads(shared_reference("sbd_state_dict_keys.json").read_text())
    with torch.device("meta"):
        model = SemanticBridgingDecoder(**manifest["constructor"])
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    expected = [(e["key"], e["shape"], e["dtype"]) for e in manifest["keys"]]
    assert got == expected  # same keys, same order, same shapes and dtypes
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    per_child = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    assert per_child == manifest["parameters_per_top_level_child"]


def test_released_checkpoint_loads_after_conversion(tmp_path):
    model = SemanticBridgingDecoder()  # upstream constructor: 2048, 14, 128, lang_dim 3, hidden 32
    gen = torch.Generator().manual_seed(0)
    state = {
        k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.full_like(v, 7))
        for k, v in model.state_dict().items()
    }
    del model
    pth = tmp_path / "checkpoint_epoch_100.pth"
    torch.save({"epoch": 100, "model_state_dict": state, "optimizer_state_dict": {}, "loss": 0.1}, pth)
    convert_checkpoint(pth, tmp_path / "sbd_released.safetensors")
    pth.unlink()

    loaded, meta = load_sbd(tmp_path / "sbd_released.safetensors")  # strict load, config read from shapes
    assert loaded.config == DecoderConfig()
    assert meta["layers"] == [4, 11, 17, 23]
    assert not loaded.has_video
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k

    # a model with the (unreleased) video head takes the released weights for everything else
    with_video = SemanticBridgingDecoder(video_dim=6, video_hidden_dim=8)
    load_weights(with_video, state, allow_missing_video=True)
    assert torch.equal(with_video.state_dict()["lang_decoder_large.final_conv.weight"], state["lang_decoder_large.final_conv.weight"])
    with pytest.raises(RuntimeError):
        with_video.load_state_dict(state, strict=True)


def test_video_head_keys_do_not_disturb_the_released_layout():
    plain, video = _tiny(), _tiny(video_dim=6)
    plain_keys = list(plain.state_dict())
    video_state = video.state_dict()
    assert list(video_state)[: len(plain_keys)] == plain_keys  # released keys first, same order
    extra = [k for k in video_state if k not in plain_keys]
    assert extra and all(k.startswith(("video_encoder.", "video_decoder.")) for k in extra)
    plain.load_state_dict({k: video_state[k] for k in plain_keys}, strict=True)
    assert infer_config(video_state, patch_size=14) == video.config
    inferred = infer_config(plain.state_dict(), patch_size=14)
    assert inferred.video_dim == 0
    assert dataclasses.replace(inferred, video_hidden_dim=plain.config.video_hidden_dim) == plain.config


def test_residual_unit_skip_carries_relu_of_input_and_leaves_input_alone():
    torch.manual_seed(0)
    unit = ResidualConvUnit(4)
    x = torch.randn(1, 4, 5, 6)
    before = x.clone()
    y = unit(x)
    assert torch.equal(x, before)
    with_relu_skip = unit.conv2(F.relu(unit.conv1(F.relu(x)))) + F.relu(x)
    plain_skip = unit.conv2(F.relu(unit.conv1(F.relu(x)))) + x
    assert torch.allclose(y, with_relu_skip)
    assert not torch.allclose(y, plain_skip)


def test_output_size_is_explicit_and_resizes_like_upstream():
    torch.manual_seed(0)
    model = _tiny(video_dim=6).eval()
    layers = [torch.randn(2, 3, 4, 32) for _ in range(4)]
    with torch.no_grad():
        native = model(layers, (42, 56))  # 3x4 patches of 14 px: no resize
        other = model(layers, (50, 61))
    assert native["lang"].shape == (2, 3, 3, 42, 56)
    assert other["lang"].shape == (2, 3, 3, 50, 61)
    assert other["rgb"].shape == (2, 3, 50, 61) and other["video"].shape == (2, 6, 50, 61)
    assert 0.0 <= float(other["rgb"].min()) and float(other["rgb"].max()) <= 1.0
    expected = F.interpolate(native["lang"].reshape(2, 9, 42, 56), size=(50, 61), mode="bilinear", align_corners=False)
    assert torch.allclose(other["lang"].reshape(2, 9, 50, 61), expected, atol=1e-6)
    # frames are independent in eval mode: one frame alone gives the same output
    with torch.no_grad():
        single = model([x[1:] for x in layers], (42, 56))
    assert torch.allclose(single["lang"][0], native["lang"][1], atol=1e-5)
