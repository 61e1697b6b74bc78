"""The scene3d stage inside the real demo DAG (the session's demo_workflow run): the scene prompt
exists, its ids agree, and 3D grounding from the trained language field is well above chance."""

import json

import pandas as pd


def test_demo_scene_prompt_and_grounding(demo_workflow):
    scene = demo_workflow / "results/demo/demo"
    manifest = json.loads((scene / "scene_prompt/manifest.json").read_text())
    assert "ground-truth depth and cameras" in manifest["geometry"]  # the demo config says so
    assert manifest["provenance"]["params"]["geometry_source"] == "gt"
    order = manifest["scene_anno"]["demo"]
    assert order[0] == "bev.png" and sum(f.startswith("frame_") for f in order) == 8
    assert all((scene / "scene_prompt" / f).is_file() for f in [*order, "contact_sheet.png", "prompt.txt"])
    assert (scene / "cloud.ply").read_bytes().startswith(b"ply\n")
    objs = pd.read_parquet(scene / "objects3d.parquet")
    foreground = objs[~objs.background]
    assert {str(k) for k in foreground.id} <= set(manifest["images"][0]["markers"])
    # names come from the language field and the configured vocabulary
    named = set(foreground.name) & {"lamp", "blue ball", "green box", "red cup"}
    assert len(named) >= 3, foreground[["id", "name", "name_score"]]
    g = pd.read_parquet(scene / "eval/grounding.parquet")
    means = g[g.aggregation == "query_mean"].set_index("metric").value
    assert means["Acc@0.25"] >= 0.75 and means["Acc@0.25"] > means["chance_Acc@0.25"] + 0.4, means
    assert 0 <= means["F1@0.5"] <= 1 and 0 <= means["Acc@0.5"] <= means["Acc@0.25"]
    report = (demo_workflow / "results/reports/metrics.md").read_text()
    assert "3D grounding" in report
    assert list((demo_workflow / "logs/scene3d").rglob("*.log"))
