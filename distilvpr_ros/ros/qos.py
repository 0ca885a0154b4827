"""QoS profiles of the nodes' inputs and outputs (and of the replay recorder)."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from ..pipeline.config import QosConfig

#: Outputs: reliable, keep-last 10 (reliable publishers also serve best-effort subscribers like LIO-SAM).
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
#: The replay recorder: reliable with a deep queue, so no output of the node is lost between it and the recorder.
RECORD_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def sensor_qos(cfg: QosConfig) -> QoSProfile:
    """``qos_profile_sensor_data`` (best-effort, volatile) with the configured reliability and depth."""
    reliability = ReliabilityPolicy.RELIABLE if cfg.sensor_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.sensor_depth, reliability=reliability,
                      durability=qos_profile_sensor_data.durability)
