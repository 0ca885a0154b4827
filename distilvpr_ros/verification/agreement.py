"""Temporal consistency of verified poses: confirmation and tracking.

* :class:`ConsecutiveAgreement` (confirmation): a verified pose counts only after N consecutive frames agree
  (ORB-SLAM3 uses 3). Feed :meth:`ConsecutiveAgreement.update` once per query frame with that frame's accepted
  pose (None when nothing was accepted). Consecutive poses agree when the new pose is within ``agree_m`` and
  ``agree_deg`` of the previous one carried forward by the odometry ``motion`` between the frames
  (``previous_base_T_current_base``; identity when unknown, so ``agree_m`` must then cover the distance driven
  between frames). A frame without an accepted pose breaks the streak.
* :class:`PosePrior` (tracking): the last accepted pose carried forward by the odometry of every frame since,
  i.e. where the vehicle should be now. A localizer may accept a candidate with fewer PnP inliers when its pose
  agrees with this prediction (the way ORB-SLAM tracks with a motion model once relocalised): a wrong place
  elsewhere in the map cannot agree with it. The prediction lapses after ``max_travel_m`` of odometry (drift)
  and when a frame comes without odometry.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def poses_agree(predicted: np.ndarray, current: np.ndarray, max_m: float, max_deg: float) -> bool:
    """``current`` lies within ``max_m`` metres and ``max_deg`` degrees of ``predicted`` (4x4 poses)."""
    d = float(np.linalg.norm(current[:3, 3] - predicted[:3, 3]))
    angle = np.degrees(Rotation.from_matrix(predicted[:3, :3].T @ current[:3, :3]).magnitude())
    return d <= max_m and angle <= max_deg


class ConsecutiveAgreement:
    def __init__(self, required: int = 1, agree_m: float = 3.0, agree_deg: float = 10.0):
        if required < 1:
            raise ValueError("required must be >= 1")
        self.required, self.agree_m, self.agree_deg = int(required), float(agree_m), float(agree_deg)
        self.reset()

    def reset(self) -> None:
        self.streak = 0
        self._last: np.ndarray | None = None

    def agrees(self, previous: np.ndarray, current: np.ndarray, motion: np.ndarray | None = None) -> bool:
        predicted = previous if motion is None else previous @ motion
        return poses_agree(predicted, current, self.agree_m, self.agree_deg)

    def update(self, pose: np.ndarray | None, motion: np.ndarray | None = None) -> bool:
        """Record this frame's accepted pose (or None); True when the last ``required`` frames agree."""
        if pose is None:
            self.reset()
            return False
        pose = np.asarray(pose, dtype=np.float64)
        if self._last is not None and self.agrees(self._last, pose, motion):
            self.streak += 1
        else:
            self.streak = 1
        self._last = pose
        return self.streak >= self.required


class PosePrior:
    """The last accepted pose carried forward by odometry (module doc). Per frame: :meth:`advance` with the
    frame's motion (gives the prediction or None), then :meth:`accept` with the frame's accepted pose, if any."""

    def __init__(self, max_travel_m: float = 30.0):
        if max_travel_m <= 0:
            raise ValueError("max_travel_m must be > 0")
        self.max_travel_m = float(max_travel_m)
        self.reset()

    def reset(self) -> None:
        self._pose: np.ndarray | None = None
        self._motion = np.eye(4)
        self.travel_m = 0.0

    def advance(self, motion: np.ndarray | None) -> np.ndarray | None:
        """Carry the prior over this frame's ``motion`` (``previous_base_T_current_base``); the predicted
        world_T_base now, or None (nothing accepted yet, no odometry for this frame, or too far driven)."""
        if self._pose is None:
            return None
        if motion is None or not np.all(np.isfinite(motion)):
            self.reset()
            return None
        motion = np.asarray(motion, dtype=np.float64)
        self._motion = self._motion @ motion
        self.travel_m += float(np.linalg.norm(motion[:3, 3]))
        if self.travel_m > self.max_travel_m:
            self.reset()
            return None
        return self._pose @ self._motion

    def accept(self, pose: np.ndarray) -> None:
        """This frame's accepted world_T_base: the new origin of the prediction."""
        self._pose = np.asarray(pose, dtype=np.float64).copy()
        self._motion = np.eye(4)
        self.travel_m = 0.0
