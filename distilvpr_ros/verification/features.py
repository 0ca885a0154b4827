"""Local image features (OpenCV SIFT, ORB, or ORB keypoints with CNN descriptors) and their matching: mutual nearest
neighbour + Lowe's ratio test.

A keyframe's features can be extracted once and reused for every query (``LocalFeatures`` is plain
arrays). Matching is brute force (L2 for SIFT, Hamming for ORB): with a few thousand features per
image that is faster than building an index per pair.

``upright`` (default) describes every keypoint at orientation 0 instead of its dominant gradient direction: a
vehicle's camera does not roll, so rotation invariance only adds orientation noise. On the default world's
ground-truth pairs it raises the keypoints whose nearest descriptor is the true one (median per pair: winter
23 -> 36.5, autumn 27.5 -> 42.5, dusk 5 -> 12, fog 5 -> 20, rain 6.5 -> 14; night stays at 0-1;
``benchmarks/verification_stages.py``, ``docs/results/verification/stages.md``).

``cnn``: ORB's keypoints (FAST + Harris score) described by a pretrained CNN's feature maps
(:mod:`.cnn_descriptors`; float unit vectors, matched by L2 = cosine), which survive the night's lighting where
ORB's and SIFT's intensity patterns do not. ``photometric="clahe"`` equalises the grey image (CLAHE) before
detection and ORB/SIFT description; ``photometric="median"`` takes its 3x3 median instead (against a low-light
camera's pixel noise: with the CNN descriptors it raised the default world's validation pairs' rain / dusk acceptance
0.63 -> 0.89 / 0.19 -> 0.48, ``docs/results/verification/night.md``; why is not established: on a textured plane
scene with added noise it did not make FAST corners more repeatable).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

FeatureKind = Literal["sift", "orb", "cnn"]
FEATURE_KINDS: tuple[str, ...] = ("sift", "orb", "cnn")
Photometric = Literal["none", "clahe", "median"]
PHOTOMETRIC: tuple[str, ...] = ("none", "clahe", "median")
#: Descriptor size and type of each kind (cnn: the default stages' size; an empty set of another size matches none)
_EMPTY = {"sift": (128, np.float32), "orb": (32, np.uint8), "cnn": (120, np.float32)}


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
        dim, dtype = _EMPTY.get(kind, _EMPTY["orb"])
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


@lru_cache(maxsize=4)
def _cnn_descriptor(stages: tuple[int, ...], head: str = ""):
    """One CNN per set of stages and head file in the process (the weights are loaded once)."""
    from .cnn_descriptors import CnnDescriptor, DescriptorHead

    return CnnDescriptor(stages, head=DescriptorHead.load(head) if head else None)


def equalize(gray: np.ndarray, photometric: str) -> np.ndarray:
    """The grey image after the photometric normalisation ``photometric`` (``none``: unchanged)."""
    if photometric == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
    if photometric == "median":
        return cv2.medianBlur(gray, 3)
    return gray


class FeatureExtractor:
    """SIFT, ORB or CNN-described ORB keypoints with a cap on the number of features (thread-safe)."""

    def __init__(self, kind: FeatureKind = "sift", max_features: int = 1000, upright: bool = False,
                 photometric: Photometric = "none", cnn_stages: tuple[int, ...] = (3, 4), cnn_head: str = ""):
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
        if photometric not in PHOTOMETRIC:
            raise ValueError(f"unknown photometric normalisation {photometric!r}; choose one of {PHOTOMETRIC}")
        self.kind = kind
        self.max_features = int(max_features)
        self.upright = bool(upright)
        self.photometric = photometric
        self.cnn_stages = tuple(sorted({int(s) for s in cnn_stages}))
        self.cnn_head = str(cnn_head or "")
        self._cnn = _cnn_descriptor(self.cnn_stages, self.cnn_head) if kind == "cnn" else None
        if self._cnn is not None:
            self.cnn_stages = self._cnn.stages
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
        gray = equalize(gray, self.photometric)
        m = None if mask is None else (np.asarray(mask) > 0).astype(np.uint8) * 255
        if self._cnn is not None:
            with self._lock:
                kps = self._detector.detect(gray, m)
            if not kps:
                return LocalFeatures.empty(self.kind)
            uv = np.array([kp.pt for kp in kps], dtype=np.float64)
            rgb = np.asarray(image)
            rgb = rgb.astype(np.uint8, copy=False) if rgb.ndim == 3 and rgb.shape[2] == 3 else gray
            return LocalFeatures(self.kind, uv, self._cnn.describe(rgb, uv))
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
        return self.kind, self.max_features, self.upright, self.photometric, \
            (self.cnn_stages, self.cnn_head) if self.kind == "cnn" else ()


def match_features(a: LocalFeatures, b: LocalFeatures, ratio: float = 0.8, exclusion_px: float = 0.0) -> np.ndarray:
    """Index pairs (M, 2) ``[i_a, i_b]`` that are mutual nearest neighbours and pass the ratio test in a -> b.

    ``exclusion_px`` > 0: the ratio test's second-best is the best among b's features farther than that from the
    best one (CNN descriptors vary smoothly in the image, so a keypoint's near neighbours look alike; they are the
    same image structure, not a rival match). ``ratio`` 1: mutual nearest neighbours only."""
    if a.kind != b.kind:
        raise ValueError(f"cannot match {a.kind} features with {b.kind} features")
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    if a.descriptors.shape[1] != b.descriptors.shape[1]:
        raise ValueError(f"cannot match {a.descriptors.shape[1]}-d descriptors with {b.descriptors.shape[1]}-d ones")
    norm = cv2.NORM_HAMMING if a.kind == "orb" else cv2.NORM_L2
    if exclusion_px > 0 or ratio >= 1:
        return _match_dense(a, b, norm, ratio, exclusion_px)
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


def _match_dense(a: LocalFeatures, b: LocalFeatures, norm: int, ratio: float, exclusion_px: float) -> np.ndarray:
    """:func:`match_features` from the full distance matrix (spatially excluded second-best; see there). L2 works on
    squared distances (same order; the ratio squared)."""
    da = np.ascontiguousarray(a.descriptors)
    db = np.ascontiguousarray(b.descriptors)
    if norm == cv2.NORM_L2:
        a32, b32 = da.astype(np.float32, copy=False), db.astype(np.float32, copy=False)
        dist = (a32 @ b32.T) * -2.0
        dist += (a32 * a32).sum(1)[:, None]
        dist += (b32 * b32).sum(1)[None, :]
        np.maximum(dist, 0.0, out=dist)
        ratio = ratio * ratio
    else:
        pad = -da.shape[1] % 8  # Hamming distance: popcount of the XOR, 64 bits at a time
        wa = np.pad(da.astype(np.uint8, copy=False), ((0, 0), (0, pad))).view(np.uint64)
        wb = np.pad(db.astype(np.uint8, copy=False), ((0, 0), (0, pad))).view(np.uint64)
        dist = np.bitwise_count(wa[:, None, :] ^ wb[None, :, :]).sum(axis=2, dtype=np.int64).astype(np.float32)
    rows = np.arange(len(a))
    best = np.argmin(dist, axis=1)
    mutual = np.argmin(dist, axis=0)[best] == rows
    d1 = dist[rows, best]
    if ratio >= 1:
        keep = mutual
    else:
        if exclusion_px > 0:  # b's features within exclusion_px of each other, once per b (not per a x b)
            diff = b.uv[:, None, :] - b.uv[None, :, :]
            near_b = np.einsum("ijk,ijk->ij", diff, diff) <= exclusion_px * exclusion_px
            d2 = np.where(near_b[best], np.inf, dist).min(axis=1)
        else:
            d2 = np.partition(dist, 1, axis=1)[:, 1]
        keep = mutual & (d1 < ratio * d2)
    idx = np.flatnonzero(keep)
    return np.stack([idx, best[idx]], axis=1).astype(np.int64).reshape(-1, 2)
