"""Odometry history interpolated to keyframe stamps (:class:`OdometryBuffer`) and keyframe gating
(:class:`Keyframer`)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..data.geometry import interpolate_poses, yaw_of
from .config import KeyframeConfig


class OdometryBuffer:
    """Recent ``(stamp, 4x4 pose)`` odometry, interpolated to keyframe stamps.

    Stamps must increase; an older or equal stamp is ignored (``add`` returns False). A stamp more than
    ``reset_jump_s`` before the newest (a bag replay restarting) clears the buffer first.

    Poses must be physical: farther than ``max_position_m`` from the origin, or a jump from the previous
    pose faster than ``max_speed_mps``, raises ValueError (nothing stored). A jump that persists for
    ``JUMP_RESET_COUNT`` consecutive messages is an odometry reset (the driver restarted at a new origin):
    the buffer is cleared and the new track accepted.

    ``epoch`` counts the clears (resets, clock jumps): poses of different epochs may lie in different odometry
    frames, so LiDAR submaps never join scans across an epoch change.
    """

    JUMP_RESET_COUNT = 10

    def __init__(self, horizon_s: float = 10.0, tolerance_s: float = 0.1, reset_jump_s: float = 1.0,
                 max_position_m: float = 1.0e6, max_speed_mps: float = 60.0) -> None:
        self.horizon_s, self.tolerance_s, self.reset_jump_s = float(horizon_s), float(tolerance_s), reset_jump_s
        self.max_position_m, self.max_speed_mps = float(max_position_m), float(max_speed_mps)
        self._t: deque[float] = deque()
        self._poses: deque[np.ndarray] = deque()
        self._jumps = 0  # consecutive rejected jumps
        self.epoch = 0  # incremented by every clear() of a non-empty buffer

    def __len__(self) -> int:
        return len(self._t)

    @property
    def span(self) -> tuple[float, float] | None:
        """``(oldest, newest)`` stamp held, or None when empty."""
        return (self._t[0], self._t[-1]) if self._t else None

    def add(self, stamp: float, pose: np.ndarray) -> bool:
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"odometry pose must be a finite 4x4 transform, got shape {pose.shape}")
        distance = float(np.linalg.norm(pose[:3, 3]))
        if distance > self.max_position_m:
            raise ValueError(f"odometry position {distance:.3g} m from the origin exceeds "
                             f"max_position_m {self.max_position_m:g}: not physical")
        if self._t and stamp <= self._t[-1]:
            if self._t[-1] - stamp <= self.reset_jump_s:
                return False
            self.clear()
        if self._t:
            dt = stamp - self._t[-1]
            jump = float(np.linalg.norm(pose[:3, 3] - self._poses[-1][:3, 3]))
            if jump > self.max_speed_mps * dt + 0.5:  # 0.5 m of slack for stamp jitter
                self._jumps += 1
                if self._jumps < self.JUMP_RESET_COUNT:
                    raise ValueError(f"odometry jumped {jump:.3g} m in {dt:.3g} s (more than max_speed_mps "
                                     f"{self.max_speed_mps:g}): rejected")
                self.clear()  # the jump persisted: an odometry reset, accept the new track
        self._jumps = 0
        self._t.append(float(stamp))
        self._poses.append(pose)
        while self._t and self._t[0] < stamp - self.horizon_s:
            self._t.popleft()
            self._poses.popleft()
        return True

    def clear(self) -> None:
        if self._t:
            self.epoch += 1
        self._t.clear()
        self._poses.clear()

    def awaiting(self, stamp: float) -> bool:
        """No odometry has reached ``stamp`` yet (empty, or the newest is older): a pair at ``stamp`` should wait
        for the odometry that brackets it rather than take the newest pose, which may be up to ``tolerance_s``
        old (0.5 m at 10 m/s when one 20 Hz odometry message is late or lost)."""
        return not self._t or stamp > self._t[-1]

    def pose_at(self, stamp: float) -> np.ndarray | None:
        """Pose interpolated at ``stamp`` (linear + slerp); the nearest end pose when ``stamp`` lies at most
        ``tolerance_s`` outside the buffer; None when there is no odometry close enough."""
        if not self._t:
            return None
        if stamp < self._t[0] - self.tolerance_s or stamp > self._t[-1] + self.tolerance_s:
            return None
        return interpolate_poses(np.array([stamp]), np.fromiter(self._t, float), np.stack(self._poses))[0]


@dataclass
class KeyframeDecision:
    accept: bool
    reason: str  # "first", "distance", "heading", "interval" when accepted; why not otherwise


class Keyframer:
    """Keyframe gating: the first frame, then whenever, since the last keyframe, the robot has moved
    ``min_distance_m`` or turned ``min_heading_deg`` (yaw), or ``max_interval_s`` passed. A threshold of 0
    turns its criterion off; with all three 0 every frame is a keyframe."""

    def __init__(self, cfg: KeyframeConfig | None = None) -> None:
        self.cfg = cfg or KeyframeConfig()
        self.last_pose: np.ndarray | None = None
        self.last_stamp: float | None = None

    def check(self, pose: np.ndarray, stamp: float) -> KeyframeDecision:
        """Would a frame at ``pose`` (4x4) and ``stamp`` be a keyframe? (no state change)."""
        if self.last_pose is None:
            return KeyframeDecision(True, "first")
        if stamp <= self.last_stamp:
            return KeyframeDecision(False, f"stamp {stamp:.3f} is not after the last keyframe's {self.last_stamp:.3f}")
        c = self.cfg
        if c.min_distance_m == 0 and c.min_heading_deg == 0 and c.max_interval_s == 0:
            return KeyframeDecision(True, "every frame")
        dist = float(np.linalg.norm(pose[:3, 3] - self.last_pose[:3, 3]))
        if c.min_distance_m > 0 and dist >= c.min_distance_m:
            return KeyframeDecision(True, "distance")
        dyaw = math.degrees(abs(math.remainder(yaw_of(pose) - yaw_of(self.last_pose), 2 * math.pi)))
        if c.min_heading_deg > 0 and dyaw >= c.min_heading_deg:
            return KeyframeDecision(True, "heading")
        if c.max_interval_s > 0 and stamp - self.last_stamp >= c.max_interval_s:
            return KeyframeDecision(True, "interval")
        return KeyframeDecision(False, f"moved {dist:.2f} m, turned {dyaw:.1f} deg since the last keyframe")

    def accept(self, pose: np.ndarray, stamp: float) -> None:
        """Record a keyframe (call after it was added to the map)."""
        self.last_pose, self.last_stamp = np.array(pose, dtype=np.float64), float(stamp)

    def reset(self) -> None:
        self.last_pose = self.last_stamp = None
