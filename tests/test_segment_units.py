"""The pieces of the segment stage that need no model: mask NMS, new-object rule, id maps."""

import numpy as np
import pytest
import torch
import zarr

from pipeline.segment import LEVELS
from pipeline.segment.mask_nms import mask_nms
from pipeline.segment.stage import working_shape
from pipeline.segment.tracker import new_objects, paint_id_maps
from pipeline.segment.writer import MaskWriter
from pipeline.store import create_group


def box(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_nms_drops_duplicates_by_rank():
    a = box(40, 40, 0, 20, 0, 20)
    a_shifted = box(40, 40, 0, 20, 1, 21)  # IoU 19/21 > 0.8 with a
    c = box(40, 40, 25, 40, 25, 40)
    masks = torch.stack([a_shifted, a, c])
    keep = mask_nms(masks, torch.tensor([0.8, 0.9, 0.75]))
    assert sorted(keep.tolist()) == [1, 2]  # the better-scored of the duplicates survives
    assert keep.tolist()[0] == 1  # best score first


def test_mask_nms_drops_masks_nested_in_a_much_larger_one_whatever_their_rank():
    big = box(40, 40, 0, 40, 0, 40)
    small = box(40, 40, 5, 15, 5, 15)  # fully inside big, covers 1/16 of it
    half = box(40, 40, 0, 40, 0, 20)  # inside big but covers half of it: not "much larger"
    for scores in (torch.tensor([0.9, 0.8, 0.85]), torch.tensor([0.8, 0.9, 0.85])):
        keep = mask_nms(torch.stack([big, small, half]), scores).tolist()
        assert 1 not in keep and 0 in keep
        assert 2 in keep


def test_mask_nms_score_threshold_keeps_three_best_when_none_pass():
    masks = torch.stack([box(60, 60, 0, 10, 12 * i, 12 * i + 10) for i in range(5)])
    scores = torch.tensor([0.1, 0.5, 0.3, 0.6, 0.2])
    assert mask_nms(masks, scores, score_thr=0.7).tolist() == [3, 1, 2]
    assert mask_nms(masks, scores, score_thr=0.25).tolist() == [3, 1, 2]
    assert mask_nms(masks[:0], scores[:0]).numel() == 0


def test_new_objects_only_where_nothing_is_tracked():
    tracked = box(20, 20, 0, 10, 0, 20)  # top half tracked
    proposals = torch.stack(
        [
            box(20, 20, 0, 8, 0, 8),  # inside the tracked area
            box(20, 20, 8, 16, 0, 8),  # 2/8 rows covered: new
            box(20, 20, 9, 17, 0, 8),  # mostly covered by the one just accepted
            box(20, 20, 12, 20, 10, 20),  # free: new
            box(20, 20, 0, 0, 0, 0),  # empty
        ]
    )
    assert new_objects(proposals, tracked, 0.5, room=10) == [1, 3]
    assert new_objects(proposals, tracked, 0.5, room=1) == [1]
    assert not tracked[12:].any()  # the caller's coverage is left alone


def test_paint_id_maps_smaller_object_wins_and_background_is_minus_one():
    big, small, other_level = box(10, 10, 0, 10, 0, 10), box(10, 10, 2, 4, 2, 4), box(10, 10, 0, 5, 0, 5)
    maps = paint_id_maps([2, 2, 3], [7, 4, 0], torch.stack([big, small, other_level]))
    assert maps.shape == (4, 10, 10) and maps.dtype == np.int32
    assert (maps[2][2:4, 2:4] == 4).all() and (maps[2][5:] == 7).all()
    assert (maps[3][:5, :5] == 0).all() and (maps[3][5:] == -1).all()
    assert (maps[:2] == -1).all()


def test_mask_writer_renumbers_densely_in_order_of_appearance(tmp_path):
    group = create_group(tmp_path / "m.zarr")
    writer = MaskWriter(group, num_frames=3, height=4, width=4)
    frames = []
    for t in range(3):
        maps = np.full((4, 4, 4), -1, dtype=np.int64)
        maps[1, :2] = 9  # level s: raw id 9 everywhere
        if t >= 1:
            maps[1, 2:] = 3  # raw 3 appears later: must get id 1 although 3 < 9
        maps[3, t, t] = 100 + t  # level l: a new raw id per frame
        frames.append(maps)
        writer.write(t, maps)
    table, remaps = writer.finish()
    stored = zarr.open_group(str(tmp_path / "m.zarr"))["masks"][:]
    assert remaps[1] == {9: 0, 3: 1} and remaps[3] == {100: 0, 101: 1, 102: 2}
    assert (stored[1, :, :2] == 0).all() and (stored[1, 1:, 2:] == 1).all() and (stored[1, 0, 2:] == -1).all()
    assert (stored[0] == -1).all()
    rows = table.set_index(["level", "id"])
    assert rows.loc[("s", 1)].tolist() == [1, 2, 2, 16]
    assert rows.loc[("s", 0)].tolist() == [0, 2, 3, 24]
    assert rows.loc[("l", 2)].tolist() == [2, 2, 1, 1]
    assert list(table["level"].unique()) == ["s", "l"]
    assert list(dict(zarr.open_group(str(tmp_path / "m.zarr"))["masks"].attrs)["levels"]) == list(LEVELS)


def test_mask_writer_refuses_missing_frames(tmp_path):
    writer = MaskWriter(create_group(tmp_path / "m.zarr"), num_frames=2, height=2, width=2)
    writer.write(0, np.full((4, 2, 2), -1))
    with pytest.raises(RuntimeError, match="never written"):
        writer.finish()


def test_working_shape_shrinks_short_side_and_never_enlarges():
    assert working_shape(960, 536, 480) == (860, 480)
    assert working_shape(96, 128, 480) == (96, 128)
    assert working_shape(1014, 1352, 0) == (1014, 1352)


class ScriptedTracker:
    """Stands in for Sam2Tracker to test the tracking bookkeeping: each prompted object moves
    one pixel right per frame, and object masks listed in `vanish` are empty from that frame on."""

    device = torch.device("cpu")

    def __init__(self, h, w, num_frames, vanish_after):
        self.h, self.w, self.num_frames, self.vanish_after = h, w, num_frames, vanish_after
        self.prompts, self.removed, self.forgotten = {}, [], []

    def open_video(self, jpeg_dir, num_frames):
        return {"video_height": self.h, "video_width": self.w, "cached_features": {0: (None, 0)}}

    def _get_image_feature(self, state, k, batch_size):
        state["cached_features"] = {k: (None, k)}

    def prompt_mask(self, state, k, obj_id, mask):
        self.prompts[obj_id] = (k, mask.clone())

    def remove_object(self, state, obj_id, need_output=True):
        self.removed.append(obj_id)
        del self.prompts[obj_id]

    def forget_before(self, state, t):
        self.forgotten.append(t)

    def propagate_in_video(self, state, start_frame_idx, max_frame_num_to_track):
        for t in range(start_frame_idx, start_frame_idx + max_frame_num_to_track + 1):
            state["cached_features"] = {t: (None, t)}
            ids = list(self.prompts)
            logits = torch.full((len(ids), 1, self.h, self.w), -10.0)
            for i, obj_id in enumerate(ids):
                k, mask = self.prompts[obj_id]
                if t < self.vanish_after.get(obj_id, 10**9):
                    logits[i, 0] = torch.roll(mask, t - k, dims=1).float() * 20 - 10
            yield t, ids, logits


class ScriptedProposals:
    def __init__(self, per_frame):
        self.per_frame = per_frame

    def from_backbone(self, k, h, w):
        from pipeline.segment.generator import LevelMasks

        out = {}
        for name in LEVELS:
            masks = self.per_frame.get(k, {}).get(name, [])
            stacked = torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.bool)
            out[name] = LevelMasks(masks=stacked, scores=torch.ones(len(masks)))
        return out


def test_tracking_keeps_ids_adds_new_objects_and_retires_lost_ones():
    from pipeline.segment.tracker import TrackerSettings, track

    h, w = 16, 16
    a, b = box(h, w, 0, 4, 0, 4), box(h, w, 10, 14, 0, 4)
    a_at_2, c = box(h, w, 0, 4, 2, 6), box(h, w, 6, 9, 8, 12)
    proposals = ScriptedProposals({0: {"l": [a, b]}, 2: {"l": [a_at_2, c]}})
    tracker = ScriptedTracker(h, w, 5, vanish_after={1: 2})  # object 1 (b) is lost from frame 2
    settings = TrackerSettings(detect_every=2, max_missed_detections=1)
    out = dict(track(tracker, "unused", 5, proposals, settings))
    assert sorted(out) == [0, 1, 2, 3, 4]
    level = LEVELS.index("l")
    for t in range(5):
        maps = out[t]
        assert (maps[:level] == -1).all()
        assert (maps[level][0:4, t : t + 4] == 0).all()  # a keeps id 0 while it moves
        assert set(np.unique(maps[level]).tolist()) == ({-1, 0, 1} if t < 2 else {-1, 0, 2})
    assert (out[1][level][10:14, 1:5] == 1).all()  # b tracked on the frame between detections
    assert (out[2][level][6:9, 8:12] == 2).all() and (out[4][level][6:9, 10:14] == 2).all()  # c joins on frame 2
    assert tracker.removed == [1]  # b retired; a_at_2 was not taken for a new object
    assert sorted(tracker.prompts) == [0, 2]
    assert tracker.forgotten == [1, 2, 3, 4]


def test_lazy_frames_match_sam2_video_loader(tmp_path):
    from PIL import Image
    from sam2.utils.misc import load_video_frames

    from pipeline.segment.sam2_model import LazyFrames

    rng = np.random.default_rng(0)
    for t in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / f"{t:05d}.jpg")
    images, height, width = load_video_frames(str(tmp_path), image_size=64, offload_video_to_cpu=True)
    lazy = LazyFrames(tmp_path, 2, 64)
    assert (height, width) == (30, 40) and len(lazy) == 2
    for t in range(2):
        assert torch.allclose(lazy[t], images[t].float(), atol=1e-6)
    with pytest.raises(IndexError):
        lazy[2]
