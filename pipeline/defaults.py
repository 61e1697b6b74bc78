"""Every setting's default, read from the one place that defines it: the workflow's config schema.

`workflow/schemas/config.schema.yaml` documents each config key and gives its default (Snakemake
fills them in when it validates a config). The command-line stages read their option defaults
from here, so `python -m pipeline <stage>` with an option left out does what the workflow does
with the key left out. `tests/test_defaults.py` checks every option a rule passes against it.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    import yaml

    try:
        return yaml.safe_load(SCHEMA.read_text())
    except OSError as exc:  # a broken checkout, not a user setting: say which file is missing
        raise RuntimeError(f"the config schema {SCHEMA} is not readable ({exc}); the command defaults come from it") from None


def schema_default(key: str) -> Any:
    """The schema default of a dotted config key, e.g. `geometry.dtype` or `autoencoder.video.lr`."""
    node = _schema()
    for part in key.split("."):
        try:
            node = node["properties"][part]
        except (KeyError, TypeError):
            raise KeyError(f"{key!r} is not a key of {SCHEMA.name}") from None
    if "default" not in node:
        raise KeyError(f"{key!r} has no default in {SCHEMA.name}")
    return copy.deepcopy(node["default"])


def section_defaults(section: str) -> dict[str, Any]:
    """{key: default} of every key of a config section that has one."""
    node = _schema()
    for part in section.split("."):
        node = node["properties"][part]
    return {k: copy.deepcopy(v["default"]) for k, v in node["properties"].items() if isinstance(v, dict) and "default" in v}
