"""The released-weights path end to end: a decoder checkpoint laid out like 4DLangVGGT's
`checkpoint_epoch_100.pth` converts, renders, and evaluates, and the time-sensitive queries its
missing video head cannot answer are reported as not evaluated, with the reason."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch

import evaluate_synthetic as syn
from pipeline.__main__ import main as cli
from pipeline.checkpoints import checkpoint_metadata
from pipeline.evaluate.report import NOT_EVALUATED, report
from pipeline.evaluate.stage import evaluate
from pipeline.sbd.model import SemanticBridgingDecoder
from pipeline.store import open_group
from sbd_synthetic import TINY_ARCH, make_scene


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _released_like_checkpoint(path):
    """train.py's dict: the head's state dict (no video head) beside epoch, optimizer, scaler, loss, args."""
    torch.manual_seed(0)
    model = SemanticBridgingDecoder(dim_in=32, video_dim=0, **TINY_ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    layers = [torch.randn(1, 3, 5, 32) for _ in range(4)]
    model(layers, (42, 70))["lang"].square().mean().backward()
    opt.step()
    args = argparse.Namespace(batch_size=8, lr=4e-5, cos=True, joint_train=True, mode="gt",
                              feat_root="clip_features-all_dim3", output_dir="unify_hyper_clip", epochs=100)
    torch.save({"epoch": 100, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0},
                "loss": 0.0312, "args": args}, path)
    return model


def test_released_decoder_converts_renders_and_reports_time_sensitive_queries_as_not_evaluated(tmp_path, capsys):
    # tokens of the evaluation scene's 48x80 frames, 42x70 crop, layers 4/11/17/23 as the released decoder reads
    scene_dir = syn.write_scene(tmp_path)
    src = make_scene(tmp_path / "tokens", frames=syn.T, frame_hw=(syn.H, syn.W), crop=(3, 5, 42, 70),
                     layers=(4, 11, 17, 23), video_dim=None)
    pth = tmp_path / "checkpoint_epoch_100.pth"
    _released_like_checkpoint(pth)
    ckpt = tmp_path / "sbd_released.safetensors"

    assert cli(["convert-checkpoint", "--in", str(pth), "--out", str(ckpt)]) == 0
    training = json.loads(checkpoint_metadata(ckpt)["training"])
    assert training["epoch"] == 100 and training["args"]["feat_root"] == "clip_features-all_dim3"

    render = tmp_path / "render.zarr"
    assert cli(["render", "--tokens", str(src.tokens), "--checkpoint", str(ckpt), "--out", str(render),
                "--device", "cpu", "--quiet"]) == 0
    group = open_group(render)
    assert "video" not in group and group["lang_m"].shape == (syn.T, syn.H, syn.W, 3)
    assert dict(group.attrs)["output_placement"] == "resize"  # what upstream trained the released weights with

    capsys.readouterr()
    table = evaluate(render, scene_dir, tmp_path / "eval", autoencoder=None, clip_decoder=syn.clip_decoder().decode,
                     video_decoder=syn.video_decoder().decode, query_embeddings=syn.write_query_embeddings(tmp_path / "q.npz"),
                     dataset="synthetic", scene="released")
    log = capsys.readouterr().out
    agnostic = table[(table.task == "time_agnostic") & (table.aggregation == "query_mean")]
    assert set(agnostic.metric) == {"mIoU", "mAcc"} and np.isfinite(agnostic.value).all()
    assert not (table.task == "time_sensitive").any()
    coverage = table[table.task == "coverage"]
    summary = coverage[coverage.metric == NOT_EVALUATED].iloc[0]
    assert summary.value == 2 and "no `video` array" in summary.note and "time-sensitive head" in summary.note
    per_prompt = coverage[coverage.metric == "not_evaluated"].set_index("query")
    assert set(per_prompt.index) == {syn.ROLLING, syn.RESTING}
    assert (per_prompt.value == 5).all()  # the ball is annotated on 5 rendered frames
    assert (per_prompt.note == summary.note).all()
    assert "2 time-sensitive queries not evaluated" in log
    back = pd.read_parquet(tmp_path / "eval" / "metrics.parquet")
    assert (back[back.metric == NOT_EVALUATED].note == summary.note).all()

    report([tmp_path / "eval" / "metrics.parquet"], tmp_path / "reports")
    md = (tmp_path / "reports" / "metrics.md").read_text()
    ts = md.split("time-sensitive queries (Acc / vIoU")[1]
    assert "| released | n/a | n/a |" in ts and "| **mean** | n/a | n/a |" in ts
    assert f"n/a for released: not evaluated, {summary.note}" in ts
    assert "n/a" in (tmp_path / "reports" / "metrics.html").read_text()
