"""``distilvpr inspect PATH``: what a dataset folder or bag holds, without loading sensor data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


def _run_summary(seq) -> dict[str, Any]:
    xy = seq.poses[:, :2, 3]
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1) if len(xy) > 1 else np.zeros(0)
    return {
        "frames": len(seq),
        "duration_s": float(seq.timestamps[-1] - seq.timestamps[0]) if len(seq) else 0.0,
        "path_length_m": float(steps.sum()),
        "extent_m": (xy.max(0) - xy.min(0)).round(1).tolist() if len(xy) else [0, 0],
    }


def summarize_dataset(path: Path) -> dict[str, Any]:
    """Summary of a generated world, one of its runs, a rosbag2 bag, or a VPR-Bench folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if (path / "world.json").is_file():
        from .synthetic import load_synthetic, read_world_meta

        meta = read_world_meta(path)
        return {
            "kind": "synthetic world",
            "seed": meta.get("config", {}).get("seed"),
            "runs": {s.run: _run_summary(s) for s in load_synthetic(path)},
        }
    if (path / "poses.csv").is_file():
        from .synthetic import SyntheticRun

        return {"kind": "synthetic run", **_run_summary(SyntheticRun(path))}
    if (path / "ground_truth.json").is_file() and (path / "query").is_dir():
        from .readers.vprbench import VPRBenchDataset

        ds = VPRBenchDataset(path)
        return {"kind": "VPR-Bench", "queries": len(ds.ground_truth), "peers": sorted(ds.peer_similarity())}
    if (path / "metadata.yaml").is_file() or path.suffix in (".mcap", ".db3"):
        from .rosbag_io import bag_summary

        return {"kind": "rosbag2", **bag_summary(path)}
    raise DataError(path, "not a generated world, run folder, VPR-Bench folder or rosbag2 bag")
