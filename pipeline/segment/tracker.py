"""Ids that stay the same over time: SAM 2 video propagation of automatic masks.

4DLangSplat ran DEVA in its semi-online mode: detect every k frames, track in between, and
start new objects only where no tracked object is. This does the same with SAM 2's own
memory: on every `detect_every`-th frame the automatic generator proposes masks per level;
a proposal that tracked objects of its level cover by less than `new_object_max_overlap`
starts a new object (a mask prompt), and all objects of all four levels are propagated
together (the image is encoded once per frame). An object missing on
`max_missed_detections` successive detection frames is dropped from tracking; its id is
never reused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pipeline.segment import LEVELS
from pipeline.segment.generator import MultiLevelMaskGenerator


@dataclass(frozen=True)
class TrackerSettings:
    """Tracking settings; defaults follow 4DLangSplat's DEVA run."""

    detect_every: int = 5  # DEVA detection_every
    working_size: int = 480  # short side the model sees (DEVA: 480); 0 = the frames' own size
    new_object_max_overlap: float = 0.5  # share of a proposal already tracked above which it is not new
    max_missed_detections: int = 5  # DEVA max_missed_detection_count
    max_objects: int = 200  # per level (DEVA max_num_objects)


@dataclass
class _Track:
    level: int
    raw_id: int
    missed: int = 0


def new_objects(proposals: torch.Tensor, tracked: torch.Tensor, max_overlap: float, room: int) -> list[int]:
    """Indices of proposals ([N,H,W] bool, best first) that start new objects.

    A proposal is new when less than `max_overlap` of it is covered by `tracked` ([H,W] bool,
    the union of tracked masks) or by proposals already accepted; at most `room` are taken.
    """
    covered = tracked.clone()
    picked: list[int] = []
    for i, mask in enumerate(proposals):
        if len(picked) >= room:
            break
        area = int(mask.sum())
        if area == 0 or int((mask & covered).sum()) >= max_overlap * area:
            continue
        picked.append(i)
        covered |= mask
    return picked


def paint_id_maps(level_of: list[int], raw_of: list[int], masks: torch.Tensor) -> np.ndarray:
    """[4,H,W] int32 id maps from per-object masks [N,H,W]; where objects overlap the smaller wins."""
    h, w = masks.shape[-2:]
    out = np.full((len(LEVELS), h, w), -1, dtype=np.int32)
    if len(level_of) == 0:
        return out
    level_t = torch.as_tensor(level_of, device=masks.device)
    raw_t = torch.as_tensor(raw_of, device=masks.device, dtype=torch.int32)
    area = masks.flatten(1).sum(1).float()
    for level in range(len(LEVELS)):
        pick = level_t == level
        if not pick.any():
            continue
        m = masks[pick]
        rank = torch.where(m, area[pick][:, None, None], torch.full_like(area[:1, None, None], float("inf")))
        winner = rank.argmin(0)
        ids = torch.where(m.any(0), raw_t[pick][winner], torch.full_like(winner, -1, dtype=torch.int32))
        out[level] = ids.cpu().numpy()
    return out


def track(
    tracker,
    jpeg_dir: str,
    num_frames: int,
    generator: MultiLevelMaskGenerator,
    settings: TrackerSettings,
    progress=None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (t, [4,h,w] int32 raw id maps) for every frame in order, at working resolution.

    `tracker` is a `Sam2Tracker`; `jpeg_dir` holds the working frames as 00000.jpg ...;
    `generator` wraps the same model and reuses the frame encoding the tracker computed.
    """
    device = tracker.device
    state = tracker.open_video(jpeg_dir, num_frames)
    tracks: dict[int, _Track] = {}
    counters = (itertools.count(), [itertools.count() for _ in LEVELS])  # object ids, raw ids per level
    at_keyframe: dict[int, torch.Tensor] = {}  # obj id -> mask on the coming detection frame

    for k in range(0, num_frames, settings.detect_every):
        _retire_lost(tracker, state, tracks, at_keyframe, settings)
        h, w = state["video_height"], state["video_width"]
        _detect_new(tracker, state, generator, k, tracks, at_keyframe, counters, settings)
        yield k, _paint(tracks, at_keyframe, (h, w), device)
        if progress is not None:
            progress.update(1)
        at_keyframe = yield from _propagate(tracker, state, k, num_frames, tracks, settings, progress)


def _retire_lost(tracker, state, tracks: dict[int, _Track], at_keyframe: dict, settings: TrackerSettings) -> None:
    """Count a miss for each track without pixels on this detection frame; drop those lost for too long."""
    for obj_id in list(tracks):
        mask = at_keyframe.get(obj_id)
        if mask is not None and bool(mask.any()):
            tracks[obj_id].missed = 0
            continue
        tracks[obj_id].missed += 1
        if tracks[obj_id].missed >= settings.max_missed_detections:
            tracker.remove_object(state, obj_id, need_output=False)
            del tracks[obj_id]
            at_keyframe.pop(obj_id, None)


def _detect_new(tracker, state, generator, k: int, tracks: dict[int, _Track], at_keyframe: dict, counters,
                settings: TrackerSettings) -> None:
    """Prompt the tracker with every proposal of frame k that the tracked objects of its level do not cover."""
    obj_counter, raw_counters = counters
    device = tracker.device
    h, w = state["video_height"], state["video_width"]
    if k not in state["cached_features"]:
        with torch.inference_mode():
            tracker._get_image_feature(state, k, 1)
    proposals = generator.from_backbone(state["cached_features"][k][1], h, w)
    for level, name in enumerate(LEVELS):
        coverage = torch.zeros((h, w), dtype=torch.bool, device=device)
        count = 0
        for obj_id, tr in tracks.items():
            if tr.level == level:
                count += 1
                if obj_id in at_keyframe:
                    coverage |= at_keyframe[obj_id]
        masks = proposals[name].masks.to(device)
        for i in new_objects(masks, coverage, settings.new_object_max_overlap, settings.max_objects - count):
            obj_id = next(obj_counter)
            tracker.prompt_mask(state, k, obj_id, masks[i])
            tracks[obj_id] = _Track(level=level, raw_id=next(raw_counters[level]))
            at_keyframe[obj_id] = masks[i]  # a mask prompt is its own output on the prompted frame


def _propagate(tracker, state, k: int, num_frames: int, tracks: dict[int, _Track], settings: TrackerSettings, progress):
    """Yield the frames after detection frame k up to the next one; return the masks on the next one."""
    h, w = state["video_height"], state["video_width"]
    next_k = k + settings.detect_every
    last = min(next_k, num_frames - 1)
    if last <= k:
        return {}
    if not tracks:
        for t in range(k + 1, min(next_k, num_frames)):
            yield t, paint_id_maps([], [], torch.zeros((0, h, w), dtype=torch.bool))
            if progress is not None:
                progress.update(1)
        return {}
    for t, obj_ids, logits in tracker.propagate_in_video(state, start_frame_idx=k + 1, max_frame_num_to_track=last - k - 1):
        tracker.forget_before(state, t)
        masks = logits[:, 0] > 0.0
        frame_masks = dict(zip(obj_ids, masks))
        if t == next_k:  # detection frame: new objects join before it is painted
            return frame_masks
        yield t, _paint(tracks, frame_masks, (h, w), tracker.device)
        if progress is not None:
            progress.update(1)
    return {}


def _paint(tracks: dict[int, _Track], masks: dict[int, torch.Tensor], hw, device) -> np.ndarray:
    ids = [o for o in masks if o in tracks]
    if not ids:
        return paint_id_maps([], [], torch.zeros((0, *hw), dtype=torch.bool, device=device))
    stacked = torch.stack([masks[o] for o in ids])
    return paint_id_maps([tracks[o].level for o in ids], [tracks[o].raw_id for o in ids], stacked)
