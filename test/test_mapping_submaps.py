"""The mapping node over DDS with a classical LiDAR kind (scan_context_fft, no weights) reading trailing submaps:
real rclpy messages in, the map's teacher-space descriptors checked against submaps computed by hand, and the
fall-back to fewer scans after an odometry reset (diagnostics)."""

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from distilvpr_ros.data.geometry import pose_from_xyz_yaw  # noqa: E402
from distilvpr_ros.data.submap import SubmapConfig, accumulate_submap  # noqa: E402
from distilvpr_ros.models.classical import fft_descriptor, scan_context  # noqa: E402
from distilvpr_ros.models.vpr import l2_normalize  # noqa: E402
from distilvpr_ros.pipeline.config import TEACHER_SPACE  # noqa: E402
from distilvpr_ros.ros.mapping_node import MappingNode  # noqa: E402
from test_ros_nodes import SensorPublisher, frame, spin_until  # noqa: E402
from tiny_models import tiny_checkpoints  # noqa: E402

pytestmark = pytest.mark.ros
torch.set_num_threads(1)
D = 5.0  # SensorPublisher drives 2 m per frame: a trailing 5 m submap holds 3 scans


def fft(cloud):
    return l2_normalize(fft_descriptor(scan_context(cloud))[None])[0]


def diag_value(statuses, key):
    for status in reversed(statuses):
        for kv in status.values:
            if kv.key == key:
                return kv.value
    return None


def test_mapping_node_with_scan_context_fft_on_trailing_submaps_over_dds(ros, tmp_path):
    add, executor = ros
    student = tiny_checkpoints(tmp_path)["student"]
    params = {"map.path": str(tmp_path / "map"), "models.teacher_checkpoint": "scan_context_fft",
              "models.student_checkpoint": str(student), "keyframes.min_distance_m": 1.0,
              "submap.length_m": D, "verification.enabled": False, "map.save_period_s": 0.0,
              "diagnostics.period_s": 0.2, "qos.sensor_reliability": "reliable"}
    node = add(MappingNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    assert node.state == "active", node.fatal
    probe = add(rclpy.create_node("probe"))
    statuses = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(
        s for s in m.status if s.name.startswith("distilvpr_mapping")), 10)
    sensors = SensorPublisher(probe)
    assert spin_until(executor, lambda: all(pub.get_subscription_count() for pub in
                                            (sensors.odom, sensors.cam, sensors.lidar)))
    for k in range(6):  # one keyframe per frame, each after its odometry
        sensors.publish_odom(k)
        sensors.publish(with_odom=False)
        assert spin_until(executor, lambda: len(node.builder.db) == k + 1), k
    db = node.builder.db
    assert db.spaces[TEACHER_SPACE].model_name == "scan_context_fft:builtin"
    # by hand: keyframe k's scan is frame(k) at x = 2 k (identity extrinsic); trailing 5 m = keyframes k-2..k
    clouds = [frame(k % 5)[1] for k in range(6)]
    poses = np.stack([pose_from_xyz_yaw(2.0 * k, 0, 0, 0) for k in range(6)])
    expected = np.stack([fft(accumulate_submap(clouds, poses, k, SubmapConfig(length_m=D))) for k in range(6)])
    np.testing.assert_allclose(db.descriptors(TEACHER_SPACE), expected, atol=1e-5)
    assert not np.allclose(db.descriptors(TEACHER_SPACE)[2], fft(clouds[2]), atol=1e-3)
    assert spin_until(executor, lambda: diag_value(statuses, "submap_scans") == "3")

    # the odometry is reset to a new origin (a jump that persists): the next keyframe must not join the
    # scans kept in the old frame; it falls back to its own scan and the diagnostics count the break (the
    # 1 km jump alone would end the walk too: the break and cut-short counters are what the node's epoch adds)
    jump = 1000.0

    def publish_odom_at(k: int):
        from nav_msgs.msg import Odometry

        from distilvpr_ros.ros.messages import header, pose_msg

        odom = Odometry(header=header(100.0 + 0.5 * k, "odom"), child_frame_id="base_link")
        odom.pose.pose = pose_msg(np.array([jump + 2.0 * k, 0, 0, 0, 0, 0, 1]))
        sensors.odom.publish(odom)

    epoch = node.odom.epoch
    for k in range(6, 6 + 10):  # 9 jumps are refused as non-physical, the 10th is taken as a reset
        publish_odom_at(k)
        spin_until(executor, lambda: False, timeout=0.05)
    assert spin_until(executor, lambda: node.odom.epoch == epoch + 1)
    sensors.k = 16
    publish_odom_at(16)
    sensors.publish(with_odom=False)
    assert spin_until(executor, lambda: len(node.builder.db) == 7)
    alone = fft(accumulate_submap([frame(16 % 5)[1]], poses[:1], 0, SubmapConfig(length_m=D)))
    np.testing.assert_allclose(db.descriptors(TEACHER_SPACE)[6], alone, atol=1e-5)
    assert spin_until(executor, lambda: diag_value(statuses, "submap_breaks") == "1" and diag_value(
        statuses, "submaps_cut_short") == "1" and diag_value(statuses, "submap_scans") == "1")
