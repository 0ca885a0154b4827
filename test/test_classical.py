"""Classical LiDAR descriptors (models.classical) on hand-made clouds whose grid cells are known."""

import math

import numpy as np
import pytest
import torch

from distilvpr_ros.models import ModelConfig, build_model
from distilvpr_ros.models.classical import (column_shift_distance, fft_descriptor, ring_key, scan_context,
                                            scan_context_distances)
from distilvpr_ros.models.config import scan_context_grid
from distilvpr_ros.models.inference import embed_batch, model_inputs

CFG = scan_context_grid()  # 20 rings x 60 sectors, 100 m: rings 5 m, sectors 6 degrees
SECTOR = 2 * math.pi / CFG.sectors


def point_at(ring: int, sector: int, z: float) -> list[float]:
    """A point in the centre of cell (ring, sector) at height z (sensor frame)."""
    r = (ring + 0.5) * CFG.ring_m
    azimuth = -math.pi + (sector + 0.5) * SECTOR
    return [r * math.cos(azimuth), r * math.sin(azimuth), z, 0.5]


def height_value(z: float) -> float:
    return (z - CFG.z_min_m) / (CFG.z_max_m - CFG.z_min_m)


def rotate(cloud: np.ndarray, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    out = cloud.copy()
    out[:, 0], out[:, 1] = c * cloud[:, 0] - s * cloud[:, 1], s * cloud[:, 0] + c * cloud[:, 1]
    return out


def scene(seed: int = 0, n: int = 300) -> np.ndarray:
    """Random points at cell centres (so whole-sector rotations move them to other cell centres)."""
    rng = np.random.default_rng(seed)
    return np.array([point_at(int(rng.integers(CFG.rings)), int(rng.integers(CFG.sectors)),
                              float(rng.uniform(-2, 20))) for _ in range(n)], dtype=np.float32)


def test_single_point_lands_in_its_ring_and_sector():
    grid = scan_context(np.array([point_at(3, 17, 4.0)], dtype=np.float32), CFG)
    assert grid.shape == (20, 60)
    assert grid[3, 17] == pytest.approx(height_value(4.0), abs=1e-6)
    assert np.count_nonzero(grid) == 1
    # x forward (azimuth 0) is the first sector of the second half; behind the sensor is sector 0
    front = scan_context(np.array([[10.0, 0.001, 1.0]], dtype=np.float32), CFG)
    behind = scan_context(np.array([[-10.0, -0.001, 1.0]], dtype=np.float32), CFG)
    assert np.argwhere(front).tolist() == [[2, 30]] and np.argwhere(behind).tolist() == [[2, 0]]


def test_cell_keeps_max_height_and_drops_out_of_range_points():
    cloud = np.array([point_at(5, 2, 1.0), point_at(5, 2, 7.0), point_at(5, 2, -1.0),
                      [150.0, 0.0, 3.0, 0.0], [0.3, 0.0, 3.0, 0.0], [np.nan, 1.0, 1.0, 0.0]], dtype=np.float32)
    grid = scan_context(cloud, CFG)
    assert grid[5, 2] == pytest.approx(height_value(7.0), abs=1e-6)
    assert np.count_nonzero(grid) == 1
    assert not scan_context(None, CFG).any() and not scan_context(np.zeros((0, 4), np.float32), CFG).any()


def test_box_fills_the_cells_it_covers():
    # a 2 m high box filling ring 4 (20-25 m) over sectors 10..14
    cloud = np.array([point_at(4, s, z) for s in range(10, 15) for z in (0.0, 1.0, 2.0)], dtype=np.float32)
    grid = scan_context(cloud, CFG)
    assert np.argwhere(grid).tolist() == [[4, s] for s in range(10, 15)]
    np.testing.assert_allclose(grid[4, 10:15], height_value(2.0), atol=1e-6)
    key = ring_key(grid)
    assert key.shape == (20,) and np.count_nonzero(key) == 1
    assert key[4] == pytest.approx(5 * height_value(2.0) / 60, rel=1e-6)


@pytest.mark.parametrize("k", [1, 7, 30, 59])
def test_whole_sector_rotation_rolls_the_grid_and_keeps_fft_and_ring_key(k):
    cloud = scene()
    grid = scan_context(cloud, CFG)
    rotated = scan_context(rotate(cloud, k * SECTOR), CFG)
    np.testing.assert_array_equal(rotated, np.roll(grid, k, axis=1))
    np.testing.assert_allclose(fft_descriptor(rotated), fft_descriptor(grid), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ring_key(rotated), ring_key(grid), rtol=1e-6)
    distance, shift = column_shift_distance(rotated, grid)
    assert shift == k and distance == pytest.approx(0.0, abs=1e-9)


def test_fft_changes_for_another_place():
    a, b = fft_descriptor(scan_context(scene(0), CFG)), fft_descriptor(scan_context(scene(1), CFG))
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert a.shape == (20 * 31,) and cosine < 0.95


def test_column_shift_distance_uses_columns_nonempty_in_both():
    a = np.zeros((20, 60), np.float32)
    b = np.zeros((20, 60), np.float32)
    a[:, 0], b[:, 0] = 1.0, 1.0
    a[:3, 5] = 1.0  # empty in b at every shift that aligns column 0: ignored
    b[3:, 9] = 1.0
    distance, shift = column_shift_distance(a, b)
    assert shift == 0 and distance == pytest.approx(0.0, abs=1e-9)
    assert column_shift_distance(a, np.zeros_like(b))[0] == 1.0


def test_two_stage_search_reranks_ring_key_candidates():
    places = [scan_context(scene(seed), CFG) for seed in range(15)]
    queries = np.stack([np.roll(places[3], 11, axis=1), np.roll(places[9], 40, axis=1)])
    distances = scan_context_distances(queries, np.stack(places), candidates=4)
    assert distances.shape == (2, 15)
    assert np.isfinite(distances).sum(axis=1).tolist() == [4, 4]
    assert distances.argmin(axis=1).tolist() == [3, 9]
    assert distances[0, 3] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kind,dim", [("ring_key", 20), ("scan_context_fft", 620)])
def test_classical_kinds_are_models_without_parameters(kind, dim):
    model = build_model(kind, ModelConfig(pretrained=False))
    assert model.kind == kind and model.input_spec.inputs == ("cloud",)
    assert model.input_spec.descriptor_dim == dim and not list(model.parameters())
    cloud = scene()
    feeds = model_inputs(model.input_spec, [None, None], [cloud, rotate(cloud, 13 * SECTOR)])
    assert feeds["cloud"].shape == (2, 1, 20, 60)
    descriptors = embed_batch(model, feeds)
    assert descriptors.shape == (2, dim)
    np.testing.assert_allclose(descriptors[0], descriptors[1], atol=1e-6)
    expected = fft_descriptor(scan_context(cloud, CFG)) if kind == "scan_context_fft" else ring_key(
        scan_context(cloud, CFG))
    np.testing.assert_allclose(descriptors[0], expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="Scan Context grids"):
        model(cloud=torch.zeros(1, 3, 20, 60))


def test_classical_kind_checkpoint_round_trip(tmp_path):
    from distilvpr_ros.models.checkpoint import load_model, save_model_checkpoint
    from distilvpr_ros.pipeline.embedder import Embedder

    save_model_checkpoint(tmp_path / "fft", build_model("scan_context_fft"), config={})
    assert type(load_model(tmp_path / "fft", expect_kind="scan_context_fft")).__name__ == "ScanContextFftModel"
    embedder = Embedder.from_checkpoint(tmp_path / "fft", "scan_context_fft")
    cloud = scene()
    np.testing.assert_allclose(embedder(cloud=cloud), embedder(cloud=rotate(cloud, 21 * SECTOR)), atol=1e-6)
