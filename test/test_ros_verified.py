"""The nodes with geometric verification over DDS: the localization node publishes the verified metric pose, the
PnP relative transform, the candidates' inliers and a debug image, and nothing for a wrong or featureless frame;
the mapping node records the camera's calibration and publishes loop_closure/transform only for verified loops."""

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")

from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from distilvpr_ros.data import msg_codec  # noqa: E402
from distilvpr_ros.data.geometry import make_pose, pose_to_xyz_quat  # noqa: E402
from distilvpr_ros.evaluation.verified_matches import pose_errors  # noqa: E402
from distilvpr_ros.mapping.database import PlaceDatabase  # noqa: E402
from distilvpr_ros.mapping.matcher import Candidate  # noqa: E402
from distilvpr_ros.pipeline.calibration import calibration_overrides  # noqa: E402
from distilvpr_ros.pipeline.config import STUDENT_SPACE, TEACHER_SPACE  # noqa: E402
from distilvpr_ros.pipeline.embedder import Embedder  # noqa: E402
from distilvpr_ros.pipeline.map_builder import MapBuilder  # noqa: E402
from distilvpr_ros.ros.diagnostics import WARN  # noqa: E402
from distilvpr_ros.ros.localization_node import LocalizationNode, keyframe_covariance  # noqa: E402
from distilvpr_ros.ros.mapping_node import MappingNode  # noqa: E402
from distilvpr_ros.ros.messages import (TRANSFORM_SIZE, header, image_msg, parse_transform,  # noqa: E402
                                        pointcloud2_msg, pose_msg, transform_msg)
from test_ros_nodes import Probe, spin_until  # noqa: E402
from tiny_models import tiny_checkpoints  # noqa: E402
from verification_scene import PlaneScene, pose  # noqa: E402

pytestmark = pytest.mark.ros
torch.set_num_threads(1)
KEYFRAME_X = (0.0, 6.0, 12.0, 18.0)


@pytest.fixture(scope="module")
def canyon_map(tmp_path_factory):
    """Tiny checkpoints and a map of 4 keyframes along the analytic street canyon, with views and calibration."""
    out = tmp_path_factory.mktemp("verified_assets")
    ckpt = tiny_checkpoints(out)
    scene = PlaneScene(seed=0)
    builder = MapBuilder(Embedder.from_checkpoint(ckpt["teacher"], TEACHER_SPACE),
                         Embedder.from_checkpoint(ckpt["student"], STUDENT_SPACE), run="canyon",
                         calibration=scene.calib)
    for k, x in enumerate(KEYFRAME_X):
        p = pose(x, 0.0, 0.0)
        builder.add_keyframe(float(k), p, scene.render(p)[0], scene.lidar(p))
    builder.save(out / "map")
    return {**ckpt, "map": out / "map", "scene": scene}


def stamp_of(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def test_localization_node_publishes_the_verified_metric_pose(ros, canyon_map):
    add, executor = ros
    params = {"map.path": str(canyon_map["map"]), "models.student_checkpoint": str(canyon_map["student"]),
              "matcher.sequence_length": 1, "matcher.top_k": 4, "diagnostics.period_s": 0.2}
    node = add(LocalizationNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    probe = Probe(add)
    extra = {"transform": [], "inliers": [], "debug": []}
    for key, msg_type, topic in (("transform", Float64MultiArray, "loop_closure/transform"),
                                 ("inliers", Float64MultiArray, "place_candidates/inliers"),
                                 ("debug", Image, "distilvpr_localization/debug/matches")):
        probe.node.create_subscription(msg_type, topic, lambda m, key=key: extra[key].append(m), 10)
    info_pub = probe.node.create_publisher(CameraInfo, "camera/camera_info", 10)
    scene = canyon_map["scene"]
    truth = pose(7.0, 0.4, 3.0)  # between keyframes 1 and 2, aside and turned
    image, _ = scene.render(truth)
    stamps = iter(1000.0 + 0.1 * i for i in range(1000))
    sent = []

    def publish():
        sent.append(next(stamps))
        probe.image_pub.publish(image_msg(image, sent[-1], "camera_optical"))

    assert spin_until(executor, lambda: probe.got["match"] and extra["transform"] and extra["debug"], timeout=30,
                      each=publish, period=0.3), \
        f"outputs so far: { {k: len(v) for k, v in {**probe.got, **extra}.items()} }; {node.last_reason}"
    match = probe.got["match"][0]
    t_query = stamp_of(match)
    p = match.pose.pose
    est = make_pose([p.position.x, p.position.y, p.position.z],
                    [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])
    t_err, r_err = pose_errors(est[None], truth[None])
    assert t_err[0] < 0.3 and r_err[0] < 1.0, (t_err, r_err)  # the query's metric pose, not a keyframe's
    cov = np.asarray(match.pose.covariance).reshape(6, 6)
    assert np.all(np.linalg.eigvalsh(cov) > 0) and cov[0, 0] < 1.0  # the PnP covariance

    # the relative transform, keyed by both stamps, with the LIO-SAM pair on loop_closure
    tr = next(m for m in extra["transform"] if abs(m.data[0] - t_query) < 1e-6)
    assert len(tr.data) == TRANSFORM_SIZE and tr.layout.dim[0].size == TRANSFORM_SIZE
    t_q, t_m, rel, rel_cov = parse_transform(tr.data)
    kf = int(round(t_m))  # keyframe stamps are their ids here
    assert t_m in [float(k) for k in range(len(KEYFRAME_X))]
    np.testing.assert_allclose(pose(KEYFRAME_X[kf], 0, 0) @ rel, est, atol=1e-5)
    np.testing.assert_allclose(rel_cov, keyframe_covariance(cov, pose(KEYFRAME_X[kf], 0, 0)), atol=1e-9)
    loops = [list(m.data) for m in probe.got["loop"]]
    assert [pytest.approx(t_query), t_m] in loops

    # candidates in descriptor order, their inliers beside (the accepted one has them)
    scores = next(m for m in probe.got["scores"] if abs(m.data[0] - t_query) < 1e-6)
    inl = next(m for m in extra["inliers"] if abs(m.data[0] - t_query) < 1e-6)
    assert inl.layout.data_offset == 3 and len(inl.data) == 3 + 3 * 4 and inl.data[2] == 1.0
    rows = np.asarray(inl.data[3:]).reshape(-1, 3)
    np.testing.assert_array_equal(rows[:, 0], np.asarray(scores.data[1:]).reshape(-1, 3)[:, 0])
    accepted = rows[rows[:, 2] == 1.0]
    assert len(accepted) == 1 and accepted[0, 0] == kf and accepted[0, 1] >= 20

    debug = extra["debug"][0]
    assert debug.width == 2 * image.shape[1] and debug.height == image.shape[0] and debug.encoding == "rgb8"
    assert node.counts["verified"] >= 1

    # a CameraInfo with the map's intrinsics: the map's calibration stays the query camera's
    info = CameraInfo(header=header(0.0, "camera_optical"),
                      **msg_codec.camera_info_fields(scene.calib.K, scene.calib.width, scene.calib.height))
    assert spin_until(executor, lambda: node.camera_info is not None, each=lambda: info_pub.publish(info))
    assert node.calibration_source.startswith("map (same camera") and node.localizer.calibration is None
    # another camera (other focal length): its own calibration, extrinsics from calibration.*
    K = scene.calib.K.copy()
    K[0, 0] *= 1.1
    other = CameraInfo(header=header(0.0, "camera_optical"),
                       **msg_codec.camera_info_fields(K, scene.calib.width, scene.calib.height))
    assert spin_until(executor, lambda: node.localizer.calibration is not None, each=lambda: info_pub.publish(other))
    assert node.calibration_source == "camera_info + calibration.*" and node.localizer.calibration.K[0, 0] == K[0, 0]


def send_with_odometry(executor, node, probe, odom_pub, image, t, x, done) -> None:
    """Odometry at x (m) bracketing stamp t first, then the image at t; spin until ``done()``."""
    for dt in (-0.05, 0.0, 0.05):
        odom = Odometry(header=header(t + dt, "odom"), child_frame_id="base_link")
        odom.pose.pose = pose_msg(np.array([x + dt, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
        odom_pub.publish(odom)
    spin_until(executor, lambda: node.odom.span is not None and node.odom.span[1] >= t + 0.05, timeout=5)
    probe.image_pub.publish(image_msg(image, t, "camera_optical"))
    assert spin_until(executor, done, timeout=30), node.problems.last


def test_localization_node_passes_odometry_motion_and_tracks(ros, canyon_map):
    """topics.odom: the node interpolates odometry at each image stamp and hands the localizer the motion since the
    last frame; with tracking on, a frame below camera.min_inliers is accepted where that motion predicts it."""
    add, executor = ros
    params = {"map.path": str(canyon_map["map"]), "models.student_checkpoint": str(canyon_map["student"]),
              "matcher.sequence_length": 1, "matcher.top_k": 4, "verification.rerank.tracking_min_inliers": 8}
    node = add(LocalizationNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    probe = Probe(add)
    odom_pub = probe.node.create_publisher(Odometry, "odom", 10)
    assert spin_until(executor, lambda: odom_pub.get_subscription_count() and probe.image_pub.get_subscription_count())
    scene = canyon_map["scene"]
    truth = pose(7.0, 0.4, 3.0)
    image, _ = scene.render(truth)
    seen = []
    localize = node.localizer.localize

    def spy(stamp, img, motion=None):
        seen.append((stamp, motion))
        return localize(stamp, img, motion)

    node.localizer.localize = spy

    def send(t, x):
        send_with_odometry(executor, node, probe, odom_pub, image, t, x, lambda: seen and seen[-1][0] == t)

    send(2000.0, 50.0)
    assert seen[-1][1] is None  # nothing seen before: no motion
    assert node.counts["verified"] == 1
    node.localizer.verification.camera.min_inliers = 10 ** 6  # no frame passes the strict threshold any more
    send(2001.0, 50.0)  # odometry: stood still
    np.testing.assert_allclose(seen[-1][1], np.eye(4), atol=1e-9)
    assert node.counts["verified"] == 2  # tracked
    send(2002.0, 55.0)  # odometry: 5 m forward, the image did not move: the pose disagrees with the prediction
    np.testing.assert_allclose(seen[-1][1][:3, 3], [5.0, 0.0, 0.0], atol=1e-6)
    assert node.counts["verified"] == 2 and "odometry prediction" in node.last_reason


def test_localization_node_lists_keyframes_verified_near_the_tracking_prediction(ros, canyon_map):
    """rerank.tracking_candidates: a keyframe verified only for lying near the prediction follows the descriptor's
    candidates in place_candidates/inliers with its check (replay scores the accepted keyframe from there)."""
    add, executor = ros
    params = {"map.path": str(canyon_map["map"]), "models.student_checkpoint": str(canyon_map["student"]),
              "matcher.sequence_length": 1, "matcher.top_k": 1, "verification.rerank.tracking_min_inliers": 8,
              "verification.rerank.tracking_candidates": 1}
    node = add(LocalizationNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    probe = Probe(add)
    inliers = []
    probe.node.create_subscription(Float64MultiArray, "place_candidates/inliers", inliers.append, 10)
    odom_pub = probe.node.create_publisher(Odometry, "odom", 10)
    assert spin_until(executor, lambda: odom_pub.get_subscription_count() and probe.image_pub.get_subscription_count())
    db = node.localizer.db
    listed = iter([1, 3])  # the descriptor's only candidate: keyframe 1 (x 6 m, true), then keyframe 3 (x 18 m)
    node.localizer.matcher.candidates = lambda desc, stamp, run=None: [
        (lambda id: Candidate(id, 0.5, float(db.stamps[id]), db.poses[id].copy()))(next(listed))]
    image, _ = canyon_map["scene"].render(pose(7.0, 0.4, 3.0))
    for t in (3000.0, 3001.0):  # stood still: the second frame's prediction is the first frame's pose
        send_with_odometry(executor, node, probe, odom_pub, image, t, 50.0,
                           lambda: inliers and inliers[-1].data[0] == t)
    rows = np.asarray(inliers[-1].data[3:]).reshape(-1, 3)
    assert inliers[-1].data[2] == 1.0 and [int(i) for i in rows[:, 0]] == [3, 1]
    assert rows[1, 2] == 1.0 and rows[1, 1] >= 20 and rows[0, 2] != 1.0


@pytest.mark.parametrize("kind", ["wrong_street", "featureless"])
def test_localization_node_publishes_nothing_for_an_unverified_frame(ros, canyon_map, kind):
    add, executor = ros
    params = {"map.path": str(canyon_map["map"]), "models.student_checkpoint": str(canyon_map["student"]),
              "matcher.sequence_length": 1, "matcher.top_k": 4, "matcher.min_score": -1.0,
              "diagnostics.period_s": 0.2}
    node = add(LocalizationNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    probe = Probe(add)
    transforms = []
    probe.node.create_subscription(Float64MultiArray, "loop_closure/transform", transforms.append, 10)
    if kind == "wrong_street":
        image, _ = PlaneScene(seed=5).render(pose(7.0, 0.0, 0.0))  # other facades, same layout
    else:
        image = np.full((240, 320, 3), 128, np.uint8)
    stamps = iter(2000.0 + 0.1 * i for i in range(1000))

    def diagnosed() -> bool:
        return node.counts["processed"] >= 3 or probe.has_status("distilvpr_localization", WARN, "not matched")

    assert spin_until(executor, diagnosed, timeout=20, period=0.3,
                      each=lambda: probe.image_pub.publish(image_msg(image, next(stamps), "cam")))
    spin_until(executor, lambda: False, timeout=0.5)  # outputs in flight arrive
    assert not probe.got["match"] and not probe.got["loop"] and not transforms
    if node.counts["processed"]:
        values = {kv.key: kv.value for kv in probe.statuses("distilvpr_localization")[-1].values} \
            if probe.statuses("distilvpr_localization") else {}
        assert "not verified" in node.last_reason, node.last_reason
        assert spin_until(executor, lambda: "not verified" in {kv.key: kv.value for kv in
                                                               probe.statuses("distilvpr_localization")[-1].values
                                                               }.get("last_match", ""), timeout=3), values
        assert node.counts["accepted"] == 0 and node.counts["verified"] == 0
    # still alive and localising: the right street again is verified
    good, _ = canyon_map["scene"].render(pose(6.5, 0.0, 0.0))
    assert spin_until(executor, lambda: probe.got["match"], timeout=20, period=0.3,
                      each=lambda: probe.image_pub.publish(image_msg(good, next(stamps), "cam")))
    assert not node.problems.counts.get("internal_error")


# --- mapping node ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def town_places(tiny_world):
    """Four places of the tiny world's first run, far apart (a wrong loop between any two is a wrong place)."""
    from distilvpr_ros.data.synthetic import load_synthetic
    from distilvpr_ros.pipeline.calibration import world_calibration

    run = load_synthetic(tiny_world)[0]
    xy = run.poses[:, :2, 3]
    chosen = [3]
    for _ in range(3):
        d = np.min(np.linalg.norm(xy[:, None] - xy[chosen][None], axis=2), axis=1)
        chosen.append(int(np.argmax(d)))
    assert min(np.linalg.norm(xy[i] - xy[j]) for i in chosen for j in chosen if i != j) > 30
    return [run[i] for i in chosen], world_calibration(tiny_world)


def test_mapping_node_publishes_transforms_only_for_verified_loops(ros, canyon_map, town_places, tmp_path):
    add, executor = ros
    places, calib = town_places
    extrinsics = {k: v for k, v in calibration_overrides(calib).items()
                  if k.split(".")[1] not in ("fx", "fy", "cx", "cy", "width", "height")}
    params = {"map.path": str(tmp_path / "map"), "models.teacher_checkpoint": str(canyon_map["teacher"]),
              "models.student_checkpoint": str(canyon_map["student"]), "map.save_period_s": 0.0,
              "qos.sensor_reliability": "reliable", "keyframes.max_speed_mps": 1.0e4,
              "matcher.min_score": -1.0, "matcher.sequence_length": 1, "matcher.exclude_recent_s": 0.5,
              "matcher.min_interval_s": 0.0, "map.run": "laps", **extrinsics}
    node = add(MappingNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    probe = Probe(add)
    got = {"loop": [], "transform": []}
    probe.node.create_subscription(Float64MultiArray, "loop_closure", got["loop"].append, 10)
    probe.node.create_subscription(Float64MultiArray, "loop_closure/transform", got["transform"].append, 10)
    pubs = {"odom": probe.node.create_publisher(Odometry, "odom", 10),
            "cam": probe.node.create_publisher(Image, "camera/image_raw", 10),
            "lidar": probe.node.create_publisher(PointCloud2, "lidar/points", 10),
            "info": probe.node.create_publisher(CameraInfo, "camera/camera_info", 10)}
    assert spin_until(executor, lambda: all(p.get_subscription_count() for p in pubs.values()))
    info = CameraInfo(header=header(0.0, "camera_optical"),
                      **msg_codec.camera_info_fields(calib.K, calib.width, calib.height))
    pubs["info"].publish(info)
    assert spin_until(executor, lambda: node.camera_info is not None)
    # lap 1: four distinct places (every keyframe proposes a wrong loop: min_score -1); lap 2: the first two again
    visits = [(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0), (0, 100.0), (1, 110.0)]  # (place, stamp)
    for n, (i, t) in enumerate(visits):
        s = places[i]
        odom = Odometry(header=header(t, "odom"), child_frame_id="base_link")
        xyz, quat = pose_to_xyz_quat(s.pose)
        odom.pose.pose = pose_msg(np.concatenate([xyz, quat]))
        pubs["cam"].publish(image_msg(s.image, t, "camera_optical"))
        pubs["lidar"].publish(pointcloud2_msg(s.cloud, t, "lidar"))
        pubs["odom"].publish(odom)
        assert spin_until(executor, lambda: len(node.builder.db) == n + 1, timeout=30), (n, node.problems.last)
    spin_until(executor, lambda: len(got["loop"]) >= 2 and len(got["transform"]) >= 2, timeout=5)
    loops = [tuple(m.data) for m in got["loop"]]
    assert loops == [(100.0, 0.0), (110.0, 10.0)], loops  # only the true revisits
    assert node.counts["loop_closures_rejected"] >= 3 and node.counts["loop_closures_proposed"] == \
        node.counts["loop_closures_rejected"] + len(loops)
    assert len(got["transform"]) == len(loops)
    for m, (t_q, t_m) in zip(got["transform"], loops):
        tq, tm, rel, cov = parse_transform(m.data)
        assert (tq, tm) == (t_q, t_m)
        t_err, r_err = pose_errors(rel[None], np.eye(4)[None])  # the same scan again: identity
        assert t_err[0] < 0.1 and r_err[0] < 0.5
        assert np.all(np.diag(cov) > 0) and np.all(np.diag(cov) < 1.0)
    ok, message = node.save_map()
    assert ok, message
    saved = PlaceDatabase.load(tmp_path / "map")
    assert saved.has_views and saved.calibration("laps") is not None
    np.testing.assert_allclose(saved.calibration("laps")["K"], calib.K)
    np.testing.assert_allclose(saved.calibration("laps")["T_base_camera"], calib.T_base_camera, atol=1e-9)


def test_transform_message_round_trips():
    T = pose(3.0, -1.0, 20.0)
    cov = np.diag([1.0, 2.0, 3.0, 0.1, 0.2, 0.3])
    msg = transform_msg(5.5, 1.25, T, cov)
    t_q, t_m, back, cov_back = parse_transform(msg.data)
    assert (t_q, t_m) == (5.5, 1.25) and "t_query" in msg.layout.dim[0].label
    np.testing.assert_allclose(back, T, atol=1e-12)
    np.testing.assert_array_equal(cov_back, cov)
    with pytest.raises(ValueError):
        parse_transform([1.0, 2.0])
