# Every Python helper of the workflow lives here; the rule files stay declarative.
import sys
from pathlib import Path

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def validate_config(cfg):
    """Schema validation (fills defaults); a bad key or type stops the run with one line naming it."""
    try:
        validate(cfg, schema="../workflow/schemas/config.schema.yaml")
    except WorkflowError as exc:
        error = exc.__cause__ or exc.__context__
        if not isinstance(error, jsonschema.ValidationError):
            raise
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        sys.exit(f"config error at `{key}`: {error.message}")


validate_config(config)

SCENES = dict(config["scenes"])
DATASETS = sorted({scene["dataset"] for scene in SCENES.values()})


wildcard_constraints:
    scene="|".join(SCENES),
    dataset="|".join(DATASETS),


def scene_dir(scene):
    return f"results/{SCENES[scene]['dataset']}/{scene}"


def scene_rule_name(scene):
    return "scene_" + "".join(c if c.isalnum() else "_" for c in scene)


def scene_targets(scene):
    """Every final output of one scene, as far as the DAG is built."""
    base = scene_dir(scene)
    return [f"{base}/frames.zarr", f"{base}/scene.json"]


def all_targets():
    return [path for scene in SCENES for path in scene_targets(scene)]


def scene_setting(key):
    """A param function: the scene's own value for `key`, else the stage default under `frames`."""

    def lookup_setting(wildcards):
        value = SCENES[wildcards.scene].get(key, config["frames"].get(key))
        return "" if value is None else value

    return lookup_setting


def frames_source(wildcards):
    """Input of the frames rule: the generated demo folder, or the user's file or folder."""
    scene = SCENES[wildcards.scene]
    if scene["source"] == "demo":
        return f"resources/demo/{wildcards.scene}"
    return scene["path"]


def frames_kind(wildcards):
    source = SCENES[wildcards.scene]["source"]
    return "hypernerf" if source == "demo" else source


def optional_flag(flag, key):
    """A param function giving `--flag value` when the scene/stage setting is set, else nothing."""
    get = scene_setting(key)

    def render_flag(wildcards):
        value = get(wildcards)
        return f"{flag} {value}" if value != "" else ""

    return render_flag
