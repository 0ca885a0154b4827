"""Loop-closure scoring: hand-made trajectories where every answer is known."""

import numpy as np
import pytest

from distilvpr_ros.evaluation.loop_closures import score_loop_closures


def lap():
    """A 100 m square driven twice, 1 keyframe per metre per second: positions revisit after 400 s."""
    side = np.linspace(0, 100, 100, endpoint=False)
    square = np.concatenate([np.c_[side, 0 * side], np.c_[100 + 0 * side, side],
                             np.c_[100 - side, 100 + 0 * side], np.c_[0 * side, 100 - side]])
    xy = np.concatenate([square, square])
    return np.arange(len(xy), dtype=float), xy


def test_correct_wrong_and_unknown_loops_are_counted():
    stamps, xy = lap()
    loops = [[410.0, 10.0],   # same place one lap later: correct (0 m)
             [450.0, 52.0],   # 2 m off: correct
             [420.0, 300.0],  # (20, 0) vs (0, 100): wrong, 102 m
             [999.5, 10.0]]   # no pose near t=999.5: unknown
    s = score_loop_closures(loops, stamps, xy, correct_m=10.0, exclude_recent_s=30.0)
    assert (s["published"], s["scored"], s["unknown_stamps"], s["correct"], s["wrong"]) == (4, 3, 1, 2, 1)
    assert s["precision"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(s["distances_m"], [0.0, 2.0, np.hypot(20, 100)])
    # every keyframe of the second lap can close a loop, and so can the last 10 of the first (they come
    # back within 10 m of the start); 2 distinct queries did
    assert s["possible"] == 410 and s["recall"] == pytest.approx(2 / 410)


def test_no_revisits_means_recall_is_undefined_not_zero():
    stamps = np.arange(50, dtype=float)
    xy = np.c_[np.arange(50) * 5.0, np.zeros(50)]  # a straight road, never revisited
    s = score_loop_closures([[40.0, 2.0]], stamps, xy)
    assert s["possible"] == 0 and s["recall"] is None
    assert s["precision"] == 0.0 and s["wrong"] == 1
    assert score_loop_closures([], stamps, xy)["precision"] is None
