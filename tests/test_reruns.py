"""Rerun policy on the real snakemake: only what a change touches runs again."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import planned_jobs, small_config, snakemake, workflow_env, write_config

LANGUAGE_CHAIN = {"clip_features", "video_features", "autoencoder_train", "autoencode", "train", "render", "evaluate"}


@pytest.fixture
def finished(small_workflow, tmp_path) -> Path:
    """A private copy of the finished two-scene run (outputs and Snakemake's metadata)."""
    return Path(shutil.copytree(small_workflow, tmp_path / "run", symlinks=True))


def _dry_run_with(workdir: Path, change) -> dict[str, set[str]]:
    cfg = small_config()
    change(cfg)
    write_config(workdir, cfg, "changed.yaml")
    return planned_jobs(snakemake(workdir, "-n", "--configfile", "changed.yaml"))


def test_nothing_changed_nothing_runs(finished):
    proc = snakemake(finished, "--configfile", "small.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_training_option_reruns_training_rendering_and_evaluation_only(finished):
    jobs = _dry_run_with(finished, lambda cfg: cfg["sbd"].update(lambda_cos=0.02))
    assert set(jobs) == {"train", "render", "evaluate", "report"}
    assert jobs["train"] == {"one", "two"}


def test_segmentation_option_reruns_segmentation_and_what_depends_on_it(finished):
    jobs = _dry_run_with(finished, lambda cfg: cfg["segment"].update(points_per_side=16))
    assert set(jobs) == {"segment", *LANGUAGE_CHAIN, "report"}
    assert "geometry" not in jobs and "frames" not in jobs


def test_one_scenes_input_reruns_that_scene_only(finished):
    jobs = _dry_run_with(finished, lambda cfg: cfg["scenes"]["two"].update(seed=7))
    assert jobs.pop("report") == {"-"}
    assert {"demo_scene", "frames", "segment", "geometry", "train", "evaluate"} <= set(jobs)
    assert all(scenes == {"two"} for scenes in jobs.values()), jobs


def test_stage_code_change_reruns_that_stage_and_dependants(finished):
    source = finished / "rules" / "common.smk"
    assert "def stage_code" in source.read_text()
    # the digest covers the stage's modules; a different digest means a different param
    jobs = planned_jobs(snakemake(finished, "-n", "--configfile", "small.yaml", "--forcerun", "render"))
    assert set(jobs) == {"render", "evaluate", "report"}


def test_killed_training_leaves_nothing_finished_and_resumes(finished):
    weights = finished / "results/demo/one/sbd.safetensors"
    reference = load_file(str(weights))
    checkpoints = finished / "results/demo/one/sbd_checkpoints"
    shutil.rmtree(checkpoints)  # train from scratch, not from the finished run's last epoch
    env = workflow_env()
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--resources", "gpu=0",
           "--configfile", "small.yaml", "--forcerun", "train", "results/demo/one/sbd.safetensors"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=finished, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    try:
        # wait for the first epoch checkpoint of the new run, then kill everything mid-training
        while time.time() < deadline and not (checkpoints.is_dir() and any(checkpoints.glob("epoch_0001*"))):
            time.sleep(0.1)
            assert proc.poll() is None, "the run ended before it could be killed"
        assert any(checkpoints.glob("epoch_0001*")), "training never wrote a checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not weights.exists(), "a killed training left its output in place"
    snakemake(finished, "--unlock", "--configfile", "small.yaml")
    # the same command again (the killed job's target) finishes the job
    rerun = snakemake(finished, "--configfile", "small.yaml", "--rerun-incomplete", "results/demo/one/sbd.safetensors")
    assert "rule train:" in rerun.stdout + rerun.stderr
    resumed = load_file(str(weights))
    assert resumed.keys() == reference.keys()
    for key in reference:  # resumed from the checkpoint, the weights equal the uninterrupted run's (up to float noise)
        assert torch.allclose(resumed[key].double(), reference[key].double(), rtol=1e-5, atol=1e-6), key
    assert "resuming from" in (finished / "logs/train/demo/one.log").read_text()
