"""Geometric verification: PnP relocalization on an analytic scene with known poses, LiDAR registration of a
known transform, re-ranking, temporal agreement, and rejection (never a crash) on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from distilvpr_ros.data.geometry import invert, transform_points
from distilvpr_ros.verification import (CameraCalibration, CameraVerificationConfig, CameraVerifier,
                                        ConsecutiveAgreement, KeyframeView, LidarVerificationConfig, LidarVerifier,
                                        rerank)
from distilvpr_ros.verification.agreement import PosePrior
from distilvpr_ros.verification.depth import lookup_points, sparse_depth
from distilvpr_ros.verification.features import FeatureExtractor, match_features
from distilvpr_ros.verification.lidar import yaw_transform
from distilvpr_ros.verification.pnp import pose_covariance, solve_pnp

from verification_scene import PlaneScene, make_calibration, pose, pose_error


@pytest.fixture(scope="module")
def scene():
    """Keyframe at the origin; the query 2.5 m ahead, 0.6 m left, turned 6 deg; a second, different street."""
    s = PlaneScene(seed=0)
    kf_pose, q_pose = pose(0.0, 0.0, 0.0), pose(2.5, 0.6, 6.0)
    kf_img, _ = s.render(kf_pose)
    q_img, _ = s.render(q_pose)
    other = PlaneScene(seed=1)
    o_img, _ = other.render(kf_pose)
    return dict(scene=s, kf=KeyframeView.from_cloud(kf_pose, s.calib, kf_img, s.lidar(kf_pose)), query=q_img,
                query_pose=q_pose, other=KeyframeView.from_cloud(kf_pose, other.calib, o_img, other.lidar(kf_pose)))


# -- calibration and depth ---------------------------------------------------------------------------


def test_calibration_round_trips_and_reads_the_world_calibration():
    from distilvpr_ros.data.world.config import load_world_config
    from distilvpr_ros.data.world.generate import calibration

    c = make_calibration()
    back = CameraCalibration.from_dict(c.to_dict())
    assert np.allclose(back.K, c.K) and np.allclose(back.T_base_camera, c.T_base_camera)
    assert np.allclose(back.T_camera_lidar, invert(c.T_base_camera) @ c.T_base_lidar)
    world = CameraCalibration.from_world_meta({"calibration": calibration(load_world_config("tiny"))})
    assert (world.width, world.height) == (160, 120)
    # The world's camera looks forward: a point 10 m ahead of the base projects near the image centre.
    uv, inside = world.project(transform_points(invert(world.T_base_camera), np.array([[10.0, 0.0, 1.6]])))
    assert inside[0] and abs(uv[0, 0] - 79.5) < 1 and abs(uv[0, 1] - 59.5) < 10
    with pytest.raises(ValueError, match="lacks 'K'"):
        CameraCalibration.from_dict({"width": 1})


def test_distortion_round_trip():
    c = make_calibration()
    d = CameraCalibration(c.K, c.width, c.height, c.T_base_camera, c.T_base_lidar, dist=[-0.2, 0.05, 0.001, 0, 0])
    pts = np.array([[1.0, -0.5, 6.0], [-2.0, 1.0, 9.0]])
    uv, _ = d.project(pts)
    assert np.allclose(d.back_project(uv, pts[:, 2]), pts, atol=1e-4)


def test_depth_lookup_on_a_plane_is_exact_and_refuses_depth_edges():
    c = make_calibration()
    # A fronto-parallel wall 10 m ahead of the camera, occluding half the view with a wall at 20 m behind it.
    v, u = np.mgrid[0:c.height:3, 0:c.width:1]
    z = np.where(u < c.width / 2, 10.0, 20.0)
    pts_cam = c.back_project(np.column_stack([u.ravel(), v.ravel()]).astype(float), z.ravel())
    cloud = transform_points(invert(c.T_camera_lidar), pts_cam)
    depth = sparse_depth(cloud, c)
    assert (depth > 0).sum() > 0.3 * c.width * c.height
    uv = np.array([[40.3, 101.7], [250.5, 60.2], [c.width / 2 - 0.5, 120.0]])
    pts = lookup_points(depth, uv, c)
    assert np.allclose(pts[0], c.back_project(uv[:1], [10.0])[0], atol=1e-3)
    assert np.allclose(pts[1], c.back_project(uv[1:2], [20.0])[0], atol=1e-3)
    assert np.all(np.isnan(pts[2]))  # on the edge: no depth rather than a wrong one
    assert np.all(np.isnan(lookup_points(np.zeros_like(depth), uv, c)))


# -- camera verification -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["poselib", "opencv"])
def test_pnp_recovers_the_known_query_pose(scene, backend):
    v = CameraVerifier(CameraVerificationConfig(features="sift", pnp_backend=backend))
    r = v.verify(scene["query"], scene["kf"])
    assert r.accepted, r.reason
    assert r.inliers >= 100 and r.reprojection_error_px < 1.0
    dt, dr = pose_error(r.pose, scene["query_pose"])
    assert dt < 0.05 and dr < 0.2, (dt, dr)
    assert np.allclose(r.relative_pose, invert(scene["kf"].pose) @ r.pose)
    assert np.allclose(r.camera_pose, r.pose @ scene["scene"].calib.T_base_camera)
    cov = r.covariance
    assert cov.shape == (6, 6) and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    sigma_t = np.sqrt(np.diag(cov)[:3])
    assert np.all(sigma_t < 0.05)  # a precise fix on 200 inliers
    assert set(r.timings_ms) >= {"features", "matching", "depth", "pnp", "total"}
    assert len(r.inlier_uv_query) == len(r.inlier_uv_keyframe) == r.inliers


def test_orb_also_relocalizes(scene):
    r = CameraVerifier(CameraVerificationConfig(features="orb")).verify(scene["query"], scene["kf"])
    assert r.accepted, r.reason
    dt, dr = pose_error(r.pose, scene["query_pose"])
    assert dt < 0.3 and dr < 0.5, (dt, dr)


def test_rejects_the_wrong_keyframe_and_accepts_the_right_one(scene):
    v = CameraVerifier()
    q = v.features(scene["query"])  # extracted once, matched against both keyframes
    right, wrong = v.verify(q, scene["kf"]), v.verify(q, scene["other"])
    assert right.accepted and not wrong.accepted
    assert wrong.reason and wrong.inliers < v.config.min_inliers
    assert wrong.pose is None or wrong.covariance is None


def test_local_map_pools_the_keyframes_into_one_pose_in_the_map_frame(scene):
    """verify_local_map: correspondences of two keyframes (one ahead of the query, one behind, poses far from the
    origin) in one PnP: more inliers than either alone, each query feature once, the pose in the map frame."""
    s, truth = scene["scene"], pose(2.5, 0.6, 6.0)
    places = (pose(0.0, 0.0, 0.0), pose(4.0, -0.3, -3.0))
    views = [KeyframeView.from_cloud(p, s.calib, s.render(p)[0], s.lidar(p)) for p in places]
    v = CameraVerifier()
    q = v.features(scene["query"])
    single = [v.verify(q, k) for k in views]
    pooled = v.verify_local_map(q, views)
    assert pooled.accepted and all(r.accepted for r in single), pooled.reason
    assert pooled.inliers > max(r.inliers for r in single) and pooled.inliers <= len(q)
    dt, dr = pose_error(pooled.pose, truth)
    assert dt < 0.3 and dr < 0.5, (dt, dr)
    np.testing.assert_allclose(pooled.relative_pose, invert(views[0].pose) @ pooled.pose, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(pooled.covariance) > 0)
    # a keyframe that cannot be verified against is left out; none at all is a rejection with a reason
    blank = KeyframeView.from_cloud(pose(0.0, 0.0, 0.0), s.calib, None, None)
    assert v.verify_local_map(q, [blank, views[0]]).accepted
    none = v.verify_local_map(q, [blank])
    assert not none.accepted and "local map" in none.reason
    assert not v.verify_local_map(q, [scene["other"]]).accepted  # another street


def test_bad_input_is_rejected_with_a_reason(scene):
    v = CameraVerifier()
    kf, c = scene["kf"], scene["kf"].calibration
    blank = np.full((c.height, c.width, 3), 128, np.uint8)
    cases = {
        "query has too few features": v.verify(blank, kf),
        "query has too few features ": v.verify(None, kf),
        "query has too few features  ": v.verify(np.zeros((0, 0, 3), np.uint8), kf),
        "keyframe has no image": v.verify(scene["query"], KeyframeView(kf.pose, c, None, kf.depth)),
        "keyframe has no LiDAR depth": v.verify(scene["query"], KeyframeView.from_cloud(kf.pose, c, kf.image, None)),
        "keyframe has no LiDAR depth ": v.verify(scene["query"], KeyframeView.from_cloud(kf.pose, c, kf.image,
                                                                                         np.zeros((0, 4)))),
        "keyframe has too few features": v.verify(scene["query"], KeyframeView(kf.pose, c, blank, kf.depth)),
        # Depth only far from every keypoint (one pixel): no 2D-3D correspondences.
        "too few matches with LiDAR depth": v.verify(scene["query"], KeyframeView(
            kf.pose, c, kf.image, np.pad(np.ones((1, 1), np.float32), ((0, c.height - 1), (0, c.width - 1))))),
    }
    for expected, r in cases.items():
        assert not r.accepted and r.reason.startswith(expected.strip()), (expected, r.reason)
        assert r.pose is None and r.covariance is None
    # a malformed depth image (wrong shape) is a rejected keyframe with a reason, also when prepared on its own
    broken = KeyframeView(kf.pose, c, kf.image, np.ones((3, 3, 3), np.float32))
    assert v.prepare(broken).startswith("keyframe preparation failed")
    assert not v.verify(scene["query"], broken).accepted
    noise = np.random.default_rng(0).integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
    r = v.verify(noise, kf)
    assert not r.accepted and r.reason


def test_low_points_are_dropped_by_an_explicit_flag_and_zero_is_a_height(scene):
    kf = scene["kf"]
    # every LiDAR point lies below 100 m: dropping low points leaves no 2D-3D correspondence, keeping them accepts
    high = CameraVerifier(CameraVerificationConfig(min_point_height_m=100.0)).verify(scene["query"], kf)
    assert not high.accepted and high.reason.startswith("too few matches with LiDAR depth")
    off = CameraVerificationConfig(min_point_height_m=100.0, drop_low_points=False)
    assert CameraVerifier(off).verify(scene["query"], kf).accepted
    # 0.0 is a height, not "unset"; the former ``None`` still means "keep every point"
    zero = CameraVerificationConfig(min_point_height_m=0.0)
    assert zero.drop_low_points and zero.min_point_height_m == 0.0
    legacy = CameraVerificationConfig(min_point_height_m=None)
    assert not legacy.drop_low_points and legacy.min_point_height_m == 0.3


def test_min_point_height_zero_survives_ros_parameters():
    """A ROS double cannot be None: 0.0 must reach the verifier as 0.0 (it used to be read back as "unset")."""
    pytest.importorskip("rclpy")
    from distilvpr_ros.pipeline.config import NodeConfig
    from distilvpr_ros.ros.params import _validate, flatten, parameter_specs

    specs = {s.name: s for s in parameter_specs()}
    height = specs["verification.camera.min_point_height_m"]
    assert not height.optional and specs["verification.camera.drop_low_points"].default is True
    values = flatten(NodeConfig())
    values["verification.camera.min_point_height_m"] = 0.0
    cfg = _validate(values, list(specs.values())).verification.camera
    assert cfg.min_point_height_m == 0.0 and cfg.drop_low_points
    values["verification.camera.drop_low_points"] = False
    assert not _validate(values, list(specs.values())).verification.camera.drop_low_points


def test_keyframe_is_prepared_once_with_a_3d_point_per_feature(scene):
    s = scene["scene"]
    kf = KeyframeView.from_cloud(scene["kf"].pose, s.calib, scene["kf"].image, s.lidar(scene["kf"].pose))
    v = CameraVerifier(CameraVerificationConfig(features="orb"))
    assert v.prepare(kf) == "" and kf.prepared is not None
    feats, pts = kf.features, kf.points
    assert 0 < len(feats) == len(pts) < kf.detected  # the features without LiDAR depth are left out
    uv, inside = s.calib.project(pts)  # each point projects back onto its own keypoint
    assert inside.all() and np.abs(uv - feats.uv).max() < 0.5
    assert v.verify(scene["query"], kf).accepted and kf.features is feats  # not prepared again
    other = CameraVerifier(CameraVerificationConfig(features="orb", upright=False))
    assert other.prepare(kf) == "" and kf.features is not feats  # other settings: prepared again


def test_upright_features_are_described_at_orientation_zero(scene):
    import cv2

    gray = cv2.cvtColor(scene["query"], cv2.COLOR_RGB2GRAY)
    up, rot = FeatureExtractor("orb", 500, upright=True), FeatureExtractor("orb", 500, upright=False)
    f_up, f_rot = up.extract(scene["query"]), rot.extract(scene["query"])
    orb = cv2.ORB_create(nfeatures=500, fastThreshold=7, edgeThreshold=15, patchSize=15)
    kps = [cv2.KeyPoint(k.pt[0], k.pt[1], k.size, 0.0, k.response, k.octave, k.class_id) for k in orb.detect(gray)]
    kps, desc = orb.compute(gray, kps)
    np.testing.assert_array_equal(f_up.descriptors, desc)
    assert len(f_up) == len(f_rot) and not np.array_equal(f_up.descriptors, f_rot.descriptors)


def test_degenerate_pnp_is_rejected():
    c = make_calibration()
    line = np.column_stack([np.linspace(-2, 2, 30), np.zeros(30), np.full(30, 8.0)])  # collinear 3D points
    uv, _ = c.project(line)
    sol, why = solve_pnp(uv, line, c.K, c.width, c.height)
    assert sol is None and "degenerate" in why
    sol, why = solve_pnp(uv[:3], line[:3], c.K, c.width, c.height)
    assert sol is None and "too few" in why
    # Coplanar points that all project onto one pixel: RANSAC cannot produce a usable covariance either.
    assert pose_covariance(np.eye(4), c.T_base_camera, c.K, uv[:3], line[:3]) is None


def test_features_match_mutually_with_the_ratio_test(scene):
    ext = FeatureExtractor("sift", 500)
    a = ext.extract(scene["kf"].image)
    pairs = match_features(a, a)
    assert len(pairs) > 0.9 * len(a) and np.all(pairs[:, 0] == pairs[:, 1])
    assert match_features(a, ext.extract(None)).shape == (0, 2)
    with pytest.raises(ValueError, match="cannot match"):
        match_features(a, FeatureExtractor("orb").extract(scene["kf"].image))


# -- LiDAR registration ------------------------------------------------------------------------------


def structured_cloud(rng: np.random.Generator, n: int = 20000) -> np.ndarray:
    """Points on a ground plane, random boxes (buildings, cars) and poles around the origin."""
    parts = [np.column_stack([rng.uniform(-40, 40, n // 4), rng.uniform(-40, 40, n // 4), np.zeros(n // 4)])]
    for _ in range(25):
        c = rng.uniform(-35, 35, 2)
        size = rng.uniform([1, 1, 1], [10, 10, 8])
        m = n // 50
        face = rng.integers(0, 5, m)
        p = rng.uniform(0, 1, (m, 3)) * size
        for axis in range(2):  # walls: x- and y-faces
            sel = face == axis
            p[sel, axis] = 0.0
            sel = face == axis + 2
            p[sel, axis] = size[axis]
        p[face == 4, 2] = size[2]  # roof
        parts.append(p + [c[0], c[1], 0.0])
    for _ in range(15):
        c = rng.uniform(-30, 30, 2)
        h = rng.uniform(0, 6, 200)
        a = rng.uniform(0, 2 * np.pi, 200)
        parts.append(np.column_stack([c[0] + 0.2 * np.cos(a), c[1] + 0.2 * np.sin(a), h]))
    return np.vstack(parts)


@pytest.mark.parametrize("backend", ["small_gicp", "open3d"])
def test_lidar_registration_recovers_a_known_transform(backend):
    rng = np.random.default_rng(3)
    target = structured_cloud(rng)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("zyx", [40, 1.0, -1.5], degrees=True).as_matrix()
    T[:3, 3] = (2.0, -1.0, 0.2)
    # The source sees the same world from pose T, resampled and noisy: target = T @ source.
    source = transform_points(invert(T), structured_cloud(np.random.default_rng(3)) + rng.normal(0, 0.02, target.shape))
    v = LidarVerifier(LidarVerificationConfig(backend=backend))
    r = v.register(source, target, yaw=np.radians(35))
    assert r.accepted, r.reason
    dt, dr = pose_error(r.transform, T)
    assert dt < 0.1 and dr < 0.5, (dt, dr)
    assert r.inlier_ratio > 0.9 and r.fitness < 0.05 and r.constraint > 0.05
    # Unseeded, 40 deg away: GICP does not get there, and the result says so.
    far = v.register(source, target)
    assert not far.accepted and "overlap" in far.reason
    # A different place does not register.
    other = v.register(structured_cloud(np.random.default_rng(9)), target, yaw=np.radians(35))
    assert not other.accepted


def test_lidar_registration_rejects_bad_input_and_degenerate_geometry():
    v = LidarVerifier()
    target = structured_cloud(np.random.default_rng(0))
    for bad in (None, np.zeros((0, 4)), np.full((100, 3), np.nan), np.zeros((10, 2))):
        r = v.register(bad, target)
        assert not r.accepted and "too few points" in r.reason
    r = v.register(target, target, initial=np.full((4, 4), np.nan))
    assert not r.accepted and "initial guess" in r.reason
    # A straight street canyon: walls and ground only, the fit slides along the street.
    s = PlaneScene(0)
    s.planes = s.planes[:2] + s.planes[3:]  # no end wall
    a, b = s.lidar(pose(0, 0, 0)), s.lidar(pose(3.0, 0.0, 0.0))
    r = v.register(b, a)
    assert not r.accepted and "degenerate" in r.reason, r.reason


def test_yaw_transform():
    assert np.allclose(yaw_transform(np.pi / 2)[:3, :3] @ [1, 0, 0], [0, 1, 0])


# -- re-ranking and agreement ------------------------------------------------------------------------


class _Result:
    def __init__(self, accepted, inliers):
        self.accepted, self.score, self.reason = accepted, float(inliers), "" if accepted else "rejected"


def test_rerank_orders_by_inliers_and_picks_an_accepted_best():
    verdicts = {10: _Result(False, 12), 11: _Result(True, 40), 12: _Result(True, 90), 13: _Result(False, 3)}

    def verify(i):
        if i == 14:
            raise RuntimeError("keyframe image missing")
        return verdicts[i]

    out = rerank([10, 11, 12, 13, 14], [0.9, 0.8, 0.7, 0.6, 0.5], verify)
    assert out.ids == [12, 11, 10, 13, 14]
    assert out.best.id == 12 and out.best.descriptor_rank == 2
    assert np.array_equal(out.scores, [90, 40, 12, 3, 0])
    assert "RuntimeError" in out.candidates[-1].result.reason
    assert rerank([10, 13], [0.9, 0.8], verify).best is None
    assert rerank([10, 11, 12], [0.9, 0.8, 0.7], verify, top_k=2).ids == [11, 10]


def test_rerank_with_the_camera_verifier_puts_the_right_keyframe_first(scene):
    v = CameraVerifier()
    q = v.features(scene["query"])
    keyframes = {"other": scene["other"], "right": scene["kf"]}
    out = rerank(["other", "right"], [0.9, 0.5], lambda k: v.verify(q, keyframes[k]))
    assert out.best.id == "right" and out.candidates[1].score < out.best.score


def test_consecutive_agreement():
    a = ConsecutiveAgreement(required=3, agree_m=2.0, agree_deg=10)
    step = pose(1.0, 0.0, 0.0)
    assert [a.update(pose(x, 0, 0)) for x in (0, 1, 2, 3)] == [False, False, True, True]
    assert not a.update(pose(30, 0, 0))  # a jump starts a new streak
    assert not a.update(None) and a.streak == 0
    # With odometry the agreement is checked against the predicted pose: 5 m steps are fine.
    b = ConsecutiveAgreement(required=2, agree_m=0.5)
    assert not b.update(pose(0, 0, 0))
    assert b.update(pose(5, 0, 0), motion=pose(5.0, 0, 0))
    assert not b.update(pose(10, 0, 0), motion=step)
    assert ConsecutiveAgreement().update(pose(0, 0, 0))
    with pytest.raises(ValueError):
        ConsecutiveAgreement(required=0)


def test_pose_prior_carries_the_last_accepted_pose_by_odometry():
    p = PosePrior(max_travel_m=12.0)
    step = pose(5.0, 0.0, 0.0)
    assert p.advance(step) is None  # nothing accepted yet
    p.accept(pose(100.0, 0.0, 0.0))
    np.testing.assert_allclose(p.advance(step), pose(105.0, 0.0, 0.0))
    np.testing.assert_allclose(p.advance(step), pose(110.0, 0.0, 0.0))  # frames without a fix keep accumulating
    assert p.advance(step) is None and p.travel_m == 0.0  # 15 m > 12 m of odometry: lapsed
    p.accept(pose(0.0, 0.0, 0.0))
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    np.testing.assert_allclose(p.advance(turn) @ step, p.advance(step), atol=1e-12)  # motion in the vehicle frame
    assert p.advance(None) is None and p.advance(step) is None  # no odometry: the prediction ends
    with pytest.raises(ValueError):
        PosePrior(0.0)


def test_photometric_median_detects_on_the_median_filtered_image(scene):
    """photometric: median detects and describes on the 3x3 median of the grey image (its benefit under low-light
    noise is a benchmark figure: docs/results/verification/night.md); unknown filters are refused."""
    import cv2
    image = scene["query"]
    noisy = np.clip(image.astype(np.float32) + np.random.default_rng(0).normal(0, 12, image.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    gray = cv2.cvtColor(noisy, cv2.COLOR_RGB2GRAY)
    median = FeatureExtractor("orb", 500, upright=True, photometric="median").extract(noisy)
    direct = FeatureExtractor("orb", 500, upright=True).extract(cv2.medianBlur(gray, 3))
    plain = FeatureExtractor("orb", 500, upright=True).extract(noisy)
    np.testing.assert_array_equal(median.uv, direct.uv)
    np.testing.assert_array_equal(median.descriptors, direct.descriptors)
    assert not np.array_equal(median.uv, plain.uv)
    with pytest.raises(ValueError):
        FeatureExtractor("orb", photometric="blur")
