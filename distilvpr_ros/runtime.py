"""The keyframe → descriptor → map pipeline shared by the ROS nodes and the CLI (no rclpy here).

The ROS nodes (``distilvpr_ros.ros.mapping_node`` / ``localization_node``) only convert messages and call
this module; ``distilvpr build-map --bag`` calls :func:`build_map_from_sequence`, which runs the very same
:class:`Keyframer` and :class:`MapBuilder`, so a map built offline from a bag equals the map the mapping
node builds live from the same data (up to which camera frame the live synchroniser pairs).

Pieces
    * :class:`NodeConfig`: one typed config (pydantic) for YAML files, ROS parameters (dotted names such
      as ``matcher.top_k``, see ``ros/params.py``) and the CLI.
    * :class:`OdometryBuffer`: recent odometry poses, interpolated to a keyframe stamp.
    * :class:`Keyframer`: distance / heading / time gating of keyframes.
    * :class:`Embedder`: one network (torch checkpoint or ONNX Runtime) from numpy inputs to one
      L2-normalised descriptor, with input validation.
    * :class:`MapBuilder`: teacher + student descriptors of each keyframe into a :class:`PlaceDatabase`
      whose spaces carry the models' identities, plus teacher-space loop-closure candidates.
    * :class:`Localizer`: student descriptor → :class:`PlaceMatcher` over the map's student space.
    * :class:`LatencyWindow`: rate and latency percentiles for diagnostics.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .config import Section, load_yaml
from .data.geometry import interpolate_poses, yaw_of
from .mapping.database import EmbeddingSpace, IndexConfig, MapError, PlaceDatabase, model_identity
from .mapping.matcher import MatcherConfig, MatchResult, PlaceMatcher

TEACHER_SPACE = "teacher"
STUDENT_SPACE = "camera_student"

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class TopicsConfig(Section):
    """Input topics (relative names resolve in the node's namespace; remap them in launch files)."""

    camera: str = Field("camera/image_raw", description="sensor_msgs/Image camera topic")
    camera_compressed: str = Field(
        "camera/image_raw/compressed", description="sensor_msgs/CompressedImage topic ('' = not subscribed)")
    lidar: str = Field("lidar/points", description="sensor_msgs/PointCloud2 topic (mapping only)")
    odom: str = Field("odom", description="nav_msgs/Odometry topic giving keyframe poses (mapping only)")


class FramesConfig(Section):
    """Frame ids of the outputs."""

    map: str = Field("map", description="frame of place_match, place_candidates and markers")
    base: str = Field("base_link", description="robot body frame (documentation of the odometry child frame)")


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
        1.0, gt=0.0, description="a stamp this far before the previous one is a clock jump (bag restart): reset")


class KeyframeConfig(Section):
    """When a synchronised camera+LiDAR pair becomes a map keyframe."""

    min_distance_m: float = Field(2.0, ge=0.0, description="new keyframe after travelling this far (m, 0 = off)")
    min_heading_deg: float = Field(15.0, ge=0.0, le=180.0, description="... or turning this much (deg, 0 = off)")
    max_interval_s: float = Field(0.0, ge=0.0, description="... or after this long without one (s, 0 = off)")
    odom_tolerance_s: float = Field(
        0.1, ge=0.0, description="a keyframe stamp may lie this far outside the odometry received (s)")
    odom_buffer_s: float = Field(10.0, gt=0.0, description="odometry history kept for interpolation (s)")


class ModelsConfig(Section):
    """Networks: the teacher (mapping) and the camera student (mapping and localisation)."""

    teacher_checkpoint: str = Field("", description="teacher checkpoint folder (mapping)")
    student_checkpoint: str = Field(
        "", description="camera-student checkpoint folder (torch backend; its checkpoint.json names the model)")
    student_onnx: str = Field("", description="camera-student ONNX file (onnxruntime backend)")
    backend: Literal["torch", "onnxruntime"] = Field("torch", description="student inference backend")
    num_threads: int = Field(1, ge=1, le=256, description="CPU threads for inference")


class MapConfig(Section):
    """The place database file and how it is kept."""

    path: str = Field("", description="map folder (written by mapping, read by localisation)")
    save_period_s: float = Field(60.0, ge=0.0, description="mapping: save every this many seconds (0 = off)")
    resume: bool = Field(True, description="mapping: append to an existing map at path instead of replacing it")
    run: str = Field("", description="name of this run in the map ('' = run_<start time>); "
                                     "temporal exclusion applies only within a run")


class DiagnosticsConfig(Section):
    """The /diagnostics status of a node."""

    period_s: float = Field(1.0, gt=0.0, description="publish period (s)")
    window: int = Field(200, ge=2, le=100000, description="frames in the rate / latency window")


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
    index: IndexConfig = Field(default_factory=IndexConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)


def load_node_config(path: str | Path | None = None, node_name: str | None = None, **overrides: Any) -> NodeConfig:
    """A :class:`NodeConfig` from a YAML file (plain, or a ROS parameter file: ``<node>: ros__parameters:``),
    then ``overrides`` given as dotted keys (``{"matcher.top_k": 3}``)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path)
        if node_name is not None and node_name in data:
            data = data[node_name]
        elif len(data) == 1 and isinstance(next(iter(data.values())), dict) \
                and "ros__parameters" in next(iter(data.values())):
            data = next(iter(data.values()))
        data = data.get("ros__parameters", data)
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return NodeConfig(**data)


def default_run_name() -> str:
    """``run_<YYYYmmdd-HHMMSS>`` of the wall-clock now (the default name of a mapping run)."""
    return datetime.now().strftime("run_%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------------------------------
# Odometry and keyframes
# --------------------------------------------------------------------------------------------------


class OdometryBuffer:
    """Recent ``(stamp, 4x4 pose)`` odometry, interpolated to keyframe stamps.

    Stamps must increase; an older or equal stamp is ignored (``add`` returns False). A stamp more than
    ``reset_jump_s`` before the newest (a bag replay restarting) clears the buffer first.
    """

    def __init__(self, horizon_s: float = 10.0, tolerance_s: float = 0.1, reset_jump_s: float = 1.0) -> None:
        self.horizon_s, self.tolerance_s, self.reset_jump_s = float(horizon_s), float(tolerance_s), reset_jump_s
        self._t: deque[float] = deque()
        self._poses: deque[np.ndarray] = deque()

    def __len__(self) -> int:
        return len(self._t)

    @property
    def span(self) -> tuple[float, float] | None:
        """``(oldest, newest)`` stamp held, or None when empty."""
        return (self._t[0], self._t[-1]) if self._t else None

    def add(self, stamp: float, pose: np.ndarray) -> bool:
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"odometry pose must be a finite 4x4 transform, got shape {pose.shape}")
        if self._t and stamp <= self._t[-1]:
            if self._t[-1] - stamp <= self.reset_jump_s:
                return False
            self.clear()
        self._t.append(float(stamp))
        self._poses.append(pose)
        while self._t and self._t[0] < stamp - self.horizon_s:
            self._t.popleft()
            self._poses.popleft()
        return True

    def clear(self) -> None:
        self._t.clear()
        self._poses.clear()

    def awaiting(self, stamp: float) -> bool:
        """No odometry has reached ``stamp`` yet (empty, or the newest is more than ``tolerance_s`` older):
        a pair at ``stamp`` should wait rather than be given up."""
        return not self._t or stamp > self._t[-1] + self.tolerance_s

    def pose_at(self, stamp: float) -> np.ndarray | None:
        """Pose interpolated at ``stamp`` (linear + slerp); the nearest end pose when ``stamp`` lies at most
        ``tolerance_s`` outside the buffer; None when there is no odometry close enough."""
        if not self._t:
            return None
        if stamp < self._t[0] - self.tolerance_s or stamp > self._t[-1] + self.tolerance_s:
            return None
        return interpolate_poses(np.array([stamp]), np.fromiter(self._t, float), np.stack(self._poses))[0]


@dataclass
class KeyframeDecision:
    accept: bool
    reason: str  # "first", "distance", "heading", "interval" when accepted; why not otherwise


class Keyframer:
    """Keyframe gating: the first frame, then whenever, since the last keyframe, the robot has moved
    ``min_distance_m`` or turned ``min_heading_deg`` (yaw), or ``max_interval_s`` passed. A threshold of 0
    turns its criterion off; with all three 0 every frame is a keyframe."""

    def __init__(self, cfg: KeyframeConfig | None = None) -> None:
        self.cfg = cfg or KeyframeConfig()
        self.last_pose: np.ndarray | None = None
        self.last_stamp: float | None = None

    def check(self, pose: np.ndarray, stamp: float) -> KeyframeDecision:
        """Would a frame at ``pose`` (4x4) and ``stamp`` be a keyframe? (no state change)."""
        if self.last_pose is None:
            return KeyframeDecision(True, "first")
        if stamp <= self.last_stamp:
            return KeyframeDecision(False, f"stamp {stamp:.3f} is not after the last keyframe's {self.last_stamp:.3f}")
        c = self.cfg
        if c.min_distance_m == 0 and c.min_heading_deg == 0 and c.max_interval_s == 0:
            return KeyframeDecision(True, "every frame")
        dist = float(np.linalg.norm(pose[:3, 3] - self.last_pose[:3, 3]))
        if c.min_distance_m > 0 and dist >= c.min_distance_m:
            return KeyframeDecision(True, "distance")
        dyaw = math.degrees(abs(math.remainder(yaw_of(pose) - yaw_of(self.last_pose), 2 * math.pi)))
        if c.min_heading_deg > 0 and dyaw >= c.min_heading_deg:
            return KeyframeDecision(True, "heading")
        if c.max_interval_s > 0 and stamp - self.last_stamp >= c.max_interval_s:
            return KeyframeDecision(True, "interval")
        return KeyframeDecision(False, f"moved {dist:.2f} m, turned {dyaw:.1f} deg since the last keyframe")

    def accept(self, pose: np.ndarray, stamp: float) -> None:
        """Record a keyframe (call after it was added to the map)."""
        self.last_pose, self.last_stamp = np.array(pose, dtype=np.float64), float(stamp)

    def reset(self) -> None:
        self.last_pose = self.last_stamp = None


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------


class ModelLoadError(RuntimeError):
    """A model file is missing, corrupt or not the kind the pipeline needs; the message says which."""


ONNX_CHECKPOINT_NAME = "checkpoint_name"
ONNX_CHECKPOINT_SHA = "checkpoint_sha256"


class Embedder:
    """One network as a function from numpy sensor data to one L2-normalised float32 descriptor.

    ``model`` is a torch :class:`~distilvpr_ros.models.vpr.VprModel` or an
    :class:`~distilvpr_ros.models.export.OnnxRunner`; ``identity`` is ``(name, sha256)`` of its weights
    (the map's embedding-space tag, :func:`~distilvpr_ros.mapping.database.model_identity`).
    """

    def __init__(self, model: Any, kind: str, identity: tuple[str, str], backend: str = "torch") -> None:
        from .evaluation.embed import input_spec_of

        self.model, self.kind, self.identity, self.backend = model, kind, identity, backend
        self.spec = input_spec_of(model)

    # ---- construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, kind: str, num_threads: int = 1) -> "Embedder":
        """A torch model from a checkpoint folder; refuses a missing folder or another model kind."""
        import torch

        from .training.checkpoint import CheckpointError, load_model

        path = Path(path)
        if not str(path) or not path.is_dir():
            raise ModelLoadError(f"{kind} checkpoint not found: {str(path) or '(not set)'}")
        torch.set_num_threads(num_threads)
        try:
            model = load_model(path, expect_kind=kind)
            identity = model_identity(path)
        except (CheckpointError, KeyError, ValueError, OSError) as e:
            raise ModelLoadError(f"{kind} checkpoint {path}: {e}") from None
        return cls(model, kind, identity, "torch")

    @classmethod
    def from_onnx(cls, path: str | Path, kind: str = STUDENT_SPACE, checkpoint: str | Path | None = None,
                  num_threads: int = 1) -> "Embedder":
        """An ONNX Runtime model. Its identity comes from the checkpoint it was exported from: the
        ``checkpoint_sha256`` metadata written by :func:`export_model`, else the ``checkpoint`` folder."""
        from .models.export import OnnxRunner

        path = Path(path)
        if not str(path) or not path.is_file():
            raise ModelLoadError(f"{kind} ONNX model not found: {str(path) or '(not set)'}")
        try:
            runner = OnnxRunner(path, intra_op_num_threads=num_threads)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise ModelLoadError(f"{kind} ONNX model {path}: cannot load ({e})") from None
        got = runner.metadata.get("kind")
        if got != kind:
            raise ModelLoadError(f"{path}: holds a {got or 'unknown'} model, expected {kind}")
        if ONNX_CHECKPOINT_SHA in runner.metadata:
            identity = (runner.metadata.get(ONNX_CHECKPOINT_NAME, path.stem), runner.metadata[ONNX_CHECKPOINT_SHA])
        elif checkpoint:
            try:
                identity = model_identity(checkpoint)
            except Exception as e:
                raise ModelLoadError(f"checkpoint {checkpoint} (identity of {path}): {e}") from None
        else:
            raise ModelLoadError(f"{path} does not record the checkpoint it was exported from; export it with "
                                 "`distilvpr export` or also set models.student_checkpoint")
        return cls(runner, kind, identity, "onnxruntime")

    @classmethod
    def student_from_config(cls, cfg: ModelsConfig) -> "Embedder":
        """The camera student as configured (``backend`` torch → checkpoint, onnxruntime → ONNX file)."""
        if cfg.backend == "onnxruntime":
            return cls.from_onnx(cfg.student_onnx, STUDENT_SPACE, cfg.student_checkpoint or None, cfg.num_threads)
        return cls.from_checkpoint(cfg.student_checkpoint, STUDENT_SPACE, cfg.num_threads)

    # ---- use
    @property
    def dim(self) -> int:
        return self.spec.descriptor_dim

    @property
    def sha256(self) -> str:
        return self.identity[1]

    def space(self, index: IndexConfig | None = None) -> EmbeddingSpace:
        """The map embedding space of this model (named after its kind, tagged with its identity)."""
        return EmbeddingSpace(self.kind, self.dim, self.identity[0], self.identity[1], "ip", index or IndexConfig())

    def __call__(self, image: np.ndarray | None = None, cloud: np.ndarray | None = None) -> np.ndarray:
        """``(dim,)`` float32 unit descriptor of one frame; ValueError for unusable inputs."""
        from .evaluation.embed import describe, model_inputs

        if "image" in self.spec.inputs:
            check_image(image)
        if "cloud" in self.spec.inputs:
            cloud = check_cloud(cloud)
        desc = describe(self.model, model_inputs(self.spec, [image], [cloud]))[0]
        if desc.shape != (self.dim,) or not np.isfinite(desc).all():
            raise ValueError(f"{self.kind} produced an invalid descriptor (shape {desc.shape}, expected ({self.dim},))")
        return desc


MIN_IMAGE_SIDE = 8


def check_image(image: np.ndarray | None) -> np.ndarray:
    """An ``H x W x 3`` uint8 image with both sides >= 8 px, or ValueError saying what is wrong."""
    if image is None:
        raise ValueError("the model needs a camera image but none was given")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small (min side {MIN_IMAGE_SIDE} px)")
    return image


def check_cloud(cloud: np.ndarray | None) -> np.ndarray:
    """An ``N x C`` (C >= 3) cloud with at least one finite point (non-finite points removed)."""
    if cloud is None:
        raise ValueError("the model needs a LiDAR cloud but none was given")
    cloud = np.asarray(cloud)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"expected an N x C LiDAR cloud with C >= 3, got shape {cloud.shape}")
    finite = np.isfinite(cloud[:, :3]).all(axis=1)
    if not finite.any():
        raise ValueError(f"LiDAR cloud has no finite points ({len(cloud)} points, all NaN/inf or none)")
    return cloud if finite.all() else cloud[finite]


def export_model(checkpoint: str | Path, out: str | Path) -> Path:
    """Export a checkpoint to ONNX, recording the checkpoint's identity in the ONNX metadata (so a
    localisation node on ONNX Runtime can check the map without the checkpoint folder)."""
    import onnx

    from .models.export import export_onnx
    from .training.checkpoint import load_model

    model = load_model(checkpoint)
    out = export_onnx(model, out)
    name, sha = model_identity(checkpoint)
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({ONNX_CHECKPOINT_NAME: name, ONNX_CHECKPOINT_SHA: sha})
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out


# --------------------------------------------------------------------------------------------------
# Map building and localisation
# --------------------------------------------------------------------------------------------------


@dataclass
class KeyframeResult:
    """One keyframe added by :meth:`MapBuilder.add_keyframe` and its teacher-space loop-closure check."""

    id: int
    stamp: float
    pose: np.ndarray
    match: MatchResult
    seconds: float  # time spent in the networks and the map


class MapBuilder:
    """Adds keyframes (teacher + student descriptors) to a map and finds loop closures in teacher space.

    The map has one space per model, named after its kind (``teacher``, ``camera_student``) and tagged
    with the model's identity, so localisation can refuse a map built with another student.
    """

    def __init__(self, teacher: Embedder, student: Embedder, db: PlaceDatabase | None = None,
                 index: IndexConfig | None = None, matcher: MatcherConfig | None = None,
                 run: str = "", frame_id: str = "map") -> None:
        if teacher.kind != TEACHER_SPACE or student.kind != STUDENT_SPACE:
            raise ValueError(f"MapBuilder needs a teacher and a camera_student, got {teacher.kind}, {student.kind}")
        self.teacher, self.student = teacher, student
        self.db = db if db is not None else PlaceDatabase([teacher.space(index), student.space(index)])
        self.run = run or default_run_name()
        self.frame_id = frame_id
        self.matcher = PlaceMatcher(self.db, TEACHER_SPACE, matcher)
        self.unsaved = 0  # keyframes added since the last save

    @classmethod
    def open(cls, teacher: Embedder, student: Embedder, cfg: NodeConfig, frame_id: str = "map") -> "MapBuilder":
        """A builder for ``cfg.map.path``: appends to the existing map there when ``cfg.map.resume`` (it must
        have been built with the same two models, else :class:`MapCompatibilityError`), else starts empty."""
        db = None
        path = Path(cfg.map.path) if cfg.map.path else None
        if cfg.map.resume and path is not None and (path.exists() or path.with_name(f"{path.name}.bak").exists()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                db = PlaceDatabase.load(path, expect={TEACHER_SPACE: teacher.sha256, STUDENT_SPACE: student.sha256})
        return cls(teacher, student, db, cfg.index, cfg.matcher, cfg.map.run, frame_id)

    def add_keyframe(self, stamp: float, pose: np.ndarray, image: np.ndarray, cloud: np.ndarray,
                     frame_id: str | None = None) -> KeyframeResult:
        """Embed one camera+LiDAR keyframe with both models, match it (teacher space, this run's recent
        keyframes excluded) and add it. ValueError (nothing added) for unusable inputs."""
        t0 = time.perf_counter()
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"keyframe pose must be a finite 4x4 transform, got {pose.shape}")
        teacher_desc = self.teacher(image=image, cloud=cloud)
        student_desc = self.student(image=image)
        match = self.matcher.match(teacher_desc, stamp, run=self.run)
        kf_id = self.db.add(stamp, pose, frame_id or self.frame_id, self.run,
                            {TEACHER_SPACE: teacher_desc, STUDENT_SPACE: student_desc})
        self.unsaved += 1
        return KeyframeResult(kf_id, float(stamp), pose, match, time.perf_counter() - t0)

    def save(self, path: str | Path) -> Path:
        """Write the map atomically (see :meth:`PlaceDatabase.save`)."""
        out = self.db.save(path)
        self.unsaved = 0
        return out


@dataclass
class LocalizationResult:
    match: MatchResult
    descriptor: np.ndarray
    seconds: float


class Localizer:
    """Camera-only place recognition: the student's descriptor matched against the map's student space."""

    def __init__(self, student: Embedder, db: PlaceDatabase, matcher: MatcherConfig | None = None,
                 run: str | None = None) -> None:
        if student.kind not in db.spaces:
            raise MapError(None, f"map has no {student.kind!r} space (has {sorted(db.spaces)})")
        self.student, self.db, self.run = student, db, run or None
        self.matcher = PlaceMatcher(db, student.kind, matcher)
        db.index(student.kind)  # build the index now, not at the first query

    @classmethod
    def load(cls, student: Embedder, map_path: str | Path, matcher: MatcherConfig | None = None,
             run: str | None = None) -> "Localizer":
        """Load ``map_path`` refusing a map whose student space was built with another model
        (:class:`MapCompatibilityError`) or that is corrupt (:class:`MapError`)."""
        if not str(map_path):
            raise MapError(None, "map.path is not set")
        db = PlaceDatabase.load(map_path, expect={student.kind: student.sha256})
        return cls(student, db, matcher, run)

    def localize(self, stamp: float, image: np.ndarray) -> LocalizationResult:
        """Match one camera frame. ValueError for an unusable image."""
        t0 = time.perf_counter()
        desc = self.student(image=image)
        match = self.matcher.match(desc, stamp, run=self.run)
        return LocalizationResult(match, desc, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# Offline map building (the CLI's `build-map`)
# --------------------------------------------------------------------------------------------------


def open_bag_sequence(path: str | Path, cfg: NodeConfig | None = None, run: str | None = None):
    """A :class:`~distilvpr_ros.data.rosbag_io.BagSequence` reading the node's topics, pairing camera and
    LiDAR within ``sync.slop_s`` and taking poses from odometry, as the mapping node does."""
    from .data.rosbag_io import BagSequence, BagTopics

    cfg = cfg or NodeConfig()
    t = cfg.topics

    def absolute(name: str) -> str:
        return name if name.startswith("/") else "/" + name

    compressed = t.camera_compressed or t.camera.rstrip("/") + "/compressed"
    topics = BagTopics(image=absolute(t.camera), compressed_image=absolute(compressed), cloud=absolute(t.lidar),
                       odom=absolute(t.odom))
    return BagSequence(Path(path), topics, run=run, pair_tolerance=cfg.sync.slop_s, pose_source="odom")


def build_map_from_sequence(sequence: Any, teacher_ckpt: str | Path, student_ckpt: str | Path,
                            out_map: str | Path, cfg: NodeConfig | None = None, progress: bool = False) -> dict:
    """Build (or, with ``cfg.map.resume``, extend) the map at ``out_map`` from one sequence, as the mapping
    node does live: keyframes gated by :class:`Keyframer` on the sequence's poses, teacher and student
    descriptors, teacher-space loop closures. Frames without a finite pose or a LiDAR cloud are skipped.

    ``sequence``: a :class:`~distilvpr_ros.data.sample.Sequence` (``BagSequence`` from
    :func:`open_bag_sequence`, a ``SyntheticRun``, ...). Returns a summary dict (counts, loop closures,
    the map path).
    """
    from tqdm import tqdm

    cfg = (cfg or NodeConfig()).model_copy(deep=True)
    cfg.map.path = str(out_map)
    if not cfg.map.run:
        cfg.map.run = str(getattr(sequence, "run", "") or default_run_name())
    teacher = Embedder.from_checkpoint(teacher_ckpt, TEACHER_SPACE, cfg.models.num_threads)
    student = Embedder.from_checkpoint(student_ckpt, STUDENT_SPACE, cfg.models.num_threads)
    builder = MapBuilder.open(teacher, student, cfg, cfg.frames.map)
    keyframer = Keyframer(cfg.keyframes)
    skipped = {"no_pose": 0, "no_cloud": 0, "invalid": 0}
    loops: list[list[float]] = []
    first = len(builder.db)
    for i in tqdm(range(len(sequence)), desc=f"build map {builder.run}", unit="frame", disable=not progress):
        pose, stamp = np.asarray(sequence.poses[i]), float(sequence.timestamps[i])
        if not np.isfinite(pose).all():
            skipped["no_pose"] += 1
            continue
        if not keyframer.check(pose, stamp).accept:
            continue
        sample = sequence[i]
        if sample.cloud is None:
            skipped["no_cloud"] += 1
            continue
        try:
            result = builder.add_keyframe(stamp, pose, sample.image, sample.cloud)
        except ValueError:
            skipped["invalid"] += 1
            continue
        keyframer.accept(pose, stamp)
        if result.match.loop_closure is not None:
            loops.append(list(result.match.loop_closure))
    builder.save(out_map)
    return {"map": str(out_map), "run": builder.run, "frames": len(sequence), "keyframes": len(builder.db) - first,
            "map_size": len(builder.db), "skipped": skipped, "loop_closures": loops}


# --------------------------------------------------------------------------------------------------
# Diagnostics helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class LatencyWindow:
    """Processing latencies and arrival times of the last ``size`` frames: rate and percentiles."""

    size: int = 200
    _latency: deque = field(default_factory=deque)
    _arrivals: deque = field(default_factory=deque)

    def add(self, latency_s: float, now: float | None = None) -> None:
        """Record one processed frame (``now``: a monotonic time in s; default ``time.monotonic()``)."""
        self._latency.append(float(latency_s))
        self._arrivals.append(time.monotonic() if now is None else float(now))
        while len(self._latency) > self.size:
            self._latency.popleft()
            self._arrivals.popleft()

    def __len__(self) -> int:
        return len(self._latency)

    def rate_hz(self, now: float | None = None) -> float:
        """Frames per second over the window (0 with fewer than two frames or when stale > 5 periods)."""
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1] - self._arrivals[0]
        now = time.monotonic() if now is None else now
        if span <= 0:
            return 0.0
        period = span / (len(self._arrivals) - 1)
        if now - self._arrivals[-1] > 5 * period + 1.0:
            return 0.0
        return 1.0 / period

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the latencies in ms (NaN when empty)."""
        if not self._latency:
            return math.nan
        return float(np.percentile(np.fromiter(self._latency, float), q) * 1e3)


def configure_threads(num_threads: int) -> None:
    """Keep inference to ``num_threads`` CPU threads (torch, and OpenMP for libraries loaded later)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
    try:
        import torch

        torch.set_num_threads(num_threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        pass
