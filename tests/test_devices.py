import subprocess
import sys

import pytest

from pipeline import devices
from pipeline.errors import UserError


def test_concurrent_jobs_lease_different_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGFIELD4D_GPU_LOCKS", str(tmp_path))
    # another job (a separate process) holds GPU 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "from pipeline import devices; import sys; print(devices.lease_gpu(2), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={"LANGFIELD4D_GPU_LOCKS": str(tmp_path), "PYTHONPATH": str(__import__("pathlib").Path(devices.__file__).parents[1])},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "0"
        assert devices.lease_gpu(2) == 1
        with pytest.raises(UserError, match="all 2 GPUs are leased"):
            devices.lease_gpu(2)
    finally:
        holder.stdin.close()
        holder.wait()
    # the holder exited: its lease is free again
    assert devices.lease_gpu(2) == 0


def test_auto_without_cuda_is_cpu_and_explicit_cuda_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu"
    assert devices.resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="CUDA is not available"):
        devices.resolve_device("cuda")
