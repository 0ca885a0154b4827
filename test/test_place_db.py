"""Place database: exact and approximate search, incremental adds, atomic save/load with integrity checks."""

import json
import warnings

import faiss
import numpy as np
import pytest

from distilvpr_ros.data.geometry import make_pose
from distilvpr_ros.mapping import map_io
from distilvpr_ros.mapping.database import (EmbeddingSpace, IndexConfig, MapCompatibilityError, MapError,
                                            PlaceDatabase)
from distilvpr_ros.utils import fileio
from distilvpr_ros.utils.fileio import sha256_file

TEACHER_SHA = "a" * 64
STUDENT_SHA = "b" * 64


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """faiss's OpenMP threads spin-wait when the cores are shared; one thread keeps these small tests fast."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def clustered(n: int, dim: int, rng, clusters: int = 50, spread: float = 0.6) -> np.ndarray:
    """Unit vectors around random cluster centres (a mixture of Gaussians on the sphere)."""
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_db(n: int, rng, teacher_index=None, student_index=None, student_metric="ip") -> PlaceDatabase:
    db = PlaceDatabase([
        EmbeddingSpace("teacher", 64, "teacher:ckpt", TEACHER_SHA, index=teacher_index or IndexConfig()),
        EmbeddingSpace("camera_student", 32, "student:ckpt", STUDENT_SHA, metric=student_metric,
                       index=student_index or IndexConfig()),
    ])
    poses = np.zeros((n, 7))
    poses[:, 0], poses[:, 1], poses[:, 6] = np.arange(n) * 2.0, 1.0, 1.0
    db.add_many(np.arange(n) * 0.5, poses, ["map"] * n, [f"run{i % 2}" for i in range(n)],
                {"teacher": clustered(n, 64, rng), "camera_student": clustered(n, 32, rng)})
    return db


def brute_force(db, space, q, k):
    x = db.descriptors(space)
    if db.spaces[space].metric == "ip":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        s = q @ x.T
    else:
        s = -np.linalg.norm(q[:, None] - x[None], axis=2)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def recall_at_1(approx_ids, exact_ids):
    return float(np.mean(approx_ids[:, 0] == exact_ids[:, 0]))


# ---------------------------------------------------------------------- add / search
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_search_is_exact(metric):
    rng = np.random.default_rng(0)
    db = make_db(300, rng, student_metric=metric)
    q = rng.normal(size=(20, 32)).astype(np.float32)
    scores, ids = db.search("camera_student", q, 7)
    ref_scores, ref_ids = brute_force(db, "camera_student", q, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first, higher is better for both metrics


def test_search_pads_missing_results_and_overfetches():
    rng = np.random.default_rng(1)
    db = make_db(5, rng)
    scores, ids = db.search("teacher", db.descriptors("teacher")[:2], 8)
    assert scores.shape == ids.shape == (2, 8)
    assert (ids[:, :5] >= 0).all() and (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert list(ids[:, 0]) == [0, 1]
    empty = PlaceDatabase([EmbeddingSpace("teacher", 64, "t", TEACHER_SHA)])
    s, i = empty.search("teacher", np.ones(64), 3)
    assert (i == -1).all() and np.isneginf(s).all()


def test_hnsw_and_ivfpq_recall_on_clustered_data():
    rng = np.random.default_rng(2)
    n = 3000
    db = make_db(n, rng, teacher_index=IndexConfig(type="hnsw", hnsw_m=16, ef_search=64),
                 student_index=IndexConfig(type="ivfpq", nlist=16, pq_m=8, nbits=6, nprobe=4))
    for space, dim in (("teacher", 64), ("camera_student", 32)):
        x = db.descriptors(space)
        q = x[rng.integers(n, size=100)] + 0.1 * rng.normal(size=(100, dim)).astype(np.float32)
        scores, ids = db.search(space, q, 10)
        exact_scores, exact_ids = brute_force(db, space, q, 10)
        assert recall_at_1(ids, exact_ids) >= 0.9, space
        # scores of whatever is returned are exact (HNSW stores vectors; IVF-PQ re-ranks with them)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x[ids], qn), atol=1e-4)
    assert db.index_state("camera_student")["built"] == "ivfpq"


def test_ivfpq_falls_back_to_flat_until_trainable_then_trains():
    rng = np.random.default_rng(3)
    cfg = IndexConfig(type="ivfpq", nlist=8, pq_m=8, nbits=6)  # needs 39 * 64 = 2496 vectors
    db = make_db(200, rng, student_index=cfg)
    q = rng.normal(size=(5, 32)).astype(np.float32)
    with pytest.warns(UserWarning, match="too few to train IVF-PQ"):
        _, ids = db.search("camera_student", q, 3)
    np.testing.assert_array_equal(ids, brute_force(db, "camera_student", q, 3)[1])
    assert db.index_state("camera_student")["built"] == "flat"
    more = make_db(2400, rng)
    db.add_many(more.stamps, more.poses, more.frame_ids, more.runs,
                {s: more.descriptors(s) for s in ("teacher", "camera_student")})
    db.search("camera_student", q, 3)
    assert db.index_state("camera_student") == {"built": "ivfpq", "ntotal": 2600, "trained_on": 2600}


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_incremental_add_keeps_index_in_sync(kind):
    rng = np.random.default_rng(4)
    db = make_db(100, rng, teacher_index=IndexConfig(type=kind))
    db.search("teacher", rng.normal(size=(1, 64)), 1)
    new = clustered(1, 64, rng)[0]
    i = db.add(99.0, make_pose((1, 2, 3), (0, 0, 0, 1)), "map", "run9",
               {"teacher": new, "camera_student": clustered(1, 32, rng)[0]})
    assert i == 100 and len(db) == 101
    scores, ids = db.search("teacher", new[None], 1)
    assert ids[0, 0] == 100 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert db.index_state("teacher")["ntotal"] == 101


def test_metadata_access():
    rng = np.random.default_rng(5)
    db = make_db(10, rng)
    pose = make_pose((4.0, 5.0, 6.0), (0.0, 0.0, np.sin(0.3), np.cos(0.3)))
    i = db.add(123.5, pose, "odom", "runX", {"teacher": np.ones(64), "camera_student": np.ones(32)})
    m = db.meta(i)
    assert (m.id, m.stamp, m.frame_id, m.run) == (10, 123.5, "odom", "runX")
    np.testing.assert_allclose(m.pose_matrix, pose, atol=1e-12)
    np.testing.assert_allclose(db.positions[i], [4.0, 5.0])
    assert db.positions.shape == (11, 2) and db.stamps.shape == (11,) and db.poses.shape == (11, 7)
    assert list(db.spaces) == ["teacher", "camera_student"]
    np.testing.assert_allclose(np.linalg.norm(db.descriptors("teacher"), axis=1), 1.0, atol=1e-6)
    with pytest.raises(IndexError):
        db.meta(11)


def test_add_rejects_bad_input():
    rng = np.random.default_rng(6)
    db = make_db(3, rng)
    good = {"teacher": np.ones(64), "camera_student": np.ones(32)}
    with pytest.raises(ValueError, match="'teacher'.*dim 64"):
        db.add(1.0, np.eye(4), "map", "r", {**good, "teacher": np.ones(63)})
    with pytest.raises(ValueError, match="'camera_student'.*NaN"):
        db.add(1.0, np.eye(4), "map", "r", {**good, "camera_student": np.full(32, np.nan)})
    with pytest.raises(ValueError, match=r"missing \['camera_student'\]"):
        db.add(1.0, np.eye(4), "map", "r", {"teacher": np.ones(64)})
    with pytest.raises(ValueError, match=r"unknown \['lidar_student'\]"):
        db.add(1.0, np.eye(4), "map", "r", {**good, "lidar_student": np.ones(8)})
    with pytest.raises(ValueError, match="zero descriptor"):
        db.add(1.0, np.eye(4), "map", "r", {**good, "teacher": np.zeros(64)})
    with pytest.raises(ValueError, match="stamps"):
        db.add(float("nan"), np.eye(4), "map", "r", good)
    with pytest.raises(ValueError, match="pq_m"):
        EmbeddingSpace("s", 30, "m", "h", index=IndexConfig(type="ivfpq", pq_m=8))
    with pytest.raises(ValueError, match="space name"):
        EmbeddingSpace("../evil", 8, "m", "h")
    assert len(db) == 3  # nothing half-added


# ---------------------------------------------------------------------- save / load
@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(7)
    db = make_db(2600, rng, teacher_index=IndexConfig(type="hnsw", hnsw_m=8),
                 student_index=IndexConfig(type="ivfpq", nlist=8, pq_m=8, nbits=6))
    path = db.save(tmp_path / "map")
    return db, path


def test_round_trip(saved):
    db, path = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stored indexes are adopted, nothing rebuilt
        loaded = PlaceDatabase.load(path, expect={"teacher": TEACHER_SHA, "camera_student": STUDENT_SHA})
    assert len(loaded) == len(db) and loaded.spaces == db.spaces
    np.testing.assert_array_equal(loaded.stamps, db.stamps)
    np.testing.assert_array_equal(loaded.poses, db.poses)
    assert loaded.frame_ids == db.frame_ids and loaded.runs == db.runs
    q = np.random.default_rng(8).normal(size=(10, 64)).astype(np.float32)
    for space in db.spaces:
        np.testing.assert_array_equal(loaded.descriptors(space), db.descriptors(space))
        assert loaded.index_state(space) == db.index_state(space)
        qs = q[:, :db.spaces[space].dim]
        for a, b in zip(loaded.search(space, qs, 5), db.search(space, qs, 5)):
            np.testing.assert_array_equal(a, b)
    schema = json.loads((path / "schema.json").read_text())
    assert schema["spaces"]["camera_student"]["model"] == {"name": "student:ckpt", "sha256": STUDENT_SHA}
    assert sorted(p.name for p in path.iterdir()) == [
        "descriptors_camera_student.npy", "descriptors_teacher.npy", "index_camera_student.faiss",
        "index_teacher.faiss", "meta.json", "schema.json", "views_image_offsets.npy", "views_images.bin",
        "views_point_offsets.npy", "views_points.npy"]


def test_save_replaces_old_map_and_crash_keeps_it_loadable(saved, monkeypatch):
    db, path = saved
    db.add(9999.0, np.eye(4), "map", "r", {"teacher": np.ones(64), "camera_student": np.ones(32)})
    calls = {"n": 0}
    real_save = np.save

    def crash_on_second_file(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        real_save(*args, **kwargs)

    monkeypatch.setattr(map_io.np, "save", crash_on_second_file)
    with pytest.raises(OSError, match="simulated"):
        db.save(path)
    monkeypatch.undo()
    assert len(PlaceDatabase.load(path)) == 2600
    assert sorted(p.name for p in path.parent.iterdir()) == ["map"]  # no temporary folder left behind

    real_replace = fileio.os.replace
    calls["n"] = 0

    def crash_between_renames(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # old map already moved to map.bak, new one not yet in place
            raise OSError("power cut (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", crash_between_renames)
    with pytest.raises(OSError, match="simulated"):
        db.save(path)
    monkeypatch.undo()
    assert len(PlaceDatabase.load(path)) == 2600

    db.save(path)
    assert len(PlaceDatabase.load(path)) == 2601
    assert sorted(p.name for p in path.parent.iterdir()) == ["map"]


def test_load_falls_back_to_backup_after_a_hard_crash_between_renames(saved):
    _, path = saved
    path.rename(path.with_name("map.bak"))  # what a kill between the two renames leaves
    with pytest.warns(UserWarning, match="interrupted save"):
        assert len(PlaceDatabase.load(path)) == 2600


def test_corrupt_descriptor_file_is_named(saved):
    _, path = saved
    f = path / "descriptors_teacher.npy"
    data = bytearray(f.read_bytes())
    data[500] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(MapError, match="descriptors_teacher.npy.*checksum mismatch"):
        PlaceDatabase.load(path)


def test_unreadable_descriptor_file_with_matching_checksum_is_named(saved):
    _, path = saved
    f = path / "descriptors_teacher.npy"
    f.write_bytes(b"\x93NUMPY garbage")
    schema = json.loads((path / "schema.json").read_text())
    schema["spaces"]["teacher"]["descriptors"]["sha256"] = sha256_file(f)
    (path / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(MapError, match="descriptors_teacher.npy: unreadable descriptor file"):
        PlaceDatabase.load(path)


def test_truncated_meta_is_named(saved):
    _, path = saved
    f = path / "meta.json"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(MapError, match="meta.json"):
        PlaceDatabase.load(path)


def test_inconsistent_counts_and_versions_are_refused(saved):
    _, path = saved
    schema_file = path / "schema.json"
    schema = json.loads(schema_file.read_text())
    schema_file.write_text(json.dumps({**schema, "count": 5}))
    with pytest.raises(MapError, match="meta.json: column lengths"):
        PlaceDatabase.load(path)
    schema_file.write_text(json.dumps({**schema, "format_version": 99}))
    with pytest.raises(MapError, match="schema.json: format version 99 not supported"):
        PlaceDatabase.load(path)
    schema_file.write_text(json.dumps({**schema, "meta": {**schema["meta"], "file": "../elsewhere.json"}}))
    with pytest.raises(MapError, match="schema.json: invalid file name '../elsewhere.json'"):
        PlaceDatabase.load(path)
    schema_file.write_text("{")
    with pytest.raises(MapError, match="schema.json: corrupt JSON"):
        PlaceDatabase.load(path)
    with pytest.raises(MapError, match="map folder not found"):
        PlaceDatabase.load(path.with_name("nowhere"))


def test_model_hash_mismatch_names_both_hashes(saved):
    _, path = saved
    other = "c" * 64
    with pytest.raises(MapCompatibilityError) as err:
        PlaceDatabase.load(path, expect={"camera_student": other})
    msg = str(err.value)
    assert f"map built with model student:ckpt (sha256 {STUDENT_SHA})" in msg
    assert f"node runs model sha256 {other}" in msg
    with pytest.raises(MapCompatibilityError, match="no embedding space 'lidar_student'"):
        PlaceDatabase.load(path, expect={"lidar_student": other})


def test_corrupt_index_file_is_rebuilt_from_descriptors(saved):
    db, path = saved
    (path / "index_teacher.faiss").write_bytes(b"not an index")
    with pytest.warns(UserWarning, match="index_teacher.faiss: index unusable"):
        loaded = PlaceDatabase.load(path)
    q = db.descriptors("teacher")[:5]
    assert list(loaded.search("teacher", q, 1)[1][:, 0]) == [0, 1, 2, 3, 4]


def test_index_is_built_on_demand_and_search_params_tune_without_rebuild():
    rng = np.random.default_rng(10)
    db = make_db(2600, rng, student_index=IndexConfig(type="ivfpq", nlist=8, pq_m=8, nbits=6, nprobe=1))
    index = db.index("camera_student")
    assert index.ntotal == 2600 and index.nprobe == 1
    db.set_search_params("camera_student", nprobe=8, refine_factor=1)
    assert db.index("camera_student") is index and index.nprobe == 8
    assert db.spaces["camera_student"].index.refine_factor == 1
    with pytest.raises(ValueError):
        db.set_search_params("camera_student", nprobe=0)


# ---------------------------------------------------------------------- files that must not kill the loader
@pytest.fixture
def small(tmp_path):
    """A saved 100-keyframe map (HNSW teacher, flat student): enough for the file checks, quick to build."""
    db = make_db(100, np.random.default_rng(8), teacher_index=IndexConfig(type="hnsw", hnsw_m=8))
    return db, db.save(tmp_path / "map")


def _edit_schema(path, edit) -> None:
    schema = json.loads((path / "schema.json").read_text())
    edit(schema)
    (path / "schema.json").write_text(json.dumps(schema))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["spaces"]["teacher"].update(dim=1_000_000_000),
     r"spaces.teacher.dim: Input should be less than or equal to 65536"),
    (lambda s: s.update(spaces=None), r"spaces: Input should be a valid dictionary \(got 'None'\)"),
    (lambda s: s.update(spaces=[1, 2]), r"spaces: Input should be a valid dictionary"),
    (lambda s: s.update(spaces={}), r"spaces: Dictionary should have at least 1 item"),
    (lambda s: s["spaces"].update(teacher=[]), r"spaces.teacher: Input should be a valid dictionary"),
    (lambda s: s["spaces"]["teacher"].update(dim="64"), r"spaces.teacher.dim: Input should be a valid integer"),
    (lambda s: s.update(count=True), r"count: Input should be a valid integer"),
    (lambda s: s.update(count=-1), r"count: Input should be greater than or equal to 0"),
    (lambda s: s.update(meta=None), r"meta: Input should be a valid dictionary"),
    (lambda s: s["spaces"]["teacher"]["model"].update(sha256=7), r"spaces.teacher.model.sha256: Input should be"),
    (lambda s: s["spaces"]["teacher"]["index"]["config"].update(hnsw_m=10**9),
     r"spaces.teacher.index.config.hnsw_m: Input should be less than or equal to 512"),
    (lambda s: s["spaces"]["teacher"]["index"].update(built="annoy"), r"spaces.teacher.index.built: Input should be"),
    (lambda s: s["spaces"].update({"../x": s["spaces"]["teacher"]}), r"space name '../x'"),
])
def test_schema_numbers_and_types_are_checked_before_anything_is_allocated(small, edit, message):
    _, path = small
    _edit_schema(path, edit)
    with pytest.raises(MapError, match=r"schema.json: malformed schema: .*" + message):
        PlaceDatabase.load(path)


def _truncate_descriptors(path) -> None:
    """Drop the last float of descriptors_teacher.npy and record the new sha256."""
    f = path / "descriptors_teacher.npy"
    f.write_bytes(f.read_bytes()[:-4])
    _edit_schema(path, lambda s: s["spaces"]["teacher"]["descriptors"].update(sha256=sha256_file(f)))


@pytest.mark.parametrize("corrupt, message", [
    (lambda path: _edit_schema(path, lambda s: s["spaces"]["teacher"].update(dim=4096)),
     r"expected float32 100 x 4096, got float32 \(100, 64\)"),  # the schema against the .npy header
    (_truncate_descriptors, r"holds 25596 bytes of data, but float32 100 x 64 needs 25600 \(truncated or padded\)"),
])
def test_descriptor_header_is_checked_against_schema_and_file_size(small, corrupt, message):
    _, path = small
    corrupt(path)
    with pytest.raises(MapError, match=r"descriptors_teacher.npy: " + message):
        PlaceDatabase.load(path)


def test_meta_entries_of_the_wrong_type_are_named(small):
    _, path = small
    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["run"][3] = {"a": 1}
    meta_file.write_text(json.dumps(meta))
    _edit_schema(path, lambda s: s["meta"].update(sha256=sha256_file(meta_file)))
    with pytest.raises(MapError, match=r"meta.json: run entries must be strings, got dict"):
        PlaceDatabase.load(path)


def test_temporaries_of_killed_saves_are_removed_and_logged(small, caplog):
    import subprocess

    db, path = small
    proc = subprocess.Popen(["true"])
    proc.wait()
    stale = path.with_name(f".map.tmp-{proc.pid}")
    stale.mkdir()
    (stale / "descriptors_teacher.npy").write_bytes(b"0" * 4096)
    with caplog.at_level("WARNING", logger="distilvpr_ros.utils.fileio"):
        PlaceDatabase.load(path)
    assert not stale.exists() and f"removed {stale}" in caplog.text
    stale.mkdir()
    db.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["map"]
