"""The typed configuration of the mapping and localisation pipelines (:class:`NodeConfig`).

One schema for YAML files, ROS parameters (dotted names such as ``matcher.top_k``, see ``ros/params.py``)
and the CLI. The two embedding-space names of a map live here too.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import Section, load_yaml, merge_config, validate_config
from ..data.submap import SubmapConfig
from ..mapping.database import IndexConfig
from ..mapping.matcher import MatcherConfig
from ..verification.bev import BevVerificationConfig
from ..verification.config import CameraVerificationConfig, LidarVerificationConfig, RerankConfig
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
    odom: str = Field("odom", description="nav_msgs/Odometry topic: keyframe poses (mapping); the motion between "
                      "camera frames for rerank.consecutive and tracking (localization; '' = not subscribed)")
    camera_info: str = Field(
        "camera/camera_info", description="sensor_msgs/CameraInfo topic: the camera's intrinsics for verification "
                                          "('' = not subscribed; calibration.* give them instead)")


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

    teacher_checkpoint: str = Field(
        "", description="mapping: checkpoint folder of the loop-closure model (teacher, lidar_student, ring_key or "
                        "scan_context_fft), or the name of a classical kind: ring_key | scan_context_fft")
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


class ViewsConfig(Section):
    """What the map stores per keyframe for geometric verification (map format 2)."""

    store: bool = Field(True, description="store each keyframe's JPEG image and LiDAR points in the map")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of the stored keyframe images")
    voxel_m: float = Field(
        0.3, ge=0.0, le=10.0, description="stored LiDAR points are voxel-downsampled to this size (m, 0 = all points; "
                                          "0.3 keeps camera PnP recall, measured)")


class CalibrationConfig(Section):
    """Camera intrinsics and the camera / LiDAR extrinsics of a real robot (base_link frame).

    Used when the data carries none: a synthetic world's ``world.json`` calibration wins (``build-map`` on a
    world's run or bag), and a bag's or topic's ``CameraInfo`` gives the intrinsics. The camera pose is the
    *optical* frame (z forward, x right, y down) in the base frame, as ``x y z`` (m) and fixed-axis
    roll / pitch / yaw (deg, ``R = Rz(yaw) Ry(pitch) Rx(roll)``); the defaults (-90, 0, -90) are a camera at the
    base origin looking along the base's x axis. Intrinsics 0 = take them from ``CameraInfo``.
    """

    camera_x: float = Field(0.0, description="camera optical frame x in base_link (m)")
    camera_y: float = Field(0.0, description="camera optical frame y in base_link (m)")
    camera_z: float = Field(0.0, description="camera optical frame z in base_link (m)")
    camera_roll_deg: float = Field(-90.0, description="camera optical frame roll in base_link (deg)")
    camera_pitch_deg: float = Field(0.0, description="camera optical frame pitch in base_link (deg)")
    camera_yaw_deg: float = Field(-90.0, description="camera optical frame yaw in base_link (deg)")
    lidar_x: float = Field(0.0, description="LiDAR frame x in base_link (m)")
    lidar_y: float = Field(0.0, description="LiDAR frame y in base_link (m)")
    lidar_z: float = Field(0.0, description="LiDAR frame z in base_link (m)")
    lidar_roll_deg: float = Field(0.0, description="LiDAR frame roll in base_link (deg)")
    lidar_pitch_deg: float = Field(0.0, description="LiDAR frame pitch in base_link (deg)")
    lidar_yaw_deg: float = Field(0.0, description="LiDAR frame yaw in base_link (deg)")
    fx: float = Field(0.0, ge=0.0, description="focal length x (px, 0 = from CameraInfo)")
    fy: float = Field(0.0, ge=0.0, description="focal length y (px, 0 = from CameraInfo)")
    cx: float = Field(0.0, ge=0.0, description="principal point x (px)")
    cy: float = Field(0.0, ge=0.0, description="principal point y (px)")
    width: int = Field(0, ge=0, description="image width (px, 0 = from CameraInfo)")
    height: int = Field(0, ge=0, description="image height (px, 0 = from CameraInfo)")


class VerificationConfig(Section):
    """Geometric verification of matches against the map's keyframe views (``distilvpr_ros.verification``)."""

    enabled: bool = Field(True, description="verify loop closures (LiDAR) and place matches (camera PnP)")
    camera: CameraVerificationConfig = Field(default_factory=CameraVerificationConfig)
    lidar: LidarVerificationConfig = Field(default_factory=LidarVerificationConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    lidar_seed: Literal["yaw", "pose", "none", "bev"] = Field(
        "yaw", description="registration's initial guess: the keyframes' relative yaw from odometry, their whole "
                           "relative pose, identity, or the bird's-eye-view check's yaw and shift (no odometry needed)")
    lidar_candidates: int = Field(
        1, ge=1, le=50, description="mapping: loop-closure candidates registered per keyframe, best first, until one "
                                    "is accepted")
    lidar_order: Literal["descriptor", "bev"] = Field(
        "descriptor", description="mapping: order of those candidates: the descriptor's, or the bird's-eye-view "
                                  "check's score (verification/bev.py, on the stored LiDAR points), candidates below "
                                  "bev.min_score not registered")
    bev: BevVerificationConfig = Field(default_factory=BevVerificationConfig)
    require_descriptor_match: bool = Field(
        False, description="localisation: verify only frames whose descriptor match the matcher accepted "
                           "(min_score, sequence); false: verify the top-k of every frame")
    cache_keyframes: int = Field(
        2048, ge=1, le=1000000, description="localisation: keyframes whose prepared camera features and their 3D "
        "points stay cached (~25 kB per ORB keyframe, ~0.2 MB with CNN features; pixels are not kept); a candidate "
        "beyond the cache is prepared again when matched (~10 ms)")
    preload_keyframes: bool = Field(
        True, description="localisation: prepare the first cache_keyframes keyframes (image, depth, features with "
                          "their 3D points) when the map is loaded, not at their first match")


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
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    verification: VerificationConfig = Field(default_factory=VerificationConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    submap: SubmapConfig = Field(
        default_factory=SubmapConfig,
        description="mapping: the teacher-space descriptor of a keyframe reads the LiDAR scans of the previous "
                    "keyframes over the trailing submap.length_m metres of odometry (0: the keyframe's scan only)")

    @field_validator("submap")
    @classmethod
    def _trailing_only(cls, value: SubmapConfig) -> SubmapConfig:
        if value.window != "trailing":
            raise ValueError("the mapping pipeline only knows the past: submap.window must be 'trailing'")
        return value


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
