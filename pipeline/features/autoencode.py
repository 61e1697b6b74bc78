"""Encode a features zarr with a trained autoencoder -> latents zarr (clip_latents / video_latents).

The latents keep the features' `rows` table, so they paint back to pixels through the same masks;
`features` becomes the unit-norm latents [N,3] / [N,6]. The autoencoder must have been trained
in the features' language space (checked when the checkpoint records one; converted upstream
checkpoints do not, and are accepted with a warning in the output attrs).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from pipeline.errors import UserError


def autoencode(
    features_path: str | os.PathLike,
    autoencoder_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    config_key: str = "autoencoder.clip.checkpoint",
    device: str = "auto",
) -> dict[str, Any]:
    from pipeline.features.artifacts import read_feature_table, write_feature_table
    from pipeline.features.autoencoder import encode_array, load_autoencoder
    from pipeline.features.text import describe_space, require_same_space, resolve_device
    from pipeline.store import file_sha256, provenance

    device = resolve_device(device)
    table = read_feature_table(features_path, what="features")
    model, meta = load_autoencoder(autoencoder_path, config_key=config_key, device=device)
    if model.input_dim != table.features.shape[1]:
        raise UserError(
            f"autoencoder {autoencoder_path} takes {model.input_dim}-d features but {features_path} holds "
            f"{table.features.shape[1]}-d ones ({describe_space(table.space)})"
        )
    notes = []
    if meta.get("space"):
        require_same_space(meta["space"], table.space, what=f"autoencoder {autoencoder_path} vs features {features_path}")
    else:
        notes.append("autoencoder records no language space (converted upstream checkpoint?); not checked")
    latents = encode_array(model, table.features, device=device)
    sha = file_sha256(autoencoder_path)
    prov = provenance(
        "autoencode",
        {"latent_dim": model.latent_dim},
        {"features": features_path},
        checkpoints={"autoencoder": autoencoder_path},
        extra={"space": table.space},
    )
    attrs = {"autoencoder": {"path": str(autoencoder_path), "sha256": sha, "encoder_dims": model.encoder_dims,
                             "decoder_dims": model.decoder_dims}, "notes": notes}
    write_feature_table(
        out_path, latents, np.asarray(table.rows[...]), levels=table.levels, space=table.space, provenance=prov, attrs=attrs
    )
    return {"out": str(out_path), "rows": int(len(latents)), "latent_dim": int(model.latent_dim), "notes": notes}


def add_arguments(parser) -> None:
    parser.add_argument("--features", required=True, help="clip_features.zarr or video_features.zarr")
    parser.add_argument("--autoencoder", required=True, help="autoencoder .safetensors")
    parser.add_argument("--out", required=True, help="clip_latents.zarr or video_latents.zarr to write")
    parser.add_argument("--config-key", default="autoencoder.clip.checkpoint", help="named in error messages")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (the rule's {threads})")
    parser.add_argument("--device", default="auto")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(autoencode, args, names={"features_path": "features", "autoencoder_path": "autoencoder", "out_path": "out"})
