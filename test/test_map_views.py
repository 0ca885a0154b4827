"""Map format 2: keyframe views (JPEG image, float16 LiDAR points, per-run calibration) round-trip, every view
file is checked before use, and format 1 maps are read as maps without views."""

import json
import warnings

import numpy as np
import pytest

from distilvpr_ros.mapping.database import EmbeddingSpace, MapError, PlaceDatabase, ViewData
from distilvpr_ros.mapping.map_io import FORMAT_VERSION, VIEW_FILES
from distilvpr_ros.mapping.views import decode_jpeg, encode_jpeg
from distilvpr_ros.utils.fileio import sha256_file
from verification_scene import make_calibration

N = 6


def _image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((10, 10, 1))).astype(np.uint8)  # blocks: JPEG-friendly
    return img


def _points(i: int) -> np.ndarray:
    return np.random.default_rng(100 + i).normal(scale=20, size=(50 + 10 * i, 4)).astype(np.float32)


def make_map(views: bool = True) -> PlaceDatabase:
    db = PlaceDatabase([EmbeddingSpace("teacher", 8, "t", "a" * 64),
                        EmbeddingSpace("camera_student", 4, "s", "b" * 64)])
    rng = np.random.default_rng(0)
    for i in range(N):
        view = None
        if views and i != 2:  # keyframe 2 has no view
            view = ViewData(encode_jpeg(_image(i), 95), _points(i) if i != 3 else None)  # 3: image only
        desc = {"teacher": rng.normal(size=8), "camera_student": rng.normal(size=4)}
        db.add(float(i), np.eye(4), "map", "run_a", desc, view=view)
    if views:
        db.set_calibration("run_a", make_calibration().to_dict())
    return db


@pytest.fixture
def saved(tmp_path):
    db = make_map()
    return db, db.save(tmp_path / "map")


def test_views_round_trip(saved):
    db, path = saved
    schema = json.loads((path / "schema.json").read_text())
    assert schema["format_version"] == FORMAT_VERSION == 2
    assert schema["views"]["image_encoding"] == "jpeg" and schema["views"]["points_dtype"] == "float16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = PlaceDatabase.load(path)
    assert loaded.has_views and loaded.format_version == 2
    assert loaded.calibration("run_a") == make_calibration().to_dict() and loaded.calibration("other") is None
    for i in range(N):
        a, b = db.view(i), loaded.view(i)
        assert a.image_jpeg == b.image_jpeg
        np.testing.assert_array_equal(a.points, b.points)
    assert loaded.view(2).empty and decode_jpeg(loaded.view(2).image_jpeg) is None
    assert len(loaded.view(3).points) == 0 and loaded.view(3).image_jpeg
    img = decode_jpeg(loaded.view(0).image_jpeg)
    assert img.shape == (120, 160, 3) and np.abs(img.astype(int) - _image(0)).mean() < 10  # vs ~85 for another image
    pts = loaded.view(1).points
    assert pts.dtype == np.float16 and pts.shape == (60, 3)
    np.testing.assert_allclose(pts.astype(np.float32), _points(1)[:, :3], rtol=1e-3, atol=1e-2)
    # resumed maps keep their views and add new ones
    loaded.add(10.0, np.eye(4), "map", "run_b", {"teacher": np.ones(8), "camera_student": np.ones(4)},
               view=ViewData(b"", _points(5)))
    again = PlaceDatabase.load(loaded.save(path))
    assert len(again) == N + 1 and len(again.view(N).points) == len(_points(5))
    assert again.view(0).image_jpeg == db.view(0).image_jpeg


def test_bad_views_and_calibrations_are_refused_before_anything_is_added():
    db = make_map()
    with pytest.raises(ValueError, match="N x C"):
        db.add(99.0, np.eye(4), "map", "run_a", {"teacher": np.ones(8), "camera_student": np.ones(4)},
               view=ViewData(b"", np.zeros(5)))
    assert len(db) == N
    other = make_calibration(640, 480).to_dict()
    with pytest.raises(ValueError, match="another calibration"):
        db.set_calibration("run_a", other)
    db.set_calibration("run_a", make_calibration().to_dict())  # the same one again is fine
    # non-finite points are dropped, not stored
    db.add(99.0, np.eye(4), "map", "run_a", {"teacher": np.ones(8), "camera_student": np.ones(4)},
           view=ViewData(b"", np.array([[1, 2, 3], [np.nan, 0, 0], [1e9, 0, 0]], np.float32)))
    assert len(db.view(N).points) == 1


def _rewrite(path, key: str, data: bytes, fix_sha: bool = True) -> None:
    f = path / VIEW_FILES[key]
    f.write_bytes(data)
    if fix_sha:
        schema = json.loads((path / "schema.json").read_text())
        schema["views"][key]["sha256"] = sha256_file(f)
        (path / "schema.json").write_text(json.dumps(schema))


def _n_points(path) -> int:
    return int(np.load(path / "views_point_offsets.npy")[-1])


def _npy_bytes(tmp_path, arr) -> bytes:
    np.save(tmp_path / "x.npy", arr, allow_pickle=False)
    return (tmp_path / "x.npy").read_bytes()


@pytest.mark.parametrize("corrupt, message", [
    (lambda p, t: _rewrite(p, "images", b"x" * 10, fix_sha=False), r"views_images.bin: checksum mismatch"),
    (lambda p, t: _rewrite(p, "images", (p / "views_images.bin").read_bytes()[:-5]),
     r"views_images.bin: \d+ bytes, but the offsets end at"),
    (lambda p, t: _rewrite(p, "points", (p / "views_points.npy").read_bytes()[:-6]),
     r"views_points.npy: holds \d+ bytes of data, but float16 \(\d+, 3\) needs"),
    (lambda p, t: _rewrite(p, "points", _npy_bytes(t, np.zeros((10 ** 6, 3), np.float32))),
     r"views_points.npy: expected float16 \(\d+, 3\), got float32 \(1000000, 3\)"),
    (lambda p, t: _rewrite(p, "point_offsets", _npy_bytes(t, np.array([0, 5, 3, 9, 9, 9, 9], np.int64))),
     r"views_point_offsets.npy: offsets must start at 0 and never decrease"),
    (lambda p, t: _rewrite(p, "image_offsets", _npy_bytes(t, np.zeros(3, np.int64))),
     r"views_image_offsets.npy: expected int64 \(7,\), got int64 \(3,\)"),
    (lambda p, t: _rewrite(p, "point_offsets", _npy_bytes(t, np.array([0, 1, 2, 3, 4, 5, 10 ** 15]))),
     r"views_points.npy: expected float16 \(1000000000000000, 3\)"),  # header vs offsets: nothing allocated
    (lambda p, t: _rewrite(p, "points", _npy_bytes(t, np.full((_n_points(p), 3), np.inf, np.float16))),
     r"views_points.npy: points contain NaN or inf"),
])
def test_corrupt_view_files_are_named(saved, tmp_path, corrupt, message):
    _, path = saved
    corrupt(path, tmp_path)
    with pytest.raises(MapError, match=message):
        PlaceDatabase.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["views"]["calibrations"]["run_a"].update(K=[[1, 2], [3, 4]]), r"calibration of run 'run_a'"),
    (lambda s: s["views"]["calibrations"]["run_a"].pop("T_base_camera"), r"lacks 'T_base_camera'"),
    (lambda s: s["views"].update(points_dtype="float64"), r"views.points_dtype"),
    (lambda s: s["views"]["images"].update(file="../x.bin"), r"invalid file name '../x.bin'"),
    (lambda s: s.pop("views"), r"format 2 map without its views entry"),
])
def test_malformed_views_entries_are_refused(saved, edit, message):
    _, path = saved
    schema = json.loads((path / "schema.json").read_text())
    edit(schema)
    (path / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(MapError, match=message):
        PlaceDatabase.load(path)


def test_format_1_maps_are_read_without_views_and_upgraded_on_save(saved):
    """A map written by the previous release (no views entry, format_version 1) still loads for place matching."""
    db, path = saved
    schema = json.loads((path / "schema.json").read_text())
    schema["format_version"] = 1
    del schema["views"]
    (path / "schema.json").write_text(json.dumps(schema))
    for f in VIEW_FILES.values():
        (path / f).unlink()
    with pytest.warns(UserWarning, match=r"format 1 has no keyframe views.*distilvpr build-map --fresh"):
        old = PlaceDatabase.load(path)
    assert old.format_version == 1 and not old.has_views and len(old) == N
    assert all(old.view(i).empty for i in range(N))
    np.testing.assert_array_equal(old.descriptors("teacher"), db.descriptors("teacher"))
    # a views entry in a format 1 schema is not format 1
    schema["views"] = {}
    (path / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(MapError, match="format 1 map with a views entry"):
        PlaceDatabase.load(path)
    del schema["views"]
    (path / "schema.json").write_text(json.dumps(schema))
    with pytest.warns(UserWarning):
        old = PlaceDatabase.load(path)
    old.save(path)  # writing upgrades to format 2 (empty views for the old keyframes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = PlaceDatabase.load(path)
    assert new.format_version == 2 and not new.has_views and len(new) == N
