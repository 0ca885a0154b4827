"""Files the package ships beside its code (``config/*.yaml``, ``launch/*.launch.py``), found where they are.

``setup.py`` installs them as data files under ``<prefix>/share/distilvpr_ros/`` (``pip install .``, ``colcon
build``), not inside the Python package, so a path taken relative to the package's source only works from a
checkout. :func:`share_path` looks, in order, in

1. the source checkout the package is imported from (``pip install -e .``, ``colcon build --symlink-install``
   or ``PYTHONPATH``), so an edit to ``config/`` takes effect without reinstalling;
2. the prefix the imported package was installed into: ``<prefix>/lib/pythonX.Y/site-packages/distilvpr_ros``
   -> ``<prefix>/share/distilvpr_ros`` (``pip install .``, ``--prefix``, ``--user``, a colcon install space);
3. the package's share directory in the ament index (a sourced ROS 2 workspace that registers it);
4. ``<sys.prefix>/share/distilvpr_ros``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "distilvpr_ros"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../distilvpr_ros


def _source_root() -> Path | None:
    """The checkout the package is imported from (it holds package.xml and setup.py), or None when installed."""
    root = _PACKAGE_DIR.parent
    return root if (root / "package.xml").is_file() and (root / "setup.py").is_file() else None


def _ament_share() -> Path | None:
    """The package's share directory in the ament index, or None (no ament_index, not sourced, not registered)."""
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError:
        return None
    try:
        return Path(get_package_prefix(PACKAGE)) / "share" / PACKAGE
    except (LookupError, OSError, ValueError):  # not registered / AMENT_PREFIX_PATH unset
        return None


def share_dirs() -> list[Path]:
    """Where :func:`share_path` looks, in order (duplicates removed)."""
    dirs = []
    source = _source_root()
    if source is not None:
        dirs.append(source)
    # <prefix>/lib/pythonX.Y/site-packages/distilvpr_ros (or .../local/lib/..., lib64, dist-packages): the
    # installed prefix is a few folders up.
    dirs += [parent / "share" / PACKAGE for parent in _PACKAGE_DIR.parents[1:5]]
    ament = _ament_share()
    if ament is not None:
        dirs.append(ament)
    dirs.append(Path(sys.prefix) / "share" / PACKAGE)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def share_path(*parts: str) -> Path:
    """The shipped file or folder ``parts`` (e.g. ``share_path("config", "demo.yaml")``) from the first place
    of :func:`share_dirs` that has it; FileNotFoundError naming every place looked in otherwise."""
    looked = []
    for d in share_dirs():
        path = d.joinpath(*parts)
        if path.exists():
            return path
        looked.append(str(path))
    raise FileNotFoundError(f"{'/'.join(parts)} is not installed with {PACKAGE}; looked in: {', '.join(looked)}")
