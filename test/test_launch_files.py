"""Launch files and node YAML files agree with the package (launch_ros is not installable here: read with ast)."""

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from distilvpr_ros.pipeline.config import NodeConfig, TopicsConfig
from distilvpr_ros.ros import launch_options

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {"mapping.launch.py": ("mapping_node", "distilvpr_mapping", "mapping.yaml"),
          "localization.launch.py": ("localization_node", "distilvpr_localization", "localization.yaml")}
#: Executables the package's setup.py entry points provide (module:main of each node).
ENTRY_POINTS = {"mapping_node": "distilvpr_ros.ros.mapping_node",
                "localization_node": "distilvpr_ros.ros.localization_node"}


def _node_calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _config_field(dotted: str) -> bool:
    model = NodeConfig
    for part in dotted.split("."):
        if not (isinstance(model, type) and part in model.model_fields):
            return False
        model = model.model_fields[part].annotation
    return True


@pytest.mark.parametrize("launch_file", sorted(LAUNCH))
def test_launch_file_names_the_right_executable_and_config(launch_file):
    executable, node_name, yaml_name = LAUNCH[launch_file]
    tree = ast.parse((ROOT / "launch" / launch_file).read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    calls = _node_calls(tree)
    assert len(calls) == 1
    node = calls[0]
    assert ast.literal_eval(_kw(node, "package")) == "distilvpr_ros"
    assert ast.literal_eval(_kw(node, "executable")) == executable
    assert ast.literal_eval(_kw(node, "name")) == node_name
    assert importlib.util.find_spec(ENTRY_POINTS[executable]) is not None
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert yaml_name in strings and (ROOT / "config" / yaml_name).is_file()
    # the overrides dict names real parameters (plus the built-in use_sim_time and autostart); `**` entries are
    # the shared ones from launch_options.common_parameters()
    overrides = [d for d in ast.walk(_kw(node, "parameters")) if isinstance(d, ast.Dict)]
    keys = {ast.literal_eval(k) for d in overrides for k in d.keys if k is not None}
    if any(k is None for d in overrides for k in d.keys):
        assert "common_parameters" in ast.unparse(_kw(node, "parameters"))
        keys |= set(launch_options.COMMON_PARAMETERS)
    assert "use_sim_time" in keys and "map.path" in keys
    assert all(_config_field(k) for k in keys - {"use_sim_time", "autostart"}), keys
    declared = {ast.literal_eval(n.elts[0]) for n in ast.walk(tree) if isinstance(n, ast.Tuple) and len(n.elts) == 3
                and isinstance(n.elts[0], ast.Constant)}
    assert any(isinstance(c, ast.Call) and getattr(c.func, "attr", None) == "declare_arguments" for c in ast.walk(tree))
    declared |= {name for name, _, _ in launch_options.COMMON_ARGUMENTS}
    assert {"map_path", "use_sim_time", "namespace"} <= declared
    # every launch argument the file uses is declared
    used = {ast.literal_eval(c.args[0]) for c in ast.walk(tree) if isinstance(c, ast.Call)
            and getattr(c.func, "id", None) == "LaunchConfiguration"}
    assert used <= declared, used - declared


@pytest.mark.parametrize("yaml_name", ["mapping.yaml", "localization.yaml"])
def test_every_yaml_key_is_a_node_config_field(yaml_name):
    data = yaml.safe_load((ROOT / "config" / yaml_name).read_text())
    (node_name, section), = data.items()
    assert node_name in {v[1] for v in LAUNCH.values()}
    keys = _leaf_keys(section["ros__parameters"])
    assert keys and [k for k in keys if not _config_field(k)] == []
    NodeConfig(**section["ros__parameters"])  # and the values validate


def test_generate_launch_description_when_launch_ros_is_available():
    pytest.importorskip("launch_ros")
    for launch_file in LAUNCH:
        spec = importlib.util.spec_from_file_location(launch_file.replace(".", "_"), ROOT / "launch" / launch_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.generate_launch_description().entities


def test_shared_launch_options_are_consistent():
    """The shared block (launch_options.py) imports without launch, declares every argument it uses, remaps real
    topics, and plays a bag the way kiss-icp's launch does (ros2 bag play --clock, only when bag is set)."""
    names = [name for name, _, _ in launch_options.COMMON_ARGUMENTS]
    assert len(names) == len(set(names)) and {"rviz", "bag", "bag_rate", "autostart"} <= set(names)
    assert set(launch_options.COMMON_PARAMETERS.values()) <= set(names)
    defaults = TopicsConfig()
    node_topics = {defaults.camera, defaults.camera_compressed, defaults.lidar, defaults.odom, defaults.camera_info,
                   "loop_closure"}
    for topic, arg, _ in launch_options.COMMON_REMAPPINGS:
        assert topic in node_topics and arg in names
    source = (ROOT / "distilvpr_ros" / "ros" / "launch_options.py").read_text()
    tree = ast.parse(source)
    used = {ast.literal_eval(c.args[0]) for c in ast.walk(tree) if isinstance(c, ast.Call)
            and getattr(c.func, "id", None) == "LaunchConfiguration" and isinstance(c.args[0], ast.Constant)}
    assert used <= set(names) | {"namespace"}, used
    player = next(c for c in ast.walk(tree)
                  if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "ExecuteProcess")
    cmd = ast.unparse(_kw(player, "cmd"))
    assert cmd.startswith("['ros2', 'bag', 'play', bag, '--clock'") and "bag_rate" in cmd
    assert "!= ''" in ast.unparse(_kw(player, "condition"))  # only when a bag is given
    rviz = _node_calls(tree)
    assert len(rviz) == 1 and ast.literal_eval(_kw(rviz[0], "executable")) == "rviz2"
    assert "'rviz'" in ast.unparse(_kw(rviz[0], "condition"))
    # dds_profile:=large_frames points Fast DDS at a shipped, installed profile
    for file in launch_options.DDS_PROFILES.values():
        assert (ROOT / "config" / file).is_file() and "config/*.xml" in (ROOT / "setup.py").read_text()
    assert "dds_profile" in names and all("environment_actions" in (ROOT / "launch" / f).read_text() for f in LAUNCH)


def test_rviz_config_shows_the_node_outputs_in_the_map_frame():
    rviz = yaml.safe_load((ROOT / "config" / launch_options.RVIZ_CONFIG).read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == NodeConfig().frames.map
    topics = {d["Class"].split("/")[-1]: d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
    assert topics == {"MarkerArray": "markers", "PoseWithCovariance": "place_match", "PoseArray": "place_candidates"}
    namespaces = next(d["Namespaces"] for d in manager["Displays"] if d["Class"].endswith("MarkerArray"))
    assert {"keyframes", "loop_closure/edges", "place_match/edges", "place_match/candidates"} <= set(namespaces)
    setup = (ROOT / "setup.py").read_text()
    assert 'glob("config/*.rviz")' in setup  # installed to share/distilvpr_ros/config


def test_launch_files_import_the_shared_block():
    for launch_file in LAUNCH:
        tree = ast.parse((ROOT / "launch" / launch_file).read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "distilvpr_ros.ros"]
        assert imports and imports[0].names[0].name == "launch_options"
        assert importlib.util.find_spec("distilvpr_ros.ros.launch_options") is not None
