"""Cut a bag down to stretches of time: :func:`frame_windows` finds the stretches, :func:`trim_bag` copies them.

Messages are copied byte for byte (no re-serialisation) into a new mcap rosbag2 folder. Frame messages
(images, clouds, camera info) are kept only within ``pad_s`` of a window; the others (odometry, GNSS) within
``context_s``, since consumers interpolate odometry around each frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .rosbag_io import BAG_VERSION, CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, POINTCLOUD2, ros2_typestore

#: Message types kept only within ``pad_s`` of a window (all others within ``context_s``).
FRAME_TYPES = (IMAGE, COMPRESSED_IMAGE, POINTCLOUD2, CAMERA_INFO)


def frame_windows(frame_indices: np.ndarray, stamps: np.ndarray) -> list[tuple[float, float]]:
    """``(first, last)`` stamp of each run of consecutive frame indices."""
    windows: list[list[float]] = []
    for k, (i, t) in enumerate(zip(frame_indices, stamps)):
        if windows and i == frame_indices[k - 1] + 1:
            windows[-1][1] = float(t)
        else:
            windows.append([float(t), float(t)])
    return [(a, b) for a, b in windows]


def trim_bag(source: Path, dest: Path, windows: Sequence[tuple[float, float]], pad_s: float = 0.1,
             context_s: float = 1.5) -> int:
    """Copy the messages of ``source`` that fall in ``windows`` (bag time, s) into a new mcap bag ``dest``,
    byte for byte; returns how many were copied."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    w = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    store = ros2_typestore()
    copied = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with AnyReader([source], default_typestore=store) as reader:
        writer = Writer(dest, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        try:
            connections: dict[int, Any] = {}
            for conn, t_ns, raw in reader.messages():
                pad = pad_s if conn.msgtype in FRAME_TYPES else context_s
                t = t_ns * 1e-9
                if not ((w[:, 0] - pad <= t) & (t <= w[:, 1] + pad)).any():
                    continue
                if conn.id not in connections:
                    connections[conn.id] = writer.add_connection(conn.topic, conn.msgtype, typestore=store)
                writer.write(connections[conn.id], t_ns, raw)
                copied += 1
        finally:
            writer.close()
    return copied
