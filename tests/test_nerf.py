"""The novel-view stage (VGGT-NeRF): geometry, rendering, metrics, training and the demo run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import store
from pipeline.errors import UserError
from pipeline.nerf import evaluate as nerf_eval
from pipeline.nerf.data import SceneSources, held_out_frames, nearest_sources
from pipeline.nerf.cameras import pixel_grid, plane_homographies, relative_pose, warp_homography
from pipeline.nerf.model import NerfConfig
from pipeline.nerf.networks import volume_render
from pipeline.nerf.train import NerfSettings, train_nerf

torch.set_num_threads(1)
TINY_GEOMETRY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_embed": "conv"}
# a small field that trains in seconds on one CPU thread
SMALL = NerfConfig(feature_dim=8, num_sources=2, planes=8, samples=16, cnn_channels=(8,), net_depth=2, net_width=32,
                   multires=4, multires_views=2, colour="blend", volume_downscale=8)  # fmt: skip


def _scene(root: Path, demo_scene: Path, *, max_frames: int, stride: int = 1) -> SceneSources:
    from pipeline.frames import extract_frames
    from pipeline.geometry.stage import compute_geometry

    root.mkdir(parents=True, exist_ok=True)
    extract_frames("hypernerf", demo_scene, root / "frames.zarr", root / "scene.json", scene=root.name, dataset="demo",
                   max_frames=max_frames, stride=stride, progress=False)  # fmt: skip
    compute_geometry(root / "frames.zarr", root, random_init=0, architecture=TINY_GEOMETRY, layers=[0, 3], device="cpu")
    return SceneSources(root / "frames.zarr", root / "tokens.zarr", root / "scene.json", root / "geometry.zarr")


@pytest.fixture(scope="module")
def clip12(tmp_path_factory, demo_scene) -> SceneSources:
    """The first 12 demo frames with their (random-model) tokens and geometry."""
    return _scene(tmp_path_factory.mktemp("nerf") / "clip12", demo_scene, max_frames=12)


def _settings(**kw) -> NerfSettings:
    base = dict(epochs=2, rays=256, lr=2e-3, holdout_every=4, near=1.0, far=4.5, seed=3)
    base.update(kw)
    return NerfSettings(**base)


# ----------------------------------------------------------------------------- geometry and rendering
def test_homography_of_a_plane_onto_itself_is_identity_and_matches_projection():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(5, 12, 16, generator=g)
    K = torch.tensor([[14.0, 0.0, 8.0], [0.0, 14.0, 6.0], [0.0, 0.0, 1.0]])
    E = torch.cat([torch.linalg.matrix_exp(torch.tensor([[0.0, -0.2, 0.1], [0.2, 0.0, -0.3], [-0.1, 0.3, 0.0]])),
                   torch.tensor([[0.3], [-0.1], [2.0]])], 1)  # fmt: skip
    depths = torch.tensor([0.5, 1.0, 3.0])
    R, t = relative_pose(E, E)
    H = plane_homographies(K, K, R, t, depths)
    assert torch.allclose(H, torch.eye(3).expand(3, 3, 3), atol=1e-5)
    warped = warp_homography(image, H, (12, 16))
    for d in range(3):
        assert torch.allclose(warped[:, d], image, atol=2e-4)  # identity up to float32 rounding
    # another camera: the homography of plane z = d sends a pixel where its point on that plane projects
    E2 = E.clone()
    E2[:, 3] += torch.tensor([0.2, 0.05, -0.1])
    R, t = relative_pose(E, E2)
    H = plane_homographies(K, K, R, t, depths)
    pix = pixel_grid(12, 16)[[0, 37, 150]]
    for d, depth in enumerate(depths):
        cam = pix @ torch.linalg.inv(K).T * depth
        world = (cam - E[:, 3]) @ E[:, :3]
        proj = (world @ E2[:, :3].T + E2[:, 3]) @ K.T
        mapped = pix @ H[d].T
        assert torch.allclose(mapped[:, :2] / mapped[:, 2:], proj[:, :2] / proj[:, 2:], atol=1e-4)


def test_a_ray_through_a_single_opaque_voxel_renders_its_colour():
    z = torch.linspace(1.0, 3.0, 9).expand(2, 9)
    sigma = torch.zeros(2, 9)
    sigma[:, 4] = 1e4  # one opaque sample; the rest empty
    rgb = torch.rand(2, 9, 3, generator=torch.Generator().manual_seed(1))
    out = volume_render(sigma, rgb, z)
    assert torch.allclose(out["rgb"], rgb[:, 4], atol=1e-5)
    assert torch.allclose(out["depth"], z[:, 4], atol=1e-4)
    assert torch.allclose(out["opacity"], torch.ones(2), atol=1e-5)
    empty = volume_render(torch.zeros(2, 9), rgb, z)
    assert torch.allclose(empty["rgb"], torch.zeros(2, 3)) and torch.allclose(empty["opacity"], torch.zeros(2))


def test_psnr_and_ssim_on_known_cases():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (32, 40, 3))
    assert nerf_eval.psnr(image, image + 0.1) == pytest.approx(20.0, abs=1e-6)  # MSE 0.01
    assert nerf_eval.psnr(image, image + 0.01) == pytest.approx(40.0, abs=1e-6)
    assert nerf_eval.ssim(image, image) == pytest.approx(1.0)
    a, b = np.full((16, 16, 3), 0.3), np.full((16, 16, 3), 0.6)  # constant images: only the luminance term
    c1 = (0.01 * 1.0) ** 2
    assert nerf_eval.ssim(a, b) == pytest.approx((2 * 0.3 * 0.6 + c1) / (0.3**2 + 0.6**2 + c1), rel=1e-6)
    assert nerf_eval.ssim(image, rng.uniform(0.2, 0.8, image.shape)) < 0.2


def test_lpips_is_n_a_with_its_reason_without_a_local_backbone(tmp_path):
    metric = nerf_eval.Lpips(None)
    assert metric.model is None and "nerf.lpips_backbone" in metric.reason and "never downloaded" in metric.reason
    with pytest.raises(UserError, match="nerf.lpips_backbone"):
        nerf_eval.Lpips(tmp_path / "missing.safetensors")


def test_lpips_with_a_local_backbone_file(tmp_path):
    pytest.importorskip("lpips", reason="the lpips package is not installed (LPIPS is then n/a with that reason)")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    widths = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
              17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}  # fmt: skip
    state = {}
    for index, (cin, cout) in widths.items():  # torchvision vgg16 `features` conv layers, random weights
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(cout)
    save_file(state, str(tmp_path / "vgg16.safetensors"))
    metric = nerf_eval.Lpips(tmp_path / "vgg16.safetensors")
    assert metric.reason is None
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (64, 64, 3)).astype(np.float32)
    assert metric(image, image) == pytest.approx(0.0, abs=1e-6)
    assert metric(image, np.clip(image + rng.normal(0, 0.2, image.shape), 0, 1)) > 0


def test_held_out_split_and_nearest_sources():
    assert held_out_frames(12, 4) == [2, 6, 10]
    assert nearest_sources(2, [0, 1, 3, 4, 5], 3) == [1, 3, 0]
    with pytest.raises(UserError, match="nerf.holdout_every=1"):
        held_out_frames(12, 1)


def test_reprojection_with_true_depth_reproduces_the_other_view():
    """A fronto-parallel textured plane seen by two cameras: forward-warping one view with its depth gives the other."""
    H, W = 24, 32
    K = np.array([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]])
    E_s = np.hstack([np.eye(3), np.zeros((3, 1))])
    E_t = np.hstack([np.eye(3), np.array([[0.05], [0.0], [0.0]])])

    def view(E):
        v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
        x = ((u - K[0, 2]) / K[0, 0]) * 2.0 - E[0, 3]  # plane z = 2: world x of each pixel
        return np.repeat((0.5 + 0.4 * np.sin(3 * x))[..., None], 3, -1)

    out, coverage = nerf_eval.reproject(view(E_s), np.full((H, W), 2.0), K, E_s, K, E_t, np.zeros((H, W, 3)))
    assert coverage > 0.9
    hit = out.sum(-1) > 0
    assert np.abs(out[hit] - view(E_t)[hit]).max() < 0.05


# ----------------------------------------------------------------------------- training
def test_the_stage_overfits_two_demo_frames(tmp_path, demo_scene):
    two = _scene(tmp_path / "two", demo_scene, max_frames=3, stride=2)  # frames 0, 2, 4; the middle one held out
    config = NerfConfig(**{**SMALL.to_dict(), "num_sources": 1, "colour": "direct", "net_width": 64, "net_depth": 3,
                           "multires": 6})  # direct RGB: starts at grey, so the rise is what it learnt  # fmt: skip
    summary = train_nerf([two], tmp_path / "w" / "nerf.safetensors", config=config, progress=False, device="cpu",
                         settings=_settings(epochs=60, rays=512, lr=5e-3, holdout_every=3))  # fmt: skip
    assert summary["held_out"] == {"two": [1]}
    log = pd.read_parquet(summary["log"])
    assert set(log["target"]) == {0, 2}
    early, late = log["psnr"].iloc[:5].mean(), log["psnr"].iloc[-5:].mean()
    assert late > early + 5.0, (early, late)  # measured: 15.2 -> 22.1 dB


def test_held_out_frames_never_enter_training(clip12, tmp_path):
    summary = train_nerf([clip12], tmp_path / "nerf.safetensors", config=SMALL, settings=_settings(epochs=2),
                         progress=False, device="cpu")  # fmt: skip
    log = pd.read_parquet(summary["log"])
    held = store.read_provenance(summary["log"])["held_out"]["clip12"]
    assert held == [2, 6, 10] == held_out_frames(12, 4)
    used = set(log["target"]) | set(log["source_0"]) | set(log["source_1"])
    assert used.isdisjoint(held)
    assert sorted(set(log["target"])) == [t for t in range(12) if t not in held]  # every training frame is a target
    assert (log["target"] != log["source_0"]).all() and (log["target"] != log["source_1"]).all()
    assert len(log) == 2 * 9


def test_resume_equals_an_uninterrupted_run(clip12, tmp_path):
    from safetensors.torch import load_file

    settings = _settings(epochs=3)
    whole = train_nerf([clip12], tmp_path / "a" / "nerf.safetensors", config=SMALL, settings=settings, progress=False,
                       device="cpu")  # fmt: skip

    def stop_after_first(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    out = tmp_path / "b" / "nerf.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train_nerf([clip12], out, config=SMALL, settings=settings, progress=False, device="cpu", on_epoch_end=stop_after_first)
    assert not out.exists() and list((tmp_path / "b" / "nerf_checkpoints").glob("epoch_0001.*"))
    resumed = train_nerf([clip12], out, config=SMALL, settings=settings, progress=False, device="cpu")
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith("epoch_0001.safetensors")
    a, b = load_file(whole["out"]), load_file(resumed["out"])
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    la, lb = pd.read_parquet(whole["log"]), pd.read_parquet(resumed["log"])
    assert la[["epoch", "step", "target", "source_0"]].equals(lb[["epoch", "step", "target", "source_0"]])
    assert np.allclose(la["loss"], lb["loss"], rtol=1e-4, atol=1e-6)


def test_bad_input_is_one_line_naming_the_key_and_keeps_what_was_trained(clip12, tmp_path):
    out = tmp_path / "nerf.safetensors"
    kept = tmp_path / "nerf_checkpoints" / "epoch_0001.safetensors"
    kept.parent.mkdir()
    kept.write_bytes(b"an earlier run's checkpoint")

    def fails(match, sources=(clip12,), **kw):
        config = kw.pop("config", SMALL)
        with pytest.raises(UserError, match=match) as err:
            train_nerf(list(sources), out, config=config, settings=_settings(**kw), progress=False, device="cpu")
        assert "\n" not in str(err.value)

    fails(r"nerf.holdout_every=1 .*expected an integer >= 2", holdout_every=1)
    fails(r"nerf.num_sources=9 .*holdout_every=4", config=NerfConfig(**{**SMALL.to_dict(), "num_sources": 9}))
    static = tmp_path / "static"
    shutil.copytree(clip12.frames.parent, static, ignore=shutil.ignore_patterns("*.tmp-*"))
    info = json.loads((static / "scene.json").read_text())
    info["cameras"]["extrinsics"] = [info["cameras"]["extrinsics"][0]] * len(info["cameras"]["extrinsics"])
    (static / "scene.json").write_text(json.dumps(info))
    moved = SceneSources(static / "frames.zarr", static / "tokens.zarr", static / "scene.json", static / "geometry.zarr")
    fails(r"degenerate cameras, all 12 frames at one position \(nerf.cameras", sources=(moved,))
    info["cameras"] = None
    (static / "scene.json").write_text(json.dumps(info))
    fails(r"nerf.cameras is `scene` but scene static has no cameras", sources=(moved,), cameras="scene")
    assert kept.read_bytes() == b"an earlier run's checkpoint" and not out.exists()


def test_render_and_evaluate_write_metrics_and_strip(clip12, tmp_path):
    from pipeline.nerf.render import render_held_out

    summary = train_nerf([clip12], tmp_path / "nerf.safetensors", config=SMALL, settings=_settings(epochs=1),
                         progress=False, device="cpu")  # fmt: skip
    render_held_out(summary["out"], clip12, tmp_path / "render.zarr", name="clip12", device="cpu", progress=False)
    group = store.open_group(tmp_path / "render.zarr")
    assert group["rgb"].shape == (3, 168, 224, 3) and dict(group.attrs)["frames"] == [2, 6, 10]
    assert dict(group.attrs)["sources"][0] == [1, 3]
    table = nerf_eval.evaluate_novel_views(tmp_path / "render.zarr", summary["out"], clip12, tmp_path / "metrics.parquet",
                                           strip=tmp_path / "strip.png", dataset="demo", scene_name="clip12",
                                           log=lambda *_: None)  # fmt: skip
    per_frame = table[(table.task == "novel_view") & (table.aggregation == "none")]
    assert set(per_frame.variant) == {"nerf", "copy_nearest", "reproject_depth"}
    assert sorted(set(per_frame.frame)) == [2, 6, 10] and len(per_frame) == 3 * 3 * 3
    means = table[table.aggregation == "frame_mean"].set_index(["variant", "metric"])["value"]
    assert np.isfinite(means[("nerf", "psnr")]) and 0 < means[("copy_nearest", "ssim")] <= 1
    assert np.isnan(means[("nerf", "lpips")])
    assert "nerf.lpips_backbone" in table[(table.metric == "lpips")].note.iloc[0]
    assert set(table[table.task == "novel_view_depth"].variant) == {"nerf/none", "nerf/median"}  # the demo has GT depth
    assert (tmp_path / "strip.png").stat().st_size > 10_000


def test_camera_path_video(clip12, tmp_path):
    import av

    from pipeline.nerf.render import camera_path, render_held_out, scene_for_weights
    from pipeline.nerf.model import load_nerf

    summary = train_nerf([clip12], tmp_path / "nerf.safetensors", config=SMALL, settings=_settings(epochs=1),
                         progress=False, device="cpu")  # fmt: skip
    _, meta = load_nerf(summary["out"])
    scene = scene_for_weights(clip12, meta)
    path = camera_path(scene, 5)
    assert [round(t, 6) for t, _, _ in path[:: len(path) - 1]] == [scene.train_frames[0], scene.train_frames[-1]]
    first = scene.extrinsics[scene.train_frames[0]]
    assert np.allclose(path[0][2], first, atol=1e-6)  # the path starts at the first training camera
    out = render_held_out(summary["out"], clip12, tmp_path / "render.zarr", device="cpu", progress=False, path_frames=3,
                          path_video=tmp_path / "path.mp4")  # fmt: skip
    assert out["path_video"] == str(tmp_path / "path.mp4")
    with av.open(str(tmp_path / "path.mp4")) as video:
        frames = list(video.decode(video=0))
    assert len(frames) == 3 and (frames[0].height, frames[0].width) == (168, 224)


# ----------------------------------------------------------------------------- the demo through snakemake
def test_demo_novel_views_beat_the_copied_frame(demo_workflow):
    scene = demo_workflow / "results/demo/demo/nerf"
    metrics = pd.read_parquet(scene / "metrics.parquet")
    means = metrics[(metrics.task == "novel_view") & (metrics.aggregation == "frame_mean")]
    psnr = means[means.metric == "psnr"].set_index("variant")["value"]
    assert psnr["nerf"] > psnr["copy_nearest"] + 1.0, psnr.to_dict()
    per_frame = metrics[(metrics.task == "novel_view") & (metrics.aggregation == "none")]
    held = sorted(set(per_frame.frame))
    assert held == held_out_frames(24, 4)
    log = pd.read_parquet(scene / "nerf_log.parquet")
    sources = [c for c in log.columns if c.startswith("source_")]
    assert set(log["target"]).union(*(set(log[c]) for c in sources)).isdisjoint(held)
    assert (scene / "strip.png").is_file() and (scene / "loss.png").is_file()
    report = (demo_workflow / "results/reports/metrics.md").read_text()
    assert "novel views of held-out frames" in report and "PSNR [nerf]" in report and "strip.png" in report
    assert "n/a for LPIPS of demo: no local LPIPS backbone configured" in report
    for rule in ("nerf_train", "nerf_render", "nerf_evaluate"):
        assert list((demo_workflow / "logs" / rule).rglob("*.log")), rule
