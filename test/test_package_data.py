"""Shipped files (config/, launch/) are found where the package was installed, not only in a source checkout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distilvpr_ros.utils import package_data

REPO = Path(__file__).resolve().parents[1]
#: What setup.py needs to build the package (a copy, so the build leaves nothing in the checkout).
SOURCES = ("setup.py", "setup.cfg", "package.xml", "LICENSE", "resource", "config", "launch", "distilvpr_ros")


def test_source_checkout_comes_first():
    assert package_data.share_path("config", "demo.yaml") == REPO / "config" / "demo.yaml"
    assert package_data.share_path("launch").is_dir()


def test_ament_index_share_directory(tmp_path, monkeypatch):
    """Outside a checkout and its install prefix, a sourced workspace that registers the package is used."""
    prefix = tmp_path / "install"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "distilvpr_ros").write_text("")
    (prefix / "share" / "distilvpr_ros" / "config").mkdir(parents=True)
    (prefix / "share" / "distilvpr_ros" / "config" / "demo.yaml").write_text("quick: {}\n")
    monkeypatch.setattr(package_data, "_source_root", lambda: None)
    monkeypatch.setattr(package_data, "_PACKAGE_DIR", tmp_path / "elsewhere" / "a" / "b" / "c" / "d" / "distilvpr_ros")
    monkeypatch.setattr(package_data.sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert package_data.share_path("config", "demo.yaml") == prefix / "share" / "distilvpr_ros" / "config" / "demo.yaml"
    monkeypatch.delenv("AMENT_PREFIX_PATH")
    with pytest.raises(FileNotFoundError, match="config/demo.yaml is not installed with distilvpr_ros; looked in"):
        package_data.share_path("config", "demo.yaml")


def _installed_here() -> list[str]:
    """The files this environment's own distilvpr_ros distribution installed (empty when there is none)."""
    r = subprocess.run([sys.executable, "-c", "import importlib.metadata as m\n"
                        "try: print(sorted(str(f) for f in m.distribution('distilvpr_ros').files or []))\n"
                        "except m.PackageNotFoundError: print([])"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd="/")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_demo_settings_resolve_in_a_non_editable_install(tmp_path):
    """``pip install .`` (no -e) puts config/ under <prefix>/share/distilvpr_ros; the installed demo finds its
    settings there (it used to look beside the source tree, which an install does not have)."""
    src = tmp_path / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(REPO / name, src / name)
    prefix = tmp_path / "prefix"
    installed_before = _installed_here()
    # --ignore-installed: without it pip first uninstalls the environment's own (editable) distilvpr_ros,
    # which took the `distilvpr` command out of .venv/bin after every `make test`.
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--no-compile", "--ignore-installed", "--prefix", str(prefix), str(src)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _installed_here() == installed_before  # the environment's own install survived
    site = [p.parent.parent for p in prefix.glob("**/site-packages/distilvpr_ros/__init__.py")]
    assert len(site) == 1, list(prefix.rglob("__init__.py"))[:5]
    shared = prefix / "share" / "distilvpr_ros" / "config" / "demo.yaml"
    assert shared.is_file()
    shutil.rmtree(src)  # nothing left to find beside a source tree
    code = ("import json, distilvpr_ros\n"
            "from distilvpr_ros.demo.settings import default_demo_config, load_demo_settings\n"
            "print(json.dumps({'package': distilvpr_ros.__file__, 'config': str(default_demo_config()),\n"
            "                  'world': load_demo_settings(None, 'quick').world}))")
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "PYTHONPATH": str(site[0])})
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert Path(found["package"]).resolve().is_relative_to(site[0].resolve())  # the installed copy was imported
    assert Path(found["config"]).resolve() == shared.resolve()
    assert found["world"] == "tiny"
