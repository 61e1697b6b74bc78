"""Metric functions of the evaluation stage on hand-made cases with known answers."""

import numpy as np
import pytest
import torch

from pipeline.evaluate.coco import annotation_mask, frame_index, polygon_to_mask
from pipeline.evaluate.protocol import Protocol
from pipeline.evaluate.relevancy import (
    choose_level,
    iou,
    majority_smooth,
    masks_for_level,
    pixel_accuracy,
    relevancy_from_cosines,
    smooth_relevancy,
    stretch,
)
from pipeline.evaluate.temporal import frame_accuracy, score_state_prompt, temporal_smooth, video_iou
from conftest import shared_reference


# ----------------------------------------------------------------------------- IoU / accuracy
def test_iou_perfect_disjoint_and_partial():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    assert iou(a, a) == 1.0
    b = np.zeros_like(a)
    b[7:9, 7:9] = True
    assert iou(a, b) == 0.0
    c = np.zeros_like(a)
    c[2:6, 4:8] = True  # half overlap: 8 / 24
    assert iou(a, c) == pytest.approx(8 / 24)
    assert np.isnan(iou(np.zeros_like(a), np.zeros_like(a)))  # 0/0 as upstream's float division


def test_pixel_accuracy_counts_background_too():
    gt = np.zeros((10, 10), bool)
    gt[0:2, 0:5] = True
    assert pixel_accuracy(gt, gt) == 1.0
    assert pixel_accuracy(~gt, gt) == 0.0
    assert pixel_accuracy(np.zeros_like(gt), gt) == pytest.approx(0.9)


# ----------------------------------------------------------------------------- relevancy
def test_relevancy_is_softmax_against_hardest_negative():
    pos = torch.tensor([[0.3, 0.9]])
    neg = torch.tensor([[0.1, 0.25, -0.2]])
    rel = relevancy_from_cosines(pos, neg, temperature=10.0)
    # hardest negative is the one closest to the positive (0.25): sigmoid(10 * (p - 0.25))
    expected = 1.0 / (1.0 + np.exp(-10.0 * (np.array([0.3, 0.9]) - 0.25)))
    assert rel.shape == (1, 2)
    np.testing.assert_allclose(rel[0].numpy(), expected, rtol=1e-6)


def test_smoothing_is_half_average_half_raw_without_padding_counts():
    x = torch.zeros(9, 9)
    x[0, 0] = 1.0
    s = smooth_relevancy(x, kernel=3)
    # corner window holds 4 real pixels (count_include_pad=False): avg 1/4, then 0.5*(0.25 + 1)
    assert s[0, 0].item() == pytest.approx(0.625)
    assert s[1, 1].item() == pytest.approx(0.5 * (1 / 9))
    assert s[5, 5].item() == 0.0


def test_stretch_threshold_means_normalised_above_0_7():
    v = torch.linspace(0, 1, 101).reshape(1, 101)
    pre = stretch(v) > 0.4
    cut = int(torch.nonzero(pre[0])[0])
    assert v[0, cut].item() == pytest.approx(0.71, abs=1e-6)


def test_majority_is_strict_and_removes_speckles():
    m = torch.zeros(11, 11, dtype=torch.bool)
    m[5, 5] = True  # lone pixel vanishes
    m[0:4, 0:4] = True
    out = majority_smooth(m, kernel=3)
    assert not out[5, 5]
    assert out[1, 1] and out[0, 0]
    # exact half at a border gives 0: 3x2 window at the edge, 3 of 6 set
    e = torch.zeros(5, 5, dtype=torch.bool)
    e[:, 0] = True
    assert not majority_smooth(e, kernel=3)[2, 0]


def test_level_choice_uses_smoothed_peak_and_first_wins_ties():
    p = Protocol()
    sharp = torch.zeros(40, 40)
    sharp[20, 20] = 1.0  # high raw peak, low smoothed peak
    broad = torch.zeros(40, 40)
    broad[10:30, 10:30] = 0.8
    levels = [masks_for_level(sharp, p), masks_for_level(broad, p)]
    assert choose_level(levels, "smoothed_peak") == 1
    assert choose_level(levels, "raw_peak") == 0
    same = [masks_for_level(broad, p), masks_for_level(broad.clone(), p)]
    assert choose_level(same, "smoothed_peak") == 0


def test_iou_reads_majority_mask_and_video_reads_pre_mask():
    p = Protocol(smooth_kernel=1, majority_kernel=3)
    rel = torch.zeros(12, 12)
    rel[2:8, 2:8] = 1.0
    rel[10, 10] = 1.0  # speckle: in pre, removed by the majority
    lv = masks_for_level(rel, p)
    assert lv.pre[10, 10] and not lv.post[10, 10]
    assert lv.pre[2:8, 2:8].all()


# ----------------------------------------------------------------------------- COCO polygons
def test_polygon_truncation_vs_rounding():
    poly = [1.7, 1.7, 6.6, 1.7, 6.6, 6.6, 1.7, 6.6]
    trunc = polygon_to_mask(poly, 10, 10)
    rnd = polygon_to_mask(poly, 10, 10, round_coords=True)
    assert trunc.sum() == 36  # pixels 1..6 in each axis
    assert rnd.sum() == 36 and trunc[1, 1] == 1 and rnd[1, 1] == 0 and rnd[7, 7] == 1
    assert (trunc != rnd).any()


def test_only_first_polygon_by_default():
    a = [0, 0, 2, 0, 2, 2, 0, 2]
    b = [5, 5, 7, 5, 7, 7, 5, 7]
    first = annotation_mask([a, b], 10, 10)
    both = annotation_mask([a, b], 10, 10, all_polygons=True)
    assert first.sum() == 9 and both.sum() == 18
    assert first[6, 6] == 0 and both[6, 6] == 1


def test_frame_index_from_roboflow_names():
    assert frame_index("000007_png.rf.abc123.jpg") == 6
    assert frame_index("000007_png.rf.abc123.jpg", offset=0) == 7


# ----------------------------------------------------------------------------- time-sensitive
def test_temporal_smoothing_over_list_keeps_ends():
    out = temporal_smooth([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(out, [1.0, 0.2, 0.8, 0.0], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(temporal_smooth([0.3, 0.7]), [0.3, 0.7])


def test_state_prompt_neighbours_are_adjacent_annotated_frames():
    # annotations every second frame: frame 4's neighbours are frames 2 and 6, given unsorted
    frames = [6, 0, 4, 2]
    sims = [0.0, 1.0, 0.0, 1.0]  # frame -> sim: 0:1, 2:1, 4:0, 6:0
    sc = score_state_prompt(frames, sims, [0.5] * 4, [(0, 3)])
    np.testing.assert_array_equal(sc.frames, [0, 2, 4, 6])
    np.testing.assert_allclose(sc.smoothed, [1.0, 0.9, 0.1, 0.0], rtol=1e-6)
    assert sc.threshold == pytest.approx(0.5)
    np.testing.assert_array_equal(sc.pred, [True, True, False, False])
    np.testing.assert_array_equal(sc.label, [True, True, False, False])  # inside the inclusive [0, 3]
    assert sc.accuracy == 1.0 and sc.viou == pytest.approx(0.5)


def test_raw_mean_and_smoothed_mean_thresholds_differ():
    frames = [0, 1, 2, 3, 4]
    sims = [0.0, 0.0, 1.0, 0.0, 0.9]
    # smoothed: [0, 0.1, 0.8, 0.19, 0.9]; raw mean 0.38, smoothed mean 0.398
    raw_rule = score_state_prompt(frames, sims, [1.0] * 5, [(2, 2)], threshold_rule="raw_mean")
    smooth_rule = score_state_prompt(frames, sims, [1.0] * 5, [(2, 2)], threshold_rule="smoothed_mean")
    assert raw_rule.threshold == pytest.approx(0.38)
    assert smooth_rule.threshold == pytest.approx(0.398, abs=1e-6)
    np.testing.assert_array_equal(raw_rule.pred, [False, False, True, False, True])
    np.testing.assert_array_equal(raw_rule.pred, smooth_rule.pred)
    # with 0.39 in frame 3 the rules split: 0.8*0.39 + 0.1 + 0.09 = 0.502 vs thresholds
    sims2 = [0.0, 0.0, 1.0, 0.39, 0.9]
    a = score_state_prompt(frames, sims2, [1.0] * 5, [(2, 3)], threshold_rule="raw_mean")
    b = score_state_prompt(frames, sims2, [1.0] * 5, [(2, 3)], threshold_rule="smoothed_mean")
    assert a.threshold < b.threshold
    assert a.smoothed[3] >= a.threshold and a.smoothed[1] < b.threshold


def test_accuracy_and_viou_interval_logic():
    pred = [True, True, False, False, True]
    label = [True, False, False, True, True]
    ious = [0.5, 0.9, 0.7, 0.6, 1.0]
    assert frame_accuracy(pred, label) == pytest.approx(3 / 5)
    # union = frames 0,1,3,4 (4); both = 0 and 4 -> (0.5 + 1.0) / 4
    assert video_iou(pred, label, ious) == pytest.approx(1.5 / 4)
    assert np.isnan(video_iou([False], [False], [1.0]))


def test_label_from_several_inclusive_intervals():
    sc = score_state_prompt([0, 1, 2, 3, 4, 5], [1, 0, 0, 1, 1, 0], [1.0] * 6, [(0, 0), (3, 4)])
    np.testing.assert_array_equal(sc.label, [True, False, False, True, True, False])


# ----------------------------------------------------------------------------- depth
def test_depth_scale_alignment_recovers_scale_and_shift():
    from pipeline.evaluate.geometry_metrics import sequence_depth_metrics

    rng = np.random.default_rng(0)
    gts = [rng.uniform(1, 10, (8, 9)).astype(np.float32) for _ in range(3)]
    gts[0][0, 0] = 0.0  # invalid pixel
    preds = [g / 3.0 for g in gts]
    m = sequence_depth_metrics(preds, gts, align="scale")
    assert m["abs_rel"] < 1e-6 and m["delta_1.25"] == 1.0
    assert m["scale"] == pytest.approx(3.0, rel=1e-6) and m["valid_pixels"] == 3 * 72 - 1
    shifted = [g / 2.0 - 0.5 for g in gts]
    ss = sequence_depth_metrics(shifted, gts, align="scale_shift")
    assert ss["abs_rel"] < 1e-5 and ss["scale"] == pytest.approx(2.0, rel=1e-4) and ss["shift"] == pytest.approx(1.0, abs=1e-3)
    assert sequence_depth_metrics(shifted, gts, align="scale")["abs_rel"] > 0.01
    none = sequence_depth_metrics(preds, gts, align="none")
    assert none["abs_rel"] == pytest.approx(2 / 3, rel=1e-5) and none["delta_1.25"] == 0.0


def test_scale_fit_is_l1_robust_to_outliers():
    from pipeline.evaluate.geometry_metrics import fit_scale_l1

    g = np.linspace(1, 5, 101)
    p = g / 2.0
    p[:5] *= 40.0  # gross outliers
    mean_ratio = g.mean() / p.mean()  # where upstream's 10 Weiszfeld iterations start
    s = fit_scale_l1(p, g)
    assert abs(s - 2.0) < abs(mean_ratio - 2.0) / 10
    assert fit_scale_l1(p, g, iterations=100) == pytest.approx(2.0, rel=1e-3)


# ----------------------------------------------------------------------------- pose
def _random_rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_trajectory_equal_up_to_similarity_has_zero_errors():
    from pipeline.evaluate.geometry_metrics import trajectory_metrics

    rng = np.random.default_rng(1)
    ref = np.tile(np.eye(4), (20, 1, 1))
    for i in range(20):
        ref[i, :3, :3] = _random_rotation(rng)
        ref[i, :3, 3] = rng.normal(size=3)
    R, t, s = _random_rotation(rng), rng.normal(size=3), 2.7
    est = ref.copy()
    est[:, :3, :3] = R @ ref[:, :3, :3]
    est[:, :3, 3] = s * ref[:, :3, 3] @ R.T + t
    m = trajectory_metrics(est, ref)
    assert m["ate"] < 1e-9 and m["rpe_trans"] < 1e-9 and m["rpe_rot"] < 1e-5
    assert m["sim3_scale"] == pytest.approx(1 / s)


def test_camera_to_world_inverts_extrinsics():
    from pipeline.evaluate.geometry_metrics import camera_to_world

    rng = np.random.default_rng(2)
    R = _random_rotation(rng)
    C = np.array([1.0, 2.0, 3.0])
    ext = np.concatenate([R, (-R @ C)[:, None]], axis=1)[None]
    c2w = camera_to_world(ext)
    np.testing.assert_allclose(c2w[0, :3, 3], C, atol=1e-12)
    np.testing.assert_allclose(c2w[0, :3, :3], R.T, atol=1e-12)


# evo 1.38.1 (the tool the field's papers use), run once on the same associated pairs: poses from
# `ref`/`est` (quaternions reordered to wxyz), `est.align(ref, correct_scale=True)`, then the RMSE of
# APE translation_part, and of RPE translation_part / rotation_angle_deg (delta 1 frame); "ate_se3"
# aligns with correct_scale=False. Our implementation agreed to 1e-12 relative.
EVO = {
    "freiburg1_xyz-rgbdslam": dict(n=785, scale=1.0080013899313374, ate=0.013389384904168217,
                                   rpe_trans=0.00580569456312166, rpe_rot=0.3536131610447985, ate_se3=0.013470088849733695),
    "fr2_desk_ORB": dict(n=2174, scale=0.9969698308032563, ate=0.006123163030157291,
                         rpe_trans=0.0034850168908881897, rpe_rot=0.28051922626732667, ate_se3=0.008118977562045396),
}


def _second_method(ref_rows, est_rows):
    """ATE / RPE by another route than pipeline.evaluate.geometry_metrics: scipy's quaternions and
    Kabsch fit (Rotation.align_vectors), the Sim(3) scale in closed form given the rotation, relative
    poses from rotation transposes instead of 4x4 inverses, angles from rotation vectors."""
    from scipy.spatial.transform import Rotation

    Rr, Re = Rotation.from_quat(ref_rows[:, 3:7]), Rotation.from_quat(est_rows[:, 3:7])  # scipy: xyzw
    pr, pe = ref_rows[:, :3], est_rows[:, :3]
    xr, xe = pr - pr.mean(0), pe - pe.mean(0)
    rot, _ = Rotation.align_vectors(xr, xe)  # argmin sum |xr_i - R xe_i|^2
    scale = float(np.sum(xr * rot.apply(xe)) / np.sum(xe * xe))
    aligned_p = scale * rot.apply(pe) + (pr.mean(0) - scale * rot.apply(pe.mean(0)))
    aligned_R = rot * Re
    ate = np.sqrt(np.mean(np.sum((aligned_p - pr) ** 2, axis=1)))

    def relative(R, p):  # (R_i^T R_{i+1}, R_i^T (p_{i+1} - p_i))
        return R[:-1].inv() * R[1:], R[:-1].inv().apply(p[1:] - p[:-1])

    (A, a), (B, b) = relative(Rr, pr), relative(aligned_R, aligned_p)
    err_t = A.inv().apply(b - a)  # translation of (Q_i^-1 Q_j)^-1 (P_i^-1 P_j)
    err_rot = np.degrees((A.inv() * B).magnitude())
    return dict(scale=scale, ate=ate, rpe_trans=np.sqrt(np.mean(np.sum(err_t**2, axis=1))),
                rpe_rot=np.sqrt(np.mean(err_rot**2)))


@pytest.mark.parametrize("pair", ["freiburg1_xyz-rgbdslam", "fr2_desk_ORB"])
def test_real_tum_trajectories_match_evo_and_a_second_method(pair):
    from pipeline.evaluate.geometry_metrics import poses_from_tum, trajectory_metrics

    data = np.load(shared_reference("data", "tum", f"{pair}_associated.npz"))
    ref, est = poses_from_tum(data["ref"]), poses_from_tum(data["est"])
    m = trajectory_metrics(est, ref)
    evo, second = EVO[pair], _second_method(data["ref"], data["est"])
    assert m["n_poses"] == evo["n"]
    # float64 throughout: agreement to 1e-9 relative; a wrong alignment (SE(3) instead of Sim(3):
    # ATE off by 0.6% and 33%) or RPE convention would miss it by orders of magnitude
    for key in ("ate", "rpe_trans", "rpe_rot"):
        assert m[key] == pytest.approx(evo[key], rel=1e-9, abs=0), key
        assert second[key] == pytest.approx(evo[key], rel=1e-9, abs=0), key
    assert m["sim3_scale"] == pytest.approx(evo["scale"], rel=1e-9)
    assert second["scale"] == pytest.approx(evo["scale"], rel=1e-9)
    se3 = trajectory_metrics(est, ref, with_scale=False)
    assert se3["ate"] == pytest.approx(evo["ate_se3"], rel=1e-9)
    assert abs(se3["ate"] - m["ate"]) > 1e-3 * m["ate"]  # far beyond the tolerance: the alignments differ

    # ATE and RPE do not depend on where the estimate sits: a similarity moved copy gives the same numbers
    rng = np.random.default_rng(3)
    R, t, s = _random_rotation(rng), rng.normal(size=3) * 10, 0.37
    moved = est.copy()
    moved[:, :3, :3] = R @ est[:, :3, :3]
    moved[:, :3, 3] = s * est[:, :3, 3] @ R.T + t
    m2 = trajectory_metrics(moved, ref)
    for key in ("ate", "rpe_trans", "rpe_rot"):
        assert m2[key] == pytest.approx(m[key], rel=1e-8), key


def test_fast_box_filter_equals_torch_avgpool():
    from pipeline.evaluate.relevancy import _avg_pool, _avg_pool_reference

    g = torch.Generator().manual_seed(0)
    for shape, k in [((37, 53), 29), ((20, 9), 7), ((64, 64), 3)]:
        x = torch.rand(shape, generator=g)
        torch.testing.assert_close(_avg_pool(x, k), _avg_pool_reference(x, k), rtol=0, atol=2e-6)
    m = (torch.rand((30, 30), generator=g) > 0.5).float()
    # majority decisions on a binary mask agree exactly (window means are multiples of 1/count)
    assert torch.equal(_avg_pool(m, 7) > 0.5, _avg_pool_reference(m, 7) > 0.5)
