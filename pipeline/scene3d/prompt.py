"""The scene prompt's images: the BEV (and per-window BEVs) with object markers, marked frames,
the contact sheet and prompt.txt; markers carry the same id in every image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.scene3d import bev as bevmod
from pipeline.scene3d.lift import union_box
from pipeline.scene3d.markers import contact_sheet, draw_markers, frame_markers, resize_nearest, sample_frames


@dataclass
class SceneObjects:
    """The objects of one scene as the prompt shows them."""

    ids: list[int]
    boxes: dict[int, np.ndarray]
    names: dict[int, str]
    name_scores: dict[int, float]
    moving: dict[int, bool]
    background: set[int]
    tracks: dict[int, dict[int, np.ndarray]]

    def legend(self) -> dict:
        return {f"{k:03d}": {"name": self.names[k], "score": self.name_scores.get(k),
                             "box": None if k not in self.boxes else [round(float(v), 4) for v in self.boxes[k]],
                             "moving": self.moving[k]} for k in self.ids}


def plan_scene_bev(lifted, cams, objs: SceneObjects, s, note):
    """(BEV plan, up vector, how the up axis was found), framed by the cloud or by the objects."""
    up, how = bevmod.estimate_up(lifted.points, cams, method=s.up_axis, threshold=2 * max(lifted.voxel, 1e-6), seed=s.seed)
    rotation = bevmod.bev_basis(up, cams)
    framing = lifted.points
    if s.bev_extent == "objects":
        fg = [k for k in objs.boxes if k not in objs.background]
        if fg:
            framing = lifted.points[np.isin(lifted.labels, fg)]
        else:
            note("bev_extent `objects`: no object smaller than the scene to frame the BEV with; the whole cloud frames it")
    plan = bevmod.plan_bev(lifted.points, rotation, size=s.bev_size, ceiling_quantile=s.ceiling_quantile,
                           extent_quantile=s.extent_quantile, margin=s.bev_margin, framing=framing)
    return plan, up, how


def _bev_markers(plan, boxes: dict) -> dict[int, tuple[float, float]]:
    """id -> BEV pixel of its box centre, for the boxes (None: skipped) whose centre falls inside the image."""
    marks = {}
    for k, box in boxes.items():
        if box is None:
            continue
        u, v = plan.to_pixel(box[None, :3])[0]
        if 0 <= u < plan.width and 0 <= v < plan.height:
            marks[k] = (float(u), float(v))
    return marks


def _save(tmp, fname: str, img: np.ndarray, entry: dict, label: str, images: list, sheet: list) -> None:
    from PIL import Image

    Image.fromarray(img).save(tmp / fname)
    images.append({"file": fname, **entry})
    sheet.append((label, img))


def _rounded(marks: dict) -> dict:
    return {str(k): [round(x, 1), round(y, 1)] for k, (x, y) in marks.items()}


def write_bevs(tmp, lifted, plan, objs: SceneObjects, s, T: int, images: list, sheet: list) -> None:
    """bev.png over the whole video, then `bev_windows` BEVs: static points plus the window's moving ones."""
    bev_img, _ = bevmod.render_bev(lifted.points, lifted.colors, plan, radius=s.splat_radius)
    marks = _bev_markers(plan, objs.boxes)
    _save(tmp, "bev.png", draw_markers(bev_img, marks), {"kind": "bev", "frames": [0, T - 1], "markers": _rounded(marks)},
          "BEV", images, sheet)
    if s.bev_windows <= 0 or T <= 1:
        return
    static = ~np.isin(lifted.labels, [k for k in objs.ids if objs.moving[k]])
    bounds = np.linspace(0, T, s.bev_windows + 1).round().astype(int)
    for w in range(s.bev_windows):
        a, b = int(bounds[w]), int(bounds[w + 1]) - 1
        if b < a:
            continue
        sel = static | ((lifted.frames >= a) & (lifted.frames <= b))
        wimg, _ = bevmod.render_bev(lifted.points[sel], lifted.colors[sel], plan, radius=s.splat_radius)
        boxes = {k: union_box([objs.tracks[k][t] for t in objs.tracks.get(k, {}) if a <= t <= b]) if objs.moving[k]
                 else objs.boxes.get(k) for k in objs.ids}
        marks = _bev_markers(plan, boxes)
        _save(tmp, f"bev_window_{w:02d}.png", draw_markers(wimg, marks),
              {"kind": "bev_window", "frames": [a, b], "markers": _rounded(marks)}, f"BEV {a}-{b}", images, sheet)


def write_marked_frames(tmp, rgb, masks_level, ids: list[int], s, T: int, images: list, sheet: list) -> None:
    """`num_frames` uniformly sampled frames with each object's marker at an interior point."""
    from PIL import Image

    for t in sample_frames(T, s.num_frames):
        frame, scale = resize_nearest(np.asarray(rgb[t]), s.max_side)
        id_map = np.asarray(masks_level[t])
        if scale < 1.0:
            id_map = np.asarray(Image.fromarray(id_map.astype(np.int32)).resize((frame.shape[1], frame.shape[0]), Image.NEAREST))
        marks = frame_markers(id_map, ids, min_area=max(1, int(round(s.min_marker_area * scale * scale))))
        _save(tmp, f"frame_{t:04d}.png", draw_markers(frame, marks),
              {"kind": "frame", "frame": int(t), "markers": {str(k): list(p) for k, p in marks.items()}},
              f"frame {t}", images, sheet)


def write_prompt_images(tmp, lifted, plan, objs: SceneObjects, rgb, masks_level, s, T: int) -> list[dict]:
    """Every image, contact_sheet.png and prompt.txt into `tmp`; the manifest's image entries."""
    from PIL import Image

    images: list[dict] = []
    sheet: list[tuple[str, np.ndarray]] = []
    write_bevs(tmp, lifted, plan, objs, s, T, images, sheet)
    write_marked_frames(tmp, rgb, masks_level, objs.ids, s, T, images, sheet)
    Image.fromarray(contact_sheet(sheet)).save(tmp / "contact_sheet.png")
    frames = [i for i in images if i["kind"] == "frame"]
    (tmp / "prompt.txt").write_text(prompt_text(len(frames), [i for i in images if i["kind"] != "frame"], objs.legend()))
    return images


def prompt_text(num_frames: int, bevs: list[dict], legend: dict) -> str:
    lines = [
        f"You see {len(bevs)} bird's-eye view image(s) of a 3D scene reconstructed from a video, then {num_frames} "
        "frames sampled uniformly from the video.",
        "Objects carry numbered markers; the same number is the same object in every image.",
        "Refer to an object as <OBJ###> with its three-digit number, e.g. <OBJ001>.",
    ]
    if legend:
        lines.append("Objects: " + ", ".join(f"<OBJ{k}>" for k in legend) + ".")
    return "\n".join(lines) + "\n"
