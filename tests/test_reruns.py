"""Rerun policy on the real snakemake: only what a change touches runs again, nothing missing or
stale is ever reported finished, and a failure's cause ends the console output."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil  # a dependency of snakemake
import pytest
import torch
import zarr
from safetensors.torch import load_file

from conftest import (REPO, copy_workflow, planned_jobs, small_config, snakemake, snakemake_command, truncated_video,
                      workflow_env, write_config)  # fmt: skip
from pipeline.code_digest import stage_digest
from pipeline.store import TMP_MARK, file_sha256, read_provenance

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


# a test's edit of the geometry stage's code: other random weights, hence other tokens
GEOMETRY_EDIT = """

_seeded_model = random_model


def random_model(config, seed):  # edited by tests/test_reruns.py
    return _seeded_model(config, seed + 1)
"""


def test_stage_code_change_reruns_that_stage_and_dependants_and_never_resumes_stale_weights(finished):
    weights = finished / "results/demo/one/sbd.safetensors"
    before = load_file(str(weights))
    tokens_before = read_provenance(finished / "results/demo/one/tokens.zarr")
    assert tokens_before["code"] == stage_digest("geometry")  # provenance records the digest the rule passes
    assert any((finished / "results/demo/one/sbd_checkpoints").glob("epoch_0004.*"))  # a stale resume point
    shutil.copytree(REPO / "pipeline", finished / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    unchanged = snakemake(finished, "-n", "--configfile", "small.yaml", code=finished)
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr  # a verbatim copy is the same code
    stage = finished / "pipeline/geometry/stage.py"
    stage.write_text(stage.read_text() + GEOMETRY_EDIT)
    jobs = planned_jobs(snakemake(finished, "-n", "--configfile", "small.yaml", code=finished))
    assert jobs == {**{rule: {"one", "two"} for rule in ("geometry", "train", "render", "evaluate")}, "report": {"-"}}

    snakemake(finished, "results/demo/one/sbd.safetensors", "--configfile", "small.yaml", code=finished)
    tokens = read_provenance(finished / "results/demo/one/tokens.zarr")
    assert tokens["code"] != tokens_before["code"] and tokens["digest"] != tokens_before["digest"]
    log = (finished / "logs/train/demo/one.log").read_text()
    assert "resuming from" not in log and "starting fresh" in log, log
    assert read_provenance(weights)["resumed_from"] is None
    epochs = pd.read_parquet(finished / "results/demo/one/train_log.parquet")["epoch"]
    assert sorted(set(epochs)) == [0, 1, 2, 3]  # trained from epoch 0, all four epochs
    after = load_file(str(weights))
    assert any(not torch.equal(after[key], before[key]) for key in before)  # trained on the new tokens


def test_undigestable_stage_code_stops_the_workflow_at_start_up(finished):
    shutil.copytree(REPO / "pipeline", finished / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    broken = finished / "pipeline/evaluate/report.py"
    broken.write_text(broken.read_text() + "\ndef oops(:\n")
    proc = snakemake(finished, "-n", "--configfile", "small.yaml", check=False, code=finished)
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.startswith("workflow error: cannot read the code of pipeline.evaluate.report") and "report.py" in last, last


def _job_process(snakemake_proc: subprocess.Popen, stage: str) -> psutil.Process | None:
    """The running `python -m pipeline <stage>` process of a snakemake run, if there is one."""
    for child in psutil.Process(snakemake_proc.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "-m" in cmd and cmd[cmd.index("-m") + 1 : cmd.index("-m") + 3] == ["pipeline", stage]:
            return child
    return None


def test_killed_job_after_a_config_change_is_rebuilt_with_the_new_setting(finished):
    """kill -9 of the training job after `sbd.lr` changed: its outputs are gone, its dependants are
    the old learning rate's; the rerun must rebuild them all, never report them finished."""
    cfg = small_config()
    cfg["sbd"]["lr"] = 0.01
    write_config(finished, cfg, "changed.yaml")
    scene = finished / "results/demo/one"
    checkpoints = scene / "sbd_checkpoints"
    run = subprocess.Popen(snakemake_command("scene_one", "--configfile", "changed.yaml"), cwd=finished,
                           env=workflow_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 900
        while time.time() < deadline and not any(checkpoints.glob("epoch_0001.safetensors")):
            assert run.poll() is None, "the run ended before its training could be killed"
            time.sleep(0.1)
        job = _job_process(run, "train")
        assert job is not None, "no training job to kill"
        job.kill()  # the job only, as a crash or the OOM killer would; snakemake sees it fail
        assert run.wait(timeout=300) != 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert not (scene / "sbd.safetensors").exists() and (scene / "render.zarr").exists()  # looks finished
    snakemake(finished, "--unlock", "--configfile", "changed.yaml")
    rerun = snakemake(finished, "scene_one", "--configfile", "changed.yaml", "--rerun-incomplete")
    assert "Nothing to be done" not in rerun.stdout + rerun.stderr
    decoder = read_provenance(scene / "sbd.safetensors")
    assert decoder["params"]["lr"] == 0.01
    assert "epoch_000" in str(decoder["resumed_from"])  # same recipe: the killed run's checkpoint is resumed
    render = read_provenance(scene / "render.zarr")
    assert render["checkpoints"]["sbd"]["sha256"] == file_sha256(scene / "sbd.safetensors")
    metrics = read_provenance(scene / "eval/metrics.parquet")
    assert metrics["inputs"]["render"]["digest"] == render["digest"]
    assert not list(scene.glob(f"*{TMP_MARK}*")) and not list(checkpoints.glob(f"*{TMP_MARK}*"))


def test_failed_job_shows_its_cause_last_and_is_never_reported_done(finished):
    """A config change that makes a job fail: its log ends the console; a second run fails again
    (it used to say "Nothing to be done"); the fixed config rebuilds what the failure removed."""
    cfg = small_config()
    cfg["autoencoder"]["clip"]["device"] = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    write_config(finished, cfg, "broken.yaml")
    for attempt in range(2):
        proc = snakemake(finished, "scene_one", "--workflow-profile", "workflow/profiles/local", "--configfile", "broken.yaml",
                         check=False)  # fmt: skip
        assert proc.returncode != 0, f"run {attempt + 1} with the broken config succeeded"
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        assert any(line.startswith("error: device 'cuda") for line in tail), tail
    assert not (finished / "results/demo/one/clip_autoencoder.safetensors").exists()
    jobs = planned_jobs(snakemake(finished, "-n", "scene_one", "--configfile", "small.yaml"))
    assert jobs == {rule: {"one"} for rule in ("autoencoder_train", "autoencode", "train", "render", "evaluate")}


def test_truncated_video_is_an_error_naming_the_frame_unless_allowed(tmp_path):
    workdir = copy_workflow(tmp_path / "run")
    truncated_video(workdir / "clip.mp4", 40)
    cfg = small_config()
    cfg["scenes"] = {"clip": {"dataset": "custom", "source": "video", "path": "clip.mp4"}}
    write_config(workdir, cfg, "video.yaml")
    target = "results/custom/clip/scene.json"
    proc = snakemake(workdir, target, "--workflow-profile", "workflow/profiles/local", "--configfile", "video.yaml",
                     check=False)  # fmt: skip
    assert proc.returncode != 0
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
    cause = [line for line in tail if line.startswith("error: video clip.mp4 breaks off at frame ")]
    assert cause and " of the 40 its container declares " in cause[0], tail
    broke_at = int(cause[0].split(" breaks off at frame ")[1].split()[0])
    assert 0 < broke_at < 40 and not (workdir / target).exists()

    cfg["scenes"]["clip"]["allow_truncated"] = True
    write_config(workdir, cfg, "video.yaml")
    snakemake(workdir, target, "--configfile", "video.yaml")
    record = json.loads((workdir / target).read_text())
    assert record["truncated"]["frames_read"] == broke_at and record["truncated"]["declared_frames"] == 40
    assert record["num_frames"] == broke_at
    assert zarr.open_group(str(workdir / "results/custom/clip/frames.zarr"), mode="r")["rgb"].shape[0] == broke_at
    assert f"breaks off at frame {broke_at}" in (workdir / "logs/frames/custom/clip.log").read_text()


def test_killed_training_leaves_nothing_finished_and_resumes(finished):
    weights = finished / "results/demo/one/sbd.safetensors"
    reference = load_file(str(weights))
    checkpoints = finished / "results/demo/one/sbd_checkpoints"
    shutil.rmtree(checkpoints)  # train from scratch, not from the finished run's last epoch
    cmd = snakemake_command("--configfile", "small.yaml", "--forcerun", "train", "results/demo/one/sbd.safetensors")
    proc = subprocess.Popen(cmd, cwd=finished, env=workflow_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
