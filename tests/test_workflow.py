"""The real snakemake on the workflow: lint, config validation, the demo DAG and its no-op rerun."""

import json

import zarr

from conftest import REPO, copy_workflow, small_config, snakemake, write_config


def test_lint_is_clean():
    proc = snakemake(REPO, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_error_names_the_key(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "config.yaml").write_text("scenes:\n  demo:\n    dataset: demo\n    source: demo\n    strde: 2\n")
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last == "config error at `scenes.demo`: Additional properties are not allowed ('strde' was unexpected)"
    (workdir / "config.yaml").write_text("scenes:\n  clip:\n    dataset: mine\n    source: video\n    stride: 0\n    path: a.mp4\n")
    last = snakemake(workdir, "-n", check=False).stderr.strip().splitlines()[-1]
    assert last == "config error at `scenes.clip.stride`: 0 is less than the minimum of 1"


def test_a_key_given_twice_is_refused_naming_it(tmp_path):
    workdir = copy_workflow(tmp_path)
    text = "scenes:\n  one:\n    dataset: demo\n    source: demo\n  one:\n    dataset: demo\n    source: demo\n    seed: 3\n"
    (workdir / "config.yaml").write_text(text)
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.startswith("config error in ") and "config.yaml line 5: key `scenes.one` is given twice (first on line 2)" in last


def test_demo_dag_runs_and_second_run_does_nothing(demo_workflow):
    scene = demo_workflow / "results/demo/demo"
    record = json.loads((scene / "scene.json").read_text())
    assert record["num_frames"] == 24 and (record["height"], record["width"]) == (168, 224)
    assert zarr.open_group(str(scene / "frames.zarr"), mode="r")["rgb"].shape == (24, 168, 224, 3)
    for rule in ("demo_scene", "frames"):
        assert list((demo_workflow / "logs" / rule).rglob("*.log")), rule
        assert list((demo_workflow / "benchmarks" / rule).rglob("*.tsv")), rule
    again = snakemake(demo_workflow)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_per_scene_target_rule(tmp_path):
    workdir = copy_workflow(tmp_path)
    write_config(workdir, small_config(), "config.yaml")  # scenes `one` and `two`
    proc = snakemake(workdir, "-n", "scene_two")
    out = proc.stdout + proc.stderr
    assert "results/demo/two/frames.zarr" in out and "results/demo/one" not in out


def test_demo_evaluation_is_well_above_chance(demo_workflow):
    """The whole language chain on the demo: queries find their objects, states are told apart."""
    import pandas as pd

    metrics = pd.read_parquet(demo_workflow / "results/demo/demo/eval/metrics.parquet")
    scene = metrics[metrics["aggregation"] == "query_mean"]

    def value(task, metric, variant=None):
        rows = scene[(scene["task"] == task) & (scene["metric"] == metric)]
        if variant is not None:
            rows = rows[rows["variant"] == variant]
        assert len(rows) == 1, (task, metric, variant)
        return float(rows["value"].iloc[0])

    # Floors under the minimum over seeds, thread counts and CPU kernels that
    # benchmarks/bench_demo_spread.py measured (README "Demo results"), with a margin.
    assert value("time_agnostic", "mIoU") > 0.6
    assert value("time_sensitive", "Acc", "video") >= 0.8  # two states: chance is 0.5
    assert value("time_sensitive", "vIoU", "video") > 0.5
    ious = metrics[(metrics["task"] == "time_agnostic") & (metrics["aggregation"] == "frame_mean") & (metrics["metric"] == "iou")]
    assert ious["value"].min() > 0.4, ious[["query", "value"]]  # the small cup too, not only the big objects
    report = (demo_workflow / "results/reports/metrics.md").read_text()
    assert "| demo |" in report and "**mean**" in report
    figures = sorted(p.name for p in (demo_workflow / "results/demo/demo/eval/figures").glob("*.png"))
    assert figures == ["blue_ball.png", "green_box.png", "lamp.png", "red_cup.png",
                       "the_lamp_is_switched_off_and_dark.png", "the_lamp_is_switched_on_and_glowing.png"]  # fmt: skip
