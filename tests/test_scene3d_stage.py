"""The scene3d stage on the demo scene's ground truth (frames, gt masks, gt depth and cameras),
without a language field: boxes against the shipped GT boxes, markers, the BEV, bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.scene3d.grounding import box_iou
from pipeline.scene3d.lift import read_ply
from pipeline.scene3d.stage import Settings, build_scene


@pytest.fixture(scope="module")
def demo_inputs(demo_scene, tmp_path_factory):
    from pipeline.frames import extract_frames
    from pipeline.segment.stage import segment

    root = tmp_path_factory.mktemp("scene3d")
    shutil.copytree(demo_scene, root / "src")
    extract_frames("hypernerf", root / "src", root / "frames.zarr", root / "scene.json", scene="demo", dataset="demo",
                   progress=False)
    segment(root / "frames.zarr", root / "scene.json", root / "masks.zarr", root / "objects.parquet", root / "masks.png",
            backend="gt", progress=False)
    return root


def _build(root, out, **kw):
    paths = dict(frames=root / "frames.zarr", masks=root / "masks.zarr", objects=root / "objects.parquet",
                 scene_json=root / "scene.json", objects3d=out / "objects3d.parquet", cloud=out / "cloud.ply",
                 prompt_dir=out / "scene_prompt", metrics=out / "grounding.parquet")
    paths.update(kw.pop("paths", {}))
    logs = []
    manifest = build_scene(**paths, geometry_source="gt", progress=False, log=logs.append, **kw)
    return manifest, logs


def test_demo_boxes_markers_and_bev(demo_inputs, tmp_path):
    from PIL import Image

    settings = Settings(num_frames=8, bev_size=256, bev_windows=3, ceiling_quantile=1.0, bev_extent="objects", bev_margin=0.3)
    manifest, logs = _build(demo_inputs, tmp_path, settings=settings)
    objs = pd.read_parquet(tmp_path / "objects3d.parquet")
    seg = pd.read_parquet(demo_inputs / "objects.parquet")
    gt_of = dict(zip(seg[seg.level == "l"].id, seg[seg.level == "l"].gt_id))
    gt = json.loads((demo_inputs / "src/gt/boxes.json").read_text())["objects"]
    for r in objs.itertuples():
        if str(gt_of[r.id]) not in gt:
            continue  # floor and wall have no box
        box = [r.center_x, r.center_y, r.center_z, r.size_x, r.size_y, r.size_z]
        assert box_iou(box, gt[str(gt_of[r.id])]["box"]) > 0.3, r.name  # visible surfaces of the true box
    ball = objs[objs.id == next(k for k, g in gt_of.items() if g == 2)].iloc[0]
    assert ball.moving and len(ball.frames_visible) == len(ball.frame_boxes) > 10
    assert not objs[objs.id == next(k for k, g in gt_of.items() if g == 3)].iloc[0].moving  # the green box stays
    floor = objs[objs.id == next(k for k, g in gt_of.items() if g == 5)].iloc[0]
    assert floor.background and not floor.moving  # its visible part shifts with the camera, yet it stays
    # up is the demo world's +y (floor plane), recovered from the data
    assert np.degrees(np.arccos(np.clip(np.dot(manifest["up"], [0, 1, 0]), -1, 1))) < 1.0
    assert manifest["up_from"] == "floor plane"
    assert "ground-truth depth and cameras" in manifest["geometry"]
    assert "ground-truth" in manifest["provenance"]["geometry"]
    # images: BEV, 3 window BEVs, then 8 frames; markers inside their masks; ids agree everywhere
    order = manifest["scene_anno"]["demo"]
    assert order[0] == "bev.png" and len(order) == 1 + 3 + 8
    import zarr

    masks = zarr.open_group(str(demo_inputs / "masks.zarr"), mode="r")["masks"]
    bev_ids = set(manifest["images"][0]["markers"])
    assert bev_ids <= {f"{k}" for k in objs.id[np.isfinite(objs.center_x)]}
    assert {str(k) for k in objs.id[~objs.background]} <= bev_ids  # every object in the framed area
    for im in manifest["images"]:
        assert (tmp_path / "scene_prompt" / im["file"]).is_file()
        if im["kind"] != "frame":
            continue
        id_map = np.asarray(masks[3, im["frame"]])
        assert im["markers"]
        for k, (x, y) in im["markers"].items():
            assert id_map[y, x] == int(k)
            assert k in manifest["legend"] or f"{int(k):03d}" in manifest["legend"]
    ball_key = str(ball.id)
    windows = [im for im in manifest["images"] if im["kind"] == "bev_window"]
    xs = [im["markers"][ball_key][0] for im in windows if ball_key in im["markers"]]
    assert len(xs) == 3 and abs(xs[-1] - xs[0]) > 20  # the rolling ball is drawn where it is in each window
    assert Image.open(tmp_path / "scene_prompt/contact_sheet.png").size[0] > 0
    assert "<OBJ" in (tmp_path / "scene_prompt/prompt.txt").read_text()
    pts, cols = read_ply(tmp_path / "cloud.ply")
    assert len(pts) == manifest["points"]["downsampled"] < manifest["points"]["raw"]
    # without a language field: grounding is a note in the table, not an error
    table = pd.read_parquet(tmp_path / "grounding.parquet")
    assert list(table.metric) == ["grounding_not_evaluated"]


def test_bad_input_gives_notes_not_crashes(demo_inputs, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(demo_inputs / "src", src)
    scene = json.loads((demo_inputs / "scene.json").read_text())
    scene["gt"]["depth_dir"] = str(src / "gt/depth")
    for name in ("000003.npy", "000004.npy"):
        (src / "gt/depth" / name).unlink()  # frames 2 and 3 have no depth
    inst = np.stack([np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(src / "gt/instance" / f"{i:06d}.png"))
                     for i in range(1, 25)])
    for i in range(1, 25):  # the red cup (object 4) never has valid depth
        p = src / "gt/depth" / f"{i:06d}.npy"
        if p.is_file():
            d = np.load(p)
            d[inst[i - 1] == 4] = 0.0
            np.save(p, d)
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    manifest, logs = _build(demo_inputs, tmp_path, paths={"scene_json": tmp_path / "scene.json"}, settings=Settings(bev_size=64))
    assert any("2 frame(s) without valid depth" in n and "[2, 3]" in n for n in manifest["notes"])
    assert any("no valid 3D points" in n for n in manifest["notes"])
    assert any("no valid 3D points" in line for line in logs)
    objs = pd.read_parquet(tmp_path / "objects3d.parquet")
    assert objs.center_x.isna().sum() == 1

    # no objects at the large level
    seg = pd.read_parquet(demo_inputs / "objects.parquet")
    seg[seg.level != "l"].to_parquet(tmp_path / "no_l.parquet")
    out = tmp_path / "empty"
    manifest, _ = _build(demo_inputs, out, paths={"objects": tmp_path / "no_l.parquet"}, settings=Settings(bev_size=64))
    assert any("no objects at the `l` level" in n for n in manifest["notes"])
    assert manifest["legend"] == {} and len(pd.read_parquet(out / "objects3d.parquet")) == 0

    with pytest.raises(UserError, match=r"`scene3d.vocabulary`.*missing.txt"):
        _build(demo_inputs, tmp_path / "v", vocabulary=str(tmp_path / "missing.txt"))


def test_command_line_reports_a_missing_vocabulary_in_one_line(demo_inputs, tmp_path, capsys):
    from pipeline.__main__ import main

    r = demo_inputs
    code = main(["scene3d", "--frames", str(r / "frames.zarr"), "--masks", str(r / "masks.zarr"), "--objects",
                 str(r / "objects.parquet"), "--scene-json", str(r / "scene.json"), "--geometry-source", "gt",
                 "--vocabulary", str(tmp_path / "words.txt"), "--objects3d", str(tmp_path / "o.parquet"), "--cloud",
                 str(tmp_path / "c.ply"), "--prompt-dir", str(tmp_path / "p"), "--metrics", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: config error at `scene3d.vocabulary`") and "words.txt" in err[0]
    assert not (tmp_path / "o.parquet").exists()
