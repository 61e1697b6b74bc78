"""Evaluate a rendered scene with the 4DLangSplat protocol -> metrics.parquet + relevancy figures.

Time-agnostic queries (COCO category names): decode the latents of each level, LERF relevancy
against the canonical negatives, upstream's smoothing / threshold / majority, the level with the
highest smoothed peak, IoU against the polygon ground truth -> mIoU. mAcc (not defined by any
released code) is reported separately as the pixel accuracy of the predicted mask over the frame.
Time-sensitive state prompts (video_annotations.json): mean cosine of the decoded video features
under the prompt's mask with the prompt's query embedding, temporal smoothing over the annotated
frames, threshold -> frame Acc and vIoU. With --geometry and --scene-json, also depth Abs Rel /
delta < 1.25 (per-sequence scale and scale&shift) and ATE / RPE after Sim(3), where GT exists.

Annotation frames (HyperNeRF: int(file_name.split('_')[0]) - 1) are matched to rendered frames
through the render's `source_indices`; annotated frames that were not rendered are skipped and
listed. Defaults reproduce upstream's choices; fixes are explicit options.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError
from pipeline.evaluate import coco
from pipeline.evaluate.encoders import (
    Decoder,
    TextVectors,
    encode_texts,
    load_autoencoder_decoder,
    load_query_embeddings,
    parse_space,
    require_same_space,
)
from pipeline.evaluate.geometry_eval import _depth_file, _pred_depth_on_gt, evaluate_geometry  # noqa: F401
from pipeline.evaluate.language import evaluate_language, time_sensitive_gap  # noqa: F401
from pipeline.evaluate.protocol import Protocol, add_protocol_arguments, protocol_from_args
from pipeline.evaluate.table import COLUMNS, _row, metrics_frame, summary_lines  # noqa: F401

# Modules, one job each: `language` (the language metrics), `geometry_eval` (depth and pose
# metrics), `table` (the metrics table); this one loads the inputs, writes the outputs and is the
# command line.


def resolve_queries(clip_space: dict | None, video_space: dict | None, query_embeddings, *, need_video_text: bool,
                    texts: list[str], states: list[str], negatives: list[str], log=print) -> tuple[TextVectors, TextVectors | None]:
    """Text vectors for the scene's queries, from an npz or the encoders the spaces name; refuses
    vectors from a different language space than the features they are compared with."""
    if query_embeddings is not None:
        clip_text, video_text = load_query_embeddings(query_embeddings)
        require_same_space(clip_space, clip_text.space, what="clip_space", other=f"clip_space of {query_embeddings}", log=log)
        if need_video_text and video_text.vectors:
            require_same_space(video_space, video_text.space, what="video_space", other=f"video_space of {query_embeddings}", log=log)
        return clip_text, (video_text if video_text.vectors else None)
    clip_text = encode_texts(clip_space, texts + negatives, query=False, what="clip")
    video_text = encode_texts(video_space, states, query=True, what="video") if need_video_text and states else None
    return clip_text, video_text


def _decoders(attrs: dict, has_video: bool, autoencoder, video_autoencoder, clip_decoder, video_decoder, device, log):
    """(clip decoder, its space, video decoder, its space). The latents are compared in the space their
    autoencoder decodes to: the render's record of it, else the autoencoder's own (a render of the
    released decoder records none)."""
    clip_space = parse_space(attrs.get("clip_space"))
    video_space = parse_space(attrs.get("video_space"))
    if clip_decoder is None:
        clip_decoder, ae_space, _ = load_autoencoder_decoder(autoencoder, config_key="evaluate.autoencoder", what="CLIP autoencoder",
                                                device=device)
        require_same_space(clip_space, ae_space, what="clip_space", other=f"the space of {autoencoder}", log=log)
        clip_space = clip_space or ae_space
    if video_decoder is None and video_autoencoder and has_video:
        video_decoder, vae_space, _ = load_autoencoder_decoder(video_autoencoder, config_key="evaluate.video_autoencoder",
                                                   what="video autoencoder", device=device)
        require_same_space(video_space, vae_space, what="video_space", other=f"the space of {video_autoencoder}", log=log)
        video_space = video_space or vae_space
    return clip_decoder, clip_space, video_decoder, video_space


def _provenance(protocol: Protocol, render, scene_dir: Path, geometry, autoencoder, video_autoencoder, query_embeddings,
                dataset: str, scene: str) -> dict:  # fmt: skip
    from pipeline.store import provenance

    inputs = {"render": render, "annotations": scene_dir / coco.COCO_RELATIVE}
    if geometry is not None:
        inputs["geometry"] = geometry
    checkpoints = {"autoencoder": autoencoder if autoencoder and Path(autoencoder).is_file() else None,
                   "video_autoencoder": video_autoencoder if video_autoencoder and Path(video_autoencoder).is_file() else None}
    return provenance("evaluate", protocol.as_dict(), inputs, checkpoints=checkpoints,
                      extra={"dataset": dataset, "scene": scene,
                             "query_embeddings": str(query_embeddings) if query_embeddings else None})


def evaluate(
    render: str | Path, scene_dir: str | Path, out: str | Path, *, autoencoder: str | Path | None,
    video_autoencoder: str | Path | None = None, query_embeddings: str | Path | None = None,
    geometry: str | Path | None = None, scene_json: str | Path | None = None, protocol: Protocol = Protocol(),
    dataset: str | None = None, scene: str | None = None, figure_frames: int = 3,
    clip_decoder: Decoder | None = None, video_decoder: Decoder | None = None, device: str = "cpu", log=print,
):
    """Write `<out>/metrics.parquet` and `<out>/figures/*.png` for one scene; return the table.

    `clip_decoder` / `video_decoder` replace loading the autoencoder checkpoints (tests, notebooks).
    """
    from pipeline.devices import resolve_device
    from pipeline.store import atomic_path, open_group, write_parquet

    device = resolve_device(device)
    out = Path(out)
    group = open_group(render, what="render")
    scene_dir = Path(scene_dir)
    scene_info = json.loads(Path(scene_json).read_text()) if scene_json and Path(scene_json).is_file() else {}
    dataset = dataset or scene_info.get("dataset") or scene_dir.parent.name
    scene = scene or scene_info.get("scene") or scene_dir.name
    has_video = "video" in group
    clip_decoder, clip_space, video_decoder, video_space = _decoders(
        dict(group.attrs), has_video, autoencoder, video_autoencoder, clip_decoder, video_decoder, device, log)
    ann = coco.load_scene_annotations(scene_dir, frame_offset=protocol.frame_offset)
    need_video_text = video_decoder is not None and bool(ann.state_prompts) and has_video
    clip_text, video_text = resolve_queries(clip_space, video_space, query_embeddings, need_video_text=need_video_text,
                                         texts=[*ann.labels, *ann.state_prompts], states=list(ann.state_prompts),
                                         negatives=list(protocol.negatives), log=log)
    with atomic_path(out / "figures") as fig_tmp:
        fig_tmp.mkdir(parents=True)
        rows = evaluate_language(group, scene_dir, clip_decoder=clip_decoder, clip_text=clip_text,
                                 video_decoder=video_decoder, video_text=video_text, protocol=protocol, dataset=dataset,
                                 scene=scene, figures_dir=fig_tmp, figure_frames=figure_frames, log=log)
    if geometry is not None:
        if scene_json is None:
            raise UserError("--geometry needs --scene-json (the ground-truth cameras and depth paths)")
        rows += evaluate_geometry(open_group(geometry, what="geometry"), scene_json, protocol=protocol,
                                  dataset=dataset, scene=scene, log=log)
    table = metrics_frame(rows)
    prov = _provenance(protocol, render, scene_dir, geometry, autoencoder, video_autoencoder, query_embeddings,
                       dataset, scene)
    write_parquet(out / "metrics.parquet", table, provenance=prov)
    return table


def add_arguments(parser) -> None:
    from pipeline.defaults import schema_default

    parser.add_argument("--render", required=True, help="render.zarr of the scene")
    parser.add_argument("--source", required=True, help="the scene's source folder, holding annotations/ (upstream layout)")
    parser.add_argument("--autoencoder", help="CLIP-slot autoencoder (.safetensors, 4DLangSplat key layout)")
    parser.add_argument("--video-autoencoder", help="video autoencoder (.safetensors); enables time-sensitive queries")
    parser.add_argument("--query-embeddings", help="npz with clip_names/clip_vectors and video_names/video_vectors "
                        "(+ optional clip_space/video_space JSON; old e5_* keys also read) instead of running text encoders")
    parser.add_argument("--geometry", help="geometry.zarr: adds depth and pose metrics where GT exists")
    parser.add_argument("--scene-json", help="scene.json of the frames stage (GT depth paths and cameras)")
    parser.add_argument("--dataset", help="dataset name in the table (default: scene.json, else the scene's parent folder)")
    parser.add_argument("--scene-name", help="scene name in the table (default: scene.json, else the folder name)")
    parser.add_argument("--figure-frames", type=int, default=schema_default("evaluate.figure_frames"), help="frames per query in the overlay figures")
    parser.add_argument("--device", default=schema_default("evaluate.device"), help="torch device for decoding latents (cpu, auto, cuda)")
    parser.add_argument("--out", required=True, help="output folder: metrics.parquet + figures/")
    add_protocol_arguments(parser)


def run(args) -> None:
    from pipeline.cli import run_stage

    if not args.autoencoder:
        raise UserError("--autoencoder is required (config key `evaluate.autoencoder`)")
    run_stage(evaluate, args, names={"scene_dir": "source", "scene": "scene_name"}, values={"protocol": protocol_from_args(args)},
              summary=lambda table: "\n".join(summary_lines(table)))
