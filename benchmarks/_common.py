"""What every benchmark shares: the machine it ran on and how its JSON result is written."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine(**extra) -> dict:
    """The facts that make two runs comparable (ratios are only compared within one run)."""
    import torch

    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    return {**info, **extra}


def write_result(out: str | Path, result: dict, *, echo=True) -> Path:
    """Write `result` as indented JSON (parents created); print it, `echo` instead, or (False) the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if echo is False:
        print(f"wrote {out}")
    else:
        print(json.dumps(result if echo is True else echo, indent=2, default=str))
    return out
