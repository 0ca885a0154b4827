"""msg_codec: image encodings, compressed images, PointCloud2 layouts, stamps, poses, dataset files."""

from __future__ import annotations

import array
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pytest

from distilvpr_ros.data import msg_codec as mc
from distilvpr_ros.data.geometry import pose_from_xyz_yaw

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False, data_type=bytes):
    """An Image-like namespace with ``pad`` bytes of row padding."""
    h, w = pixels.shape[:2]
    px = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = px.reshape(h, -1).view(np.uint8)
    rows = np.hstack([rows, np.full((h, pad), 0xAB, np.uint8)])
    data = data_type(rows.tobytes()) if data_type is not np.ndarray else rows.reshape(-1)
    return NS(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian), step=rows.shape[1], data=data)


# --- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, pixels",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
    ],
)
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings(encoding, pixels, pad):
    out = mc.image_to_rgb(image_msg(pixels, encoding, pad))
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("data_type", [bytes, bytearray, np.ndarray, lambda b: array.array("B", b), list])
def test_data_container_types(data_type):
    np.testing.assert_array_equal(mc.image_to_rgb(image_msg(RGB, "rgb8", 2, data_type=data_type)), RGB)


def test_mono8_replicated():
    grey = RGB[..., 0]
    np.testing.assert_array_equal(mc.image_to_rgb(image_msg(grey, "mono8", pad=1)), np.dstack([grey] * 3))


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_scaled_and_endianness(big_endian):
    values = np.array([[0, 257, 65535], [128, 32896, 1000]], dtype=np.uint16)
    out = mc.image_to_rgb(image_msg(values, "mono16", pad=2, big_endian=big_endian))
    expected = np.round(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16"])
def test_16bit_colour(encoding):
    px = RGB.astype(np.uint16) * 257
    out = mc.image_to_rgb(image_msg(px if encoding == "rgb16" else px[..., ::-1], encoding, big_endian=True))
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_demosaic(pattern):
    colour = np.array([200, 100, 30], np.uint8)
    mosaic = np.zeros((8, 8), np.uint8)
    for (r, c), ch in zip([(0, 0), (0, 1), (1, 0), (1, 1)], pattern):
        mosaic[r::2, c::2] = colour["rgb".index(ch)]
    out = mc.image_to_rgb(image_msg(mosaic, f"bayer_{pattern}8"))
    np.testing.assert_array_equal(out[2:6, 2:6], np.broadcast_to(colour, (4, 4, 3)))


def test_unsupported_encoding():
    with pytest.raises(ValueError, match="unsupported image encoding '32FC1'"):
        mc.image_to_rgb(image_msg(RGB, "32FC1"))


def test_step_too_small():
    msg = image_msg(RGB, "rgb8")
    msg.step = 7 * 3 - 1
    with pytest.raises(ValueError, match="step 20 is smaller than a packed row"):
        mc.image_to_rgb(msg)


def test_data_size_mismatch():
    msg = image_msg(RGB, "rgb8", pad=2)
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match="expected step x height"):
        mc.image_to_rgb(msg)


def test_empty_image():
    with pytest.raises(ValueError, match="empty image"):
        mc.image_to_rgb(NS(height=0, width=0, encoding="rgb8", is_bigendian=0, step=0, data=b""))


def test_rgb_image_fields_round_trip():
    fields = mc.rgb_image_fields(RGB)
    assert fields["encoding"] == "rgb8" and fields["step"] == 21 and isinstance(fields["data"], bytes)
    np.testing.assert_array_equal(mc.image_to_rgb(NS(**fields)), RGB)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        mc.rgb_image_fields(RGB.astype(np.float32))


def test_compressed_png_exact_and_jpeg_close():
    img = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_NEAREST)
    png = mc.rgb_compressed_fields(img, "png")
    assert png["format"] == "png"
    np.testing.assert_array_equal(mc.compressed_to_rgb(NS(**png)), img)
    smooth = np.dstack([np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))] * 3)
    smooth[..., 2] = 40
    jpeg = mc.rgb_compressed_fields(smooth, "jpeg", quality=95)
    assert jpeg["format"] == "jpeg" and jpeg["data"][:2] == b"\xff\xd8"
    assert np.abs(mc.compressed_to_rgb(NS(**jpeg)).astype(int) - smooth).mean() < 3


def test_encoded_size_read_from_headers():
    img = np.zeros((37, 53, 3), np.uint8)
    for fmt in ("png", "jpeg"):
        data = mc._as_uint8(mc.rgb_compressed_fields(img, fmt)["data"])
        assert mc.encoded_size(data) == (53, 37)
    assert mc.encoded_size(np.frombuffer(b"not an image", np.uint8)) is None


def test_huge_declared_image_refused_before_decoding():
    """A small PNG whose header declares 30000 x 30000 pixels is refused without decoding it (the
    decoder would take ~15 s and gigabytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = zlib.compress(b"\x00" * (30000 * 3 + 1) * 64)  # only the first rows: decoding would still allocate
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="30000x30000"):
        mc.compressed_to_rgb(NS(format="png", data=png))
    small = mc.rgb_compressed_fields(np.zeros((20, 30, 3), np.uint8), "jpeg")
    with pytest.raises(ValueError, match="30x20"):
        mc.encoded_to_rgb(small["data"], max_pixels=100)


def test_compressed_errors():
    with pytest.raises(ValueError, match="could not decode"):
        mc.compressed_to_rgb(NS(format="jpeg", data=b"not an image"))
    with pytest.raises(ValueError, match="compressed depth"):
        mc.compressed_to_rgb(NS(format="16UC1; compressedDepth", data=b"\x00"))
    with pytest.raises(ValueError, match="unsupported compressed image format"):
        mc.rgb_compressed_fields(RGB, "webp2")


# --- point clouds ---------------------------------------------------------------------------------


def cloud_msg(points: np.ndarray, *, height: int = 1, row_pad: int = 0, big_endian: bool = False, stamp=None):
    """A PointCloud2-like namespace from a structured array (its dtype gives fields and point_step)."""
    datatype = {v: k for k, v in mc.POINTFIELD_DTYPES.items()}
    fields = [
        NS(name=name, offset=off, datatype=datatype[dt.base.str[1:]], count=1)
        for name, (dt, off) in points.dtype.fields.items()
    ]
    points = points.astype(points.dtype.newbyteorder(">" if big_endian else "<"))
    width = len(points) // height
    rows = points.view(np.uint8).reshape(height, -1) if len(points) else np.zeros((height, 0), np.uint8)
    rows = np.hstack([rows, np.zeros((height, row_pad), np.uint8)])
    header = NS(stamp=NS(sec=stamp[0], nanosec=stamp[1]), frame_id="lidar") if stamp else None
    return NS(
        header=header,
        height=height,
        width=width,
        fields=fields,
        is_bigendian=big_endian,
        point_step=points.dtype.itemsize,
        row_step=rows.shape[1],
        data=rows.tobytes(),
        is_dense=False,
    )


def test_pointcloud2_round_trip():
    cloud = RNG.normal(size=(50, 6)).astype(np.float32)
    cloud[:, 4] = RNG.integers(0, 128, 50)
    fields = mc.pointcloud2_fields(cloud)
    assert [f[:3] for f in fields["fields"]] == [
        ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("ring", 16, 4), ("time", 18, 7)
    ]
    assert fields["point_step"] == 22 and fields["row_step"] == 22 * 50 and fields["height"] == 1
    msg = NS(**{**fields, "fields": [NS(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]]})
    np.testing.assert_array_equal(mc.cloud_from_pointcloud2(msg), cloud)


def test_pointcloud2_xyz_only_fills_zeros():
    pts = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    pts["x"] = [1, 2, 3, 4]
    out = mc.cloud_from_pointcloud2(cloud_msg(pts))
    assert out.shape == (4, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3, 4])
    assert not out[:, 3:].any()


@pytest.mark.parametrize("big_endian", [False, True])
def test_pointcloud2_mixed_types_padding_and_endianness(big_endian):
    """float64 xyz, uint8 intensity, uint16 ring, padding inside points and at row ends, 2 rows."""
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring", "time"],
            "formats": ["f8", "f8", "f8", "u1", "u2", "f4"],
            "offsets": [0, 8, 16, 26, 28, 32],
            "itemsize": 40,
        }
    )
    pts = np.zeros(6, dtype=dtype)
    for name in dtype.names:
        pts[name] = np.arange(6) + {"x": 0.5, "y": 10, "z": -3, "intensity": 7, "ring": 300, "time": 0.01}[name]
    out = mc.cloud_from_pointcloud2(cloud_msg(pts, height=2, row_pad=5, big_endian=big_endian))
    expected = np.stack([pts[n].astype(np.float32) for n in dtype.names], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_pointcloud2_nan_and_inf_points_dropped():
    pts = np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    pts["x"] = [0, np.nan, 2, np.inf, 4]
    pts["intensity"][4] = np.nan
    out = mc.cloud_from_pointcloud2(cloud_msg(pts))
    np.testing.assert_array_equal(out[:, 0], [0, 2])


def test_pointcloud2_all_nan_gives_empty_and_empty_message():
    pts = np.full(3, np.nan, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    assert mc.cloud_from_pointcloud2(cloud_msg(pts)).shape == (0, 6)
    assert mc.cloud_from_pointcloud2(cloud_msg(pts[:0])).shape == (0, 6)


def test_pointcloud2_time_field_names_and_units():
    base = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    ouster = np.zeros(3, dtype=base + [("t", "<u4")])
    ouster["t"] = [0, 50_000_000, 100_000_000]  # ns
    np.testing.assert_allclose(mc.cloud_from_pointcloud2(cloud_msg(ouster))[:, 5], [0, 0.05, 0.1])
    hesai = np.zeros(3, dtype=base + [("timestamp", "<f8")])
    hesai["timestamp"] = 1_700_000_000.0 + np.array([0.0, 0.02, 0.04])
    out = mc.cloud_from_pointcloud2(cloud_msg(hesai, stamp=(1_700_000_000, 10_000_000)))
    np.testing.assert_allclose(out[:, 5], [-0.01, 0.01, 0.03], atol=1e-6)
    velodyne = np.zeros(2, dtype=base + [("time", "<f4")])
    velodyne["time"] = [-0.05, 0.0]
    np.testing.assert_allclose(mc.cloud_from_pointcloud2(cloud_msg(velodyne))[:, 5], [-0.05, 0.0])


def test_pointcloud2_malformed():
    pts = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    msg = cloud_msg(pts)
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match="data has 47 bytes, expected row_step x height"):
        mc.cloud_from_pointcloud2(msg)
    no_z = cloud_msg(np.zeros(2, dtype=[("x", "<f4"), ("y", "<f4"), ("w", "<f4")]))
    with pytest.raises(ValueError, match="no z field"):
        mc.cloud_from_pointcloud2(no_z)
    msg = cloud_msg(pts)
    msg.point_step = 10
    with pytest.raises(ValueError, match="does not fit in point_step 10"):
        mc.cloud_from_pointcloud2(msg)
    msg = cloud_msg(pts)
    msg.fields[0].datatype = 42
    with pytest.raises(ValueError, match="unknown datatype 42"):
        mc.cloud_from_pointcloud2(msg)
    msg = cloud_msg(pts)
    msg.row_step = 8
    with pytest.raises(ValueError, match="row_step 8 < width x point_step"):
        mc.cloud_from_pointcloud2(msg)


def test_pointcloud2_fields_accepts_xyz_and_rejects_bad_shape():
    fields = mc.pointcloud2_fields(np.ones((3, 3)))
    assert fields["width"] == 3 and fields["is_dense"]
    with pytest.raises(ValueError, match="C >= 3"):
        mc.pointcloud2_fields(np.ones((3, 2)))


# --- stamps, poses, camera info -------------------------------------------------------------------


def test_stamps():
    assert mc.sec_to_stamp(1.5) == (1, 500_000_000)
    sec, nanosec = mc.sec_to_stamp(1_700_000_000.123456789)
    assert sec == 1_700_000_000 and abs(nanosec - 123_456_789) < 250  # float64 resolution at 1.7e9 s
    assert mc.sec_to_ns(2.000000001) == 2_000_000_001
    assert mc.ns_to_sec(2_500_000_000) == 2.5 and mc.ns_to_sec(mc.sec_to_ns(12.25)) == 12.25
    assert mc.stamp_to_sec(NS(sec=3, nanosec=250_000_000)) == 3.25
    idx, dt = mc.nearest_stamps(np.array([-1.0, 0.4, 0.6, 5.0]), np.array([0.0, 1.0]))
    np.testing.assert_array_equal(idx, [0, 0, 1, 1])
    np.testing.assert_allclose(dt, [1.0, 0.4, 0.4, 4.0])


def test_pose_fields_quaternion_order_and_round_trip():
    pose = pose_from_xyz_yaw(1.0, 2.0, 3.0, np.pi / 2)
    fields = mc.pose_to_msg_fields(pose)
    assert fields["position"] == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(fields["orientation"], [0, 0, np.sqrt(0.5), np.sqrt(0.5)])
    p, q = fields["position"], fields["orientation"]
    msg = NS(position=NS(x=p[0], y=p[1], z=p[2]), orientation=NS(x=q[0], y=q[1], z=q[2], w=q[3]))
    np.testing.assert_allclose(mc.pose_from_msg(msg), pose, atol=1e-12)
    np.testing.assert_allclose(mc.odometry_to_pose(NS(pose=NS(pose=msg))), pose, atol=1e-12)


def test_camera_info_round_trip():
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    fields = mc.camera_info_fields(K, 640, 480)
    assert fields["distortion_model"] == "plumb_bob" and not fields["d"].any()
    np.testing.assert_array_equal(fields["p"].reshape(3, 4)[:, :3], K)
    info = mc.camera_info_from_msg(NS(**fields))
    np.testing.assert_array_equal(info.K, K)
    assert (info.width, info.height) == (640, 480)


# --- dataset files --------------------------------------------------------------------------------
