"""The gt segmentation backend: a hand-made HyperNeRF-layout gt folder and the built-in demo scene."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import zarr

from pipeline.errors import UserError
from pipeline.segment import LEVELS
from pipeline.segment.stage import segment
from pipeline.store import create_group, frame_array, read_provenance


def write_frames(path: Path, frames: np.ndarray) -> None:
    group = create_group(path)
    rgb = frame_array(group, "rgb", frames.shape, "uint8")
    rgb[:] = frames


def write_scene_json(path: Path, num_frames: int, height: int, width: int, gt: dict | None) -> None:
    names = [f"{i + 1:06d}" for i in range(num_frames)]
    scene = {
        "scene": "toy", "dataset": "test", "num_frames": num_frames, "height": height, "width": width,
        "fps": 10, "frame_names": names, "source_indices": list(range(num_frames)), "gt": gt,
    }  # fmt: skip
    path.write_text(json.dumps(scene))


def run_gt(tmp_path: Path, frames: np.ndarray, gt: dict | None):
    write_frames(tmp_path / "frames.zarr", frames)
    write_scene_json(tmp_path / "scene.json", *frames.shape[:3], gt)
    table = segment(
        tmp_path / "frames.zarr", tmp_path / "scene.json", tmp_path / "masks.zarr",
        tmp_path / "objects.parquet", tmp_path / "masks.png", backend="gt",
    )  # fmt: skip
    masks = zarr.open_group(str(tmp_path / "masks.zarr"), mode="r")["masks"]
    return table, masks


def check_invariants(masks: np.ndarray, table: pd.DataFrame) -> None:
    """-1 background, dense ids per level, and an object table that matches the array."""
    assert masks.dtype == np.int32 and masks.ndim == 4 and masks.shape[0] == len(LEVELS)
    assert masks.min() >= -1
    for level, name in enumerate(LEVELS):
        rows = table[table["level"] == name].set_index("id")
        present = sorted(set(np.unique(masks[level]).tolist()) - {-1})
        assert present == list(range(len(present))) == sorted(rows.index)
        for obj in present:
            frames = np.flatnonzero((masks[level] == obj).any(axis=(1, 2)))
            assert rows.loc[obj, "first_frame"] == frames[0] and rows.loc[obj, "last_frame"] == frames[-1]
            assert rows.loc[obj, "frames"] == len(frames)
            assert rows.loc[obj, "pixel_count"] == int((masks[level] == obj).sum())


@pytest.fixture
def toy_gt(tmp_path):
    """Three frames at 2x the stored size: a lamp (parts 11, 12) that moves right, a ball (part 21)
    that appears on frame 1, a cup (object 7, part 70) that only exists on frame 0."""
    big_h, big_w = 40, 48
    (tmp_path / "gt/instance").mkdir(parents=True)
    (tmp_path / "gt/part").mkdir(parents=True)
    for t in range(3):
        inst = np.zeros((big_h, big_w), np.uint16)
        part = np.zeros((big_h, big_w), np.uint16)
        x = 4 + 4 * t
        inst[4:24, x : x + 12], part[4:12, x : x + 12], part[12:24, x : x + 12] = 1, 11, 12
        if t >= 1:
            inst[28:36, 30:40], part[28:36, 30:40] = 2, 21
        if t == 0:
            inst[30:38, 2:10], part[30:38, 2:10] = 7, 70
        cv2.imwrite(str(tmp_path / f"gt/instance/{t + 1:06d}.png"), inst)
        cv2.imwrite(str(tmp_path / f"gt/part/{t + 1:06d}.png"), part)
    objects = [
        {"id": 1, "name": "lamp", "parts": [{"id": 11, "name": "lamp shade"}, {"id": 12, "name": "lamp pole"}]},
        {"id": 2, "name": "ball", "parts": [{"id": 21, "name": "ball"}]},
        {"id": 7, "name": "cup", "parts": [{"id": 70, "name": "cup"}]},
    ]
    (tmp_path / "gt/objects.json").write_text(json.dumps(objects))
    gt = {
        "instance_dir": str(tmp_path / "gt/instance"),
        "part_dir": str(tmp_path / "gt/part"),
        "objects": str(tmp_path / "gt/objects.json"),
    }
    frames = np.random.default_rng(0).integers(0, 255, (3, big_h // 2, big_w // 2, 3), dtype=np.uint8)
    return frames, gt


def test_gt_backend_levels_ids_and_names(tmp_path, toy_gt):
    frames, gt = toy_gt
    table, masks_arr = run_gt(tmp_path, frames, gt)
    masks = masks_arr[:]
    assert masks.shape == (4, 3, 20, 24)
    assert list(masks_arr.attrs["levels"]) == list(LEVELS)
    assert masks_arr.chunks == (1, 1, 20, 24)
    check_invariants(masks, table)
    # m and l are objects, default and s are parts
    assert (masks[2] == masks[3]).all() and (masks[0] == masks[1]).all()
    named = table.set_index(["level", "name"])
    assert set(table.loc[table["level"] == "l", "name"]) == {"lamp", "ball", "cup"}
    assert set(table.loc[table["level"] == "s", "name"]) == {"lamp shade", "lamp pole", "ball", "cup"}
    # ids follow first appearance: lamp and cup on frame 0 (by gt id), ball on frame 1
    assert named.loc[("l", "lamp"), "id"] == 0 and named.loc[("l", "cup"), "id"] == 1
    assert named.loc[("l", "ball"), "id"] == 2 and named.loc[("l", "ball"), "gt_id"] == 2
    assert named.loc[("l", "cup"), ["first_frame", "last_frame"]].tolist() == [0, 0]
    # the same object keeps its id: every lamp pixel (resized gt) carries the lamp's id on every frame
    lamp = named.loc[("l", "lamp"), "id"]
    for t in range(3):
        x = (4 + 4 * t) // 2
        assert (masks[3, t, 2:12, x : x + 6] == lamp).all()
        assert (masks[3, t, :2] == -1).all()  # background above the lamp
    # objects.parquet on disk is the returned table, with provenance
    on_disk = pd.read_parquet(tmp_path / "objects.parquet")
    pd.testing.assert_frame_equal(on_disk, table)
    prov = read_provenance(tmp_path / "objects.parquet")
    assert prov["stage"] == "segment" and prov["params"]["backend"] == "gt"
    assert read_provenance(tmp_path / "masks.zarr")["digest"] == prov["digest"]
    png = cv2.imread(str(tmp_path / "masks.png"))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 100


def test_gt_backend_without_gt_is_a_clear_error(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(UserError, match="gt.instance_dir.*sam2"):
        run_gt(tmp_path, frames, None)
    assert not (tmp_path / "masks.zarr").exists()


def test_gt_backend_missing_frame_file_names_it(tmp_path, toy_gt):
    frames, gt = toy_gt
    (Path(gt["part_dir"]) / "000002.png").unlink()
    with pytest.raises(UserError, match=r"frame 1 not found.*000002\.png"):
        run_gt(tmp_path, frames, gt)
    assert not (tmp_path / "masks.zarr").exists()  # nothing half-written in place


def test_unknown_backend(tmp_path):
    with pytest.raises(UserError, match="segment.backend"):
        segment(tmp_path / "f", tmp_path / "s", tmp_path / "m", tmp_path / "o", tmp_path / "p", backend="deva")


def test_gt_backend_on_the_demo_scene(tmp_path):
    """demo-scene -> frames stage -> segment --backend gt, as the workflow chains them."""
    from pipeline.demo_scene import make_demo_scene
    from pipeline.frames import extract_frames

    src = make_demo_scene(tmp_path / "demo", num_frames=8)
    names = sorted(p.name for p in (src / "rgb/2x").glob("*.png"))
    extract_frames("hypernerf", src, tmp_path / "frames.zarr", tmp_path / "scene.json", scene="demo", dataset="demo",
                   progress=False)  # fmt: skip
    table = segment(tmp_path / "frames.zarr", tmp_path / "scene.json", **{k: tmp_path / v for k, v in (
        ("out", "masks.zarr"), ("objects", "objects.parquet"), ("contact_sheet", "masks.png"))}, backend="gt")  # fmt: skip
    masks = zarr.open_group(str(tmp_path / "masks.zarr"), mode="r")["masks"][:]
    assert masks.shape[:2] == (4, 8)
    check_invariants(masks, table)
    objects = json.loads((src / "gt/objects.json").read_text())
    visible_objects = set(table.loc[table["level"] == "l", "name"])
    assert visible_objects <= {o["name"] for o in objects} and len(visible_objects) >= 3
    # stored ids map back to dataset ids pixel for pixel, on every frame
    for level in ("m", "s"):
        rows = table[table["level"] == level]
        lut = dict(zip(rows["id"], rows["gt_id"]))
        kind = "instance" if level == "m" else "part"
        for t, name in enumerate(names):
            raw = cv2.imread(str(src / "gt" / kind / name), cv2.IMREAD_UNCHANGED).astype(np.int64)
            stored = masks[LEVELS.index(level), t]
            mapped = np.vectorize(lambda i: lut.get(i, 0) if i >= 0 else 0)(stored)
            assert (mapped == raw).all()


def test_command_line(tmp_path, toy_gt, capsys):
    from pipeline.__main__ import main

    frames, gt = toy_gt
    write_frames(tmp_path / "frames.zarr", frames)
    write_scene_json(tmp_path / "scene.json", *frames.shape[:3], gt)
    common = ["segment", "--frames", str(tmp_path / "frames.zarr"), "--scene-json", str(tmp_path / "scene.json"),
              "--objects", str(tmp_path / "o.parquet"), "--contact-sheet", str(tmp_path / "m.png")]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "m.zarr"), "--backend", "gt"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["objects_per_level"] == {"default": 4, "s": 4, "m": 3, "l": 3}
    missing = tmp_path / "none.safetensors"
    assert main([*common, "--out", str(tmp_path / "x.zarr"), "--backend", "sam2", "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "segment.checkpoint" in err and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "x.zarr").exists()
