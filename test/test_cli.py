"""The `distilvpr` command end to end on the tiny world: generate, inspect, clear errors; how `demo` is wired."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "distilvpr_ros.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "town"
    r = cli("generate", "--out", out, "--preset", "tiny", "--quiet", "--preview", "--bag-storage", "sqlite3")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["runs"] == 3 and (out / "preview.png").stat().st_size > 10_000
    return out


def test_inspect_world_run_and_bag(world):
    info = json.loads(cli("inspect", world).stdout)
    assert info["kind"] == "synthetic world" and len(info["runs"]) == 3
    run = sorted((world / "runs").iterdir())[0]
    assert json.loads(cli("inspect", run).stdout)["frames"] == info["runs"][run.name]["frames"]
    bag = json.loads(cli("inspect", world / "bags" / run.name).stdout)
    assert bag["kind"] == "rosbag2"
    assert bag["topics"]["/camera/image_raw"]["count"] == info["runs"][run.name]["frames"]


def test_bad_input_is_one_clear_line(tmp_path):
    r = cli("generate", "--out", tmp_path / "x", "--preset", "huge")
    assert r.returncode == 2 and "unknown world preset 'huge'" in r.stderr and "Traceback" not in r.stderr
    r = cli("inspect", tmp_path)
    assert r.returncode == 2 and "not a generated world" in r.stderr


def test_demo_command_wiring(tmp_path, monkeypatch, capsys):
    """`distilvpr demo` hands its options to run_demo (the chain itself runs once, in test_demo.py), exits 0 when
    it finishes and 1 with the message when a stage fails (a ROS node died)."""
    import distilvpr_ros.demo as demo
    from distilvpr_ros.cli import main

    calls = []

    def fake_run_demo(**kwargs):
        calls.append(kwargs)
        if kwargs["fresh"]:
            raise demo.DemoError("map stage: the mapping node exited with code 1 (log: x.log)")
        return tmp_path / "report"

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    config = tmp_path / "demo.yaml"
    assert main(["demo", "--quick", "--config", str(config), "--results", str(tmp_path / "results"),
                 "--data", str(tmp_path / "data")]) == 0
    assert calls == [{"quick": True, "results_root": tmp_path / "results", "data_root": tmp_path / "data",
                      "config": str(config), "fresh": False}]
    assert main(["demo", "--fresh"]) == 1
    assert calls[-1] == {"quick": False, "results_root": Path("results"), "data_root": Path("data"), "config": None,
                         "fresh": True}
    assert capsys.readouterr().err.strip() == (
        "distilvpr demo: map stage: the mapping node exited with code 1 (log: x.log)")


def test_demo_command_is_installed():
    r = cli("demo", "--help")
    assert r.returncode == 0 and "--quick" in r.stdout and "--fresh" in r.stdout and "config/demo.yaml" in r.stdout


def test_example_world_config_is_valid():
    from pathlib import Path

    from distilvpr_ros.data.world.config import load_world_config

    cfg = load_world_config("default", Path(__file__).parents[1] / "config" / "world_example.yaml", None)
    assert cfg.seed == 11 and len(cfg.runs) == 3 and cfg.runs[1].condition.name == "night-rain"
