"""`distilvpr demo`: the chained pipeline end to end on the tiny world with tiny models, resume, clear errors.

The full chain runs once (module fixture): world -> teacher -> student -> ONNX -> map through the mapping node
(a trimmed bag over DDS) -> replay through the localization node -> offline evaluation -> report. The
Corridor folder is pointed at a missing path, so the stage must be skipped with a line, not crash.
"""

import json
import os

import numpy as np
import pytest
import yaml

from distilvpr_ros.demo import STAGE_FILE, STAGES, Demo, DemoSettings, frame_windows, load_demo_settings, run_demo

TINY_MODEL = {"model.image_size": [64, 48], "model.pretrained": False, "model.image_backbone": "resnet18",
              "model.student_dim": 32, "model.cloud_dim": 16, "model.image_dim": 16, "model.lidar_channels": [8, 16],
              "model.bev.cells": 16, "optim.epochs": 1, "optim.batch_size": 8, "threads": 1, "eval_batch_size": 32}
NODE = {"models.num_threads": 1, "diagnostics.period_s": 0.3}


def settings(hz: float = 20.0, corridor_root: str = "/nonexistent/corridor") -> dict:
    return {"quick": {
        "world": "tiny",
        "teacher": dict(TINY_MODEL),
        "student": {**TINY_MODEL, "distill.method": "sc"},
        "mapping": {"run": "run00_day", "region": "test", "rate": 10.0, "max_gap_s": 1.0, "odom_lead_s": 1.0,
                    "max_unpaired": 0, "node": {**NODE, "qos.sensor_reliability": "reliable", "qos.sensor_depth": 50,
                                                "diagnostics.period_s": 0.1}},
        "localization": {"run": "run01_night", "region": "test", "hz": hz, "node": NODE},
        "evaluate": {"region": "test"},
        "corridor": {"root": corridor_root},
    }}


def write_settings(path, **kwargs):
    path.write_text(yaml.safe_dump(settings(**kwargs)))
    return path


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    pytest.importorskip("rclpy")
    root = tmp_path_factory.mktemp("demo")
    config = write_settings(root / "demo.yaml")
    out = run_demo(quick=True, results_root=root / "results", data_root=root / "data", config=config, progress=False)
    return {"root": root, "config": config, "out": out, "summary": json.loads((out / "summary.json").read_text()),
            "work": root / "results" / "demo" / "work_quick", "world": root / "data" / "world_tiny"}


@pytest.mark.ros
def test_demo_runs_every_stage_and_writes_the_report(first):
    out, summary = first["out"], first["summary"]
    assert (out.parent / "latest").resolve() == out.resolve()
    assert [s["stage"] for s in summary["stages"]] == [name for name, _, _ in STAGES]
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {**{name: "ran" for name, _, _ in STAGES}, "corridor": "skipped"}
    report = (out / "report.md").read_text()
    assert report.startswith("# distilvpr demo (quick: tiny world)")
    for name in ("preview.png", "recall_at_n.png", "matches_offline.png", "pr.png", "trajectory.png",
                 "trajectory_top1.png", "matches.png", "latency.png", "teacher_training.png", "student_training.png"):
        assert (out / name).stat().st_size > 5_000, name
        assert f"({name})" in report, name
    assert "Skipped: Corridor data not found at /nonexistent/corridor" in report  # no crash without the data
    assert "corridor.png" not in report


@pytest.mark.ros
def test_demo_recalls_come_from_the_real_evaluation(first):
    """The report's teacher/student Recall@N equal an independent evaluation of the trained checkpoints."""
    from distilvpr_ros.data.synthetic import load_synthetic
    from distilvpr_ros.models.inference import embed_sequences
    from distilvpr_ros.evaluation.evaluate import evaluate_sequences
    from distilvpr_ros.models.checkpoint import load_model

    ev = first["summary"]["evaluate"]
    test = load_synthetic(first["world"], regions={"test"})
    report = (first["out"] / "report.md").read_text()
    for role in ("teacher", "student"):
        model = load_model(first["work"] / role / "best")
        assert model.kind == ("teacher" if role == "teacher" else "camera_student")
        expected = evaluate_sequences(embed_sequences(model, test, batch_size=32, progress=False), test)
        for key in ("recall@1", "recall@5", "recall@1%"):
            assert 0.0 <= ev[role][key] <= 1.0
            assert ev[role][key] == pytest.approx(expected[key], abs=1e-9), (role, key)
        assert f"| {ev[role]['recall@1']:.3f} | {ev[role]['recall@5']:.3f} |" in report
    assert ev["student"]["num_queries"] == expected["num_queries"] > 0


@pytest.mark.ros
def test_demo_maps_and_localizes_through_the_nodes(first):
    """The mapping node received every test-region frame of the trimmed day bag (keyframe stamps = the frames'
    stamps, through DDS); the localization node answered every test-region night frame."""
    from distilvpr_ros.data.synthetic import load_synthetic
    from distilvpr_ros.mapping.database import PlaceDatabase

    s = first["summary"]
    runs = {seq.run: seq for seq in load_synthetic(first["world"], regions={"test"})}
    day, night = runs["run00_day"], runs["run01_night"]
    db = PlaceDatabase.load(first["work"] / "map" / "map")
    np.testing.assert_allclose(np.sort(db.stamps), day.timestamps, atol=1e-6)
    assert s["map"]["map_size"] == len(db) == len(day) and s["map"]["published"]["camera/image_raw"] == len(day)
    assert s["map"]["node"]["drops"] == 0 and s["map"]["exit_code"] == 0
    assert (first["work"] / "map" / "mapping_node.log").is_file()
    loc = s["localize"]
    assert loc["frames"] == len(night) and loc["answered"] == len(night) and loc["map_size"] == len(day)
    assert loc["backend"] == "onnxruntime" and loc["model"].endswith("student.onnx")
    for key in ("recall@1", "pr_auc", "max_f1"):
        assert 0.0 <= loc[key] <= 1.0, key
    assert 0 < loc["latency_ms_p50"] <= loc["latency_ms_p99"]
    metrics = json.loads((first["work"] / "localize" / "replay" / "metrics.json").read_text())
    assert metrics["recall@1"] == loc["recall@1"]


@pytest.mark.ros
def test_demo_resumes_and_reruns_only_what_changed(first, capsys):
    work = first["work"]
    built = {name: (work / name / STAGE_FILE).stat().st_mtime_ns for name, _, _ in STAGES if name != "corridor"}
    common = dict(quick=True, results_root=first["root"] / "results", data_root=first["root"] / "data",
                  progress=False)
    again = run_demo(config=first["config"], **common)
    assert again != first["out"] and (again / "report.md").is_file()
    status = {s["stage"]: s["status"] for s in json.loads((again / "summary.json").read_text())["stages"]}
    assert status == {**{name: "reused" for name in built}, "corridor": "skipped"}
    assert {name: (work / name / STAGE_FILE).stat().st_mtime_ns for name in built} == built
    assert "reusing" in capsys.readouterr().out
    # another replay rate: only the localization stage runs again
    changed = write_settings(first["root"] / "changed.yaml", hz=25.0)
    summary = json.loads((run_demo(config=changed, **common) / "summary.json").read_text())
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {**{name: "reused" for name in built}, "localize": "ran", "corridor": "skipped"}
    assert summary["localize"]["hz"] == 25.0


def test_stage_runner_rebuilds_downstream_of_a_rebuilt_stage(tmp_path):
    """A stage rebuilt with unchanged inputs gets a new build id, so the stages using it rebuild too."""
    demo = Demo("quick", DemoSettings.model_validate(settings()["quick"]), tmp_path, tmp_path / "work")
    builds = []

    def run(stage, inputs):
        demo.current = stage
        return demo.cached(inputs, lambda out: builds.append(stage) or {"n": len(builds)})

    run("a", {"x": 1})
    run("b", {"a": demo.ids["a"]})
    run("a", {"x": 1})
    run("b", {"a": demo.ids["a"]})
    assert builds == ["a", "b"]  # both reused
    (tmp_path / "work" / "a" / STAGE_FILE).unlink()  # a's outputs lost: rebuilt, and b with it
    run("a", {"x": 1})
    run("b", {"a": demo.ids["a"]})
    assert builds == ["a", "b", "a", "b"]
    assert [e["status"] for e in demo.log] == ["ran", "ran", "reused", "reused", "ran", "ran"]


def test_frame_windows_merge_consecutive_frames():
    assert frame_windows(np.array([3, 4, 5, 9, 10, 20]), np.array([1.0, 1.5, 2.0, 4.0, 4.5, 9.0])) == [
        (1.0, 2.0), (4.0, 4.5), (9.0, 9.0)]


def test_demo_config_sections_are_valid():
    from distilvpr_ros.training.config import TrainConfig

    for section in ("quick", "default"):
        s = load_demo_settings(None, section)
        for role in ("teacher", "student"):
            TrainConfig.from_yaml(None, getattr(s, role))  # every override is a TrainConfig key
    assert load_demo_settings(None, "default").student["distill.method"] == "sc"


def test_demo_bad_settings_are_one_clear_line(tmp_path, capsys):
    from distilvpr_ros.cli import main

    assert main(["demo", "--quick", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = settings()
    bad["quick"]["mapping"]["rat"] = 3.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["demo", "--quick", "--config", str(tmp_path / "bad.yaml"), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "section 'quick'" in err and "rat" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "demo")  # nothing was run
