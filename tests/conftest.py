"""Shared fixtures: the demo scene, small media written by the tests, and real snakemake runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "workflow", "envs")
SHARED_REFERENCE = REPO.parent / "shared" / "reference"  # beside the checkout, as CI lays it out


def shared_reference(*parts: str) -> Path:
    """A file of ../shared/reference; a missing one fails the test (never skips it)."""
    path = SHARED_REFERENCE.joinpath(*parts)
    assert path.exists(), f"shared reference data missing: {path} (tests read ../shared/reference beside the checkout)"
    return path


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test, restored after (small models: threads only add noise)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory) -> Path:
    from pipeline.demo_scene import make_demo_scene

    return make_demo_scene(tmp_path_factory.mktemp("demo") / "demo", seed=0, num_frames=24)


def write_video(path: Path, frames: np.ndarray, fps: int = 10, *, faststart: bool = False) -> Path:
    """Encode RGB frames (T,H,W,3 uint8) as an mp4 with PyAV (`faststart`: its index at the front)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_square_frames(count: int = 12, height: int = 64, width: int = 96) -> np.ndarray:
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[..., 2] = 60
    for t in range(count):
        x = 4 + 5 * t
        frames[t, 20:40, x : x + 16] = (230, 40, 40)
    return frames


def truncated_video(path: Path, count: int = 40) -> Path:
    """A faststart mp4 (index at the front) of `count` noisy moving-square frames, cut to half its
    bytes: it declares `count` frames and decodes fewer. Noise keeps the frames' sizes even."""
    frames = moving_square_frames(count).astype(np.int16)
    frames += np.random.default_rng(0).integers(0, 40, frames.shape, dtype=np.int16)
    write_video(path, np.clip(frames, 0, 255).astype(np.uint8), faststart=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def workflow_env(code: Path = REPO) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first on PATH, offline hubs, and the
    `pipeline` package imported from `code` (the repository, or a test's edited copy)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{code}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def copy_workflow(dest: Path) -> Path:
    """A fresh checkout-like copy of the workflow files, as a user would have after cloning."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake_command(*args: str) -> list[str]:
    """snakemake on 2 cores without GPUs; give targets before options that take lists (--configfile)."""
    return [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--resources=gpu=0", *args]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 2400, code: Path = REPO) -> subprocess.CompletedProcess:
    """Run snakemake; on a timeout its whole process group (the jobs too) is killed, not left running."""
    proc = subprocess.Popen(snakemake_command(*args), cwd=workdir, env=workflow_env(code), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_workflow(tmp_path_factory) -> Path:
    """The whole demo DAG, run once by the real snakemake in a temporary checkout copy."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    snakemake(workdir)
    return workdir


def small_config() -> dict:
    """The demo configuration shrunk for tests: two 8-frame demo scenes, a few epochs."""
    import yaml

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["scenes"] = {
        "one": {"dataset": "demo", "source": "demo", "num_frames": 8, "seed": 0},
        "two": {"dataset": "demo", "source": "demo", "num_frames": 8, "seed": 1},
    }
    cfg["autoencoder"]["clip"]["epochs"] = 10
    cfg["autoencoder"]["video"]["epochs"] = 10
    cfg["sbd"].update(epochs=4, save_every=1)
    cfg["scene3d"]["enabled"] = False  # the scene-prompt stage is tested on the demo run (tests/test_scene3d_workflow.py)
    cfg["nerf"]["enabled"] = False  # the novel-view stage has its own tests (tests/test_nerf.py, the demo run)
    return cfg


def write_config(workdir: Path, cfg: dict, name: str = "small.yaml") -> Path:
    import yaml

    path = workdir / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def small_workflow(tmp_path_factory) -> Path:
    """Two small demo scenes through the whole DAG, run once by the real snakemake."""
    workdir = copy_workflow(tmp_path_factory.mktemp("small"))
    write_config(workdir, small_config())
    snakemake(workdir, "--configfile", "small.yaml")
    return workdir


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, set[str]]:
    """rule -> set of scenes (or '-') that a dry run would run, parsed from its job listing."""
    jobs: dict[str, set[str]] = {}
    rule, seen_wildcards = None, False
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            if rule and not seen_wildcards:
                jobs[rule].add("-")
            rule, seen_wildcards = line.split()[1].rstrip(":"), False
            jobs.setdefault(rule, set())
        elif rule and line.startswith("wildcards:"):
            seen_wildcards = True
            scene = [w.split("=")[1] for w in line[len("wildcards:") :].split(",") if w.strip().startswith("scene=")]
            jobs[rule].add(scene[0] if scene else "-")
    if rule and not seen_wildcards:
        jobs[rule].add("-")
    for target_rule in [r for r in jobs if r == "all" or r.startswith("scene_")]:
        jobs.pop(target_rule)
    return jobs
