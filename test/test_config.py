"""The configuration schemas: one place that names them all, one override helper, typos named, finite bounds,
shipped YAML files that list only what differs from the defaults."""

from __future__ import annotations

import importlib
import json
import math
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import distilvpr_ros
from distilvpr_ros import schemas
from distilvpr_ros.config import ConfigError, Section, merge_config, unknown_keys, validate_config
from distilvpr_ros.data.errors import DataError
from distilvpr_ros.data.world.config import MAX_FRAMES, PRESETS, load_world_config
from distilvpr_ros.mapping.matcher import MatcherConfig
from distilvpr_ros.pipeline.config import NodeConfig, load_node_config

ROOT = Path(__file__).resolve().parents[1]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_schemas_module_names_every_schema_of_the_package():
    for module in pkgutil.walk_packages(distilvpr_ros.__path__, "distilvpr_ros."):
        if not module.name.startswith("distilvpr_ros.ros"):  # the ROS layer defines no schema (and needs rclpy)
            importlib.import_module(module.name)
    defined = {cls.__name__: cls for cls in _subclasses(Section) if cls.__module__.startswith("distilvpr_ros.")}
    listed = set(schemas.__all__) - {"TOP_LEVEL", "Section"}
    assert listed == set(defined), f"missing from schemas.py: {set(defined) - listed}; stale: {listed - set(defined)}"
    for name, cls in defined.items():
        assert getattr(schemas, name) is cls
    assert set(schemas.TOP_LEVEL) <= listed and schemas.Section is Section
    with pytest.raises(AttributeError):
        schemas.NoSuchConfig  # noqa: B018


def test_schemas_resolve_lazily_without_loading_torch():
    code = ("import sys; from distilvpr_ros.schemas import NodeConfig, WorldConfig; "
            "print(NodeConfig().matcher.top_k, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["5", "False"]


def test_merge_config_dotted_and_nested_keys():
    base = {"optim": {"epochs": 60, "milestones": [40]}, "seed": 7, "data": None}
    merged = merge_config(base, {"optim.epochs": 2, "optim": {"gamma": 0.5}, "optim.milestones": [1],
                                 "data.root": "w", "new.deep.key": 1, "seed": 3})
    assert merged == {"optim": {"epochs": 2, "milestones": [1], "gamma": 0.5}, "seed": 3, "data": {"root": "w"},
                      "new": {"deep": {"key": 1}}}
    assert base == {"optim": {"epochs": 60, "milestones": [40]}, "seed": 7, "data": None}  # not changed
    assert merge_config({"a": {"b": 1}}, {"a": [1]}) == {"a": [1]}  # a non-mapping replaces a section
    assert merge_config({}, None) == {}


def test_one_dotted_key_merge_in_the_package():
    """Dotted-key merging lives in config.merge_config only (it was written five times)."""
    copies = []
    for path in (ROOT / "distilvpr_ros").rglob("*.py"):
        text = path.read_text()
        if path.name != "config.py" or path.parent.name != "distilvpr_ros":
            if "*parents, leaf" in text or ".setdefault(p, {})" in text or "def _deep_merge" in text \
                    or "def _nest(" in text:
                copies.append(str(path.relative_to(ROOT)))
    assert copies == []


def test_unknown_keys_name_the_closest_valid_key(tmp_path):
    assert unknown_keys(NodeConfig, {"matcher": {"top_kk": 3, "top_k": 2}, "top_k": 1, "zzz": 0}) == [
        ("matcher.top_kk", "matcher.top_k"), ("top_k", "matcher.top_k"), ("zzz", None)]
    assert unknown_keys(schemas.WorldConfig, {"runs": [{}, {"lanes": 1}]}) == [("runs[1].lanes", "runs[1].lane")]
    f = tmp_path / "params.yaml"
    f.write_text("distilvpr_localization:\n  ros__parameters:\n    matcher: {top_kk: 3}\n    use_sim_time: true\n")
    with pytest.raises(ConfigError) as e:
        load_node_config(f, "distilvpr_localization")
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "'matcher.top_kk' (did you mean 'matcher.top_k'?)" in msg
    f.write_text("matcher.top_k: 3\nframes: {map: world}\n")  # flat dotted keys, as ROS parameter files allow
    cfg = load_node_config(f)
    assert (cfg.matcher.top_k, cfg.frames.map) == (3, "world")
    with pytest.raises(ConfigError, match="optim.epochz.*did you mean 'optim.epochs'"):
        validate_config(schemas.TrainConfig, {"optim": {"epochz": 3}})


def test_invalid_yaml_is_one_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("matcher: [\n")
    with pytest.raises(ConfigError) as e:
        load_node_config(f)
    assert "\n" not in str(e.value) and "invalid YAML" in str(e.value) and "line 2" in str(e.value)


def test_node_config_bounds_and_frame_ids():
    assert NodeConfig().matcher.min_score == 0.5 and MatcherConfig(min_score=-2.0, top_k=100, sequence_length=100)
    for frames in ({"map": ""}, {"base": ""}, {"map": "my map"}):
        with pytest.raises(ValidationError, match="frames"):
            NodeConfig(frames=frames)
    for bad in ({"keyframes": {"min_distance_m": math.inf}}, {"keyframes": {"odom_buffer_s": math.nan}},
                {"diagnostics": {"period_s": 1e9}}, {"models": {"num_threads": 0}}):
        with pytest.raises(ValidationError):
            NodeConfig(**bad)
    cfg = NodeConfig()
    with pytest.raises(ValidationError):  # runtime assignment is validated too
        cfg.matcher.min_score = math.nan


def test_world_sizes_are_bounded():
    for preset in PRESETS.values():
        assert preset.estimated_frames() < MAX_FRAMES / 10
    data = PRESETS["tiny"].model_dump(mode="json")
    for override in ({"camera": {"width": 100_000}}, {"lidar": {"columns": 10**7}}, {"town": {"blocks_x": 10**6}},
                     {"frame_spacing_m": 1e-9}, {"runs": [{}] * 1000}, {"runs": [{"laps": 1e9}]},
                     {"frame_spacing_m": math.nan}):
        with pytest.raises(ConfigError):
            validate_config(schemas.WorldConfig, merge_config(data, override))
    big = merge_config(data, {"town": {"blocks_x": 50, "blocks_y": 50}, "frame_spacing_m": 1.0,
                              "runs": [{"laps": 20, "name": f"r{i}"} for i in range(10)]})
    with pytest.raises(ConfigError, match="frames"):  # every field in range, the whole too large
        validate_config(schemas.WorldConfig, big)


def test_world_config_errors_name_the_file_on_one_line(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("camera: {widht: 64}\n")
    with pytest.raises(DataError) as e:
        load_world_config("tiny", f)
    assert "\n" not in str(e.value) and "w.yaml" in str(e.value) and "did you mean 'camera.width'" in str(e.value)


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", ["mapping.yaml", "localization.yaml"])
def test_shipped_node_yaml_lists_only_what_differs(name):
    (section,) = yaml.safe_load((ROOT / "config" / name).read_text()).values()
    given = _leaves(section["ros__parameters"])
    defaults = _leaves(NodeConfig().model_dump(mode="json"))
    assert given and {k: v for k, v in given.items() if defaults[k] == v} == {}


def test_shipped_training_and_world_yaml_list_only_what_differs():
    given = _leaves(yaml.safe_load((ROOT / "config" / "mutualvpr.yaml").read_text()))
    defaults = _leaves(schemas.TrainConfig().model_dump(mode="json"))
    assert given and {k: v for k, v in given.items() if defaults[k] == v} == {}
    world = yaml.safe_load((ROOT / "config" / "world_example.yaml").read_text())
    defaults = _leaves(PRESETS["default"].model_dump(mode="json"))
    given = _leaves({k: v for k, v in world.items() if k != "runs"})
    assert given and {k: v for k, v in given.items() if defaults[k] == v} == {}
    run_defaults = _leaves(schemas.RunConfig().model_dump(mode="json"))
    for run in world["runs"]:
        assert {k: v for k, v in _leaves(run).items() if run_defaults[k] == v} == {}


def test_entry_points_make_openmp_wait_passively():
    """OMP_WAIT_POLICY=PASSIVE is in the environment before torch or faiss is first imported, for the CLI and
    the nodes (a spinning OpenMP pool stalled the torch backend under CPU contention), unless already set."""
    spy = ("import os, sys, json, runpy\n"
           "seen = {}\n"
           "class Spy:\n"
           "    def find_spec(self, name, path=None, target=None):\n"
           "        if name in ('torch', 'faiss') and name not in seen:\n"
           "            seen[name] = os.environ.get('OMP_WAIT_POLICY')\n"
           "sys.meta_path.insert(0, Spy())\n"
           "sys.argv = ['distilvpr', 'build-map', '--bag', 'b', '--teacher', 't', '--student', 's', '--out', 'o',\n"
           "            '--dump-config']\n"
           "if TARGET == 'cli':\n"
           "    try:\n"
           "        runpy.run_module('distilvpr_ros.cli', run_name='__main__')\n"
           "    except SystemExit:\n"
           "        pass\n"
           "    import torch\n"
           "else:\n"
           "    import distilvpr_ros.ros.mapping_node, distilvpr_ros.ros.localization_node, torch\n"
           "print(json.dumps(seen))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for target in ("cli", "nodes"):
        r = subprocess.run([sys.executable, "-c", f"TARGET = {target!r}\n" + spy], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"torch": "PASSIVE", "faiss": "PASSIVE"}, target
    r = subprocess.run([sys.executable, "-c", "TARGET = 'nodes'\n" + spy], capture_output=True, text=True,
                       env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, timeout=120)
    assert json.loads(r.stdout.strip().splitlines()[-1])["torch"] == "ACTIVE"  # the user's choice wins


def test_configure_threads_sets_the_wait_policy():
    code = ("import os; os.environ.pop('OMP_WAIT_POLICY', None)\n"
            "from distilvpr_ros.pipeline.embedder import configure_threads\n"
            "os.environ.pop('OMP_WAIT_POLICY', None); configure_threads(1); print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"


# --- ROS parameters: the schema's bounds and key checks reach the nodes ---------------------------------------


@pytest.fixture
def ros_node():
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    context = rclpy.Context()
    rclpy.init(context=context)
    nodes = []

    def make(**overrides):
        nodes.append(rclpy.create_node("distilvpr_config_probe", context=context, parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()]))
        return nodes[-1]

    yield make
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown(context=context)


def test_ros_parameters_reject_non_finite_and_out_of_range_values(ros_node):
    from rclpy.parameter import Parameter

    from distilvpr_ros.ros.params import ParamError, declare_node_config, parameter_specs, watch_node_config

    spec = {s.name: s for s in parameter_specs()}
    assert spec["matcher.min_score"].bounds == (-2.0, 1.0) and spec["matcher.top_k"].bounds == (1, 100)
    for name, value in (("matcher.min_score", math.nan), ("matcher.min_score", -math.inf),
                        ("matcher.top_k", 2**62), ("frames.map", "")):
        with pytest.raises(ParamError, match=name.split(".")[1]):
            declare_node_config(ros_node(**{name: value}))
    node = ros_node()
    declare_node_config(node)
    watch_node_config(node, lambda cfg: None)
    for name, value in (("matcher.min_score", math.nan), ("frames.map", ""), ("keyframes.odom_buffer_s", math.inf)):
        assert not node.set_parameters([Parameter(name, value=value)])[0].successful, name
    assert node.set_parameters([Parameter("matcher.min_score", value=0.7)])[0].successful


def test_unknown_ros_parameters_are_named_not_fatal(ros_node):
    from distilvpr_ros.ros.params import declare_node_config, unknown_parameters

    node = ros_node(**{"matcher.top_kk": 3, "matcher.top_k": 4, "use_sim_time": False, "qos_overrides.x": 1})
    cfg = declare_node_config(node)  # logs a warning, starts
    assert cfg.matcher.top_k == 4
    assert unknown_parameters(node) == ["unknown parameter 'matcher.top_kk' ignored (did you mean 'matcher.top_k'?)"]


def test_a_parameter_file_of_any_config_starts_a_node(ros_node, tmp_path):
    """Every optional field (None) goes into a node's parameter file as its parameter's own typed sentinel: an
    int 0 for an optional double (``submap.voxel_m``) made rclpy refuse the whole file."""
    import yaml

    from distilvpr_ros.ros.node_process import write_params
    from distilvpr_ros.ros.params import declare_node_config, parameter_specs

    cfg = NodeConfig()
    optional = [s for s in parameter_specs() if s.optional]
    assert any(s.type_name == "double" for s in optional)
    values = yaml.safe_load(write_params(cfg, tmp_path / "p.yaml", False).read_text())["/**"]["ros__parameters"]
    for s in optional:
        assert type(values[s.name]) is type(s.sentinel), s.name
    node = ros_node(**{k: v for k, v in values.items() if k != "use_sim_time"})
    assert declare_node_config(node) == cfg
