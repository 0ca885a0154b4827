"""Approximate-time pairing of camera and LiDAR messages by header stamp (no message_filters needed).

Pure Python, no rclpy: the nodes push ``(stamp, message)`` and get pairs back; tests drive it directly.

Policy
    * Each LiDAR scan is paired with the camera frame nearest to it in time, if that is within
      ``slop`` seconds. The choice is final once a camera frame at or after the scan's stamp has
      arrived (later frames can only be farther), so pairs come out with at most one camera period of
      delay, and a scan with no camera frame within ``slop`` is dropped as *unpaired*.
    * Queues are bounded (``queue_size`` per stream, latest-frame policy): when full, the oldest
      message is dropped and counted (*overflow*).
    * Per stream, a stamp equal to the previous one is a *duplicate* and an earlier one is
      *out of order*: both are dropped and counted. A stamp more than ``reset_jump_s`` earlier is a
      clock jump (a bag replay restarting): the synchroniser resets and accepts it.
    * Camera frames older than the paired one are discarded silently (cameras usually run faster than
      LiDARs; those frames are not keyframe candidates).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

Stream = Literal["camera", "lidar"]


@dataclass(frozen=True)
class Pair:
    camera_stamp: float
    camera: Any
    lidar_stamp: float
    lidar: Any

    @property
    def stamp(self) -> float:
        """The keyframe stamp: the camera's (the image defines the place)."""
        return self.camera_stamp


class StampGuard:
    """Rejects duplicate and out-of-order stamps of one stream; resets on a big backwards jump."""

    def __init__(self, reset_jump_s: float = 1.0) -> None:
        self.reset_jump_s = float(reset_jump_s)
        self.last: float | None = None
        self.duplicates = 0
        self.out_of_order = 0
        self.jumps = 0

    def check(self, stamp: float) -> str:
        """'' when ``stamp`` is acceptable (and remember it); else ``"duplicate"`` or ``"out_of_order"``.
        ``"jump"`` is returned for an accepted backwards clock jump (the caller resets its state)."""
        if self.last is not None and stamp <= self.last:
            if stamp == self.last:
                self.duplicates += 1
                return "duplicate"
            if self.last - stamp <= self.reset_jump_s:
                self.out_of_order += 1
                return "out_of_order"
            self.jumps += 1
            self.last = stamp
            return "jump"
        self.last = stamp
        return ""


@dataclass
class SyncStats:
    pairs: int = 0
    overflow: dict = field(default_factory=lambda: {"camera": 0, "lidar": 0})
    duplicates: int = 0
    out_of_order: int = 0
    unpaired: int = 0
    jumps: int = 0

    @property
    def dropped(self) -> int:
        """Messages dropped for any reason but pairing choice (overflow, duplicates, disorder, unpaired)."""
        return sum(self.overflow.values()) + self.duplicates + self.out_of_order + self.unpaired


@dataclass
class PushResult:
    pairs: list[Pair]
    rejected: str = ""  # "", "duplicate", "out_of_order"
    reset: bool = False  # a clock jump reset the synchroniser


class ApproxTimeSync:
    """Camera + LiDAR approximate-time synchroniser (module docstring)."""

    def __init__(self, slop: float = 0.05, queue_size: int = 5, reset_jump_s: float = 1.0) -> None:
        if slop <= 0 or queue_size < 1:
            raise ValueError(f"slop must be > 0 and queue_size >= 1, got {slop}, {queue_size}")
        self.slop, self.queue_size = float(slop), int(queue_size)
        self.reset_jump_s = float(reset_jump_s)
        self.stats = SyncStats()
        self.reset()

    def reset(self) -> None:
        """Forget queued messages and the last stamps (counters are kept)."""
        self._queues: dict[str, deque[tuple[float, Any]]] = {"camera": deque(), "lidar": deque()}
        self._guards = {s: StampGuard(self.reset_jump_s) for s in ("camera", "lidar")}

    def last_stamp(self, stream: Stream) -> float:
        """The newest accepted stamp of a stream (NaN before the first)."""
        last = self._guards[stream].last
        return float("nan") if last is None else last

    def push(self, stream: Stream, stamp: float, msg: Any) -> PushResult:
        """Add one message; returns the pairs that became final (oldest first) and any rejection."""
        if stream not in self._queues:
            raise ValueError(f"unknown stream {stream!r}; expected 'camera' or 'lidar'")
        verdict = self._guards[stream].check(float(stamp))
        if verdict in ("duplicate", "out_of_order"):
            if verdict == "duplicate":
                self.stats.duplicates += 1
            else:
                self.stats.out_of_order += 1
            return PushResult([], verdict)
        reset = verdict == "jump"
        if reset:
            self.stats.jumps += 1
            self.reset()
            self._guards[stream].check(float(stamp))
        queue = self._queues[stream]
        if len(queue) >= self.queue_size:
            queue.popleft()
            self.stats.overflow[stream] += 1
        queue.append((float(stamp), msg))
        return PushResult(self._pair(), "", reset)

    def flush(self) -> list[Pair]:
        """Pair the waiting scans with the best camera frame received so far (end of stream, shutdown)."""
        return self._pair(final=True)

    def _pair(self, final: bool = False) -> list[Pair]:
        cams, scans = self._queues["camera"], self._queues["lidar"]
        out: list[Pair] = []
        while scans and cams:
            t_l, scan = scans[0]
            if cams[-1][0] < t_l and not final:
                break  # a closer camera frame may still come
            k = min(range(len(cams)), key=lambda i: abs(cams[i][0] - t_l))
            t_c, frame = cams[k]
            scans.popleft()
            if abs(t_c - t_l) > self.slop:
                self.stats.unpaired += 1
                continue
            for _ in range(k + 1):
                cams.popleft()
            self.stats.pairs += 1
            out.append(Pair(t_c, frame, t_l, scan))
        # Camera frames too old for any queued or future scan (scans arrive in stamp order) are useless.
        oldest_scan = scans[0][0] if scans else self._guards["lidar"].last
        while cams and oldest_scan is not None and cams[0][0] < oldest_scan - self.slop:
            cams.popleft()
        return out
