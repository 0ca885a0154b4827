"""Sensor files the dataset readers share: images, flat-binary clouds, numeric CSVs.

Each loader raises :class:`~distilvpr_ros.data.errors.DataError` naming the file when it is missing,
corrupt or malformed, so a bad file in a large dataset is found from one line of output.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..msg_codec import encoded_to_rgb


def read_image_file(path: Path, bayer: str | None = None) -> np.ndarray:
    """RGB uint8 image from a PNG/JPEG file; :class:`DataError` naming the file if missing or corrupt."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read image ({err.strerror or err})") from None
    try:
        return encoded_to_rgb(data, bayer=bayer)
    except ValueError as err:
        raise DataError(path, str(err)) from None


def read_bin_cloud(path: Path, dtype: str, columns: int) -> np.ndarray:
    """Cloud from a flat binary file of ``dtype`` values, ``columns`` per point (KITTI, Boreas, Oxford).

    Returns ``N x max(columns, 4)`` float32 (intensity 0 when the file has only x, y, z) with
    non-finite points dropped; :class:`DataError` naming the file when it is missing, its size is not a
    whole number of points, or no finite point is left.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read point cloud ({err.strerror or err})") from None
    point_bytes = np.dtype(dtype).itemsize * columns
    if len(raw) % point_bytes:
        raise DataError(path, f"size {len(raw)} B is not a multiple of {columns} x {dtype} ({point_bytes} B)")
    values = np.frombuffer(raw, dtype=dtype).reshape(-1, columns)
    cloud = np.zeros((len(values), max(columns, 4)), dtype=np.float32)
    cloud[:, :columns] = values
    cloud = cloud[np.isfinite(cloud).all(axis=1)]
    if len(cloud) == 0:
        raise DataError(path, "point cloud is empty (no finite points)")
    return cloud


def read_csv_columns(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Named float64 columns of a numeric CSV with a header row (extra columns, e.g. a pandas index,
    are ignored); :class:`DataError` naming the file when it is missing, lacks a column or holds no rows.

    Integer microsecond timestamps (< 2**53) are exact in float64; convert them with ``np.rint``.
    """
    path = Path(path)
    try:
        with path.open() as f:
            header = [name.strip() for name in f.readline().strip().split(",")]
            with warnings.catch_warnings():  # an empty body is reported below, not as a numpy warning
                warnings.simplefilter("ignore", UserWarning)
                values = np.loadtxt(f, delimiter=",", ndmin=2, dtype=np.float64)
    except OSError as err:
        raise DataError(path, f"cannot read CSV ({err.strerror or err})") from None
    except ValueError as err:
        raise DataError(path, f"malformed CSV: {err}") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    if values.shape[0] == 0:
        raise DataError(path, "CSV has no data rows")
    if values.shape[1] != len(header):
        raise DataError(path, f"rows have {values.shape[1]} values but the header names {len(header)} columns")
    return {c: values[:, header.index(c)] for c in columns}
