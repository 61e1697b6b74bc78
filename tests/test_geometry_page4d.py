"""PAGE-4D's dynamic-mask variant: key layout, mask computation, where its bias acts, stream == batch, loading."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline import store
from pipeline.errors import UserError
from pipeline.geometry.time_cache import TimeMask
from pipeline.geometry.model import MASK_PREFIX, GeometryConfig, GeometryModel, config_from_state, random_model
from pipeline.geometry.runner import run_geometry
from pipeline.geometry.stage import build_model, compute_geometry

torch.set_num_threads(1)

# depth 24 so that the mask comes from layer 9 and biases layers 10-19, as at full size
DEPTH = 24
FIELDS = ("camera_token", "pose_enc", "depth", "depth_conf", "extrinsics")


def tiny(mask: bool, alpha: float = 64.0, seed: int = 0):
    cfg = GeometryConfig.small(embed_dim=32, depth=DEPTH, num_heads=2, img_size=56, dynamic_mask=mask, mask_alpha=alpha)
    return random_model(cfg, seed).eval()


def frames(n, h=42, w=56, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for _ in range(n)]


def run(model, imgs, **kw):
    return list(run_geometry(model, imgs, **kw))


def max_diff(a, b, field):
    if field == "tokens":
        return max((x.tokens[k] - y.tokens[k]).abs().max().item() for x, y in zip(a, b) for k in x.tokens)
    return max((getattr(x, field) - getattr(y, field)).abs().max().item() for x, y in zip(a, b))


def test_full_size_mask_head_has_page4d_keys_and_size():
    with torch.device("meta"):
        model = GeometryModel(GeometryConfig(dynamic_mask=True))
    head = {k[len(MASK_PREFIX):]: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(MASK_PREFIX)}
    assert head == {
        "head0.0.weight": (1024, 1, 3, 3), "head0.0.bias": (1024,),
        "head0.2.weight": (256, 1024, 1, 1), "head0.2.bias": (256,),
        "head0.4.weight": (1, 256, 1, 1), "head0.4.bias": (1,),
    }
    assert sum(int(np.prod(s)) for s in head.values()) == 272_897
    cfg = config_from_state(model.state_dict())
    assert cfg.dynamic_mask and cfg.mask_hidden == 256
    assert cfg.mask_from_layer == 9 and cfg.mask_layers == tuple(range(10, 20)) and cfg.mask_alpha == 64


def test_mask_is_the_sigmoid_of_standardised_features_minus_half():
    model = tiny(True)
    head = model.aggregator.spatial_mask_head
    g = torch.Generator().manual_seed(3)
    patches = torch.randn(2, 3 * 4, 32, generator=g) * 3 + 1
    with torch.no_grad():
        out = head(patches, 3, 4)
    assert out.shape == (2, 3, 4) and out.abs().max() < 0.5
    # with the conv stack's output zeroed, only the channel mean of the standardised features is left
    with torch.no_grad():
        head.head0[4].weight.zero_()
        head.head0[4].bias.zero_()
    x = patches.numpy().astype(np.float64).transpose(0, 2, 1)  # [N, C, h*w]
    z = (x - x.mean(-1, keepdims=True)) / np.maximum(x.std(-1, ddof=1, keepdims=True), 1e-6)
    expected = 1 / (1 + np.exp(-z.mean(1))) - 0.5
    with torch.no_grad():
        np.testing.assert_allclose(head(patches, 3, 4).reshape(2, -1).numpy(), expected, atol=1e-6)


def test_same_seed_gives_the_same_weights_with_and_without_the_mask_head():
    plain, masked = tiny(False).state_dict(), tiny(True).state_dict()
    assert set(masked) - set(plain) == {k for k in masked if k.startswith(MASK_PREFIX)}
    assert all(torch.equal(plain[k], masked[k]) for k in plain)


@pytest.mark.parametrize("mode", ["offline", "stream"])
def test_alpha_zero_is_plain_vggt_bit_for_bit(mode):
    # exact by construction: with alpha = 0 the bias branch is skipped, and the same model object
    # (same weights in the same memory, so the same kernels) runs with and without its mask head
    imgs = frames(3)
    model = tiny(True, alpha=0.0)
    masked = run(model, imgs, mode=mode, cache_window=None)
    head, model.aggregator.spatial_mask_head = model.aggregator.spatial_mask_head, None
    plain = run(model, imgs, mode=mode, cache_window=None)
    model.aggregator.spatial_mask_head = head
    for a, b in zip(plain, masked):
        assert all(torch.equal(a.tokens[k], b.tokens[k]) for k in a.tokens)
        assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)
        assert a.dynamic_mask is None and b.dynamic_mask.shape == (3, 4)
    # and the plain model is what a model built without the head computes, up to float noise
    other = run(tiny(False), imgs, mode=mode, cache_window=None)
    assert max_diff(plain, other, "tokens") < 1e-6 and max_diff(plain, other, "pose_enc") < 1e-5


def _global_calls(model, imgs):
    """Run offline; per global block, its input (args, kwargs) and output."""
    calls = {}
    hooks = [block.register_forward_hook(lambda m, args, kwargs, out, i=i: calls.__setitem__(i, (args, kwargs, out)),
                                         with_kwargs=True) for i, block in enumerate(model.aggregator.global_blocks)]
    try:
        with torch.no_grad():
            model.aggregator(torch.stack(imgs)[None], keep_layers=[], mask=TimeMask())
    finally:
        for h in hooks:
            h.remove()
    return calls


def test_alpha_changes_only_special_token_attention_in_layers_10_to_19():
    imgs = frames(3)
    P, S, special = 5 + 3 * 4, 3, 5
    is_special = (torch.arange(S * P) % P) < special
    model = tiny(True)
    calls = _global_calls(model, imgs)
    plain_calls = _global_calls(tiny(True, alpha=0.0), imgs)
    biased = []
    for i in range(DEPTH):
        (x,), kwargs, out = calls[i]
        time = kwargs["time"]
        unbiased = dataclasses.replace(time, key_mask=None, mask_alpha=0.0)
        with torch.no_grad():
            ref = model.aggregator.global_blocks[i](x, pos=kwargs["pos"], time=unbiased)
        diff = (out - ref).abs()[0]  # [S*P, C]: the same block input with and without the bias
        torch.testing.assert_close(out[0, ~is_special], ref[0, ~is_special], rtol=0, atol=1e-6)
        if diff[is_special].max() > 1e-4:
            biased.append(i)
        if i <= 9:  # nothing has changed yet: the inputs of the alpha > 0 and alpha = 0 models agree
            torch.testing.assert_close(x, plain_calls[i][0][0], rtol=0, atol=1e-6)
    assert biased == list(range(10, 20))
    # from layer 10 on, the changed special tokens reach the patch tokens through the frame blocks
    assert (calls[11][0][0] - plain_calls[11][0][0])[0, ~is_special].abs().max() > 1e-4


def test_stream_equals_batch_with_the_mask():
    model = tiny(True)
    imgs = frames(5)
    for window in (None, 2):
        stream = run(model, imgs, mode="stream", cache_window=window)
        batch = run(model, imgs, mode="batch", cache_window=window, chunk_size=None)
        chunked = run(model, imgs, mode="batch", cache_window=window, chunk_size=2)
        for other in (batch, chunked):
            for field in ("tokens", "dynamic_mask", *FIELDS):
                assert max_diff(stream, other, field) < 1e-4, (window, field)
    # the mask really acts in stream mode: the camera tokens move away from alpha = 0
    plain = run(tiny(True, alpha=0.0), imgs, mode="stream", cache_window=2)
    assert max_diff(stream, plain, "camera_token") > 1e-3
    assert max_diff(stream, plain, "dynamic_mask") < 1e-6  # the mask itself comes before any bias


def _save(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_mask_checkpoints_load_strictly_and_are_never_skipped_silently(tmp_path):
    model = tiny(True)
    ckpt = _save(model.state_dict(), tmp_path / "page4d_mask.safetensors")
    loaded, weights = build_model(checkpoint=ckpt, backbone="page4d", page4d_mask=True)
    assert loaded.config.dynamic_mask and loaded.config.mask_layers == model.config.mask_layers
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    a, b = run(model, frames(2), mode="offline"), run(loaded.eval(), frames(2), mode="offline")
    assert max_diff(a, b, "pose_enc") < 1e-5 and max_diff(a, b, "dynamic_mask") < 1e-6

    key = r"aggregator\.spatial_mask_head\.head0\.\d\.(weight|bias)"
    with pytest.raises(UserError, match=rf"{key}.*`geometry\.page4d_mask` is false"):
        build_model(checkpoint=ckpt, backbone="page4d", page4d_mask=False)
    with pytest.raises(UserError, match=rf"{key}.*geometry\.backbone: page4d"):
        build_model(checkpoint=ckpt)
    # the nomask route: ignored by name, then the model is plain VGGT
    nomask, weights = build_model(checkpoint=ckpt, backbone="page4d", ignore_keys=(MASK_PREFIX,))
    assert not nomask.config.dynamic_mask and weights["ignored_keys"][MASK_PREFIX] == 6
    missing = {k: v for k, v in model.state_dict().items() if k != f"{MASK_PREFIX}head0.4.bias"}
    with pytest.raises(UserError, match=r"missing 1 key\(s\): aggregator\.spatial_mask_head\.head0\.4\.bias"):
        build_model(checkpoint=_save(missing, tmp_path / "partial.safetensors"), backbone="page4d", page4d_mask=True)
    plain = _save(tiny(False).state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match=r"page4d_mask: true.*no aggregator\.spatial_mask_head\.head0"):
        build_model(checkpoint=plain, backbone="page4d", page4d_mask=True)
    with pytest.raises(UserError, match="needs `geometry.backbone: page4d`"):
        build_model(checkpoint=ckpt, backbone="vggt", page4d_mask=True)


def test_stage_writes_the_dynamic_mask(tmp_path):
    group = store.create_group(tmp_path / "frames.zarr")
    rgb = store.frame_array(group, "rgb", (3, 42, 56, 3), "uint8")
    data = np.random.default_rng(0).integers(0, 256, (3, 42, 56, 3), dtype=np.uint8)
    rgb[:] = data
    arch = {"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_embed": "conv"}
    compute_geometry(tmp_path / "frames.zarr", tmp_path / "out", random_init=2, architecture=arch, backbone="page4d",
                     page4d_mask=True, mode="offline")
    geometry = store.open_group(tmp_path / "out" / "geometry.zarr")
    mask = geometry["dynamic_mask"]
    assert mask.shape == (3, 3, 4) and str(mask.dtype) == "float32" and mask.chunks == (1, 3, 4)
    assert dict(geometry.attrs)["backbone"] == "page4d"
    model, _ = build_model(random_init=2, architecture=arch, backbone="page4d", page4d_mask=True)
    expected = run(model.eval(), list(data), mode="offline")
    np.testing.assert_allclose(mask[:], np.stack([o.dynamic_mask.numpy() for o in expected]), atol=1e-6)
    compute_geometry(tmp_path / "frames.zarr", tmp_path / "plain", random_init=2, architecture=arch)
    assert "dynamic_mask" not in store.open_group(tmp_path / "plain" / "geometry.zarr")


def test_merged_stream_keeps_each_cached_key_beside_its_mask():
    model = tiny(True)
    cache = model.aggregator.new_cache(2, merge_ratio=0.5)
    with torch.no_grad():
        for img in frames(4):
            model.aggregator(img[None, None], keep_layers=[], mask=TimeMask(causal=True, window=2), cache=cache)
    for i, layer in enumerate(cache.layers):
        assert layer.frame_tokens == [5 + 12 - 6] * 2 and layer.k.shape[2] == layer.log_size.shape[1] == 22
        assert (layer.key_mask is not None) == (i in model.config.mask_layers)
        if layer.key_mask is not None:
            assert layer.key_mask.shape == (1, 22) and bool((layer.key_mask.abs() < 0.5).all())
