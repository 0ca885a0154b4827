"""The pipeline with geometric verification: MapBuilder stores keyframe views and lets a loop closure through only
when LiDAR registration accepts it; Localizer verifies candidates with camera PnP against the views and returns
the metric pose; bad input is rejected with a reason; the verified-match scores count what they claim."""

import numpy as np
import pytest

from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.evaluation.verified_matches import pose_errors, score_verified_matches
from distilvpr_ros.mapping.database import EmbeddingSpace, IndexConfig, PlaceDatabase
from distilvpr_ros.mapping.matcher import MatcherConfig
from distilvpr_ros.pipeline.calibration import calibration_from_config, resolve_calibration
from distilvpr_ros.pipeline.config import STUDENT_SPACE, TEACHER_SPACE, CalibrationConfig, VerificationConfig
from distilvpr_ros.pipeline.localizer import Localizer
from distilvpr_ros.pipeline.map_builder import DuplicateKeyframe, MapBuilder
from distilvpr_ros.pipeline.views import NO_VIEWS, make_view
from distilvpr_ros.data.calibration import CameraCalibration
from verification_scene import PlaneScene, make_calibration, pose

DIM = 8


class FakeEmbedder:
    """Stands in for a network: the descriptor is ``next`` (set by the test), so the test plants the candidates."""

    def __init__(self, kind: str):
        self.kind, self.identity, self.dim = kind, (f"fake-{kind}", "f" * 64), DIM
        self.next = one_hot(0)

    @property
    def sha256(self) -> str:
        return self.identity[1]

    def space(self, index=None) -> EmbeddingSpace:
        return EmbeddingSpace(self.kind, DIM, self.identity[0], self.sha256, "ip", index or IndexConfig())

    def __call__(self, image=None, cloud=None) -> np.ndarray:
        return self.next.copy()


def one_hot(i: int, j: int | None = None, w: float = 0.0) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    if j is not None:
        v[j] = w
    return v / np.linalg.norm(v)


PLANT = MatcherConfig(min_score=-1.0, sequence_length=1, exclude_recent_s=0.0, top_k=2, min_interval_s=0.0)


def builder(calib=None, **verification) -> tuple[MapBuilder, FakeEmbedder, FakeEmbedder]:
    teacher, student = FakeEmbedder(TEACHER_SPACE), FakeEmbedder(STUDENT_SPACE)
    vcfg = VerificationConfig(**{"lidar_seed": "yaw", **verification})
    return MapBuilder(teacher, student, matcher=PLANT, run="map", calibration=calib, verification=vcfg), \
        teacher, student


def add(b: MapBuilder, teacher, student, tag: int, stamp: float, pose_, image, cloud, run: str | None = None):
    teacher.next = student.next = one_hot(tag)
    if run is not None:
        b.run = run
    return b.add_keyframe(stamp, pose_, image, cloud)


# --- mapping: LiDAR-verified loop closures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def town(tiny_world):
    """Frames of the tiny world's first run: a place, and two places far from it and from each other."""
    run = load_synthetic(tiny_world)[0]
    xy = run.poses[:, :2, 3]
    a = 3
    da = np.linalg.norm(xy - xy[a], axis=1)
    b = int(np.argmax(da))
    c = int(np.argmax(np.minimum(da, np.linalg.norm(xy - xy[b], axis=1))))
    assert min(da[b], da[c], np.linalg.norm(xy[b] - xy[c])) > 40
    return run, a, b, c


def test_map_builder_accepts_a_true_loop_and_rejects_a_planted_wrong_one(town, tiny_world):
    run, a, b, c = town
    calib = resolve_calibration(CalibrationConfig(), run)
    assert calib is not None and calib.width == run[a].image.shape[1]  # world.json found beside the run
    mb, teacher, student = builder(calib)
    sa, sb, sc = run[a], run[b], run[c]
    r0 = add(mb, teacher, student, 1, 0.0, sa.pose, sa.image, sa.cloud)
    r1 = add(mb, teacher, student, 2, 1.0, sb.pose, sb.image, sb.cloud)
    assert r0.proposed is None and r1.proposed is not None and r1.verification is not None  # 2 vs 1: wrong place
    assert not r1.verification.accepted and r1.loop_closure is None and "LiDAR verification" in r1.match.reason
    assert mb.db.has_views and mb.db.calibration("map") == calib.to_dict()

    # a revisit of place a: the scan seen from 1.5 m further on and 4 degrees turned (a second run)
    motion = pose(1.5, 0.3, 4.0)
    T_bl = calib.T_base_lidar
    T_motion_lidar = np.linalg.inv(T_bl) @ motion @ T_bl  # query lidar -> keyframe lidar
    pts = sa.cloud[:, :3].astype(np.float64)
    query_cloud = (pts - T_motion_lidar[:3, 3]) @ T_motion_lidar[:3, :3]  # the same world seen from the new pose
    true = add(mb, teacher, student, 1, 2.0, sa.pose @ motion, sa.image, query_cloud, run="revisit")
    v = true.verification
    assert v.accepted and v.candidate == r0.id, v.reason
    assert true.loop_closure == (2.0, 0.0) and true.match.accepted
    np.testing.assert_allclose(v.transform[:3, 3], motion[:3, 3], atol=0.1)  # candidate_base_T_query_base
    assert pose_errors(v.transform[None], motion[None])[1][0] < 0.5

    # the planted wrong loop: the descriptor says place b, the scan is of place c
    wrong = add(mb, teacher, student, 2, 3.0, sc.pose, sc.image, sc.cloud, run="other")
    assert wrong.proposed == (3.0, 1.0) and not wrong.verification.accepted and wrong.loop_closure is None
    assert wrong.verification.reason and wrong.verification.fitness > 0

    # verification off: the same planted loop goes through (the old behaviour)
    off, teacher2, student2 = builder(calib, enabled=False)
    add(off, teacher2, student2, 2, 0.0, sb.pose, sb.image, sb.cloud)
    unverified = add(off, teacher2, student2, 2, 1.0, sc.pose, sc.image, sc.cloud, run="other")
    assert unverified.loop_closure == (1.0, 0.0) and unverified.verification is None


def test_map_builder_without_views_rejects_loops_with_a_reason(town):
    run, a, b, _ = town
    mb, teacher, student = builder()
    mb.views = mb.views.model_copy(update={"store": False})
    add(mb, teacher, student, 1, 0.0, run[a].pose, run[a].image, run[a].cloud)
    r = add(mb, teacher, student, 1, 1.0, run[a].pose, run[a].image, run[a].cloud, run="again")
    assert not mb.db.has_views and r.verification.reason == NO_VIEWS and r.loop_closure is None


def test_map_builder_bev_order_registers_the_right_candidate_first(town):
    """The descriptor ranks a wrong place first and the true one second: in descriptor order the first registration
    is wasted (tried 2); with ``lidar_order: bev`` the bird's-eye-view check puts the true place first (tried 1)
    and ``lidar_seed: bev`` seeds the registration without odometry (the revisit's poses are in another frame)."""
    run, a, b, _ = town
    calib = resolve_calibration(CalibrationConfig(), run)
    sa, sb = run[a], run[b]
    motion = pose(2.0, -0.5, 20.0)
    T_motion_lidar = np.linalg.inv(calib.T_base_lidar) @ motion @ calib.T_base_lidar
    query_cloud = (sa.cloud[:, :3].astype(np.float64) - T_motion_lidar[:3, 3]) @ T_motion_lidar[:3, :3]
    far_away = pose(5000.0, -3000.0, 77.0)  # the revisit's odometry frame is unrelated to the map's
    tried = {}
    for order, seed in (("descriptor", "yaw"), ("bev", "bev")):
        mb, teacher, student = builder(calib, lidar_candidates=2, lidar_order=order, lidar_seed=seed)
        r0 = add(mb, teacher, student, 1, 0.0, sa.pose, sa.image, sa.cloud)
        add(mb, teacher, student, 2, 1.0, sb.pose, sb.image, sb.cloud)
        teacher.next = student.next = one_hot(2, 1, 0.9)  # nearest: place b (wrong), then place a (true)
        mb.run = "revisit"
        r = mb.add_keyframe(2.0, far_away @ sa.pose @ motion, sa.image, query_cloud)
        assert r.proposed is not None and r.match.candidates[0].id != r0.id
        tried[order] = r.verification
    assert tried["descriptor"].tried == 2  # the wrong place was registered first
    v = tried["bev"]
    assert v.accepted and v.candidate == r0.id and v.tried == 1, v.reason
    assert v.bev is not None and v.bev.accepted
    np.testing.assert_allclose(v.transform[:3, 3], motion[:3, 3], atol=0.2)  # from the BEV seed, no odometry


# --- localisation: camera-verified metric pose -------------------------------------------------------------


@pytest.fixture(scope="module")
def canyon():
    """A map of 4 keyframes along the street canyon and one of another street (other textures), with views."""
    scene, other = PlaneScene(seed=0), PlaneScene(seed=5)
    calib = scene.calib
    db = PlaceDatabase([FakeEmbedder(TEACHER_SPACE).space(), FakeEmbedder(STUDENT_SPACE).space()])
    db.set_calibration("map", calib.to_dict())
    poses = [pose(x, 0.0, 0.0) for x in (0.0, 6.0, 12.0, 18.0)] + [pose(6.0, 0.0, 0.0)]
    for k, (p, sc) in enumerate(zip(poses, [scene] * 4 + [other])):
        img, _ = sc.render(p)
        view = make_view(img, sc.lidar(p))
        db.add(float(k), p, "map", "map", {TEACHER_SPACE: one_hot(k), STUDENT_SPACE: one_hot(k)}, view=view)
    return scene, db, poses


def localizer(db, top_k=2, consecutive=1, **verification):
    student = FakeEmbedder(STUDENT_SPACE)
    vcfg = VerificationConfig(**verification)
    vcfg.rerank.top_k, vcfg.rerank.consecutive = top_k, consecutive
    return Localizer(student, db, MatcherConfig(min_score=-1.0, sequence_length=1, exclude_recent_s=0.0,
                                                top_k=top_k), verification=vcfg), student


def test_localizer_returns_the_metric_pose_and_rejects_a_wrong_keyframe(canyon):
    scene, db, poses = canyon
    truth = pose(7.0, 0.4, 3.0)  # between keyframes 1 and 2, a little aside and turned
    image, _ = scene.render(truth)
    loc, student = localizer(db)
    student.next = one_hot(1, 2, 0.5)  # keyframe 1 first, then 2
    out = loc.localize(100.0, image)
    v = out.verification
    assert out.accepted and v.verified and v.id == 1 and v.inliers >= 20
    t_err, r_err = pose_errors(v.pose[None], truth[None])
    assert t_err[0] < 0.3 and r_err[0] < 1.0
    assert v.covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(v.covariance) > 0)
    assert [c.id for c in v.candidates] == [1, 2] and v.candidates[1].reason.startswith("not verified")
    published = out.output()
    assert published.accepted and published.best.id == 1 and published.loop_closure == (100.0, 1.0)
    np.testing.assert_allclose(published.best.pose[:3], truth[:3, 3], atol=0.3)  # the query's pose, not the keyframe's
    np.testing.assert_array_equal(published.covariance, v.covariance)
    assert out.match.best.id == 1 and out.match.accepted  # the descriptor match is kept beside

    # the planted wrong keyframe (same spot, another street's textures) ranks first: rejected, re-ranked below
    student.next = one_hot(4, 1, 0.5)
    out = loc.localize(101.0, image)
    v = out.verification
    assert v.verified and v.id == 1 and out.match.best.id == 4
    assert [c.id for c in v.candidates] == [1, 4] and not v.candidates[1].accepted and v.candidates[1].reason
    assert out.output().candidates[0].id == 1
    # with only the wrong keyframe verified nothing is accepted, and the match says why
    loc1, student1 = localizer(db, top_k=1)
    student1.next = one_hot(4)
    out = loc1.localize(102.0, image)
    assert not out.accepted and out.pose is None and out.verification.reason.startswith("no candidate verified")
    assert not out.output().accepted and out.output().loop_closure is None and "not verified" in out.output().reason


def test_verified_loop_closures_are_spaced_by_min_interval(canyon):
    """Every verified frame is a place match, but a loop closure to the same place is published at most once per
    ``matcher.min_interval_s`` (it used to be published for every verified frame)."""
    scene, db, poses = canyon
    loc, student = localizer(db, top_k=1)
    assert loc.matcher.cfg.min_interval_s == 5.0 and loc.matcher.cfg.same_place_radius_m == 10.0
    near_1, near_3 = scene.render(pose(6.5, 0.2, 1.0))[0], scene.render(pose(18.5, 0.2, 1.0))[0]
    outputs = []
    for stamp, tag, image in [(100.0, 1, near_1), (100.5, 1, near_1), (101.0, 3, near_3), (102.0, 1, near_1),
                              (105.5, 1, near_1)]:
        student.next = one_hot(tag)
        out = loc.localize(stamp, image)
        assert out.accepted, out.verification.reason
        outputs.append(out.output())
    assert [o.loop_closure for o in outputs] == [(100.0, 1.0), None, (101.0, 3.0), None, (105.5, 1.0)]
    assert all(o.accepted for o in outputs) and "min_interval_s" in outputs[1].reason
    assert outputs[0].reason == ""
    loc.reset()  # a relocalisation forgets what was emitted
    student.next = one_hot(1)
    assert loc.localize(106.0, near_1).output().loop_closure == (106.0, 1.0)


def test_localizer_prepares_the_keyframes_when_the_map_is_loaded(canyon):
    scene, db, poses = canyon
    loc, _ = localizer(db)
    assert len(loc.cache) == len(db)
    views = [loc.cache.camera(i) for i in range(len(db))]  # already built: the cache returns them as they are
    assert all(v.prepared is not None and len(v.features) == len(v.points) > 0 for v in views)
    assert all(v.image is None and v.depth is None for v in views)  # pixels dropped once prepared
    assert loc.preload_seconds > 0
    lazy, _ = localizer(db, preload_keyframes=False)
    assert lazy.preload_seconds == 0 and len(lazy.cache) == 0
    assert lazy.cache.camera(0).prepared is not None  # prepared at its first use instead


def test_consecutive_agreement_and_the_unverified_path(canyon):
    scene, db, poses = canyon
    loc, student = localizer(db, consecutive=2)
    student.next = one_hot(1)
    image, _ = scene.render(pose(6.5, 0.0, 0.0))
    first = loc.localize(0.0, image)
    assert not first.accepted and "consecutive" in first.verification.reason
    assert loc.localize(0.1, image).accepted  # two agreeing frames
    off, s_off = localizer(db, enabled=False)
    s_off.next = one_hot(1)
    out = off.localize(0.0, image)
    assert out.verification is None and out.accepted and out.output() is out.match
    np.testing.assert_allclose(out.pose, poses[1])  # the keyframe's pose, as before verification


def test_bad_input_gives_a_rejected_match_with_a_reason(canyon):
    scene, db, poses = canyon
    calib = scene.calib
    image, _ = scene.render(pose(6.5, 0.0, 0.0))
    bad = PlaceDatabase([FakeEmbedder(TEACHER_SPACE).space(), FakeEmbedder(STUDENT_SPACE).space()])
    bad.set_calibration("map", calib.to_dict())
    blank = np.full((calib.height, calib.width, 3), 128, np.uint8)
    collinear = np.column_stack([np.linspace(2, 30, 200), np.zeros(200), np.zeros(200)])  # one ray of points
    views = [make_view(blank, scene.lidar(poses[1])),  # featureless keyframe
             make_view(scene.render(poses[1])[0], None),  # no LiDAR points
             make_view(scene.render(poses[1])[0], collinear),  # degenerate 3D points
             None]  # no view at all
    for k, view in enumerate(views):
        bad.add(float(k), poses[1], "map", "map", {TEACHER_SPACE: one_hot(k), STUDENT_SPACE: one_hot(k)}, view=view)
    loc, student = localizer(bad, top_k=1)
    reasons = []
    for k in range(len(views)):
        student.next = one_hot(k)
        out = loc.localize(float(k), image)
        assert not out.accepted and out.verification.reason
        reasons.append(out.verification.candidates[0].reason)
    assert "too few features" in reasons[0] and "no LiDAR depth" in reasons[1]
    assert reasons[2] and "has no view" in reasons[3]
    # a map without views (format 1, or built without them): every frame is rejected with that reason
    no_views = PlaceDatabase([FakeEmbedder(TEACHER_SPACE).space(), FakeEmbedder(STUDENT_SPACE).space()])
    no_views.add(0.0, poses[1], "map", "map", {TEACHER_SPACE: one_hot(0), STUDENT_SPACE: one_hot(0)})
    loc, student = localizer(no_views, top_k=1)
    student.next = one_hot(0)
    out = loc.localize(0.0, image)
    assert not out.accepted and out.verification.reason == NO_VIEWS
    # a run without a calibration
    uncalibrated = PlaceDatabase([FakeEmbedder(TEACHER_SPACE).space(), FakeEmbedder(STUDENT_SPACE).space()])
    uncalibrated.add(0.0, poses[1], "map", "map", {TEACHER_SPACE: one_hot(0), STUDENT_SPACE: one_hot(0)},
                     view=make_view(image, scene.lidar(poses[1])))
    loc, student = localizer(uncalibrated, top_k=1)
    student.next = one_hot(0)
    assert "no camera calibration" in loc.localize(0.0, image).verification.reason


# --- calibration sources and scores --------------------------------------------------------------------------


def test_calibration_from_config_and_camera_info():
    cfg = CalibrationConfig(camera_x=1.5, camera_z=1.6)
    assert calibration_from_config(cfg) is None  # no intrinsics anywhere
    ref = make_calibration()
    info = type("Info", (), {"K": ref.K, "width": ref.width, "height": ref.height, "D": np.zeros(5)})()
    calib = calibration_from_config(cfg, info)
    optical_to_base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    np.testing.assert_allclose(calib.T_base_camera[:3, :3], optical_to_base, atol=1e-12)  # default: looks along x
    np.testing.assert_allclose(calib.T_base_camera[:3, 3], [1.5, 0, 1.6])
    np.testing.assert_array_equal(calib.K, ref.K)
    own = calibration_from_config(CalibrationConfig(fx=100, fy=100, cx=80, cy=60, width=160, height=120))
    assert isinstance(own, CameraCalibration) and own.width == 160 and own.K[0, 2] == 80


def test_verified_match_scores_count_what_they_claim():
    truth = [np.array([0]), np.array([1]), np.array([2]), np.array([], int)]  # query 3 has no true match
    gt = np.stack([pose(0, 0, 0), pose(10, 0, 0), pose(20, 0, 0), pose(90, 0, 0)])
    est = np.full((4, 4, 4), np.nan)
    est[0] = pose(0.2, 0, 2.0)
    est[2] = pose(23.0, 0, 0)  # right keyframe, pose 3 m off
    s = score_verified_matches(truth, top1_before=[0, 5, 2, 3], accepted_before=[True, True, False, True],
                               verified_ids=[0, -1, 2, -1], verified=[True, False, True, False],
                               verified_poses=est, true_poses=gt)
    assert s["before"] == {"accepted": 3, "correct": 1, "wrong": 2, "precision": 1 / 3, "recall": 1 / 3}
    assert s["after"]["accepted"] == 2 and s["after"]["precision"] == 1.0 and s["after"]["recall"] == 2 / 3
    assert s["after"]["metric_correct"] == 1 and s["after"]["metric_precision"] == 0.5
    assert s["recall@1"]["before"] == 2 / 3 and s["recall@1"]["after"] == 2 / 3
    assert s["pose_error"]["count"] == 2
    assert s["pose_error"]["translation_m_median"] == pytest.approx(1.6)
    assert s["pose_error"]["rotation_deg_p90"] == pytest.approx(1.8)
    rerank = score_verified_matches(truth, [5, 5, 5, 5], [False] * 4, [0, 1, -1, -1], [True, True, False, False])
    assert rerank["recall@1"]["before"] == 0.0 and rerank["recall@1"]["after"] == 2 / 3
    assert np.isnan(rerank["pose_error"]["translation_m_median"])


def test_tracking_accepts_fewer_inliers_only_where_odometry_predicts_the_pose(canyon):
    """rerank.tracking_min_inliers: below camera.min_inliers a candidate is accepted only when its PnP pose agrees with
    the last accepted pose carried forward by odometry; the first fix, a frame after a reset and a frame whose
    prediction is elsewhere still need camera.min_inliers."""
    scene, db, poses = canyon
    image, _ = scene.render(pose(6.5, 0.0, 0.0))
    step = np.eye(4)
    loc, student = localizer(db, top_k=1, rerank={"tracking_min_inliers": 8})
    student.next = one_hot(1)
    first = loc.localize(0.0, image)
    assert first.accepted and not first.verification.tracked
    strict = loc.verification.camera
    strict.min_inliers = first.verification.inliers + 1  # from now on no frame reaches the strict threshold
    student.next = one_hot(1)
    tracked = loc.localize(0.1, image, step)  # stood still: the prediction is the first pose
    assert tracked.accepted and tracked.verification.tracked
    np.testing.assert_allclose(tracked.pose, first.pose, atol=1e-6)
    moved = np.eye(4)
    moved[0, 3] = 5.0  # odometry says 5 m forward, the image did not move: the pose disagrees
    student.next = one_hot(1)
    out = loc.localize(0.2, image, moved)
    assert not out.accepted and "odometry prediction" in out.verification.candidates[0].reason
    student.next = one_hot(1)
    assert not loc.localize(0.3, image, None).accepted  # no odometry: the prediction lapses
    student.next = one_hot(1)
    assert not loc.localize(0.4, image, step).accepted  # ... and stays gone until a strict fix
    # without tracking the same frame after a strict fix is rejected
    plain, s_plain = localizer(db, top_k=1)
    s_plain.next = one_hot(1)
    assert plain.localize(0.0, image).accepted
    plain.verification.camera.min_inliers = first.verification.inliers + 1
    s_plain.next = one_hot(1)
    assert not plain.localize(0.1, image, step).accepted


def test_tracking_bootstrap_accepts_the_second_of_two_agreeing_low_inlier_frames(canyon):
    """rerank.tracking_bootstrap: with no fix yet, a pose below camera.min_inliers is tentative; the next frame whose
    pose agrees with it through the odometry is accepted. Without odometry, or without the option, neither is."""
    scene, db, poses = canyon
    image, _ = scene.render(pose(6.5, 0.0, 0.0))
    still = np.eye(4)

    def run(motions, bootstrap=True):
        loc, student = localizer(db, top_k=1, rerank={"tracking_min_inliers": 8, "tracking_bootstrap": bootstrap})
        loc.verification.camera.min_inliers = 10 ** 6  # no frame can be a strict fix
        out = []
        for k, motion in enumerate(motions):
            student.next = one_hot(1)
            out.append(loc.localize(float(k), image, motion).verification)
        return out

    first, second = run([None, still])
    assert not first.verified and "tentative" in first.candidates[0].reason and first.tentative is not None
    assert second.verified and second.tracked
    assert [v.verified for v in run([None, None, still])] == [False, False, True]  # no odometry: starts again
    assert not any(v.verified for v in run([None, still], bootstrap=False))
    moved = np.eye(4)
    moved[0, 3] = 5.0  # odometry says 5 m, the image did not move: the two poses disagree
    assert [v.verified for v in run([None, moved, still])] == [False, False, True]


def test_tracking_candidates_verify_the_keyframe_near_the_prediction_the_descriptor_missed(canyon):
    """rerank.tracking_candidates: while tracking, the keyframes nearest to the odometry prediction are verified
    before the descriptor's top_k; here the descriptor's only candidate is the wrong street, so without them the
    frame is rejected. The added keyframe is published with its descriptor score and rank -1."""
    scene, db, poses = canyon
    first_image, _ = scene.render(pose(6.5, 0.0, 0.0))
    image, _ = scene.render(pose(12.5, 0.0, 0.0))
    forward = pose(6.0, 0.0, 0.0)  # the odometry between the two frames

    def second_frame(**rerank):
        loc, student = localizer(db, top_k=1, rerank={"tracking_min_inliers": 8, **rerank})
        student.next = one_hot(1)
        assert loc.localize(0.0, first_image).accepted
        student.next = one_hot(4)  # the wrong street (same spot as keyframe 1) ranks first
        return loc.localize(1.0, image, forward)

    assert not second_frame().accepted
    out = second_frame(tracking_candidates=1)
    v = out.verification
    assert out.accepted and v.id == 2 and [c.id for c in v.candidates] == [2, 4]
    assert v.candidates[0].descriptor_rank == -1 and v.candidates[1].descriptor_rank == 0
    t_err, _ = pose_errors(v.pose[None], pose(12.5, 0.0, 0.0)[None])
    assert t_err[0] < 0.3
    published = out.output()
    assert published.accepted and published.best.id == 2 and [c.id for c in published.candidates] == [2, 4]
    assert [(id, c.accepted) for id, c in out.checks()] == [(4, False), (2, True)]  # the node's inliers message
    np.testing.assert_allclose(published.candidates[0].score, db.scores(STUDENT_SPACE, one_hot(4), [2])[0])
    # tracking_local_map: the two keyframes nearest to the prediction in one PnP, listed under the nearest
    pooled = second_frame(tracking_candidates=2, tracking_local_map=True).verification
    assert pooled.verified and pooled.local_map == 2 and pooled.id == 2 and v.local_map == 0
    assert pooled.inliers > v.inliers and pose_errors(pooled.pose[None], pose(12.5, 0.0, 0.0)[None])[0][0] < 0.3
    # keyframe 2 lies 0.5 m from the prediction: with a smaller radius nothing is added
    assert not second_frame(tracking_candidates=1, tracking_candidate_radius_m=0.1).accepted


def test_tracking_gate_fixes_rejects_a_fix_the_odometry_contradicts(canyon):
    """rerank.tracking_gate_fixes: while tracking, even a pose with camera.min_inliers must agree with the prediction
    (at night such fixes were metres off); without the option, or once the prediction lapsed, it stands alone."""
    scene, db, poses = canyon
    image, _ = scene.render(pose(6.5, 0.0, 0.0))
    moved = np.eye(4)
    moved[0, 3] = 5.0  # odometry says 5 m forward, the image did not move

    def frames(gate, motions):
        loc, student = localizer(db, top_k=1, rerank={"tracking_min_inliers": 8, "tracking_gate_fixes": gate})
        out = []
        for k, motion in enumerate(motions):
            student.next = one_hot(1)
            out.append(loc.localize(float(k), image, motion).verification)
        return out

    first, second, third = frames(True, [None, moved, None])
    assert first.verified and second.inliers == 0 and not second.verified
    assert "from the odometry prediction" in second.candidates[0].reason and second.candidates[0].inliers >= 20
    assert third.verified  # no odometry: the prediction lapsed, a fix stands alone again
    assert all(v.verified for v in frames(False, [None, moved]))


def test_local_map_is_listed_under_the_first_keyframe_it_used():
    """tracking_local_map: a keyframe near the prediction that cannot be verified against (featureless) is left out,
    and the pooled pose is listed under the first one used, its relative pose to that keyframe (what the loop-closure
    transform is keyed by)."""
    scene = PlaneScene(seed=0)
    db = PlaceDatabase([FakeEmbedder(TEACHER_SPACE).space(), FakeEmbedder(STUDENT_SPACE).space()])
    db.set_calibration("map", scene.calib.to_dict())
    places = [pose(6.0, 0.0, 0.0), pose(12.0, 0.0, 0.0), pose(13.0, 0.0, 0.0)]
    for k, p in enumerate(places):
        img = scene.render(p)[0] if k != 1 else np.full_like(scene.render(p)[0], 128)  # keyframe 1: featureless
        db.add(float(k), p, "map", "map", {TEACHER_SPACE: one_hot(k), STUDENT_SPACE: one_hot(k)},
               view=make_view(img, scene.lidar(p)))
    loc, student = localizer(db, top_k=1, rerank={"tracking_min_inliers": 8, "tracking_candidates": 2,
                                                  "tracking_local_map": True})
    student.next = one_hot(0)
    assert loc.localize(0.0, scene.render(pose(6.5, 0.0, 0.0))[0]).accepted
    student.next = one_hot(0)
    v = loc.localize(1.0, scene.render(pose(12.5, 0.0, 0.0))[0], pose(6.0, 0.0, 0.0)).verification
    assert v.verified and v.local_map == 1 and v.id == 2
    np.testing.assert_allclose(v.relative_pose, np.linalg.inv(places[2]) @ v.pose, atol=1e-9)


def test_map_builder_records_each_runs_calibration_and_stamps():
    """MapBuilder.run: a run set after construction gets the rig's calibration (verification refuses keyframes of a
    run without one) and its own duplicate-stamp check (synthetic runs all start at t = 0)."""
    scene = PlaneScene(seed=0)
    mb, teacher, student = builder(scene.calib)
    image, cloud = scene.render(pose(0.0, 0.0, 0.0))[0], scene.lidar(pose(0.0, 0.0, 0.0))
    add(mb, teacher, student, 0, 0.0, pose(0.0, 0.0, 0.0), image, cloud, run="run_a")
    add(mb, teacher, student, 1, 0.0, pose(0.0, 0.0, 0.0), image, cloud, run="run_b")  # same stamp, another run
    assert mb.db.calibration("run_a") is not None and mb.db.calibration("run_b") is not None
    with pytest.raises(DuplicateKeyframe):
        add(mb, teacher, student, 2, 0.0, pose(0.0, 0.0, 0.0), image, cloud, run="run_a")  # run_a again, same stamp
