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
    kind="clip|video",


def scene_dir(scene):
    return f"results/{SCENES[scene]['dataset']}/{scene}"


def scene_rule_name(scene):
    safe = "".join(c if c.isalnum() else "_" for c in scene)
    return f"scene_{safe}"


def has_annotations(scene):
    """Evaluation needs 4DLangSplat-style annotations; videos and image folders have none."""
    cfg = SCENES[scene]
    if cfg["source"] == "demo":
        return True
    if cfg["source"] in ("hypernerf", "neu3d"):
        return Path(cfg["path"], "annotations", "train", "_annotations.coco.json").is_file()
    return False


def video_enabled():
    return config["features"]["video"]["enabled"]


def scene_targets(scene):
    """Every final output of one scene, as far as its data allows."""
    base = scene_dir(scene)
    targets = [
        f"{base}/frames.zarr",
        f"{base}/scene.json",
        f"{base}/masks.zarr",
        f"{base}/geometry.zarr",
        f"{base}/render.zarr",
    ]
    if has_annotations(scene):
        targets.append(f"{base}/eval/metrics.parquet")
    return targets


def all_targets():
    targets = [path for scene in SCENES for path in scene_targets(scene)]
    if any(has_annotations(scene) for scene in SCENES):
        targets.append("results/reports/metrics.md")
    return targets


def evaluated_metrics(wildcards):
    return [f"{scene_dir(scene)}/eval/metrics.parquet" for scene in SCENES if has_annotations(scene)]


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


def config_section(cfg, section):
    """The settings under a dotted section name, e.g. `features.clip`."""
    for name in section.split("."):
        cfg = cfg.get(name, {})
    return cfg


def flags(section, *keys):
    """A param function: `--key value` for each set key of a config section (`a.b` for nested ones).

    Params are what Snakemake compares to decide a rerun, so changing any of these options
    reruns exactly the rules that pass them, and their dependants.
    """

    def render_flags(wildcards):
        settings = config_section(config, section)
        parts = []
        for key in keys:
            value = settings.get(key)
            if value is None or value is False or value == []:
                continue
            flag = f"--{key.replace('_', '-')}"
            if value is True:
                parts.append(flag)
            elif isinstance(value, (list, tuple)):
                parts.append(f"{flag} {' '.join(str(v) for v in value)}")
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts)

    return render_flags


def checkpoint_input(section, key="checkpoint"):
    """Input function: the configured checkpoint (never a reason to rerun by its mtime alone)."""

    def checkpoint_path(wildcards):
        path = config_section(config, section).get(key)
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
        ("segment", "checkpoint"): "SAM 2 weights as .safetensors",
        ("features.clip", "checkpoint"): "open_clip weights as .safetensors",
        ("features.video", "vlm"): "a local Qwen2-VL model folder",
        ("autoencoder.clip", "checkpoint"): "a CLIP autoencoder as .safetensors",
        ("autoencoder.video", "checkpoint"): "a video autoencoder as .safetensors",
        ("sbd", "checkpoint"): "Semantic Bridging Decoder weights as .safetensors",
        ("evaluate", "query_embeddings"): "an .npz of query embeddings",
    }
    for (section, key), what in expected.items():
        path = config_section(cfg, section).get(key)
        if path and not Path(path).exists():
            sys.exit(
                f"config error at `{section}.{key}`: {path} not found (expected {what}; "
                "a .pth/.pt file converts once with `python -m pipeline convert-checkpoint`)"
            )
    geo = cfg["geometry"]
    if not geo.get("checkpoint") and not geo.get("random_init"):
        sys.exit("config error at `geometry`: set `checkpoint` (real weights) or `random_init` (demo only)")
    if cfg["segment"]["backend"] == "sam2" and not cfg["segment"].get("checkpoint"):
        sys.exit("config error at `segment.checkpoint`: the sam2 backend needs SAM 2 weights (.safetensors)")
    if cfg["features"]["clip"]["backend"] == "open_clip" and not cfg["features"]["clip"].get("checkpoint"):
        sys.exit("config error at `features.clip.checkpoint`: the open_clip backend needs local weights (.safetensors)")
    video = cfg["features"]["video"]
    if video["enabled"] and video["captioner"] == "vlm" and not video.get("vlm"):
        sys.exit("config error at `features.video.vlm`: the vlm captioner needs a local Qwen2-VL model folder")
    for scene in cfg["sbd"]["scenes"] + cfg["autoencoder"]["shared_scenes"]:
        if scene not in cfg["scenes"]:
            sys.exit(f"config error: scene {scene!r} listed in sbd.scenes / autoencoder.shared_scenes is not configured")


check_checkpoints(config)


def memory_mb(base):
    """A resource function: `base` MB, doubled and tripled on the retries after an out-of-memory kill."""

    def scaled(wildcards, attempt):
        return base * attempt

    return scaled



# ----------------------------------------------------------------------------- features and autoencoders
def autoencoder_path(scene, kind):
    """The autoencoder a scene's features go through: given, shared across scenes, or its own."""
    given = config["autoencoder"][kind].get("checkpoint")
    if given:
        return given
    if scene in config["autoencoder"]["shared_scenes"]:
        return f"results/_all/{kind}_autoencoder.safetensors"
    return f"{scene_dir(scene)}/{kind}_autoencoder.safetensors"


def autoencoder_features(wildcards):
    """Features an autoencoder trains on: one scene's, or every shared scene's."""
    scenes = [wildcards.scene] if hasattr(wildcards, "scene") else config["autoencoder"]["shared_scenes"]
    return [f"{scene_dir(scene)}/{wildcards.kind}_features.zarr" for scene in scenes]


def autoencoder_flags(wildcards):
    return flags(f"autoencoder.{wildcards.kind}", "encoder_dims", "decoder_dims", "lr", "epochs", "cos_weight",
                 "batch_size", "seed", "device")(wildcards)  # fmt: skip


def autoencoder_for(wildcards):
    return autoencoder_path(wildcards.scene, wildcards.kind)


def autoencoder_of(kind):
    """Input function for evaluation: the scene's `kind` autoencoder (none when video is off)."""

    def autoencoder(wildcards):
        if kind == "video" and not video_enabled():
            return []
        return autoencoder_path(wildcards.scene, kind)

    return autoencoder


# ----------------------------------------------------------------------------- decoder training
def training_scenes(wildcards):
    return [wildcards.scene] if hasattr(wildcards, "scene") else config["sbd"]["scenes"]


def training_inputs(wildcards):
    scenes = training_scenes(wildcards)
    inputs = {
        name: [f"{scene_dir(scene)}/{artifact}" for scene in scenes]
        for name, artifact in (
            ("tokens", "tokens.zarr"),
            ("masks", "masks.zarr"),
            ("clip_latents", "clip_latents.zarr"),
            ("frames", "frames.zarr"),
        )
    }
    if video_enabled():
        inputs["video_latents"] = [f"{scene_dir(scene)}/video_latents.zarr" for scene in scenes]
    return inputs


def training_arguments(wildcards):
    """`--tokens .. --masks .. --clip-latents .. --frames .. [--video-latents ..]` once per scene."""
    inputs = training_inputs(wildcards)
    parts = []
    for i in range(len(inputs["tokens"])):
        for name, paths in inputs.items():
            parts.append(f"--{name.replace('_', '-')} {paths[i]}")
    return " ".join(parts)


def sbd_flags(wildcards):
    return flags("sbd", "epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "schedule", "features",
                 "hidden_dim", "out_channels", "video_hidden_dim", "lambda_l1", "lambda_cos", "lambda_rgb",
                 "lambda_video", "cos_over_width", "save_every", "seed", "num_workers", "device")(wildcards)  # fmt: skip


def sbd_weights_for(wildcards):
    """The decoder that renders a scene: given weights, the multi-scene model, or its own."""
    if config["sbd"].get("checkpoint"):
        return config["sbd"]["checkpoint"]
    if wildcards.scene in config["sbd"]["scenes"]:
        return "results/_all/sbd.safetensors"
    return f"{scene_dir(wildcards.scene)}/sbd.safetensors"


# ----------------------------------------------------------------------------- evaluation
def evaluate_flags(wildcards):
    options = flags("evaluate", "query_embeddings", "device", "figure_frames", "frame_offset", "all_polygons",
                    "round_polygons", "negatives", "temperature", "smooth_kernel", "mask_thresh",
                    "majority_kernel", "majority_thresh", "level_strategy", "temporal_weights",
                    "video_threshold", "clip_threshold", "depth_align", "max_depth", "rpe_delta")(wildcards)  # fmt: skip
    if not config["evaluate"]["remap_positive"]:
        options += " --no-remap-positive"
    if SCENES[wildcards.scene]["source"] == "neu3d" and config["evaluate"]["frame_offset"] == -1:
        options += " --frame-offset 0"  # Neu3D annotation names are 0-based
    return options


def video_autoencoder_flag(wildcards):
    return f"--video-autoencoder {autoencoder_path(wildcards.scene, 'video')}" if video_enabled() else ""


def stage_code(*paths):
    """Digest of a stage's own modules: a param, so editing a stage's code reruns it and its dependants.

    Snakemake's `code` trigger sees only rule bodies; our stages live in the `pipeline` package,
    digested where the jobs import it from (the checkout, for the editable install `make` does).
    """
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("pipeline")
    if spec is None or not spec.submodule_search_locations:
        return "unknown"
    root = Path(list(spec.submodule_search_locations)[0]).parent
    digest = hashlib.sha256()
    for rel in paths:
        location = root / rel
        for source in sorted(location.rglob("*.py")) if location.is_dir() else [location]:
            digest.update(source.read_bytes())
    return digest.hexdigest()[:16]
