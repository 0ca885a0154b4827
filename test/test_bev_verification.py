"""Bird's-eye-view verification (verification/bev.py) on a crafted town: a known yaw and shift between two
sensor poses are recovered, the same place scores high and another place scores low."""

import numpy as np
import pytest

from distilvpr_ros.verification.bev import (BevMatch, BevVerificationConfig, BevVerifier, bev_view, rotate_image,
                                            structure_points, yaw_hypotheses)
from distilvpr_ros.verification.rerank import rerank

SENSOR_HEIGHT = 1.9


def town(seed: int, size: float = 120.0, buildings: int = 60) -> np.ndarray:
    """World points (x, y, z; ground at z = 0) of random box buildings' walls and a sampled ground."""
    rng = np.random.default_rng(seed)
    parts = [np.column_stack([rng.uniform(-size, size, (20000, 2)), np.zeros(20000)])]
    for _ in range(buildings):
        cx, cy = rng.uniform(-size, size, 2)
        w, d, h = rng.uniform(3, 15), rng.uniform(3, 15), rng.uniform(3, 20)
        t = rng.uniform(0, 1, 1500)
        side = rng.integers(0, 4, 1500)
        x = np.where(side < 2, cx - w / 2 + w * t, np.where(side == 2, cx - w / 2, cx + w / 2))
        y = np.where(side == 0, cy - d / 2, np.where(side == 1, cy + d / 2, cy - d / 2 + d * t))
        parts.append(np.column_stack([x, y, rng.uniform(0, h, 1500)]))
    return np.concatenate(parts)


def scan_from(world: np.ndarray, x: float, y: float, yaw: float, max_range: float = 60.0) -> np.ndarray:
    """The world's points within range of a sensor at (x, y, SENSOR_HEIGHT) facing ``yaw``, in its frame."""
    rel = world - [x, y, SENSOR_HEIGHT]
    rel = rel[np.hypot(rel[:, 0], rel[:, 1]) < max_range]
    c, s = np.cos(yaw), np.sin(yaw)
    x, y = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    return np.column_stack([x, y, rel[:, 2]]).astype(np.float32)


def angle_diff(a: float, b: float) -> float:
    return abs(float(np.arctan2(np.sin(a - b), np.cos(a - b))))


@pytest.fixture(scope="module")
def world():
    return town(0)


@pytest.mark.parametrize("yaw_deg,dx,dy", [(37.0, 3.0, -2.0), (180.0, -6.0, 4.0), (-95.0, 0.0, 7.5)])
def test_known_yaw_and_shift_recovered(world, yaw_deg, dx, dy):
    verifier = BevVerifier()
    candidate = verifier.view(scan_from(world, 0.0, 0.0, 0.0))
    yaw = np.deg2rad(yaw_deg)
    query = verifier.view(scan_from(world, dx, dy, yaw))
    match = verifier.verify(query, candidate)
    assert match.accepted and match.reason == ""
    step = 2 * np.pi / verifier.config.sectors
    assert angle_diff(match.yaw, yaw) <= step  # within one sector
    assert np.hypot(match.shift[0] - dx, match.shift[1] - dy) <= 2.0  # two cells
    # the transform maps query points into the candidate's frame
    p_query = np.array([10.0, 5.0, 0.0, 1.0])
    c, s = np.cos(yaw), np.sin(yaw)
    expected = [dx + c * 10 - s * 5, dy + s * 10 + c * 5]
    assert np.hypot(*(match.transform @ p_query)[:2] - np.array(expected)) <= 2.5


def test_other_place_scores_low_and_same_place_wins_rerank(world):
    verifier = BevVerifier()
    query = verifier.view(scan_from(world, 2.0, 1.0, 0.3))
    same = verifier.view(scan_from(world, 0.0, 0.0, 0.0))
    other_town = verifier.view(scan_from(town(1), 0.0, 0.0, 0.0))
    far = verifier.view(scan_from(world, 90.0, -80.0, 1.0))
    s_same = verifier.verify(query, same)
    s_other, s_far = verifier.verify(query, other_town), verifier.verify(query, far)
    assert s_same.score > 0.6
    assert s_other.score < 0.5 * s_same.score and s_far.score < 0.5 * s_same.score
    views = {"other": other_town, "far": far, "same": same}
    ranked = rerank(list(views), [0.9, 0.8, 0.7], lambda k: verifier.verify(query, views[k]), top_k=3,
                    stop_at_first=False)
    assert ranked.ids[0] == "same"


def test_yaw_hypotheses_follow_a_sector_roll():
    rng = np.random.default_rng(3)
    grid = rng.uniform(0, 1, (10, 36))
    yaws = yaw_hypotheses(grid, np.roll(grid, 7, axis=1), 3)
    assert np.isclose(yaws[0], 7 * 2 * np.pi / 36)
    assert len(yaws) <= 3


def test_rotate_image_matches_rotating_the_points(world):
    cfg = BevVerificationConfig(blur_cells=0.0)
    cloud = scan_from(world, 0.0, 0.0, 0.0)
    yaw = 0.6
    c, s = np.cos(yaw), np.sin(yaw)
    turned = cloud.copy()
    turned[:, 0], turned[:, 1] = c * cloud[:, 0] - s * cloud[:, 1], s * cloud[:, 0] + c * cloud[:, 1]
    direct = bev_view(turned, cfg).image
    warped = rotate_image(bev_view(cloud, cfg).image, yaw, cfg.cell_m, cfg.extent_m)
    cos = float((direct * warped).sum() / (np.linalg.norm(direct) * np.linalg.norm(warped)))
    assert cos > 0.8
    wrong = rotate_image(bev_view(cloud, cfg).image, -yaw, cfg.cell_m, cfg.extent_m)
    assert cos > float((direct * wrong).sum() / (np.linalg.norm(direct) * np.linalg.norm(wrong))) + 0.2


def test_empty_and_ground_only_clouds_are_rejected_not_raised():
    verifier = BevVerifier()
    ground = np.column_stack([np.random.default_rng(0).uniform(-30, 30, (500, 2)), np.full(500, -SENSOR_HEIGHT)])
    empty = verifier.view(np.zeros((0, 4), np.float32))
    for a, b in [(empty, empty), (verifier.view(ground), verifier.view(ground))]:
        m = verifier.verify(a, b)
        assert isinstance(m, BevMatch) and not m.accepted and m.score == 0.0 and "no structure" in m.reason
    with pytest.raises(ValueError):
        bev_view(np.zeros((3, 2)))


def test_structure_points_keep_the_view(world):
    cfg = BevVerificationConfig()
    cloud = scan_from(world, 1.0, 2.0, 0.4)
    reduced = structure_points(cloud, cfg)
    assert len(reduced) < 0.5 * len(cloud) and reduced.shape[1] == 3
    full, small = bev_view(cloud, cfg), bev_view(reduced, cfg)
    # the highest point of every 0.5 m column is kept: the 1 m image is the same; a column that straddles a polar
    # cell's edge may move its maximum to the neighbour cell (few cells)
    np.testing.assert_allclose(small.image, full.image, atol=1e-6)
    assert np.mean(small.polar != full.polar) < 0.02
    assert float((small.polar * full.polar).sum() / (np.linalg.norm(small.polar) * np.linalg.norm(full.polar))) > 0.95


def test_correlation_matches_numpy_fft():
    """The OpenCV spectra give numpy's zero-padded cross-correlation, best shift within max_shift_m."""
    verifier = BevVerifier(BevVerificationConfig(max_shift_m=6.0))
    rng = np.random.default_rng(1)
    n, size, s = verifier.config.cells, verifier._size, verifier._shift_cells
    target, source = rng.uniform(0, 1, (n, n)).astype(np.float32), rng.uniform(0, 1, (n, n)).astype(np.float32)
    corr = np.fft.irfft2(np.fft.rfft2(target, s=(size, size)) * np.conj(np.fft.rfft2(source, s=(size, size))),
                         s=(size, size))
    shifts = [(a, b) for a in range(-s, s + 1) for b in range(-s, s + 1)]
    best = max(shifts, key=lambda t: corr[t[0] % size, t[1] % size])
    value, dr, dc = verifier._correlate(verifier._spectrum(target), source)
    assert (dr, dc) == best
    assert value == pytest.approx(corr[best[0] % size, best[1] % size], rel=1e-4)


def test_config_refuses_an_empty_height_span():
    with pytest.raises(ValueError, match="max_z_m"):
        BevVerificationConfig(min_z_m=2.0, max_z_m=1.0)
