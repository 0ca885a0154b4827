"""The `distilvpr` command end to end on the tiny world: generate, inspect, demo, clear errors."""

import json
import subprocess
import sys

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


def test_demo_quick_writes_a_report(tmp_path):
    from test_demo import write_settings  # tiny models: the chain itself is tested in test_demo.py

    config = write_settings(tmp_path / "demo.yaml")
    r = cli("demo", "--quick", "--config", config, "--results", tmp_path / "results", "--data", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    latest = tmp_path / "results" / "demo" / "latest"
    summary = json.loads((latest / "summary.json").read_text())
    assert summary["ground_truth"]["test"]["frames"] > 0
    assert (latest / "report.md").read_text().startswith("# distilvpr demo")
    again = cli("demo", "--quick", "--config", config, "--results", tmp_path / "results", "--data", tmp_path / "data")
    assert "reusing" in again.stdout  # resumes from the generated world


def test_example_world_config_is_valid():
    from pathlib import Path

    from distilvpr_ros.data.world.config import load_world_config

    cfg = load_world_config("default", Path(__file__).parents[1] / "config" / "world_example.yaml", None)
    assert cfg.seed == 11 and len(cfg.runs) == 3 and cfg.runs[1].condition.name == "night-rain"
