"""Result folders: ``results/<name>/<YYYY-MM-DD_HH-MM-SS>/`` plus a ``latest`` link beside them."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any


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
    latest = base / "latest"
    tmp = base / f".latest.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)
    return run_dir


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
