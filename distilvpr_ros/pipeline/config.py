"""The typed configuration of the mapping and localisation pipelines (:class:`NodeConfig`).

One schema for YAML files, ROS parameters (dotted names such as ``matcher.top_k``, see ``ros/params.py``)
and the CLI. The two embedding-space names of a map live here too.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config import Section, load_yaml, merge_config, validate_config
from ..mapping.database import IndexConfig
from ..mapping.matcher import MatcherConfig
from .image_quality import ImageQualityConfig

#: A frame id: not empty, no whitespace (tf2 frame ids carry no leading '/', but that is only a warning there).
FRAME_ID = r"^\S+$"
#: Keys a ROS parameter file may hold beside the NodeConfig ones (rclpy's own parameters): not ours to check.
ROS_ONLY_KEYS = ("use_sim_time", "qos_overrides", "start_type_description_service")
TEACHER_SPACE = "teacher"
STUDENT_SPACE = "camera_student"


class TopicsConfig(Section):
    """Input topics (relative names resolve in the node's namespace; remap them in launch files)."""

    camera: str = Field("camera/image_raw", description="sensor_msgs/Image camera topic")
    camera_compressed: str = Field(
        "camera/image_raw/compressed", description="sensor_msgs/CompressedImage topic ('' = not subscribed)")
    lidar: str = Field("lidar/points", description="sensor_msgs/PointCloud2 topic (mapping only)")
    odom: str = Field("odom", description="nav_msgs/Odometry topic giving keyframe poses (mapping only)")


class FramesConfig(Section):
    """Frame ids of the outputs."""

    map: str = Field(
        "map", min_length=1, max_length=256, pattern=FRAME_ID,
        description="frame of place_match, place_candidates and markers (not empty)")
    base: str = Field(
        "base_link", min_length=1, max_length=256, pattern=FRAME_ID,
        description="robot body frame (documentation of the odometry child frame; not empty)")


class QosConfig(Section):
    """Quality of service of the sensor subscriptions (outputs are reliable)."""

    sensor_reliability: Literal["best_effort", "reliable"] = Field(
        "best_effort", description="camera/LiDAR/odometry reliability: best_effort (drivers) or reliable")
    sensor_depth: int = Field(5, ge=1, le=1000, description="keep-last depth of the sensor subscriptions")


class SyncConfig(Section):
    """Approximate-time pairing of camera and LiDAR (``ros/sync.py``)."""

    slop_s: float = Field(0.05, gt=0.0, le=5.0, description="max |t_camera - t_lidar| of a pair (s)")
    queue_size: int = Field(10, ge=1, le=100, description="messages kept per stream while waiting (oldest dropped)")
    reset_jump_s: float = Field(
        1.0, gt=0.0, le=3600.0,
        description="a stamp this far before the previous one is a clock jump (bag restart): reset")


class KeyframeConfig(Section):
    """When a synchronised camera+LiDAR pair becomes a map keyframe."""

    min_distance_m: float = Field(
        2.0, ge=0.0, le=1000.0, description="new keyframe after travelling this far (m, 0 = off)")
    min_heading_deg: float = Field(15.0, ge=0.0, le=180.0, description="... or turning this much (deg, 0 = off)")
    max_interval_s: float = Field(0.0, ge=0.0, le=3600.0, description="... or after this long without one (s, 0 = off)")
    odom_tolerance_s: float = Field(
        0.1, ge=0.0, le=60.0, description="a keyframe stamp may lie this far outside the odometry received (s)")
    odom_buffer_s: float = Field(10.0, gt=0.0, le=3600.0, description="odometry history kept for interpolation (s)")
    max_position_m: float = Field(
        1.0e6, gt=0.0, le=1.0e9, description="odometry farther than this from the origin is not physical: rejected (m)")
    max_speed_mps: float = Field(
        60.0, gt=0.0, le=1.0e4, description="odometry jumping faster than this since the previous pose is rejected "
                                            "(m/s; a jump that persists for 10 messages is taken as an odometry reset)")
    queue_size: int = Field(
        20, ge=1, le=1000, description="camera+LiDAR pairs waiting for odometry or the networks (mapping node); "
                                       "when full the oldest is dropped and counted")


class ModelsConfig(Section):
    """Networks: the teacher (mapping) and the camera student (mapping and localisation)."""

    teacher_checkpoint: str = Field("", description="teacher checkpoint folder (mapping)")
    student_checkpoint: str = Field(
        "", description="camera-student checkpoint folder (torch backend; its checkpoint.json names the model)")
    student_onnx: str = Field("", description="camera-student ONNX file (onnxruntime backend)")
    backend: Literal["torch", "onnxruntime"] = Field("torch", description="student inference backend")
    num_threads: int = Field(2, ge=1, le=256, description="CPU threads for inference (torch intra-op, ONNX Runtime)")


class MapConfig(Section):
    """The place database file and how it is kept."""

    path: str = Field("", description="map folder (written by mapping, read by localisation)")
    save_period_s: float = Field(
        60.0, ge=0.0, le=86400.0, description="mapping: save every this many seconds (0 = off)")
    resume: bool = Field(True, description="mapping: append to an existing map at path instead of replacing it")
    run: str = Field("", description="name of this run in the map ('' = run_<start time>); "
                                     "temporal exclusion applies only within a run")


class DiagnosticsConfig(Section):
    """The /diagnostics status of a node."""

    period_s: float = Field(1.0, gt=0.0, le=60.0, description="publish period (s)")
    window: int = Field(200, ge=2, le=100000, description="frames in the rate / latency window")
    input_timeout_s: float = Field(
        3.0, ge=0.0, le=3600.0, description="WARN when a sensor topic with publishers delivers nothing for this long "
                                            "(s, 0 = off)")
    max_transport_loss: float = Field(
        0.05, ge=0.0, le=1.0, description="WARN when more than this share of a sensor topic's messages is lost in "
                                          "transport between two statuses (1 = off)")


class NodeConfig(Section):
    """Configuration of the mapping and localisation pipelines (YAML, ROS parameters and CLI)."""

    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    frames: FramesConfig = Field(default_factory=FramesConfig)
    qos: QosConfig = Field(default_factory=QosConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    keyframes: KeyframeConfig = Field(default_factory=KeyframeConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    map: MapConfig = Field(default_factory=MapConfig)
    matcher: MatcherConfig = Field(default_factory=MatcherConfig)
    image_quality: ImageQualityConfig = Field(default_factory=ImageQualityConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)


def load_node_config(path: str | Path | None = None, node_name: str | None = None, **overrides: Any) -> NodeConfig:
    """A :class:`NodeConfig` from a YAML file (plain, or a ROS parameter file: ``<node>: ros__parameters:``),
    then ``overrides`` given as dotted keys (``{"matcher.top_k": 3}``). Unknown keys and invalid values raise
    :class:`~distilvpr_ros.config.ConfigError` on one line naming the file and the closest valid key."""
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path)
        if node_name is not None and node_name in data:
            data = data[node_name]
        elif len(data) == 1 and isinstance(next(iter(data.values())), dict) \
                and "ros__parameters" in next(iter(data.values())):
            data = next(iter(data.values()))
        data = {k: v for k, v in data.get("ros__parameters", data).items() if k not in ROS_ONLY_KEYS}
    return validate_config(NodeConfig, merge_config(merge_config({}, data), overrides), path)  # dotted keys too


def default_run_name() -> str:
    """``run_<YYYYmmdd-HHMMSS>`` of the wall-clock now (the default name of a mapping run)."""
    return datetime.now().strftime("run_%Y%m%d-%H%M%S")
