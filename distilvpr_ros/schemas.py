"""Every configuration schema of the package, in one place.

Each schema is defined beside the code it configures (so low layers need not import high ones); this
module only names them all: ``from distilvpr_ros.schemas import NodeConfig, TrainConfig, WorldConfig``.
Names resolve on first use, so importing one schema does not load torch or faiss for the others.

==================  =======================================================  ===================================
schema              read by                                                  YAML files
==================  =======================================================  ===================================
NodeConfig          mapping / localization nodes (as ROS parameters),        ``config/mapping.yaml``,
                    ``distilvpr build-map``, ``distilvpr replay``            ``config/localization.yaml``
TrainConfig         ``distilvpr train-teacher``, ``distilvpr distill``       ``config/mutualvpr.yaml``
WorldConfig         ``distilvpr generate`` (on top of a preset)              ``config/world_example.yaml``
DemoSettings        ``distilvpr demo`` (``quick:`` / ``default:`` sections)  ``config/demo.yaml``
PoseGraphConfig     ``distilvpr pose-graph``                                 (flags only)
SlamEvalConfig      ``distilvpr slam-eval``                                  (flags only)
AlignmentConfig     ``distilvpr merge-maps``, ``build-map --anchor-to-map``  (flags only)
==================  =======================================================  ===================================

The other names are their sections (``NodeConfig.matcher`` is a :class:`MatcherConfig`, ...). Every
section refuses unknown keys and non-finite numbers (:class:`distilvpr_ros.config.Section`);
``distilvpr <command> --dump-config`` prints the effective values of a command.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The schema each command or node reads as a whole.
TOP_LEVEL = ("NodeConfig", "TrainConfig", "WorldConfig", "DemoSettings")

#: Schema name -> the module that defines it.
_WHERE = {
    # shared
    "Section": "distilvpr_ros.config",
    "GroundTruthConfig": "distilvpr_ros.config",
    # nodes, build-map, replay
    "NodeConfig": "distilvpr_ros.pipeline.config",
    "TopicsConfig": "distilvpr_ros.pipeline.config",
    "FramesConfig": "distilvpr_ros.pipeline.config",
    "QosConfig": "distilvpr_ros.pipeline.config",
    "SyncConfig": "distilvpr_ros.pipeline.config",
    "KeyframeConfig": "distilvpr_ros.pipeline.config",
    "ModelsConfig": "distilvpr_ros.pipeline.config",
    "MapConfig": "distilvpr_ros.pipeline.config",
    "DiagnosticsConfig": "distilvpr_ros.pipeline.config",
    "ViewsConfig": "distilvpr_ros.pipeline.config",
    "CalibrationConfig": "distilvpr_ros.pipeline.config",
    "VerificationConfig": "distilvpr_ros.pipeline.config",
    "MatcherConfig": "distilvpr_ros.mapping.matcher",
    "IndexConfig": "distilvpr_ros.mapping.index",
    "ImageQualityConfig": "distilvpr_ros.pipeline.image_quality",
    # verification
    "CameraVerificationConfig": "distilvpr_ros.verification.config",
    "LidarVerificationConfig": "distilvpr_ros.verification.config",
    "RerankConfig": "distilvpr_ros.verification.config",
    "BevVerificationConfig": "distilvpr_ros.verification.bev",
    # training
    "TrainConfig": "distilvpr_ros.training.config",
    "DataConfig": "distilvpr_ros.training.config",
    "OptimConfig": "distilvpr_ros.training.config",
    "LossConfig": "distilvpr_ros.training.config",
    "AugmentConfig": "distilvpr_ros.training.config",
    "FeatureCacheConfig": "distilvpr_ros.training.config",
    "ClassifyConfig": "distilvpr_ros.training.config",
    "DistillConfig": "distilvpr_ros.training.config",
    "TeacherConfig": "distilvpr_ros.training.config",
    "ModelConfig": "distilvpr_ros.models.config",
    "BevConfig": "distilvpr_ros.models.config",
    "PolarConfig": "distilvpr_ros.models.config",
    "SubmapConfig": "distilvpr_ros.data.submap",
    # synthetic world
    "WorldConfig": "distilvpr_ros.data.world.config",
    "Condition": "distilvpr_ros.data.world.config",
    "RunConfig": "distilvpr_ros.data.world.config",
    "TownConfig": "distilvpr_ros.data.world.config",
    "CameraConfig": "distilvpr_ros.data.world.config",
    "LidarConfig": "distilvpr_ros.data.world.config",
    "TrafficConfig": "distilvpr_ros.data.world.config",
    "RenderConfig": "distilvpr_ros.data.world.config",
    "RegionConfig": "distilvpr_ros.data.world.config",
    "GeoConfig": "distilvpr_ros.data.world.config",
    "OdometryDriftConfig": "distilvpr_ros.data.world.config",
    # pose graph
    "PoseGraphConfig": "distilvpr_ros.slam.pose_graph",
    "SlamEvalConfig": "distilvpr_ros.slam.evaluate",
    # multi-session maps
    "AlignmentConfig": "distilvpr_ros.pipeline.multisession",
    # demo
    "DemoSettings": "distilvpr_ros.demo.settings",
    "MappingSettings": "distilvpr_ros.demo.settings",
    "LocalizationSettings": "distilvpr_ros.demo.settings",
    "EvaluateSettings": "distilvpr_ros.demo.settings",
    "VerifierSettings": "distilvpr_ros.demo.settings",
    "CorridorSettings": "distilvpr_ros.demo.settings",
}

__all__ = ["TOP_LEVEL", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
