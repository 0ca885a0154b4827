"""Shares visible structure: ray-cast visible voxels on a hand-made scene, the world cache, the pose proxy,
the batch masks, chance level and the visible subset of the evaluation."""

import json

import numpy as np
import pytest
from scipy.stats import hypergeom

from distilvpr_ros.data import visibility as vis
from distilvpr_ros.data.geometry import pose_from_xyz_yaw
from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.data.visibility import (FrameVoxels, VisibilityConfig, VisibleStructure, cache_path,
                                           pose_proxy_mask, world_voxels)
from distilvpr_ros.data.world.visibility import RayCastParams, visible_voxel_sets
from distilvpr_ros.evaluation.evaluate import evaluate_sequences, headline, metrics_markdown
from distilvpr_ros.evaluation.metrics import chance_recall_at_n

#: The world's camera: 320 x 240, 90 degree horizontal field of view.
K = np.array([[160.0, 0, 159.5], [0, 160.0, 119.5], [0, 0, 1]])
#: Optical frame (z forward, x right, y down) of a camera looking along the body's x axis.
OPTICAL = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)


def camera(x: float, y: float, yaw: float, height: float = 1.6) -> np.ndarray:
    """world_T_camera (optical frame) of a level camera at (x, y, height) looking along ``yaw``."""
    T = pose_from_xyz_yaw(x, y, height, yaw)
    T[:3, :3] = T[:3, :3] @ OPTICAL
    return T


def box(x0, y0, z0, x1, y1, z1):
    """Vertices and triangles of an axis-aligned box."""
    v = np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], dtype=float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return v, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])


def wall_scene():
    """Ground (z = 0) 200 x 200 m and a wall 1 m thick, 20 m wide, 5 m high whose near face is at x = 10."""
    ground_v = np.array([[-100, -100, 0], [100, -100, 0], [100, 100, 0], [-100, 100, 0]], dtype=float)
    ground_t = np.array([[0, 1, 2], [0, 2, 3]])
    wall_v, wall_t = box(10, -10, 0, 11, 10, 5)
    return np.concatenate([ground_v, wall_v]), np.concatenate([ground_t, wall_t + 4])


def voxel_sets(poses, params=RayCastParams()):
    vertices, triangles = wall_scene()
    indptr, voxels = visible_voxel_sets(vertices, triangles, np.stack(poses), K, 320, 240, params)
    return [set(map(tuple, voxels[indptr[i]:indptr[i + 1]].tolist())) for i in range(len(poses))]


# --- ray-cast visible voxels -----------------------------------------------------------------------


def test_a_wall_is_seen_by_the_camera_facing_it_and_not_by_the_one_facing_away():
    facing, away, behind, far = voxel_sets([camera(0, 0, 0), camera(0, 0, np.pi), camera(-5, 2, 0), camera(-25, 0, 0)])
    # The wall's near face spans y -10..10 and z 0..5: at 10 m the 90 degree view covers exactly that width,
    # the voxel behind the face (x = 10..11) holds it, and the band z < 1 counts (hits above 0.3 m).
    assert facing == {(10, iy, iz) for iy in range(-10, 10) for iz in range(5)}
    assert away == set()  # only ground behind it: below the 0.3 m floor
    assert far == set()  # the wall is 35 m away: beyond the 30 m range
    assert behind and behind <= facing and len(behind & facing) >= 0.1 * len(facing)
    longer = voxel_sets([camera(-25, 0, 0)], RayCastParams(max_range_m=40.0))[0]
    assert longer and {v[0] for v in longer} == {10}
    no_floor = voxel_sets([camera(0, 0, 0)], RayCastParams(min_height_m=-1.0))[0]
    assert any(v[2] < 0 for v in no_floor)  # the ground itself (voxel z -1..0 below the surface) counts now


def test_frame_voxels_overlap_is_the_share_of_the_query_structure():
    sets = voxel_sets([camera(0, 0, 0), camera(0, 0, np.pi), camera(-5, 2, 0)])
    vertices, triangles = wall_scene()
    poses = np.stack([camera(0, 0, 0), camera(0, 0, np.pi), camera(-5, 2, 0)])
    indptr, voxels = visible_voxel_sets(vertices, triangles, poses, K, 320, 240)
    fv = FrameVoxels.from_sets(["a"], [indptr], [voxels])
    rows = fv.rows("a", [0, 1, 2])
    assert list(fv.counts(rows)) == [len(s) for s in sets]
    shared = fv.shared(rows, rows)
    for i in range(3):
        for j in range(3):
            assert shared[i, j] == len(sets[i] & sets[j])
    frac = fv.seen_fraction(rows, rows)
    assert frac[0, 2] == pytest.approx(len(sets[0] & sets[2]) / len(sets[0]))
    assert frac[1].tolist() == [0.0, 0.0, 0.0]  # a frame that sees nothing shares nothing
    assert set(map(tuple, fv.voxels_of(rows[2]).tolist())) == sets[2]


# --- the world cache ---------------------------------------------------------------------------------


def fake_world(tmp_path, seed):
    (tmp_path / "world.json").write_text(json.dumps({"version": 1, "config": {"seed": seed}}))
    return tmp_path


def test_cache_round_trip_and_recompute_on_a_changed_config(tmp_path, monkeypatch):
    calls = []

    def compute(root, params, threads=1, progress=False):
        calls.append(params)
        indptr = np.array([0, 2, 2, 3])
        return ["run_a"], [indptr], [np.array([[0, 0, 1], [1, 0, 1], [5, 5, 2]], dtype=np.int32)]

    monkeypatch.setattr("distilvpr_ros.data.world.visibility.world_visible_voxels", compute)
    root = fake_world(tmp_path, seed=1)
    first = world_voxels(root)
    path = cache_path(root)
    assert len(calls) == 1 and path.is_file() and path.name.startswith("visibility-") and path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as z:  # no pickled objects inside
        assert json.loads(str(z["key"]))["world_config_sha256"] == first.key["world_config_sha256"]
    again = world_voxels(root)
    assert len(calls) == 1  # read back, not recomputed
    for name in ("run_starts", "indptr", "voxel_index", "voxels"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.runs == ("run_a",) and again.key == first.key
    assert again.counts(again.rows("run_a", [0, 1, 2])).tolist() == [2, 0, 1]
    # Other ray-casting parameters: another file, computed again; the threshold is not part of the key.
    other = world_voxels(root, VisibilityConfig(max_range_m=20.0))
    assert len(calls) == 2 and calls[-1].max_range_m == 20.0
    assert cache_path(root, VisibilityConfig(max_range_m=20.0)) != path
    world_voxels(root, VisibilityConfig(min_shared=0.5))
    assert len(calls) == 2 and other.key["max_range_m"] == 20.0
    # A changed world config: a new key, computed again.
    fake_world(tmp_path, seed=2)
    assert cache_path(root) != path
    world_voxels(root)
    assert len(calls) == 3
    (tmp_path / "w3").mkdir()
    assert world_voxels(fake_world(tmp_path / "w3", seed=3), compute=False) is None


def test_a_cache_file_with_another_key_is_recomputed(tmp_path, monkeypatch):
    calls = []

    def compute(root, params, threads=1, progress=False):
        calls.append(1)
        return ["r"], [np.array([0, 1])], [np.array([[1, 2, 3]], dtype=np.int32)]

    monkeypatch.setattr("distilvpr_ros.data.world.visibility.world_visible_voxels", compute)
    root = fake_world(tmp_path, seed=1)
    FrameVoxels.from_sets(["r"], [np.array([0, 0])], [np.zeros((0, 3), np.int32)], {"kind": "other"}).save(
        cache_path(root))
    assert len(world_voxels(root).voxels) == 1 and calls == [1]


def test_world_ground_truth_on_the_tiny_world(tiny_world):
    runs = load_synthetic(tiny_world)
    structure = VisibleStructure.from_sequences(runs)
    assert structure.source == vis.WORLD and len(structure.voxels) == sum(len(r) for r in runs)
    counts = structure.voxels.counts(np.arange(len(structure.voxels)))
    assert counts.mean() > 20  # a town: most frames see buildings within 30 m
    frames = [(s, i) for s, run in enumerate(runs) for i in range(len(run))]
    mask = structure.mask(frames)
    np.testing.assert_array_equal(mask, mask.T)
    np.testing.assert_array_equal(np.diag(mask), counts > 0)
    sees = structure.sees(frames, frames)
    np.testing.assert_array_equal(mask, sees & sees.T)
    xy = np.concatenate([r.poses[:, :2, 3] for r in runs])
    # Both see a voxel within 30 m of their camera (mounted 1.5 m ahead of the base; a voxel's diagonal 1.7 m).
    assert np.linalg.norm(xy[:, None] - xy[None], axis=-1)[mask].max() <= 2 * (30.0 + 1.5 + 1.8)
    # Region-filtered sequences map to the same cache rows by their file indices.
    test_runs = load_synthetic(tiny_world, regions={"test"})
    sub = VisibleStructure(test_runs, voxels=structure.voxels)
    full = {run.run: s for s, run in enumerate(runs)}
    query, database = test_runs[0], test_runs[1]
    want = structure.sees([(full[query.run], int(i)) for i in query.frame_indices],
                          [(full[database.run], int(i)) for i in database.frame_indices])
    np.testing.assert_array_equal(sub.matches(0, 1), want)
    # Condition-filtered training sequences (frame subsets of runs) find the world too.
    from distilvpr_ros.data.sources import SequenceSubset

    subsets = [SequenceSubset(SequenceSubset(test_runs[0], np.arange(1, len(query))), np.array([0, 2])), database]
    via = VisibleStructure.from_sequences(subsets, compute=False)
    assert via.source == vis.WORLD
    np.testing.assert_array_equal(via.matches(0, 1), want[[1, 3]])


# --- the pose proxy ----------------------------------------------------------------------------------


def test_pose_proxy():
    a = np.stack([pose_from_xyz_yaw(0, 0, 0, 0)])
    others = np.stack([pose_from_xyz_yaw(*p) for p in [
        (5, 0, 0, 0),  # same heading, near
        (5, 0, 0, np.pi),  # facing back
        (0, 24, 0, np.deg2rad(85)),  # near, 85 degrees
        (0, 10, 0, np.deg2rad(95)),  # 95 degrees
        (30, 0, 0, 0),  # too far
        (-20, 0, 0, np.deg2rad(-60)),  # behind, turned: a's view point (10 m ahead) lies outside its view
        (-5, 0, 0, 0),  # behind, same heading: a's view point is straight ahead of it
    ]])
    assert pose_proxy_mask(a, others)[0].tolist() == [True, False, True, False, False, True, True]
    frustum = VisibilityConfig(proxy_frustum=True)
    assert pose_proxy_mask(a, others, frustum)[0].tolist() == [True, False, False, False, False, False, True]
    wide = VisibilityConfig(proxy_heading_deg=180, proxy_distance_m=40)
    assert pose_proxy_mask(a, others, wide).all()
    side = VisibilityConfig(camera_yaw_deg=90)  # a side camera: both headings turn, the test is unchanged
    np.testing.assert_array_equal(pose_proxy_mask(a, others, side), pose_proxy_mask(a, others))


class Drive:
    """A straight drive of 10 frames, 10 m apart, along +x (direction +1) or -x (-1), without sensor data."""

    def __init__(self, run, direction, condition, y=0.0):
        self.run = run
        self.timestamps = np.arange(10, dtype=float)
        self.poses = np.stack([pose_from_xyz_yaw(10.0 * i, y, 0, 0 if direction > 0 else np.pi) for i in range(10)])
        self._meta = [dict(direction=direction, condition=condition, dynamic_fraction=0.0) for _ in range(10)]

    def __len__(self):
        return 10

    def meta(self, i):
        return self._meta[i]


def test_proxy_structure_masks_batches_of_frames():
    runs = [Drive("east", 1, "day"), Drive("west", -1, "night", y=3.0)]
    structure = VisibleStructure(runs)
    assert structure.source == vis.PROXY and structure.describe()["source"] == vis.PROXY
    frames = [(0, 0), (0, 1), (1, 0), (1, 4)]
    np.testing.assert_array_equal(structure.mask(frames), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert structure.mask(frames[:1], frames[2:]).shape == (1, 2)
    with pytest.raises(ValueError, match="pose proxy"):
        structure.rows(frames)


# --- chance level and the visible subset -------------------------------------------------------------


def test_chance_recall_matches_the_hypergeometric_distribution():
    for true, db, n in [(0, 10, 1), (3, 10, 1), (3, 10, 5), (10, 10, 2), (7, 50, 25), (1, 1, 5)]:
        want = hypergeom.sf(0, db, true, min(n, db))  # P(at least one true match among n random picks)
        assert chance_recall_at_n([true], db, n)[0] == pytest.approx(want, abs=1e-12), (true, db, n)
    with pytest.raises(ValueError):
        chance_recall_at_n([11], 10)


@pytest.fixture()
def drives():
    """'east' and 'east2' drive the same way, 'west' the other way; every descriptor is exact (one-hot of the
    frame's place), so every query retrieves the database frame at its own place."""
    runs = [Drive("east", 1, "day"), Drive("east2", 1, "night", y=1.0), Drive("west", -1, "fog", y=2.0)]
    return runs, [np.eye(10)[np.arange(10)] for _ in runs]


def test_visible_subset_with_the_pose_proxy(drives):
    runs, descs = drives
    m = evaluate_sequences(descs, runs, query_subsets=["same_direction", "opposite_direction"],
                           visible=VisibleStructure(runs).matches)
    assert m["recall@1"] == 1.0 and m["num_queries"] == 60
    v = m["visible"]
    # Only the same-direction pairs share structure (the proxy's heading test): 2 pairs x 10 queries.
    assert (v["num_pairs"], v["num_queries"], v["recall@1"]) == (2, 20, 1.0)
    assert v["share"] == {"all": pytest.approx(20 / 60), "same_direction": 1.0, "opposite_direction": 0.0}
    assert v["ceiling@1"] == pytest.approx(2 / 6)
    assert v["same_direction"]["num_queries"] == 20 and v["opposite_direction"]["num_queries"] == 0
    assert set(v["per_condition"]) == {"day", "night"}
    # Chance: per query (true matches within 25 m) / 10 frames, averaged over queries then pairs.
    xy = runs[0].poses[:, :2, 3]
    per_query = [(np.abs(xy[:, 0] - x) <= np.sqrt(25.0 ** 2 - 1.0)).sum() / 10 for x in xy[:, 0]]
    assert v["chance@1"] == pytest.approx(np.mean(per_query))
    h = headline(m)
    assert json.dumps(h, sort_keys=True) == json.dumps(m["headline"], sort_keys=True)  # NaN != NaN in ==
    assert {k: h[k] for k in ("all", "same_direction", "opposite_direction", "visible")} == {
        "all": 1.0, "same_direction": 1.0, "opposite_direction": 1.0, "visible": 1.0}
    assert np.isnan(h["per_condition"]["fog"]["visible"]) and h["per_condition"]["day"]["visible"] == 1.0
    text = metrics_markdown(m)
    assert "| visible subset |" in text and "AR@1 visible" in text and "chance AR@1" in text


def test_a_correct_match_that_is_not_visible_does_not_count_in_the_visible_subset(drives):
    runs, descs = drives
    shifted = [descs[0], np.eye(10)[np.minimum(np.arange(10) + 1, 9)], descs[2]]  # east2 retrieves the next place

    def only_same_place(query, database):  # a database frame sees a query's structure only at its own place
        return np.eye(10, dtype=bool)

    m = evaluate_sequences(shifted, runs, visible=only_same_place)
    east2_on_east = next(p for p in m["pairs"] if (p["database"], p["query"]) == ("east", "east2"))
    assert east2_on_east["recall@1"] == 1.0  # the next place is 10 m away: correct within 25 m
    v = m["visible"]
    assert v["num_pairs"] == 6 and v["num_queries"] == 60 and v["ceiling@1"] == 1.0
    assert v["recall@1"] == 1.0 and v["chance@1"] == m["chance@1"]  # the standard rule: within 25 m is correct
    strict = v["strict"]
    assert strict["num_queries"] == 60 and strict["chance@1"] == pytest.approx(0.1)  # 1 visible match in 10
    # Strictly, east2's queries 0..8 retrieve the next place (not visible): wrong; query 9 retrieves itself.
    assert strict["per_condition"]["night"]["recall@1"] == pytest.approx(0.1)
    assert strict["recall@1"] == pytest.approx((2 * 1.0 + 4 * 0.1) / 6)  # the 4 pairs with east2 score 0.1
    assert m["headline"]["visible_strict"] == strict["recall@1"]
    assert "visible" not in evaluate_sequences(descs, runs)["headline"]
    assert evaluate_sequences(descs, runs)["visible"] is None
