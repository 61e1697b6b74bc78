import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import devices
from pipeline.errors import UserError


def _lease_in_subprocess(lock_dir, count, hold=False):
    """Another job on the same machine: prints the GPU it leased; with hold, keeps it until stdin closes."""
    code = "from pipeline import devices; import sys; print(devices.lease_gpu(%d), flush=True)" % count
    code += "; sys.stdin.read()" if hold else ""
    env = {"LANGFIELD4D_GPU_LOCKS": str(lock_dir), "PYTHONPATH": str(Path(devices.__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_concurrent_jobs_lease_different_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGFIELD4D_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(devices, "_leased", {})
    holder = _lease_in_subprocess(tmp_path, 2, hold=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        assert devices.lease_gpu(2) == 1
        third = _lease_in_subprocess(tmp_path, 2)
        _, err = third.communicate(timeout=60)
        assert third.returncode != 0 and "all 2 GPUs are leased" in err
    finally:
        holder.stdin.close()
        holder.wait()
    # the holder exited: its lease is free for the next job
    after = _lease_in_subprocess(tmp_path, 2)
    assert after.communicate(timeout=60)[0].strip() == "0"


def test_auto_without_cuda_is_cpu_and_explicit_cuda_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu"
    assert devices.resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="CUDA is not available"):
        devices.resolve_device("cuda")


def test_a_process_leases_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGFIELD4D_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(devices, "_leased", {})
    first = devices.lease_gpu(3)
    assert devices.lease_gpu(3) == first  # stages may resolve the device more than once
