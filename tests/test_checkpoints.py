import pytest
import torch

from pipeline.checkpoints import convert_checkpoint, load_state_dict
from pipeline.errors import UserError


def test_nested_training_checkpoint_round_trips(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "bn.num_batches_tracked": torch.tensor(7)}
    src = tmp_path / "checkpoint_epoch_100.pth"
    torch.save({"epoch": 100, "model_state_dict": {f"module.{k}": v for k, v in state.items()}, "loss": 0.5}, src)
    meta = convert_checkpoint(src, tmp_path / "out.safetensors")
    assert meta["source_key"] == "model_state_dict"
    loaded = load_state_dict(tmp_path / "out.safetensors", config_key="sbd.checkpoint", what="decoder")
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v)


def test_pickle_is_refused_outside_convert(tmp_path):
    src = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, src)
    with pytest.raises(UserError, match="convert-checkpoint"):
        load_state_dict(src, config_key="geometry.checkpoint", what="StreamVGGT")


def test_missing_checkpoint_names_key_and_path(tmp_path):
    with pytest.raises(UserError, match=r"geometry\.checkpoint.*|.*nope\.safetensors"):
        load_state_dict(tmp_path / "nope.safetensors", config_key="geometry.checkpoint", what="StreamVGGT")


class Opaque:
    """A pickled Python object, like upstream's argparse Namespace in training checkpoints."""


def test_objects_beyond_tensors_are_refused(tmp_path):
    src = tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": Opaque()}, src)
    with pytest.raises(UserError, match="weights_only"):
        convert_checkpoint(src, tmp_path / "x.safetensors")
