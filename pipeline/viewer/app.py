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
from pipeline.viewer.controls import ViewerControls
from pipeline.viewer.drawing import SceneDrawing
from pipeline.viewer.relevancy import FrameRelevancy, RelevancyEngine, heat_colors
from pipeline.viewer.scene import FrameCloud, SceneData, resolve_scene_dir
from pipeline.viewer.scene_engine import engine_for_scene
from pipeline.viewer.snapshot import render_points

DIM_RGB = 0.35  # brightness of points on frames where a time-sensitive query does not hold


class Viewer(ViewerControls, SceneDrawing):
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
