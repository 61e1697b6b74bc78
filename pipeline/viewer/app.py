"""Serve a rendered scene in the browser: scrub time, type any text, see where it is in 3D.

`python -m pipeline view --scene <dataset>/<scene> [--port N] [--host 127.0.0.1]` opens the
scene's results (results/<dataset>/<scene>, or a folder) and serves a viser page with the point
cloud of each frame (geometry.zarr, or the scene's ground-truth depth and cameras where the
geometry came from random weights), a confidence slider, the camera path as frustums, a time
slider with play/pause, a text box whose query colours the points by its relevancy on the
current frame (the evaluation's encoders, negatives, relevancy and level choice), time-sensitive
queries, the annotation's queries as buttons, object boxes from objects3d.parquet when the
GPT4Scene stage has run, and a "save view" button writing a PNG under <scene>/views/.

The page is bound to 127.0.0.1 by default; on a cluster, forward the port over ssh
(`ssh -L 8080:127.0.0.1:8080 node`) and open http://127.0.0.1:8080 locally. The page's static
files come from the installed viser package: nothing is fetched from the network.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluate.protocol import LEVELS, Protocol
from pipeline.viewer.relevancy import FrameRelevancy, RelevancyEngine, engine_for_scene, heat_colors
from pipeline.viewer.scene import FrameCloud, SceneData, resolve_scene_dir

MAX_FRUSTUMS = 60
DIM_RGB = 0.35  # brightness of points on frames where a time-sensitive query does not hold


def _wxyz(R: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(R).wxyz


def render_points(xyz: np.ndarray, rgb: np.ndarray, c2w: np.ndarray, K: np.ndarray, size: tuple[int, int],
                  radius: int = 1, background=(255, 255, 255)) -> np.ndarray:
    """A picture of coloured points through a pinhole camera (nearest point wins): the saved view
    when no browser can render one."""
    h, w = size
    w2c = np.linalg.inv(c2w)
    pc = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    ok = z > 1e-6
    u = np.round(K[0, 0] * pc[ok, 0] / z[ok] + K[0, 2]).astype(np.int64)
    v = np.round(K[1, 1] * pc[ok, 1] / z[ok] + K[1, 2]).astype(np.int64)
    col, z = rgb[ok], z[ok]
    img = np.empty((h, w, 3), np.uint8)
    img[:] = background
    order = np.argsort(-z)  # far first, near last: near points overwrite
    for dy in range(-radius + 1, radius):
        for dx in range(-radius + 1, radius):
            uu, vv = u[order] + dx, v[order] + dy
            inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            img[vv[inside], uu[inside]] = col[order][inside]
    return img


class Viewer:
    """The viser server of one scene; every GUI control calls a method here (tests call them too)."""

    def __init__(self, scene: SceneData, engine: RelevancyEngine | None, *, host: str = "127.0.0.1", port: int = 8080,
                 query: str | None = None, frame: int = 0, point_size: float | None = None):
        import viser

        self.scene = scene
        self.engine = engine
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.host, self.port = host, self.server.get_port()
        self.server.scene.set_up_direction("-y")
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.t = int(np.clip(frame, 0, scene.T - 1))
        self.text = ""
        self.level = "auto"
        self.time_sensitive = False
        self.colour_mode = "relevancy"
        self.conf_drop = 0.0
        self.show_boxes = True
        self.relevancy: FrameRelevancy | None = None  # of the shown frame, when a query is set
        self.point_values: np.ndarray | None = None  # relevancy of each shown point
        self.point_colors: np.ndarray | None = None
        self.point_pixels: np.ndarray | None = None
        self.last_seconds: float | None = None  # query -> colours of the last update
        self._tracking: set[str] = set()
        self.extent = scene.extent()
        self.point_size = point_size or self.extent / 300.0
        self.objects = scene.objects()
        self._box_handles: list = []
        self._build_gui()
        self._add_cameras()
        self._initial_camera()
        self._player = threading.Thread(target=self._play_loop, name="viewer-play", daemon=True)
        self._player.start()
        if query:
            self.gui_text.value = query
        self.show_frame(self.t)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # ------------------------------------------------------------------ GUI
    def _build_gui(self) -> None:
        gui, sc = self.server.gui, self.scene
        gui.configure_theme(control_width="large")
        gui.add_markdown(f"**{sc.name}**: {sc.T} frames, {sc.H}x{sc.W}; points from {sc.describe_points()}")
        with gui.add_folder("Time"):
            self.gui_frame = gui.add_slider("frame", min=0, max=max(sc.T - 1, 1), step=1, initial_value=self.t,
                                            disabled=sc.T < 2)
            self.gui_play = gui.add_checkbox("play", initial_value=False)
            self.gui_fps = gui.add_number("fps", initial_value=float(min(sc.fps, 30.0)), min=0.5, max=60.0, step=0.5)
        with gui.add_folder("Points"):
            self.gui_conf = gui.add_slider("hide lowest confidence %", min=0, max=95, step=5, initial_value=0)
            self.gui_size = gui.add_slider("point size", min=self.point_size / 4, max=self.point_size * 4,
                                           step=self.point_size / 8, initial_value=self.point_size)
            self.gui_count = gui.add_markdown("")
        with gui.add_folder("Query"):
            self.gui_text = gui.add_text("text", initial_value="")
            self.gui_level = gui.add_dropdown("level", options=("auto", *LEVELS), initial_value="auto")
            self.gui_ts = gui.add_checkbox("time-sensitive", initial_value=False)
            self.gui_colour = gui.add_dropdown("colour", options=("relevancy", "mask", "rgb"), initial_value="relevancy")
            self.gui_clear = gui.add_button("clear query")
            self.gui_progress = gui.add_progress_bar(0.0, visible=False)
            self.gui_status = gui.add_markdown("type a text and press Enter" if self.engine else
                                               "no language field loaded")
        labels, states = self.scene.annotation_queries()
        self.states = states
        if labels or states:
            with gui.add_folder("Annotation queries"):
                for q in labels:
                    gui.add_button(q).on_click(lambda _e, q=q: self.set_query(q, time_sensitive=False))
                for q in states:
                    gui.add_button(q, icon=None).on_click(lambda _e, q=q: self.set_query(q, time_sensitive=True))
        with gui.add_folder("Objects"):
            if self.objects is None:
                gui.add_markdown("no objects3d.parquet (the GPT4Scene stage has not run for this scene)")
                self.gui_boxes = None
            else:
                gui.add_markdown(f"{len(self.objects)} objects from objects3d.parquet")
                self.gui_boxes = gui.add_checkbox("show boxes", initial_value=True)
                self.gui_boxes.on_update(lambda _e: self._set(show_boxes=self.gui_boxes.value))
        self.gui_save = gui.add_button("save view")
        self.gui_saved = gui.add_markdown("")

        self.gui_frame.on_update(lambda _e: self.show_frame(int(self.gui_frame.value)))
        self.gui_conf.on_update(lambda _e: self._set(conf_drop=float(self.gui_conf.value)))
        self.gui_size.on_update(lambda _e: self._set(point_size=float(self.gui_size.value)))
        self.gui_text.on_update(lambda _e: self._set(text=self.gui_text.value.strip()))
        self.gui_level.on_update(lambda _e: self._set(level=self.gui_level.value))
        self.gui_ts.on_update(lambda _e: self._set(time_sensitive=bool(self.gui_ts.value)))
        self.gui_colour.on_update(lambda _e: self._set(colour_mode=self.gui_colour.value))
        self.gui_clear.on_click(lambda _e: self.set_query(""))
        self.gui_save.on_click(lambda e: self._save_clicked(e.client))

    def _set(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self, k, v)
            self.show_frame(self.t)

    def set_query(self, text: str, *, time_sensitive: bool | None = None, level: str | None = None) -> None:
        """What typing `text` in the box (and ticking the checkbox, picking the level) does."""
        with self._lock:
            if time_sensitive is not None:
                self.time_sensitive = time_sensitive
                self.gui_ts.value = time_sensitive
            if level is not None:
                self.level = level
                self.gui_level.value = level
            self.text = text
            if self.gui_text.value != text:
                self.gui_text.value = text  # runs the update, which shows the frame
            else:
                self.show_frame(self.t)

    # ------------------------------------------------------------------ scene
    def _add_cameras(self) -> None:
        cams = self.scene.cameras
        idx = sorted(set(np.linspace(0, len(cams) - 1, min(len(cams), MAX_FRUSTUMS)).round().astype(int).tolist()))
        h, w = cams[0].size
        self._fov = lambda cam: float(2 * np.arctan2(cam.size[0] / 2, cam.K[1, 1]))
        for t in idx:
            cam = cams[t]
            self.server.scene.add_camera_frustum(
                f"/cameras/{t:05d}", fov=self._fov(cam), aspect=w / h, scale=self.extent * 0.03,
                thickness=self.extent * 0.001, color=(120, 120, 140), wxyz=_wxyz(cam.c2w[:3, :3]),
                position=cam.c2w[:3, 3])

    def _initial_camera(self) -> None:
        """Open behind the first shown camera, a little above it, looking at the middle of its points."""
        cam = self.scene.cameras[self.t]
        xyz = self.scene.cloud(self.t).xyz
        target = np.median(xyz, axis=0) if len(xyz) else cam.c2w[:3, 3] + cam.c2w[:3, 2]
        R, centre = cam.c2w[:3, :3], cam.c2w[:3, 3]
        pos = centre - R[:, 2] * 0.3 * self.extent - R[:, 1] * 0.15 * self.extent  # back along -z, up along -y
        ic = self.server.initial_camera
        ic.position = tuple(float(v) for v in pos)
        ic.look_at = tuple(float(v) for v in target)
        ic.up = tuple(float(v) for v in -R[:, 1])
        ic.fov = float(min(self._fov(cam) * 1.3, np.deg2rad(100)))

    def _show_current_camera(self) -> None:
        cam = self.scene.cameras[self.t]
        h, w = cam.size
        img = self.scene.image(self.t)
        step = max(1, img.shape[1] // 160)
        self.server.scene.add_camera_frustum(
            "/current_camera", fov=self._fov(cam), aspect=w / h, scale=self.extent * 0.06,
            thickness=self.extent * 0.002, color=(230, 60, 30), image=np.ascontiguousarray(img[::step, ::step]),
            wxyz=_wxyz(cam.c2w[:3, :3]), position=cam.c2w[:3, 3])

    def _show_boxes(self) -> None:
        for handle in self._box_handles:
            handle.remove()
        self._box_handles = []
        if not self.objects or not self.show_boxes:
            return
        palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
        for i, ob in enumerate(self.objects):
            if self.t in ob["per_frame"]:
                centre, size = ob["per_frame"][self.t]  # where the object is on this frame (its track)
            elif ob["centre"] is not None and (ob["frames"] is None or not ob["per_frame"]):
                centre, size = ob["centre"], ob["size"]
            else:
                continue  # not visible on this frame
            col = palette[i % len(palette)]
            self._box_handles.append(self.server.scene.add_box(
                f"/objects/{i}/box", color=col, dimensions=tuple(float(s) for s in size), wireframe=True,
                position=tuple(float(c) for c in centre)))
            top = np.asarray(centre, dtype=np.float64) - np.array([0.0, float(size[1]) / 2, 0.0])  # -y is up
            self._box_handles.append(self.server.scene.add_label(
                f"/objects/{i}/label", f"{ob['id']} {ob['name']}".strip(), position=tuple(float(c) for c in top)))

    def _colours(self, cloud: FrameCloud, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(colours, relevancy per point or None, status line) of the shown points."""
        pixels = cloud.pixels[keep]
        rgb = cloud.rgb[keep]
        self.relevancy = None
        if not self.text or self.engine is None:
            return rgb, None, "type a text and press Enter" if self.engine else "no language field loaded"
        start = time.perf_counter()
        try:
            rel = self.engine.frame(self.t, self.text, self.level)
        except UserError as exc:
            return rgb, None, f"error: {exc}"
        self.relevancy = rel
        smoothed = rel.smoothed
        values = smoothed.reshape(-1)[pixels]
        if self.colour_mode == "rgb":
            colours = rgb
        elif self.colour_mode == "mask":
            m = rel.mask.reshape(-1)[pixels]
            colours = rgb.copy()
            colours[m] = (0.4 * rgb[m] + 0.6 * np.array([255, 40, 40])).astype(np.uint8)
        else:
            colours = heat_colors(smoothed, pixels)
        line = (f"**{self.text}** on frame {self.t}: level {LEVELS[rel.chosen]}"
                f"{' (as evaluation chooses)' if self.level == 'auto' else ' (picked)'}, peak {rel.levels[rel.chosen].peak:.3f}")
        if self.time_sensitive:
            track = self._track()
            if track is None:
                line += f"; scoring the frames for the time-sensitive query ({self.engine.state_variant} similarity)"
            else:
                held = np.flatnonzero(track.holds)
                if not track.holds[self.t]:
                    colours = (rgb * DIM_RGB).astype(np.uint8)
                line += (f"; {'holds' if track.holds[self.t] else 'does not hold'} here; holds on {len(held)}/{self.scene.T}"
                         f" frames: {_ranges(held)} ({track.variant} similarity, threshold {track.threshold:.3f})")
        self.last_seconds = time.perf_counter() - start
        line += f"; {self.last_seconds:.2f} s{' (features cached)' if rel.cached else ' (decoded this frame)'}"
        return colours, values, line

    def _track(self):
        """The time-sensitive track of the current text, or None while it is being scored (in the background)."""
        key = (self.text, self.engine.state_variant)
        if key in self.engine._tracks:
            return self.engine._tracks[key]
        if self.text not in self._tracking:
            self._tracking.add(self.text)
            text = self.text

            def work():
                try:
                    self.gui_progress.visible = True
                    self.engine.track(text, progress=lambda k, n: setattr(self.gui_progress, "value", 100.0 * k / n))
                finally:
                    self.gui_progress.visible = False
                    self._tracking.discard(text)
                if self.text == text and not self._stop.is_set():
                    self.show_frame(self.t)

            threading.Thread(target=work, name="viewer-track", daemon=True).start()
        return None

    def wait_for_track(self, text: str, timeout: float = 600.0):
        """Block until the time-sensitive track of `text` is scored (tests, scripts)."""
        return self.engine.track(text)

    def show_frame(self, t: int) -> None:
        """Show frame t with the current query, confidence, size and boxes."""
        with self._lock:
            self.t = int(np.clip(t, 0, self.scene.T - 1))
            if int(self.gui_frame.value) != self.t:
                self.gui_frame.value = self.t  # runs show_frame again through its callback
                return
            cloud = self.scene.cloud(self.t)
            keep = np.ones(len(cloud.xyz), bool)
            if self.conf_drop > 0 and len(cloud.conf):
                keep = cloud.conf >= np.percentile(cloud.conf, self.conf_drop)
            colours, values, line = self._colours(cloud, keep)
            self.point_colors, self.point_values, self.point_pixels = colours, values, cloud.pixels[keep]
            self.points_handle = self.server.scene.add_point_cloud("/points", points=cloud.xyz[keep], colors=colours,
                                              point_size=self.point_size, point_shape="rounded")
            self._show_current_camera()
            self._show_boxes()
            shown = int(keep.sum())
            stride = self.scene.stride_for(*self.scene.cameras[self.t].size) if self.scene.point_source != "gt" else \
                self.scene.stride_for(self.scene.H, self.scene.W)
            self.gui_count.content = (f"showing {shown:,} of {cloud.total:,} points"
                                      + (f" (one pixel in {stride}x{stride})" if stride > 1 else "")
                                      + (f", lowest {self.conf_drop:.0f}% confidence hidden" if self.conf_drop else ""))
            self.gui_status.content = line
            if self.engine is not None and not self.text and not self.gui_play.value:
                self.engine.prefetch(self.t)  # ready by the time a query is typed

    def _play_loop(self) -> None:
        while not self._stop.is_set():
            fps = max(0.5, float(self.gui_fps.value or 10.0))
            if self.gui_play.value and self.scene.T > 1:
                self.show_frame((self.t + 1) % self.scene.T)
            self._stop.wait(1.0 / fps)

    # ------------------------------------------------------------------ save view
    def _save_clicked(self, client) -> None:
        path = self.save_view(client)
        self.gui_saved.content = f"saved {path}"

    def save_view(self, client=None, size: tuple[int, int] = (720, 1280)) -> Path:
        """A PNG of the current view beside the scene's results (<scene>/views/): the browser's
        render when a client is given, else the points seen from the current frame's camera."""
        import cv2

        from pipeline.evaluate.figures import slug
        from pipeline.store import atomic_path

        img = None
        if client is not None:
            try:
                img = client.get_render(height=size[0], width=size[1], transport_format="jpeg", timeout=20.0)
            except Exception as exc:  # a browser that cannot render (no WebGL): fall back to our own picture
                print(f"note: the browser did not send a render ({exc.__class__.__name__}); saving the frame camera's view",
                      file=sys.stderr)
        if img is None:
            with self._lock:
                cloud = self.scene.cloud(self.t)
                keep = np.isin(cloud.pixels, self.point_pixels) if self.point_pixels is not None else slice(None)
                cam = self.scene.cameras[self.t]
                colours = self.point_colors if self.point_colors is not None else cloud.rgb
                scale = 2
                K = cam.K.copy()
                K[:2] *= scale
                img = render_points(cloud.xyz[keep], colours, cam.c2w, K, (cam.size[0] * scale, cam.size[1] * scale),
                                    radius=2)
        name = f"view_t{self.t:05d}" + (f"_{slug(self.text)}" if self.text else "") + ".png"
        out = self.scene.dir / "views" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., :3][..., ::-1]))
            if not ok:
                raise UserError(f"could not encode {out}")
            Path(tmp).write_bytes(buf.tobytes())
        return out

    # ------------------------------------------------------------------ life
    def stop(self) -> None:
        self._stop.set()
        self._player.join(timeout=5)
        if self.engine is not None:
            self.engine.close()
        self.server.stop()

    def wait(self) -> None:
        """Serve until Ctrl-C or SIGTERM."""
        def _term(_sig, _frame):
            self._stop.set()

        old = signal.signal(signal.SIGTERM, _term)
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, old)
            self.stop()


def _ranges(frames: np.ndarray) -> str:
    if len(frames) == 0:
        return "none"
    out, start, prev = [], int(frames[0]), int(frames[0])
    for f in (int(x) for x in frames[1:]):
        if f != prev + 1:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = f
        prev = f
    out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)


def open_viewer(scene: str | Path, *, results: str | Path = "results", host: str = "127.0.0.1", port: int = 8080,
                points: str = "auto", max_points: int = 200_000, device: str = "auto", cache_mb: int = 4096,
                autoencoder: str | None = None, video_autoencoder: str | None = None,
                query_embeddings: str | None = None, query: str | None = None, frame: int = 0,
                protocol: Protocol = Protocol()) -> Viewer:
    from pipeline.devices import resolve_device

    scene_dir = resolve_scene_dir(scene, results)
    data = SceneData(scene_dir, points=points, max_points=max_points)
    engine = engine_for_scene(scene_dir, data.render, autoencoder=autoencoder, video_autoencoder=video_autoencoder,
                              query_embeddings=query_embeddings, protocol=protocol, device=resolve_device(device),
                              cache_bytes=int(cache_mb) << 20)
    return Viewer(data, engine, host=host, port=port, query=query, frame=frame)


def add_arguments(parser) -> None:
    parser.add_argument("--scene", required=True, help="<dataset>/<scene> under --results, or the scene's results folder")
    parser.add_argument("--results", default="results", help="results folder of the workflow (default: ./results)")
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (the next free one if taken; 0 = any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--points", choices=["auto", "geometry", "gt"], default="auto",
                        help="point source: geometry.zarr, the scene's ground-truth depth + cameras, or auto "
                             "(ground truth where the geometry came from random weights, as in the demo)")
    parser.add_argument("--max-points", type=int, default=200_000, help="points shown per frame (regular pixel subsampling)")
    parser.add_argument("--device", default="auto", help="torch device for decoding and relevancy (auto, cpu, cuda)")
    parser.add_argument("--cache-mb", type=int, default=4096, help="memory for decoded features of recent frames")
    parser.add_argument("--autoencoder", help="CLIP autoencoder (default: the one recorded by the scene's latents)")
    parser.add_argument("--video-autoencoder", help="video autoencoder (default: the one recorded by video_latents.zarr)")
    parser.add_argument("--query-embeddings", help="npz of precomputed text vectors (only its names can be asked)")
    parser.add_argument("--query", help="a text to show when the page opens")
    parser.add_argument("--frame", type=int, default=0, help="frame to open on")


def run(args) -> None:
    viewer = open_viewer(args.scene, results=args.results, host=args.host, port=args.port, points=args.points,
                         max_points=args.max_points, device=args.device, cache_mb=args.cache_mb,
                         autoencoder=args.autoencoder, video_autoencoder=args.video_autoencoder,
                         query_embeddings=args.query_embeddings, query=args.query, frame=args.frame)
    print(f"viewer of {viewer.scene.name} at {viewer.url} (Ctrl-C stops it)", flush=True)
    viewer.wait()
    print("viewer stopped", flush=True)
