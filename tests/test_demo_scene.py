import json

import numpy as np
from PIL import Image

from pipeline.demo_scene import OBJECTS, make_demo_scene


def _read(path):
    return np.asarray(Image.open(path))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_demo_scene(tmp_path / "a", seed=3, num_frames=8)
    b = make_demo_scene(tmp_path / "b", seed=3, num_frames=8)
    c = make_demo_scene(tmp_path / "c", seed=4, num_frames=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "rgb/2x/000001.png").read_bytes() != (c / "rgb/2x/000001.png").read_bytes()


def test_layout_and_ground_truth(demo_scene):
    frames = sorted((demo_scene / "rgb/2x").glob("*.png"))
    assert len(frames) == 24 and frames[0].name == "000001.png"
    rgb = _read(frames[0])
    assert rgb.shape == (168, 224, 3) and rgb.shape[0] % 14 == 0 and rgb.shape[1] % 14 == 0
    objects = json.loads((demo_scene / "gt/objects.json").read_text())
    assert [o["name"] for o in objects] == [*OBJECTS.values(), "wooden floor", "wall"]
    inst = _read(demo_scene / "gt/instance/000001.png")
    assert set(np.unique(inst)) == {1, 2, 3, 4, 5, 6}  # every object in view; floor and wall cover the rest
    part = _read(demo_scene / "gt/part/000001.png")
    part_ids = {p["id"] for o in objects for p in o["parts"]}
    assert set(np.unique(part)) - {0} <= part_ids
    # parts nest inside their objects
    for o in objects:
        for p in o["parts"]:
            assert np.all(inst[part == p["id"]] == o["id"])
    depth = np.load(demo_scene / "gt/depth/000001.npy")
    assert depth.shape == inst.shape and np.all(depth > 0) and np.all(np.isfinite(depth))
    cams = json.loads((demo_scene / "gt/cameras.json").read_text())
    assert np.asarray(cams["extrinsics"]).shape == (24, 3, 4)


def test_depth_matches_cameras(demo_scene):
    """Unprojecting GT depth of frame 0 and reprojecting into frame 5 lands on the same object."""
    cams = json.loads((demo_scene / "gt/cameras.json").read_text())
    k = np.asarray(cams["intrinsics"][0])
    e0, e5 = (np.asarray(cams["extrinsics"][i]) for i in (0, 5))
    depth = np.load(demo_scene / "gt/depth/000001.npy")
    inst0, inst5 = _read(demo_scene / "gt/instance/000001.png"), _read(demo_scene / "gt/instance/000006.png")
    ys, xs = np.nonzero(inst0 == 3)  # the static green box
    pix = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs)], 0).astype(float)
    cam = np.linalg.inv(k) @ pix * depth[ys, xs]
    world = e0[:, :3].T @ (cam - e0[:, 3:])
    cam5 = e5[:, :3] @ world + e5[:, 3:]
    uv = (k @ cam5)[:2] / cam5[2]
    u, v = np.floor(uv).astype(int)
    inside = (u >= 0) & (u < inst5.shape[1]) & (v >= 0) & (v < inst5.shape[0])
    assert inside.mean() > 0.95
    assert (inst5[v[inside], u[inside]] == 3).mean() > 0.9  # occlusion can hide a little


def test_lamp_state_is_visible_and_annotated(demo_scene):
    inst_off, inst_on = _read(demo_scene / "gt/part/000001.png"), _read(demo_scene / "gt/part/000024.png")
    off, on = _read(demo_scene / "rgb/2x/000001.png"), _read(demo_scene / "rgb/2x/000024.png")
    shade_off = off[inst_off == 13].mean(0)
    shade_on = on[inst_on == 13].mean(0)
    assert shade_on.sum() > shade_off.sum() + 100  # the lit shade is much brighter
    video = json.loads((demo_scene / "annotations/video_annotations.json").read_text())
    (on_prompt, on_spans), (off_prompt, off_spans) = sorted(video["lamp"].items(), key=lambda kv: "off" in kv[0])
    assert on_spans == [[12, 23]] and off_spans == [[0, 11]]
    captions = json.loads((demo_scene / "gt/captions.json").read_text())
    assert "off" in captions["1"][0] and "on" in captions["1"][23] and len(captions["1"]) == 24


def test_coco_annotations_match_instance_masks(demo_scene):
    import cv2

    coco = json.loads((demo_scene / "annotations/train/_annotations.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert len(coco["images"]) == 12  # every second frame is annotated
    image = coco["images"][3]
    frame = int(image["file_name"].split("_")[0]) - 1  # the HyperNeRF convention
    inst = _read(demo_scene / "gt/instance" / f"{frame + 1:06d}.png")
    for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
        mask = np.zeros(inst.shape, np.uint8)
        cv2.fillPoly(mask, [np.asarray(ann["segmentation"][0], np.int32).reshape(-1, 2)], 1)
        obj_id = [k for k, v in names.items() if v == names[ann["category_id"]]][0]
        truth = inst == obj_id
        iou = (truth & (mask > 0)).sum() / (truth | (mask > 0)).sum()
        assert iou > 0.85, names[ann["category_id"]]
