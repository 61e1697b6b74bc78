"""Language for the scene's objects: each object's mean decoded feature, and names from a vocabulary."""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError


def object_features(render, masks_level, ids: list[int], decoder, *, level: str, per_frame: int, seed: int = 0):
    """id -> unit feature: the mean of the decoded render latents over (a sample of) the object's pixels."""
    import torch

    from pipeline.evaluate.encoders import decode_unit

    name = f"lang_{level}"
    if name not in render:
        raise UserError(f"render lacks {name}; has {sorted(render.array_keys())}")
    rng = np.random.default_rng(seed)
    T = min(render[name].shape[0], masks_level.shape[0])
    chunks: dict[int, list[np.ndarray]] = {k: [] for k in ids}
    for t in range(T):
        id_map = np.asarray(masks_level[t])
        lat = np.asarray(render[name][t], dtype=np.float32)
        if lat.shape[:2] != id_map.shape:
            import cv2

            id_map = cv2.resize(id_map.astype(np.float32), (lat.shape[1], lat.shape[0]), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        if float(lat.min()) > 0:  # decoder outputs in [0, 1]: the evaluation's remap to [-1, 1]
            lat = lat * 2 - 1
        for k in ids:
            ys, xs = np.nonzero(id_map == k)
            if len(ys) == 0:
                continue
            if len(ys) > per_frame:
                pick = rng.choice(len(ys), per_frame, replace=False)
                ys, xs = ys[pick], xs[pick]
            chunks[k].append(lat[ys, xs])
    feats = {}
    for k, parts in chunks.items():
        if not parts:
            continue
        f = decode_unit(decoder, torch.as_tensor(np.concatenate(parts))).mean(0)
        feats[k] = (f / f.norm().clamp_min(1e-12)).numpy()
    return feats


def text_vectors(space, texts: list[str]) -> np.ndarray:
    from pipeline.evaluate.encoders import encode_texts

    vecs = encode_texts(space, texts, query=False, what="clip")
    return np.stack([vecs.vectors[t] for t in texts]).astype(np.float32)


def load_object_features(render, autoencoder, masks_level, ids: list[int], *, level: str, per_frame: int, seed: int):
    """(id -> unit feature, the render's CLIP space); ({}, None) without a language field."""
    if render is None or autoencoder is None:
        return {}, None
    from pipeline.evaluate.encoders import load_autoencoder_decoder, parse_space
    from pipeline.store import open_group

    rgroup = open_group(render, what="render")
    decoder, ae_space, _ = load_autoencoder_decoder(autoencoder, config_key="autoencoder.clip", what="CLIP autoencoder")
    space = parse_space(dict(rgroup.attrs).get("clip_space")) or ae_space
    return object_features(rgroup, masks_level, ids, decoder, level=level, per_frame=per_frame, seed=seed), space


def name_objects(words: list[str], feats: dict, space, ids: list[int], gt_names: dict, note):
    """(id -> name, id -> score): the best vocabulary word, else the ground-truth name or `object <id>`."""
    names, name_scores = {}, {}
    if words and feats:
        vocab = text_vectors(space, words)
        for k, f in feats.items():
            sims = vocab @ f
            names[k], name_scores[k] = words[int(np.argmax(sims))], float(sims.max())
    elif words:
        note("a vocabulary is configured but there is no language field (render + autoencoder): objects named by id")
    for k in ids:
        names.setdefault(k, str(gt_names.get(k, f"object {k}")) if not words else f"object {k}")
    return names, name_scores
