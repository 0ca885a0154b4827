"""Local image features (OpenCV SIFT or ORB) and their matching: mutual nearest neighbour + Lowe's ratio test.

A keyframe's features can be extracted once and reused for every query (``LocalFeatures`` is plain
arrays). Matching is brute force (L2 for SIFT, Hamming for ORB): with a few thousand features per
image that is faster than building an index per pair.

``upright`` (default) describes every keypoint at orientation 0 instead of its dominant gradient direction: a
vehicle's camera does not roll, so rotation invariance only adds orientation noise. On the default world's
ground-truth pairs it raises the keypoints whose nearest descriptor is the true one (median per pair: winter
23 -> 36.5, autumn 27.5 -> 42.5, dusk 5 -> 12, fog 5 -> 20, rain 6.5 -> 14; night stays at 0-1;
``benchmarks/verification_stages.py``, ``docs/results/verification/stages.md``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

FeatureKind = Literal["sift", "orb"]
FEATURE_KINDS: tuple[str, ...] = ("sift", "orb")


@dataclass
class LocalFeatures:
    """Keypoint positions (N, 2) float64 in raw pixels and their descriptors (N, D)."""

    kind: str
    uv: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.uv)

    def subset(self, keep: np.ndarray) -> "LocalFeatures":
        """The features selected by a boolean mask or index array."""
        return LocalFeatures(self.kind, self.uv[keep], self.descriptors[keep])

    @classmethod
    def empty(cls, kind: str) -> "LocalFeatures":
        dim, dtype = (128, np.float32) if kind == "sift" else (32, np.uint8)
        return cls(kind, np.zeros((0, 2)), np.zeros((0, dim), dtype))


def to_gray(image: np.ndarray | None) -> np.ndarray | None:
    """uint8 grey image from an RGB (H, W, 3) or grey (H, W) array; None when unusable."""
    if image is None:
        return None
    img = np.asarray(image)
    if img.size == 0 or img.ndim not in (2, 3) or min(img.shape[:2]) < 8:
        return None
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img.astype(np.uint8, copy=False)), cv2.COLOR_RGB2GRAY)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim != 2 or img.size == 0 or min(img.shape) < 8:
        return None
    return np.ascontiguousarray(img.astype(np.uint8, copy=False))


class FeatureExtractor:
    """SIFT or ORB detector + descriptor with a cap on the number of features (thread-safe)."""

    def __init__(self, kind: FeatureKind = "sift", max_features: int = 1000, upright: bool = False):
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
        self.kind = kind
        self.max_features = int(max_features)
        self.upright = bool(upright)
        if kind == "sift":
            self._detector = cv2.SIFT_create(nfeatures=self.max_features)
        else:
            # A small FAST threshold and edge margin keep ORB useful on small, low-contrast (night) images.
            self._detector = cv2.ORB_create(nfeatures=self.max_features, fastThreshold=7, edgeThreshold=15,
                                            patchSize=15)
        self._lock = threading.Lock()

    def extract(self, image: np.ndarray | None, mask: np.ndarray | None = None) -> LocalFeatures:
        """Features of an RGB or grey uint8 image; empty for a missing, tiny or featureless image."""
        gray = to_gray(image)
        if gray is None:
            return LocalFeatures.empty(self.kind)
        m = None if mask is None else (np.asarray(mask) > 0).astype(np.uint8) * 255
        with self._lock:  # OpenCV detectors are not documented as re-entrant
            if self.upright:
                kps = [cv2.KeyPoint(k.pt[0], k.pt[1], k.size, 0.0, k.response, k.octave, k.class_id)
                       for k in self._detector.detect(gray, m)]
                kps, desc = self._detector.compute(gray, kps) if kps else ((), None)
            else:
                kps, desc = self._detector.detectAndCompute(gray, m)
        if desc is None or len(kps) == 0:
            return LocalFeatures.empty(self.kind)
        uv = np.array([kp.pt for kp in kps], dtype=np.float64)
        return LocalFeatures(self.kind, uv, desc)

    @property
    def key(self) -> tuple:
        """What the features depend on (a cache of keyframe features is valid for one key)."""
        return self.kind, self.max_features, self.upright


def match_features(a: LocalFeatures, b: LocalFeatures, ratio: float = 0.8) -> np.ndarray:
    """Index pairs (M, 2) ``[i_a, i_b]`` that are mutual nearest neighbours and pass the ratio test in a -> b."""
    if a.kind != b.kind:
        raise ValueError(f"cannot match {a.kind} features with {b.kind} features")
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    norm = cv2.NORM_L2 if a.kind == "sift" else cv2.NORM_HAMMING
    bf = cv2.BFMatcher(norm, crossCheck=False)
    ab = bf.knnMatch(a.descriptors, b.descriptors, k=2)
    ba = bf.match(b.descriptors, a.descriptors)
    back = np.full(len(b), -1, np.int64)
    for m in ba:
        back[m.queryIdx] = m.trainIdx
    pairs = []
    for ms in ab:
        if len(ms) < 2:
            continue
        best, second = ms
        if best.distance < ratio * second.distance and back[best.trainIdx] == best.queryIdx:
            pairs.append((best.queryIdx, best.trainIdx))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)
