"""Ground truth in the upstream annotation formats: COCO polygons and video state intervals.

The polygon filling is part of the ground-truth definition: upstream casts the coordinates of
`segmentation[0]` to int32 (truncation) and fills them with `cv2.fillPoly`; polygons of the
same label in one image are OR-ed. Using all polygons or rounding are explicit fixes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

COCO_RELATIVE = Path("annotations/train/_annotations.coco.json")
VIDEO_RELATIVE = Path("annotations/video_annotations.json")


def polygon_to_mask(
    polygon, height: int, width: int, *, round_coords: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """Fill one flat COCO polygon [x0, y0, x1, y1, ...] into a uint8 {0,1} mask (OR-ed into `out`)."""
    import cv2

    coords = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if round_coords:
        coords = np.rint(coords)
    pts = np.asarray(coords, dtype=np.int32)  # truncation toward zero, as upstream
    mask = np.zeros((height, width), dtype=np.uint8) if out is None else out
    if len(pts) > 0:
        cv2.fillPoly(mask, [pts], 1)
    return mask


def annotation_mask(
    segmentation, height: int, width: int, *, all_polygons: bool = False, round_coords: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Mask of one COCO annotation: `segmentation[0]` only (upstream) or every polygon, each filled alone."""
    if isinstance(segmentation, dict):
        raise UserError("COCO RLE segmentations are not supported; the protocol's ground truth is polygons")
    mask = np.zeros((height, width), dtype=np.uint8) if out is None else out
    polygons = segmentation if all_polygons else segmentation[:1]
    for poly in polygons:
        if all_polygons:
            # filled one at a time and OR-ed so overlapping polygons never cancel out
            mask |= polygon_to_mask(poly, height, width, round_coords=round_coords)
        else:
            polygon_to_mask(poly, height, width, round_coords=round_coords, out=mask)
    return mask


def frame_index(file_name: str, offset: int = -1) -> int:
    """Annotation frame (0-based source index) from a Roboflow name like `000007_png.rf.<tag>.jpg`."""
    head = Path(file_name).name.split("_")[0]
    try:
        return int(head) + offset
    except ValueError:
        raise UserError(f"annotation image {file_name!r} does not start with a frame number followed by '_'") from None


@dataclass
class AnnotatedFrame:
    frame: int  # 0-based source frame index
    image_id: int
    file_name: str
    height: int
    width: int
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # label -> uint8 mask (state prompts included)


@dataclass
class SceneAnnotations:
    frames: list[AnnotatedFrame]  # in COCO `images` order (upstream evaluation order)
    labels: list[str]  # time-agnostic queries (category names that are annotated), first-seen order
    states: dict[str, dict[str, list[tuple[int, int]]]]  # base label -> state prompt -> inclusive intervals
    coco_path: Path
    video_path: Path | None

    @property
    def state_prompts(self) -> dict[str, str]:
        """State prompt -> its base label."""
        return {p: base for base, prompts in self.states.items() for p in prompts}


def load_video_annotations(path: str | Path) -> dict[str, dict[str, list[tuple[int, int]]]]:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"video annotations {p} are not readable JSON ({exc.__class__.__name__})") from None
    states: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for base, prompts in raw.items():
        if not isinstance(prompts, dict):
            raise UserError(f"{p}: {base!r} must map state prompts to [[l, r], ...] intervals")
        states[base] = {}
        for prompt, intervals in prompts.items():
            try:
                states[base][prompt] = [(int(lo), int(hi)) for lo, hi in intervals]
            except (TypeError, ValueError):
                raise UserError(f"{p}: intervals of {prompt!r} must be [[l, r], ...] (inclusive, 0-based)") from None
    return states


def in_intervals(frame: int, intervals) -> bool:
    return any(lo <= frame <= hi for lo, hi in intervals)


def load_scene_annotations(
    scene_dir: str | Path, *, frame_offset: int = -1, all_polygons: bool = False, round_polygons: bool = False,
    coco_path: str | Path | None = None, video_path: str | Path | None = None,
) -> SceneAnnotations:
    """Every annotated frame with its label masks, as upstream's `eval_gt_lerfdata` builds them."""
    scene_dir = Path(scene_dir)
    coco_p = Path(coco_path) if coco_path else scene_dir / COCO_RELATIVE
    if not coco_p.is_file():
        raise UserError(f"COCO annotations not found: {coco_p} (expected <scene>/{COCO_RELATIVE})")
    video_p = Path(video_path) if video_path else scene_dir / VIDEO_RELATIVE
    states = load_video_annotations(video_p) if video_p.is_file() else {}
    try:
        coco = json.loads(coco_p.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        images = coco["images"]
        annotations = coco["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{coco_p} is not a COCO annotation file ({exc.__class__.__name__}: {exc})") from None

    frames: list[AnnotatedFrame] = []
    by_id: dict[int, AnnotatedFrame] = {}
    for img in images:
        af = AnnotatedFrame(
            frame=frame_index(img["file_name"], frame_offset), image_id=int(img["id"]),
            file_name=str(img["file_name"]), height=int(img["height"]), width=int(img["width"]),
        )
        frames.append(af)
        by_id[af.image_id] = af
    labels: list[str] = []
    for ann in annotations:
        af = by_id.get(int(ann["image_id"]))
        if af is None:
            continue
        label = categories.get(int(ann["category_id"]))
        if label is None:
            raise UserError(f"{coco_p}: annotation {ann.get('id')} names unknown category {ann['category_id']}")
        seg = ann.get("segmentation") or []
        if not seg:
            continue
        mask = af.masks.setdefault(label, np.zeros((af.height, af.width), dtype=np.uint8))
        annotation_mask(seg, af.height, af.width, all_polygons=all_polygons, round_coords=round_polygons, out=mask)
        if label not in labels:
            labels.append(label)
    # a base label with state prompts lends its mask to each prompt: they are positives of that frame
    for af in frames:
        for base, prompts in states.items():
            if base in af.masks:
                for prompt in prompts:
                    af.masks[prompt] = af.masks[base]
    return SceneAnnotations(frames=frames, labels=labels, states=states, coco_path=coco_p,
                            video_path=video_p if video_p.is_file() else None)
