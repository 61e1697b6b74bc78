"""Pick the torch device for a stage, leasing one GPU per job on a multi-GPU workstation.

Snakemake counts `gpu` resources but does not say which GPU a job gets. A job that asks for
`auto` takes a non-blocking lock on one of `gpu<k>.lock` (k < number of visible GPUs) and
uses the device it wins, so N concurrent GPU jobs land on N different devices. Under Slurm,
`CUDA_VISIBLE_DEVICES` already names the job's own GPU, which is then device 0.
The lock is held for the life of the process and released by the OS when it exits.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipeline.errors import UserError

_held: list = []  # open lock files: closing one would release its lease
_leased: dict[int, int] = {}  # GPU count -> index this process already holds


def lock_dir() -> Path:
    return Path(os.environ.get("LANGFIELD4D_GPU_LOCKS", "/tmp/langfield4d-gpu-locks"))


def lease_gpu(count: int) -> int:
    """Index of a GPU no other job of this machine holds; raises when all are taken.

    A process leases once: asking again returns the device it already holds.
    """
    if count in _leased:
        return _leased[count]
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        handle = open(folder / f"gpu{index}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held.append(handle)
        _leased[count] = index
        return index
    raise UserError(
        f"all {count} GPUs are leased by other jobs (locks in {folder}); run snakemake with "
        f"--resources gpu={count} so it never starts more GPU jobs than there are GPUs"
    )


def resolve_device(requested: str | None = "auto") -> str:
    """`auto` -> a leased `cuda:<k>` when CUDA is available, else `cpu`; explicit names pass through."""
    import torch

    if requested in (None, "", "auto"):
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{lease_gpu(torch.cuda.device_count())}"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {requested!r} requested but CUDA is not available here; use --device cpu or auto")
    index = requested.partition(":")[2]
    if requested.startswith("cuda") and index.isdigit() and int(index) >= torch.cuda.device_count():
        raise UserError(f"device {requested!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                        "device(s); use --device auto, cuda or a smaller index")  # fmt: skip
    return requested
