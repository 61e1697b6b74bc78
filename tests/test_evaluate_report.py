"""Cross-scene report tables and the `query` stage on the synthetic scene."""

import json

import numpy as np
import pandas as pd
import pytest

import evaluate_synthetic as syn
from pipeline.errors import UserError
from pipeline.evaluate.report import report
from pipeline.evaluate.stage import metrics_frame


def _scene_table(dataset, scene, miou, macc, acc, viou, depth=None):
    rows = [
        dict(dataset=dataset, scene=scene, task="time_agnostic", query="cup", metric="iou", value=miou,
             aggregation="frame_mean", n_items=3),
        dict(dataset=dataset, scene=scene, task="time_agnostic", metric="mIoU", value=miou, aggregation="query_mean", n_items=1),
        dict(dataset=dataset, scene=scene, task="time_agnostic", metric="mAcc", value=macc, aggregation="query_mean", n_items=1),
        dict(dataset=dataset, scene=scene, task="time_sensitive", metric="Acc", value=acc, aggregation="query_mean",
             variant="video", n_items=1),
        dict(dataset=dataset, scene=scene, task="time_sensitive", metric="vIoU", value=viou, aggregation="query_mean",
             variant="video", n_items=1),
        dict(dataset=dataset, scene=scene, task="time_sensitive", metric="Acc", value=0.0, aggregation="query_mean",
             variant="clip", n_items=1),
    ]
    if depth is not None:
        value, pixels = depth
        rows.append(dict(dataset=dataset, scene=scene, task="depth", metric="abs_rel", value=value,
                         aggregation="sequence", variant="scale", n_items=pixels))
    return metrics_frame(rows)


def test_report_tables_have_a_row_per_scene_and_a_mean(tmp_path):
    paths = []
    for scene, vals in {"americano": (0.8, 0.98, 0.9, 0.6, (0.1, 100)), "chickchicken": (0.6, 0.96, 0.7, 0.4, (0.2, 300))}.items():
        p = tmp_path / scene / "metrics.parquet"
        p.parent.mkdir()
        _scene_table("hypernerf", scene, *vals[:4], depth=vals[4]).to_parquet(p)
        paths.append(p)
    combined = report(paths, tmp_path / "reports")
    means = combined[combined.scene == "mean"].set_index(["task", "metric"]).value
    assert means[("time_agnostic", "mIoU")] == pytest.approx(0.7)
    assert means[("time_sensitive", "vIoU")] == pytest.approx(0.5)
    assert means[("depth", "abs_rel")] == pytest.approx((0.1 * 100 + 0.2 * 300) / 400)  # pixel-weighted
    md = (tmp_path / "reports" / "metrics.md").read_text()
    assert "| americano | 80.00 | 98.00 |" in md
    assert "| **mean** | 70.00 | 97.00 |" in md
    assert "| **mean** | 80.00 | 50.00 |" in md  # video variant, not the clip one
    html = (tmp_path / "reports" / "metrics.html").read_text()
    assert "<tr class='mean'><td>mean</td><td>70.00</td>" in html
    back = pd.read_parquet(tmp_path / "reports" / "metrics.parquet")
    assert len(back) == len(combined) and set(back.scene) == {"americano", "chickchicken", "mean"}
    with pytest.raises(UserError, match="appears in both"):
        report([paths[0], paths[0]], tmp_path / "again")


def test_query_writes_maps_video_and_figure(tmp_path):
    import av

    from pipeline.evaluate.query import query
    from pipeline.store import open_group

    results = tmp_path / "results" / "synthetic" / "toy"
    results.mkdir(parents=True)
    syn.write_render(results / "render.zarr")
    npz = syn.write_query_embeddings(tmp_path / "q.npz")
    summary = query(results, "red ball", query_embeddings=npz, decoder=syn.clip_decoder().decode)
    out = results / "queries" / "red_ball"
    g = open_group(out / "relevancy.zarr")
    assert g["relevancy"].shape == (syn.T, 3, syn.H, syn.W) and g["mask"].shape == (syn.T, syn.H, syn.W)
    assert summary["chosen_level"] == ["m"] * syn.T
    for t in (0, 5, 9):
        top, left, h, w = syn.ball_box(t)
        mask = np.asarray(g["mask"][t]).astype(bool)
        inside = mask[top : top + h, left : left + w].mean()
        assert inside > 0.6 and mask.sum() < 2 * h * w  # found the ball, not the cube
    assert dict(g.attrs)["text"] == "red ball"
    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == syn.T
    assert (out / "overlay.png").stat().st_size > 1000


def test_query_refuses_other_space_and_unknown_text(tmp_path):
    from pipeline.errors import UserError
    from pipeline.evaluate.query import query

    results = tmp_path / "scene"
    results.mkdir()
    syn.write_render(results / "render.zarr")
    other = syn.write_query_embeddings(tmp_path / "other.npz", clip_space={"kind": "other"})
    with pytest.raises(UserError, match="language spaces differ"):
        query(results, "red ball", query_embeddings=other, decoder=syn.clip_decoder().decode)
    npz = syn.write_query_embeddings(tmp_path / "q.npz")
    with pytest.raises(UserError, match="no text embedding"):
        query(results, "a purple whale", query_embeddings=npz, decoder=syn.clip_decoder().decode)


def test_a_scene_without_time_sensitive_results_shows_na_with_the_reason(tmp_path):
    why = "the render has no `video` array: its decoder has no time-sensitive head"
    evaluated = _scene_table("hypernerf", "americano", 0.8, 0.98, 0.9, 0.6)
    released = metrics_frame([
        dict(dataset="hypernerf", scene="espresso", task="time_agnostic", metric="mIoU", value=0.7, aggregation="query_mean", n_items=1),
        dict(dataset="hypernerf", scene="espresso", task="coverage", metric="time_sensitive_queries_not_evaluated", value=2.0,
             aggregation="count", n_items=2, unit="queries", note=why),
    ])
    paths = []
    for name, table in (("americano", evaluated), ("espresso", released)):
        (tmp_path / name).mkdir()
        table.to_parquet(tmp_path / name / "metrics.parquet")
        paths.append(tmp_path / name / "metrics.parquet")
    report(paths, tmp_path / "reports")
    md = (tmp_path / "reports" / "metrics.md").read_text()
    ts = md.split("time-sensitive queries")[1]
    assert "| americano | 90.00 | 60.00 |" in ts and "| espresso | n/a | n/a |" in ts
    assert "| **mean** | 90.00 | 60.00 |" in ts  # the mean is over the scenes that were evaluated
    assert f"n/a for espresso: not evaluated, {why}" in ts


def test_missing_language_space_gets_one_answer_everywhere():
    from pipeline.evaluate.encoders import require_same_space
    from pipeline.features.text import same_space

    a = {"kind": "sentence-transformers", "name": "m", "dim": 384, "fingerprint": "f"}
    assert same_space(a, dict(a)) and not same_space(a, None) and not same_space(None, None)
    notes = []
    require_same_space(None, a, what="clip_space", other="the autoencoder", log=notes.append)  # not refused: noted
    assert len(notes) == 1 and "not checked" in notes[0] and "the render records no clip space" in notes[0]
    with pytest.raises(UserError, match="language spaces differ"):
        require_same_space(a, dict(a, fingerprint="g"), what="clip_space", other="the autoencoder")
