"""Descriptor whitening (models.whitening) against scikit-learn's PCA, and the teacher's whitened_concat fusion:
the forward matches the numpy whitening + weighted fusion, the statistics travel with the checkpoint and ONNX."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from distilvpr_ros.models import BevConfig, ModelConfig, build_model
from distilvpr_ros.models.checkpoint import CheckpointError, load_model, save_model_checkpoint
from distilvpr_ros.models.export import OnnxRunner, export_onnx
from distilvpr_ros.models.vpr import l2_normalize, weighted_fusion
from distilvpr_ros.models.whitening import apply_whitening, fit_whitening


def anisotropic(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit rows crowded around one direction, with very unequal spreads (like the LiDAR head's)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.geomspace(1.0, 1e-2, d) + 5.0 * rng.normal(size=d)
    return l2_normalize(x)


def config(**overrides) -> ModelConfig:
    values = dict(image_size=(160, 120), bev=BevConfig(extent_m=40.0, cells=32), lidar_channels=(8, 16),
                  pretrained=False, cloud_dim=16, image_dim=24, fusion="whitened_concat", fusion_cloud_weight=0.8)
    values.update(overrides)
    return ModelConfig(**values)


def test_whitening_matches_sklearn_pca_whiten():
    x = anisotropic(400, 12)
    mean, projection = fit_whitening(x, eps=0.0)
    pca = PCA(n_components=12, whiten=True, svd_solver="full").fit(x.astype(np.float64))
    ours = (x - mean) @ projection
    ref = pca.transform(x)
    signs = np.sign(np.sum(ours * ref, axis=0))  # each component is defined up to its sign
    np.testing.assert_allclose(mean, pca.mean_, atol=1e-6)
    np.testing.assert_allclose(ours * signs, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.cov(ours, rowvar=False), np.eye(12), atol=1e-4)


def test_whitening_power_and_shrinkage():
    x = anisotropic(300, 8, seed=1)
    _, rotation = fit_whitening(x, power=0.0)  # centring only: an orthonormal rotation, cosines of centred kept
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(8), atol=1e-5)
    _, uniform = fit_whitening(x, shrinkage=1.0)  # all eigenvalues equal: every direction scaled alike
    norms = np.linalg.norm(uniform, axis=0)
    np.testing.assert_allclose(norms, norms[0], rtol=1e-5)
    _, half = fit_whitening(x, power=0.5)
    _, full = fit_whitening(x, power=1.0)
    spread = [np.linalg.norm(p, axis=0).max() / np.linalg.norm(p, axis=0).min() for p in (half, full)]
    assert 1.0 < spread[0] < spread[1]
    np.testing.assert_allclose(spread[0] ** 2, spread[1], rtol=1e-4)
    for bad in (dict(power=1.5), dict(shrinkage=-0.1)):
        with pytest.raises(ValueError):
            fit_whitening(x, **bad)
    with pytest.raises(ValueError):
        fit_whitening(x[:1])


def fitted_teacher(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("teacher", config()).eval()
    for branch, dim in (("cloud", 16), ("image", 24)):
        model.set_whitening(branch, *fit_whitening(anisotropic(200, dim, seed=dim), power=1.0, shrinkage=0.1))
    return model


def test_whitened_concat_is_the_numpy_whitening_then_weighted_fusion():
    model = fitted_teacher()
    inputs = model.input_spec.example_inputs(batch=6)
    with torch.no_grad():
        out = model(**inputs)
    cloud = apply_whitening(out["cloud"].numpy(), model.cloud_whiten_mean.numpy(),
                            model.cloud_whiten_projection.numpy())
    image = apply_whitening(out["image"].numpy(), model.image_whiten_mean.numpy(),
                            model.image_whiten_projection.numpy())
    want = weighted_fusion(cloud, image, 0.8)
    np.testing.assert_allclose(out["fused"].numpy(), np.sqrt(2.0) * want, atol=1e-5)
    embedded = model.embed(**inputs)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-6)  # the descriptor is unit norm
    np.testing.assert_allclose(embedded, want, atol=1e-5)
    # the whitening changes the descriptor: not the plain weighted fusion of the heads
    assert np.abs(embedded - weighted_fusion(out["cloud"].numpy(), out["image"].numpy(), 0.8)).max() > 1e-2


def test_unfitted_whitened_concat_is_weighted_concat():
    torch.manual_seed(0)
    model = build_model("teacher", config()).eval()
    plain = build_model("teacher", config(fusion="weighted_concat")).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "whiten" not in k})
    inputs = model.input_spec.example_inputs(batch=3)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs)["fused"], plain(**inputs)["fused"])
    with pytest.raises(ValueError):
        plain.set_whitening("cloud", np.zeros(16), np.eye(16))
    with pytest.raises(ValueError):
        model.set_whitening("cloud", np.zeros(15), np.eye(15))


def test_whitening_statistics_round_trip_through_checkpoint_and_onnx(tmp_path):
    model = fitted_teacher()
    inputs = model.input_spec.example_inputs(batch=4, seed=3)
    want = model.embed(**inputs)
    save_model_checkpoint(tmp_path / "ckpt", model, config={})
    loaded = load_model(tmp_path / "ckpt", expect_kind="teacher")
    assert loaded.cfg.fusion == "whitened_concat"
    for name in ("cloud_whiten_mean", "cloud_whiten_projection", "image_whiten_mean", "image_whiten_projection"):
        assert torch.equal(getattr(loaded, name), getattr(model, name))
    np.testing.assert_allclose(loaded.embed(**inputs), want, atol=1e-6)
    runner = OnnxRunner(export_onnx(loaded, tmp_path / "teacher.onnx"))
    np.testing.assert_allclose(runner.embed(**{k: v.numpy() for k, v in inputs.items()}), want, atol=1e-4)
    # a config without the statistics cannot silently drop them
    meta_file = tmp_path / "ckpt" / "checkpoint.json"
    meta_file.write_text(meta_file.read_text().replace('"whitened_concat"', '"weighted_concat"'))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model(tmp_path / "ckpt")
