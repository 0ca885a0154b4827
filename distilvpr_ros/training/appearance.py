"""Appearance augmentation aimed at conditions the training runs never show: night and rain.

Photometric only (the geometry of the view is untouched), on one float ``3 x H x W`` image in [0, 1],
every draw from the ``numpy.random.Generator`` passed in (as ``training.augment``). Two transforms,
each applied with its own probability (``AugmentConfig.night_p`` / ``rain_p``; both 0 by default, and
then no random number is drawn, so the other augmentations' draws are unchanged):

* **night**: brightness scaled by U(``night_brightness``), then a gamma U(``night_gamma``) > 1
  (``x ** gamma``: dark regions get darker, lit ones keep some contrast), a colour cast (per-channel
  gains U(1 - ``cast``, 1 + ``cast``), normalised to mean 1) and Gaussian sensor noise σ ~
  U(0, ``noise_sigma``) per pixel and channel;
* **rain**: a grey veil (blend towards a grey level U(0.4, 0.8) with weight U(``rain_veil``)), a
  Gaussian blur σ ~ U(``blur_sigma``) px, and streaks: sparse random drops (density U(``streak_density``)
  of the pixels) smeared along one direction (angle U(±``streak_angle_deg``) from vertical, length
  U(``streak_length``) x image height), added with intensity U(0.15, 0.45).

These are generic camera degradations, not copies of the synthetic renderer, so that they help on real
night and rain images too. With the feature cache (``feature_cache.augmented_copies`` = K) they are
applied before the frozen stages, inside each of the K cached copies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: Grey level range of the rain veil.
VEIL_GREY = (0.4, 0.8)
#: Intensity range of rain streaks (added, then clipped to 1).
STREAK_INTENSITY = (0.15, 0.45)


class AppearanceAugment:
    """Night and rain degradations (see the module doc); ``cfg`` is an ``AugmentConfig``."""

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        return self.cfg.night_p > 0 or self.cfg.rain_p > 0

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        if cfg.night_p > 0 and rng.random() < cfg.night_p:
            image = self.night(image, rng)
        if cfg.rain_p > 0 and rng.random() < cfg.rain_p:
            image = self.rain(image, rng)
        return image

    def night(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        image = image * rng.uniform(*cfg.night_brightness)
        image = image.clamp(0.0, 1.0) ** rng.uniform(*cfg.night_gamma)
        gains = rng.uniform(1 - cfg.cast, 1 + cfg.cast, size=3)
        image = image * torch.as_tensor(gains / gains.mean(), dtype=image.dtype)[:, None, None]
        sigma = rng.uniform(0.0, cfg.noise_sigma)
        if sigma > 0:
            noise = rng.standard_normal(image.shape).astype(np.float32)
            image = image + sigma * torch.from_numpy(noise).to(image.dtype)
        return image.clamp(0.0, 1.0)

    def rain(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        veil = rng.uniform(*cfg.rain_veil)
        image = (1 - veil) * image + veil * rng.uniform(*VEIL_GREY)
        image = gaussian_blur(image, rng.uniform(*cfg.blur_sigma))
        _, height, width = image.shape
        drops = torch.from_numpy((rng.random((height, width)) < rng.uniform(*cfg.streak_density)).astype(np.float32))
        length = max(3, int(round(rng.uniform(*cfg.streak_length) * height))) | 1  # odd: centred
        kernel = line_kernel(length, rng.uniform(-cfg.streak_angle_deg, cfg.streak_angle_deg))
        streaks = F.conv2d(drops[None, None], kernel[None, None], padding="same")[0].clamp(0.0, 1.0)
        image = image + rng.uniform(*STREAK_INTENSITY) * streaks.to(image.dtype)
        return image.clamp(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``C x H x W`` image (kernel radius 3σ, reflect padding)."""
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    weights = weights / weights.sum()
    channels = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, weights.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.conv2d(out, weights.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return out[0]


def line_kernel(length: int, angle_deg: float) -> torch.Tensor:
    """A ``length x length`` kernel holding a one-pixel line through its centre, ``angle_deg`` from vertical."""
    kernel = torch.zeros(length, length)
    centre = (length - 1) / 2
    theta = math.radians(angle_deg)
    for t in np.linspace(-centre, centre, 2 * length):
        row = int(round(centre + t * math.cos(theta)))
        col = int(round(centre + t * math.sin(theta)))
        if 0 <= row < length and 0 <= col < length:
            kernel[row, col] = 1.0
    return kernel
