"""Launch files and node YAML files agree with the package (launch_ros is not installable here: read with ast)."""

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from distilvpr_ros.pipeline.config import NodeConfig

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
    # the overrides dict names real parameters (plus the built-in use_sim_time)
    overrides = [d for d in ast.walk(_kw(node, "parameters")) if isinstance(d, ast.Dict)]
    keys = {ast.literal_eval(k) for d in overrides for k in d.keys}
    assert "use_sim_time" in keys and "map.path" in keys
    assert all(_config_field(k) for k in keys - {"use_sim_time"}), keys
    declared = {ast.literal_eval(n.elts[0]) for n in ast.walk(tree) if isinstance(n, ast.Tuple) and len(n.elts) == 3
                and isinstance(n.elts[0], ast.Constant)}
    assert {"map_path", "use_sim_time", "namespace"} <= declared


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
