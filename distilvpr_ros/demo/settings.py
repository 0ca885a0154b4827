"""The demo's settings: one section (``quick`` / ``default``) of ``config/demo.yaml``, typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config import Section, load_yaml
from ..utils.package_data import share_path

Region = Literal["train", "val", "test", "all"]


class MappingSettings(Section):
    """Which bag the mapping node builds the map from, and how it is played."""

    run: str = Field(description="run whose bag is mapped (camera + LiDAR + odometry)")
    region: Region = Field("test", description="only this region's frames (a trimmed bag), or all")
    rate: float = Field(2.0, gt=0, description="playback speed, x real time")
    max_gap_s: float = Field(1.0, gt=0, description="pauses in the bag longer than this are shortened to it (s)")
    odom_lead_s: float = Field(0.0, ge=0, description="odometry is sent this much bag time early (ros/bag_player.py)")
    max_unpaired: int | None = Field(
        None, ge=0, description="hold each camera frame until the node has paired all but this many of the frames "
                                "before it (None: play on schedule; ros/bag_player.py)")
    node: dict[str, Any] = Field(default_factory=dict, description="NodeConfig overrides of the mapping node")


class LocalizationSettings(Section):
    """Which bag the localization node is replayed on, and how."""

    run: str = Field(description="run whose camera is replayed (another condition than the map's)")
    region: Region = Field("test", description="only this region's frames (a trimmed bag), or all")
    hz: float = Field(10.0, gt=0, description="frames per second played")
    node: dict[str, Any] = Field(default_factory=dict, description="NodeConfig overrides of the localization node")


class VerifierSettings(Section):
    """The descriptor head of CNN camera verification, trained on the world when the localization node uses
    ``verification.camera.features: cnn`` without a ``cnn_head`` of its own (else the stage does nothing)."""

    region: Region = Field("train", description="frames the head is trained on (never the region reported on)")
    epochs: int = Field(3, ge=1, description="training epochs over the region's pairs")
    step: int = Field(1, ge=1, description="every n-th query frame makes a pair")
    seed: int = Field(0, description="seed of the head's initialisation and pair order")


class EvaluateSettings(Section):
    region: Literal["train", "val", "test"] = Field("test", description="region of the offline evaluation")


class CorridorSettings(Section):
    root: Path | None = Field(None, description="VPR-Bench Corridor folder (None: ../shared/data/corridor)")


class DemoSettings(Section):
    """One section of ``config/demo.yaml``."""

    world: str = Field(description="synthetic world preset: tiny | default | large")
    teacher: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides of the teacher")
    student: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides of the student")
    mapping: MappingSettings
    localization: LocalizationSettings
    verifier: VerifierSettings = Field(default_factory=VerifierSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    corridor: CorridorSettings = Field(default_factory=CorridorSettings)


def default_demo_config() -> Path:
    """The shipped ``config/demo.yaml``: from the source checkout, else where it was installed
    (``share/distilvpr_ros/config/demo.yaml``; see :mod:`distilvpr_ros.utils.package_data`)."""
    return share_path("config", "demo.yaml")


def load_demo_settings(path: str | Path | None, section: str) -> DemoSettings:
    """``section`` (``quick`` / ``default``) of the demo YAML (default: :func:`default_demo_config`)."""
    path = Path(path) if path is not None else default_demo_config()
    data = load_yaml(path)
    if section not in data:
        raise ValueError(f"{path}: no '{section}:' section (has {sorted(data)})")
    try:
        return DemoSettings.model_validate(data[section])
    except ValueError as e:
        raise ValueError(f"{path}, section '{section}': {e}") from None
