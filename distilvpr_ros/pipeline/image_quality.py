"""A cheap gate on camera frames before place recognition: a frame with almost no contrast or texture
(lens cap, a black or saturated frame, a blank wall) carries no place and must not become a match."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..config import Section


class ImageQualityConfig(Section):
    """Minimum contrast and texture of a camera frame (grey levels 0..255; 0 turns a test off)."""

    min_contrast: float = Field(2.0, ge=0.0, le=128.0, description="min standard deviation of the grey image")
    min_texture: float = Field(
        0.5, ge=0.0, le=255.0, description="min mean absolute difference between neighbouring grey pixels")


class LowQualityImage(ValueError):
    """A camera frame below the quality gate; the message gives the measured values."""


def image_quality(image: np.ndarray) -> tuple[float, float]:
    """``(contrast, texture)`` of an ``H x W x 3`` uint8 image: the grey standard deviation and the mean
    absolute difference between horizontally and vertically neighbouring grey pixels (on at most ~256 px
    per side, so the cost does not grow with the camera)."""
    step = max(1, max(image.shape[:2]) // 256)
    grey = image[::step, ::step].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    texture = 0.5 * (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    return float(grey.std()), float(texture)


def check_quality(image: np.ndarray, cfg: ImageQualityConfig) -> None:
    """Raise :class:`LowQualityImage` when ``image`` is below the gate."""
    contrast, texture = image_quality(image)
    if contrast < cfg.min_contrast or texture < cfg.min_texture:
        raise LowQualityImage(f"image quality too low: contrast {contrast:.2f} (min {cfg.min_contrast:g}), "
                              f"texture {texture:.2f} (min {cfg.min_texture:g})")
