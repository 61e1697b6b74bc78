"""The demo scene's renderer: an exact ray caster over the scene's primitives, a floor and a wall,
so instance masks, part masks and depth are ground truth by construction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.demo_world import BACKGROUND, FOCAL, HEIGHT, LAMP_ON_COLOURS, WIDTH, Part, ball_position, camera_pose


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


def _rays(t: int, n: int):
    """(world->camera rotation, camera centre, unit world ray per pixel [HW,3]) of frame t."""
    rot, centre = camera_pose(t, n)
    u, v = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    cam_dirs = np.stack([(u - WIDTH / 2) / FOCAL, (v - HEIGHT / 2) / FOCAL, np.ones_like(u)], -1).reshape(-1, 3)
    dirs = cam_dirs @ rot  # camera -> world (rot is world -> camera)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return rot, centre, dirs


@dataclass
class _Hits:
    """Per ray: nearest hit distance, world normal, object id, part id and base colour."""

    t: np.ndarray
    normal: np.ndarray
    obj_ids: np.ndarray
    part_ids: np.ndarray
    colour: np.ndarray


def _cast_objects(parts, layout, centre, dirs, ball_x: float, lamp_on: bool) -> _Hits:
    count = dirs.shape[0]
    hits = _Hits(np.full(count, np.inf), np.zeros((count, 3)), np.zeros(count, np.int32), np.zeros(count, np.int32),
                 np.zeros((count, 3)))
    for obj_id, part in parts:
        t_hit, normal = _intersect(part, centre, dirs, ball_x, layout["ball_z"])
        closer = t_hit < hits.t
        hits.t[closer], hits.normal[closer] = t_hit[closer], normal[closer]
        hits.obj_ids[closer], hits.part_ids[closer] = obj_id, part.part_id
        hits.colour[closer] = LAMP_ON_COLOURS.get(part.part_id, part.colour) if (lamp_on and obj_id == 1) else part.colour
    return hits


def _floor_colours(fh: np.ndarray, parts, layout, ball_x: float, lamp_on: bool) -> np.ndarray:
    """Checkered wood with soft contact shadows under the objects and the lamp's glow when it is on."""
    checker = (np.floor(fh[:, 0] * 4) + np.floor(fh[:, 2] * 4)) % 2 == 0
    floor_rgb = np.where(checker[:, None], [0.78, 0.66, 0.5], [0.66, 0.53, 0.38])
    lx, lz = layout["lamp"]
    shadow = np.ones(len(fh))
    for obj_id, part in parts:
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
    return floor_rgb


def _add_floor(hits: _Hits, parts, layout, centre, dirs, ball_x: float, lamp_on: bool) -> None:
    """The floor (a round table top) where no object is nearer: background id 5."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[:, 1] < 0, -centre[1] / dirs[:, 1], np.inf)
    hit = centre + t_floor[:, None] * dirs
    on_floor = (t_floor < hits.t) & (hit[:, 0] ** 2 + hit[:, 2] ** 2 < 3.5**2)
    floor_rgb = _floor_colours(hit[on_floor], parts, layout, ball_x, lamp_on)
    hits.t[on_floor] = t_floor[on_floor]
    hits.obj_ids[on_floor], hits.part_ids[on_floor] = 5, BACKGROUND[5][1]
    hits.colour[on_floor] = floor_rgb
    hits.normal[on_floor] = [0.0, 1.0, 0.0]


def _add_wall(hits: _Hits, centre, dirs) -> None:
    """The surrounding cylindrical wall for every ray that hit nothing: background id 6, unlit."""
    wall = ~np.isfinite(hits.t)
    a = dirs[wall, 0] ** 2 + dirs[wall, 2] ** 2
    b = centre[0] * dirs[wall, 0] + centre[2] * dirs[wall, 2]
    c = centre[0] ** 2 + centre[2] ** 2 - 6.0**2
    hits.t[wall] = (-b + np.sqrt(b * b - a * c)) / a
    wall_y = centre[1] + hits.t[wall] * dirs[wall, 1]
    hits.colour[wall] = np.array([0.72, 0.76, 0.8]) - 0.06 * np.clip(wall_y, 0, 3)[:, None]
    hits.normal[wall] = 0.0
    hits.obj_ids[wall], hits.part_ids[wall] = 6, BACKGROUND[6][1]


def _shade(hits: _Hits, lamp_on: bool, rng: np.random.Generator) -> np.ndarray:
    """Lambert shading under one light plus sensor noise -> [H,W,3] uint8; a lit shade glows evenly."""
    light = np.array([-0.4, 0.8, -0.45])
    light /= np.linalg.norm(light)
    lambert = np.clip(hits.normal @ light, 0.0, 1.0)
    lit = np.where((np.abs(hits.normal).sum(1) > 0)[:, None], hits.colour * (0.45 + 0.6 * lambert[:, None]), hits.colour)
    if lamp_on:
        lit[hits.part_ids == 13] = hits.colour[hits.part_ids == 13]
    noise = rng.normal(0.0, 0.012, lit.shape)
    return np.clip((lit + noise) * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(HEIGHT, WIDTH, 3)


def render_frame(t: int, n: int, parts, layout, rng: np.random.Generator):
    """RGB uint8, object ids, part ids, depth, and the camera of frame t."""
    rot, centre, dirs = _rays(t, n)
    ball_x, _ = ball_position(t, n, layout)
    lamp_on = t >= n // 2
    hits = _cast_objects(parts, layout, centre, dirs, ball_x, lamp_on)
    _add_floor(hits, parts, layout, centre, dirs, ball_x, lamp_on)
    _add_wall(hits, centre, dirs)
    rgb = _shade(hits, lamp_on, rng)
    points_cam = (hits.t[:, None] * dirs) @ rot.T
    depth = points_cam[:, 2].astype(np.float32).reshape(HEIGHT, WIDTH)
    return rgb, hits.obj_ids.reshape(HEIGHT, WIDTH), hits.part_ids.reshape(HEIGHT, WIDTH), depth, (rot, centre)
