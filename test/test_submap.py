"""Submap accumulation (data.submap) against transforms worked out by hand, with odometry gaps."""

import math

import numpy as np
import pytest

from distilvpr_ros.data.geometry import pose_from_xyz_yaw
from distilvpr_ros.data.sample import Sample
from distilvpr_ros.data.submap import (SubmapConfig, SubmapSequence, TrailingSubmaps, accumulate_submap,
                                       lidar_extrinsic, relative_transform, submap_members, voxel_filter,
                                       with_submaps)


def straight_poses(n: int = 7, step_m: float = 5.0) -> np.ndarray:
    """Driving east along x, one scan every ``step_m``."""
    return np.stack([pose_from_xyz_yaw(i * step_m, 0.0, 0.0, 0.0) for i in range(n)])


def marker_clouds(n: int) -> list[np.ndarray]:
    """Scan j holds one point 1 m ahead of the sensor, intensity j (to tell scans apart)."""
    return [np.array([[1.0, 0.0, 0.5, float(j)]], dtype=np.float32) for j in range(n)]


def by_scan(cloud: np.ndarray) -> dict[int, list[float]]:
    return {int(round(row[3])): [round(float(v), 5) for v in row[:3]] for row in cloud}


def test_members_within_travel_distance_nearest_first():
    poses = straight_poses(9)
    assert submap_members(poses, 4, 20, 11, "centred") == [4, 3, 5, 2, 6]
    assert submap_members(poses, 4, 20, 3, "centred") == [4, 3, 5]
    assert submap_members(poses, 4, 0, 11, "centred") == [4]
    assert submap_members(poses, 0, 20, 11, "centred") == [0, 1, 2]  # at the start of the run only ahead
    with pytest.raises(IndexError):
        submap_members(poses, 9, 20, 11, "centred")


def test_travel_is_path_length_not_straight_line():
    # a U-turn: scan 2 is 2 m from scan 0 in a straight line but 12 m away along the path
    poses = np.stack([pose_from_xyz_yaw(0, 0, 0, 0), pose_from_xyz_yaw(5, 0, 0, 0), pose_from_xyz_yaw(5, 2, 0, 0),
                      pose_from_xyz_yaw(0, 2, 0, math.pi)])
    assert submap_members(poses, 0, 20, 11, "centred") == [0, 1, 2]
    assert submap_members(poses, 0, 13.8, 11, "centred") == [0, 1]


def test_points_go_into_the_centre_frame():
    poses = straight_poses(5)
    submap = accumulate_submap(marker_clouds(5), poses, 2, SubmapConfig(length_m=20, window="centred"))
    # scan j's point sits at x = 5 j + 1 in the world, so at 5 (j - 2) + 1 from the centre sensor
    assert by_scan(submap) == {j: [5.0 * (j - 2) + 1.0, 0.0, 0.5] for j in range(5)}


def test_rotated_poses_and_sensor_extrinsic_by_hand():
    # centre: at the origin facing north (yaw 90 deg); other: at (10, 0) facing west (yaw 180 deg).
    poses = [pose_from_xyz_yaw(0, 0, 0, math.pi / 2), pose_from_xyz_yaw(10, 0, 0, math.pi)]
    base_T_sensor = pose_from_xyz_yaw(0.3, 0.0, 1.9, 0.0)
    clouds = [np.zeros((0, 4), np.float32), np.array([[2.0, 1.0, 0.0, 1.0]], np.float32)]
    submap = accumulate_submap(clouds, poses, 0, SubmapConfig(length_m=40, window="centred"), base_T_sensor)
    # other sensor: world (10 - 0.3, 0, 1.9), facing west; its point (2, 1, 0) is 2 m west, 1 m south:
    # world (7.7, -1, 1.9). Centre sensor at world (0, 0.3, 1.9) facing north: x_c = north offset = -1.3,
    # y_c = west offset (left of north) = -7.7, z_c = 0.
    np.testing.assert_allclose(submap[:, :3], [[-1.3, -7.7, 0.0]], atol=1e-5)
    T = relative_transform(poses[0], poses[1], base_T_sensor)
    np.testing.assert_allclose(T[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)


def test_gaps_in_odometry_fall_back_to_fewer_scans():
    poses = list(straight_poses(7))
    poses[4] = np.full((4, 4), np.nan)  # odometry lost ahead of the centre
    poses[1] = None  # and a missing message behind it
    cfg = SubmapConfig(length_m=30, window="centred")
    assert sorted(by_scan(accumulate_submap(marker_clouds(7), poses, 3, cfg))) == [2, 3]
    # scans beyond a gap are never used, even when within the radius
    assert submap_members(poses, 5, 30, 11, "centred") == [5, 6]
    poses[3] = None  # no pose for the centre scan: the single scan
    single = accumulate_submap(marker_clouds(7), poses, 3, cfg)
    assert by_scan(single) == {3: [1.0, 0.0, 0.5]}


def test_length_zero_keeps_the_single_scan_object():
    clouds = marker_clouds(3)
    assert accumulate_submap(clouds, straight_poses(3), 1, SubmapConfig(length_m=0, window="centred")) is clouds[1]


def test_memory_bounds_range_crop_and_voxel_filter():
    rng = np.random.default_rng(0)
    clouds = [np.concatenate([rng.uniform(-60, 60, (500, 3)), np.full((500, 1), j)], axis=1).astype(np.float32)
              for j in range(9)]
    cfg = SubmapConfig(length_m=200, window="centred", max_scans=4, max_range_m=30.0)
    submap = accumulate_submap(clouds, straight_poses(9, 2.0), 4, cfg)
    assert set(np.unique(submap[:, 3]).astype(int)) == {2, 3, 4, 5}  # the 4 nearest in travel
    assert np.hypot(submap[:, 0], submap[:, 1]).max() <= 30.0
    capped = accumulate_submap(clouds, straight_poses(9, 2.0), 4, cfg.model_copy(update={"max_points": 300}))
    assert 150 <= len(capped) <= 300 and np.array_equal(capped, submap[:: -(-len(submap) // 300)])
    dense = np.array([[0.1, 0.1, 0.1, 0], [0.2, 0.3, 0.4, 1], [0.6, 0.1, 0.1, 2], [-0.1, 0.1, 0.1, 3]], np.float32)
    assert voxel_filter(dense, 0.5)[:, 3].tolist() == [0, 2, 3]  # first point of each voxel, in order


class FakeRun:
    run = "fake"

    def __init__(self, n: int = 5):
        self.poses = straight_poses(n)
        self.timestamps = np.arange(n, dtype=float)
        self.clouds = marker_clouds(n)
        self.reads: list[int] = []

    def __len__(self):
        return len(self.poses)

    def cloud(self, j):
        self.reads.append(j)
        return self.clouds[j]

    def __getitem__(self, i):
        return Sample(image=None, cloud=self.cloud(i), pose=self.poses[i], timestamp=float(i), run=self.run, index=i)

    def meta(self, i):
        return {"frame": i}


def test_submap_sequence_replaces_clouds_and_reads_each_scan_about_once():
    parent = FakeRun(6)
    seq = SubmapSequence(parent, SubmapConfig(length_m=10, window="centred"))
    assert len(seq) == 6 and seq.meta(2) == {"frame": 2} and seq.poses is parent.poses
    clouds = [seq[i].cloud for i in range(len(seq))]
    assert sorted(by_scan(clouds[2])) == [1, 2, 3] and sorted(by_scan(clouds[0])) == [0, 1]
    assert by_scan(seq[-1].cloud) == by_scan(clouds[5])
    assert len(parent.reads) <= 2 * len(seq) + 2
    with pytest.raises(IndexError):
        seq[6]


# --- the trailing window (online) and its live form ------------------------------------------------------


def test_trailing_window_walks_back_only():
    poses = straight_poses(9)
    assert submap_members(poses, 4, 10.0, 11) == [4, 3, 2]  # trailing is the default: the past only
    assert submap_members(poses, 4, 10.0, 2) == [4, 3]
    assert submap_members(poses, 1, 10.0, 11) == [1, 0]
    cfg = SubmapConfig(length_m=10.0)
    assert cfg.window == "trailing" and cfg.enabled and not SubmapConfig().enabled
    # scan j's point at world x = 5 j + 1: from scan 4's sensor at 5 (j - 4) + 1
    expected = {2: [-9.0, 0.0, 0.5], 3: [-4.0, 0.0, 0.5], 4: [1.0, 0.0, 0.5]}
    assert by_scan(accumulate_submap(marker_clouds(9), poses, 4, cfg)) == expected
    poses = list(poses)
    poses[3] = None  # an odometry gap right behind: the scan alone
    assert submap_members(poses, 4, 10.0, 11) == [4]
    with pytest.raises(ValueError, match="window"):
        submap_members(poses, 4, 10.0, 11, "ahead")


def feed(live: TrailingSubmaps, stamps, poses, clouds, epochs):
    """Each keyframe's live submap (built, then its scan kept, as the map builder does)."""
    out = []
    for t, pose, cloud, epoch in zip(stamps, poses, clouds, epochs):
        out.append(live.submap(t, pose, cloud, epoch))
        live.add(t, pose, cloud, epoch)
    return out


def test_live_trailing_submaps_equal_the_offline_ones_and_stay_bounded():
    poses, clouds = straight_poses(12), marker_clouds(12)
    base_T_sensor = pose_from_xyz_yaw(0.3, 0.0, 1.9, 0.0)
    cfg = SubmapConfig(length_m=10.0)
    live = TrailingSubmaps(cfg, base_T_sensor)
    got = feed(live, np.arange(12.0), poses, clouds, [0] * 12)
    for i, sub in enumerate(got):
        np.testing.assert_array_equal(sub.cloud, accumulate_submap(clouds, poses, i, cfg, base_T_sensor))
        assert sub.scans == min(i + 1, 3) and not sub.cut_short
    assert by_scan(got[7].cloud) == {5: [-9.0, 0.0, 0.5], 6: [-4.0, 0.0, 0.5], 7: [1.0, 0.0, 0.5]}
    assert len(live) == 3  # only what the next window can reach (10 m back from the newest, 5 m steps)
    capped = TrailingSubmaps(SubmapConfig(length_m=1000.0, max_scans=4))
    feed(capped, np.arange(12.0), poses, clouds, [0] * 12)
    assert len(capped) == 3 and capped.counts["last_scans"] == 4
    assert TrailingSubmaps(SubmapConfig(length_m=0.0)).submap(0.0, poses[0], clouds[0]).cloud is clouds[0]


def test_live_submaps_fall_back_to_fewer_scans_after_an_odometry_break():
    poses, clouds = straight_poses(9), marker_clouds(9)
    live = TrailingSubmaps(SubmapConfig(length_m=10.0))
    # keyframes 0-3 on odometry epoch 0, then the odometry was reset (epoch 1): 4 must not use 0-3
    got = feed(live, np.arange(9.0), poses, clouds, [0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert [sorted(by_scan(g.cloud)) for g in got[3:7]] == [[1, 2, 3], [4], [4, 5], [4, 5, 6]]
    assert [g.cut_short for g in got] == [False] * 4 + [True, True, False, False, False]
    assert live.counts["breaks"] == 1 and live.counts["cut_short"] == 2 and live.counts["submaps"] == 9
    # a stamp that goes back (a bag played again) breaks the chain too
    sub = live.submap(3.0, poses[8], clouds[8], 1)
    assert sub.scans == 1 and sub.cut_short
    live.add(3.0, poses[8], clouds[8], 1)
    assert len(live) == 1 and live.counts["breaks"] == 2


def test_with_submaps_finds_the_world_lidar_extrinsic(tmp_path):
    import json

    world = tmp_path / "world"
    (world / "runs" / "run00").mkdir(parents=True)
    T = pose_from_xyz_yaw(0.3, 0.0, 1.9, 0.0)
    (world / "world.json").write_text(json.dumps({"version": 1, "calibration": {"T_base_lidar": T.tolist()}}))
    parent = FakeRun(5)
    parent.run_dir = world / "runs" / "run00"
    np.testing.assert_array_equal(lidar_extrinsic(parent), T)
    assert lidar_extrinsic(FakeRun(5)) is None
    wrapped = with_submaps([parent], SubmapConfig(length_m=10.0))[0]
    np.testing.assert_array_equal(wrapped.base_T_sensor, T)
    assert sorted(by_scan(wrapped[4].cloud)) == [2, 3, 4]
    assert with_submaps([parent], SubmapConfig())[0] is parent and with_submaps([parent], None)[0] is parent


def dense_scans(n: int, seed: int = 0) -> list[np.ndarray]:
    """Scans of a street with box buildings seen from sensors 5 m apart along x (x, y, z, intensity)."""
    rng = np.random.default_rng(seed)
    walls = np.column_stack([rng.uniform(-40, 80, 12000), rng.choice([-8.0, 8.0], 12000), rng.uniform(-1.9, 9, 12000)])
    boxes = np.column_stack([rng.uniform(-40, 80, 3000), rng.uniform(-30, 30, 3000), rng.uniform(-1.9, 3, 3000)])
    world = np.concatenate([walls, boxes])
    out = []
    for j in range(n):
        rel = world - [5.0 * j, 0.0, 0.0]
        rel = rel[(np.hypot(rel[:, 0], rel[:, 1]) < 50) & (rng.uniform(size=len(rel)) < 0.6)]
        out.append(np.column_stack([rel, np.full(len(rel), float(j))]).astype(np.float32))
    return out


def test_scan_voxel_filter_each_scan_once_live_equals_offline_and_keeps_the_descriptor(monkeypatch):
    from distilvpr_ros.data import submap as submap_module
    from distilvpr_ros.models.config import scan_context_grid
    from distilvpr_ros.models.preprocess import cloud_to_polar

    def fft_descriptor(cloud):  # models.classical's scan_context_fft maths, without importing torch
        return np.abs(np.fft.rfft(cloud_to_polar(cloud, scan_context_grid())[0], axis=-1)).ravel()

    poses, clouds = straight_poses(8), dense_scans(8)
    cfg = SubmapConfig(length_m=20.0, scan_voxel_m=1.0)
    calls = []
    original = submap_module.scan_points
    monkeypatch.setattr(submap_module, "scan_points", lambda c, k: calls.append(1) or original(c, k))
    live = TrailingSubmaps(cfg)
    got = feed(live, np.arange(8.0), poses, clouds, [0] * 8)
    assert len(calls) == 8  # each scan filtered once, when it arrives (its submap and its insertion share it)
    monkeypatch.setattr(submap_module, "scan_points", original)
    full_cfg = cfg.model_copy(update={"scan_voxel_m": None})
    for i, sub in enumerate(got):
        offline = accumulate_submap(clouds, poses, i, cfg)
        np.testing.assert_array_equal(sub.cloud, offline)
        members = submap_members(poses, i, cfg.length_m, cfg.max_scans)
        assert len(offline) == sum(len(voxel_filter(clouds[j], 1.0)) for j in members)
        full = accumulate_submap(clouds, poses, i, full_cfg)
        assert len(offline) < 0.5 * len(full)
        # stated tolerance: the Scan Context FFT descriptor of the filtered submap stays within cosine 0.99
        a, b = fft_descriptor(offline), fft_descriptor(full)
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.99
    # without the filter the live submap is the offline one over every point (bit-equal)
    np.testing.assert_array_equal(feed(TrailingSubmaps(full_cfg), np.arange(8.0), poses, clouds, [0] * 8)[-1].cloud,
                                  accumulate_submap(clouds, poses, 7, full_cfg))
