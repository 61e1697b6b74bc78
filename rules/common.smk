# Every Python helper of the workflow lives here; the rule files stay declarative.
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

try:  # the workflow digests the code the jobs run: the same package, where they import it from
    from pipeline.code_digest import CodeDigestError, stage_digest
except ImportError as exc:
    sys.exit(
        f"workflow error: cannot import the `pipeline` package ({exc}); run `make venv` (it installs "
        "this checkout) or put the repository on PYTHONPATH"
    )


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


def duplicate_keys(node, path=()):
    """(dotted key, line, first line) for each mapping key given twice under a composed YAML node."""
    if isinstance(node, yaml.MappingNode):
        first_line = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in first_line and key != "<<":
                yield ".".join(path + (key,)), line, first_line[key]
            first_line.setdefault(key, line)
            yield from duplicate_keys(value_node, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from duplicate_keys(item, path + (str(i),))


def refuse_duplicate_keys(paths):
    """Fail at start-up, in one line, for a key given twice in a config file (YAML keeps the last silently)."""
    for path in paths:
        try:
            root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        except (OSError, yaml.YAMLError):
            continue  # Snakemake itself reports unreadable config files
        for key, line, first in duplicate_keys(root):
            sys.exit(f"config error in {path} line {line}: key `{key}` is given twice (first on line {first}); "
                     "keep one of them (YAML would silently use the last)")  # fmt: skip


refuse_duplicate_keys(workflow.configfiles)
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
    """Every artifact one scene's results depend on, as far as its data allows.

    Intermediates are targets too: Snakemake does not rebuild a missing intermediate whose
    dependants exist, so a job that failed or was killed after a change (its outputs removed)
    would otherwise leave the old results reported as finished. Built from the rules' own input
    functions, so the list is exactly what the scene's jobs read and write.
    """
    base = scene_dir(scene)
    this = SimpleNamespace(scene=scene, dataset=SCENES[scene]["dataset"])
    targets = [f"{base}/{name}" for name in ("frames.zarr", "scene.json", "masks.zarr", "objects.parquet", "masks.png",
                                             "tokens.zarr", "geometry.zarr", "render.zarr")]  # fmt: skip
    if SCENES[scene]["source"] == "demo":
        targets.append(frames_source(this))
    if not config["sbd"].get("checkpoint"):
        weights = Path(sbd_weights_for(this))
        targets += [str(weights), str(weights.with_name("train_log.parquet")), str(weights.with_name("loss.png"))]
        trained = SimpleNamespace() if scene in config["sbd"]["scenes"] else this
        for paths in training_inputs(trained).values():
            targets += paths
        for kind in ("clip", "video") if video_enabled() else ("clip",):
            for other in training_scenes(trained):
                targets += latent_artifacts(other, kind)
    if scene3d_enabled():
        targets += [f"{base}/{name}" for name in ("objects3d.parquet", "cloud.ply", "scene_prompt", "eval/grounding.parquet")]
        if scene3d_answers_enabled():
            targets.append(f"{base}/answers.parquet")
    if has_annotations(scene):
        targets += [f"{base}/eval/metrics.parquet", f"{base}/eval/figures"]
        for kind in ("clip", "video") if video_enabled() else ("clip",):
            targets += autoencoder_artifacts(scene, kind)
    if nerf_enabled():
        targets += nerf_targets(scene)
    return list(dict.fromkeys(targets))


def feature_artifacts(scene, kind):
    """A scene's `kind` feature table, with the captions the video features come with."""
    base = scene_dir(scene)
    return [f"{base}/{kind}_features.zarr"] + ([f"{base}/captions.parquet"] if kind == "video" else [])


def autoencoder_artifacts(scene, kind):
    """The `kind` autoencoder a scene uses and the features it trains on (none when one is given)."""
    if config["autoencoder"][kind].get("checkpoint"):
        return []
    shared = scene in config["autoencoder"]["shared_scenes"]
    trained_on = SimpleNamespace(kind=kind) if shared else SimpleNamespace(scene=scene, kind=kind)
    artifacts = [autoencoder_path(scene, kind)]
    for features in autoencoder_features(trained_on):  # video features come with their captions beside them
        artifacts += [features] + ([str(Path(features).with_name("captions.parquet"))] if kind == "video" else [])
    return artifacts


def latent_artifacts(scene, kind):
    """A scene's `kind` latents and everything they are made from."""
    return [*feature_artifacts(scene, kind), f"{scene_dir(scene)}/{kind}_latents.zarr", *autoencoder_artifacts(scene, kind)]


def all_targets():
    targets = [path for scene in SCENES for path in scene_targets(scene)]
    if any(has_annotations(scene) for scene in SCENES) or scene3d_enabled() or nerf_enabled():
        targets += [f"results/reports/metrics.{suffix}" for suffix in ("parquet", "md", "html")]
    return list(dict.fromkeys(targets))


def evaluated_metrics(wildcards):
    """Every scene's metrics table, and its 3D grounding table when the scene3d stage runs."""
    tables = [f"{scene_dir(scene)}/eval/metrics.parquet" for scene in SCENES if has_annotations(scene)]
    if scene3d_enabled():
        tables += [f"{scene_dir(scene)}/eval/grounding.parquet" for scene in SCENES]
    return tables


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
    """A param function giving `--flag value` when the scene/stage setting is set (`--flag` for true), else nothing."""
    get = scene_setting(key)

    def render_flag(wildcards):
        value = get(wildcards)
        if isinstance(value, bool):
            return flag if value else ""
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
        ("scene3d", "vocabulary"): "a text file, one object name per line",
        ("scene3d.answer", "vlm"): "a local Qwen2-VL model folder",
        ("scene3d.answer", "questions"): "a JSON or YAML list of questions",
        ("nerf", "lpips_backbone"): "VGG16 weights (torchvision `features.N` keys) as .safetensors or .pth for LPIPS",
    }
    for (section, key), what in expected.items():
        path = config_section(cfg, section).get(key)
        if path and not Path(path).exists():
            hint = "; a .pth/.pt file converts once with `python -m pipeline convert-checkpoint`" if "weights" in what else ""
            sys.exit(f"config error at `{section}.{key}`: {path} not found (expected {what}{hint})")
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
    answer = cfg["scene3d"]["answer"]
    if cfg["scene3d"]["enabled"] and bool(answer.get("questions")) != bool(answer.get("vlm")):
        missing = "vlm" if answer.get("questions") else "questions"
        sys.exit(f"config error at `scene3d.answer.{missing}`: the answer rule needs both `questions` and `vlm` "
                 "(a local Qwen2-VL folder); set it, or unset the other to skip answering")
    for scene in cfg["sbd"]["scenes"] + cfg["autoencoder"]["shared_scenes"]:
        if scene not in cfg["scenes"]:
            sys.exit(f"config error: scene {scene!r} listed in sbd.scenes / autoencoder.shared_scenes is not configured")
    for scene in cfg["nerf"]["scenes"]:
        if scene not in cfg["scenes"]:
            sys.exit(f"config error at `nerf.scenes`: scene {scene!r} is not configured under `scenes`")


check_checkpoints(config)


def check_writable_folders():
    """Before any job runs (onstart): a read-only results, logs or resources folder is one line
    naming it, instead of Snakemake's traceback when it prepares the first job's outputs."""
    for top in ("results", "resources", "logs", "benchmarks"):
        root = Path(top)
        for folder in [root, *root.glob("*"), *root.glob("*/*"), *root.glob("*/*/*")]:
            if folder.is_dir() and not folder.is_symlink() and not os.access(folder, os.W_OK):
                sys.exit(f"error: cannot write {folder}/ (read-only): make it writable, or run from a writable "
                         "copy of the workflow folder, then run the same command again; nothing was run")  # fmt: skip


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
                 "lambda_video", "cos_over_width", "balance_objects", "output_placement", "save_every", "seed",
                 "num_workers", "device")(wildcards)  # fmt: skip


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


def stage_code(stage):
    """A param: digest of everything `python -m pipeline <stage>` runs (its module and every
    `pipeline` module it imports), so editing any of it reruns that stage and its dependants.

    The same digest is recorded in each artifact's provenance (`pipeline.code_digest`). Snakemake's
    own `code` trigger sees only rule bodies. A stage whose code cannot be read stops the run here.
    """
    try:
        return stage_digest(stage)
    except CodeDigestError as exc:
        sys.exit(f"workflow error: {exc} (needed for the rule parameter `code`, which reruns changed stages)")


# ----------------------------------------------------------------------------- scene prompts (GPT4Scene)
def scene3d_enabled():
    return config["scene3d"]["enabled"]


def scene3d_answers_enabled():
    answer = config["scene3d"]["answer"]
    return scene3d_enabled() and bool(answer.get("questions")) and bool(answer.get("vlm"))


def scene3d_geometry(wildcards):
    """geometry.zarr when lifting with predicted depth and cameras; nothing with the scene's ground truth."""
    if config["scene3d"]["geometry"] == "gt":
        return []
    return f"results/{wildcards.dataset}/{wildcards.scene}/geometry.zarr"


def scene3d_vocabulary(wildcards):
    path = config["scene3d"].get("vocabulary")
    return [path] if path else []


def scene3d_questions(wildcards):
    path = config["scene3d"]["answer"].get("questions")
    return [path] if path else []


def scene3d_flags(wildcards):
    cfg = config["scene3d"]
    options = flags("scene3d", "vocabulary", "level", "num_frames", "max_side", "voxel_size", "pixel_stride",
                    "confidence_percentile", "trim", "up_axis", "ceiling_quantile", "extent_quantile", "bev_extent",
                    "bev_margin", "bev_size",
                    "bev_windows", "splat_radius", "moving_threshold", "min_marker_area", "features_per_frame",
                    "multi_margin", "min_score", "seed")(wildcards)  # fmt: skip
    options += f" --geometry-source {cfg['geometry']}"
    if cfg["geometry"] != "gt":
        options += f" --geometry results/{wildcards.dataset}/{wildcards.scene}/geometry.zarr"
    return options


# ----------------------------------------------------------------------------- novel views (VGGT-NeRF)
def nerf_enabled():
    return config["nerf"]["enabled"]


def nerf_scene_inputs(wildcards):
    """What the radiance field reads of one scene."""
    base = scene_dir(wildcards.scene)
    return {"frames": f"{base}/frames.zarr", "tokens": f"{base}/tokens.zarr", "scene_json": f"{base}/scene.json",
            "geometry": f"{base}/geometry.zarr"}  # fmt: skip


def nerf_training_scenes(wildcards):
    return [wildcards.scene] if hasattr(wildcards, "scene") else config["nerf"]["scenes"]


def nerf_training_inputs(wildcards):
    scenes = nerf_training_scenes(wildcards)
    per_scene = [nerf_scene_inputs(SimpleNamespace(scene=scene)) for scene in scenes]
    return {name: [inputs[name] for inputs in per_scene] for name in ("frames", "tokens", "scene_json", "geometry")}


def nerf_training_arguments(wildcards):
    """`--frames .. --tokens .. --scene-json .. --geometry .. --name ..` once per training scene."""
    parts = []
    for scene in nerf_training_scenes(wildcards):
        inputs = nerf_scene_inputs(SimpleNamespace(scene=scene))
        parts += [f"--{name.replace('_', '-')} {path}" for name, path in inputs.items()] + [f"--name {scene}"]
    return " ".join(parts)


def nerf_train_flags(wildcards):
    return flags("nerf", "holdout_every", "num_sources", "planes", "samples", "feature_dim", "volume_downscale",
                 "cnn_channels", "net_depth", "net_width", "multires", "multires_views", "colour", "epochs", "rays",
                 "lr", "min_lr", "cameras", "near", "far", "seed", "save_every", "device")(wildcards)  # fmt: skip


def nerf_weights_path(scene):
    if scene in config["nerf"]["scenes"]:
        return "results/_all/nerf.safetensors"
    return f"{scene_dir(scene)}/nerf/nerf.safetensors"


def nerf_weights_for(wildcards):
    return nerf_weights_path(wildcards.scene)


def nerf_targets(scene):
    """A scene's radiance field, its held-out renders, metrics and strip (and the camera path when asked)."""
    weights = Path(nerf_weights_path(scene))
    shared = scene in config["nerf"]["scenes"]
    log, plot = ("nerf_log.parquet", "nerf_loss.png") if shared else ("nerf_log.parquet", "loss.png")
    base = f"{scene_dir(scene)}/nerf"
    targets = [str(weights), str(weights.with_name(log)), str(weights.with_name(plot)), f"{base}/render.zarr",
               f"{base}/metrics.parquet", f"{base}/strip.png"]  # fmt: skip
    for other in nerf_training_scenes(SimpleNamespace() if shared else SimpleNamespace(scene=scene)):
        targets += list(nerf_scene_inputs(SimpleNamespace(scene=other)).values())
    if config["nerf"]["path_frames"]:
        targets.append(f"{base}/path.mp4")
    return targets


def nerf_metrics(wildcards):
    return [f"{scene_dir(scene)}/nerf/metrics.parquet" for scene in SCENES] if nerf_enabled() else []


def nerf_strips(wildcards):
    return [f"{scene_dir(scene)}/nerf/strip.png" for scene in SCENES] if nerf_enabled() else []


def report_metrics(wildcards):
    """The cross-scene report's tables: each evaluated scene's, and each scene's novel-view metrics."""
    return evaluated_metrics(wildcards) + nerf_metrics(wildcards)
