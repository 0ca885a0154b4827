"""`distilvpr demo`: the chained pipeline end to end on the tiny world with tiny models, resume, clear errors.

The full chain runs once (module fixture): world -> teacher -> student -> ONNX -> map through the mapping node
(a trimmed bag over DDS) -> replay through the localization node -> offline evaluation -> report. The
Corridor folder is pointed at a missing path, so the stage must be skipped with a line, not crash.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from distilvpr_ros.demo import STAGE_FILE, STAGES, Demo, DemoSettings, Stage, load_demo_settings, run_demo

TINY_MODEL = {"model.image_size": [64, 48], "model.pretrained": False, "model.image_backbone": "resnet18",
              "model.student_dim": 32, "model.cloud_dim": 16, "model.image_dim": 16, "model.lidar_channels": [8, 16],
              "model.bev.cells": 16, "optim.epochs": 1, "optim.batch_size": 8, "threads": 1, "eval_batch_size": 32}
NODE = {"models.num_threads": 1, "diagnostics.period_s": 0.3}


def settings(hz: float = 10.0, corridor_root: str = "/nonexistent/corridor") -> dict:
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
    assert [s["stage"] for s in summary["stages"]] == [stage.name for stage in STAGES]
    assert summary["ground_truth"]["test"]["frames"] > 0
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {**{stage.name: "ran" for stage in STAGES}, "corridor": "skipped"}
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
    from distilvpr_ros.evaluation.report import format_value
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
        assert ev[role]["chance@1"] == pytest.approx(expected["chance@1"], abs=1e-9)
        assert f"| {role} | visible subset | {format_value(ev[role]['headline']['visible'])} |" in report
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
    score = s["map"]["loop_closure_score"]  # scored against the map's poses, not only counted
    assert score["published"] == len(s["map"]["loop_closures"]) == score["correct"] + score["wrong"]
    assert len(score["distances_m"]) == score["scored"]
    loc = s["localize"]
    assert loc["frames"] == len(night) and loc["answered"] == len(night) and loc["map_size"] == len(day)
    assert loc["backend"] == "onnxruntime" and loc["model"].endswith("student.onnx")
    for key in ("recall@1", "pr_auc", "max_f1"):
        assert 0.0 <= loc[key] <= 1.0, key
    assert 0 < loc["latency_ms_p50"] <= loc["latency_ms_p99"]
    metrics = json.loads((first["work"] / "localize" / "replay" / "metrics.json").read_text())
    assert metrics["recall@1"] == loc["recall@1"]
    assert db.has_views and db.format_version == 2  # the node's map can be verified against
    v = loc["verification"]  # the same frames through the verified pipeline, under stable keys
    assert v["queries"] == len(night) and v["verification"] is True and v["features"] == "orb"  # the default
    for side in ("before", "after"):
        assert 0 <= v[side]["correct"] <= v[side]["accepted"] <= v["queries"]
    assert v["pose_error"]["count"] == v["after"]["accepted"]
    assert set(v["recall@1"]) == {"before", "after", "delta"}
    # the node's own verified matches, scored from what it published; the map records the world's calibration
    vm = loc["verified_matches"]
    assert vm["queries"] == loc["answered"] and set(vm["recall@1"]) == {"before", "after", "delta"}
    for side in ("before", "after"):
        assert 0 <= vm[side]["correct"] <= vm[side]["accepted"] <= vm["queries"]
    assert vm["pose_error"]["count"] == vm["after"]["accepted"] == loc["accepted"] == loc["node"]["verified"]
    assert loc["loop_closures"] == loc["accepted"] and "loop_closure_precision" in loc
    assert db.calibration(s["map"]["run"]) is not None
    assert "verified by ORB + PnP" in (first["out"] / "report.md").read_text()  # names the features it used


@pytest.mark.ros
def test_demo_resumes_and_reruns_only_what_changed(first, capsys):
    work = first["work"]
    built = {s.name: (work / s.name / STAGE_FILE).stat().st_mtime_ns for s in STAGES if s.name != "corridor"}
    common = dict(quick=True, results_root=first["root"] / "results", data_root=first["root"] / "data",
                  progress=False)
    again = run_demo(config=first["config"], **common)
    assert again != first["out"] and (again / "report.md").is_file()
    status = {s["stage"]: s["status"] for s in json.loads((again / "summary.json").read_text())["stages"]}
    assert status == {**{name: "reused" for name in built}, "corridor": "skipped"}
    assert {name: (work / name / STAGE_FILE).stat().st_mtime_ns for name in built} == built
    assert "reusing" in capsys.readouterr().out
    # another replay rate: only the localization stage runs again
    changed = write_settings(first["root"] / "changed.yaml", hz=12.5)
    summary = json.loads((run_demo(config=changed, **common) / "summary.json").read_text())
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {**{name: "reused" for name in built}, "localize": "ran", "corridor": "skipped"}
    assert summary["localize"]["hz"] == 12.5


def test_stage_runner_rebuilds_downstream_of_a_rebuilt_stage(tmp_path):
    """A stage rebuilt with unchanged inputs gets a new build id, so the stages using it rebuild too."""
    demo = Demo("quick", DemoSettings.model_validate(settings()["quick"]), tmp_path, tmp_path / "work")
    builds = []

    def build(demo, out):
        builds.append(out.name)
        return {"n": len(builds)}

    a = Stage("a", "first", build, inputs=lambda demo: {"x": 1})
    b = Stage("b", "uses a", build, needs=("a",))
    demo.run_stage(a)
    demo.run_stage(b)
    demo.run_stage(a)
    demo.run_stage(b)
    assert builds == ["a", "b"]  # both reused
    assert demo.results == {"a": {"n": 1}, "b": {"n": 2}}
    (tmp_path / "work" / "a" / STAGE_FILE).unlink()  # a's outputs lost: rebuilt, and b with it
    demo.run_stage(a)
    demo.run_stage(b)
    assert builds == ["a", "b", "a", "b"]
    assert [e["status"] for e in demo.log] == ["ran", "ran", "reused", "reused", "ran", "ran"]
    # a changed input rebuilds the stage and what needs it; fresh rebuilds everything
    demo.run_stage(Stage("a", "first", build, inputs=lambda demo: {"x": 2}))
    demo.run_stage(b)
    assert builds == ["a", "b"] * 3
    demo.fresh = True
    demo.run_stage(Stage("a", "first", build, inputs=lambda demo: {"x": 2}))
    assert builds == ["a", "b"] * 3 + ["a"]


def test_stage_runner_skips_what_needs_a_skipped_stage_and_checks_declared_outputs(tmp_path):
    demo = Demo("quick", DemoSettings.model_validate(settings()["quick"]), tmp_path, tmp_path / "work")
    builds = []

    def build(demo, out):
        builds.append(out.name)
        (out / "model.bin").write_bytes(b"x")
        return {}

    a = Stage("a", "first", build, outputs=("model.bin",))
    off = Stage("off", "cannot run", build, unavailable=lambda demo: "no data")
    assert demo.run_stage(off) == {"skipped": "no data"}
    assert demo.run_stage(Stage("c", "needs off", build, needs=("off",))) == {"skipped": "no off"}
    assert builds == []
    demo.run_stage(a)
    demo.run_stage(a)
    assert builds == ["a"]  # an empty result is reused too
    (tmp_path / "work" / "a" / "model.bin").unlink()
    demo.run_stage(a)
    assert builds == ["a", "a"]
    assert [e["status"] for e in demo.log] == ["skipped", "skipped", "ran", "reused", "ran"]


def test_stage_with_a_fingerprint_is_rebuilt_when_its_content_changed(tmp_path):
    """Like the world stage: the build id is the content's fingerprint, so content made again identically
    rebuilds nothing downstream; changed or gone, the stage is rebuilt."""
    demo = Demo("quick", DemoSettings.model_validate(settings()["quick"]), tmp_path, tmp_path / "work")
    content = tmp_path / "content.txt"
    builds = []

    def build(demo, out):
        builds.append(out.name)
        if not content.exists():
            content.write_text("v1")
        return {"path": str(content)}

    def fingerprint(demo, result):
        path = Path(result["path"])
        return path.read_text() if path.is_file() else None

    src = Stage("src", "content", build, fingerprint=fingerprint)
    use = Stage("use", "uses src", build, needs=("src",))
    demo.run_stage(src)
    demo.run_stage(use)
    assert demo.ids["src"] == "v1" and builds == ["src", "use"]
    content.unlink()  # gone: rebuilt (made again, identically), and what uses it is still valid
    demo.run_stage(src)
    demo.run_stage(use)
    assert builds == ["src", "use", "src"] and demo.log[-1]["status"] == "reused"
    content.write_text("v2")  # changed: rebuilt with the new id, and what uses it too
    demo.run_stage(src)
    demo.run_stage(use)
    assert demo.ids["src"] == "v2" and builds == ["src", "use", "src", "src", "use"]


@pytest.mark.ros
def test_world_stage_time_includes_making_the_world(first, monkeypatch, tmp_path):
    """The stage table's seconds are what the stage really did: the world stage's include checking or generating
    the world (ensure_world), and a reused stage shows the time it was built in."""
    import time

    from distilvpr_ros.demo import stages

    real = stages.ensure_world

    def slow_ensure_world(*args, **kwargs):
        time.sleep(2.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "ensure_world", slow_ensure_world)
    demo = Demo("quick", load_demo_settings(first["config"], "quick"), first["root"] / "data", tmp_path / "work",
                progress=False)
    world = next(s for s in STAGES if s.name == "world")
    started = time.perf_counter()
    demo.run_stage(world)
    wall = time.perf_counter() - started
    ran = demo.log[-1]
    assert ran["status"] == "ran" and ran["seconds"] >= 2.0 and wall - ran["seconds"] < 1.0, (ran, wall)
    # the same world again: the same id as in the first run, so nothing downstream would be rebuilt
    assert demo.ids["world"] == json.loads((first["work"] / "world" / STAGE_FILE).read_text())["id"]
    demo.run_stage(world)
    assert demo.log[-1]["status"] == "reused" and demo.log[-1]["built_in_s"] == ran["seconds"]


def test_demo_config_sections_are_valid():
    from distilvpr_ros.pipeline.config import load_node_config
    from distilvpr_ros.training.config import TrainConfig

    for section in ("quick", "default"):
        s = load_demo_settings(None, section)
        for role in ("teacher", "student"):
            TrainConfig.from_yaml(None, getattr(s, role))  # every override is a TrainConfig key
        load_node_config(None, **s.mapping.node)  # ... and a NodeConfig key
        load_node_config(None, **{**s.localization.node, "verification.camera.cnn_head": ""})
    assert load_demo_settings(None, "default").student["distill.method"] == "sc"


def test_demo_trains_a_verification_head_only_when_the_node_needs_one(tmp_path):
    """The verifier stage: nothing for ORB; for CNN features without a head, the localization node (and the
    offline verified pass) get the head it trains; a head of the node's own is kept."""
    from distilvpr_ros.demo.stages import HEAD_FILE, build_verifier, localization_overrides

    def demo(**node):
        cfg = settings()["quick"]
        cfg["localization"]["node"] = {**NODE, **node}
        return Demo("quick", DemoSettings.model_validate(cfg), tmp_path, tmp_path / "work")

    orb = demo()
    assert build_verifier(orb, tmp_path)["trained"] is False and localization_overrides(orb) == NODE
    cnn = demo(**{"verification.camera.features": "cnn"})
    assert localization_overrides(cnn)["verification.camera.cnn_head"] == str(cnn.folder("verifier") / HEAD_FILE)
    own = demo(**{"verification.camera.features": "cnn", "verification.camera.cnn_head": "/heads/mine.safetensors"})
    assert localization_overrides(own)["verification.camera.cnn_head"] == "/heads/mine.safetensors"
    assert build_verifier(own, tmp_path)["trained"] is False


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
