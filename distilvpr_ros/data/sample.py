"""The one sample type every reader yields, and the sequence protocol readers implement.

Conventions (used everywhere in the package):

* ``pose`` is a 4x4 float64 homogeneous transform ``world_T_base`` (the vehicle/robot body frame
  expressed in a metric world frame: x east, y north, z up). Place ground truth uses its
  translation, ``pose[:2, 3]`` (metres). Readers for real datasets put UTM easting/northing (or the
  dataset's own metric frame) there.
* ``image`` is an ``H x W x 3`` uint8 RGB array (or ``None`` for LiDAR-only data).
* ``cloud`` is an ``N x C`` float32 array in the LiDAR frame with columns
  ``x, y, z, intensity[, ring, time]`` (``C >= 4``; readers without intensity fill 0). ``None`` for
  camera-only data.
* ``timestamp`` is in seconds (float64).
* Quaternions are ``x, y, z, w`` (scalar last), as in ROS messages and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

CLOUD_FIELDS = ("x", "y", "z", "intensity", "ring", "time")


@dataclass
class Sample:
    """One observation of a place: camera image and/or LiDAR cloud, pose, time, run."""

    image: np.ndarray | None
    cloud: np.ndarray | None
    pose: np.ndarray
    timestamp: float
    run: str
    index: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def position(self) -> np.ndarray:
        """Planar position (easting, northing) in metres."""
        return self.pose[:2, 3]


@runtime_checkable
class Sequence(Protocol):
    """A run (traversal) whose poses and stamps are known without loading sensor data.

    Implementations load images and clouds lazily in ``__getitem__`` so ground truth and samplers
    work from ``poses``/``timestamps`` alone.
    """

    run: str
    timestamps: np.ndarray  # (N,) float64 seconds
    poses: np.ndarray  # (N, 4, 4) float64 world_T_base

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Sample: ...


def frame_index(run: str, i: int, n: int) -> int:
    """``i`` as a position in a run of ``n`` frames (negative counts from the end); IndexError names the run."""
    if not -n <= i < n:
        raise IndexError(f"{run}: index {i} out of range for {n} frames")
    return i % n
