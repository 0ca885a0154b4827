"""Geographic classes and view clusters for classification tasks (``reference/mutualvpr.md`` §2.1–2.4, §7.1).

Pure functions on poses and descriptors: UTM place cells and heading bins, places grouped in order of
first appearance, the official random initial view split, K-means view clusters, Hungarian alignment of
clusters to classifier rows, and the diagnostics (partition changes, purity). ``ClassificationTask``
(:mod:`.classification`) composes them.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from scipy.optimize import linear_sum_assignment


# --- classes from geography ---------------------------------------------------------------------------


def place_cells(positions: np.ndarray, cell_m: float) -> np.ndarray:
    """``N x 2`` integer UTM cell indices (⌊east/M⌋, ⌊north/M⌋) of planar positions."""
    return np.floor(np.asarray(positions, dtype=np.float64)[:, :2] / cell_m).astype(np.int64)


def heading_bins(yaw: np.ndarray, bin_deg: float, centred: bool = False) -> np.ndarray:
    """Heading bin of each yaw (radians, counter-clockwise from east): ⌊heading / α⌋ (``centred``: bins
    centred on 0°, α, 2α, ...)."""
    degrees = np.degrees(np.asarray(yaw, dtype=np.float64)) % 360.0
    if centred:
        degrees = (degrees + bin_deg / 2.0) % 360.0
    return np.floor(degrees / bin_deg).astype(np.int64) % int(math.ceil(360.0 / bin_deg))


def pose_yaws(poses: np.ndarray) -> np.ndarray:
    """Yaw of ``N x 4 x 4`` poses."""
    poses = np.asarray(poses)
    return np.arctan2(poses[:, 1, 0], poses[:, 0, 0])


def group_places(place_keys: np.ndarray, group_keys: np.ndarray, max_groups: int) -> tuple[np.ndarray, list[list[int]]]:
    """Places and groups in order of first appearance.

    Returns ``place_of`` (per image, its place index) and ``groups`` (per used group, its place
    indices); only the first ``max_groups`` groups are kept.
    """
    place_index: dict[tuple, int] = {}
    place_of = np.empty(len(place_keys), dtype=np.int64)
    group_index: dict[tuple, int] = {}
    members: list[list[int]] = []
    for i, (place, group) in enumerate(zip(map(tuple, place_keys), map(tuple, group_keys))):
        if place not in place_index:
            place_index[place] = len(place_index)
            if group not in group_index:
                group_index[group] = len(members)
                members.append([])
            members[group_index[group]].append(place_index[place])
        place_of[i] = place_index[place]
    return place_of, members[:max_groups]


def initial_split(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """The official random split of a place's n images: views 1..k−1 get ⌊n/k⌋ random images each,
    view 0 the remainder."""
    labels = np.zeros(n, dtype=np.int64)
    order = rng.permutation(n)
    share = n // k
    for view in range(1, k):
        labels[order[(view - 1) * share : view * share]] = view
    return labels


# --- clustering ---------------------------------------------------------------------------------------


def kmeans_views(descriptors: np.ndarray, k: int, n_init: int = 10, seed: int = 0) -> np.ndarray | None:
    """K-means labels of L2-normalised descriptors, or None when fewer than k images or a cluster is empty."""
    from sklearn.cluster import KMeans

    if len(descriptors) < k:
        return None
    x = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x.astype(np.float64)).labels_
    if len(np.unique(labels)) < k:
        return None
    return labels.astype(np.int64)


def align_to_rows(descriptors: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rename clusters so cluster c becomes the classifier row it matches best (Hungarian on the cosine
    between the cluster's mean descriptor and each row). ``rows`` is ``k x D``; returns the new labels."""
    k = len(rows)
    x = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    centroids = np.stack([x[labels == c].mean(axis=0) for c in range(k)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    w = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    clusters, assigned = linear_sum_assignment(-(centroids @ w.T))
    mapping = np.empty(k, dtype=np.int64)
    mapping[clusters] = assigned
    return mapping[labels]


def partition_changes(old: np.ndarray, new: np.ndarray, k: int) -> int:
    """Images that changed cluster when clusters may also have been renamed (best one-to-one matching)."""
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (old, new), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return int(len(old) - confusion[rows, cols].sum())


def purity(clusters: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Σ over clusters of the count of its most frequent true label, over all images (1 = pure)."""
    total = sum(len(c) for c in clusters)
    if not total:
        return float("nan")
    hits = 0
    for labels, true in zip(clusters, truth):
        for c in np.unique(labels):
            hits += Counter(true[labels == c].tolist()).most_common(1)[0][1]
    return hits / total
