"""Processing rate and latency percentiles of a node's recent frames, for its diagnostics."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LatencyWindow:
    """Processing latencies and arrival times of the last ``size`` frames: rate and percentiles."""

    size: int = 200
    _latency: deque = field(default_factory=deque)
    _arrivals: deque = field(default_factory=deque)

    def add(self, latency_s: float, now: float | None = None) -> None:
        """Record one processed frame (``now``: a monotonic time in s; default ``time.monotonic()``)."""
        self._latency.append(float(latency_s))
        self._arrivals.append(time.monotonic() if now is None else float(now))
        while len(self._latency) > self.size:
            self._latency.popleft()
            self._arrivals.popleft()

    def __len__(self) -> int:
        return len(self._latency)

    def rate_hz(self, now: float | None = None) -> float:
        """Frames per second over the window (0 with fewer than two frames or when stale > 5 periods)."""
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1] - self._arrivals[0]
        now = time.monotonic() if now is None else now
        if span <= 0:
            return 0.0
        period = span / (len(self._arrivals) - 1)
        if now - self._arrivals[-1] > 5 * period + 1.0:
            return 0.0
        return 1.0 / period

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the latencies in ms (NaN when empty)."""
        if not self._latency:
            return math.nan
        return float(np.percentile(np.fromiter(self._latency, float), q) * 1e3)
