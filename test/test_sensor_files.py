"""Shared sensor-file loaders: every failure is a DataError naming the file."""

import cv2
import numpy as np
import pytest

from distilvpr_ros.data.errors import DataError
from distilvpr_ros.data.readers import sensor_files as files

RNG = np.random.default_rng(0)


def test_read_image_file_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.png: cannot read image"):
        files.read_image_file(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="bad.png: could not decode"):
        files.read_image_file(bad)


def test_read_image_file_grey_and_16bit(tmp_path):
    grey16 = (RNG.integers(0, 256, (4, 5)) * 257).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), grey16)
    out = files.read_image_file(tmp_path / "g.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 1], grey16 // 257)


def test_read_bin_cloud(tmp_path):
    pts = RNG.normal(size=(10, 3))
    pts[3] = np.nan
    pts.astype("<f8").tofile(tmp_path / "c.bin")
    cloud = files.read_bin_cloud(tmp_path / "c.bin", "<f8", 3)
    assert cloud.shape == (9, 4) and cloud.dtype == np.float32 and not cloud[:, 3].any()
    (tmp_path / "short.bin").write_bytes(b"\x00" * 20)
    with pytest.raises(DataError, match="short.bin: size 20 B is not a multiple"):
        files.read_bin_cloud(tmp_path / "short.bin", "<f8", 3)
    np.full((2, 3), np.nan).tofile(tmp_path / "nan.bin")
    with pytest.raises(DataError, match="nan.bin: point cloud is empty"):
        files.read_bin_cloud(tmp_path / "nan.bin", "<f8", 3)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty.bin: point cloud is empty"):
        files.read_bin_cloud(tmp_path / "empty.bin", "<f4", 4)
    with pytest.raises(DataError, match="nope.bin: cannot read point cloud"):
        files.read_bin_cloud(tmp_path / "nope.bin", "<f4", 4)


def test_read_csv_columns(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(",timestamp,northing,easting\n0,1500000000000001,5.5,6.5\n1,1500000000000002,7,8\n")
    cols = files.read_csv_columns(path, ("timestamp", "easting"))
    assert np.rint(cols["timestamp"]).astype(np.int64).tolist() == [1500000000000001, 1500000000000002]
    np.testing.assert_array_equal(cols["easting"], [6.5, 8])
    with pytest.raises(DataError, match="a.csv: missing column"):
        files.read_csv_columns(path, ("heading",))
    (tmp_path / "h.csv").write_text("timestamp,northing\n")
    with pytest.raises(DataError, match="h.csv: CSV has no data rows"):
        files.read_csv_columns(tmp_path / "h.csv", ("timestamp",))
    (tmp_path / "x.csv").write_text("timestamp,northing\n1,abc\n")
    with pytest.raises(DataError, match="x.csv: malformed CSV"):
        files.read_csv_columns(tmp_path / "x.csv", ("timestamp",))
