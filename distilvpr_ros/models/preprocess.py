"""numpy-side input preparation shared by training, the CLI and the ROS nodes (no torch needed).

* ``image_to_tensor``: uint8 RGB ``H x W x 3`` → float32 ``3 x H x W`` in [0, 1] at the network size.
  The encoders normalise internally, so this is all deployment does before torch or onnxruntime.
* ``cloud_to_bev``: ``N x C`` cloud (x, y, z, intensity, ...) → float32 BEV pseudo-image
  ``3 x cells x cells``; the same maths as ``lidar.bev_from_points`` (torch), tested equal, so BEVs can
  be precomputed per sample in the data pipeline. Given a :class:`~.config.PolarConfig` it returns the polar
  grid of ``cloud_to_polar`` instead (``channels x rings x sectors``), so every caller that rasterises a
  model's ``input_spec.bev`` feeds the polar encoder and the classical descriptors without change.
* ``cloud_to_polar``: ``N x C`` cloud → float32 polar bird's-eye view ``channels x rings x sectors``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .config import BevConfig, PolarConfig

PIXEL_MAX = 255.0
X, Y, Z, INTENSITY = 0, 1, 2, 3


def image_to_tensor(rgb: np.ndarray, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """Resize an RGB uint8 image to ``size`` = (W, H) and return float32 CHW in [0, 1].

    Shrinking uses ``cv2.INTER_AREA`` (anti-aliased); enlarging uses ``cv2.INTER_LINEAR``, because area
    interpolation degenerates to near-nearest-neighbour when upsampling.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    width, height = size
    if (rgb.shape[1], rgb.shape[0]) != (width, height):
        shrinking = width * height < rgb.shape[0] * rgb.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (width, height), interpolation=interpolation)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(PIXEL_MAX)


def bev_cell_indices(points: np.ndarray, cfg: BevConfig) -> tuple[np.ndarray, np.ndarray]:
    """Flat cell index (row * cells + col) of every usable point and the mask of usable points.

    A point is usable when x, y, z are finite, it is at least ``min_range_m`` from the sensor (in the
    plane) and inside the grid. Computed in float32 like the torch path so both agree bit for bit.
    """
    xyz = points[:, :3].astype(np.float32, copy=False)
    finite = np.isfinite(xyz).all(axis=1)
    xyz = np.where(finite[:, None], xyz, np.float32(0.0))
    planar_sq = xyz[:, X] * xyz[:, X] + xyz[:, Y] * xyz[:, Y]
    row = np.floor((xyz[:, X] + np.float32(cfg.extent_m)) / np.float32(cfg.cell_m))
    col = np.floor((xyz[:, Y] + np.float32(cfg.extent_m)) / np.float32(cfg.cell_m))
    usable = (
        finite
        & (planar_sq >= np.float32(cfg.min_range_m**2))
        & (row >= 0)
        & (row < cfg.cells)
        & (col >= 0)
        & (col < cfg.cells)
    )
    flat = (row[usable] * cfg.cells + col[usable]).astype(np.int64)
    return flat, usable


def cloud_to_bev(cloud: np.ndarray, cfg: BevConfig | PolarConfig | None = None) -> np.ndarray:
    """BEV pseudo-image of one cloud: float32 ``3 x cells x cells`` (channels ``config.BEV_CHANNELS``).

    With a :class:`~.config.PolarConfig` this is :func:`cloud_to_polar` (``channels x rings x sectors``).

    * max height: ``(z - z_min) / (z_max - z_min)`` clipped to [0, 1], maximum over the cell's points;
    * log density: ``log1p(count) / log1p(density_saturation)`` clipped to [0, 1];
    * mean intensity: mean of ``intensity / intensity_max`` clipped to [0, 1] (non-finite → 0).

    Empty cells are 0 in every channel; an empty or ``None`` cloud gives an all-zero BEV.
    """
    if isinstance(cfg, PolarConfig):
        return cloud_to_polar(cloud, cfg)
    cfg = cfg or BevConfig()
    bev = np.zeros((3, cfg.cells * cfg.cells), dtype=np.float32)
    if cloud is None or len(cloud) == 0:
        return bev.reshape(3, cfg.cells, cfg.cells)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"expected an N x C cloud with C >= 3, got shape {cloud.shape}")
    flat, usable = bev_cell_indices(cloud, cfg)
    if flat.size == 0:
        return bev.reshape(3, cfg.cells, cfg.cells)
    kept = cloud[usable].astype(np.float32, copy=False)
    height, intensity = normalised_height_intensity(kept, cfg)
    count = np.bincount(flat, minlength=cfg.cells * cfg.cells).astype(np.float32)
    np.maximum.at(bev[0], flat, height)
    bev[1] = np.minimum(np.log1p(count) / np.float32(np.log1p(cfg.density_saturation)), np.float32(1.0))
    intensity_sum = np.bincount(flat, weights=intensity, minlength=cfg.cells * cfg.cells).astype(np.float32)
    bev[2] = intensity_sum / np.maximum(count, np.float32(1.0))
    return bev.reshape(3, cfg.cells, cfg.cells)


def normalised_height_intensity(points: np.ndarray, cfg: BevConfig | PolarConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-point height and intensity mapped to [0, 1] (float32; intensity 0 when absent or non-finite)."""
    span = np.float32(cfg.z_max_m - cfg.z_min_m)
    height = np.clip((points[:, Z] - np.float32(cfg.z_min_m)) / span, np.float32(0.0), np.float32(1.0))
    if points.shape[1] > INTENSITY:
        raw = points[:, INTENSITY]
        intensity = np.clip(np.where(np.isfinite(raw), raw, 0) / np.float32(cfg.intensity_max), 0.0, 1.0)
    else:
        intensity = np.zeros(len(points), dtype=np.float32)
    return height.astype(np.float32), intensity.astype(np.float32)


def polar_cell_indices(points: np.ndarray, cfg: PolarConfig) -> tuple[np.ndarray, np.ndarray]:
    """Flat cell index (ring * sectors + sector) of every usable point and the mask of usable points.

    A point is usable when x, y, z are finite and its planar range is in ``[min_range_m, max_range_m)``.
    The azimuth is ``atan2(y, x)``; sector ``j`` starts at ``-pi + j * 2 pi / sectors`` (config doc).
    """
    x, y = (np.asarray(points[:, k], dtype=np.float64) for k in (X, Y))
    planar = np.sqrt(x * x + y * y)  # NaN or inf for non-finite x, y: fails both comparisons below
    usable = (planar >= cfg.min_range_m) & (planar < cfg.max_range_m) & np.isfinite(points[:, Z])
    ring = np.minimum((planar[usable] * (1.0 / cfg.ring_m)).astype(np.int64), cfg.rings - 1)
    azimuth = np.arctan2(y[usable], x[usable]) + np.pi
    sector = (azimuth * (cfg.sectors / (2.0 * np.pi))).astype(np.int64) % cfg.sectors
    return ring * cfg.sectors + sector, usable


def cloud_to_polar(cloud: np.ndarray | None, cfg: PolarConfig | None = None) -> np.ndarray:
    """Polar bird's-eye view of one cloud: float32 ``channels x rings x sectors`` (``cfg.channels``).

    * max height: ``(z - z_min) / (z_max - z_min)`` clipped to [0, 1], maximum over the cell's points
      (a cell whose points all lie at or below ``z_min`` reads 0, like an empty one);
    * ``band_k``: 1 when a point of the cell has ``height_bands_m[k] <= z < height_bands_m[k + 1]``;
    * log density and mean intensity as in :func:`cloud_to_bev`.

    An empty or ``None`` cloud gives zeros.
    """
    cfg = cfg or PolarConfig()
    channels, cells = len(cfg.channels), cfg.rings * cfg.sectors
    grid = np.zeros((channels, cells), dtype=np.float32)
    if cloud is None or len(cloud) == 0:
        return grid.reshape(cfg.shape)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"expected an N x C cloud with C >= 3, got shape {cloud.shape}")
    flat, usable = polar_cell_indices(cloud, cfg)
    if flat.size == 0:
        return grid.reshape(cfg.shape)
    z = np.asarray(cloud[:, Z], dtype=np.float32)[usable]
    height = np.clip((z - np.float32(cfg.z_min_m)) * np.float32(1.0 / (cfg.z_max_m - cfg.z_min_m)), 0.0, 1.0)
    np.maximum.at(grid[0], flat, height)
    channel = 1
    edges = cfg.height_bands_m
    if len(edges) > 1:
        band = np.searchsorted(np.asarray(edges, dtype=np.float32), z, side="right") - 1
        inside = (band >= 0) & (band < len(edges) - 1)
        grid[1:len(edges)].reshape(-1)[band[inside] * cells + flat[inside]] = 1.0
        channel += len(edges) - 1
    if cfg.density or cfg.intensity:
        count = np.bincount(flat, minlength=cells).astype(np.float32)
    if cfg.density:
        grid[channel] = np.minimum(np.log1p(count) / np.float32(np.log1p(cfg.density_saturation)), np.float32(1.0))
        channel += 1
    if cfg.intensity and cloud.shape[1] > INTENSITY:
        raw = np.asarray(cloud[:, INTENSITY], dtype=np.float32)[usable]
        intensity = np.clip(np.where(np.isfinite(raw), raw, 0) / np.float32(cfg.intensity_max), 0.0, 1.0)
        intensity_sum = np.bincount(flat, weights=intensity, minlength=cells).astype(np.float32)
        grid[channel] = intensity_sum / np.maximum(count, np.float32(1.0))
    return grid.reshape(cfg.shape)
