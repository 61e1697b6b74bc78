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
    safe = "".join(c if c.isalnum() else "_" for c in scene)
    return f"scene_{safe}"


def scene_targets(scene):
    """Every final output of one scene, as far as the DAG is built."""
    base = scene_dir(scene)
    return [f"{base}/frames.zarr", f"{base}/scene.json", f"{base}/tokens.zarr", f"{base}/geometry.zarr"]


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


def flags(section, *keys):
    """A param function: `--key value` for each set key of a config section (lists comma-joined).

    Params are what Snakemake compares to decide a rerun, so changing any of these options
    reruns exactly the rules that pass them, and their dependants.
    """

    def render_flags(wildcards):
        parts = []
        for key in keys:
            value = config[section].get(key)
            if value is None or value is False:
                continue
            flag = f"--{key.replace('_', '-')}"
            if value is True:
                parts.append(flag)
            elif isinstance(value, (list, tuple)):
                parts.append(f"{flag} {','.join(str(v) for v in value)}")
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts)

    return render_flags


def checkpoint_input(section, key="checkpoint"):
    """Input function: the configured checkpoint (never a reason to rerun by its mtime alone)."""

    def checkpoint_path(wildcards):
        path = config[section].get(key)
        return [ancient(path)] if path else []

    return checkpoint_path


def geometry_weights(wildcards):
    cfg = config["geometry"]
    if cfg.get("checkpoint"):
        return f"--checkpoint {cfg['checkpoint']}"
    init = cfg["random_init"]
    return (
        f"--random-init {init['seed']} --embed-dim {init['embed_dim']} --depth {init['depth']}"
        f" --heads {init['heads']} --patch-embed {init['patch_embed']}"
    )


def check_checkpoints(cfg):
    """Fail at start-up, in one line, for a configured checkpoint that is not there."""
    expected = {
        ("geometry", "checkpoint"): "StreamVGGT / VGGT-1B weights as .safetensors",
    }
    for (section, key), what in expected.items():
        path = cfg.get(section, {}).get(key)
        if path and not Path(path).is_file():
            sys.exit(
                f"config error at `{section}.{key}`: {path} not found (expected {what}; "
                "a .pth/.pt file converts once with `python -m pipeline convert-checkpoint`)"
            )
    geo = cfg["geometry"]
    if not geo.get("checkpoint") and not geo.get("random_init"):
        sys.exit("config error at `geometry`: set `checkpoint` (real weights) or `random_init` (demo only)")


check_checkpoints(config)


def memory_mb(base):
    """A resource function: `base` MB, doubled and tripled on the retries after an out-of-memory kill."""

    def scaled(wildcards, attempt):
        return base * attempt

    return scaled
