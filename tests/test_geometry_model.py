import json
import math

import pytest
import torch

from pipeline.geometry.heads import pose_encoding_to_cameras, quaternion_to_matrix
from pipeline.geometry.layers import RotaryEmbedding2D
from pipeline.geometry.model import GeometryConfig, GeometryModel, config_from_state, random_model
from pipeline.errors import UserError
from pipeline.geometry.time_cache import TimeMask
from pipeline.geometry.runner import run_geometry
from conftest import shared_reference

torch.set_num_threads(1)


def tiny(patch_embed="conv", depth=4, seed=0):
    cfg = GeometryConfig.small(embed_dim=64, depth=depth, num_heads=4, patch_embed=patch_embed,
                               patch_embed_depth=2 if patch_embed == "dinov2" else None, img_size=56)
    return random_model(cfg, seed).eval()


def frames(n, h=56, w=70, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for _ in range(n)]


def outputs(model, imgs, **kw):
    return list(run_geometry(model, imgs, **kw))


def max_diff(a, b, field):
    if field == "tokens":
        return max((x.tokens[k] - y.tokens[k]).abs().max().item() for x, y in zip(a, b) for k in x.tokens)
    return max((getattr(x, field) - getattr(y, field)).abs().max().item() for x, y in zip(a, b))


FIELDS = ("tokens", "camera_token", "pose_enc", "depth", "depth_conf", "extrinsics")


@pytest.mark.parametrize("patch_embed,depth", [("conv", 4), ("dinov2", 2)])
def test_stream_equals_batch_and_offline_differs(patch_embed, depth):
    model = tiny(patch_embed, depth)
    imgs = frames(5)
    stream = outputs(model, imgs, mode="stream", cache_window=None)
    batch = outputs(model, imgs, mode="batch", cache_window=None, chunk_size=None)
    offline = outputs(model, imgs, mode="offline")
    assert [o.index for o in stream] == list(range(5))
    for field in FIELDS:
        assert max_diff(stream, batch, field) < 1e-5, field
    assert max_diff(stream, offline, "tokens") > 1e-3
    assert max_diff(stream, offline, "pose_enc") > 1e-3
    # frame 0 sees only itself causally, but every frame offline
    assert (stream[0].tokens[depth - 1] - offline[0].tokens[depth - 1]).abs().max() > 1e-3


def test_cache_window_is_respected():
    model = tiny()
    imgs = frames(6)
    window = 2
    stream = outputs(model, imgs, mode="stream", cache_window=window)
    batch = outputs(model, imgs, mode="batch", cache_window=window, chunk_size=None)
    chunked = outputs(model, imgs, mode="batch", cache_window=window, chunk_size=4)
    unbounded = outputs(model, imgs, mode="stream", cache_window=None)
    for field in FIELDS:
        assert max_diff(stream, batch, field) < 1e-5, field
        assert max_diff(stream, chunked, field) < 1e-5, field
    # until the window is full the windowed stream is the unbounded one; after that it differs
    assert max_diff(stream[: window + 1], unbounded[: window + 1], "tokens") < 1e-6
    for t in range(window + 1, 6):
        assert max_diff(stream[t : t + 1], unbounded[t : t + 1], "tokens") > 1e-4, t


def test_stream_cache_stays_within_window():
    model = tiny()
    cache = model.aggregator.new_cache(window=3)
    with torch.no_grad():
        for img in frames(7):
            model.aggregator(img[None, None], keep_layers=[], cache=cache, mask=_causal(3))
    P = 5 + 4 * 5
    assert cache.frames_seen == 7
    for layer in cache.layers:
        assert layer.frames == 3
        assert layer.k.shape == (1, 4, 3 * P, 16) and layer.v.shape == layer.k.shape


def _causal(window):
    from pipeline.geometry.time_cache import TimeMask

    return TimeMask(causal=True, window=window)


def test_full_size_model_has_exactly_the_manifest_layout():
    # key, shape, dtype of the official StreamVGGT checkpoints.pth (= VGGT-1B model.pt)
    manifest = {k: tuple(shape) for k, shape, _ in json.loads(shared_reference("streamvggt_state_dict_keys.json").read_text())}
    with torch.device("meta"):
        model = GeometryModel(GeometryConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    not_built = {k for k in manifest if k not in ours}
    # the only manifest keys we do not build are the track head's (explicitly ignored on load)
    assert not_built and all(k.startswith("track_head.") for k in not_built)
    assert set(ours) == set(manifest) - not_built
    assert all(ours[k] == manifest[k] for k in ours)
    # 1,256,537,516 (VGGT-1B) minus the 65,941,396-parameter track head
    assert sum(v.numel() for v in model.state_dict().values()) == 1_256_537_516 - 65_941_396
    # the architecture is recovered from the shapes alone
    assert config_from_state(model.state_dict()) == GeometryConfig()


def test_rope_depends_only_on_relative_position():
    rope = RotaryEmbedding2D(100.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    p, r, shift = torch.tensor([[2, 3]]), torch.tensor([[5, 1]]), torch.tensor([[4, 7]])
    score = (rope(q, p) * rope(k, r)).sum()
    shifted = (rope(q, p + shift) * rope(k, r + shift)).sum()
    assert torch.allclose(score, shifted, atol=1e-5)
    assert not torch.allclose(score, (q * k).sum(), atol=1e-3)


def test_pose_encoding_to_cameras():
    identity = torch.tensor([1.0, 2.0, 3.0, 0, 0, 0, 1.0, 1.2, 1.5])
    extr, intr = pose_encoding_to_cameras(identity, (392, 518))
    assert torch.allclose(extr[:, :3], torch.eye(3)) and torch.allclose(extr[:, 3], torch.tensor([1.0, 2.0, 3.0]))
    assert math.isclose(intr[1, 1].item(), 196 / math.tan(0.6), rel_tol=1e-6)
    assert math.isclose(intr[0, 0].item(), 259 / math.tan(0.75), rel_tol=1e-6)
    assert intr[0, 2] == 259 and intr[1, 2] == 196 and intr[2, 2] == 1
    R = quaternion_to_matrix(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand(10, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(10), atol=1e-5)
    # 90 degrees about z (x, y, z, w)
    rz = quaternion_to_matrix(torch.tensor([0, 0, 2**-0.5, 2**-0.5]))
    assert torch.allclose(rz, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6)


def test_bfloat16_autocast_runs_close_to_float32():
    model = tiny()
    imgs = frames(3)
    full = outputs(model, imgs, mode="stream", cache_window=None)
    half = outputs(model, imgs, mode="stream", cache_window=None, dtype="bfloat16")
    ref = max(x.tokens[3].abs().max().item() for x in full)
    assert 0 < max_diff(full, half, "tokens") < 0.05 * ref
    assert all(o.pose_enc.dtype == torch.float32 and o.depth.dtype == torch.float32 for o in half)
    # the key/value cache is kept in the autocast precision
    cache = model.aggregator.new_cache(window=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.aggregator(imgs[0][None, None], keep_layers=[], cache=cache, mask=_causal(2))
    assert cache.layers[0].k.dtype == torch.bfloat16


def test_zero_merges_equal_the_plain_model():
    model = tiny()
    imgs = frames(5)
    plain = outputs(model, imgs, mode="stream", cache_window=3)
    # a ratio this small merges no token of a 20-patch frame but runs the whole merging path
    # (merge step, log-size bias on the logits)
    none_merged = outputs(model, imgs, mode="stream", cache_window=3, merge_ratio=0.01)
    for field in FIELDS:
        assert max_diff(plain, none_merged, field) < 1e-5, field
    merged = outputs(model, imgs, mode="stream", cache_window=3, merge_ratio=0.5)
    assert max_diff(plain, merged, "tokens") > 1e-4
    with pytest.raises(UserError, match="stream"):
        outputs(model, imgs, mode="batch", merge_ratio=0.5)
    with pytest.raises(UserError, match="merge ratio"):
        outputs(model, imgs, mode="stream", merge_ratio=0.9)


def test_merging_identical_tokens_changes_nothing_and_shrinks_the_cache():
    from pipeline.geometry.layers import attend_in_time
    from pipeline.geometry.time_cache import KVCache, TimeContext

    g = torch.Generator().manual_seed(0)
    special, patches, heads, dim = 1, 8, 2, 4
    per = special + patches
    k0, v0 = torch.randn(1, heads, per, dim, generator=g), torch.randn(1, heads, per, dim, generator=g)
    # destinations are patches 0 and 4 (tokens 1 and 5): make patches 1, 2 copies of 0 and patch 5 a copy of 4
    for src, dst in ((2, 1), (3, 1), (6, 5)):
        k0[:, :, src], v0[:, :, src] = k0[:, :, dst], v0[:, :, dst]
    q1, k1, v1 = (torch.randn(1, heads, per, dim, generator=g) for _ in range(3))
    causal = TimeMask(causal=True)
    results, caches = [], []
    for ratio in (0.0, 3 / 8):
        cache = KVCache(merge_ratio=ratio, special_tokens=special)
        attend_in_time(torch.zeros(1, heads, per, dim), k0, v0, k0, TimeContext(per, causal, cache))
        results.append(attend_in_time(q1, k1, v1, k1, TimeContext(per, causal, cache)))
        caches.append(cache)
    assert caches[0].frame_tokens == [per, per] and caches[1].frame_tokens == [per - 3, per - 3]
    assert caches[1].k.shape[2] == 2 * (per - 3)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-5)


def test_bfloat16_cache_under_float32_compute():
    model = tiny()
    imgs = frames(4)
    full = outputs(model, imgs, mode="stream", cache_window=2)
    half_cache = outputs(model, imgs, mode="stream", cache_window=2, cache_dtype="bfloat16")
    ref = max(x.tokens[3].abs().max().item() for x in full)
    assert 0 < max_diff(full, half_cache, "tokens") < 0.02 * ref
    assert max_diff(full[:1], half_cache[:1], "tokens") < 1e-6  # frame 0 has nothing cached to read
    cache = model.aggregator.new_cache(window=2, dtype=torch.bfloat16)
    fp32 = model.aggregator.new_cache(window=2)
    with torch.no_grad():
        for c in (cache, fp32):
            model.aggregator(imgs[0][None, None], keep_layers=[], cache=c, mask=_causal(2))
    assert cache.layers[0].k.dtype == torch.bfloat16 and cache.nbytes() * 2 == fp32.nbytes()


def test_point_maps_stream_equal_batch():
    model = tiny()
    imgs = frames(4)
    stream = outputs(model, imgs, mode="stream", cache_window=2, points=True)
    batch = outputs(model, imgs, mode="batch", cache_window=2, chunk_size=3, points=True)
    assert stream[0].world_points.shape == (56, 70, 3) and stream[0].world_points_conf.shape == (56, 70)
    assert stream[0].world_points.dtype == torch.float32 and bool((stream[0].world_points_conf > 1).all())
    assert max_diff(stream, batch, "world_points") < 1e-4 and max_diff(stream, batch, "world_points_conf") < 1e-4
    assert outputs(model, imgs[:1], mode="stream")[0].world_points is None
