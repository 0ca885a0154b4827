"""The repository root is a well-formed ament_python package that colcon and pip both understand."""

import configparser
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


def test_core_imports_without_rclpy():
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "import distilvpr_ros.cli, distilvpr_ros.data.ground_truth, distilvpr_ros.data.samplers\n"
        "import distilvpr_ros.data.msg_codec, distilvpr_ros.data.rosbag_io, distilvpr_ros.data.synthetic\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_flake8_clean():
    pytest.importorskip("flake8")
    out = subprocess.run([sys.executable, "-m", "flake8", "distilvpr_ros", "test", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
