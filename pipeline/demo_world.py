"""What the demo scene is: its objects and parts, where they are at frame t, the orbiting camera,
the lamp's and the ball's states and their captions, exact boxes and the grounding queries.
One seed gives one layout; everything here is exact, so the ground truth is by construction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def scene_parts(rng: np.random.Generator) -> tuple[list[tuple[int, Part]], dict]:
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


def ball_position(t: int, n: int, layout: dict) -> tuple[float, bool]:
    """The ball rolls in the middle half of the clip and rests before and after."""
    x0, x1 = layout["ball_x"]
    start, stop = n // 4, (3 * n) // 4
    u = np.clip((t - start) / max(1, stop - start), 0.0, 1.0)
    return float(x0 + (x1 - x0) * u), start <= t < stop


def camera_pose(t: int, n: int) -> tuple[np.ndarray, np.ndarray]:
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


def object_boxes(t: int, n: int, parts, layout) -> dict[int, list[float]]:
    """Exact axis-aligned world box (centre xyz, size xyz) of each annotated object at frame t."""
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}
    ball_x, _ = ball_position(t, n, layout)
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


# 3D grounding queries (ScanRefer / Multi3DRefer style): text -> ids of the objects it names
GROUNDING = [
    *({"query": name, "targets": [k]} for k, name in OBJECTS.items()),
    {"query": "the lamp and the blue ball", "targets": [1, 2]},
    {"query": "a grand piano", "targets": []},
]


def state_captions(t: int, n: int, layout) -> dict[int, str]:
    _, rolling = ball_position(t, n, layout)
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
