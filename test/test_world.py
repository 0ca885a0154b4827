"""The synthetic camera+LiDAR world: determinism, sensor geometry, place consistency, splits, conditions.

One ``tiny`` world is generated per module and shared by the tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from distilvpr_ros.data.errors import DataError
from distilvpr_ros.data.geometry import invert, transform_points, yaw_of
from distilvpr_ros.data.sample import Sequence
from distilvpr_ros.data.synthetic import SyntheticRun, load_synthetic, read_world_meta
from distilvpr_ros.data.world.config import PRESETS, load_world_config
from distilvpr_ros.data.world.generate import RunRenderer, generate_world

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_tiny")
    summary = generate_world(out, load_world_config("tiny", None, None), progress=False)
    return out, summary


@pytest.fixture(scope="module")
def runs(world):
    return {r.run: r for r in load_synthetic(world[0])}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "runs").rglob("*")) if p.is_file()}


def test_layout_and_reader(world, runs):
    out, summary = world
    meta = read_world_meta(out)
    assert summary["frames"] == sum(len(r) for r in runs.values()) > 30
    assert [r["run_id"] for r in meta["runs"]] == list(runs)
    assert np.asarray(meta["calibration"]["K"]).shape == (3, 3)
    for run in runs.values():
        assert isinstance(run, Sequence)
        assert (out / "bags" / run.run / "metadata.yaml").is_file()
        s = run[len(run) - 1]
        assert s.image.shape == (120, 160, 3) and s.image.dtype == np.uint8
        assert s.cloud.ndim == 2 and s.cloud.shape[1] == 6 and s.cloud.dtype == np.float32
        assert s.cloud[:, 3].min() >= 0 and s.cloud[:, 3].max() <= 1
        assert np.all(np.diff(run.timestamps) > 0)


def test_region_filter_and_errors(world, runs, tmp_path):
    out, _ = world
    val = load_synthetic(out, regions={"val"})
    for run in val:
        assert len(run) == int(np.sum([runs[run.run].meta(i)["region"] == "val" for i in range(len(runs[run.run]))]))
        assert all(run[i].meta["region"] == "val" for i in range(len(run)))
    with pytest.raises(DataError, match="world.json"):
        read_world_meta(tmp_path)
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "run.json").write_text("{}")
    (bad / "poses.csv").write_text("index,timestamp\n0,1.0\n")
    with pytest.raises(DataError, match="poses.csv"):
        SyntheticRun(bad)


def test_determinism(world, tmp_path):
    out, _ = world
    cfg = PRESETS["tiny"]
    again = tmp_path / "again"
    generate_world(again, cfg, write_bags=False, progress=False)
    a, b = _files(out), _files(again)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    other = tmp_path / "other"
    generate_world(other, cfg.model_copy(update={"seed": cfg.seed + 1, "runs": cfg.runs[:1]}), write_bags=False,
                   progress=False)
    c = _files(other)
    name = next(k for k in c if k.endswith("poses.csv"))
    assert c[name] != a[name]
    assert c[name.replace("poses.csv", "images/000003.png")] != a[name.replace("poses.csv", "images/000003.png")]


def test_lidar_agrees_with_camera_depth(world, runs):
    out, _ = world
    cfg = load_world_config("tiny", None, None)
    calib = read_world_meta(out)["calibration"]
    K, T_bc, T_bl = (np.asarray(calib[k]) for k in ("K", "T_base_camera", "T_base_lidar"))
    rr = RunRenderer.for_run(cfg, 0)
    run = runs["run00_day"]
    errors = []
    for k in (2, 9, 15):
        cam, _ = rr.render(k)
        p = transform_points(invert(T_bc) @ T_bl, run.cloud(k)[:, :3].astype(np.float64))
        p = p[p[:, 2] > 1.0]
        uv = np.round(p @ K.T / p[:, 2:3])[:, :2].astype(int)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.depth.shape[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.depth.shape[0])
        p, uv = p[inside], uv[inside]
        depth = cam.depth[uv[:, 1], uv[:, 0]]
        static = np.isfinite(depth) & ~cam.dynamic_mask[uv[:, 1], uv[:, 0]]
        assert static.sum() > 200
        errors.append(np.abs(p[static, 2] - depth[static]) / depth[static])
    assert np.median(np.concatenate(errors)) < 0.02


def _world_cloud(run, i, T_bl):
    c = run.cloud(i)
    keep = (c[:, 2] > -1.0) & (np.linalg.norm(c[:, :2], axis=1) < 30)  # above the ground, nearby
    return transform_points(run.poses[i] @ T_bl, c[keep, :3].astype(np.float64))


def test_same_place_same_ground_truth(world, runs):
    """Clouds of the same place from two runs, put in the world frame by their poses, overlap; a
    2 m pose error would show (nearest-neighbour distances grow several-fold)."""
    out, _ = world
    meta = read_world_meta(out)
    T_bl = np.asarray(meta["calibration"]["T_base_lidar"])
    a = runs["run00_day"]
    # Same lane and direction at night; opposite direction, other lane, winter (no crowns), rain.
    for other, limit in (("run01_night", 0.25), ("run02_rain-winter", 0.6)):
        b = runs[other]
        d = np.linalg.norm(a.poses[:, None, :2, 3] - b.poses[None, :, :2, 3], axis=2)
        matched = np.flatnonzero(d.min(axis=1) < 8.0)
        assert len(matched) >= 5
        same, shifted = [], []
        for i in matched[:8]:
            cloud_a, cloud_b = _world_cloud(a, i, T_bl), _world_cloud(b, int(d[i].argmin()), T_bl)
            same.append(np.median(cKDTree(cloud_b).query(cloud_a)[0]))
            shifted.append(np.median(cKDTree(cloud_b + [1.5, 1.5, 0.0]).query(cloud_a)[0]))
        assert np.median(same) < limit
        assert np.median(shifted) > 2.5 * np.median(same)
    # The CSV's UTM and yaw columns agree with the poses.
    utm = meta["utm"]
    for run in runs.values():
        for i in range(len(run)):
            m = run.meta(i)
            assert m["easting"] - utm["easting0"] == pytest.approx(run.poses[i, 0, 3], abs=2e-3)
            assert m["northing"] - utm["northing0"] == pytest.approx(run.poses[i, 1, 3], abs=2e-3)
            assert np.cos(m["yaw"] - yaw_of(run.poses[i])) == pytest.approx(1.0, abs=1e-6)


def test_regions_directions_lanes_conditions(world, runs):
    out, _ = world
    meta = read_world_meta(out)
    bounds = {b["name"]: b for b in meta["regions"]}
    gap = meta["config"]["regions"]["gap_m"]
    x_by_region: dict[str, list] = {}
    facts = [run.meta(i) | {"x": run.poses[i, 0, 3]} for run in runs.values() for i in range(len(run))]
    for f in facts:
        x_by_region.setdefault(f["region"], []).append(f["x"])
        if f["region"] != "gap":
            assert bounds[f["region"]]["x_min"] <= f["x"] < bounds[f["region"]]["x_max"]
    assert {"train", "val", "test"} <= set(x_by_region)
    names = ["train", "val", "test"]
    for i, r1 in enumerate(names):
        for r2 in names[i + 1:]:
            x1, x2 = np.array(x_by_region[r1]), np.array(x_by_region[r2])
            assert np.abs(x1[:, None] - x2[None]).min() >= gap
    assert {f["direction"] for f in facts} == {1, -1}
    assert len({f["lane"] for f in facts}) >= 2
    frac = np.array([f["dynamic_fraction"] for f in facts])
    assert np.all((frac >= 0) & (frac <= 1)) and (frac > 0).any()
    assert len({f["condition"] for f in facts}) == len(runs)


def _range_image(cloud, beams, columns, period):
    img = np.zeros((beams, columns))
    col = np.clip(np.round(cloud[:, 5] / period * columns).astype(int), 0, columns - 1)
    img[cloud[:, 4].astype(int), col] = np.linalg.norm(cloud[:, :3], axis=1)
    return img


def _lidar_diff(a, b):
    both = (a > 0) & (b > 0)
    return np.mean(np.abs(np.log(a[both]) - np.log(b[both]))) + np.mean((a > 0) != (b > 0))


def test_lidar_is_more_stable_than_camera_across_conditions(world, runs):
    out, _ = world
    lid = read_world_meta(out)["calibration"]["lidar"]
    rimg = lambda run, i: _range_image(run.cloud(i), lid["beams"], lid["columns"], lid["sweep_period_s"])  # noqa: E731
    gray = lambda run, i: run.image(i).astype(float).mean(axis=2) / 255  # noqa: E731
    day, night = runs["run00_day"], runs["run01_night"]  # same direction and lane
    d = np.linalg.norm(day.poses[:, None, :2, 3] - night.poses[None, :, :2, 3], axis=2)
    cross_img, cross_lidar, nb_img, nb_lidar = [], [], [], []
    for i in range(len(day) - 1):
        j = int(d[i].argmin())
        if d[i, j] > 3.0:
            continue
        cross_img.append(np.abs(gray(day, i) - gray(night, j)).mean())
        cross_lidar.append(_lidar_diff(rimg(day, i), rimg(night, j)))
        nb_img.append(np.abs(gray(day, i) - gray(day, i + 1)).mean())
        nb_lidar.append(_lidar_diff(rimg(day, i), rimg(day, i + 1)))
    assert len(cross_img) >= 5
    img_ratio = np.median(cross_img) / np.median(nb_img)
    lidar_ratio = np.median(cross_lidar) / np.median(nb_lidar)
    assert img_ratio > 1.0 > lidar_ratio
    assert img_ratio > 2 * lidar_ratio


def test_config_overrides(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("camera:\n  width: 64\nruns:\n  - condition: {time_of_day: dusk}\n")
    cfg = load_world_config("tiny", f, seed=3)
    assert (cfg.camera.width, cfg.camera.height, cfg.seed, len(cfg.runs)) == (64, 120, 3, 1)
    assert cfg.run_ids() == ["run00_dusk"]
    f.write_text("camera:\n  widht: 64\n")
    with pytest.raises(DataError, match="w.yaml"):
        load_world_config("tiny", f, None)
    assert json.loads(json.dumps(PRESETS["default"].model_dump(mode="json")))["seed"] == PRESETS["default"].seed


def test_bag_round_trip_matches_the_dataset_folder(world, runs):
    """The run's bag, read back through rosbags, carries the same frames, poses and stamps."""
    import utm
    from rosbags.highlevel import AnyReader

    from distilvpr_ros.data.rosbag_io import BagSequence, ros2_typestore

    out, _ = world
    run = next(iter(runs.values()))
    bag_dir = out / "bags" / run.run
    with AnyReader([bag_dir], default_typestore=ros2_typestore()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        types = {c.topic: c.msgtype for c in reader.connections}
        cloud_conn = [c for c in reader.connections if c.topic == "/lidar/points"]
        _, _, raw = next(reader.messages(connections=cloud_conn))
        fields = [(f.name, f.offset, f.datatype) for f in reader.deserialize(raw, cloud_conn[0].msgtype).fields]
    n = len(run)
    assert counts == {"/camera/image_raw": n, "/camera/camera_info": n, "/lidar/points": n, "/gps/fix": n,
                      "/odom": counts["/odom"]} and counts["/odom"] >= 2 * n - 1
    assert types["/camera/image_raw"] == "sensor_msgs/msg/Image" and types["/odom"] == "nav_msgs/msg/Odometry"
    assert fields == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("ring", 16, 4), ("time", 18, 7)]

    with BagSequence(bag_dir, pair_tolerance=0.05, require_cloud=True) as bag:
        assert len(bag) == n and bag.pose_source == "odom"
        np.testing.assert_allclose(bag.timestamps, run.timestamps, atol=1e-6)
        np.testing.assert_allclose(bag.poses[:, :3, 3], run.poses[:, :3, 3], atol=1e-3)
        for i in (0, n // 2, n - 1):
            np.testing.assert_array_equal(bag[i].image, run.image(i))
            np.testing.assert_allclose(bag[i].cloud, run.cloud(i), atol=1e-6)
    with AnyReader([bag_dir], default_typestore=ros2_typestore()) as reader:
        gps = [c for c in reader.connections if c.topic == "/gps/fix"]
        fix = reader.deserialize(next(reader.messages(connections=gps))[2], gps[0].msgtype)
    e, n_, _, _ = utm.from_latlon(fix.latitude, fix.longitude)
    m0 = run.meta(0)
    assert abs(e - m0["easting"]) < 0.05 and abs(n_ - m0["northing"]) < 0.05
