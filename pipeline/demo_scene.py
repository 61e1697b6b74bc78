"""Render the built-in synthetic dynamic scene, with its ground truth, in HyperNeRF layout.

A camera orbits a small set of named objects on a floor: a lamp that switches on half-way
(its shade and the floor around it light up), a blue ball that rolls and then rests, a
green box with a lid and a red cup. The renderer is an exact ray caster, so instance masks,
part masks and depth are ground truth by construction. Annotations are written in the
formats 4DLangSplat uses (COCO polygons, video_annotations.json), so the same reader and
evaluator serve this scene and real HyperNeRF scenes. Same seed, same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

WIDTH, HEIGHT = 224, 168  # multiples of the 14-pixel patch: frames go into the model unchanged
FOCAL = 200.0
ANNOTATE_EVERY = 2  # real annotations cover a subset of frames; so do ours


@dataclass(frozen=True)
class Part:
    part_id: int
    name: str
    shape: str  # "cylinder" | "sphere" | "box"
    params: tuple  # cylinder: (x, z, radius, y0, y1); sphere: (radius,); box: (x0, y0, z0, x1, y1, z1)
    colour: tuple[float, float, float]


OBJECTS = {1: "lamp", 2: "blue ball", 3: "green box", 4: "red cup"}  # annotated: the queries
# Regions every pixel belongs to when no object covers it, as a segmenter would return them;
# they are ground-truth masks with names and captions, but not annotated as queries.
BACKGROUND = {5: ("wooden floor", 51), 6: ("wall", 61)}
# The states are worded so the text embedder tells them apart: with all-MiniLM-L6-v2, "switched on"
# against "switched off" alone gives a caption-to-prompt margin of 0.03-0.04 in cosine, smaller than
# the shift that the floor pixels in a state prompt's relevancy mask cause when the chosen level
# changes between frames (up to 0.09); "glowing" / "dark and unlit" raise the margin to 0.17.
STATE_PROMPTS = {"lamp": ("the lamp is switched on and glowing", "the lamp is switched off and dark")}
STATE_CAPTIONS = {"lamp": ("a desk lamp switched on, glowing with bright light", "a desk lamp switched off, dark and unlit")}
# A lamp that is on lights itself: the shade glows and its light falls on the pole and base, so
# every part of the object shows its state (the state caption covers the whole object).
LAMP_ON_COLOURS = {11: (0.55, 0.48, 0.3), 12: (0.9, 0.8, 0.5), 13: (1.0, 0.88, 0.42)}


def _scene_parts(rng: np.random.Generator) -> tuple[list[tuple[int, Part]], dict]:
    jitter = lambda s: float(rng.uniform(-s, s))  # noqa: E731  (seed moves objects a little)
    lx, lz = -0.65 + jitter(0.05), 0.15 + jitter(0.05)
    bx0, bz = 0.45 + jitter(0.05), 0.35 + jitter(0.05)
    cx, cz = 0.0 + jitter(0.05), 0.55 + jitter(0.05)
    parts = [
        (1, Part(11, "lamp base", "cylinder", (lx, lz, 0.22, 0.0, 0.06), (0.25, 0.25, 0.28))),
        (1, Part(12, "lamp pole", "cylinder", (lx, lz, 0.06, 0.06, 0.6), (0.55, 0.55, 0.58))),
        (1, Part(13, "lamp shade", "cylinder", (lx, lz, 0.28, 0.6, 0.95), (0.62, 0.6, 0.52))),
        (2, Part(21, "blue ball", "sphere", (0.19,), (0.15, 0.3, 0.85))),
        (3, Part(31, "box body", "box", (bx0, 0.0, bz, bx0 + 0.38, 0.3, bz + 0.38), (0.2, 0.62, 0.25))),
        (3, Part(32, "box lid", "box", (bx0 - 0.02, 0.3, bz - 0.02, bx0 + 0.4, 0.36, bz + 0.4), (0.1, 0.42, 0.15))),
        (4, Part(41, "red cup", "cylinder", (cx, cz, 0.21, 0.0, 0.4), (0.85, 0.15, 0.12))),
    ]
    layout = {"lamp": (lx, lz), "ball_z": -0.35 + jitter(0.05), "ball_x": (-0.55, 0.6)}
    return parts, layout


def _ball_x(t: int, n: int, layout: dict) -> tuple[float, bool]:
    """The ball rolls in the middle half of the clip and rests before and after."""
    x0, x1 = layout["ball_x"]
    start, stop = n // 4, (3 * n) // 4
    u = np.clip((t - start) / max(1, stop - start), 0.0, 1.0)
    return float(x0 + (x1 - x0) * u), start <= t < stop


def _camera(t: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """World->camera rotation (OpenCV axes) and camera centre on an orbit around the objects."""
    angle = np.deg2rad(-35.0 + 70.0 * t / max(1, n - 1))
    centre = np.array([2.0 * np.sin(angle), 1.2, -2.0 * np.cos(angle)])
    target = np.array([0.0, 0.3, 0.15])
    forward = target - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward]), centre


def _intersect(part: Part, origin: np.ndarray, dirs: np.ndarray, ball_x: float, ball_z: float):
    """Nearest positive hit distance and world normal of rays against one primitive."""
    n = dirs.shape[0]
    t_hit = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    if part.shape == "sphere":
        (radius,) = part.params
        centre = np.array([ball_x, radius, ball_z])
        oc = origin - centre
        b = dirs @ oc
        c = oc @ oc - radius**2
        disc = b * b - c
        ok = disc > 0
        t = -b - np.sqrt(np.where(ok, disc, 0.0))
        ok &= t > 1e-6
        t_hit[ok] = t[ok]
        normal[ok] = (origin + t[ok, None] * dirs[ok] - centre) / radius
    elif part.shape == "cylinder":
        x, z, radius, y0, y1 = part.params
        ox, oz = origin[0] - x, origin[2] - z
        a = dirs[:, 0] ** 2 + dirs[:, 2] ** 2
        b = ox * dirs[:, 0] + oz * dirs[:, 2]
        c = ox**2 + oz**2 - radius**2
        disc = b * b - a * c
        ok = (disc > 0) & (a > 1e-12)
        t = (-b - np.sqrt(np.where(ok, disc, 0.0))) / np.where(a > 1e-12, a, 1.0)
        y = origin[1] + t * dirs[:, 1]
        side = ok & (t > 1e-6) & (y >= y0) & (y <= y1)
        t_hit[side] = t[side]
        hit = origin + t[side, None] * dirs[side]
        normal[side] = np.stack([hit[:, 0] - x, np.zeros(len(hit)), hit[:, 2] - z], 1) / radius
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (y1 - origin[1]) / dirs[:, 1]
        px = origin[0] + t_cap * dirs[:, 0] - x
        pz = origin[2] + t_cap * dirs[:, 2] - z
        cap = (t_cap > 1e-6) & (px**2 + pz**2 <= radius**2) & (t_cap < t_hit)
        t_hit[cap] = t_cap[cap]
        normal[cap] = [0.0, 1.0, 0.0]
    else:
        lo, hi = np.array(part.params[:3]), np.array(part.params[3:])
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / dirs
            t0 = (lo - origin) * inv
            t1 = (hi - origin) * inv
        tmin = np.nanmax(np.minimum(t0, t1), axis=1)
        tmax = np.nanmin(np.maximum(t0, t1), axis=1)
        ok = (tmax >= tmin) & (tmin > 1e-6)
        t_hit[ok] = tmin[ok]
        axis = np.argmax(np.minimum(t0, t1), axis=1)
        sign = -np.sign(dirs[np.arange(n), axis])
        normal[ok, axis[ok]] = sign[ok]
    return t_hit, normal


def render_frame(t: int, n: int, parts, layout, rng: np.random.Generator):
    """RGB uint8, object ids, part ids, depth, and the camera of frame t."""
    rot, centre = _camera(t, n)
    u, v = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    cam_dirs = np.stack([(u - WIDTH / 2) / FOCAL, (v - HEIGHT / 2) / FOCAL, np.ones_like(u)], -1).reshape(-1, 3)
    dirs = cam_dirs @ rot  # camera -> world (rot is world -> camera)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    ball_x, _ = _ball_x(t, n, layout)
    lamp_on = t >= n // 2

    count = dirs.shape[0]
    best_t = np.full(count, np.inf)
    best_normal = np.zeros((count, 3))
    obj_ids = np.zeros(count, np.int32)
    part_ids = np.zeros(count, np.int32)
    colour = np.zeros((count, 3))
    for obj_id, part in parts:
        t_hit, normal = _intersect(part, centre, dirs, ball_x, layout["ball_z"])
        closer = t_hit < best_t
        best_t[closer], best_normal[closer] = t_hit[closer], normal[closer]
        obj_ids[closer], part_ids[closer] = obj_id, part.part_id
        colour[closer] = LAMP_ON_COLOURS.get(part.part_id, part.colour) if (lamp_on and obj_id == 1) else part.colour

    # floor (a round table top) and a surrounding wall, both background
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[:, 1] < 0, -centre[1] / dirs[:, 1], np.inf)
    hit = centre + t_floor[:, None] * dirs
    on_floor = (t_floor < best_t) & (hit[:, 0] ** 2 + hit[:, 2] ** 2 < 3.5**2)
    fh = hit[on_floor]
    checker = (np.floor(fh[:, 0] * 4) + np.floor(fh[:, 2] * 4)) % 2 == 0
    floor_rgb = np.where(checker[:, None], [0.78, 0.66, 0.5], [0.66, 0.53, 0.38])
    lx, lz = layout["lamp"]
    shadow = np.ones(on_floor.sum())
    for obj_id, part in parts:  # soft contact shadows under objects
        if part.shape == "sphere":
            px, pz, r = ball_x, layout["ball_z"], part.params[0]
        elif part.shape == "cylinder":
            px, pz, r = part.params[0], part.params[1], part.params[2]
        else:
            px, pz = (part.params[0] + part.params[3]) / 2, (part.params[2] + part.params[5]) / 2
            r = (part.params[3] - part.params[0]) / 1.6
        d2 = ((fh[:, 0] - px - 0.08) ** 2 + (fh[:, 2] - pz - 0.05) ** 2) / (1.4 * r) ** 2
        shadow *= 1.0 - 0.35 * np.exp(-d2)
    floor_rgb = floor_rgb * shadow[:, None]
    if lamp_on:
        glow = 0.3 * np.exp(-((fh[:, 0] - lx) ** 2 + (fh[:, 2] - lz) ** 2) / 0.15)
        floor_rgb = floor_rgb + glow[:, None] * np.array([1.0, 0.8, 0.35])
    best_t[on_floor] = t_floor[on_floor]
    obj_ids[on_floor], part_ids[on_floor] = 5, BACKGROUND[5][1]
    colour[on_floor] = floor_rgb
    best_normal[on_floor] = [0.0, 1.0, 0.0]

    wall = ~np.isfinite(best_t)
    a = dirs[wall, 0] ** 2 + dirs[wall, 2] ** 2
    b = centre[0] * dirs[wall, 0] + centre[2] * dirs[wall, 2]
    c = centre[0] ** 2 + centre[2] ** 2 - 6.0**2
    best_t[wall] = (-b + np.sqrt(b * b - a * c)) / a
    wall_y = centre[1] + best_t[wall] * dirs[wall, 1]
    colour[wall] = np.array([0.72, 0.76, 0.8]) - 0.06 * np.clip(wall_y, 0, 3)[:, None]
    best_normal[wall] = 0.0
    obj_ids[wall], part_ids[wall] = 6, BACKGROUND[6][1]

    light = np.array([-0.4, 0.8, -0.45])
    light /= np.linalg.norm(light)
    lambert = np.clip(best_normal @ light, 0.0, 1.0)
    lit = np.where((np.abs(best_normal).sum(1) > 0)[:, None], colour * (0.45 + 0.6 * lambert[:, None]), colour)
    if lamp_on:
        lit[part_ids == 13] = colour[part_ids == 13]  # the lit shade glows evenly
    noise = rng.normal(0.0, 0.012, lit.shape)
    rgb = np.clip((lit + noise) * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(HEIGHT, WIDTH, 3)

    points_cam = (best_t[:, None] * dirs) @ rot.T
    depth = points_cam[:, 2].astype(np.float32).reshape(HEIGHT, WIDTH)
    return (
        rgb,
        obj_ids.reshape(HEIGHT, WIDTH),
        part_ids.reshape(HEIGHT, WIDTH),
        depth,
        (rot, centre),
    )


def object_boxes(t: int, n: int, parts, layout) -> dict[int, list[float]]:
    """Exact axis-aligned world box (centre xyz, size xyz) of each annotated object at frame t."""
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}
    ball_x, _ = _ball_x(t, n, layout)
    for obj_id, part in parts:
        if part.shape == "sphere":
            (r,) = part.params
            a, b = np.array([ball_x - r, 0.0, layout["ball_z"] - r]), np.array([ball_x + r, 2 * r, layout["ball_z"] + r])
        elif part.shape == "cylinder":
            x, z, r, y0, y1 = part.params
            a, b = np.array([x - r, y0, z - r]), np.array([x + r, y1, z + r])
        else:
            a, b = np.array(part.params[:3]), np.array(part.params[3:])
        lo[obj_id] = np.minimum(lo.get(obj_id, a), a)
        hi[obj_id] = np.maximum(hi.get(obj_id, b), b)
    return {k: [*((lo[k] + hi[k]) / 2).tolist(), *(hi[k] - lo[k]).tolist()] for k in sorted(lo)}


def _ground_truth_boxes(n: int, parts, layout, visible: dict[int, list[bool]]) -> dict:
    """gt/boxes.json: per object its box over the whole video (the union of its frame boxes) and per frame."""
    frames = [object_boxes(t, n, parts, layout) for t in range(n)]
    objects = {}
    for k, name in OBJECTS.items():
        boxes = np.asarray([f[k] for f in frames])
        lo = (boxes[:, :3] - boxes[:, 3:] / 2).min(0)
        hi = (boxes[:, :3] + boxes[:, 3:] / 2).max(0)
        objects[str(k)] = {
            "name": name,
            "box": [*((lo + hi) / 2).tolist(), *(hi - lo).tolist()],
            "frames": [f[k] for f in frames],
            "visible": visible[k],
        }
    return {"box_format": "centre xyz, size xyz; world frame of gt/cameras.json (y up)", "objects": objects}


# 3D grounding queries (ScanRefer / Multi3DRefer style): text -> ids of the objects it names
GROUNDING = [
    *({"query": name, "targets": [k]} for k, name in OBJECTS.items()),
    {"query": "the lamp and the blue ball", "targets": [1, 2]},
    {"query": "a grand piano", "targets": []},
]


def _state_captions(t: int, n: int, layout) -> dict[int, str]:
    _, rolling = _ball_x(t, n, layout)
    lamp_on, lamp_off = STATE_CAPTIONS["lamp"]
    lamp = lamp_on if t >= n // 2 else lamp_off
    ball = "a blue ball rolling across the floor" if rolling else "a blue ball lying still on the floor"
    return {
        1: lamp,
        2: ball,
        3: "a closed green box",
        4: "a red cup standing on the floor",
        5: "a wooden checkered floor",
        6: "a plain grey wall",
    }


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons, largest first."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted((c for c in contours if len(c) >= 3), key=cv2.contourArea, reverse=True)
    return [[float(v) for v in c.reshape(-1)] for c in contours]


def make_demo_scene(out: str | os.PathLike, *, seed: int = 0, num_frames: int = 24) -> Path:
    """Write the demo scene to `out` (atomically) and return its path."""
    from PIL import Image

    from pipeline.store import atomic_path

    if num_frames < 8:
        raise UserError(f"the demo scene needs at least 8 frames, got {num_frames}")
    rng = np.random.default_rng(seed)
    parts, layout = _scene_parts(rng)
    out = Path(out)
    with atomic_path(out) as tmp:
        for sub in ("rgb/2x", "camera", "gt/instance", "gt/part", "gt/depth", "annotations/train"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        ids = [f"{i + 1:06d}" for i in range(num_frames)]
        intrinsics, extrinsics, captions = [], [], {str(k): [] for k in [*OBJECTS, *BACKGROUND]}
        coco_images, coco_annotations = [], []
        visible: dict[int, list[bool]] = {k: [] for k in OBJECTS}
        category_ids = {name: k for k, name in OBJECTS.items()}
        for t, frame_id in enumerate(ids):
            rgb, obj, part, depth, (rot, centre) = render_frame(t, num_frames, parts, layout, rng)
            Image.fromarray(rgb).save(tmp / "rgb/2x" / f"{frame_id}.png")
            Image.fromarray(obj.astype(np.uint16)).save(tmp / "gt/instance" / f"{frame_id}.png")
            Image.fromarray(part.astype(np.uint16)).save(tmp / "gt/part" / f"{frame_id}.png")
            np.save(tmp / "gt/depth" / f"{frame_id}.npy", depth)
            for k in OBJECTS:
                visible[k].append(bool((obj == k).any()))
            camera = {  # HyperNeRF camera JSON, at 1x scale (the frames are the 2x resolution)
                "orientation": rot.tolist(),
                "position": centre.tolist(),
                "focal_length": FOCAL * 2,
                "principal_point": [WIDTH, HEIGHT],
                "skew": 0.0,
                "pixel_aspect_ratio": 1.0,
                "radial_distortion": [0.0, 0.0, 0.0],
                "tangential_distortion": [0.0, 0.0],
                "image_size": [WIDTH * 2, HEIGHT * 2],
            }
            (tmp / "camera" / f"{frame_id}.json").write_text(json.dumps(camera, indent=2) + "\n")
            intrinsics.append([[FOCAL, 0.0, WIDTH / 2], [0.0, FOCAL, HEIGHT / 2], [0.0, 0.0, 1.0]])
            extrinsics.append(np.concatenate([rot, (-rot @ centre)[:, None]], 1).tolist())
            for k, caption in _state_captions(t, num_frames, layout).items():
                captions[str(k)].append(caption)
            if t % ANNOTATE_EVERY:
                continue
            image_id = len(coco_images)
            coco_images.append(
                {"id": image_id, "file_name": f"{frame_id}_png.rf.demo{t:04d}.jpg", "height": HEIGHT, "width": WIDTH}
            )
            for k, name in OBJECTS.items():
                polys = _polygons(obj == k)
                if not polys:
                    continue
                ys, xs = np.nonzero(obj == k)
                coco_annotations.append(
                    {
                        "id": len(coco_annotations),
                        "image_id": image_id,
                        "category_id": category_ids[name],
                        "segmentation": polys,
                        "area": int((obj == k).sum()),
                        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                        "iscrowd": 0,
                    }
                )
        switch = num_frames // 2
        on_prompt, off_prompt = STATE_PROMPTS["lamp"]
        video_annotations = {"lamp": {on_prompt: [[switch, num_frames - 1]], off_prompt: [[0, switch - 1]]}}
        coco = {
            "info": {"description": "langfield4d demo scene", "seed": seed},
            "categories": [{"id": 0, "name": "demo-objects", "supercategory": "none"}]
            + [{"id": k, "name": name, "supercategory": "demo-objects"} for k, name in OBJECTS.items()],
            "images": coco_images,
            "annotations": coco_annotations,
        }
        objects = [
            {"id": k, "name": name, "parts": [{"id": p.part_id, "name": p.name} for o, p in parts if o == k]}
            for k, name in OBJECTS.items()
        ] + [{"id": k, "name": name, "parts": [{"id": part, "name": name}]} for k, (name, part) in BACKGROUND.items()]
        files = {
            "annotations/train/_annotations.coco.json": coco,
            "annotations/video_annotations.json": video_annotations,
            "gt/objects.json": objects,
            "gt/captions.json": captions,
            "gt/cameras.json": {"intrinsics": intrinsics, "extrinsics": extrinsics},
            "gt/boxes.json": _ground_truth_boxes(num_frames, parts, layout, visible),
            "gt/grounding.json": GROUNDING,
            "dataset.json": {"count": num_frames, "num_exemplars": num_frames, "ids": ids, "train_ids": ids, "val_ids": []},
            "metadata.json": {fid: {"time_id": t, "warp_id": t, "appearance_id": t, "camera_id": 0} for t, fid in enumerate(ids)},
            "scene.json": {"scale": 1.0, "center": [0.0, 0.0, 0.0], "near": 0.5, "far": 8.0},
        }
        for rel, obj in files.items():
            (tmp / rel).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder to write (HyperNeRF layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed for object placement and sensor noise")
    parser.add_argument("--frames", type=int, default=24, help="number of frames (>= 8)")


def run(args) -> None:
    from pipeline.cli import run_stage

    run_stage(make_demo_scene, args, names={"num_frames": "frames"}, summary=lambda path: f"demo scene written to {path}")
