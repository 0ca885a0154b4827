"""Trimming a bag to stretches of time (data/bag_trim.py)."""

import numpy as np

from distilvpr_ros.data.bag_trim import frame_windows


def test_frame_windows_merge_consecutive_frames():
    assert frame_windows(np.array([3, 4, 5, 9, 10, 20]), np.array([1.0, 1.5, 2.0, 4.0, 4.5, 9.0])) == [
        (1.0, 2.0), (4.0, 4.5), (9.0, 9.0)]
