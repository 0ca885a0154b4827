"""On-disk format of a place database: a folder written crash-safely, read with every number checked first.

Layout (no pickle anywhere)
    ::

        map/
          schema.json              format, format_version, created_at, count, meta file + sha256, and per
                                   space: model {name, sha256}, dim, metric, index {config, built,
                                   trained_on, file, sha256}, count, descriptors {file, sha256}
          meta.json                keyframe columns, row i = keyframe id i:
                                   {"id": [...], "stamp": [s], "pose": [[x, y, z, qx, qy, qz, qw]],
                                    "frame_id": [...], "run": [...]}
          descriptors_<space>.npy  float32 N x dim (np.save; read with allow_pickle=False)
          index_<space>.faiss      faiss.write_index of HNSW / trained IVF-PQ indexes (flat is rebuilt)
          views_images.bin         format 2: every keyframe's camera image as JPEG, concatenated (b"" = none)
          views_image_offsets.npy  int64 (N+1,): keyframe i's JPEG is bytes [off[i], off[i+1])
          views_points.npy         float16 (P, 3): every keyframe's LiDAR points x y z (LiDAR frame), concatenated
          views_point_offsets.npy  int64 (N+1,): keyframe i's points are rows [off[i], off[i+1])

        schema.json["views"] (format 2) names those four files with their sha256, the image encoding, the
        points' frame and dtype, and per run the camera calibration (``CameraCalibration.to_dict``).

Format versions
    2 (written now) adds the keyframe views that geometric verification needs. 1 (no views) is still read,
    as a map whose keyframes have no views, with a warning: place matching works as before, verification
    rejects every match with reason "map has no keyframe views". Rebuild such a map to verify against it
    (``distilvpr build-map --fresh ...``); extending it (``map.resume``) writes format 2 with views for the
    new keyframes only.

Writing (:func:`write_map`) goes through :func:`~distilvpr_ros.utils.fileio.atomic_write`: a temporary sibling
folder with every file fsynced, the old map kept as ``<name>.bak`` until the new one is renamed into place. A
crash at any point leaves either the old or the new map complete; if it happens between the two renames,
:func:`read_map` finds ``<name>.bak`` and reads it with a warning. Temporaries of killed writers are removed.

Reading (:func:`read_map`) never trusts a number before comparing it with what the files hold: the schema's
types and bounds (dimensions up to :data:`~distilvpr_ros.mapping.index.MAX_DIM`), every file's sha256, counts
across files, and the ``.npy`` header's dtype and shape against the schema *and* the file's size, all before
anything is allocated. Any problem raises :class:`~distilvpr_ros.mapping.errors.MapError` naming the file. An
index file that is missing or inconsistent is rebuilt from the descriptors with a warning.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Mapping

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..utils.fileio import atomic_write, recovered_path, sha256_file
from .errors import MapCompatibilityError, MapError
from .index import MAX_DIM, METRICS, EmbeddingSpace, IndexConfig, index_class
from .views import POINT_DTYPE, ViewStore

FORMAT_NAME = "distilvpr_ros.place_database"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
UPGRADE_HINT = "rebuild it to add keyframe views: distilvpr build-map --fresh ..."
VIEW_FILES = {"images": "views_images.bin", "image_offsets": "views_image_offsets.npy",
              "points": "views_points.npy", "point_offsets": "views_point_offsets.npy"}
SCHEMA_FILE = "schema.json"
META_FILE = "meta.json"
MAX_SCHEMA_BYTES = 1 << 20  # a schema is a few kB; anything larger is not one
MAX_SPACES = 64
META_COLUMNS = ("id", "stamp", "pose", "frame_id", "run")


@dataclass
class StoredIndex:
    """A space's faiss index as stored: ``index`` None means "build it from the descriptors"."""

    index: faiss.Index | None
    built: str
    trained_on: int


@dataclass
class MapContents:
    """Everything a map folder holds, as arrays (row i = keyframe id i)."""

    spaces: list[EmbeddingSpace]
    stamps: np.ndarray  # (N,) float64
    poses: np.ndarray  # (N, 7) float64 x y z qx qy qz qw
    frame_ids: list[str]
    runs: list[str]
    descriptors: dict[str, np.ndarray]  # space -> (N, dim) float32
    indexes: dict[str, StoredIndex]
    views: ViewStore | None = None  # None: no views (written as N empty views)
    format_version: int = FORMAT_VERSION  # as read (1 or 2); written maps are always FORMAT_VERSION


# ---------------------------------------------------------------------- schema (what schema.json may hold)
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class _FileRef(_Strict):
    file: str
    sha256: str


class _ModelRef(_Strict):
    name: str
    sha256: str


class _IndexEntry(_Strict):
    config: IndexConfig
    built: Literal["flat", "hnsw", "ivfpq"]
    trained_on: int = Field(0, ge=0)
    file: str | None = None
    sha256: str | None = None


class _SpaceEntry(_Strict):
    model: _ModelRef
    dim: int = Field(ge=1, le=MAX_DIM)
    metric: Literal["ip", "l2"]
    index: _IndexEntry
    count: int = Field(ge=0)
    descriptors: _FileRef


class _ViewsEntry(_Strict):
    images: _FileRef
    image_offsets: _FileRef
    points: _FileRef
    point_offsets: _FileRef
    image_encoding: Literal["jpeg"]
    points_frame: Literal["lidar"]
    points_dtype: Literal["float16"]
    calibrations: dict[str, dict] = Field(max_length=100000)


class _Schema(_Strict):
    count: int = Field(ge=0)
    meta: _FileRef
    spaces: dict[str, _SpaceEntry] = Field(min_length=1, max_length=MAX_SPACES)
    views: _ViewsEntry | None = None


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']} (got {str(err.get('input'))[:40]!r})")
    more = f"; and {e.error_count() - 3} more" if e.error_count() > 3 else ""
    return "; ".join(parts) + more


# ---------------------------------------------------------------------- writing
def write_map(path: str | Path, contents: MapContents) -> Path:
    """Write a map folder crash-safely (module docstring); returns its path."""
    with atomic_write(path, folder=True) as tmp:
        _write(tmp, contents)
    return Path(path)


def _write(folder: Path, m: MapContents) -> None:
    count = len(m.stamps)
    spaces = {}
    for sp in m.spaces:
        desc_file = f"descriptors_{sp.name}.npy"
        np.save(folder / desc_file, m.descriptors[sp.name], allow_pickle=False)
        stored = m.indexes[sp.name]
        index = {"config": sp.index.model_dump(), "built": stored.built, "trained_on": stored.trained_on,
                 "file": None, "sha256": None}
        if stored.built != "flat" and stored.index is not None:
            index_file = f"index_{sp.name}.faiss"
            faiss.write_index(stored.index, str(folder / index_file))
            index.update(file=index_file, sha256=sha256_file(folder / index_file))
        spaces[sp.name] = {"model": {"name": sp.model_name, "sha256": sp.model_sha256}, "dim": sp.dim,
                           "metric": sp.metric, "index": index, "count": count,
                           "descriptors": {"file": desc_file, "sha256": sha256_file(folder / desc_file)}}
    meta = {"id": list(range(count)), "stamp": m.stamps.tolist(), "pose": m.poses.tolist(),
            "frame_id": list(m.frame_ids), "run": list(m.runs)}
    _write_json(folder / META_FILE, meta)
    schema = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "count": count,
              "meta": {"file": META_FILE, "sha256": sha256_file(folder / META_FILE)}, "spaces": spaces,
              "views": _write_views(folder, m.views if m.views is not None else ViewStore.empty(count), count)}
    _write_json(folder / SCHEMA_FILE, schema, indent=2)


def _write_views(folder: Path, views: ViewStore, count: int) -> dict:
    if len(views) != count:
        raise ValueError(f"{len(views)} keyframe views for {count} keyframes")
    images, img_off, points, pts_off = views.packed()
    (folder / VIEW_FILES["images"]).write_bytes(images)
    np.save(folder / VIEW_FILES["image_offsets"], img_off, allow_pickle=False)
    np.save(folder / VIEW_FILES["points"], points, allow_pickle=False)
    np.save(folder / VIEW_FILES["point_offsets"], pts_off, allow_pickle=False)
    entry = {k: {"file": f, "sha256": sha256_file(folder / f)} for k, f in VIEW_FILES.items()}
    entry.update(image_encoding="jpeg", points_frame="lidar", points_dtype="float16",
                 calibrations=dict(views.calibrations))
    return entry


def _write_json(path: Path, obj, indent: int | None = None) -> None:
    path.write_text(json.dumps(obj, indent=indent, allow_nan=False))


# ---------------------------------------------------------------------- reading
def read_map(path: str | Path, expect: Mapping[str, str] | None = None) -> MapContents:
    """Read and verify a map folder (module docstring); ``expect``: ``{space: model_sha256}`` the caller runs.

    Raises :class:`MapCompatibilityError` when an expected space is missing or was built with a different
    model, and :class:`MapError` naming the file for anything missing, corrupt or out of bounds.
    """
    path = recovered_path(path)
    schema, version = _read_schema(path)
    spaces = [_space(path, name, entry) for name, entry in schema.spaces.items()]
    _check_expectations(path, {sp.name: sp for sp in spaces}, expect or {})
    meta = _read_meta(_member(path, schema.meta.file), schema.meta.sha256, schema.count)
    descriptors, indexes = {}, {}
    for sp in spaces:
        entry = schema.spaces[sp.name]
        if entry.count != schema.count:
            raise MapError(path / SCHEMA_FILE, f"space {sp.name!r} count {entry.count} != map count {schema.count}")
        descriptors[sp.name] = _read_descriptors(_member(path, entry.descriptors.file), entry.descriptors.sha256,
                                                 sp, schema.count)
        indexes[sp.name] = _read_index(path, entry.index, sp, schema.count)
    if schema.views is not None:
        views = _read_views(path, schema.views, schema.count)
    else:
        if version >= 2:
            raise MapError(path / SCHEMA_FILE, f"format {version} map without its views entry")
        warnings.warn(f"{path}: map format {version} has no keyframe views (geometric verification will reject "
                      f"its matches); {UPGRADE_HINT}", stacklevel=3)
        views = ViewStore.empty(schema.count)
    return MapContents(spaces, meta["stamp"], meta["pose"], meta["frame_id"], meta["run"], descriptors, indexes,
                       views, version)


def _read_schema(path: Path) -> tuple[_Schema, int]:
    file = path / SCHEMA_FILE
    if not path.is_dir():
        raise MapError(path, "map folder not found")
    if not file.is_file():
        raise MapError(file, "not a place database (no schema.json)")
    size = file.stat().st_size
    if size > MAX_SCHEMA_BYTES:
        raise MapError(file, f"{size} bytes: too large for a schema (at most {MAX_SCHEMA_BYTES})")
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MapError(file, f"corrupt JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise MapError(file, f"not a {FORMAT_NAME} schema")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise MapError(file, f"format version {version!r} not supported (this package reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
    if version == 1 and "views" in raw:
        raise MapError(file, "format 1 map with a views entry")
    try:
        return _Schema.model_validate(raw), int(version)
    except ValidationError as e:
        raise MapError(file, f"malformed schema: {_validation_message(e)}") from None


def _space(path: Path, name: str, entry: _SpaceEntry) -> EmbeddingSpace:
    try:
        return EmbeddingSpace(name=name, dim=entry.dim, model_name=entry.model.name,
                              model_sha256=entry.model.sha256, metric=entry.metric, index=entry.index.config)
    except ValueError as e:
        raise MapError(path / SCHEMA_FILE, f"malformed schema: {e}") from None


def _member(folder: Path, name) -> Path:
    """``folder / name`` for a plain file name recorded in the schema (never a path leading elsewhere)."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise MapError(folder / SCHEMA_FILE, f"invalid file name {name!r}")
    return folder / name


def _verify(path: Path, sha256: str | None) -> None:
    if not path.is_file():
        raise MapError(path, "file is missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise MapError(path, f"checksum mismatch (corrupt, truncated or modified): sha256 {actual[:12]}… "
                             f"but schema.json records {str(sha256)[:12]}…")


def _check_expectations(path: Path, spaces: dict[str, EmbeddingSpace], expect: Mapping[str, str]) -> None:
    for name, sha in expect.items():
        if name not in spaces:
            raise MapCompatibilityError(path, f"map has no embedding space {name!r} (has {sorted(spaces)}); "
                                              "it was built without this model")
        sp = spaces[name]
        if sp.model_sha256 != sha:
            raise MapCompatibilityError(
                path, f"space {name!r}: map built with model {sp.model_name} (sha256 {sp.model_sha256}), "
                      f"node runs model sha256 {sha}; rebuild the map with this model or load the matching one")


def _read_meta(file: Path, sha256: str, count: int) -> dict:
    _verify(file, sha256)
    try:
        meta = json.loads(file.read_text())
        cols = {k: meta[k] for k in META_COLUMNS}
        lengths = {k: len(v) for k, v in cols.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise MapError(file, f"malformed keyframe metadata ({type(e).__name__}: {e})") from None
    if any(n != count for n in lengths.values()):
        raise MapError(file, f"column lengths {lengths} disagree with the map count {count}")
    try:
        ids = np.asarray(cols["id"], dtype=np.int64)
        stamps = np.asarray(cols["stamp"], dtype=np.float64).reshape(count)
        poses = np.asarray(cols["pose"], dtype=np.float64).reshape(count, 7)
    except (TypeError, ValueError, OverflowError) as e:
        raise MapError(file, f"malformed keyframe metadata ({type(e).__name__}: {e})") from None
    if not np.array_equal(ids, np.arange(count)):
        raise MapError(file, "keyframe ids are not 0..N-1 in order")
    if not (np.isfinite(stamps).all() and np.isfinite(poses).all()):
        raise MapError(file, "stamps or poses contain NaN or inf")
    for key in ("frame_id", "run"):
        bad = next((v for v in cols[key] if not isinstance(v, str)), None)
        if bad is not None:
            raise MapError(file, f"{key} entries must be strings, got {type(bad).__name__} {str(bad)[:40]!r}")
    return {"stamp": stamps, "pose": poses, "frame_id": cols["frame_id"], "run": cols["run"]}


def _npy_layout(file: Path) -> tuple[np.dtype, tuple, bool, int]:
    """``(dtype, shape, fortran_order, data offset)`` from an ``.npy`` header, without reading the data."""
    with open(file, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        return dtype, shape, fortran, f.tell()


def _read_descriptors(file: Path, sha256: str, space: EmbeddingSpace, count: int) -> np.ndarray:
    _verify(file, sha256)
    try:
        dtype, shape, fortran, offset = _npy_layout(file)
    except (ValueError, OSError, EOFError) as e:
        raise MapError(file, f"unreadable descriptor file ({e})") from None
    if dtype != np.float32 or shape != (count, space.dim) or fortran:
        raise MapError(file, f"expected float32 {count} x {space.dim}, got {dtype} {shape}"
                             + (" in Fortran order" if fortran else ""))
    data_bytes = file.stat().st_size - offset
    if data_bytes != count * space.dim * 4:
        raise MapError(file, f"holds {data_bytes} bytes of data, but float32 {count} x {space.dim} needs "
                             f"{count * space.dim * 4} (truncated or padded)")
    try:
        desc = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MapError(file, f"unreadable descriptor file ({e})") from None
    if not np.isfinite(desc).all():
        raise MapError(file, "descriptors contain NaN or inf")
    return desc


def _read_offsets(file: Path, sha256: str, count: int) -> np.ndarray:
    """An int64 (count + 1,) offsets array: starts at 0, never decreases (checked before use)."""
    _verify(file, sha256)
    _check_npy(file, np.dtype(np.int64), (count + 1,))
    off = np.load(file, allow_pickle=False)
    if off[0] != 0 or np.any(np.diff(off) < 0):
        raise MapError(file, "offsets must start at 0 and never decrease")
    return off


def _check_npy(file: Path, dtype: np.dtype, shape: tuple) -> None:
    """The ``.npy`` header says ``dtype`` and ``shape`` (C order) and the file holds exactly that much data."""
    try:
        got_dtype, got_shape, fortran, offset = _npy_layout(file)
    except (ValueError, OSError, EOFError) as e:
        raise MapError(file, f"unreadable array file ({e})") from None
    if got_dtype != dtype or got_shape != shape or fortran:
        raise MapError(file, f"expected {dtype} {shape}, got {got_dtype} {got_shape}"
                             + (" in Fortran order" if fortran else ""))
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data_bytes = file.stat().st_size - offset
    if data_bytes != need:
        raise MapError(file, f"holds {data_bytes} bytes of data, but {dtype} {shape} needs {need} "
                             "(truncated or padded)")


def _read_views(folder: Path, entry: _ViewsEntry, count: int) -> ViewStore:
    """The keyframe views, every file checked (sha256, header, sizes, offsets) before it is loaded."""
    from ..data.calibration import CameraCalibration

    img_off = _read_offsets(_member(folder, entry.image_offsets.file), entry.image_offsets.sha256, count)
    pts_off = _read_offsets(_member(folder, entry.point_offsets.file), entry.point_offsets.sha256, count)
    images_file = _member(folder, entry.images.file)
    _verify(images_file, entry.images.sha256)
    if images_file.stat().st_size != img_off[-1]:
        raise MapError(images_file, f"{images_file.stat().st_size} bytes, but the offsets end at {img_off[-1]}")
    points_file = _member(folder, entry.points.file)
    _verify(points_file, entry.points.sha256)
    _check_npy(points_file, np.dtype(POINT_DTYPE), (int(pts_off[-1]), 3))
    points = np.load(points_file, allow_pickle=False)
    if not np.isfinite(points).all():
        raise MapError(points_file, "points contain NaN or inf")
    for run, calib in entry.calibrations.items():
        try:
            CameraCalibration.from_dict(calib)
        except (ValueError, TypeError) as e:
            raise MapError(folder / SCHEMA_FILE, f"calibration of run {run!r}: {e}") from None
    return ViewStore.unpacked(images_file.read_bytes(), img_off, points, pts_off, entry.calibrations)


def _read_index(folder: Path, entry: _IndexEntry, space: EmbeddingSpace, count: int) -> StoredIndex:
    """The stored index when it matches the descriptors; otherwise "rebuild" (with a warning)."""
    if entry.file is None:
        return StoredIndex(None, entry.built, 0)  # flat (or an IVF-PQ fallback): rebuilt, cheap
    file = folder / entry.file
    problem = None
    try:
        file = _member(folder, entry.file)
        _verify(file, entry.sha256)
        index = faiss.read_index(str(file))
        expected = index_class(entry.built)
        if expected is None or not isinstance(index, expected) or index.ntotal != count \
                or index.d != space.dim or index.metric_type != METRICS[space.metric]:
            problem = (f"{type(index).__name__} with {index.ntotal} x {index.d} vectors, metric "
                       f"{index.metric_type}; schema says {entry.built}")
    except (MapError, RuntimeError, MemoryError) as e:
        problem = str(e)
    if problem is not None:
        warnings.warn(f"{file}: index unusable ({problem}); rebuilding from the descriptors", stacklevel=4)
        return StoredIndex(None, entry.built, 0)
    return StoredIndex(index, entry.built, entry.trained_on)
