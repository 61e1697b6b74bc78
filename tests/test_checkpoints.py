import argparse
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.checkpoints import checkpoint_format, checkpoint_metadata, convert_checkpoint, load_state_dict
from pipeline.errors import UserError


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 2, generator=g), "bn.running_mean": torch.randn(2, generator=g),
            "bn.num_batches_tracked": torch.tensor(7)}


def _assert_same_tensors(loaded, state):
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k  # exact: conversion copies the bytes


def _upstream_training_dict(state):
    """4DLangVGGT train.py's checkpoint_epoch_N.pth: the head's weights beside the training state."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    opt = torch.optim.AdamW(params, lr=4e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    args = argparse.Namespace(batch_size=8, lr=4e-5, data_root="data/hypernerf", cos=True, joint_train=True,
                              mode="gt", feat_root="clip_features-all_dim3", lambda1=0.2, seed=42, wandb=False,
                              output_dir="unify_hyper_clip", min_lr=1e-6, epochs=100, resume=None)
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 17}
    return {"epoch": 100, "model_state_dict": dict(state), "optimizer_state_dict": opt.state_dict(),
            "scaler": scaler, "loss": 0.0421, "args": args}


def test_released_4dlangvggt_training_dict_converts_and_keeps_its_arguments(tmp_path):
    state = _state()
    src = tmp_path / "checkpoint_epoch_100.pth"
    torch.save(_upstream_training_dict(state), src)
    out = tmp_path / "sbd_released.safetensors"
    meta = convert_checkpoint(src, out)
    assert meta["source_key"] == "model_state_dict"
    _assert_same_tensors(load_state_dict(out, config_key="sbd.checkpoint", what="decoder"), state)
    stored = checkpoint_metadata(out)
    training = json.loads(stored["training"])
    assert training["epoch"] == 100 and training["loss"] == pytest.approx(0.0421)
    assert training["args"]["feat_root"] == "clip_features-all_dim3" and training["args"]["lambda1"] == 0.2
    assert training["args"]["resume"] is None and training["scaler"]["_growth_tracker"] == 17
    assert json.loads(stored["dropped_keys"]) == ["optimizer_state_dict"]  # its tensors are not weights


@pytest.mark.parametrize(
    "layout, wrap, key",
    [
        ("StreamVGGT checkpoints.pth / VGGT-1B model.pt", lambda s: s, ""),
        ("SAM 2 .pt", lambda s: {"model": s}, "model"),
        ("PAGE-4D checkpoint_nomask.pt", lambda s: {"model": s, "epoch": 9, "args": argparse.Namespace(lr=1e-5)}, "model"),
        ("4DLangSplat clip_best_ckpt.pth", lambda s: s, ""),
        ("DDP-wrapped training dict", lambda s: {"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in s.items()},
                                                 "loss": torch.tensor(0.25), "best": np.float64(0.2)}, "model_state_dict"),
    ],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_released_layouts_convert(tmp_path, layout, wrap, key, legacy):
    state = _state(1)
    src = tmp_path / "release.pth"
    torch.save(wrap(state), src, _use_new_zipfile_serialization=not legacy)
    assert checkpoint_format(src) == ("pickle" if legacy else "torch-zip")
    meta = convert_checkpoint(src, tmp_path / "out.safetensors")
    assert meta["source_key"] == key, layout
    _assert_same_tensors(load_state_dict(tmp_path / "out.safetensors", config_key="k", what="w"), state)
    training = json.loads(meta.get("training", "{}"))
    if layout.startswith("DDP"):
        assert training == {"best": pytest.approx(0.2), "epoch": 3, "loss": 0.25}
    elif layout.startswith("PAGE-4D"):
        assert training == {"args": {"lr": 1e-5}, "epoch": 9}
    else:
        assert training == {}


class _CreatesAFile:
    """A pickle that would run code when loaded: its __reduce__ opens (creates) a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["torch.save", "torch.save legacy", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_of_it_runs(tmp_path, how):
    marker = tmp_path / "created_by_the_pickle"
    payload = {"model": {"w": torch.zeros(1)}, "args": _CreatesAFile(marker)}
    src = tmp_path / "evil.pth"
    if how == "pickle.dump":
        with open(src, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    else:
        torch.save(payload, src, _use_new_zipfile_serialization=(how == "torch.save"))
    assert not marker.exists()
    with pytest.raises(UserError, match="nothing of it ran") as err:
        convert_checkpoint(src, tmp_path / "x.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "x.safetensors").exists()
    if how != "pickle.dump":  # torch's own formats: the refused type is named
        assert "open" in str(err.value)


def _safetensors_with_header_length(path, residue):
    """A valid safetensors file whose 8-byte header length is `residue` mod 256."""
    for pad in range(0, 600):
        save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path), metadata={"pad": "x" * pad})
        n = int.from_bytes(path.read_bytes()[:8], "little")
        if n % 256 == residue:
            return path
    raise AssertionError("no padding gave the wanted header length")


def test_safetensors_whose_header_length_starts_with_0x80_is_read_as_safetensors(tmp_path):
    path = _safetensors_with_header_length(tmp_path / "decoder.safetensors", 128)
    assert path.read_bytes()[0] == 0x80  # the byte a pickle starts with
    assert checkpoint_format(path) == "safetensors"
    loaded = load_state_dict(path, config_key="sbd.checkpoint", what="decoder")
    assert torch.equal(loaded["w"], torch.arange(6.0).reshape(2, 3))
    with pytest.raises(UserError, match="already a safetensors file"):
        convert_checkpoint(path, tmp_path / "again.safetensors")


def test_formats_are_told_apart_by_content(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "zip.bin")
    torch.save({"w": torch.zeros(1)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    np.savez(tmp_path / "arrays.npz", a=np.zeros(2))
    (tmp_path / "notes.txt").write_text("epoch: 100\nthis is not a checkpoint\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "noise").write_bytes(bytes(range(256)))
    # a header length that points past the end of the file is not safetensors
    (tmp_path / "short").write_bytes((1000).to_bytes(8, "little") + b"{}")
    got = {p: checkpoint_format(tmp_path / p) for p in ("zip.bin", "legacy.bin", "arrays.npz", "notes.txt", "empty", "noise", "short")}
    assert got == {"zip.bin": "torch-zip", "legacy.bin": "pickle", "arrays.npz": "zip", "notes.txt": "text",
                   "empty": "empty", "noise": "unknown", "short": "unknown"}


def test_a_text_file_is_called_a_text_file(tmp_path):
    src = tmp_path / "checkpoint_epoch_100.pth"
    src.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 341234567\n")
    with pytest.raises(UserError, match=r"a text file, not a checkpoint \(it starts with 'version https://git-lfs") as err:
        convert_checkpoint(src, tmp_path / "x.safetensors")
    assert "pickle" not in str(err.value).split(";")[0] and "Python objects" not in str(err.value)
    with pytest.raises(UserError, match=r"sbd\.checkpoint.*a text file"):
        load_state_dict(src, config_key="sbd.checkpoint", what="decoder")


def test_pickle_is_refused_outside_convert(tmp_path):
    src = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, src)
    with pytest.raises(UserError, match=r"convert-checkpoint --in \S+model\.pt --out \S+model\.safetensors"):
        load_state_dict(src, config_key="geometry.checkpoint", what="StreamVGGT")


def test_pickle_renamed_safetensors_is_told_to_convert_to_another_path(tmp_path):
    src = tmp_path / "streamvggt.safetensors"
    torch.save({"w": torch.zeros(1)}, src)
    with pytest.raises(UserError, match="convert-checkpoint") as err:
        load_state_dict(src, config_key="geometry.checkpoint", what="StreamVGGT")
    message = str(err.value)
    suggested = message.split("--out ")[1].split()[0]
    assert suggested != str(src) and suggested.endswith(".safetensors")
    convert_checkpoint(src, suggested)  # the suggestion works
    assert torch.equal(load_state_dict(suggested, config_key="k", what="w")["w"], torch.zeros(1))


def test_missing_checkpoint_names_key_and_path(tmp_path):
    with pytest.raises(UserError, match=r"geometry\.checkpoint") as err:
        load_state_dict(tmp_path / "nope.safetensors", config_key="geometry.checkpoint", what="StreamVGGT")
    assert "nope.safetensors" in str(err.value)


class Opaque:
    """A Python object that is neither tensor, plain data nor an argparse Namespace."""


def test_objects_beyond_the_allowed_types_are_refused_by_name(tmp_path):
    src = tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": Opaque()}, src)
    with pytest.raises(UserError, match=r"types .*Opaque"):
        convert_checkpoint(src, tmp_path / "x.safetensors")
