"""The `distilvpr` command end to end on the tiny world: generate, inspect, clear errors, --dump-config; how
`demo` is wired."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


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


def one_line_error(r: subprocess.CompletedProcess, command: str, *fragments: str) -> None:
    """Bad input: exit code 2 and one line on stderr naming the problem (no traceback)."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith(f"distilvpr {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny checkpoints and the broken files the error cases feed the CLI."""
    from tiny_models import tiny_checkpoints

    root = tmp_path_factory.mktemp("cli_inputs")
    paths = {k: str(v) for k, v in tiny_checkpoints(root).items()}
    (root / "corrupt").mkdir()
    (root / "corrupt" / "checkpoint.json").write_text("{")
    (root / "not_yaml.yaml").write_text("matcher: [\n")
    (root / "typo.yaml").write_text("distilvpr_mapping:\n  ros__parameters:\n    matcher: {top_kk: 3}\n")
    (root / "a_file").write_text("")
    (root / "huge_image.yaml").write_text("camera: {width: 100000}\n")
    (root / "huge_world.yaml").write_text("town: {blocks_x: 50, blocks_y: 50}\nframe_spacing_m: 0.5\n")
    return {**paths, **{p.name: str(p) for p in root.iterdir() if p.suffix == ".yaml" or p.name in
                        ("corrupt", "a_file")}}


def test_model_commands_report_bad_checkpoints_and_files_on_one_line(world, inputs, tmp_path):
    bag = world / "bags" / "run00_day"
    build = ["build-map", "--bag", bag, "--out", tmp_path / "map"]
    one_line_error(cli("export", "--checkpoint", tmp_path / "missing", "--out", tmp_path / "m.onnx"), "export",
                   "missing", "not a checkpoint")
    one_line_error(cli("export", "--checkpoint", inputs["corrupt"], "--out", tmp_path / "m.onnx"), "export",
                   "corrupt JSON")
    one_line_error(cli("export", "--checkpoint", inputs["student"], "--out", tmp_path), "export", "existing folder")
    one_line_error(cli(*build, "--teacher", tmp_path / "missing", "--student", inputs["student"]), "build-map",
                   "teacher checkpoint not found")
    one_line_error(cli(*build, "--teacher", inputs["teacher"], "--student", inputs["teacher"]), "build-map",
                   "holds a teacher model, expected camera_student")
    one_line_error(cli(*build, "--teacher", inputs["teacher"], "--student", inputs["student"], "--config",
                       inputs["not_yaml.yaml"]), "build-map", "not_yaml.yaml: invalid YAML", "line 2")
    one_line_error(cli(*build, "--teacher", inputs["teacher"], "--student", inputs["student"], "--config",
                       inputs["typo.yaml"]), "build-map", "'matcher.top_kk' (did you mean 'matcher.top_k'?)")
    one_line_error(cli("build-map", "--bag", bag, "--out", inputs["a_file"], "--teacher", inputs["teacher"],
                       "--student", inputs["student"]), "build-map", "existing file")
    one_line_error(cli("evaluate", "--checkpoint", tmp_path / "missing", "--world", world), "evaluate",
                   "not a checkpoint")
    one_line_error(cli("evaluate", "--checkpoint", inputs["corrupt"], "--world", world), "evaluate", "corrupt JSON")
    one_line_error(cli("train-teacher", "--config", inputs["not_yaml.yaml"], "--world", world), "train-teacher",
                   "invalid YAML")


def test_generate_refuses_absurd_sizes_and_a_file_as_out(inputs, tmp_path):
    one_line_error(cli("generate", "--out", tmp_path / "w", "--preset", "tiny", "--config", inputs["huge_image.yaml"]),
                   "generate", "camera.width", "less than or equal to 4096")
    one_line_error(cli("generate", "--out", tmp_path / "w", "--preset", "tiny", "--config", inputs["huge_world.yaml"]),
                   "generate", "frames")
    one_line_error(cli("generate", "--out", inputs["a_file"], "--preset", "tiny"), "generate", "existing file")
    assert not (tmp_path / "w").exists()


def test_dump_config_prints_the_effective_config_of_every_command(inputs, tmp_path):
    from distilvpr_ros.cli import build_parser
    from distilvpr_ros.data.world.config import PRESETS, load_world_config
    from distilvpr_ros.pipeline.config import load_node_config
    from distilvpr_ros.training.config import TrainConfig

    commands = build_parser()._subparsers._group_actions[0].choices
    assert all("--dump-config" in c._option_string_actions for c in commands.values()), sorted(commands)
    # build-map: NodeConfig defaults + node YAML + arguments; the dump is itself a valid --config
    r = cli("build-map", "--bag", "b", "--teacher", inputs["teacher"], "--student", inputs["student"], "--out", "m",
            "--fresh", "--config", Path(__file__).parents[1] / "config" / "mapping.yaml", "--dump-config")
    assert r.returncode == 0, r.stderr
    (tmp_path / "node.yaml").write_text(r.stdout)
    cfg = load_node_config(tmp_path / "node.yaml")
    assert (cfg.map.path, cfg.map.resume, cfg.models.student_checkpoint) == ("m", False, inputs["student"])
    assert cfg.models.num_threads == 2 and cfg.matcher.top_k == 5 and "sequence_radius_m" in r.stdout
    # train-teacher: TrainConfig defaults + key=value
    r = cli("train-teacher", "optim.epochs=3", "--world", "w", "--dump-config")
    assert r.returncode == 0, r.stderr
    (tmp_path / "train.yaml").write_text(r.stdout)
    expected = TrainConfig.from_yaml(None, {"optim.epochs": 3, "data.root": "w"})
    assert TrainConfig.from_yaml(tmp_path / "train.yaml") == expected
    # generate: the preset, a starting point for --config; commands without a schema print their arguments
    r = cli("generate", "--preset", "tiny", "--dump-config")
    (tmp_path / "world.yaml").write_text(r.stdout)
    assert load_world_config("default", tmp_path / "world.yaml") == PRESETS["tiny"]
    r = cli("export", "--checkpoint", "c", "--out", "x.onnx", "--dump-config")
    assert r.returncode == 0 and yaml.safe_load(r.stdout) == {"checkpoint": "c", "out": "x.onnx"}
    one_line_error(cli("train-teacher", "optim.epochz=3", "--dump-config"), "train-teacher",
                   "did you mean 'optim.epochs'")


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
