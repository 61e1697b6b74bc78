"""Artifacts on disk: stale temporaries of killed runs, storage failures as one line, code digests."""

import errno
import os
import subprocess
import sys

import pytest

from conftest import REPO, moving_square_frames, write_video
from pipeline import store
from pipeline.__main__ import STAGES, main
from pipeline.code_digest import module_closure, stage_digest, stage_module


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_writers_are_removed_never_a_running_ones(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = _dead_pid()
        stale = tmp_path / f"tokens.zarr{store.TMP_MARK}{store.HOST}-{dead}"
        (stale / "layer_00").mkdir(parents=True)
        older = tmp_path / f"scene.json{store.TMP_MARK}{dead}"  # named by a version without the host
        older.write_text("{")
        running = tmp_path / f"render.zarr{store.TMP_MARK}{store.HOST}-{live.pid}"
        running.mkdir()
        elsewhere = tmp_path / f"masks.zarr{store.TMP_MARK}other_node-{dead}"  # a pid we cannot check
        elsewhere.mkdir()
        store.write_json(tmp_path / "scene.json", {"frames": 3})
        assert not stale.exists() and not older.exists()
        assert running.is_dir() and elsewhere.is_dir()
        assert (tmp_path / "scene.json").read_text().strip().startswith("{")
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")])
def test_full_disk_or_read_only_folder_is_one_line_and_keeps_finished_results(tmp_path, monkeypatch, capsys, code, advice):
    import zarr.storage._local as local_store

    video = write_video(tmp_path / "clip.mp4", moving_square_frames(6))
    out = tmp_path / "results"
    argv = ["frames", "--source", str(video), "--kind", "video", "--out", str(out / "frames.zarr"),
            "--scene-json", str(out / "scene.json"), "--scene", "s", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    finished = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    written = []

    def storage_gives_out(path, value, exclusive=False):  # zarr's chunk write, as the OS fails it
        written.append(path)
        if len(written) > 3:
            raise OSError(code, os.strerror(code), None if code == errno.ENOSPC else str(path))
        return real_put(path, value, exclusive)

    real_put = local_store._put
    monkeypatch.setattr(local_store, "_put", storage_gives_out)
    capsys.readouterr()
    assert main([*argv, "--stride", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {out / 'frames.zarr'}: "), lines
    assert advice in lines[0] and "run the same command again" in lines[0]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == finished
    assert not list(out.glob(f"*{store.TMP_MARK}*"))


def test_every_stage_has_a_code_digest_over_what_it_imports():
    for stage, (module, _) in STAGES.items():
        assert stage_module(stage) == module and len(stage_digest(stage)) == 16
        files = {p.relative_to(REPO).as_posix() for p in module_closure(module)}
        assert module.replace(".", "/") + ".py" in files and "pipeline/store.py" in files, stage
    train = {p.relative_to(REPO).as_posix() for p in module_closure("pipeline.sbd.train")}
    assert {"pipeline/sbd/model.py", "pipeline/sbd/data.py", "pipeline/sbd/__init__.py"} <= train
    assert "pipeline/sbd/render.py" not in train and "pipeline/__main__.py" not in train
