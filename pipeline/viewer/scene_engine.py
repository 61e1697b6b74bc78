"""A relevancy engine in a scene's language space: the autoencoder its latents were made with and the
encoder its space names (as `python -m pipeline query` resolves them), or precomputed vectors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from pipeline.errors import UserError
from pipeline.evaluate.encoders import TextVectors, encode_texts, load_query_embeddings, parse_space
from pipeline.evaluate.protocol import Protocol
from pipeline.viewer.relevancy import RelevancyEngine


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _existing(path: str | None, scene_dir: Path) -> str | None:
    """A recorded (often workflow-relative) path, found from the cwd or the workflow folder."""
    if not path:
        return None
    p = Path(path)
    for cand in (p, scene_dir.parent.parent.parent / p):
        if cand.is_file():
            return str(cand)
    return str(p)


def engine_for_scene(scene_dir: str | Path, render, *, autoencoder: str | None = None,
                     video_autoencoder: str | None = None, query_embeddings: str | None = None,
                     protocol: Protocol = Protocol(), device: str = "cpu", cache_bytes: int = 4 << 30,
                     text_vectors: Callable[[list[str]], TextVectors] | None = None, log=_note) -> RelevancyEngine:
    """An engine in the scene's language space: the autoencoder its latents were made with and the
    encoder its space names (as `python -m pipeline query` resolves them), or precomputed vectors
    (an npz, or a `text_vectors` callable)."""
    from pipeline.evaluate.encoders import load_autoencoder_decoder, require_same_space
    from pipeline.evaluate.query import _autoencoder_from_scene, latents_autoencoder

    scene_dir = Path(scene_dir)
    attrs = dict(render.attrs)
    clip_space = parse_space(attrs.get("clip_space"))
    video_space = parse_space(attrs.get("video_space"))
    ae = autoencoder or _existing(_autoencoder_from_scene(scene_dir, attrs), scene_dir)
    if ae is None:
        raise UserError(f"no CLIP autoencoder recorded for {scene_dir}; pass --autoencoder (config key `evaluate.autoencoder`)")
    if autoencoder is None and not Path(ae).is_file():
        raise UserError(f"the CLIP autoencoder {ae} that {scene_dir}'s latents were made with is missing: run "
                        f"`snakemake --cores 2 {ae}` first, or pass --autoencoder")
    decoder, ae_space, _ = load_autoencoder_decoder(ae, config_key="evaluate.autoencoder", what="CLIP autoencoder", device=device)
    require_same_space(clip_space, ae_space, what="clip_space", other=f"the space of {ae}", log=log)
    clip_space = clip_space or ae_space
    video_decoder = None
    if "video" in render:
        vae = video_autoencoder or _existing(latents_autoencoder(scene_dir, "video"), scene_dir)
        if vae and Path(vae).is_file():
            video_decoder, vae_space, _ = load_autoencoder_decoder(vae, config_key="evaluate.video_autoencoder",
                                                       what="video autoencoder", device=device)
            require_same_space(video_space, vae_space, what="video_space", other=f"the space of {vae}", log=log)
            video_space = video_space or vae_space
    if text_vectors is not None:  # given vectors (benchmarks, notebooks)
        clip_fn, video_text_fn = text_vectors, None
    elif query_embeddings:
        clip_npz, video_npz = load_query_embeddings(query_embeddings)
        require_same_space(clip_space, clip_npz.space, what="clip_space", other=f"clip_space of {query_embeddings}", log=log)
        clip_fn = lambda texts: clip_npz  # noqa: E731  (only the npz's names can be asked)
        video_text_fn = (lambda texts: video_npz) if video_npz.vectors else None  # noqa: E731
    else:
        clip_fn = lambda texts: encode_texts(clip_space, texts, query=False, what="clip")  # noqa: E731
        video_text_fn = (lambda texts: encode_texts(video_space, texts, query=True, what="video")) if video_space else None  # noqa: E731
    return RelevancyEngine(render, decoder=decoder, text_vectors=clip_fn, protocol=protocol, device=device,
                           cache_bytes=cache_bytes, video_decoder=video_decoder, video_text_vectors=video_text_fn)
