"""The 4D viewer (`python -m pipeline view`): its server, its numbers and a real browser.

The synthetic scene is the evaluation tests' render (known latents, linear decoders) with a
geometry.zarr of known depth and cameras, so every relevancy the viewer shows is compared with
what the evaluation's own functions compute for that frame.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import _viewer_scene as vs
import evaluate_synthetic as syn
from conftest import REPO, workflow_env

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--hide-scrollbars", "--mute-audio",
                  "--no-first-run", "--disable-extensions"]


@pytest.fixture()
def scene(tmp_path):
    return vs.write_results(tmp_path)


def _engine(scene_dir, render, **kw):
    from pipeline.evaluate.encoders import TextVectors
    from pipeline.evaluate.protocol import Protocol
    from pipeline.viewer.relevancy import RelevancyEngine

    clip = TextVectors(syn.clip_vectors(), syn.CLIP_SPACE)
    e5 = TextVectors(syn.video_text_vectors(), syn.VIDEO_SPACE)
    return RelevancyEngine(render, decoder=syn.clip_decoder().decode, text_vectors=lambda texts: clip,
                           protocol=Protocol(negatives=tuple(syn.NEGATIVES)), video_decoder=syn.video_decoder().decode,
                           video_text_vectors=lambda texts: e5, **kw)


@pytest.fixture()
def viewer(scene):
    from pipeline.viewer.app import Viewer
    from pipeline.viewer.scene import SceneData

    data = SceneData(scene)
    v = Viewer(data, _engine(scene, data.render), port=0)
    yield v
    v.stop()


def _reference(render, t: int, text: str):
    """The evaluation's relevancy of `text` on frame t: (smoothed maps per level, chosen level)."""
    from pipeline.evaluate.encoders import TextVectors, decoded_cosines
    from pipeline.evaluate.protocol import LEVELS, Protocol
    from pipeline.evaluate.relevancy import choose_level, masks_for_level, relevancy_from_cosines

    protocol = Protocol(negatives=tuple(syn.NEGATIVES))
    m = TextVectors(syn.clip_vectors(), None).matrix([text, *syn.NEGATIVES])
    lvls = []
    for lv in LEVELS:
        x = torch.as_tensor(np.asarray(render[f"lang_{lv}"][t], dtype=np.float32))
        cos = decoded_cosines(syn.clip_decoder().decode, x.reshape(-1, x.shape[-1]), m)
        rel = relevancy_from_cosines(cos[:, :1], cos[:, 1:], protocol.temperature)[:, 0].reshape(syn.H, syn.W)
        lvls.append(masks_for_level(rel, protocol))
    return lvls, choose_level(lvls, protocol.level_strategy)


def test_cached_hidden_activations_score_as_plain_decode_and_cosine():
    """The cache's exact shortcut: cos(normalize(W h + b), q) from h / |W h + b| and 1 / |W h + b|,
    on a random autoencoder with biases, equals decoding to unit features and taking cosines."""
    from pipeline.evaluate.encoders import ModuleDecoder, decoded_cosines, split_decoder
    from pipeline.features.autoencoder import Autoencoder

    torch.manual_seed(0)
    ae = Autoencoder(48, [32, 3], [16, 40, 48]).eval()
    with torch.no_grad():
        for layer in ae.decoder:
            if isinstance(layer, torch.nn.Linear):
                layer.bias.normal_(0, 0.5)
    decoder = ModuleDecoder(ae)
    lat = torch.nn.functional.normalize(torch.randn(1000, 3), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 48), dim=-1)
    split = split_decoder(decoder)
    assert split.weight is not None and split.weight.shape == (48, 40)
    scaled, inv = split.scaled_hidden(lat, chunk=128)
    assert scaled.shape == (1000, 40) and inv.shape == (1000,)
    u, c = split.text_side(text)
    np.testing.assert_allclose(scaled @ u + inv[:, None] * c, decoded_cosines(decoder, lat, text), rtol=0, atol=1e-6)
    plain = split_decoder(syn.clip_decoder().decode)  # any other decoder: uncut, W = I
    assert plain.weight is None
    x = torch.randn(50, 3)
    a, r = plain.scaled_hidden(x)
    u, c = plain.text_side(text[:, :8] / text[:, :8].norm(dim=-1, keepdim=True))
    np.testing.assert_allclose(a @ u + r[:, None] * c, decoded_cosines(syn.clip_decoder().decode, x, u.T), atol=1e-6)


def test_viewer_relevancy_through_a_real_autoencoder_matches_the_evaluation(scene):
    """The engine's numbers with an autoencoder file (the cut decoder) against decode + cosine."""
    from pipeline.evaluate.encoders import TextVectors, decoded_cosines, load_autoencoder_decoder
    from pipeline.evaluate.protocol import LEVELS, Protocol
    from pipeline.evaluate.relevancy import choose_level, masks_for_level, relevancy_from_cosines
    from pipeline.features.autoencoder import Autoencoder, save_autoencoder
    from pipeline.viewer.relevancy import RelevancyEngine
    from pipeline.viewer.scene import SceneData

    torch.manual_seed(1)
    ae = Autoencoder(8, [6, 3], [12, 16, 8]).eval()
    save_autoencoder(ae, scene / "ae.safetensors", space=syn.CLIP_SPACE)
    decoder, _, _ = load_autoencoder_decoder(scene / "ae.safetensors", config_key="k", what="ae")
    clip = TextVectors(syn.clip_vectors(), syn.CLIP_SPACE)
    protocol = Protocol(negatives=tuple(syn.NEGATIVES))
    render = SceneData(scene).render
    engine = RelevancyEngine(render, decoder=decoder, text_vectors=lambda texts: clip, protocol=protocol)
    m = clip.matrix(["blue cube", *syn.NEGATIVES])
    for t in (0, 6):
        lvls = []
        for lv in LEVELS:
            x = torch.as_tensor(np.asarray(render[f"lang_{lv}"][t], dtype=np.float32))
            cos = decoded_cosines(decoder, x.reshape(-1, x.shape[-1]), m)
            lvls.append(masks_for_level(relevancy_from_cosines(cos[:, :1], cos[:, 1:])[:, 0].reshape(syn.H, syn.W), protocol))
        got = engine.frame(t, "blue cube")
        assert got.chosen == choose_level(lvls)
        for a, b in zip(got.levels, lvls):
            np.testing.assert_allclose(a.smoothed.numpy(), b.smoothed.numpy(), rtol=0, atol=1e-6)
        assert np.array_equal(got.mask, lvls[got.chosen].post.numpy())
    assert engine.cache_nbytes() == 2 * len(LEVELS) * syn.H * syn.W * (16 + 1 + 1) * 4  # h/|.|, 1/|.|, hardest negative
    # a budget below one float32 frame: the scaled activations are kept in float16, one frame at a time
    small = RelevancyEngine(render, decoder=decoder, text_vectors=lambda texts: clip, protocol=protocol, cache_bytes=1)
    for t in (0, 6):
        got = small.frame(t, "blue cube")
    assert small.dtype == torch.float16 and small.cached_frames() == [6]
    np.testing.assert_allclose(got.smoothed, lvls[got.chosen].smoothed.numpy(), rtol=0, atol=2e-3)


def test_points_come_from_depth_and_cameras(scene):
    from pipeline.viewer.scene import SceneData

    data = SceneData(scene)
    assert data.point_source == "geometry"
    t = 4
    cloud = data.cloud(t)
    ys, xs = np.divmod(cloud.pixels, syn.W)
    z = vs.depth(t)[ys, xs]
    expect = np.stack([(xs - syn.W / 2) / vs.FOCAL * z + 0.05 * t, (ys - syn.H / 2) / vs.FOCAL * z, z], axis=-1)
    np.testing.assert_allclose(cloud.xyz, expect, rtol=1e-5, atol=1e-5)
    assert cloud.total == syn.H * syn.W - 3 == len(cloud.xyz)  # the three zero-depth pixels are dropped
    small = SceneData(scene, max_points=1000).cloud(t)  # every 2nd pixel from (1, 1): row 0 (zero depth) unseen
    assert len(small.xyz) == (syn.H // 2) * (syn.W // 2) and small.total == cloud.total


def test_query_colours_points_with_the_evaluations_relevancy(viewer, scene):
    from pipeline.evaluate.figures import heat_rgb

    t = 3
    viewer.show_frame(t)
    rgb = viewer.point_colors.copy()
    assert viewer.point_values is None
    viewer.gui_text.value = "red ball"  # what typing in the box does
    lvls, k = _reference(viewer.scene.render, t, "red ball")
    assert viewer.relevancy.chosen == k == 1  # level m, as the evaluation chooses (s is weaker by construction)
    ref = lvls[k].smoothed.numpy().reshape(-1)[viewer.point_pixels]
    np.testing.assert_allclose(viewer.point_values, ref, rtol=0, atol=1e-6)
    expect = heat_rgb(lvls[k].smoothed.numpy()).reshape(-1, 3)[viewer.point_pixels]
    assert np.mean(np.all(viewer.point_colors == expect, axis=-1)) > 0.999
    assert np.array_equal(viewer.points_handle.colors, viewer.point_colors)  # what the page is sent
    assert not np.array_equal(viewer.point_colors, rgb)
    top, left, h, w = syn.ball_box(t)
    ys, xs = np.divmod(viewer.point_pixels, syn.W)
    on_ball = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)
    assert viewer.point_values[on_ball].min() > viewer.point_values[~on_ball].max()
    # the level picker overrides the choice; the cache served the frame again
    viewer.set_query("red ball", level="s")
    assert viewer.relevancy.chosen == 0 and viewer.relevancy.cached
    np.testing.assert_allclose(viewer.point_values, lvls[0].smoothed.numpy().reshape(-1)[viewer.point_pixels], atol=1e-6)
    assert "level s" in viewer.gui_status.content
    # another frame, another query: still the evaluation's numbers
    viewer.set_query("blue cube", level="auto")
    viewer.gui_frame.value = 7
    lvls, k = _reference(viewer.scene.render, 7, "blue cube")
    assert viewer.t == 7 and viewer.relevancy.chosen == k
    np.testing.assert_allclose(viewer.point_values, lvls[k].smoothed.numpy().reshape(-1)[viewer.point_pixels], atol=1e-6)
    viewer.set_query("")
    assert viewer.point_values is None and np.array_equal(viewer.point_colors, viewer.scene.cloud(7).rgb)


def test_time_sensitive_query_colours_the_frames_where_it_holds(viewer):
    from pipeline.evaluate.encoders import decode_unit
    from pipeline.evaluate.protocol import Protocol
    from pipeline.evaluate.temporal import temporal_smooth, threshold_for

    protocol = Protocol(negatives=tuple(syn.NEGATIVES))
    viewer.set_query(syn.ROLLING, time_sensitive=True)
    track = viewer.wait_for_track(syn.ROLLING)
    assert track.variant == "video"
    sims = []
    for t in range(syn.T):  # the evaluation's video similarity, every rendered frame
        lvls, k = _reference(viewer.scene.render, t, syn.ROLLING)
        v = torch.as_tensor(np.asarray(viewer.scene.render["video"][t], dtype=np.float32))
        feats = decode_unit(syn.video_decoder().decode, v[lvls[k].pre])
        sims.append(float((feats @ torch.as_tensor(syn.video_text_vectors()[syn.ROLLING])).mean()))
    sims = np.asarray(sims, np.float32)
    smoothed = temporal_smooth(sims, protocol.temporal_weights)
    holds = smoothed >= np.float32(threshold_for(sims, smoothed, protocol.video_threshold))
    np.testing.assert_allclose(track.similarity, sims, atol=1e-6)
    assert np.array_equal(track.holds, holds)
    assert holds[:4].all() and not holds[7:].any()  # the ball rolls on frames 0..5 by construction
    viewer.show_frame(1)
    assert "holds here" in viewer.gui_status.content
    hot = viewer.point_colors.copy()
    viewer.show_frame(8)
    assert "does not hold here" in viewer.gui_status.content
    cloud = viewer.scene.cloud(8)
    assert np.array_equal(viewer.point_colors, (cloud.rgb * 0.35).astype(np.uint8)) and not np.array_equal(hot, cloud.rgb)


def test_confidence_slider_subsampling_count_boxes_and_save_view(scene):
    import pandas as pd

    from pipeline.viewer.app import Viewer
    from pipeline.viewer.scene import SceneData

    data = SceneData(scene)
    v = Viewer(data, _engine(scene, data.render), port=0)
    try:
        assert v.objects is None and v._box_handles == []
        n = len(v.point_colors)
        v.gui_conf.value = 25  # hides the least confident quarter (the left columns)
        ys, xs = np.divmod(v.point_pixels, syn.W)
        assert xs.min() >= syn.W // 4 and len(v.point_colors) < n
        assert v.gui_count.content.startswith(f"showing {len(v.point_colors):,} of {n:,} points")
        v.set_query("red ball")
        out = v.save_view()  # no browser: the points seen from the frame's camera
        assert out.parent == scene / "views" and out.name == "view_t00000_red_ball.png"
        import cv2

        img = cv2.imread(str(out))
        assert img is not None and img.std() > 10
    finally:
        v.stop()
    # objects3d.parquet as the scene3d stage writes it: a box over the video and one per visible frame
    track = [[0.1 * t, 0.0, 3.0, 0.2, 0.2, 0.2] for t in range(3)]
    nan = float("nan")
    pd.DataFrame({"id": [1, 2, 3], "name": ["red ball", "blue cube", "object 3"], "center_x": [0.1, 1.0, nan],
                  "center_y": [0.0, 0.5, nan], "center_z": [3.0, 4.0, nan], "size_x": [0.4, 0.3, nan],
                  "size_y": [0.2, 0.3, nan], "size_z": [0.2, 0.3, nan],
                  "frames_visible": [[0, 1, 2], list(range(syn.T)), []],
                  "frame_boxes": [track, [[1.0, 0.5, 4.0, 0.3, 0.3, 0.3]] * syn.T, []]}).to_parquet(scene / "objects3d.parquet")
    small = SceneData(scene, max_points=1000)
    v = Viewer(small, _engine(scene, small.render), port=0, frame=5)
    try:
        assert [o["id"] for o in v.objects] == [1, 2]  # the object without any box is left out
        assert len(v._box_handles) == 2  # box + label of the cube: the ball is not visible on frame 5
        assert "(one pixel in 2x2)" in v.gui_count.content
        v.show_frame(1)
        assert len(v._box_handles) == 4
        np.testing.assert_allclose(v._box_handles[0].position, [0.1, 0.0, 3.0])  # the ball's box on frame 1
        v.gui_boxes.value = False
        assert v._box_handles == []
    finally:
        v.stop()


def test_missing_or_unrendered_scene_is_one_line_naming_what_to_run(tmp_path, capsys):
    from pipeline.__main__ import main

    assert main(["view", "--scene", "demo/nowhere", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "snakemake --cores 2" in err[0] and "render.zarr" in err[0], err
    (tmp_path / "results" / "demo" / "half").mkdir(parents=True)
    assert main(["view", "--scene", "demo/half", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not rendered yet" in err[0] and "scene_half" in err[0], err
    half = vs.write_results(tmp_path / "r2")  # rendered, but the autoencoder its latents record is gone
    import zarr

    zarr.open_group(str(half / "render.zarr"), mode="r+").attrs["clip_autoencoder"] = {"path": str(tmp_path / "gone.safetensors")}
    assert main(["view", "--scene", str(half), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"snakemake --cores 2 {tmp_path / 'gone.safetensors'}" in err[0], err


# ---------------------------------------------------------------------------- the command and a browser
def _autoencoder(path: Path) -> Path:
    """A real autoencoder file whose decoder is the synthetic scene's (latent i -> basis row i)."""
    from pipeline.features.autoencoder import Autoencoder, save_autoencoder

    ae = Autoencoder(8, [3], [8])
    with torch.no_grad():
        ae.decoder[0].weight.copy_(torch.eye(8)[:, :3])
        ae.decoder[0].bias.zero_()
    save_autoencoder(ae, path, space=syn.CLIP_SPACE)
    return path


def _serve(scene: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    ae = _autoencoder(tmp_path / "clip_ae.safetensors")
    npz = syn.write_query_embeddings(tmp_path / "queries.npz")
    cmd = [sys.executable, "-m", "pipeline", "view", "--scene", "synthetic/balls", "--results", str(scene.parents[1]),
           "--port", "0", "--autoencoder", str(ae), "--query-embeddings", str(npz), *extra]
    proc = subprocess.Popen(cmd, env={**workflow_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # "viewer of ... at http://127.0.0.1:PORT/ (Ctrl-C stops it)"
        seen.append(line)
        if line.startswith("viewer of ") and " at http" in line:
            break
    else:
        proc.kill()
        raise AssertionError(f"viewer did not start: {''.join(seen)}{proc.stderr.read()[-3000:]}")
    return proc, line.split(" at ")[1].split()[0]


def _stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    # SIGTERM, which the viewer handles itself: a shell's background job (`make test &`) starts its
    # children with SIGINT ignored, so Ctrl-C's signal would never reach the server there
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_server_starts_on_a_free_port_serves_its_page_and_stops_cleanly(scene, tmp_path):
    proc, url = _serve(scene, tmp_path, "--query", "red ball")
    try:
        assert url.startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<html" in page.lower() and "<script" in page.lower()
        port = int(url.rstrip("/").rsplit(":", 1)[1])
    finally:
        rc, out, err = _stop(proc)
    assert rc == 0, err[-3000:]
    assert "viewer stopped" in out and "Traceback" not in err
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        s.connect(("127.0.0.1", port))


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        message = ("Debian's chromium is not installed: `make test` installs it (apt-get install chromium, as root); "
                   "install it to run the browser test")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def test_a_real_browser_shows_the_points(scene, tmp_path):
    exe = _chromium()
    proc, url = _serve(scene, tmp_path, "--query", "red ball", "--frame", "3")
    shot = tmp_path / "shot.png"
    try:
        run = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700",
                              "--virtual-time-budget=15000", f"--screenshot={shot}", url],
                             capture_output=True, text=True, timeout=180)
    finally:
        rc, _, err = _stop(proc)
    assert shot.is_file(), run.stderr[-3000:]
    assert rc == 0, err[-2000:]
    import cv2

    img = cv2.imread(str(shot))[..., ::-1]
    assert img.std() > 5  # not blank
    # the canvas shows the points: the turbo colours of the relevancy (the ball is dark red, the wall blue)
    r, g, b = (img[..., i].astype(int) for i in range(3))
    blue = (b > 120) & (r < 90) & (b - r > 60)
    assert blue.sum() > 500, f"no point colours in the screenshot ({blue.sum()} bluish pixels)"
