"""The demo chain through the command-line faces: demo scene -> frames -> (ground-truth masks) ->
gt-text CLIP-slot features, gt-captioned video features -> autoencoders -> latents.

The masks are built from the scene's ground truth the way a ground-truth segmentation backend
would (default = s = parts, m = l = objects, -1 background) and no objects.parquet is written,
so names come from overlap with the ground-truth maps.
"""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main as cli
from pipeline.features.artifacts import read_feature_table
from pipeline.features.autoencoder import decode_array, load_autoencoder
from pipeline.features.text import encode_texts
from pipeline.store import create_group, frame_array

T = 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from PIL import Image

    from pipeline.demo_scene import make_demo_scene
    from pipeline.frames import extract_frames

    root = tmp_path_factory.mktemp("demo")
    make_demo_scene(root / "src", num_frames=T)
    extract_frames("hypernerf", root / "src", root / "frames.zarr", root / "scene.json", scene="demo", dataset="demo",
                   progress=False)
    scene = json.loads((root / "scene.json").read_text())
    objects = json.loads((root / "src/gt/objects.json").read_text())
    part_ids = sorted(p["id"] for o in objects for p in o["parts"])
    masks = np.full((4, T, scene["height"], scene["width"]), -1, np.int32)
    for t, name in enumerate(scene["frame_names"]):
        inst = np.asarray(Image.open(root / "src/gt/instance" / f"{name}.png")).astype(np.int64)
        part = np.asarray(Image.open(root / "src/gt/part" / f"{name}.png")).astype(np.int64)
        parts = np.full(part.shape, -1, np.int32)
        for i, pid in enumerate(part_ids):
            parts[part == pid] = i
        objs = np.where(inst > 0, inst - 1, -1).astype(np.int32)  # lamp (gt 1) -> id 0, red cup (gt 4) -> id 3
        masks[:, t] = np.stack([parts, parts, objs, objs])
    g = create_group(root / "masks.zarr")
    frame_array(g, "masks", masks.shape, "int32", frame_axis=1, fill_value=-1)[...] = masks
    g.attrs.update({"levels": ["default", "s", "m", "l"], "provenance": {"stage": "segment", "digest": "gt-test"}})
    return root, scene, masks


def test_demo_features_and_autoencoders(demo, capsys):
    root, scene, masks = demo
    r = str(root)
    assert cli(["clip-features", "--frames", f"{r}/frames.zarr", "--masks", f"{r}/masks.zarr", "--out",
                f"{r}/clip_features.zarr", "--backend", "gt-text", "--scene-json", f"{r}/scene.json", "--no-progress"]) == 0
    assert cli(["video-features", "--frames", f"{r}/frames.zarr", "--masks", f"{r}/masks.zarr", "--out",
                f"{r}/video_features.zarr", "--captioner", "gt", "--scene-json", f"{r}/scene.json", "--no-progress"]) == 0

    clip = read_feature_table(root / "clip_features.zarr")
    rows = np.asarray(clip.rows[...])
    # time-agnostic query "lamp" retrieves the lamp (l-level id 0) over every other object
    q = encode_texts(clip.space, ["lamp", "red cup"], query=True, device="cpu")
    for t in range(T):
        sims = clip.features[rows[3, t, :4]] @ q.T
        assert sims[:, 0].argmax() == 0 and sims[:, 1].argmax() == 3

    video = read_feature_table(root / "video_features.zarr")
    captions = pd.read_parquet(root / "captions.parquet")
    assert sorted(captions["object_id"].unique()) == [0, 1, 2, 3, 4, 5]  # id 0 and the highest id (5, the wall) included
    gt = json.loads((root / "src/gt/captions.json").read_text())
    for rec in captions.itertuples():
        assert rec.caption == gt[str(rec.object_id + 1)][rec.source_index]
    vrows = np.asarray(video.rows[...])
    # the lamp's state feature switches exactly when the lamp does (frame T//2) and matches its caption
    lamp_rows = vrows[0, :, 0]
    assert len(set(lamp_rows[: T // 2])) == 1 and len(set(lamp_rows[T // 2 :])) == 1 and lamp_rows[0] != lamp_rows[-1]
    expected = encode_texts(video.space, [gt["1"][0], gt["1"][-1]], device="cpu")
    np.testing.assert_allclose(video.features[[lamp_rows[0], lamp_rows[-1]]], expected, atol=1e-5)

    for kind, feats, dims in (("clip", "clip_features", ["--encoder-dims", "64", "32", "3"]),
                              ("video", "video_features", ["--encoder-dims", "64", "32", "6"])):
        assert cli(["autoencoder-train", "--features", f"{r}/{feats}.zarr", "--out", f"{r}/{kind}_ae.safetensors",
                    "--kind", kind, *dims, "--decoder-dims", "32", "64", "384", "--epochs", "40", "--lr", "5e-3",
                    "--threads", "1", "--no-progress"]) == 0
        assert cli(["autoencode", "--features", f"{r}/{feats}.zarr", "--autoencoder", f"{r}/{kind}_ae.safetensors",
                    "--out", f"{r}/{kind}_latents.zarr", "--config-key", f"autoencoder.{kind}.checkpoint"]) == 0
    capsys.readouterr()

    # decoded CLIP latents still answer the query, as evaluation will use them
    lat = read_feature_table(root / "clip_latents.zarr")
    model, meta = load_autoencoder(root / "clip_ae.safetensors")
    assert lat.features.shape[1] == 3 and meta["space"]["name"] == "all-MiniLM-L6-v2"
    decoded = decode_array(model, lat.features)
    for t in range(T):
        assert (decoded[rows[3, t, :4]] @ q[0]).argmax() == 0
    vlat = read_feature_table(root / "video_latents.zarr")
    assert vlat.features.shape == (video.features.shape[0], 6)
    np.testing.assert_array_equal(np.asarray(vlat.rows[...]), vrows)
