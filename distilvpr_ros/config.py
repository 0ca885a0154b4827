"""One typed configuration schema shared by the CLI, YAML files and (later) ROS parameters.

Each section is a pydantic model; YAML files mirror the nesting (``ground_truth.positive_m``).
Sections grow as the package does; unknown keys are rejected so typos fail loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: A retrieval is correct within this distance (m): the protocol's radius, shared by evaluation and replay.
CORRECT_M = 25.0


class GroundTruthConfig(Section):
    """Place ground truth from poses (PointNetVLAD / DistilVPR protocol)."""

    positive_m: float = Field(10.0, gt=0, description="training positives: within this distance (m)")
    non_negative_m: float = Field(
        50.0, gt=0, description="training non-negatives: within this distance (m); farther = negative"
    )
    correct_m: float = Field(CORRECT_M, gt=0, description="a retrieval is correct within this distance (m)")

    @model_validator(mode="after")
    def _ordered(self) -> "GroundTruthConfig":
        if self.non_negative_m < self.positive_m:
            raise ValueError("non_negative_m must be >= positive_m")
        return self


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a clear error names the file when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def dump_config(model: BaseModel, path: str | Path) -> None:
    """Write a config model as YAML (used to record what a run used)."""
    with open(path, "w") as f:
        yaml.safe_dump(model.model_dump(mode="json"), f, sort_keys=False)
