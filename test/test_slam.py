"""SLAM back-end: drifting odometry, the gtsam pose graph with robust kernels, evo metrics, files and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from distilvpr_ros.data.errors import DataError
from distilvpr_ros.data.geometry import pose_from_xyz_yaw, yaw_of
from distilvpr_ros.data.world.config import PRESETS, OdometryDriftConfig, WorldConfig, load_world_config
from distilvpr_ros.data.world.drift import drift_trajectory, simulate_drift
from distilvpr_ros.evaluation.trajectory import read_tum, score_trajectory, write_tum
from distilvpr_ros.slam.loops import LoopClosure, check_loop, load_loops, relative_transform, save_loops
from distilvpr_ros.slam.pose_graph import ACCEPTED, DOWN_WEIGHTED, REJECTED, PoseGraphConfig, optimize_pose_graph
from distilvpr_ros.slam.synthetic import loop_covariance, loops_from_ground_truth, revisit_pairs, wrong_loops

T0 = 1_700_000_000.0
NO_DRIFT = OdometryDriftConfig(scale_error=0.0, scale_walk_per_sqrt_m=0.0, yaw_bias_deg_s=0.0,
                               yaw_bias_walk_deg_s_per_sqrt_s=0.0)


def square_laps(laps: int = 2, side_m: float = 40.0, step_m: float = 2.0, speed: float = 5.0):
    """Stamps and poses driving a square ``laps`` times counter-clockwise (a revisit every lap)."""
    per_side = int(side_m / step_m)
    corners = [(0.0, 0.0), (side_m, 0.0), (side_m, side_m), (0.0, side_m)]
    poses = []
    for _ in range(laps):
        for c in range(4):
            (x0, y0), (x1, y1) = corners[c], corners[(c + 1) % 4]
            yaw = np.arctan2(y1 - y0, x1 - x0)
            for k in range(per_side):
                f = k / per_side
                poses.append(pose_from_xyz_yaw(x0 + f * (x1 - x0), y0 + f * (y1 - y0), 0.0, yaw))
    poses.append(poses[0].copy())
    stamps = T0 + np.arange(len(poses)) * step_m / speed
    return stamps, np.stack(poses)


def ate_rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((a[:, :3, 3] - b[:, :3, 3]) ** 2, axis=1))))


@pytest.fixture(scope="module")
def drifting_square():
    """Two laps of a square with a yaw-biased odometry (no scale error: loops can undo all of it)."""
    stamps, gt = square_laps()
    model = NO_DRIFT.model_copy(update={"yaw_bias_deg_s": 0.3})
    return stamps, gt, drift_trajectory(gt, stamps, model, seed=0)


# -- drift ---------------------------------------------------------------------------------------------


def test_drift_model_scale_and_yaw_bias_by_hand():
    stamps = T0 + np.arange(11.0)  # 1 s per step
    gt = np.stack([pose_from_xyz_yaw(2.0 * k, 0.0, 0.0, 0.0) for k in range(11)])  # 2 m per step along x
    assert np.allclose(drift_trajectory(gt, stamps, NO_DRIFT, seed=3), gt)
    scaled = drift_trajectory(gt, stamps, NO_DRIFT.model_copy(update={"scale_error": 0.05}), seed=3)
    assert scaled[-1, 0, 3] == pytest.approx(20.0 * 1.05)
    biased = drift_trajectory(gt, stamps, NO_DRIFT.model_copy(update={"yaw_bias_deg_s": 1.0}), seed=3)
    assert np.rad2deg(yaw_of(biased[-1])) == pytest.approx(10.0)  # 1 deg/s for 10 s
    # Heading error after step k bends step k+1: y of the end point is sum_k 2 m * sin(k deg).
    assert biased[-1, 1, 3] == pytest.approx(sum(2.0 * np.sin(np.deg2rad(k)) for k in range(10)))


def test_drift_random_walks_are_seeded_and_grow():
    stamps, gt = square_laps(laps=3)
    model = OdometryDriftConfig()
    a, b, c = (simulate_drift(gt, stamps, model, s) for s in (1, 1, 2))
    assert np.array_equal(a.poses, b.poses) and not np.allclose(a.poses, c.poses)
    assert a.scale_error[0] == model.scale_error and a.yaw_bias[0] == pytest.approx(np.deg2rad(model.yaw_bias_deg_s))
    assert np.std(np.diff(a.scale_error)) > 0 and np.std(np.diff(a.yaw_bias)) > 0
    err = np.linalg.norm(a.poses[:, :3, 3] - gt[:, :3, 3], axis=1)
    assert err[0] == 0 and err[-len(err) // 3:].mean() > err[:len(err) // 3].mean()
    with pytest.raises(ValueError, match="increasing"):
        drift_trajectory(gt, stamps[::-1], model)


def test_world_config_dump_unchanged_without_drift_and_round_trips_with_it():
    for cfg in PRESETS.values():
        assert "odometry_drift" not in cfg.model_dump(mode="json")
    cfg = load_world_config("tiny").model_copy(update={"odometry_drift": OdometryDriftConfig(scale_error=0.01)})
    dump = cfg.model_dump(mode="json")
    assert dump["odometry_drift"]["scale_error"] == 0.01
    assert WorldConfig.model_validate(dump) == cfg


def test_bag_sink_writes_drifting_odometry_beside_unchanged_ground_truth(tmp_path):
    from distilvpr_ros.data.rosbag_io import bag_summary, read_odometry
    from distilvpr_ros.data.world.generate import _BagSink, odometry_drift, world_town, world_trajectories
    from distilvpr_ros.data.world.runs import town_route

    base = load_world_config("tiny")
    drift = base.model_copy(update={"odometry_drift": OdometryDriftConfig()})
    town = world_town(base)
    traj = world_trajectories(base, town, town_route(town.grid, base.corner_radius_m))[0]
    poses = traj.poses()
    image, cloud = np.zeros((8, 8, 3), np.uint8), np.zeros((4, 6), np.float32)
    for name, cfg in (("plain", base), ("drift", drift)):
        sink = _BagSink(tmp_path / name, "mcap", cfg, traj, poses, 0)
        for k in range(len(traj)):
            sink.write(k, image, cloud)
        sink.close()
    plain, drifted = bag_summary(tmp_path / "plain")["topics"], bag_summary(tmp_path / "drift")["topics"]
    assert "/odom_drift" not in plain and drifted.pop("/odom_drift")["count"] == plain["/odom"]["count"]
    assert drifted == plain
    t_gt, gt = read_odometry(tmp_path / "plain", "/odom")
    t_gt2, gt2 = read_odometry(tmp_path / "drift", "/odom")
    t_od, od = read_odometry(tmp_path / "drift", "/odom_drift")
    assert np.array_equal(t_gt, t_gt2) and np.array_equal(gt, gt2)  # ground truth untouched
    assert np.allclose(t_od, t_gt) and np.allclose(od, odometry_drift(drift, traj, poses, 0).poses, atol=1e-9)
    assert np.allclose(od[0], gt[0]) and np.linalg.norm(od[:, :3, 3] - gt[:, :3, 3], axis=1).max() > 0.2
    with pytest.raises(DataError, match="odometry topics in the bag: /odom"):
        read_odometry(tmp_path / "plain", "/odom_drift")


def test_laps_above_one_revisit_the_route():
    from distilvpr_ros.data.world.generate import world_town
    from distilvpr_ros.data.world.runs import make_trajectory, town_route

    cfg = load_world_config("tiny")
    cfg.runs[0].laps = 2.0
    town = world_town(cfg)
    traj = make_trajectory(cfg, town_route(town.grid, cfg.corner_radius_m), town.grid, 0, np.random.default_rng(0))
    pairs = revisit_pairs(traj.timestamps, traj.poses(), radius_m=cfg.frame_spacing_m, min_gap_s=10.0)
    assert len(pairs) >= len(traj) // 3  # most of the second lap lies on the first


# -- pose graph ----------------------------------------------------------------------------------------


def test_known_loop_recovers_ground_truth(drifting_square):
    stamps, gt, odom = drifting_square
    loops = loops_from_ground_truth(stamps, gt, radius_m=0.5, min_gap_s=20.0, max_loops=10,
                                    sigma_translation_m=0.01, sigma_rotation_deg=0.05, seed=0)
    assert len(loops) == 10
    res = optimize_pose_graph(stamps, odom, loops)
    assert [o.status for o in res.loops] == [ACCEPTED] * 10
    before, after = ate_rmse(odom, gt), ate_rmse(res.poses, gt)
    assert before > 3.0 and after < 0.05 * before and after < 0.2
    assert np.allclose(res.poses[0], odom[0], atol=1e-6)  # the prior holds the first keyframe
    assert res.error_final < 1e-2 * res.error_initial


@pytest.mark.parametrize("robust, prescreen", [("gnc", 10.0), ("gnc", 0.0), ("cauchy", 0.0), ("huber", 0.0)])
def test_planted_wrong_loop_is_down_weighted(drifting_square, robust, prescreen):
    stamps, gt, odom = drifting_square
    good = loops_from_ground_truth(stamps, gt, radius_m=0.5, min_gap_s=20.0, max_loops=10,
                                   sigma_translation_m=0.01, sigma_rotation_deg=0.05, seed=0)
    bad = wrong_loops(stamps, gt, 1, min_distance_m=30.0, min_gap_s=10.0, sigma_translation_m=0.01,
                      sigma_rotation_deg=0.05, seed=4)
    cfg = PoseGraphConfig(robust=robust, gnc_prescreen_factor=prescreen)
    clean = optimize_pose_graph(stamps, odom, good, cfg)
    res = optimize_pose_graph(stamps, odom, good + bad, cfg)
    wrong = res.loops[-1]
    assert wrong.status == DOWN_WEIGHTED and wrong.weight < 0.01 and wrong.chi2 > 100
    assert ("pre-screen" in wrong.reason) == (robust == "gnc" and prescreen > 0)
    assert all(o.status == ACCEPTED for o in res.loops[:-1])
    plain = optimize_pose_graph(stamps, odom, good + bad, PoseGraphConfig(robust="none"))
    assert [o.status for o in plain.loops] == [ACCEPTED] * len(plain.loops)  # no kernel: everything counts
    assert ate_rmse(plain.poses, gt) > 10.0  # and the wrong loop bends the map
    if robust == "huber":
        # Huber's influence never fades: a confident wrong loop still bends the map, less than without a kernel.
        assert 1.0 < ate_rmse(res.poses, gt) < 0.5 * ate_rmse(plain.poses, gt)
    else:
        assert ate_rmse(res.poses, gt) < 0.1 and ate_rmse(res.poses, clean.poses) < 0.01


def test_bad_loops_are_rejected_with_a_reason_and_the_graph_survives(drifting_square):
    stamps, gt, odom = drifting_square
    good = loops_from_ground_truth(stamps, gt, radius_m=0.5, min_gap_s=20.0, max_loops=5, seed=0)
    T, C = good[0].transform, good[0].covariance
    not_pd = np.diag([1e-4, 1e-4, 1e-4, 1e-4, 1e-4, -1e-4])
    bad = [
        LoopClosure(stamps[3] + 0.2, stamps[60], T, C),  # unknown stamp (keyframes are 0.4 s apart)
        LoopClosure(stamps[70], T0 - 100.0, T, C),  # before the odometry
        LoopClosure(stamps[70], stamps[3], np.full((4, 4), np.nan), C),
        LoopClosure(stamps[70], stamps[3], T, not_pd),
        LoopClosure(stamps[70], stamps[3], T, np.diag([np.nan] * 6)),
        LoopClosure(stamps[70], stamps[3], T, C + np.triu(np.full((6, 6), 1e-3), 1)),  # not symmetric
        LoopClosure(stamps[70], stamps[3], np.diag([2.0, 1, 1, 1]), C),  # not rigid
        LoopClosure(stamps[70], stamps[3], T[:3], C),
        LoopClosure(stamps[3], stamps[3], T, C),
    ]
    reasons = ["names no keyframe", "names no keyframe", "non-finite", "not positive definite", "non-finite",
               "not symmetric", "not rigid", "shape", "two keyframes"]
    res = optimize_pose_graph(stamps, odom, good + bad)
    for outcome, why in zip(res.loops[len(good):], reasons):
        assert outcome.status == REJECTED and why in outcome.reason and outcome.keyframes is None
    assert [o.status for o in res.loops[:len(good)]] == [ACCEPTED] * len(good)
    assert res.counts == {"keyframes": len(stamps), "loops": len(good) + len(bad), ACCEPTED: len(good),
                          DOWN_WEIGHTED: 0, REJECTED: len(bad)}
    assert np.isfinite(res.poses).all() and ate_rmse(res.poses, gt) < 0.2 * ate_rmse(odom, gt)
    assert check_loop(good[0]) is None
    with pytest.raises(ValueError, match="finite"):
        optimize_pose_graph(stamps, np.where(np.arange(len(stamps))[:, None, None] == 5, np.nan, odom), good)
    with pytest.raises(ValueError, match="increasing"):
        optimize_pose_graph(stamps[::-1], odom, good)


def test_odometry_alone_stays_odometry_and_its_covariance_can_be_given(drifting_square):
    stamps, gt, odom = drifting_square
    res = optimize_pose_graph(stamps, odom, [])
    assert np.allclose(res.poses, odom, atol=1e-6) and res.loops == []
    loops = loops_from_ground_truth(stamps, gt, radius_m=0.5, min_gap_s=20.0, max_loops=10,
                                    sigma_translation_m=0.01, sigma_rotation_deg=0.05, seed=0)
    n = len(stamps) - 1
    stiff = optimize_pose_graph(stamps, odom, loops, PoseGraphConfig(robust="none"),
                                odom_covariances=np.repeat(np.eye(6)[None] * 1e-12, n, axis=0))
    assert ate_rmse(stiff.poses, odom) < 0.05  # odometry far more certain than the loops: it barely moves
    with pytest.raises(ValueError, match="shape"):
        optimize_pose_graph(stamps, odom, loops, odom_covariances=np.eye(6)[None])
    with pytest.raises(ValueError, match="positive definite"):
        optimize_pose_graph(stamps, odom, loops, odom_covariances=np.repeat(-np.eye(6)[None], n, axis=0))


# -- metrics and files -----------------------------------------------------------------------------


def test_evo_ate_matches_a_hand_computation():
    stamps = T0 + np.arange(5.0)
    gt = np.stack([pose_from_xyz_yaw(k, 0.5 * k * k, 0.0, 0.1 * k) for k in range(5)])
    offsets = np.array([[1.0, 0, 0], [0, 2, 0], [0, 0, -2], [3, 4, 0], [0, 0, 0]])
    est = gt.copy()
    est[:, :3, 3] += offsets
    score = score_trajectory(stamps, gt, stamps, est, align="none")
    hand = np.sqrt(np.mean([1.0, 4.0, 4.0, 25.0, 0.0]))
    assert score.ate["rmse"] == pytest.approx(hand)
    assert score.ate["max"] == pytest.approx(5.0) and score.ate["mean"] == pytest.approx(np.mean([1, 2, 2, 5, 0]))
    assert score.as_dict()["ate_rmse_m"] == pytest.approx(hand)
    # A rigidly moved copy has no error after SE(3) alignment; a scaled one after Sim(3).
    M = np.eye(4)
    M[:3, :3] = Rotation.from_euler("zyx", [30, 5, -3], degrees=True).as_matrix()
    M[:3, 3] = [10.0, -4.0, 2.0]
    moved = M @ gt
    assert score_trajectory(stamps, gt, stamps, moved, align="none").ate["rmse"] > 5
    assert score_trajectory(stamps, gt, stamps, moved, align="se3").ate["rmse"] < 1e-9
    scaled = moved.copy()
    scaled[:, :3, 3] *= 1.5
    assert score_trajectory(stamps, gt, stamps, scaled, align="sim3").ate["rmse"] < 1e-9
    # RPE over one frame: the translation error of each relative step, by hand.
    rel = score_trajectory(stamps, gt, stamps, est, align="none", rpe_delta=1)
    steps = [np.linalg.norm(np.linalg.solve(est[k], est[k + 1])[:3, 3] - np.linalg.solve(gt[k], gt[k + 1])[:3, 3])
             for k in range(4)]
    assert rel.rpe_translation["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(steps))))


def test_tum_round_trip(tmp_path, drifting_square):
    stamps, gt, _ = drifting_square
    path = write_tum(tmp_path / "traj.tum", stamps, gt)
    first = path.read_text().splitlines()[0].split()
    assert len(first) == 8 and float(first[0]) == pytest.approx(stamps[0])
    t, poses = read_tum(path)
    assert np.allclose(t, stamps, rtol=0, atol=1e-6) and np.allclose(poses, gt, atol=1e-9)
    (tmp_path / "bad.tum").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="TUM"):
        read_tum(tmp_path / "bad.tum")


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_loop_files_round_trip_and_keep_bad_values_for_rejection(tmp_path, drifting_square, suffix):
    stamps, gt, _ = drifting_square
    loops = loops_from_ground_truth(stamps, gt, radius_m=0.5, min_gap_s=20.0, max_loops=3, seed=0)
    loops.append(LoopClosure(stamps[70], stamps[3], np.full((4, 4), np.nan), loop_covariance(0.1, 1.0)))
    back = load_loops(save_loops(tmp_path / f"loops{suffix}", loops))
    assert len(back) == len(loops)
    for a, b in zip(loops[:-1], back):
        assert (a.t_query, a.t_match) == (b.t_query, b.t_match)
        assert np.allclose(a.transform, b.transform, atol=1e-12) and np.allclose(a.covariance, b.covariance)
    assert "non-finite" in check_loop(back[-1])
    (tmp_path / f"broken{suffix}").write_text("nonsense\n")
    with pytest.raises(DataError, match="cannot read loop closures"):
        load_loops(tmp_path / f"broken{suffix}")


def test_relative_transform_convention():
    a, b = pose_from_xyz_yaw(1, 2, 0, 0.3), pose_from_xyz_yaw(5, -1, 0, 1.2)
    assert np.allclose(a @ relative_transform(a, b), b)  # match_T_query maps the query into the match frame


def test_pose_graph_command(tmp_path, drifting_square):
    from distilvpr_ros.cli import main

    stamps, gt, odom = drifting_square
    write_tum(tmp_path / "odom.tum", stamps, odom)
    write_tum(tmp_path / "gt.tum", stamps, gt)
    loops = loops_from_ground_truth(stamps, gt, radius_m=0.5, min_gap_s=20.0, max_loops=10, seed=0)
    loops += wrong_loops(stamps, gt, 1, min_distance_m=30.0, min_gap_s=10.0, seed=4)
    loops.append(LoopClosure(stamps[3] + 0.2, stamps[60], np.eye(4), np.eye(6)))
    save_loops(tmp_path / "loops.json", loops)
    out = tmp_path / "out"
    assert main(["pose-graph", "--odom", str(tmp_path / "odom.tum"), "--loops", str(tmp_path / "loops.json"),
                 "--ground-truth", str(tmp_path / "gt.tum"), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["accepted"], m["down-weighted"], m["rejected"]) == (10, 1, 1)
    assert m["ate_reduction"] > 0.8 and m["optimized"]["ate_rmse_m"] < m["odometry"]["ate_rmse_m"]
    t, poses = read_tum(out / "optimized.tum")
    assert len(t) == len(stamps) and ate_rmse(poses, gt) < 0.5
    written = ("trajectory.png", "ate_along.png", "metrics.md", "loops.json", "config.json", "odometry.tum")
    assert all((out / f).is_file() for f in written)
    bare = tmp_path / "bare"  # without a ground truth: the graph's outputs, no scores
    assert main(["pose-graph", "--odom", str(tmp_path / "odom.tum"), "--loops", str(tmp_path / "loops.json"),
                 "--robust", "cauchy", "--out", str(bare)]) == 0
    m = json.loads((bare / "metrics.json").read_text())
    assert "ate_reduction" not in m and m["robust"] == "cauchy" and (bare / "trajectory.png").is_file()
    assert main(["pose-graph", "--odom", str(tmp_path / "missing.tum"), "--loops", str(tmp_path / "loops.json"),
                 "--out", str(tmp_path / "x")]) == 2
