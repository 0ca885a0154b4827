"""slam-eval end to end on a tiny world with revisits and drifting odometry (tiny random models)."""

import json

import numpy as np
import pytest

from distilvpr_ros.data.world.config import OdometryDriftConfig, RunConfig, load_world_config
from distilvpr_ros.data.world.generate import generate_world
from distilvpr_ros.slam.evaluate import (DriftedRun, SlamEvalConfig, drifted_odometry, loop_from_registration,
                                         run_slam_eval, transform_error)
from distilvpr_ros.slam.loops import check_loop
from tiny_models import tiny_checkpoints


@pytest.fixture(scope="module")
def drift_world(tmp_path_factory):
    """The tiny town, one run of two laps, drifting odometry written to the bag too."""
    out = tmp_path_factory.mktemp("world_drift")
    cfg = load_world_config("tiny").model_copy(update={
        "runs": [RunConfig(laps=2.0)], "frame_spacing_m": 8.0,
        "odometry_drift": OdometryDriftConfig(yaw_bias_deg_s=0.5, scale_error=0.05)})
    generate_world(out, cfg, write_bags=True, progress=False)
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("models"))


def test_drifted_odometry_is_the_bags(drift_world):
    from distilvpr_ros.data.rosbag_io import read_odometry
    from distilvpr_ros.data.geometry import interpolate_poses

    run, odom = drifted_odometry(drift_world, 0)
    assert odom.shape == run.poses.shape
    stamps, bag_poses = read_odometry(drift_world / "bags" / run.run, "/odom_drift")
    at_frames = interpolate_poses(run.timestamps, stamps, bag_poses)
    assert np.abs(at_frames[:, :3, 3] - odom[:, :3, 3]).max() < 0.05
    # it drifts: the last pose is metres away from the truth, the first is the truth
    assert np.allclose(odom[0], run.poses[0])
    assert np.linalg.norm(odom[-1, :3, 3] - run.poses[-1, :3, 3]) > 2.0
    seq = DriftedRun(run, odom)
    assert np.allclose(seq[3].pose, odom[3]) and seq[3].image is not None


def test_world_without_drift_is_refused(tiny_world):
    with pytest.raises(ValueError, match="odometry_drift"):
        drifted_odometry(tiny_world, 0)


def test_loop_from_registration_and_errors():
    T = np.eye(4)
    T[:3, 3] = [1.0, 2.0, 0.0]
    lc = loop_from_registration(5.0, 1.0, T, 0.3, SlamEvalConfig())
    assert check_loop(lc) is None
    assert lc.covariance[0, 0] == pytest.approx(0.09)  # the RMS distance above the floor
    assert loop_from_registration(5.0, 1.0, T, float("nan"), SlamEvalConfig()).covariance[0, 0] == pytest.approx(0.01)
    R = np.eye(4)
    R[:2, :2] = [[0, -1], [1, 0]]
    err_m, err_deg = transform_error(T @ R, T)
    assert err_m == pytest.approx(0.0, abs=1e-12) and err_deg == pytest.approx(90.0)


def test_slam_eval_end_to_end(drift_world, ckpts, tmp_path):
    cfg = SlamEvalConfig(rpe_delta_m=10.0)
    m = run_slam_eval(drift_world, ckpts["teacher"], ckpts["student"], config=cfg, out_dir=tmp_path / "out",
                      plant_wrong=3)
    out = tmp_path / "out"
    for name in ("metrics.json", "report.md", "loops.json", "config.json", "trajectory.png", "ate_along.png",
                 "odometry.tum", "optimized.tum", "ground_truth.tum"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["keyframes"] == m["keyframes"]
    assert len((out / "optimized.tum").read_text().splitlines()) == m["keyframes"]
    lp = m["loops"]
    assert lp["verified"] + lp["verification_rejected"] == lp["proposed"]
    assert lp["accepted"] + lp["down_weighted"] + lp["rejected_input"] == lp["verified"] + 3
    # the robust kernel keeps every planted wrong loop out of the graph
    assert sum(k["planted"] for k in lp["kernel_rejected"]) == 3 and lp["planted_wrong"] == 3
    assert len(lp["kernel_rejected"]) == lp["down_weighted"] + lp["rejected_input"]
    assert m["odometry"]["ate_rmse_m"] > 1.0  # the drift is there to be corrected
    assert m["laps"] == 2.0 and m["length_m"] > 0
    loops = json.loads((out / "loops.json").read_text())
    assert len(loops["loops"]) == lp["proposed"] and len(loops["planted_wrong"]) == 3
    assert "ATE reduction" in (out / "report.md").read_text()
    # the map holds every keyframe with its view
    from distilvpr_ros.mapping.database import PlaceDatabase

    db = PlaceDatabase.load(out / "map")
    assert len(db) == m["keyframes"] and db.has_views
