"""The repository root is a well-formed ament_python package that colcon and pip both understand."""

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_valid_format3():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    pkg = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    assert pkg.package_format == 3 and pkg.name == "distilvpr_ros"
    assert "TODO" not in (pkg.description + "".join(map(str, pkg.licenses)))
    assert pkg.get_build_type() == "ament_python"
    deps = {d.name for d in pkg.exec_depends}
    for needed in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "visualization_msgs",
                   "diagnostic_msgs", "std_srvs"):
        assert needed in deps, f"package.xml lacks exec_depend {needed}"
    setup_py = (ROOT / "setup.py").read_text()
    assert f'version="{pkg.version}"' in setup_py, "setup.py and package.xml versions differ"


def test_setup_cfg_script_dirs_and_resource_marker():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/distilvpr_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/distilvpr_ros"
    assert (ROOT / "resource" / "distilvpr_ros").is_file()
    assert "tests_require" not in (ROOT / "setup.py").read_text()


def test_cli_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "distilvpr_ros.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout


#: Run in a fresh interpreter: every module outside ``distilvpr_ros.ros`` is imported with rclpy made
#: unimportable; any attempt to import rclpy (caught or not) is recorded. Prints the imported modules as JSON.
_IMPORT_CORE = """
import importlib, json, pkgutil, sys, traceback

attempts = []

class BlockRclpy:
    def find_spec(self, name, path=None, target=None):
        if name == "rclpy" or name.startswith("rclpy."):
            ours = [f for f in traceback.extract_stack()[:-1] if "distilvpr_ros" in f.filename]
            attempts.append((name, "".join(traceback.format_list(ours))))
            raise ImportError(f"{name} is blocked: the core must import without rclpy")
        return None

for name in [m for m in sys.modules if m == "rclpy" or m.startswith("rclpy.")]:
    del sys.modules[name]
sys.meta_path.insert(0, BlockRclpy())

import distilvpr_ros

def walk(path, prefix):
    for info in pkgutil.iter_modules(path, prefix):
        if info.name == "distilvpr_ros.ros":  # the ROS layer is the one part that needs rclpy
            continue
        yield info.name
        if info.ispkg:
            yield from walk(importlib.import_module(info.name).__path__, info.name + ".")

failed, imported = {}, ["distilvpr_ros"]
for name in walk(distilvpr_ros.__path__, "distilvpr_ros."):
    try:
        importlib.import_module(name)
        imported.append(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps({"imported": imported, "failed": failed, "rclpy_attempts": attempts}))
"""


def test_core_imports_without_rclpy():
    out = subprocess.run([sys.executable, "-c", _IMPORT_CORE], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["failed"], "\n".join(f"{name}:\n{tb}" for name, tb in report["failed"].items())
    attempts = [f"{name} imported from:\n{where}" for name, where in report["rclpy_attempts"]]
    assert not attempts, "\n".join(attempts)
    # every module file outside ros/ was imported (the walk missed nothing)
    on_disk = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "distilvpr_ros").rglob("*.py") if "ros" not in p.relative_to(ROOT).parts[1:2]}
    assert set(report["imported"]) == on_disk


def test_flake8_clean():
    pytest.importorskip("flake8")
    out = subprocess.run([sys.executable, "-m", "flake8", "distilvpr_ros", "test", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
