"""The yaw-invariant polar LiDAR encoder (models.lidar_polar), its model kinds and its augmentations."""

import math

import numpy as np
import pytest
import torch

from distilvpr_ros.models import ModelConfig, build_model
from distilvpr_ros.models.config import PolarConfig
from distilvpr_ros.models.inference import embed_batch, model_inputs
from distilvpr_ros.models.lidar_polar import CircularConv, PolarLidarEncoder
from distilvpr_ros.models.preprocess import cloud_to_polar
from distilvpr_ros.training.augment import PointAugment
from distilvpr_ros.training.config import AugmentConfig

CFG = PolarConfig()
#: Documented bound (module doc, README) on |d(R x) - d(x)| / |d(x)| for random yaws, untrained weights.
RANDOM_YAW_BOUND = 0.25


def town(seed: int, buildings: int = 14) -> np.ndarray:
    """A crafted street scene: ground, box buildings (walls), poles; x, y, z, intensity in the sensor frame."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-70, 70, (8000, 2)), np.full(8000, -1.9)]
    parts = [ground[np.hypot(ground[:, 0], ground[:, 1]) < 70]]
    for _ in range(buildings):
        cx, cy = rng.uniform(-60, 60, 2)
        if math.hypot(cx, cy) < 10:
            continue
        w, d, h, n = rng.uniform(6, 20), rng.uniform(6, 20), rng.uniform(4, 25), 1500
        t, side, z = rng.uniform(0, 1, n), rng.integers(0, 4, n), rng.uniform(-1.9, h - 1.9, n)
        x = np.where(side < 2, cx - w / 2 + t * w, np.where(side == 2, cx - w / 2, cx + w / 2))
        y = np.where(side < 2, np.where(side == 0, cy - d / 2, cy + d / 2), cy - d / 2 + t * d)
        parts.append(np.c_[x, y, z])
    for _ in range(15):
        cx, cy = rng.uniform(-50, 50, 2)
        parts.append(np.c_[cx + rng.normal(0, 0.5, 200), cy + rng.normal(0, 0.5, 200), rng.uniform(-1.9, 6, 200)])
    xyz = np.concatenate(parts)
    return np.c_[xyz, rng.uniform(0, 1, len(xyz))].astype(np.float32)


def rotate(cloud: np.ndarray, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    out = cloud.copy()
    out[:, 0], out[:, 1] = c * cloud[:, 0] - s * cloud[:, 1], s * cloud[:, 0] + c * cloud[:, 1]
    return out


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return PolarLidarEncoder(128, CFG).eval()


def embed(encoder, clouds) -> torch.Tensor:
    with torch.no_grad():
        return encoder(torch.from_numpy(np.stack([cloud_to_polar(c, CFG) for c in clouds])))


def relative_change(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).numpy()


def test_polar_grid_channels_and_cells():
    cloud = np.array([[10.0, 0.001, 0.0, 0.8], [10.0, 0.001, 5.0, 0.4], [0.2, 0, 0, 0]], np.float32)
    assert CFG.channels == ("max_height",)
    full = PolarConfig(height_bands_m=(-1.2, 0.5, 3.0, 8.0), density=True, intensity=True)
    grid = cloud_to_polar(cloud, full)
    assert grid.shape == (6, 24, 60) and full.channels[1:4] == ("band_0", "band_1", "band_2")
    ring, sector = 3, 30  # 10 m / (80 m / 24) -> ring 3; azimuth 0 -> sector 30
    assert np.argwhere(grid[0]).tolist() == [[ring, sector]]
    assert grid[0, ring, sector] == pytest.approx((5.0 + 2.5) / 32.5, rel=1e-6)
    assert grid[1:4, ring, sector].tolist() == [1.0, 0.0, 1.0]  # 0 m in band_0 [-1.2, 0.5), 5 m in band_2 [3, 8)
    assert grid[5, ring, sector] == pytest.approx(0.6, rel=1e-6)  # mean intensity
    assert not cloud_to_polar(None, full).any()
    np.testing.assert_array_equal(cloud_to_polar(cloud, CFG)[0], grid[0])


def test_circular_conv_rolls_with_its_input():
    torch.manual_seed(0)
    conv = CircularConv(3, 4).eval()
    x = torch.rand(1, 3, 6, 10)
    torch.testing.assert_close(conv(torch.roll(x, 3, dims=-1)), torch.roll(conv(x), 3, dims=-1))


def test_whole_sector_yaw_leaves_the_descriptor_unchanged(encoder):
    cloud = town(0)
    turns = [rotate(cloud, k * 2 * math.pi / CFG.sectors) for k in (1, 17, 30, 59)]
    descriptors = embed(encoder, [cloud, *turns])
    assert relative_change(descriptors[1:], descriptors[:1]).max() < 1e-5


def test_random_yaw_changes_the_descriptor_little(encoder):
    rng = np.random.default_rng(42)
    changes, distinct = [], []
    for seed in range(3):
        cloud = town(seed)
        yaws = rng.uniform(-math.pi, math.pi, 8)  # random angles, not whole sectors
        descriptors = embed(encoder, [cloud, *(rotate(cloud, yaw) for yaw in yaws)])
        changes.append(relative_change(descriptors[1:], descriptors[:1]))
        distinct.append(relative_change(embed(encoder, [town(seed + 10)]), descriptors[:1]))
    assert np.max(changes) <= RANDOM_YAW_BOUND
    assert np.max(changes) < 0.5 * np.min(distinct)  # much smaller than the change to another place


def test_sideways_shift_stays_nearest_to_its_place(encoder):
    scenes = [town(seed) for seed in range(6)]
    shifted = [c - np.array([0, 3.5, 0, 0], np.float32) for c in scenes]  # the next lane
    reference, queries = embed(encoder, scenes), embed(encoder, shifted)
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(reference, dim=1).T
    assert similarity.argmax(dim=1).tolist() == list(range(6))


def test_raw_clouds_give_the_same_descriptor_as_the_grid(encoder):
    clouds = [town(1), town(2)]
    with torch.no_grad():
        torch.testing.assert_close(encoder(clouds), embed(encoder, clouds))


@pytest.mark.parametrize("kind", ["teacher", "lidar_student"])
def test_polar_is_an_option_of_the_teacher_and_the_lidar_student(kind, tmp_path):
    from distilvpr_ros.models.checkpoint import load_model, save_model_checkpoint

    cfg = ModelConfig(lidar_encoder="polar", pretrained=False, image_size=(64, 48))
    model = build_model(kind, cfg).eval()
    assert isinstance(model.lidar_encoder, PolarLidarEncoder) and model.input_spec.bev == cfg.polar
    image = np.zeros((48, 64, 3), np.uint8)
    cloud = town(3)
    feeds = model_inputs(model.input_spec, [image, image], [cloud, rotate(cloud, 2 * math.pi / 60 * 11)])
    assert feeds["cloud"].shape == (2, *cfg.polar.shape)
    head = "cloud" if kind == "teacher" else "fused"
    descriptors = embed_batch(model, feeds, head=head)
    np.testing.assert_allclose(descriptors[0], descriptors[1], atol=1e-5)
    save_model_checkpoint(tmp_path / kind, model, config={})
    restored = load_model(tmp_path / kind, expect_kind=kind)
    np.testing.assert_allclose(embed_batch(restored, feeds, head=head), descriptors, atol=1e-6)
    assert build_model(kind, ModelConfig(pretrained=False)).input_spec.bev == ModelConfig().bev  # default kept


def test_lateral_shift_and_range_cut_augmentations():
    cloud = np.array([[10.0, 0.0, 0.0, 1.0], [60.0, 0.0, 0.0, 1.0], [0.0, 30.0, 0.0, 1.0]], np.float32)
    base = dict(rotate_deg=0.0, flip_p=(0.0, 0.0), jitter_sigma=0.0, remove_max=0.0, translate_sigma=0.0,
                block_p=0.0)
    shifted = PointAugment(AugmentConfig(**base, lateral_shift_m=7.0))
    moves = [shifted(cloud, np.random.default_rng(seed))[:, 1] - cloud[:, 1] for seed in range(20)]
    assert all(np.ptp(m) < 1e-5 for m in moves)  # the whole cloud moves together
    assert max(abs(m[0]) for m in moves) <= 7.0 and max(abs(m[0]) for m in moves) > 3.0
    assert PointAugment(AugmentConfig(lateral_shift_m=7.0)).max_shift_m == pytest.approx(
        PointAugment(AugmentConfig()).max_shift_m + 7.0)
    cut = PointAugment(AugmentConfig(**base, range_cut_p=1.0, range_cut_m=(40.0, 50.0)))
    assert cut(cloud, np.random.default_rng(0))[:, 0].tolist() == [10.0, 0.0]
    clean = PointAugment(AugmentConfig(**base))
    np.testing.assert_array_equal(clean(cloud, np.random.default_rng(0)), cloud)


def test_polar_student_exports_to_onnx_with_its_grid(tmp_path):
    pytest.importorskip("onnxruntime")
    from distilvpr_ros.models.checkpoint import save_model_checkpoint
    from distilvpr_ros.models.export import OnnxRunner, export_model
    from distilvpr_ros.models.inference import input_spec_of

    model = build_model("lidar_student", ModelConfig(lidar_encoder="polar", student_dim=128, pretrained=False)).eval()
    save_model_checkpoint(tmp_path / "ckpt", model, config={})
    runner = OnnxRunner(export_model(tmp_path / "ckpt", tmp_path / "polar.onnx"))
    spec = input_spec_of(runner)
    assert spec.bev == model.input_spec.bev and spec.descriptor_dim == 128
    feeds = model_inputs(spec, [None], [town(4)])
    np.testing.assert_allclose(embed_batch(runner, feeds), embed_batch(model, feeds), atol=1e-5)
