"""Training augmentations of DistilVPR (``reference/distilvpr.md`` §4), in plain torch/numpy.

Every random draw comes from the ``numpy.random.Generator`` passed in, so an augmentation is a pure
function of (input, generator state); the data pipeline seeds one generator per (seed, epoch, element).

Images (``ImageAugment``, float ``3 x H x W`` in [0, 1], before the encoder's own normalisation):

* colour jitter as torchvision's ``ColorJitter(0.2, 0.2, 0.2, 0.1)``: brightness, contrast, saturation
  factors U(1 - v, 1 + v), hue shift U(-h, h) (fraction of a turn), applied in a random order; contrast
  blends with the mean grey level, saturation with the grey image (ITU-R 601 luma weights);
* random erasing as ``RandomErasing(p=0.5, scale=(0.1, 0.4), ratio=(0.3, 3.3), value=0)``: up to ten
  tries to fit a box of that area fraction and log-uniform aspect ratio; a box that never fits erases
  nothing.

Point clouds (``PointAugment``, ``N x C`` float32, columns x, y, z, ...; only x, y, z change), the Oxford
set in this order:

1. rotation about z, uniform ±5°;
2. flip: x → -x with p 0.25, else y → -y with p 0.25 (of the total), else none;
3. jitter N(0, σ²) per coordinate clipped at ±clip;
4. removal of a random fraction U(0, 0.1) of the points;
5. translation N(0, σ²) per axis (the whole cloud);
6. with p 0.4, removal of the points inside a random vertical block: area U(0.02, 0.33) of the cloud's
   x-y bounding box, aspect U(0.3, 3.3), placed uniformly inside the box.

Two more, off by default, make a LiDAR branch robust to another lane and to fog (issue 11; the
polar encoder trains with them): before step 1, a **lateral shift** of the sensor by
U(-``lateral_shift_m``, ``lateral_shift_m``) along y (points move the other way); after step 6, with
p ``range_cut_p``, a **range cut** dropping every point farther (planar) than U(``range_cut_m``). Any
yaw is ``rotate_deg: 180``; random dropout is step 4 (``remove_max``).

Units: the reference works on clouds normalised to about [-1, 1]; ours are in metres, so jitter and
translation are multiplied by ``unit_m`` (default 40 m, the BEV half extent: jitter σ 4 cm clipped at
8 cm, translation σ 0.4 m). Removed points are *dropped*; the official code moves them to the origin,
which its voxeliser sees as one point, while our BEV would see the translated pile as a dense cell.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .appearance import AppearanceAugment
from .config import AugmentConfig

#: ITU-R 601 luma weights (what torchvision's grayscale uses).
LUMA = (0.2989, 0.587, 0.114)
ERASE_TRIES = 10


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """``1 x H x W`` luma of a ``3 x H x W`` RGB image."""
    r, g, b = image.unbind(0)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(0)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """``3 x H x W`` RGB in [0, 1] → HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = image.unbind(0)
    value, _ = image.max(dim=0)
    minimum, _ = image.min(dim=0)
    chroma = value - minimum
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), torch.zeros_like(value))
    safe = chroma.clamp(min=1e-12)
    hue = torch.where(
        value == r, ((g - b) / safe) % 6.0, torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value])


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv``."""
    hue, saturation, value = image.unbind(0)
    sector = hue * 6.0
    channel = torch.stack([(5.0 + sector) % 6.0, (3.0 + sector) % 6.0, (1.0 + sector) % 6.0])
    weight = (torch.minimum(channel, 4.0 - channel)).clamp(0.0, 1.0)
    return value - value * saturation * weight


class ImageAugment:
    """Colour jitter, the night/rain appearance transforms (``training.appearance``; off by default) and
    random erasing on one ``3 x H x W`` float image (see the module doc)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.appearance = AppearanceAugment(cfg)

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        image = self.color_jitter(image, rng)
        if self.appearance.enabled:
            image = self.appearance(image, rng)
        return self.erase(image, rng)

    def color_jitter(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        brightness = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        saturation = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        hue = rng.uniform(-cfg.hue, cfg.hue)
        for op in rng.permutation(4):
            if op == 0:
                image = (image * brightness).clamp(0.0, 1.0)
            elif op == 1:
                image = _blend(image, grayscale(image).mean(), contrast)
            elif op == 2:
                image = _blend(image, grayscale(image), saturation)
            elif hue != 0.0:
                hsv = rgb_to_hsv(image)
                hsv[0] = (hsv[0] + hue) % 1.0
                image = hsv_to_rgb(hsv)
        return image

    def erase(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        if rng.random() >= cfg.erase_p:
            return image
        _, height, width = image.shape
        log_ratio = (math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1]))
        for _ in range(ERASE_TRIES):
            area = height * width * rng.uniform(*cfg.erase_scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < height and 0 < w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                image = image.clone()
                image[:, top : top + h, left : left + w] = 0.0
                return image
        return image


def _blend(image: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


class PointAugment:
    """The Oxford point augmentations on one ``N x C`` cloud in metres (see the module doc)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @property
    def max_shift_m(self) -> float:
        """Largest distance (m) a point's planar range can change by (translation at 5σ plus jitter)."""
        cfg = self.cfg
        oxford = (5.0 * math.sqrt(2.0) * cfg.translate_sigma + math.sqrt(2.0) * cfg.jitter_clip) * cfg.unit_m
        return oxford + cfg.lateral_shift_m

    def __call__(self, cloud: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        points = np.array(cloud, dtype=np.float32, copy=True)
        xyz = points[:, :3].astype(np.float64)

        if cfg.lateral_shift_m > 0:
            xyz[:, 1] -= rng.uniform(-cfg.lateral_shift_m, cfg.lateral_shift_m)

        theta = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        c, s = math.cos(theta), math.sin(theta)
        xyz[:, :2] = xyz[:, :2] @ np.array([[c, s], [-s, c]])

        draw = rng.random()
        if draw < cfg.flip_p[0]:
            xyz[:, 0] = -xyz[:, 0]
        elif draw < cfg.flip_p[0] + cfg.flip_p[1]:
            xyz[:, 1] = -xyz[:, 1]

        sigma, clip = cfg.jitter_sigma * cfg.unit_m, cfg.jitter_clip * cfg.unit_m
        xyz += np.clip(rng.normal(0.0, sigma, size=xyz.shape), -clip, clip)

        keep = np.ones(len(xyz), dtype=bool)
        removed = int(len(xyz) * rng.uniform(0.0, cfg.remove_max))
        keep[rng.choice(len(xyz), size=removed, replace=False)] = False

        xyz += rng.normal(0.0, cfg.translate_sigma * cfg.unit_m, size=(1, 3))

        if rng.random() < cfg.block_p and keep.any():
            keep &= ~self._block_mask(xyz, keep, rng)

        if cfg.range_cut_p > 0 and rng.random() < cfg.range_cut_p:
            keep &= np.hypot(xyz[:, 0], xyz[:, 1]) <= rng.uniform(*cfg.range_cut_m)

        points[:, :3] = xyz
        return points[keep]

    def _block_mask(self, xyz: np.ndarray, keep: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        low, high = xyz[keep, :2].min(axis=0), xyz[keep, :2].max(axis=0)
        span = high - low
        area = rng.uniform(*cfg.block_scale) * span[0] * span[1]
        aspect = rng.uniform(*cfg.block_ratio)
        size_y, size_x = math.sqrt(area * aspect), math.sqrt(area / aspect)
        x0 = low[0] + rng.random() * (span[0] - size_x)
        y0 = low[1] + rng.random() * (span[1] - size_y)
        x, y = xyz[:, 0], xyz[:, 1]
        return (x0 < x) & (x < x0 + size_x) & (y0 < y) & (y < y0 + size_y)
