"""Bird's-eye-view verification of LiDAR place matches: yaw by polar correlation, shift by image correlation.

A cheap 2D check of a descriptor's candidate (a few ms, no registration), meant to re-rank the top-k of
a global LiDAR descriptor on every query, before any 3D registration (:mod:`.lidar`) of the top-1.

* :func:`bev_view` rasterises a cloud (scan or submap, in its sensor frame) once into a :class:`BevView`:
  a Cartesian max-height image (``cell_m`` cells within ``extent_m`` of the sensor, a disc so that a
  rotation loses nothing) and a polar grid (``rings x sectors``, max height). Only the structure counts:
  points at or above ``min_z_m`` (sensor frame; the default drops the road surface of a sensor ~1.9 m
  above it); each cell holds ``(z_max - min_z_m) / (max_z_m - min_z_m)`` clipped to 1.
* :func:`yaw_hypotheses`: the circular cross-correlation of the two polar grids over the sectors (FFT,
  summed over the rings) gives the relative yaw up to a sector; its ``yaw_candidates`` highest distinct
  peaks are tried (a lateral offset or a partial overlap can move the true yaw off the first peak), and the
  best is refined by up to ``yaw_refine`` one-sector steps each way while the image score rises.
* :func:`BevVerifier.verify`: for each yaw, the query image is rotated by it and cross-correlated with the
  candidate's (FFT, zero-padded so shifts up to ``max_shift_m`` do not wrap); the score is the cosine
  similarity of the two images at the best shift (``sum(T * R_shifted) / (|T| |R|)``, in [0, 1] for these
  non-negative images), the best over the yaws. Accepted when ``score >= min_score``.

The transform is ``target_T_source`` (query points into the candidate's sensor frame): a rotation by
``yaw`` about z, then the shift ``(dx, dy)``; z is not estimated (0). :class:`BevMatch` has ``accepted``,
``reason`` and ``score``, so :func:`.rerank.rerank` takes it as a verifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import Field, model_validator

from ..config import Section


class BevVerificationConfig(Section):
    """Rasterisation and search of the bird's-eye-view check."""

    cell_m: float = Field(1.0, gt=0, description="side of a Cartesian image cell (m)")
    extent_m: float = Field(40.0, gt=0, description="radius of the image disc around the sensor (m)")
    min_z_m: float = Field(-1.4, description="points lower than this (sensor frame, m) are ground: dropped")
    max_z_m: float = Field(10.0, description="height mapped to 1; points above are clipped to it (m, sensor frame)")
    rings: int = Field(20, ge=1, description="polar grid rings over extent_m (yaw search)")
    sectors: int = Field(90, ge=8, description="polar grid sectors over 360 degrees: the yaw resolution")
    yaw_candidates: int = Field(3, ge=1, description="distinct yaw peaks of the polar correlation tried")
    yaw_refine: int = Field(4, ge=0, description="hill-climbing steps of one sector from the best peak, scored on "
                            "the images (an offset sensor biases the polar peak by a few sectors)")
    max_shift_m: float = Field(20.0, ge=0, description="largest translation searched (m, each axis)")
    blur_cells: float = Field(1.0, ge=0, description="Gaussian sigma applied to the images (cells; 0: none)")
    min_score: float = Field(0.3, ge=0, le=1, description="accept: image cosine at the best yaw and shift")

    @model_validator(mode="after")
    def _heights(self):
        if self.max_z_m <= self.min_z_m:
            raise ValueError(f"max_z_m ({self.max_z_m}) must be above min_z_m ({self.min_z_m})")
        return self

    @property
    def cells(self) -> int:
        return int(np.ceil(2 * self.extent_m / self.cell_m))


@dataclass
class BevView:
    """A cloud rasterised for :class:`BevVerifier` (computed once per scan or submap)."""

    image: np.ndarray  # cells x cells float32, row = x, column = y (cell centres at (k + 0.5) * cell - extent)
    polar: np.ndarray  # rings x sectors float32; sector j starts at azimuth -pi + j * 2 pi / sectors
    norm: float  # Frobenius norm of image


@dataclass
class BevMatch:
    """Outcome of the check of a query view against a candidate's."""

    accepted: bool
    reason: str  # why it was rejected; "" when accepted
    score: float = 0.0  # image cosine at the best yaw and shift
    yaw: float = 0.0  # rad, query -> candidate
    shift: tuple[float, float] = (0.0, 0.0)  # (dx, dy) m, after the rotation
    transform: np.ndarray | None = None  # target_T_source (4x4)


def _structure(cloud, cfg: BevVerificationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and normalised height (float64) of the finite structure points within the disc."""
    if cloud is None or len(cloud) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    pts = np.asarray(cloud)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"expected an N x C cloud with C >= 3, got shape {pts.shape}")
    x, y, z = (pts[:, k].astype(np.float64) for k in range(3))
    keep = np.isfinite(x) & np.isfinite(y) & (z >= cfg.min_z_m) & (x * x + y * y < cfg.extent_m ** 2)
    height = np.clip((z[keep] - cfg.min_z_m) / (cfg.max_z_m - cfg.min_z_m), 0.0, 1.0)
    return x[keep], y[keep], height


def structure_points(cloud, cfg: BevVerificationConfig | None = None, reach_m: float | None = None) -> np.ndarray:
    """What :func:`bev_view` needs of a scan, kept once per scan before submaps are assembled: its structure
    points (``min_z_m <= z``, finite) within ``reach_m`` (planar; ``extent_m`` when None), one per column of
    ``cell_m / 2`` (the highest). ``M x 3`` float32 in the scan's frame."""
    cfg = cfg or BevVerificationConfig()
    if cloud is None or len(cloud) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    pts = np.asarray(cloud)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"expected an N x C cloud with C >= 3, got shape {pts.shape}")
    reach = cfg.extent_m if reach_m is None else reach_m
    xyz = pts[:, :3].astype(np.float32)
    keep = np.isfinite(xyz).all(1) & (xyz[:, 2] >= cfg.min_z_m) & (xyz[:, 0] ** 2 + xyz[:, 1] ** 2 < reach ** 2)
    xyz = xyz[keep]
    if not len(xyz):
        return xyz
    keys = np.floor(xyz[:, :2] / (cfg.cell_m / 2)).astype(np.int64)
    keys -= keys.min(0)
    flat = keys[:, 0] * (keys[:, 1].max() + 1) + keys[:, 1]
    order = np.lexsort((-xyz[:, 2], flat))  # by column, highest first
    first = np.ones(len(order), bool)
    first[1:] = flat[order][1:] != flat[order][:-1]
    return np.ascontiguousarray(xyz[order[first]])


def bev_view(cloud, cfg: BevVerificationConfig | None = None) -> BevView:
    """Rasterise a cloud (``N x C``, x y z first, sensor frame) into the check's images (module doc)."""
    cfg = cfg or BevVerificationConfig()
    n = cfg.cells
    x, y, h = _structure(cloud, cfg)
    image = np.zeros(n * n, dtype=np.float32)
    polar = np.zeros(cfg.rings * cfg.sectors, dtype=np.float32)
    if len(x):
        row = np.clip(((x + cfg.extent_m) / cfg.cell_m).astype(np.int64), 0, n - 1)
        col = np.clip(((y + cfg.extent_m) / cfg.cell_m).astype(np.int64), 0, n - 1)
        np.maximum.at(image, row * n + col, h.astype(np.float32))
        ring = np.minimum((np.hypot(x, y) * (cfg.rings / cfg.extent_m)).astype(np.int64), cfg.rings - 1)
        sector = ((np.arctan2(y, x) + np.pi) * (cfg.sectors / (2 * np.pi))).astype(np.int64) % cfg.sectors
        np.maximum.at(polar, ring * cfg.sectors + sector, h.astype(np.float32))
    image = image.reshape(n, n)
    if cfg.blur_cells > 0:
        image = cv2.GaussianBlur(image, (0, 0), cfg.blur_cells)
    return BevView(image, polar.reshape(cfg.rings, cfg.sectors), float(np.linalg.norm(image)))


def yaw_hypotheses(query: np.ndarray, candidate: np.ndarray, count: int) -> np.ndarray:
    """Yaws (rad) that turn the query's polar grid onto the candidate's, best first (module doc).

    The correlation ``c[s] = sum_r sum_j candidate[r, j] * query[r, j - s]`` peaks where the candidate is
    the query rolled by ``s`` sectors, i.e. where a point of the query at azimuth ``a`` is seen by the
    candidate at ``a + s * 2 pi / sectors``: the yaw is ``s * 2 pi / sectors``. Peaks are local maxima
    (circularly), highest first; fewer than ``count`` when there are fewer.
    """
    sectors = query.shape[1]
    corr = np.fft.irfft((np.fft.rfft(candidate, axis=1) * np.conj(np.fft.rfft(query, axis=1))).sum(0), n=sectors)
    peaks = np.flatnonzero((corr >= np.roll(corr, 1)) & (corr >= np.roll(corr, -1)))
    peaks = peaks[np.argsort(-corr[peaks], kind="stable")][:count]
    if not len(peaks):
        peaks = np.array([int(np.argmax(corr))])
    return peaks * (2 * np.pi / sectors)


def rotate_image(image: np.ndarray, yaw: float, cell_m: float, extent_m: float) -> np.ndarray:
    """The image of the same points rotated by ``yaw`` about the sensor (z up; rows x, columns y)."""
    c = extent_m / cell_m - 0.5  # pixel coordinate of the sensor
    cos, sin = np.cos(yaw), np.sin(yaw)
    # inverse map: destination (u = column = y, v = row = x) -> source, i.e. rotate the destination by -yaw
    M = np.array([[cos, -sin, c - c * cos + c * sin],
                  [sin, cos, c - c * sin - c * cos]], dtype=np.float64)
    n = image.shape[0]
    return cv2.warpAffine(image, M, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class BevVerifier:
    """Checks a query view against candidate views with one configuration (module doc)."""

    def __init__(self, config: BevVerificationConfig | None = None):
        self.config = config or BevVerificationConfig()
        n = self.config.cells
        self._shift_cells = int(min(np.ceil(self.config.max_shift_m / self.config.cell_m), n - 1))
        self._size = cv2.getOptimalDFTSize(n + self._shift_cells)

    def view(self, cloud) -> BevView:
        return bev_view(cloud, self.config)

    def _spectrum(self, image: np.ndarray) -> np.ndarray:
        """OpenCV DFT (packed, float32) of the image zero-padded to the correlation size."""
        pad = self._size - image.shape[0]
        return cv2.dft(cv2.copyMakeBorder(image, 0, pad, 0, pad, cv2.BORDER_CONSTANT, value=0))

    def _correlate(self, ft: np.ndarray, source: np.ndarray) -> tuple[float, int, int]:
        """Best ``sum_p target(p) source(p - t)`` over shifts ``|t| <= max_shift`` per axis, and ``t`` (rows, cols);
        ``ft`` is the target's :meth:`_spectrum`."""
        s = self._shift_cells
        corr = cv2.idft(cv2.mulSpectrums(ft, self._spectrum(source), 0, conjB=True),
                        flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
        window = np.roll(corr, (s, s), axis=(0, 1))[:2 * s + 1, :2 * s + 1]  # shift t sits at (t + s)
        r, c = divmod(int(np.argmax(window)), 2 * s + 1)
        return float(window[r, c]), r - s, c - s

    def verify(self, query: BevView, candidate: BevView) -> BevMatch:
        """Best yaw and shift of ``query`` onto ``candidate`` and the image cosine there (module doc)."""
        cfg = self.config
        if query.norm <= 0 or candidate.norm <= 0:
            return BevMatch(False, "no structure in the query or the candidate")
        ft = self._spectrum(candidate.image)

        def at(yaw: float) -> tuple[float, float, float, float]:
            rotated = rotate_image(query.image, yaw, cfg.cell_m, cfg.extent_m)
            value, dr, dc = self._correlate(ft, rotated)
            return value / (candidate.norm * query.norm), float(yaw), dr * cfg.cell_m, dc * cfg.cell_m

        best = max((at(yaw) for yaw in yaw_hypotheses(query.polar, candidate.polar, cfg.yaw_candidates)),
                   key=lambda b: b[0])
        step = 2 * np.pi / cfg.sectors
        for direction in (1, -1):  # hill-climb one sector at a time while the image score rises
            for _ in range(cfg.yaw_refine):
                trial = at(best[1] + direction * step)
                if trial[0] <= best[0]:
                    break
                best = trial
        score, yaw, dx, dy = best
        yaw = float(np.arctan2(np.sin(yaw), np.cos(yaw)))
        T = np.eye(4)
        T[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
        T[:2, 3] = dx, dy
        accepted = score >= cfg.min_score
        reason = "" if accepted else f"low bird's-eye-view overlap (score {score:.3f} < {cfg.min_score})"
        return BevMatch(accepted, reason, float(score), yaw, (float(dx), float(dy)), T)
