"""Models: shapes, GeM, pretrained Lite0 weights, BEV rasterisation (numpy = torch), ONNX parity, gradients."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from distilvpr_ros.models import (
    BevConfig,
    GeM,
    ModelConfig,
    bev_from_points,
    build_model,
    cloud_to_bev,
    image_to_tensor,
    make_image_encoder,
)
from distilvpr_ros.models.export import OnnxRunner, export_onnx
from distilvpr_ros.models.image import Lite0Trunk, load_lite0_state_dict

CORRIDOR = Path(__file__).resolve().parents[2] / "shared" / "data" / "corridor"
SMALL_SIZE = (160, 120)  # (W, H)
SMALL_BEV = BevConfig(extent_m=40.0, cells=32)


def small_config(**overrides) -> ModelConfig:
    values = dict(image_size=SMALL_SIZE, bev=SMALL_BEV, lidar_channels=(8, 16), pretrained=False)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="module")
def pretrained_student():
    return build_model("camera_student", small_config(pretrained=True)).eval()


# --- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_image_encoder_output_dim(backbone):
    encoder = make_image_encoder(backbone, out_dim=96, pretrained=False, image_size=SMALL_SIZE)
    out = encoder(torch.rand(2, 3, SMALL_SIZE[1], SMALL_SIZE[0]))
    assert out.shape == (2, 96)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("kind", ["teacher", "camera_student", "lidar_student"])
def test_every_model_outputs_its_declared_descriptor(kind, backbone):
    model = build_model(kind, small_config(image_backbone=backbone))
    inputs = model.input_spec.example_inputs(batch=2)
    out = model(**inputs)
    assert out["fused"].shape == (2, model.input_spec.descriptor_dim) == (2, 384)
    if kind == "teacher":
        assert out["cloud"].shape == (2, 128) and out["image"].shape == (2, 256)
        unit = [torch.nn.functional.normalize(out[k], dim=1) for k in ("cloud", "image")]
        torch.testing.assert_close(out["fused"], torch.cat(unit, dim=1))  # default: normalized_concat
        plain = build_model(kind, small_config(image_backbone=backbone, fusion="concat"))
        plain.load_state_dict(model.state_dict())
        raw = plain(**inputs)
        assert torch.equal(raw["fused"], torch.cat([raw["cloud"], raw["image"]], dim=1))  # the paper's fusion
    assert set(model.input_spec.inputs) == set(inputs)


def test_weighted_fusion_balances_the_normalised_branches():
    """weighted_concat: cosine of fused = w cos(cloud) + (1 - w) cos(image), fused norm sqrt(2); w = 0.5 is
    normalized_concat; the numpy weighted_fusion of the two heads ranks exactly as the fused head."""
    from distilvpr_ros.models.vpr import weighted_fusion

    torch.manual_seed(0)
    base = build_model("teacher", small_config()).eval()
    inputs = base.input_spec.example_inputs(batch=5)
    with torch.no_grad():
        ref = base(**inputs)
    for w in (0.5, 0.8, 0.2):
        model = build_model("teacher", small_config(fusion="weighted_concat", fusion_cloud_weight=w)).eval()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            out = model(**inputs)
        fused = out["fused"].numpy()
        np.testing.assert_allclose(np.linalg.norm(fused, axis=1), np.sqrt(2.0), rtol=1e-5)
        unit = {k: torch.nn.functional.normalize(ref[k], dim=1).numpy() for k in ("cloud", "image")}
        cosine = fused @ fused.T / 2.0
        want = w * unit["cloud"] @ unit["cloud"].T + (1 - w) * unit["image"] @ unit["image"].T
        np.testing.assert_allclose(cosine, want, atol=1e-5)
        numpy_fused = weighted_fusion(ref["cloud"].numpy(), ref["image"].numpy(), w)
        np.testing.assert_allclose(numpy_fused @ numpy_fused.T, want, atol=1e-5)
        if w == 0.5:
            torch.testing.assert_close(out["fused"], ref["fused"])
        assert model.cloud_weight == pytest.approx(w)
    with pytest.raises(ValueError):
        weighted_fusion(ref["cloud"].numpy(), ref["image"].numpy(), 1.5)
    with pytest.raises(ValidationError):
        small_config(fusion="weighted_concat", fusion_cloud_weight=1.0)


def test_learned_fusion_weight_starts_at_the_config_and_gets_gradients():
    model = build_model("teacher", small_config(fusion="learned_concat", fusion_cloud_weight=0.7))
    assert model.cloud_weight == pytest.approx(0.7)
    out = model(**model.input_spec.example_inputs(batch=3))
    fixed = build_model("teacher", small_config(fusion="weighted_concat", fusion_cloud_weight=0.7))
    fixed.load_state_dict({k: v for k, v in model.state_dict().items() if k != "fusion_logit"})
    torch.testing.assert_close(out["fused"], fixed(**model.input_spec.example_inputs(batch=3))["fused"])
    out["fused"][:, :128].sum().backward()  # only the cloud part: d/d(logit) must be non-zero
    assert model.fusion_logit.grad is not None and float(model.fusion_logit.grad) != 0.0
    assert build_model("teacher", small_config()).cloud_weight == 0.5
    assert build_model("teacher", small_config(fusion="concat")).cloud_weight is None


def test_input_spec_describes_inputs():
    teacher = build_model("teacher", small_config())
    assert teacher.input_spec.inputs == ("image", "cloud")
    assert teacher.input_spec.image_size == SMALL_SIZE
    assert teacher.input_spec.bev_shape == (3, 32, 32)
    assert build_model("camera_student", small_config()).input_spec.bev_shape is None
    assert build_model("lidar_student", small_config()).input_spec.image_size is None


def test_embed_is_unit_norm_numpy_and_keeps_the_mode():
    model = build_model("camera_student", small_config()).train()
    emb = model.embed(image=np.random.default_rng(0).random((2, 3, 120, 160), dtype=np.float32))
    assert emb.dtype == np.float32 and emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert model.training


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValidationError):
        ModelConfig(image_backbone="resnet18", pretrained=True)
    with pytest.raises(ValidationError):
        ModelConfig(bad_key=1)
    with pytest.raises(ValueError):
        make_image_encoder("resnet18", 8, pretrained=False, freeze_stages=5)
    assert ModelConfig(cloud_dim=64, image_dim=64).student_out_dim == 128


# --- GeM -------------------------------------------------------------------------------------------


def test_gem_interpolates_between_average_and_max_pooling():
    x = torch.rand(2, 5, 7, 9, generator=torch.Generator().manual_seed(0)) + 0.01
    gem = GeM()
    assert isinstance(gem.p, torch.nn.Parameter) and gem.p.requires_grad
    assert gem.p.item() == pytest.approx(3.0)
    with torch.no_grad():
        gem.p.fill_(1.0)
        torch.testing.assert_close(gem(x), x.mean(dim=(2, 3)))
        errors = []
        for p in (1.0, 4.0, 16.0, 64.0):
            gem.p.fill_(p)
            errors.append((x.amax(dim=(2, 3)) - gem(x)).abs().max().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.1


def test_gem_p_is_learned():
    gem = GeM()
    gem(torch.rand(1, 4, 3, 3)).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0


# --- pretrained Lite0 --------------------------------------------------------------------------------


def test_lite0_weights_load_into_the_trunk_by_name():
    shipped = load_lite0_state_dict()
    trunk = Lite0Trunk(SMALL_SIZE, pretrained=True)
    kept = trunk.state_dict()
    assert set(kept) <= set(shipped), "trunk keys missing from the shipped weights"
    for key, value in kept.items():
        assert torch.equal(value, shipped[key]), key
    dropped = {key.split(".")[0] if not key.startswith("_blocks") else "_blocks" for key in set(shipped) - set(kept)}
    assert dropped == {"_blocks", "_conv_head", "_bn1", "_fc"}
    dropped_blocks = {int(k.split(".")[1]) for k in set(shipped) - set(kept) if k.startswith("_blocks")}
    assert min(dropped_blocks) == 11


def test_pretrained_student_gives_distinct_finite_descriptors_on_real_images(pretrained_student):
    files = sorted((CORRIDOR / "query").glob("*.jpg"))
    if not files:
        pytest.skip(f"Corridor images not found under {CORRIDOR}")
    images = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in (files[0], files[60])]
    batch = np.stack([image_to_tensor(rgb, SMALL_SIZE) for rgb in images])
    desc = pretrained_student.embed(image=batch)
    assert np.isfinite(desc).all()
    assert float(desc[0] @ desc[1]) < 0.999


def test_frozen_stages_get_no_gradient_and_keep_bn_statistics():
    model = build_model("camera_student", small_config(pretrained=True, freeze_stages=3)).train()
    frozen = [m for stage in model.image_encoder.trunk.stages()[:3] for m in stage]
    frozen_params = {id(p) for m in frozen for p in m.parameters()}
    assert all(not m.training for m in frozen)
    stem_bn_mean = model.image_encoder.trunk._bn0.running_mean.clone()
    model.descriptor(image=torch.rand(2, 3, 120, 160)).sum().backward()
    for name, param in model.named_parameters():
        if id(param) in frozen_params:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None and torch.isfinite(param.grad).all(), name
    assert torch.equal(model.image_encoder.trunk._bn0.running_mean, stem_bn_mean)


def test_teacher_gradients_reach_both_branches():
    model = build_model("teacher", small_config(image_backbone="resnet18")).train()
    out = model(**model.input_spec.example_inputs(batch=2))
    out["fused"].pow(2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.lidar_encoder.proj.weight.grad.abs().sum() > 0
    assert model.image_encoder.proj.weight.grad.abs().sum() > 0


# --- BEV -------------------------------------------------------------------------------------------


def test_point_lands_in_the_right_cell():
    cfg = BevConfig(extent_m=40.0, cells=64, intensity_max=255.0)  # 1.25 m cells, 8-bit intensity
    cloud = np.array([[10.3, -5.2, 0.5, 100.0, 3.0, 0.01]], dtype=np.float32)
    row, col = int((10.3 + 40.0) // 1.25), int((-5.2 + 40.0) // 1.25)
    bev = cloud_to_bev(cloud, cfg)
    assert bev.shape == (3, 64, 64) and bev.dtype == np.float32
    assert np.argwhere(bev.any(axis=0)).tolist() == [[row, col]]
    expected = [(0.5 + 2.5) / 6.0, np.log1p(1) / np.log1p(32), 100.0 / 255.0]
    np.testing.assert_allclose(bev[:, row, col], expected, rtol=1e-6)
    np.testing.assert_allclose(bev_from_points(torch.from_numpy(cloud), cfg=cfg)[0].numpy(), bev)


@pytest.mark.parametrize(
    "cloud",
    [
        np.zeros((0, 6), np.float32),
        np.full((50, 6), np.nan, np.float32),
        np.array([[500.0, 0, 0, 1, 0, 0], [0, -41.0, 0, 1, 0, 0], [0.1, 0.1, 0, 1, 0, 0]], np.float32),
    ],
    ids=["empty", "all_nan", "out_of_range_or_too_close"],
)
def test_degenerate_clouds_give_zero_bev(cloud):
    np.testing.assert_array_equal(cloud_to_bev(cloud, SMALL_BEV), 0.0)
    bev = bev_from_points([cloud], cfg=SMALL_BEV)
    assert bev.shape == (1, 3, 32, 32) and torch.equal(bev, torch.zeros_like(bev))
    model = build_model("lidar_student", small_config()).eval()
    assert torch.isfinite(model.descriptor(cloud=[cloud])).all()


def random_cloud(rng, n):
    cloud = np.column_stack(
        [rng.uniform(-60, 60, (n, 2)), rng.uniform(-3, 6, n), rng.uniform(0, 300, n), rng.integers(0, 32, n),
         rng.uniform(0, 0.1, n)]
    ).astype(np.float32)
    cloud[rng.random(n) < 0.05, :3] = np.nan
    cloud[rng.random(n) < 0.05, 3] = np.inf
    return cloud


def test_numpy_and_torch_bev_agree_on_a_padded_batch():
    rng = np.random.default_rng(0)
    clouds = [random_cloud(rng, 3000), random_cloud(rng, 1200), np.zeros((0, 6), np.float32)]
    expected = np.stack([cloud_to_bev(c, SMALL_BEV) for c in clouds])
    np.testing.assert_allclose(bev_from_points(clouds, cfg=SMALL_BEV).numpy(), expected, rtol=1e-6, atol=1e-7)
    assert expected[0].any()

    padded = torch.zeros(2, 3000, 6)
    padded[0] = torch.from_numpy(clouds[0])
    padded[1, :1200] = torch.from_numpy(clouds[1])
    padded[1, 1200:, :3] = 5.0  # padding that must be ignored
    mask = torch.zeros(2, 3000, dtype=torch.bool)
    mask[0], mask[1, :1200] = True, True
    np.testing.assert_allclose(bev_from_points(padded, mask, SMALL_BEV).numpy(), expected[:2], rtol=1e-6, atol=1e-7)


def test_bev_of_a_hand_made_cloud():
    """Cells of 2.5 m (40 m half side, 32 cells), heights over [-2.5, 3.5] m, density saturating at 32 points."""
    cloud = np.array([
        [5.0, 0.0, 0.5, 0.4],  # cell (18, 16): height 3/6
        [5.5, 1.0, -1.0, 0.8],  # the same cell: height 1.5/6
        [-10.0, -20.0, 9.0, 2.0],  # cell (12, 8): height and intensity clipped to 1
        [0.5, 0.0, 0.0, 1.0],  # closer than min_range_m: dropped
        [50.0, 0.0, 0.0, 1.0],  # outside the grid: dropped
        [np.nan, 0.0, 0.0, 1.0],  # not finite: dropped
    ], dtype=np.float32)
    expected = np.zeros((3, 32, 32), dtype=np.float32)
    expected[:, 18, 16] = [0.5, np.log1p(2) / np.log1p(32), 0.6]
    expected[:, 12, 8] = [1.0, np.log1p(1) / np.log1p(32), 1.0]
    np.testing.assert_allclose(cloud_to_bev(cloud, SMALL_BEV), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bev_from_points([cloud], cfg=SMALL_BEV).numpy()[0], expected, rtol=1e-6, atol=1e-7)


def test_lidar_model_takes_raw_clouds_or_precomputed_bev():
    rng = np.random.default_rng(1)
    clouds = [random_cloud(rng, 2000), random_cloud(rng, 500)]
    model = build_model("lidar_student", small_config()).eval()
    bev = torch.from_numpy(np.stack([cloud_to_bev(c, SMALL_BEV) for c in clouds]))
    with torch.no_grad():
        torch.testing.assert_close(model.descriptor(cloud=clouds), model.descriptor(cloud=bev), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        model.descriptor(cloud=torch.zeros(1, 3, 16, 16))


# --- preprocessing and ONNX ---------------------------------------------------------------------------


def test_image_to_tensor_resizes_and_scales():
    rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = image_to_tensor(rgb, SMALL_SIZE)
    assert out.shape == (3, 120, 160) and out.dtype == np.float32
    # halving with area interpolation is the mean of each 2 x 2 block (cv2 rounds it to uint8)
    block_mean = rgb.reshape(120, 2, 160, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    np.testing.assert_allclose(out * 255, block_mean, atol=0.5 + 1e-4)
    np.testing.assert_array_equal(image_to_tensor(rgb, (320, 240)), rgb.transpose(2, 0, 1) / np.float32(255))
    with pytest.raises(ValueError):
        image_to_tensor(rgb.astype(np.float32))


def test_onnx_export_matches_torch(pretrained_student, tmp_path):
    path = export_onnx(pretrained_student, tmp_path / "camera_student.onnx")
    runner = OnnxRunner(path, intra_op_num_threads=2)
    assert runner.input_names == ["image"] and runner.descriptor_dim == 384
    assert runner.metadata["kind"] == "camera_student"
    image = pretrained_student.input_spec.example_inputs(batch=3, seed=5)["image"]  # export used batch 1
    with torch.no_grad():
        expected = pretrained_student.descriptor(image=image).numpy()
    got = runner(image=image.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(runner.embed(image=image.numpy()), pretrained_student.embed(image=image), atol=1e-5)
