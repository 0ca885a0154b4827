"""Temporal confirmation: a verified pose counts only after N consecutive frames agree (ORB-SLAM3 uses 3).

Feed :meth:`ConsecutiveAgreement.update` once per query frame with that frame's accepted pose (None
when nothing was accepted). Consecutive poses agree when the new pose is within ``agree_m`` and
``agree_deg`` of the previous one carried forward by the odometry ``motion`` between the frames
(``previous_base_T_current_base``; identity when unknown, so ``agree_m`` must then cover the
distance driven between frames). A frame without an accepted pose breaks the streak.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


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
        d = float(np.linalg.norm(current[:3, 3] - predicted[:3, 3]))
        angle = np.degrees(Rotation.from_matrix(predicted[:3, :3].T @ current[:3, :3]).magnitude())
        return d <= self.agree_m and angle <= self.agree_deg

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
