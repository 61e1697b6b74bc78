"""Scene prompts in 3D: back-projection and boxes, the up axis, the BEV, markers, grounding scores,
answer normalisation, on hand-made inputs with known answers."""

import numpy as np
import pytest

from pipeline.scene3d import bev as bevmod
from pipeline.scene3d.answers import clean_answer, exact_match, object_refs, refined_match
from pipeline.scene3d.grounding import accuracy_at, box_iou, choose_objects, hungarian_f1
from pipeline.scene3d.lift import (FrameView, back_project, fit_box, lift_video, project, read_ply, voxel_downsample,
                                   write_ply)
from pipeline.scene3d.markers import draw_markers, frame_markers, interior_point, resize_nearest, sample_frames

K = np.array([[100.0, 0.0, 32.0], [0.0, 100.0, 24.0], [0.0, 0.0, 1.0]])


def rotation(axis, degrees):
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.array([[c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
                     [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
                     [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)]])


def test_back_projection_inverts_projection_under_a_rotated_camera():
    R, t = rotation([0, 1, 0], 30), np.array([0.3, -0.2, 1.0])
    E = np.concatenate([R, t[:, None]], 1)
    depth = np.full((48, 64), 2.0)
    ys, xs = np.nonzero(np.ones((48, 64), bool))
    world = back_project(depth, K, E, ys, xs)
    cam = world @ R.T + t
    assert np.allclose(cam[:, 2], 2.0)
    assert np.allclose(cam[:, 0], (xs + 0.5 - 32) / 100 * 2)
    uv, z = project(world, K, E)
    assert np.allclose(uv, np.stack([xs + 0.5, ys + 0.5], 1)) and np.allclose(z, 2.0)


def test_box_of_a_masked_square_at_known_depth():
    depth = np.full((48, 64), 4.0)
    ys, xs = np.mgrid[5:15, 10:20]
    pts = back_project(depth, K, np.eye(3, 4), ys.ravel(), xs.ravel())
    box = fit_box(pts)
    x0, x1 = (10.5 - 32) / 100 * 4, (19.5 - 32) / 100 * 4
    y0, y1 = (5.5 - 24) / 100 * 4, (14.5 - 24) / 100 * 4
    assert np.allclose(box, [(x0 + x1) / 2, (y0 + y1) / 2, 4.0, x1 - x0, y1 - y0, 0.0])
    trimmed = fit_box(np.concatenate([pts, [[50.0, 50.0, 50.0]]]), trim=0.02)
    assert trimmed[3] < 1.0  # one flying pixel does not stretch the box


def test_voxel_downsample_means_and_labels():
    pts = np.array([[0.01, 0.01, 0.01], [0.03, 0.03, 0.03], [0.51, 0.0, 0.0]], np.float32)
    cols = np.array([[0, 0, 0], [100, 100, 100], [10, 20, 30]], np.float32)
    labels = np.array([7, 8, 9], np.int32)
    p, c, l = voxel_downsample(pts, 0.1, cols, labels)
    order = np.argsort(p[:, 0])
    assert len(p) == 2
    assert np.allclose(p[order[0]], [0.02, 0.02, 0.02]) and np.allclose(c[order[0]], [50, 50, 50])
    assert l[order[0]] == 7 and l[order[1]] == 9


def test_lifting_tracks_a_moving_object_and_notes_empty_frames():
    h, w = 48, 64
    depth = np.full((h, w), 3.0, np.float32)
    rows, cols = np.arange(h), np.arange(w)
    maps = []
    for t in range(3):
        m = np.full((h, w), -1, np.int64)
        m[10:20, 5 + 15 * t : 15 + 15 * t] = 0  # moves right
        m[30:40, 40:50] = 1  # static
        maps.append(m)
    views = [FrameView(t, depth, K, np.eye(3, 4), np.ones((h, w), bool) if t < 2 else np.zeros((h, w), bool), rows, cols)
             for t in range(3)]
    lifted = lift_video(views, lambda t: np.full((h, w, 3), 90, np.uint8), lambda t: maps[t], voxel=0.05, trim=0.0)
    assert lifted.empty_frames == [2]
    assert sorted(lifted.frame_boxes[0]) == [0, 1]
    shift = lifted.frame_boxes[0][1][0] - lifted.frame_boxes[0][0][0]
    assert shift == pytest.approx(15 / 100 * 3, abs=1e-6)
    assert np.allclose(lifted.frame_boxes[1][0], lifted.frame_boxes[1][1])
    assert lifted.raw_points == 2 * h * w and len(lifted.points) < lifted.raw_points


def test_ply_round_trip(tmp_path):
    pts = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    cols = np.arange(30, dtype=np.uint8).reshape(10, 3)
    write_ply(tmp_path / "c.ply", pts, cols)
    p, c = read_ply(tmp_path / "c.ply")
    assert np.array_equal(p, pts) and np.array_equal(c, cols)


def _tilted_room(R):
    rng = np.random.default_rng(1)
    floor = np.c_[rng.uniform(-2, 2, (3000, 2)), np.zeros(3000)]
    wall = np.c_[rng.uniform(-2, 2, 800), np.full(800, 2.0), rng.uniform(0, 1.5, 800)]
    box = np.c_[rng.uniform(0, 0.5, (600, 2)), rng.uniform(0, 0.4, 600)]
    pts = np.concatenate([floor, wall, box]) @ R.T
    # cameras looking roughly horizontally, 20 degrees down, their up tilted away from the true up
    cams = []
    for yaw in (0, 20, 40):
        look = rotation([0, 0, 1], yaw) @ rotation([1, 0, 0], -20)
        # OpenCV camera axes in the room: x right, y down, z forward
        forward, right = look @ [0, 1, 0], look @ [1, 0, 0]
        down = np.cross(forward, right)
        cam_R = np.stack([right, down, forward]) @ R.T
        cams.append(np.concatenate([cam_R, (-cam_R @ (R @ [0, -3, 1.2]))[:, None]], 1))
    return pts, np.asarray(cams)


def test_up_axis_of_a_tilted_scene_is_recovered():
    R = rotation([1, 0.3, 0], 25)
    pts, cams = _tilted_room(R)
    true_up = R @ [0, 0, 1]
    up, how = bevmod.estimate_up(pts, cams, method="floor", threshold=0.02)
    assert how == "floor plane"
    assert np.degrees(np.arccos(np.clip(up @ true_up, -1, 1))) < 1.0
    cam_up, _ = bevmod.estimate_up(pts, cams, method="camera")
    assert np.degrees(np.arccos(np.clip(cam_up @ true_up, -1, 1))) < 25.0  # cameras look down: only roughly up


def test_bev_transform_and_z_buffer():
    up = np.array([0.0, 1.0, 0.0])
    E = np.array([np.concatenate([np.stack([[-1, 0, 0], [0, -1, 0], [0, 0, 1]]), np.zeros((3, 1))], 1)])
    R = bevmod.bev_basis(up, E)
    assert np.allclose(R[2], up) and np.isclose(np.linalg.det(R), 1.0)
    pts = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [-1.0, 0.0, -1.0]])
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    plan = bevmod.plan_bev(pts, R, size=64, ceiling_quantile=1.0, extent_quantile=0.0)
    img, zmap = bevmod.render_bev(pts, cols, plan, radius=0)
    u, v = np.floor(plan.to_pixel(pts[:1])[0]).astype(int)
    assert tuple(img[v, u]) == (0, 255, 0) and zmap[v, u] == pytest.approx(1.0)  # the higher point wins
    M, Minv = np.asarray(plan.world_to_pixel()), np.asarray(plan.pixel_to_world())
    uvh = M @ np.r_[pts[2], 1.0]
    assert np.allclose(Minv @ np.r_[uvh, 1.0], pts[2])
    u2, v2 = plan.to_pixel(pts[2:3])[0]
    assert v2 < v  # the camera looks along +z: farther points are higher in the image
    cut = bevmod.plan_bev(pts, R, size=64, ceiling_quantile=0.5, extent_quantile=0.0)
    img2, _ = bevmod.render_bev(pts, cols, cut, radius=0)
    u, v = np.floor(cut.to_pixel(pts[:1])[0]).astype(int)
    assert tuple(img2[v, u]) == (255, 0, 0)  # the "ceiling" point above the cut is gone


def test_markers_inside_their_masks_even_for_rings():
    ids = np.full((60, 80), -1, np.int64)
    yy, xx = np.mgrid[:60, :80]
    r = np.hypot(yy - 30, xx - 25)
    ids[(r > 10) & (r < 18)] = 4  # a ring: its centroid is outside it
    ids[5:50, 55:60] = 7
    ids[45:50, 55:78] = 7  # an L
    ids[0:2, 0:2] = 9  # too small for a marker
    marks = frame_markers(ids, [4, 7, 9], min_area=10)
    assert sorted(marks) == [4, 7]
    for k, (x, y) in marks.items():
        assert ids[y, x] == k
    assert interior_point(np.zeros((4, 4), bool)) is None
    drawn = draw_markers(np.zeros((60, 80, 3), np.uint8), marks)
    assert drawn.shape == (60, 80, 3) and drawn.any()


def test_resize_nearest_and_sampling():
    img = np.arange(1000 * 600 * 3, dtype=np.uint32).reshape(600, 1000, 3).astype(np.uint8)
    small, scale = resize_nearest(img, 512)
    assert max(small.shape[:2]) == 512 and scale == pytest.approx(0.512)
    assert set(np.unique(small)) <= set(np.unique(img))  # nearest: no new values
    same, s1 = resize_nearest(img[:100, :100], 512)
    assert s1 == 1.0 and same.shape == (100, 100, 3)
    assert sample_frames(200, 8) == [0, 28, 57, 85, 114, 142, 171, 199]
    assert sample_frames(5, 8) == [0, 1, 2, 3, 4]


def test_box_iou_accuracy_and_hungarian_f1():
    a = [0, 0, 0, 1, 1, 1]
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, [0.5, 0, 0, 1, 1, 1]) == pytest.approx(0.5 / 1.5)
    assert box_iou(a, [3, 0, 0, 1, 1, 1]) == 0.0
    assert box_iou(a, [0, 0, 0, 2, 2, 2]) == pytest.approx(1 / 8)
    assert accuracy_at([0.3, 0.6, 0.1, 0.25], 0.25) == 0.75
    assert accuracy_at([0.3, 0.6, 0.1, 0.25], 0.5) == 0.25
    g1, g2 = [0, 0, 0, 1, 1, 1], [0.6, 0, 0, 1, 1, 1]
    p1, p2 = [0.3, 0, 0, 1, 1, 1], [0.7, 0, 0, 1, 1, 1]
    # greedy would give p1 to g2 or g1 ambiguously; the best one-to-one matching pairs p1-g1, p2-g2
    assert hungarian_f1([p1, p2], [g1, g2], 0.25) == pytest.approx(1.0)
    assert hungarian_f1([p1, p2], [g1, g2], 0.9) == 0.0
    assert hungarian_f1([g1], [g1, g2], 0.5) == pytest.approx(2 / 3)
    assert hungarian_f1([], [], 0.5) == 1.0 and hungarian_f1([g1], [], 0.5) == 0.0
    assert choose_objects([0.1, 0.9, 0.87, 0.2], multi=False, margin=0.05, min_score=0) == [1]
    assert choose_objects([0.1, 0.9, 0.87, 0.2], multi=True, margin=0.05, min_score=0) == [1, 2]
    assert choose_objects([0.1, 0.2], multi=True, margin=0.05, min_score=0.5) == []


def test_answer_normalisation_and_exact_match():
    assert clean_answer("The Brown, wooden TABLE.") == "brown wooden table"
    assert clean_answer("There are 2 chairs") == "there are two chairs"
    assert clean_answer("a gray couch") == "grey sofa"
    assert clean_answer("1.5 metres") == "1.5 metres"
    assert exact_match("Two.", ["two", "2 chairs"]) and exact_match("2", ["two"])
    assert not exact_match("two chairs", ["two"])
    assert refined_match("two chairs", ["two"]) and refined_match("brown  table", ["the brown table by the wall"])
    assert not refined_match("red", ["blue"])
    assert object_refs("It is <OBJ003>, next to <OBJ012> and <OBJ003>.") == [3, 12]


def test_grounding_rows_score_chosen_boxes():
    from pipeline.scene3d.grounding import grounding_rows

    gt = {1: np.array([0, 0, 0, 1, 1, 1.0]), 2: np.array([5, 0, 0, 1, 1, 1.0])}
    cand_ids, cand_boxes = [10, 11, 12], [np.array([0.1, 0, 0, 1, 1, 1.0]), np.array([5, 0, 0, 1, 1, 1.0]),
                                          np.array([9, 9, 9, 1, 1, 1.0])]
    queries = [{"query": "a", "targets": [1]}, {"query": "b", "targets": [2]}, {"query": "both", "targets": [1, 2]},
               {"query": "none", "targets": []}]
    # objects x queries: "a" -> 10 (right), "b" -> 12 (wrong), "both" -> 10 and 11, "none" -> nothing above 0.5
    scores = np.array([[0.9, 0.1, 0.80, 0.2], [0.2, 0.3, 0.78, 0.1], [0.1, 0.8, 0.1, 0.3]])
    rows = grounding_rows(queries, gt, cand_ids, cand_boxes, scores, base={"dataset": "d", "scene": "s"},
                          margin=0.05, min_score=0.5)
    means = {r["metric"]: r["value"] for r in rows if r["aggregation"] == "query_mean"}
    assert means["Acc@0.25"] == 0.5 and means["Acc@0.5"] == 0.5
    assert means["F1@0.5"] == pytest.approx((1 + 0 + 1 + 1) / 4)
    assert means["chance_Acc@0.25"] == pytest.approx(1 / 3)
    notes = {r["query"]: r["note"] for r in rows if r["metric"] == "F1@0.5" and r["aggregation"] == "none"}
    assert notes == {"a": "chose <OBJ010>", "b": "chose <OBJ012>", "both": "chose <OBJ010>,<OBJ011>", "none": "chose none"}
