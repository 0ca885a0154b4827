"""Camera verification with CNN descriptors (ORB keypoints described by the pretrained Lite0 trunk, optionally through
a trained head): PnP on a crafted pair with a known pose, matches kept under a night-like photometric change (plain
ORB measured alongside), the spatially excluded ratio test, the head's file round trip and training step, and
rejection (never a crash) of empty / black / featureless images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distilvpr_ros.verification import CameraVerificationConfig, CameraVerifier, KeyframeView
from distilvpr_ros.verification.cnn_descriptors import CnnDescriptor, DescriptorHead
from distilvpr_ros.verification.cnn_head_training import PairSample, info_nce, pair_sample, train_head
from distilvpr_ros.verification.features import FeatureExtractor, LocalFeatures, match_features

from verification_scene import PlaneScene, pose, pose_error

#: Raw CNN features (no head file needed): mutual NN + ratio 0.9 with the second-best 10 px away from the best.
CNN = dict(features="cnn", cnn_stages=(2, 3, 4), ratio=0.9, ratio_exclusion_px=10.0)
HEAD_STAGES = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def scene():
    s = PlaneScene(seed=0)
    kf_pose, q_pose = pose(0.0, 0.0, 0.0), pose(2.5, 0.6, 6.0)
    kf_img, _ = s.render(kf_pose)
    q_img, _ = s.render(q_pose)
    return dict(scene=s, kf_pose=kf_pose, kf_img=kf_img, cloud=s.lidar(kf_pose), query=q_img, query_pose=q_pose)


def keyframe(scene) -> KeyframeView:
    return KeyframeView.from_cloud(scene["kf_pose"], scene["scene"].calib, scene["kf_img"], scene["cloud"])


def night(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """A night-like version of ``image``: dark (x0.3, gamma 1.8), a lamp's glow, sensor noise of 12 grey levels."""
    x = image.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    v, u = np.mgrid[0:h, 0:w]
    glow = 0.35 * np.exp(-((u - 0.7 * w) ** 2 + (v - 0.3 * h) ** 2) / (2 * (0.15 * w) ** 2))
    x = 0.3 * x ** 1.8 + glow[..., None] * np.array([1.0, 0.85, 0.5])
    x = x * 255 + np.random.default_rng(seed).normal(0, 12, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def correct_matches(verifier: CameraVerifier, scene, query: np.ndarray) -> tuple[int, int]:
    """(matches, matches within 3 px of the keyframe point's true projection in the query)."""
    kf = keyframe(scene)
    assert verifier.prepare(kf) == ""
    q = verifier.features(query)
    pairs = match_features(q, kf.features, verifier.config.ratio, verifier.config.ratio_exclusion_px)
    calib = scene["scene"].calib
    from distilvpr_ros.data.geometry import invert, transform_points

    T = invert(scene["query_pose"] @ calib.T_base_camera) @ kf.pose @ calib.T_base_camera
    uv, _ = calib.project(transform_points(T, kf.points[pairs[:, 1]]))
    return len(pairs), int((np.linalg.norm(uv - q.uv[pairs[:, 0]], axis=1) < 3).sum())


def test_cnn_descriptors_relocalize_a_pair_with_a_known_pose(scene):
    v = CameraVerifier(CameraVerificationConfig(**CNN))
    assert v.extractor.kind == "cnn" and v.extractor.cnn_stages == (2, 3, 4)
    r = v.verify(scene["query"], keyframe(scene))
    assert r.accepted, r.reason
    assert r.inliers >= 50
    dt, dr = pose_error(r.pose, scene["query_pose"])
    assert dt < 0.3 and dr < 0.5, (dt, dr)
    q = v.features(scene["query"])
    assert q.descriptors.dtype == np.float32 and q.descriptors.shape == (len(q), 24 + 40 + 80)
    assert np.allclose(np.linalg.norm(q.descriptors, axis=1), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def night_head(tmp_path_factory):
    """A head trained (``cnn_head_training``) on day keyframes vs night-like queries of two *other* streets."""
    verifier = CameraVerifier(CameraVerificationConfig(features="orb"))
    cnn = CnnDescriptor(HEAD_STAGES)
    samples = []
    for seed in (1, 2):
        s = PlaneScene(seed=seed)
        kf_pose = pose(0.0, 0.0, 0.0)
        kf = KeyframeView.from_cloud(kf_pose, s.calib, s.render(kf_pose)[0], s.lidar(kf_pose))
        for k, (x, y, yaw) in enumerate([(2.0, 0.3, 4.0), (3.0, -0.5, -5.0), (1.0, 0.8, 8.0)]):
            qp = pose(x, y, yaw)
            sample = pair_sample(verifier, cnn, kf, night(s.render(qp)[0], seed=10 * seed + k), qp)
            samples.append(sample)
    head, _ = train_head(samples, HEAD_STAGES, epochs=25, hidden=128, out_dim=64, log=lambda *_: None)
    path = tmp_path_factory.mktemp("head") / "night.safetensors"
    head.save(path)
    return path


def test_night_like_change_keeps_matches_with_a_trained_head_orb_measured_alongside(scene, night_head):
    dark = night(scene["query"])
    cnn = CameraVerifier(CameraVerificationConfig(features="cnn", cnn_head=str(night_head), ratio=0.9,
                                                  ratio_exclusion_px=10.0))
    raw = CameraVerifier(CameraVerificationConfig(**CNN))
    orb = CameraVerifier(CameraVerificationConfig(features="orb"))
    found = {name: (correct_matches(v, scene, scene["query"]), correct_matches(v, scene, dark))
             for name, v in (("cnn head", cnn), ("cnn raw", raw), ("orb", orb))}
    print("correct matches day -> night-like:", {k: (d[1], n[1]) for k, (d, n) in found.items()})
    dark_cnn, dark_orb = found["cnn head"][1], found["orb"][1]
    assert dark_cnn[1] >= 30 and dark_cnn[1] > dark_orb[1], found
    assert dark_cnn[1] >= 0.5 * dark_cnn[0]  # most kept matches are right (3 px)
    r = cnn.verify(dark, keyframe(scene))
    assert r.accepted, r.reason
    dt, dr = pose_error(r.pose, scene["query_pose"])
    assert dt < 0.5 and dr < 1.0, (dt, dr)


def test_cnn_bad_input_is_rejected_with_a_reason(scene):
    v = CameraVerifier(CameraVerificationConfig(**CNN))
    kf, c = keyframe(scene), scene["scene"].calib
    black = np.zeros((c.height, c.width, 3), np.uint8)
    grey = np.full((c.height, c.width, 3), 128, np.uint8)
    for query in (None, np.zeros((0, 0, 3), np.uint8), black, grey, black[:5, :5], black[..., 0]):
        r = v.verify(query, kf)
        assert not r.accepted and r.reason.startswith("query has too few features"), r.reason
    for image in (black, grey):
        r = v.verify(scene["query"], KeyframeView(kf.pose, c, image, kf.depth))
        assert not r.accepted and r.reason.startswith("keyframe has too few features"), r.reason
    noise = np.random.default_rng(0).integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
    r = v.verify(noise, kf)
    assert not r.accepted and r.reason
    # a grey (H, W) and an odd-sized image are described too (padded to the trunk's stride)
    assert len(v.features(scene["query"][..., 1])) > 100
    odd = v.features(scene["query"][:237, :301])
    assert len(odd) > 100 and np.all(np.isfinite(odd.descriptors))


def test_ratio_exclusion_looks_past_a_keypoints_neighbours():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((6, 16)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b_desc = np.vstack([d, d[0] + 0.01 * rng.standard_normal(16).astype(np.float32)])  # 6 = a neighbour of 0
    b_uv = np.vstack([rng.uniform(50, 300, (6, 2)), [[0.0, 0.0]]])
    b_uv[6] = b_uv[0] + [2.0, 1.0]
    a = LocalFeatures("cnn", b_uv[:6] + 0.5, d + 0.1 * rng.standard_normal(d.shape).astype(np.float32))
    b = LocalFeatures("cnn", b_uv, b_desc)
    plain = match_features(a, b, 0.8)
    excl = match_features(a, b, 0.8, exclusion_px=5.0)
    assert 0 not in plain[:, 0] and len(plain) == 5  # the neighbour's near-copy fails the plain ratio test
    assert len(excl) == 6 and excl[0].tolist() in ([0, 0], [0, 6])
    # beyond the exclusion radius the near-copy is a rival again
    b_far = LocalFeatures("cnn", np.vstack([b_uv[:6], b_uv[0] + [40.0, 0.0]]), b_desc)
    assert 0 not in match_features(a, b_far, 0.8, exclusion_px=5.0)[:, 0]
    assert np.array_equal(match_features(a, b, 1.0)[:, 0], np.arange(6))  # ratio 1: mutual NN only
    orb = FeatureExtractor("orb", 300)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    fa = orb.extract(img)
    assert np.array_equal(match_features(fa, fa, 0.8, exclusion_px=3.0), match_features(fa, fa, 0.8))
    with pytest.raises(ValueError, match="cannot match"):
        match_features(a, LocalFeatures("cnn", b_uv, np.zeros((7, 8), np.float32)))


@pytest.mark.parametrize("exclusion_px", [0.0, 12.0])
def test_dense_matching_equals_a_per_keypoint_reference(exclusion_px):
    """match_features (mutual NN + ratio, optionally with the spatially excluded second-best) against a plain loop
    over a's keypoints, on random descriptors with near-duplicates."""
    rng = np.random.default_rng(3)
    b_desc = rng.standard_normal((120, 32)).astype(np.float32)
    a_desc = np.vstack([b_desc[:80] + 0.3 * rng.standard_normal((80, 32)).astype(np.float32),
                        rng.standard_normal((60, 32)).astype(np.float32)])
    b_uv, a_uv = rng.uniform(0, 160, (120, 2)), rng.uniform(0, 160, (140, 2))
    a, b = LocalFeatures("cnn", a_uv, a_desc), LocalFeatures("cnn", b_uv, b_desc)
    dist = np.linalg.norm(a_desc[:, None] - b_desc[None], axis=2)
    expected = []
    for i in range(len(a_desc)):
        j = int(np.argmin(dist[i]))
        if int(np.argmin(dist[:, j])) != i:
            continue
        rivals = [k for k in range(len(b_desc)) if k != j and np.linalg.norm(b_uv[k] - b_uv[j]) > exclusion_px]
        if dist[i, j] < 0.8 * dist[i, rivals].min():
            expected.append([i, j])
    got = match_features(a, b, 0.8, exclusion_px=exclusion_px)
    assert len(expected) > 20 and got.tolist() == expected


def test_descriptor_head_round_trips_and_refuses_bad_files(tmp_path, scene):
    torch.manual_seed(0)
    head = DescriptorHead((2, 3), hidden=32, out_dim=16).eval()
    path = tmp_path / "head.safetensors"
    head.save(path, region="train")
    back = DescriptorHead.load(path)
    assert back.stages == (2, 3) and back.out_dim == 16 and back.info == {"region": "train"}
    x = torch.randn(5, 64)
    assert torch.allclose(head(x), back(x))
    ext = FeatureExtractor("cnn", 500, cnn_stages=(4,), cnn_head=str(path))
    assert ext.cnn_stages == (2, 3)  # the head's stages
    f = ext.extract(scene["query"])
    assert f.descriptors.shape == (len(f), 16)
    raw = CnnDescriptor((2, 3))
    expected = back(raw.stage_vectors(scene["query"], f.uv)).numpy()
    assert np.allclose(f.descriptors, expected, atol=1e-5)
    (tmp_path / "junk.safetensors").write_bytes(b"not a head")
    for bad in (tmp_path / "missing.safetensors", tmp_path / "junk.safetensors"):
        with pytest.raises(ValueError):
            DescriptorHead.load(bad)
    with pytest.raises(ValueError):
        CameraVerificationConfig(features="cnn", cnn_stages=(6,))


def test_head_training_separates_corresponding_keypoints():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(20):  # a keyframe's stage vectors and a noisy, shuffled copy as the query
        k = rng.standard_normal((60, 64)).astype(np.float32)
        perm = rng.permutation(60)
        q = k[perm] + 0.8 * rng.standard_normal((60, 64)).astype(np.float32)
        inv = np.argsort(perm)
        samples.append(PairSample("night", torch.from_numpy(k).half(), torch.from_numpy(q).half(), np.arange(40),
                                  inv[:40]))
    untrained = DescriptorHead((2, 3), hidden=64, out_dim=32)
    head, losses = train_head(samples, (2, 3), epochs=4, hidden=64, out_dim=32, log=lambda *_: None)
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        assert info_nce(head, samples[0], 0.05) < info_nce(untrained, samples[0], 0.05)


def test_trunk_on_onnx_runtime_gives_torch_maps(scene):
    ort_desc, torch_desc = CnnDescriptor((1, 3)), CnnDescriptor((1, 3), runtime="torch")
    assert ort_desc.runtime == "onnxruntime" and torch_desc.runtime == "torch"
    for image in (scene["query"], scene["query"][:237, :301]):  # any size (padded to a multiple of 16)
        a, b = ort_desc.feature_maps(image), torch_desc.feature_maps(image)
        assert [m.shape for m in a] == [m.shape for m in b]
        assert all(torch.allclose(x, y, atol=1e-3) for x, y in zip(a, b))
