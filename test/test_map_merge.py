"""Multi-session maps: merging two sessions' maps into one frame, and anchoring a new session to a saved map."""

from dataclasses import replace

import numpy as np
import pytest

from distilvpr_ros.data.geometry import invert, pose_from_xyz_yaw
from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.mapping.database import PlaceDatabase
from distilvpr_ros.mapping.errors import MapCompatibilityError
from distilvpr_ros.mapping.merge import merge_databases, pose_matrices
from distilvpr_ros.pipeline.config import NodeConfig
from distilvpr_ros.pipeline.multisession import (AlignmentConfig, AlignmentError, merge_maps, robust_average)
from distilvpr_ros.pipeline.offline import build_map_from_sequence, extend_map_anchored
from tiny_models import tiny_checkpoints

PLANTED = pose_from_xyz_yaw(40.0, -25.0, 0.0, np.deg2rad(30.0))  # session b's odometry frame in the world


# Both sessions drive the same way (the LiDARs' relative yaw is small): one registration seed keeps the tests quick.
FAST = AlignmentConfig(max_pairs=40, yaw_seeds_deg=[0.0])


class Planted:
    """A run whose poses are in another frame: ``T @ ground truth`` (a second session's odometry); ``frames``
    keeps only the first that many frames."""

    def __init__(self, run, T=np.eye(4), frames=None):
        n = len(run) if frames is None else frames
        self.base, self.run, self.run_dir, self.timestamps = run, run.run, run.run_dir, run.timestamps[:n]
        self.poses = np.einsum("ij,njk->nik", T, run.poses[:n])

    def __len__(self):
        return len(self.poses)

    def __getitem__(self, i):
        return replace(self.base[i], pose=self.poses[i].copy())


@pytest.fixture(scope="module")
def sessions(tiny_world, tmp_path_factory):
    """Map a: run 0 in the world frame; map b: run 1 (same route, night) in the planted frame."""
    tmp = tmp_path_factory.mktemp("sessions")
    ck = tiny_checkpoints(tmp)
    runs = load_synthetic(tiny_world)
    cfg = NodeConfig()
    build_map_from_sequence(runs[0], ck["teacher"], ck["student"], tmp / "a", cfg)
    build_map_from_sequence(Planted(runs[1], invert(PLANTED)), ck["teacher"], ck["student"], tmp / "b", cfg)
    summary = merge_maps(tmp / "a", tmp / "b", tmp / "merged", FAST)
    return {"tmp": tmp, "ck": ck, "runs": runs, "a": tmp / "a", "b": tmp / "b", "merged": tmp / "merged",
            "summary": summary}


def test_merge_recovers_the_planted_offset_and_round_trips(sessions):
    s = sessions
    summary = s["summary"]
    a, b = PlaceDatabase.load(s["a"]), PlaceDatabase.load(s["b"])
    m = PlaceDatabase.load(s["merged"])
    T = np.array(summary["alignment"]["transform"])
    assert summary["alignment"]["anchors"] >= 3
    assert np.linalg.norm(T[:3, 3] - PLANTED[:3, 3]) < 0.5
    assert np.degrees(np.arccos(np.clip((np.trace(T[:3, :3].T @ PLANTED[:3, :3]) - 1) / 2, -1, 1))) < 1.0
    # counts, spaces, runs, calibrations and views survive the round trip
    assert len(m) == len(a) + len(b) == summary["keyframes"]
    assert {n: (sp.model_sha256, sp.dim) for n, sp in m.spaces.items()} == \
        {n: (sp.model_sha256, sp.dim) for n, sp in a.spaces.items()}
    assert m.runs == a.runs + b.runs and set(m.calibrations) == set(a.calibrations) | set(b.calibrations)
    for i in (0, len(a) - 1):
        assert m.view(i).image_jpeg == a.view(i).image_jpeg
    j = len(a) + 2
    assert m.view(j).image_jpeg == b.view(2).image_jpeg and np.array_equal(m.view(j).points, b.view(2).points)
    for space in m.spaces:
        assert np.allclose(m.descriptors(space)[len(a):], b.descriptors(space), atol=1e-6)
    # session b's keyframes are now where they truly were (the ground truth, world frame)
    truth = {float(t): p for t, p in zip(s["runs"][1].timestamps, s["runs"][1].poses)}
    Pm = pose_matrices(m)[len(a):]
    err = [np.linalg.norm(P[:3, 3] - truth[float(t)][:3, 3]) for P, t in zip(Pm, m.stamps[len(a):])]
    assert max(err) < 1.0


def test_merged_map_localises_queries_from_both_sessions(sessions):
    """Each session's frames, queried in the merged map (teacher space), find their own place, in one frame."""
    from distilvpr_ros.pipeline.config import TEACHER_SPACE
    from distilvpr_ros.pipeline.embedder import Embedder

    s = sessions
    m = PlaceDatabase.load(s["merged"])
    teacher = Embedder.from_checkpoint(s["ck"]["teacher"], TEACHER_SPACE, 1)
    for run in s["runs"][:2]:
        hits = 0
        frames = range(0, len(run), 4)
        for i in frames:
            sample = run[i]
            _, ids = m.search(TEACHER_SPACE, teacher(image=sample.image, cloud=sample.cloud), 1)
            hits += np.linalg.norm(m.positions[ids[0, 0]] - sample.pose[:2, 3]) < 1.0
        assert hits == len(frames), run.run


def test_schema_and_run_checks(sessions, tmp_path):
    s = sessions
    a = PlaceDatabase.load(s["a"])
    with pytest.raises(MapCompatibilityError, match="in both maps"):
        merge_databases(a, a)
    other = tmp_path / "other"
    build_map_from_sequence(Planted(s["runs"][2], frames=3), s["ck"]["teacher"], s["ck"]["other"], other,
                            NodeConfig())
    with pytest.raises(MapCompatibilityError, match="same models"):
        merge_maps(s["a"], other, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(AlignmentError, match="Nothing was merged"):
        merge_maps(s["a"], s["b"], tmp_path / "never", AlignmentConfig(max_pairs=2, min_anchors=3))
    assert not (tmp_path / "never").exists()


def test_robust_average_ignores_outliers():
    rng = np.random.default_rng(0)
    truth = pose_from_xyz_yaw(3.0, 4.0, 0.0, 0.5)
    good = [truth @ pose_from_xyz_yaw(*rng.normal(0, 0.05, 2), 0.0, rng.normal(0, 0.005)) for _ in range(6)]
    bad = [pose_from_xyz_yaw(*rng.uniform(-50, 50, 2), 0.0, rng.uniform(-3, 3)) for _ in range(4)]
    T, inliers = robust_average(np.stack(good + bad), 1.0, 3.0)
    assert inliers.tolist() == [True] * 6 + [False] * 4
    assert np.linalg.norm(T[:3, 3] - truth[:3, 3]) < 0.1


def test_anchor_a_new_session_to_a_saved_map(sessions, tmp_path):
    s = sessions
    out = tmp_path / "anchored"
    session = Planted(s["runs"][1], invert(PLANTED), frames=16)
    summary = extend_map_anchored(session, s["ck"]["teacher"], s["ck"]["student"], s["a"], out, NodeConfig(), FAST)
    m = PlaceDatabase.load(out)
    a = PlaceDatabase.load(s["a"])
    assert summary["anchored"] and len(m) == len(a) + summary["session"]["keyframes"]
    truth = {float(t): p for t, p in zip(s["runs"][1].timestamps, s["runs"][1].poses)}
    Pm = pose_matrices(m)[len(a):]
    assert max(np.linalg.norm(P[:3, 3] - truth[float(t)][:3, 3]) for P, t in zip(Pm, m.stamps[len(a):])) < 1.0
    # a session that cannot be anchored leaves the saved map as it was
    with pytest.raises(AlignmentError):
        extend_map_anchored(Planted(s["runs"][2], frames=4), s["ck"]["teacher"], s["ck"]["student"], s["a"], s["a"],
                            NodeConfig(), FAST)
    assert len(PlaceDatabase.load(s["a"])) == len(a)


def test_cli_merge_maps_and_anchor_to_map(sessions, tmp_path, monkeypatch, capsys):
    from distilvpr_ros import cli
    from distilvpr_ros.pipeline import offline

    s = sessions
    assert cli.main(["merge-maps", "--a", str(s["a"]), "--b", str(s["b"]), "--out", str(tmp_path / "m"),
                     "--min-anchors", "3", "--max-pairs", "2"]) == 1
    assert "Nothing was merged" in capsys.readouterr().err and not (tmp_path / "m").exists()
    # build-map --anchor-to-map with a session (a planted run instead of a bag) too short to anchor: nothing written
    # (test_anchor_a_new_session_to_a_saved_map checks the library function that anchors)
    monkeypatch.setattr(offline, "open_bag_sequence",
                        lambda path, cfg, run: Planted(s["runs"][1], invert(PLANTED), frames=4))
    code = cli.main(["build-map", "--bag", "b", "--teacher", str(s["ck"]["teacher"]), "--student",
                     str(s["ck"]["student"]), "--out", str(tmp_path / "m"), "--anchor-to-map", str(s["a"])])
    out = capsys.readouterr()
    assert code == 1 and "not anchored" in out.err and not (tmp_path / "m").exists()
