"""One source for every default: each option a rule passes defaults, on the command line, to the
config schema's default for its key (pipeline/defaults.py reads them from the schema)."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from pipeline.__main__ import STAGES
from pipeline.defaults import schema_default, section_defaults

REPO = Path(__file__).resolve().parents[1]
FLAGS = re.compile(r'flags\(\s*f?"([^"]+)",((?:\s*"\w+",?)+)\s*\)')
SHELL_STAGE = re.compile(r"python -m pipeline ([\w-]+)")


def _parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    importlib.import_module(STAGES[stage][0]).add_arguments(parser)
    return parser


def rule_options() -> list[tuple[str, str, str]]:
    """(stage, config section, key) for every `flags(section, key, ...)` of a rule or helper."""
    found = []
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text()
        for block in re.split(r"\n(?=rule |use rule |def )", text):
            stages = SHELL_STAGE.findall(block)
            for section, keys in FLAGS.findall(block):
                for key in re.findall(r'"(\w+)"', keys):
                    found.append((section, key, tuple(stages)))
    # helpers in common.smk name no shell: the stages that take their flags
    helper_stage = {"autoencoder.{wildcards.kind}": ("autoencoder-train",), "sbd": ("train",), "evaluate": ("evaluate",),
                    "scene3d": ("scene3d",), "nerf": ("nerf-train",)}
    rows = []
    for section, key, stages in found:
        for stage in stages or helper_stage[section]:
            for sec in (["autoencoder.clip", "autoencoder.video"] if "{" in section else [section]):
                rows.append((stage, sec, key))
    return sorted(set(rows))


OPTIONS = rule_options()
# A command default of None that the command resolves from its input; the schema gives the value
# it resolves to in the usual case. The rules always pass these keys.
RESOLVED = {
    ("geometry", "geometry", "layers"): "the model's DPT layers (4 11 17 23 at full size)",
    ("render", "sbd", "output_placement"): "the placement the weights were trained with",
}


def test_the_rules_pass_many_options():
    stages = {stage for stage, _, _ in OPTIONS}
    assert {"geometry", "segment", "clip-features", "video-features", "autoencoder-train", "train", "render", "evaluate"} <= stages
    assert len(OPTIONS) > 60


@pytest.mark.parametrize("stage,section,key", OPTIONS, ids=[f"{s}:{sec}.{k}" for s, sec, k in OPTIONS])
def test_command_default_is_the_schema_default(stage, section, key):
    if (stage, section, key) in RESOLVED:
        assert _parser(stage).get_default(key) is None
        return
    parser = _parser(stage)
    action = next(a for a in parser._actions if f"--{key.replace('_', '-')}" in a.option_strings)
    if action.required:
        pytest.fail(f"--{key} is required on the command line but has a schema default")
    default = action.default
    if stage == "autoencoder-train" and default is None:  # filled in from --kind's defaults
        from pipeline.features.autoencoder_train import kind_defaults

        default = kind_defaults(section.rsplit(".", 1)[1])[key]
    expected = schema_default(f"{section}.{key}")
    if isinstance(expected, list):
        default = list(default) if default is not None else default
    if isinstance(action, argparse._StoreTrueAction) and expected is False:
        assert default is False
        return
    assert default == expected, f"python -m pipeline {stage} --{key}: command default {default!r}, schema {expected!r}"


def test_frames_defaults_are_the_schema_defaults():
    parser = _parser("frames")
    for key, expected in section_defaults("frames").items():
        assert parser.get_default(key) == expected, key


def test_schema_reader():
    assert schema_default("geometry.dtype") == "bfloat16"
    assert schema_default("autoencoder.video.epochs") == 100  # the video section inherits the clip keys
    assert section_defaults("evaluate")["negatives"] == ["object", "things", "stuff", "texture"]
    with pytest.raises(KeyError, match="not a key"):
        schema_default("geometry.nonexistent")
