"""Choosing a data source: the sequences of a synthetic world region, ROS 2 bags or a dataset reader.

:func:`open_sequences` is the one place that maps a source name to a reader; training
(``training.data.open_split``) and ``distilvpr evaluate`` both read through it.

* ``synthetic``: the runs of a generated world (``root``), only the frames of ``region`` (``all`` or None:
  every frame); ``root`` may be a list of worlds (towns), kept apart (``synthetic.load_worlds``);
* ``bags``: ROS 2 bags under ``root``, one per name (camera and LiDAR paired by stamp, poses from
  odometry or GPS via UTM, see :class:`~.rosbag_io.BagSequence`);
* ``oxford``: PointNetVLAD / RobotCar runs (images from ``images_root``); ``boreas``, ``kitti``: the
  named sequences under ``root``.

:func:`filter_sequences` keeps named runs and frames of named conditions (:class:`SequenceSubset` keeps the
``Sequence`` protocol, so ground truth and cross-run evaluation work on the filtered frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from .sample import Sample, Sequence

DataSource = Literal["synthetic", "bags", "oxford", "boreas", "kitti"]
#: Every source :func:`open_sequences` reads (the values of :data:`DataSource`).
DATA_SOURCES: tuple[str, ...] = DataSource.__args__


#: The region name that selects every frame of a synthetic world (train, val, test and the gaps).
ALL_REGIONS = "all"


def open_sequences(source: str, root: str | Path | list[str | Path], *, region: str | None = None,
                   names: Iterable[str] = (), images_root: str | Path | None = None) -> list[Sequence]:
    """The sequences of a data source, in order.

    Args:
        source: one of :data:`DATA_SOURCES`.
        root: the generated world folder (``synthetic``) or the dataset root; ``synthetic`` also takes a list
            of world folders (several towns: ``synthetic.load_worlds``).
        region: ``synthetic`` only: keep only the frames of this region (None or ``all``: all frames).
        names: the sequences to read (every source but ``synthetic``): bag folders or files under
            ``root``, Oxford run names, Boreas or KITTI sequence names.
        images_root: ``oxford`` only: the RobotCar image folders (``<run>/stereo/centre``).
    """
    if source not in DATA_SOURCES:
        raise ValueError(f"unknown data source {source!r}; one of {list(DATA_SOURCES)}")
    names = list(names)
    if source == "synthetic":
        from .synthetic import load_worlds

        roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
        return list(load_worlds(roots, regions=None if region in (None, ALL_REGIONS) else {region}))
    if isinstance(root, (list, tuple)):
        raise ValueError(f"source {source!r} reads one root, got {len(root)}")
    root = Path(root)
    if not names:
        raise ValueError(f"source {source!r} needs the names of the sequences to read under {root}")
    return [_open_sequence(source, root, name, images_root) for name in names]


def _open_sequence(source: str, root: Path, name: str, images_root=None) -> Sequence:
    if source == "oxford":
        from .readers.oxford import OxfordRun

        return OxfordRun(root, name, images_root=images_root)
    if source == "bags":
        from .rosbag_io import BagSequence

        return BagSequence(root / name, run=Path(name).stem)
    if source == "boreas":
        from .readers.boreas import BoreasSequence

        return BoreasSequence(root, name)
    from .readers.kitti import KittiSequence

    return KittiSequence(root, name)


class SequenceSubset:
    """Some frames of a sequence, as a ``Sequence`` (``frames``: positions in the parent)."""

    def __init__(self, parent: Sequence, frames: np.ndarray):
        self.parent = parent
        self.frames = np.asarray(frames, dtype=np.int64)
        self.run = parent.run
        self.timestamps = np.asarray(parent.timestamps)[self.frames]
        self.poses = np.asarray(parent.poses)[self.frames]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Sample:
        return self.parent[int(self.frames[i])]

    def meta(self, i: int) -> dict:
        """The parent's per-frame metadata (for parents that have it, e.g. synthetic runs)."""
        return self.parent.meta(int(self.frames[i]))

    def __repr__(self) -> str:
        return f"SequenceSubset({self.run!r}, frames={len(self)})"


def _frame_condition(seq: Sequence, i: int) -> str:
    if not hasattr(seq, "meta"):
        raise ValueError(f"{seq.run}: condition filters need per-frame metadata (synthetic worlds)")
    return str(seq.meta(i)["condition"])


def filter_sequences(
    sequences: list[Sequence], runs: list[str] | None, conditions: list[str] | None
) -> list[Sequence]:
    """Keep the named runs and the frames in the named conditions (None = no filter); drop empty runs.

    A run of several worlds matches by its full name (``<world>/<run id>``) or by its run id (in every world).
    """
    out: list[Sequence] = []
    for seq in sequences:
        if runs is not None and seq.run not in runs and getattr(seq, "run_id", seq.run) not in runs:
            continue
        if conditions is not None:
            frames = np.array([i for i in range(len(seq)) if _frame_condition(seq, i) in conditions], dtype=np.int64)
            seq = SequenceSubset(seq, frames)
        if len(seq):
            out.append(seq)
    return out
