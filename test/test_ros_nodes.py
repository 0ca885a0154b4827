"""The mapping and localisation nodes as real rclpy nodes over DDS (tiny random-weight models, small maps)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from distilvpr_ros.data.geometry import pose_from_xyz_yaw  # noqa: E402
from distilvpr_ros.mapping.database import PlaceDatabase  # noqa: E402
from distilvpr_ros.ros.diagnostics import ERROR, OK, WARN  # noqa: E402
from distilvpr_ros.ros.localization_node import LocalizationNode  # noqa: E402
from distilvpr_ros.ros.mapping_node import MappingNode  # noqa: E402
from distilvpr_ros.ros.messages import header, image_msg, pointcloud2_msg, pose_msg  # noqa: E402
from distilvpr_ros.pipeline.config import STUDENT_SPACE, TEACHER_SPACE  # noqa: E402
from distilvpr_ros.pipeline.embedder import Embedder  # noqa: E402
from distilvpr_ros.pipeline.map_builder import MapBuilder  # noqa: E402
from tiny_models import tiny_checkpoints  # noqa: E402

pytestmark = pytest.mark.ros
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
N_KEYFRAMES = 8


def frame(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera image and LiDAR cloud of place k (random, distinct per place)."""
    rng = np.random.default_rng(100 + k)
    rgb = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    cloud = rng.normal(scale=8.0, size=(300, 6)).astype(np.float32)
    return rgb, cloud


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("ros_assets"))


def make_assets(out: Path) -> dict:
    """Tiny teacher/student checkpoints, another student, and a map of N_KEYFRAMES places 5 m apart."""
    ckpt = tiny_checkpoints(out)
    teacher, student, other = ckpt["teacher"], ckpt["student"], ckpt["other"]
    builder = MapBuilder(Embedder.from_checkpoint(teacher, TEACHER_SPACE),
                         Embedder.from_checkpoint(student, STUDENT_SPACE), run="map_run")
    for k in range(N_KEYFRAMES):
        rgb, cloud = frame(k)
        builder.add_keyframe(float(k), pose_from_xyz_yaw(5.0 * k, 0, 0, 0), rgb, cloud)
    builder.save(out / "map")
    return {"teacher": teacher, "student": student, "other": other, "map": out / "map"}


def spin_until(executor, condition, timeout=10.0, each=None, period=0.1):
    """Spin until ``condition()`` (calling ``each()`` every ``period`` s, e.g. to publish); True if met."""
    deadline, next_each = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        if each is not None and time.monotonic() >= next_each:
            each()
            next_each = time.monotonic() + period
        executor.spin_once(timeout_sec=0.02)
        if condition():
            return True
    return False


class Probe:
    """A test node publishing camera frames and recording everything the localisation node outputs."""

    def __init__(self, add, namespace: str = ""):
        self.node = add(rclpy.create_node("probe", namespace=namespace))
        self.got: dict[str, list] = {k: [] for k in ("match", "cands", "scores", "loop", "markers", "diag")}
        subs = {"match": (PoseWithCovarianceStamped, "place_match"), "cands": (PoseArray, "place_candidates"),
                "scores": (Float64MultiArray, "place_candidates/scores"), "loop": (Float64MultiArray, "loop_closure"),
                "markers": (MarkerArray, "markers"), "diag": (DiagnosticArray, "/diagnostics")}
        for key, (msg_type, topic) in subs.items():
            self.node.create_subscription(msg_type, topic, lambda m, key=key: self.got[key].append(m), 10)
        self.image_pub = self.node.create_publisher(Image, "camera/image_raw", 10)

    def statuses(self, node_name: str):
        return [s for arr in self.got["diag"] for s in arr.status if s.name.startswith(node_name)]

    def has_status(self, node_name: str, level: int, text: str = "") -> bool:
        return any(s.level == bytes([level]) and text in s.message for s in self.statuses(node_name))


def localization_node(add, map_path, student, **params):
    overrides = {"map.path": str(map_path), "models.student_checkpoint": str(student), "matcher.sequence_length": 1,
                 "matcher.min_score": 0.9, "matcher.top_k": 3, "diagnostics.period_s": 0.2, **params}
    return add(LocalizationNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()]))


def test_localization_publishes_the_output_contract(ros, assets):
    """The matcher's contract (verification off; with it, see test_ros_verified.py)."""
    add, executor = ros
    node = localization_node(add, assets["map"], assets["student"], **{"verification.enabled": False})
    probe = Probe(add)
    rgb, _ = frame(4)
    stamps = iter(1000.0 + 0.1 * i for i in range(1000))
    sent = []

    def publish():
        sent.append(next(stamps))
        probe.image_pub.publish(image_msg(rgb, sent[-1], "camera_optical"))

    wanted = ("match", "loop", "scores", "markers")
    assert spin_until(executor, lambda: all(probe.got[k] for k in wanted), each=publish), \
        f"outputs so far: { {k: len(v) for k, v in probe.got.items()} }"
    match = probe.got["match"][0]
    assert match.header.frame_id == "map"
    t_query = match.header.stamp.sec + match.header.stamp.nanosec * 1e-9
    assert any(abs(t_query - t) < 1e-6 for t in sent)
    assert match.pose.pose.position.x == pytest.approx(20.0) and match.pose.covariance[0] > 0
    cands = probe.got["cands"][0]
    assert len(cands.poses) == 3 and cands.poses[0].position.x == pytest.approx(20.0)
    scores = probe.got["scores"][0]
    assert scores.layout.data_offset == 1 and len(scores.data) == 1 + 3 * 3
    assert scores.data[1] == 4.0 and scores.data[2] == pytest.approx(1.0, abs=1e-4) and scores.data[3] == 4.0
    assert list(probe.got["loop"][0].data) == [pytest.approx(scores.data[0]), 4.0]
    assert any(m.type == m.LINE_LIST or m.ns == "keyframes" for arr in probe.got["markers"] for m in arr.markers)
    assert spin_until(executor, lambda: probe.has_status("distilvpr_localization", OK), timeout=3)
    values = {kv.key: kv.value for kv in probe.statuses("distilvpr_localization")[-1].values}
    assert values["map_size"] == str(N_KEYFRAMES) and values["backend"] == "torch"
    assert {"rate_hz", "latency_ms_p50", "latency_ms_p99", "drops"} <= set(values)
    assert node.counts["processed"] >= 1


def test_localization_survives_bad_frames(ros, assets):
    add, executor = ros
    node = localization_node(add, assets["map"], assets["student"])
    probe = Probe(add)
    rgb, _ = frame(2)
    good = image_msg(rgb, 2000.0, "camera_optical")
    yuv = image_msg(rgb, 2001.0, "camera_optical")
    yuv.encoding = "yuv422"
    short = image_msg(rgb, 2002.0, "camera_optical")
    short.step = 10
    cases = [(yuv, "unsupported image encoding"), (short, "step"), (good, "duplicate")]
    for msg, text in cases:
        probe.image_pub.publish(good if text == "duplicate" else msg)  # the duplicate: `good` twice
        assert spin_until(executor, lambda: probe.has_status("distilvpr_localization", WARN, text),
                          each=lambda: probe.image_pub.publish(msg), period=0.3), text
    later = image_msg(rgb, 2010.0, "camera_optical")
    n = len(probe.got["cands"])
    assert spin_until(executor, lambda: len(probe.got["cands"]) > n, each=lambda: probe.image_pub.publish(later))
    assert node.problems.counts.get("bad_image", 0) >= 2 and node.guard.duplicates >= 1


@pytest.mark.parametrize("problem", ["other_model", "corrupt_map", "missing_checkpoint"])
def test_localization_stays_alive_and_says_why(ros, assets, tmp_path, problem):
    add, executor = ros
    student, map_path, text = assets["student"], assets["map"], ""
    if problem == "other_model":
        student, text = assets["other"], "built with model"
    elif problem == "corrupt_map":
        map_path = tmp_path / "map"
        shutil.copytree(assets["map"], map_path)
        (map_path / "meta.json").write_text("{}")
        text = "checksum"
    else:
        student, text = tmp_path / "nowhere", "not found"
    node = localization_node(add, map_path, student)
    probe = Probe(add)
    rgb, _ = frame(1)
    stamps = iter(3000.0 + 0.1 * i for i in range(1000))
    assert spin_until(executor, lambda: probe.has_status("distilvpr_localization", ERROR, text), timeout=8,
                      each=lambda: probe.image_pub.publish(image_msg(rgb, next(stamps), "cam"))), problem
    assert node.localizer is None and node.fatal and not probe.got["match"]
    n = len(probe.got["diag"])
    assert spin_until(executor, lambda: len(probe.got["diag"]) > n + 1, timeout=3)  # still alive, still reporting


class SensorPublisher:
    """Publishes odometry, camera and LiDAR of a robot driving along x, 2 m per frame."""

    def __init__(self, node):
        self.odom = node.create_publisher(Odometry, "odom", 10)
        self.cam = node.create_publisher(Image, "camera/image_raw", 10)
        self.lidar = node.create_publisher(PointCloud2, "lidar/points", 10)
        self.k = 0

    def publish(self, with_odom: bool = True):
        t = 100.0 + 0.5 * self.k
        if with_odom:
            self.publish_odom(self.k)
        rgb, cloud = frame(self.k % 5)
        self.cam.publish(image_msg(rgb, t, "camera_optical"))
        self.lidar.publish(pointcloud2_msg(cloud, t, "lidar"))
        self.k += 1

    def publish_odom(self, k: int):
        odom = Odometry(header=header(100.0 + 0.5 * k, "odom"), child_frame_id="base_link")
        odom.pose.pose = pose_msg(np.array([2.0 * k, 0, 0, 0, 0, 0, 1]))
        self.odom.publish(odom)


def test_mapping_node_builds_and_saves_a_map(ros, assets, tmp_path):
    add, executor = ros
    params = {"map.path": str(tmp_path / "live_map"), "models.teacher_checkpoint": str(assets["teacher"]),
              "models.student_checkpoint": str(assets["student"]), "keyframes.min_distance_m": 1.0,
              "map.save_period_s": 0.0, "diagnostics.period_s": 0.2, "qos.sensor_reliability": "reliable"}
    node = add(MappingNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    probe = Probe(add)
    sensors = SensorPublisher(probe.node)
    # without odometry: no keyframe, a WARN, no crash
    assert spin_until(executor, lambda: probe.has_status("distilvpr_mapping", WARN, "no odometry"),
                      each=lambda: sensors.publish(with_odom=False), period=0.2)
    assert len(node.builder.db) == 0
    assert spin_until(executor, lambda: len(node.builder.db) >= 4, each=sensors.publish, period=0.2)
    client = probe.node.create_client(Trigger, "distilvpr_mapping/save_map")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert spin_until(executor, future.done)
    assert future.result().success, future.result().message
    saved = PlaceDatabase.load(tmp_path / "live_map")
    assert len(saved) == len(node.builder.db) and set(saved.spaces) == {TEACHER_SPACE, STUDENT_SPACE}
    np.testing.assert_allclose(np.diff(saved.poses[:, 0]) % 2.0, 0.0, atol=1e-6)  # poses from odometry


def test_mapping_node_waits_for_odometry_that_arrives_after_the_images(ros, assets, tmp_path):
    add, executor = ros
    params = {"map.path": str(tmp_path / "late_odom_map"), "models.teacher_checkpoint": str(assets["teacher"]),
              "models.student_checkpoint": str(assets["student"]), "keyframes.min_distance_m": 1.0,
              "map.save_period_s": 0.0, "qos.sensor_reliability": "reliable"}
    node = add(MappingNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    sensors = SensorPublisher(Probe(add).node)
    assert spin_until(executor, lambda: all(pub.get_subscription_count() for pub in
                                            (sensors.odom, sensors.cam, sensors.lidar)))
    for k in range(6):  # each frame's odometry arrives after the node has paired its camera and LiDAR
        sensors.publish(with_odom=False)
        assert spin_until(executor, lambda: node.counts["pairs"] == k + 1)
        assert len(node.builder.db) == k and len(node._pairs) == 1  # the pair waits in the queue
        sensors.publish_odom(k)
        assert spin_until(executor, lambda: len(node.builder.db) == k + 1)
    assert node.counts["missing_odometry"] == 0 and not node._pairs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, (signal.SIGINT,) * 3],
                         ids=["SIGINT", "SIGTERM", "SIGINT_three_times"])
def test_mapping_node_saves_on_shutdown_signal(assets, tmp_path, sig):
    map_path = tmp_path / "sigint_map"
    cmd = [sys.executable, "-m", "distilvpr_ros.ros.mapping_node", "--ros-args",
           "--params-file", str(ROOT / "config" / "mapping.yaml"),
           "-p", f"map.path:={map_path}", "-p", f"models.teacher_checkpoint:={assets['teacher']}",
           "-p", f"models.student_checkpoint:={assets['student']}", "-p", "keyframes.min_distance_m:=1.0",
           "-p", "map.save_period_s:=0.0", "-p", "diagnostics.period_s:=0.2", "-p", "qos.sensor_reliability:=reliable"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    try:
        node = rclpy.create_node("sigint_probe")
        diag: list = []
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diag.extend(
            s for s in m.status if s.name.startswith("distilvpr_mapping")), 10)
        sensors = SensorPublisher(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)

        def keyframes() -> int:
            return int({kv.key: kv.value for kv in diag[-1].values}["keyframes"]) if diag else 0

        assert spin_until(executor, lambda: keyframes() >= 3 or proc.poll() is not None, timeout=60,
                          each=sensors.publish, period=0.2), "mapping node never reported keyframes"
        assert proc.poll() is None, proc.stdout.read()
        n = len(diag)
        spin_until(executor, lambda: len(diag) > n + 2, timeout=3)  # let the last keyframes settle
        reported = keyframes()
        assert not map_path.exists()  # autosave is off: only the shutdown save writes it
        for i, one in enumerate(sig if isinstance(sig, tuple) else (sig,)):
            if i:
                time.sleep(0.05 if i == 1 else 0.25)  # Ctrl-C pressed again while the map is being saved
            proc.send_signal(one)
        out, _ = proc.communicate(timeout=15)
        executor.remove_node(node)
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "shutdown: saved" in out, out
    assert len(PlaceDatabase.load(map_path)) >= reported >= 3


def test_transport_losses_count_sequence_gaps_per_publisher():
    from distilvpr_ros.ros.diagnostics import TransportLosses

    def info(seq, gid):
        return {"publication_sequence_number": seq, "publisher_gid": {"data": bytes([gid])}}

    lost = TransportLosses()
    for seq, gid in [(1, 1), (2, 1), (5, 1), (1, 2), (3, 2), (6, 1), (1, 1), (2, 1)]:
        lost.update(info(seq, gid))
    assert lost.lost == 2 + 1  # 2→5 and 1→3; the restart 6→1 is no loss
    lost.update({})  # middleware without sequence numbers
    lost.update(None)
    assert lost.lost == 3


def test_standard_qos_overrides_win_over_the_qos_parameters(ros, assets, tmp_path):
    """``qos.*`` set every sensor subscription; ``qos_overrides.<topic>.<entity>.<policy>`` win per topic."""
    from rclpy.qos import ReliabilityPolicy

    add, _ = ros
    params = {"map.path": str(tmp_path / "qos_map"), "models.teacher_checkpoint": str(assets["teacher"]),
              "models.student_checkpoint": str(assets["student"]), "qos.sensor_reliability": "best_effort",
              "qos.sensor_depth": 5, "qos_overrides./camera/image_raw.subscription.reliability": "reliable",
              "qos_overrides./camera/image_raw.subscription.depth": 2,
              "qos_overrides./loop_closure.publisher.depth": 50}
    node = add(MappingNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    subs = {s.topic_name: s.qos_profile for s in node.subscriptions}
    assert subs["/camera/image_raw"].reliability == ReliabilityPolicy.RELIABLE and subs["/camera/image_raw"].depth == 2
    assert subs["/lidar/points"].reliability == ReliabilityPolicy.BEST_EFFORT and subs["/lidar/points"].depth == 5
    assert node.loop_pub.qos_profile.depth == 50 and node.marker_pub.qos_profile.depth == 10
    assert node.get_parameter("qos_overrides./odom.subscription.reliability").value == "best_effort"


def test_diagnostics_warn_when_a_camera_with_publishers_delivers_nothing(ros, assets):
    """Large best-effort frames can be lost in transport for good: nothing arrives and nothing counts a gap.
    The node must not stay OK while a camera publisher exists and no frame comes through."""
    add, executor = ros
    localization_node(add, assets["map"], assets["student"], **{"diagnostics.input_timeout_s": 0.5})
    probe = Probe(add)  # creates a camera publisher that never publishes
    assert spin_until(executor, lambda: probe.has_status("distilvpr_localization", WARN, "no message on"),
                      timeout=8), [s.message for s in probe.statuses("distilvpr_localization")][-3:]
    # frames arriving again clear the warning
    rgb, _ = frame(3)
    stamps = iter(4000.0 + 0.1 * i for i in range(1000))
    n = len(probe.statuses("distilvpr_localization"))

    def ok_again() -> bool:
        return any(s.level == bytes([OK]) for s in probe.statuses("distilvpr_localization")[n:])

    assert spin_until(executor, ok_again, each=lambda: probe.image_pub.publish(image_msg(rgb, next(stamps), "cam")),
                      timeout=8)


def test_input_watch_reports_transport_loss_rate():
    from distilvpr_ros.ros.diagnostics import InputWatch

    w = InputWatch("camera/image_raw", timeout_s=1.0, max_loss=0.05)
    gid = {"data": b"p1"}
    for seq in (1, 2, 3, 10):  # 6 lost of 10 sent
        w.update({"publication_sequence_number": seq, "publisher_gid": gid})
    assert "6 of 10 messages (60 %) lost" in w.problem(publishers=1)
    assert w.problem(publishers=1) == ""  # only what happened since the previous check counts
    assert "no message" in w.problem(publishers=1, now=w._last + 2.0)
    assert w.problem(publishers=0, now=w._last + 2.0) == ""  # nobody publishes: silence is fine
