import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline import store
from pipeline.checkpoints import convert_checkpoint
from pipeline.errors import UserError
from pipeline.geometry.model import GeometryConfig, random_model
from pipeline.geometry.runner import run_geometry
from pipeline.geometry.stage import build_model, compute_geometry

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model():
    cfg = GeometryConfig.small(embed_dim=32, depth=4, num_heads=2, patch_embed="dinov2", patch_embed_depth=1, img_size=56)
    return random_model(cfg, 3).eval()


def _frames(n=3):
    g = torch.Generator().manual_seed(5)
    return [torch.rand(3, 42, 56, generator=g) for _ in range(n)]


def _upstream_like_pickle(model, path):
    """A pickled plain state dict like StreamVGGT's checkpoints.pth, track head included."""
    state = dict(model.state_dict())
    state["track_head.tracker.query_ref_token"] = torch.zeros(1, 2, 8)
    state["track_head.feature_extractor.norm.weight"] = torch.ones(4)
    torch.save(state, path)


def test_tiny_checkpoint_round_trips_through_convert_and_loads_strictly(tmp_path, tiny_model):
    pth = tmp_path / "checkpoints.pth"
    _upstream_like_pickle(tiny_model, pth)
    out = tmp_path / "streamvggt.safetensors"
    convert_checkpoint(pth, out)
    loaded, weights = build_model(checkpoint=out)
    assert loaded.config == tiny_model.config
    assert weights["ignored_keys"] == {"track_head.": 2}
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k  # exact: the weights are copied bytes
    a = list(run_geometry(tiny_model, _frames(), mode="stream", cache_window=None))
    b = list(run_geometry(loaded.eval(), _frames(), mode="stream", cache_window=None))
    # the same weights in other memory may take other CPU kernels (alignment): equal up to float noise
    for x, y in zip(a, b):
        torch.testing.assert_close(y.pose_enc, x.pose_enc, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(y.depth, x.depth, rtol=1e-5, atol=1e-6)


def _save(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_mismatched_checkpoints_are_refused_by_name(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    extra = _save({**state, "aggregator.extra.weight": torch.zeros(2)}, tmp_path / "extra.safetensors")
    with pytest.raises(UserError, match=r"unexpected 1 key\(s\): aggregator\.extra\.weight.*|.*geometry\.checkpoint"):
        build_model(checkpoint=extra)
    missing = dict(state)
    del missing["camera_head.empty_pose_tokens"]
    with pytest.raises(UserError, match=r"missing 1 key\(s\): camera_head\.empty_pose_tokens"):
        build_model(checkpoint=_save(missing, tmp_path / "missing.safetensors"))
    wrong = {**state, "depth_head.norm.weight": torch.zeros(3)}
    with pytest.raises(UserError, match="shape mismatch"):
        build_model(checkpoint=_save(wrong, tmp_path / "wrong.safetensors"))


def test_page4d_mask_head_needs_the_mask_variant_or_an_explicit_ignore(tmp_path, tiny_model):
    state = {**tiny_model.state_dict(), "aggregator.spatial_mask_head.head0.0.weight": torch.zeros(4, 1, 3, 3)}
    path = _save(state, tmp_path / "page4d.safetensors")
    with pytest.raises(UserError, match=r"aggregator\.spatial_mask_head\.head0\.0\.weight.*geometry\.ignore_keys"):
        build_model(checkpoint=path)
    _, weights = build_model(checkpoint=path, backbone="page4d", ignore_keys=("aggregator.spatial_mask_head.",))
    assert weights["ignored_keys"]["aggregator.spatial_mask_head."] == 1


def _frames_zarr(path, n=2, h=42, w=56):
    group = store.create_group(path)
    rgb = store.frame_array(group, "rgb", (n, h, w, 3), "uint8")
    rgb[:] = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    group.attrs.update({"frame_names": [f"{i:06d}" for i in range(n)], "source_indices": list(range(n))})
    return path


def test_stage_refuses_pickles_and_missing_checkpoints_without_fallback(tmp_path, tiny_model):
    frames = _frames_zarr(tmp_path / "frames.zarr")
    pth = tmp_path / "checkpoints.pth"
    _upstream_like_pickle(tiny_model, pth)
    with pytest.raises(UserError, match="convert-checkpoint"):
        compute_geometry(frames, tmp_path / "out", checkpoint=pth)
    with pytest.raises(UserError, match=r"geometry\.checkpoint"):
        compute_geometry(frames, tmp_path / "out", checkpoint=tmp_path / "absent.safetensors")
    with pytest.raises(UserError, match=r"geometry\.checkpoint"):
        compute_geometry(frames, tmp_path / "out", checkpoint=None)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_stage_with_converted_checkpoint_records_its_sha(tmp_path, tiny_model):
    frames = _frames_zarr(tmp_path / "frames.zarr")
    pth = tmp_path / "checkpoints.pth"
    _upstream_like_pickle(tiny_model, pth)
    ckpt = tmp_path / "streamvggt.safetensors"
    convert_checkpoint(pth, ckpt)
    compute_geometry(frames, tmp_path / "out", checkpoint=ckpt)
    attrs = dict(store.open_group(tmp_path / "out" / "tokens.zarr").attrs)
    assert attrs["checkpoint_sha256"] == store.file_sha256(ckpt)
    assert "random_init" not in attrs
    assert attrs["provenance"]["weights"]["kind"] == "checkpoint"
    assert attrs["layers"] == list(tiny_model.config.dpt_layers)
    with pytest.raises(UserError, match="either a checkpoint"):
        compute_geometry(frames, tmp_path / "out2", checkpoint=ckpt, random_init=0,
                         architecture={"embed_dim": 32, "depth": 2, "num_heads": 2})


def test_other_key_layouts_are_refused_naming_file_key_and_keys(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    nested = _save({f"module.{k}": v for k, v in state.items()}, tmp_path / "nested.safetensors")
    with pytest.raises(UserError) as refused:
        build_model(checkpoint=nested)
    message = str(refused.value)
    assert str(nested) in message and "`geometry.checkpoint`" in message
    assert "missing aggregator.camera_token" in message and "every key starts with `module.`" in message
    odd = _save({**state, "aggregator.register_token": torch.zeros(5)}, tmp_path / "odd.safetensors")
    with pytest.raises(UserError, match=r"odd\.safetensors.*geometry\.checkpoint.*aggregator\.register_token \(5,\)"):
        build_model(checkpoint=odd)
