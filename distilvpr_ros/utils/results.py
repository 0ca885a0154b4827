"""Result folders: ``results/<name>/<YYYY-MM-DD_HH-MM-SS>/`` plus a ``latest`` link beside them."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from .fileio import atomic_write


def make_run_dir(root: str | Path, name: str) -> Path:
    """Create a fresh timestamped folder under ``root/name`` and point ``root/name/latest`` at it."""
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = base / stamp
    k = 1
    while run_dir.exists():
        run_dir = base / f"{stamp}_{k}"
        k += 1
    run_dir.mkdir()
    with atomic_write(base / "latest") as tmp:
        tmp.symlink_to(run_dir.name)
    return run_dir


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON crash-safely (:func:`~distilvpr_ros.utils.fileio.atomic_write`)."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
