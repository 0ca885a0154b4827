"""The ROS-free runtime: keyframe gating, odometry interpolation, camera/LiDAR sync, embedders, map building
and localisation on the tiny world, and the offline `build-map` path from a bag."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distilvpr_ros.data.geometry import pose_from_xyz_yaw
from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.data.world.config import load_world_config
from distilvpr_ros.data.world.generate import generate_world
from distilvpr_ros.mapping.database import MapCompatibilityError, MapError, PlaceDatabase
from distilvpr_ros.mapping.matcher import MatcherConfig
from distilvpr_ros.ros.sync import ApproxTimeSync, StampGuard
from distilvpr_ros.models.export import export_model
from distilvpr_ros.pipeline.config import STUDENT_SPACE, TEACHER_SPACE, KeyframeConfig, NodeConfig, load_node_config
from distilvpr_ros.pipeline.embedder import Embedder, ModelLoadError
from distilvpr_ros.pipeline.keyframes import Keyframer, OdometryBuffer
from distilvpr_ros.pipeline.image_quality import LowQualityImage
from distilvpr_ros.pipeline.localizer import Localizer
from distilvpr_ros.pipeline.map_builder import DuplicateKeyframe, MapBuilder
from distilvpr_ros.pipeline.offline import build_map_from_sequence, open_bag_sequence
from distilvpr_ros.ros.latency import LatencyWindow
from tiny_models import tiny_checkpoints

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_tiny")
    generate_world(out, load_world_config("tiny", None, None), write_bags=True, progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny teacher and student (random weights) and a second student with other weights."""
    return tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


# --- keyframes and odometry --------------------------------------------------------------------------


def test_keyframer_gates_by_distance_heading_and_time():
    kf = Keyframer(KeyframeConfig(min_distance_m=2.0, min_heading_deg=15.0, max_interval_s=10.0))
    origin = pose_from_xyz_yaw(0, 0, 0, 0)
    assert kf.check(origin, 0.0).reason == "first"
    kf.accept(origin, 0.0)
    assert not kf.check(pose_from_xyz_yaw(1.0, 0, 0, 0), 1.0).accept
    assert kf.check(pose_from_xyz_yaw(2.5, 0, 0, 0), 1.0).reason == "distance"
    assert kf.check(pose_from_xyz_yaw(0, 0, 0, math.radians(20)), 1.0).reason == "heading"
    assert kf.check(pose_from_xyz_yaw(0, 0, 0, math.radians(359)), 1.0).accept is False  # wraps: 1 degree
    assert kf.check(origin, 10.0).reason == "interval"
    assert not kf.check(pose_from_xyz_yaw(5, 0, 0, 0), 0.0).accept  # not after the last keyframe
    every = Keyframer(KeyframeConfig(min_distance_m=0.0, min_heading_deg=0.0, max_interval_s=0.0))
    every.accept(origin, 0.0)
    assert every.check(origin, 0.1).accept


def test_odometry_buffer_interpolates_and_refuses_gaps():
    buf = OdometryBuffer(horizon_s=5.0, tolerance_s=0.1, reset_jump_s=1.0)
    assert buf.pose_at(0.0) is None
    buf.add(0.0, pose_from_xyz_yaw(0, 0, 0, 0))
    buf.add(1.0, pose_from_xyz_yaw(2, 0, 0, math.pi / 2))
    mid = buf.pose_at(0.5)
    np.testing.assert_allclose(mid[:3, 3], [1, 0, 0], atol=1e-9)
    assert math.isclose(math.atan2(mid[1, 0], mid[0, 0]), math.pi / 4, abs_tol=1e-9)
    assert buf.pose_at(1.05) is not None and buf.pose_at(1.5) is None and buf.pose_at(-0.5) is None
    # a pair after the newest odometry waits for the odometry that brackets it (no stale pose taken)
    assert buf.awaiting(1.05) and not buf.awaiting(1.0) and not buf.awaiting(0.5)
    assert not buf.add(0.5, np.eye(4))  # out of order: ignored
    for t in np.arange(2.0, 9.0):
        buf.add(t, np.eye(4))
    assert buf.span[0] >= 8.0 - 5.0  # older than the horizon forgotten
    assert buf.add(0.0, np.eye(4)) and len(buf) == 1  # a big jump back (bag restart) resets
    with pytest.raises(ValueError):
        buf.add(10.0, np.full((4, 4), np.nan))


def test_odometry_buffer_rejects_poses_that_are_not_physical():
    buf = OdometryBuffer(horizon_s=100.0, max_position_m=1e6, max_speed_mps=30.0)
    assert buf.add(0.0, pose_from_xyz_yaw(0, 0, 0, 0))
    with pytest.raises(ValueError, match="max_position_m"):
        buf.add(0.1, pose_from_xyz_yaw(1e300, 0, 0, 0))
    with pytest.raises(ValueError, match="jumped"):
        buf.add(0.1, pose_from_xyz_yaw(500, 0, 0, 0))  # 5 km/s
    assert len(buf) == 1 and buf.add(0.2, pose_from_xyz_yaw(5, 0, 0, 0))  # 25 m/s is fine
    # a jump that persists is an odometry reset: after JUMP_RESET_COUNT messages the new track is taken
    t = 0.2
    for i in range(OdometryBuffer.JUMP_RESET_COUNT - 1):
        t += 0.1
        with pytest.raises(ValueError, match="jumped"):
            buf.add(t, pose_from_xyz_yaw(9000, 0, 0, 0))
    assert buf.add(t + 0.1, pose_from_xyz_yaw(9000, 0, 0, 0)) and len(buf) == 1
    np.testing.assert_allclose(buf.pose_at(t + 0.1)[:3, 3], [9000, 0, 0])


# --- synchroniser ------------------------------------------------------------------------------------


def test_sync_pairs_each_scan_with_the_nearest_camera_frame():
    sync = ApproxTimeSync(slop=0.05, queue_size=10)
    for t in (0.00, 0.033, 0.066):
        assert sync.push("camera", t, f"c{t}").pairs == []
    assert sync.push("lidar", 0.07, "l0.07").pairs == []  # a closer camera frame may still come
    pairs = sync.push("camera", 0.10, "c0.1").pairs
    assert [(p.camera, p.lidar) for p in pairs] == [("c0.066", "l0.07")]
    assert pairs[0].stamp == pytest.approx(0.066)
    # a scan at or before the newest camera frame pairs at once
    sync.push("camera", 0.133, "c0.133")
    assert [p.camera for p in sync.push("lidar", 0.13, "l").pairs] == ["c0.133"]
    # a scan after the newest camera frame waits for the next one, or for flush() (end of stream)
    sync.push("camera", 0.166, "c0.166")
    assert sync.push("lidar", 0.17, "l0.17").pairs == []
    assert [(p.camera, p.lidar) for p in sync.flush()] == [("c0.166", "l0.17")]
    # no camera within slop → unpaired
    sync.push("camera", 0.5, "c0.5")
    assert sync.push("lidar", 0.3, "l0.3").pairs == [] and sync.stats.unpaired == 1
    assert sync.stats.pairs == 3


def test_sync_drops_duplicates_out_of_order_and_overflow():
    sync = ApproxTimeSync(slop=0.05, queue_size=3, reset_jump_s=1.0)
    sync.push("camera", 1.0, "a")
    assert sync.push("camera", 1.0, "dup").rejected == "duplicate"
    assert sync.push("camera", 0.9, "old").rejected == "out_of_order"
    for t in (1.1, 1.2, 1.3, 1.4):
        sync.push("camera", t, t)
    assert sync.stats.overflow["camera"] == 2  # queue of 3: two oldest dropped
    assert (sync.stats.duplicates, sync.stats.out_of_order) == (1, 1)
    assert sync.stats.dropped == 4
    result = sync.push("camera", 0.0, "restart")  # more than reset_jump_s back: a bag restart
    assert result.reset and not result.rejected and sync.stats.jumps == 1
    assert [p.camera for p in sync.push("lidar", -0.01, "l").pairs] == ["restart"]


def test_stamp_guard():
    g = StampGuard(reset_jump_s=2.0)
    assert [g.check(t) for t in (1.0, 2.0, 2.0, 1.5, 5.0, 1.0)] == ["", "", "duplicate", "out_of_order", "", "jump"]


# --- embedders ---------------------------------------------------------------------------------------


def test_embedder_validates_inputs_and_normalises(checkpoints, tmp_path):
    teacher = Embedder.from_checkpoint(checkpoints["teacher"], TEACHER_SPACE)
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cloud = np.random.default_rng(1).normal(scale=10, size=(500, 4)).astype(np.float32)
    d = teacher(image=rgb, cloud=cloud)
    assert d.shape == (32,) and d.dtype == np.float32 and math.isclose(float(np.linalg.norm(d)), 1.0, rel_tol=1e-5)
    with_nans = np.vstack([cloud, np.full((10, 4), np.nan, np.float32)])
    np.testing.assert_allclose(teacher(image=rgb, cloud=with_nans), d, atol=1e-6)
    bad = {"no cloud": dict(image=rgb, cloud=None), "all NaN": dict(image=rgb, cloud=np.full((5, 4), np.nan)),
           "empty": dict(image=rgb, cloud=np.zeros((0, 4))), "grey": dict(image=rgb[..., 0], cloud=cloud),
           "float": dict(image=rgb.astype(np.float32), cloud=cloud), "tiny": dict(image=rgb[:4, :4], cloud=cloud)}
    for what, kwargs in bad.items():
        with pytest.raises(ValueError):
            teacher(**kwargs)
            pytest.fail(what)
    with pytest.raises(ModelLoadError, match="not found"):
        Embedder.from_checkpoint(tmp_path / "missing", STUDENT_SPACE)
    # a save interrupted between its two renames leaves only <name>.bak: the node still loads the model
    import shutil
    shutil.copytree(checkpoints["teacher"], tmp_path / "interrupted.bak")
    with pytest.warns(UserWarning, match="interrupted save"):
        recovered = Embedder.from_checkpoint(tmp_path / "interrupted", TEACHER_SPACE)
    np.testing.assert_allclose(recovered(image=rgb, cloud=cloud), d, atol=1e-6)
    with pytest.raises(ModelLoadError, match="expected camera_student"):
        Embedder.from_checkpoint(checkpoints["teacher"], STUDENT_SPACE)


def test_onnx_student_matches_torch_and_keeps_the_checkpoint_identity(checkpoints, tmp_path):
    torch_student = Embedder.from_checkpoint(checkpoints["student"], STUDENT_SPACE)
    onnx_file = export_model(checkpoints["student"], tmp_path / "student.onnx")
    onnx_student = Embedder.from_onnx(onnx_file)
    assert onnx_student.identity == torch_student.identity and onnx_student.backend == "onnxruntime"
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    np.testing.assert_allclose(onnx_student(image=rgb), torch_student(image=rgb), atol=1e-4)
    with pytest.raises(ModelLoadError, match="expected teacher"):
        Embedder.from_onnx(onnx_file, kind=TEACHER_SPACE)


# --- map building and localisation --------------------------------------------------------------------


def test_map_builder_and_localizer_on_the_tiny_world(world, checkpoints, tmp_path):
    run = load_synthetic(world)[0]
    teacher = Embedder.from_checkpoint(checkpoints["teacher"], TEACHER_SPACE)
    student = Embedder.from_checkpoint(checkpoints["student"], STUDENT_SPACE)
    builder = MapBuilder(teacher, student, run=run.run, matcher=MatcherConfig(exclude_recent_s=1e9))
    for i in range(len(run)):
        s = run[i]
        result = builder.add_keyframe(s.timestamp, s.pose, s.image, s.cloud)
        assert result.id == i and result.match.loop_closure is None  # all excluded: same run, recent
    assert builder.unsaved == len(run)
    with pytest.raises(DuplicateKeyframe):  # the same data again (a bag played twice): refused, nothing added
        builder.add_keyframe(run[0].timestamp, run[0].pose, run[0].image, run[0].cloud)
    assert len(builder.db) == len(run)
    builder.save(tmp_path / "map")
    assert builder.unsaved == 0
    db = PlaceDatabase.load(tmp_path / "map")
    assert set(db.spaces) == {TEACHER_SPACE, STUDENT_SPACE} and len(db) == len(run)
    assert db.spaces[STUDENT_SPACE].model_sha256 == student.sha256
    assert db.spaces[TEACHER_SPACE].model_sha256 == teacher.sha256

    loc = Localizer.load(student, tmp_path / "map", MatcherConfig(sequence_length=1, min_score=0.9, top_k=3))
    out = loc.localize(run.timestamps[7] + 1e6, run[7].image)
    assert out.match.accepted and out.match.best.id == 7 and len(out.match.candidates) == 3
    assert out.match.loop_closure == (pytest.approx(run.timestamps[7] + 1e6), pytest.approx(run.timestamps[7]))
    with pytest.raises(ValueError):
        loc.localize(run.timestamps[8] + 1e6, np.zeros((2, 2, 3), np.uint8))
    # frames that carry no place are not matched at all (without the gate a black frame matched with
    # sequence_length 1); every frame of the world passes the gate
    for blank in (np.zeros((96, 128, 3), np.uint8), np.full((96, 128, 3), 200, np.uint8)):
        with pytest.raises(LowQualityImage, match="quality"):
            loc.localize(run.timestamps[8] + 1e6, blank)
    assert all(loc.localize(run.timestamps[i] + 2e6, run[i].image).match.best is not None for i in range(len(run)))

    other = Embedder.from_checkpoint(checkpoints["other"], STUDENT_SPACE)
    with pytest.raises(MapCompatibilityError, match="camera_student"):
        Localizer.load(other, tmp_path / "map")
    with pytest.raises(MapError):
        Localizer.load(student, tmp_path / "no_map")


def test_build_map_from_bag_equals_the_map_from_the_run(world, checkpoints, tmp_path):
    run = load_synthetic(world)[0]
    seq = open_bag_sequence(world / "bags" / run.run)
    assert seq.pose_source == "odom" and len(seq) == len(run)
    cfg = NodeConfig()
    summary = build_map_from_sequence(seq, checkpoints["teacher"], checkpoints["student"], tmp_path / "bag_map", cfg)
    # 12 m frame spacing > 2 m keyframe distance: every frame is a keyframe
    assert summary["keyframes"] == len(run) and summary["run"] == run.run and sum(summary["skipped"].values()) == 0
    from_bag = PlaceDatabase.load(tmp_path / "bag_map")
    from_run = build_map_from_sequence(run, checkpoints["teacher"], checkpoints["student"], tmp_path / "run_map", cfg)
    assert from_run["keyframes"] == len(run)
    from_run_db = PlaceDatabase.load(tmp_path / "run_map")
    np.testing.assert_allclose(from_bag.stamps, from_run_db.stamps, atol=1e-6)
    np.testing.assert_allclose(from_bag.poses[:, :3], from_run_db.poses[:, :3], atol=1e-3)
    for space in (TEACHER_SPACE, STUDENT_SPACE):
        np.testing.assert_allclose(from_bag.descriptors(space), from_run_db.descriptors(space), atol=1e-4)

    # resume: a second run is appended to the same map; another model is refused
    second = load_synthetic(world)[1]
    more = build_map_from_sequence(second, checkpoints["teacher"], checkpoints["student"], tmp_path / "bag_map", cfg)
    assert more["map_size"] == len(run) + len(second)
    assert set(PlaceDatabase.load(tmp_path / "bag_map").runs) == {run.run, second.run}
    # the same run played again into the saved map adds nothing: its stamps are already there
    again = build_map_from_sequence(second, checkpoints["teacher"], checkpoints["student"], tmp_path / "bag_map", cfg)
    assert again["map_size"] == len(run) + len(second) and again["skipped"]["duplicate"] == len(second)
    with pytest.raises(MapCompatibilityError):
        build_map_from_sequence(second, checkpoints["teacher"], checkpoints["other"], tmp_path / "bag_map", cfg)


# --- config and diagnostics helpers --------------------------------------------------------------------


def test_node_config_from_the_shipped_yaml_files():
    mapping = load_node_config(ROOT / "config" / "mapping.yaml", "distilvpr_mapping")
    assert mapping.keyframes.min_distance_m == 2.0 and mapping.qos.sensor_reliability == "best_effort"
    loc = load_node_config(ROOT / "config" / "localization.yaml", **{"matcher.top_k": 3})
    assert loc.matcher.top_k == 3 and loc.models.backend == "torch"
    with pytest.raises(ValueError):
        NodeConfig(**{"matcher": {"top_kk": 3}})


def test_latency_window():
    w = LatencyWindow(size=4)
    assert w.rate_hz() == 0.0 and math.isnan(w.percentile_ms(50))
    for k, latency in enumerate([0.01, 0.02, 0.03, 0.04, 0.05]):
        w.add(latency, now=100.0 + 0.1 * k)
    assert len(w) == 4
    assert w.rate_hz(now=100.45) == pytest.approx(10.0)
    assert w.percentile_ms(50) == pytest.approx(35.0) and w.rate_hz(now=200.0) == 0.0


def test_cli_build_map_and_export(world, checkpoints, tmp_path):
    """`distilvpr build-map` and `distilvpr export` are the runtime functions behind one command each."""
    from distilvpr_ros.cli import main

    run = load_synthetic(world)[0]
    assert main(["build-map", "--bag", str(world / "bags" / run.run), "--teacher", str(checkpoints["teacher"]),
                 "--student", str(checkpoints["student"]), "--out", str(tmp_path / "map"), "--fresh"]) == 0
    assert len(PlaceDatabase.load(tmp_path / "map")) == len(run)
    assert main(["export", "--checkpoint", str(checkpoints["student"]), "--out", str(tmp_path / "s.onnx")]) == 0
    assert (tmp_path / "s.onnx").stat().st_size > 0
    assert main(["build-map", "--bag", str(tmp_path / "nope"), "--teacher", str(checkpoints["teacher"]),
                 "--student", str(checkpoints["student"]), "--out", str(tmp_path / "map2")]) == 2
