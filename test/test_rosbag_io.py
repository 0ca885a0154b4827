"""Bags written by BagWriter and read back with rosbags' AnyReader and with BagSequence (mcap and sqlite3)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import utm
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from scipy.spatial.transform import Rotation

from distilvpr_ros.data.errors import DataError
from distilvpr_ros.data.geometry import pose_from_xyz_yaw, yaw_of
from distilvpr_ros.data.rosbag_io import (
    BAG_VERSION,
    BagSequence,
    BagTopics,
    BagWriter,
    bag_summary,
    ros2_typestore,
    track_poses,
)
from distilvpr_ros.data.sample import Sample, Sequence

STORAGES = ["mcap", "sqlite3"]
K = np.array([[100.0, 0, 16], [0, 100, 12], [0, 0, 1]])
T0 = 1_700_000_000.0  # realistic epoch stamps exercise float64 precision


def frame_image(k: int) -> np.ndarray:
    """A 24x32 image whose pixels encode the frame number ``k``."""
    img = np.zeros((24, 32, 3), np.uint8)
    img[..., 0] = k
    img[..., 1] = np.arange(32, dtype=np.uint8)
    img[..., 2] = 255 - k
    return img


def frame_cloud(k: int, n: int = 30) -> np.ndarray:
    cloud = np.zeros((n, 6), np.float32)
    cloud[:, 0] = k
    cloud[:, 1] = np.arange(n)
    cloud[:, 4] = np.arange(n) % 16
    cloud[:, 5] = np.linspace(0, 0.1, n)
    return cloud


@pytest.fixture(params=STORAGES)
def storage(request):
    return request.param


def write_basic_bag(path, storage, cloud_offsets=(0.01, 0.2, -0.03, 0.04), compressed=None, odom=True):
    """4 camera frames at T0 + k; clouds offset from them by ``cloud_offsets``; odom at T0 + 0, 2, 4."""
    with BagWriter(path, storage=storage) as w:
        w.write_camera_info(T0, K, 32, 24)
        for k, dt in enumerate(cloud_offsets):
            if compressed:
                w.write_compressed_image(T0 + k, frame_image(k), fmt=compressed)
            else:
                w.write_image(T0 + k, frame_image(k))
            w.write_cloud(T0 + k + dt, frame_cloud(k))
        if odom:
            for j, t in enumerate([0.0, 2.0, 4.0]):
                w.write_odom(T0 + t, pose_from_xyz_yaw(10.0 * j, 0.0, 0.0, j * np.pi / 4), linear_velocity=5.0)
        w.write_gps(T0 + 0.5, 51.75, -1.25, 60.0)
    return path


def test_round_trip_with_anyreader(tmp_path, storage):
    path = write_basic_bag(tmp_path / "bag", storage)
    with AnyReader([path], default_typestore=ros2_typestore()) as reader:
        topics = {t: (i.msgtype, i.msgcount) for t, i in reader.topics.items()}
        assert topics == {
            "/camera/image_raw": ("sensor_msgs/msg/Image", 4),
            "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", 1),
            "/lidar/points": ("sensor_msgs/msg/PointCloud2", 4),
            "/odom": ("nav_msgs/msg/Odometry", 3),
            "/gps/fix": ("sensor_msgs/msg/NavSatFix", 1),
        }
        got: dict[str, list] = {}
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert stamp_ns == log_ns  # header stamp = log time
            got.setdefault(conn.topic, []).append((log_ns, msg))
    image_ns = [ns for ns, _ in got["/camera/image_raw"]]
    assert image_ns == [int(T0 + k) * 1_000_000_000 for k in range(4)]
    img = got["/camera/image_raw"][2][1]
    assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 24, 32, 96)
    assert img.header.frame_id == "camera_optical"
    np.testing.assert_array_equal(img.data.reshape(24, 32, 3), frame_image(2))
    pc = got["/lidar/points"][0][1]
    layout = [(f.name, f.offset, f.datatype, f.count) for f in pc.fields]
    assert layout == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1), ("ring", 16, 4, 1), ("time", 18, 7, 1)
    ]
    assert (pc.height, pc.width, pc.point_step, pc.row_step, pc.is_bigendian) == (1, 30, 22, 660, False)
    assert pc.header.frame_id == "lidar"
    odom = got["/odom"][1][1]
    assert (odom.header.frame_id, odom.child_frame_id) == ("odom", "base_link")
    assert odom.pose.pose.position.x == 10.0 and odom.twist.twist.linear.x == 5.0
    q = odom.pose.pose.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], Rotation.from_euler("z", np.pi / 4).as_quat())
    info = got["/camera/camera_info"][0][1]
    np.testing.assert_array_equal(info.k.reshape(3, 3), K)
    assert info.distortion_model == "plumb_bob" and (info.width, info.height) == (32, 24)
    fix = got["/gps/fix"][0][1]
    assert (fix.latitude, fix.longitude, fix.altitude, fix.status.status) == (51.75, -1.25, 60.0, 0)


def test_summary(tmp_path, storage):
    path = write_basic_bag(tmp_path / "bag", storage)
    summary = bag_summary(path)
    assert summary["topics"]["/camera/image_raw"] == {"type": "sensor_msgs/msg/Image", "count": 4}
    assert summary["message_count"] == 13
    assert summary["start"] == pytest.approx(T0) and summary["duration"] == pytest.approx(4.0, abs=1e-6)


def test_sequence_pairs_clouds_and_interpolates_poses(tmp_path, storage):
    seq = BagSequence(write_basic_bag(tmp_path / "bag", storage), pair_tolerance=0.05)
    assert isinstance(seq, Sequence) and len(seq) == 4 and seq.run == "bag"
    np.testing.assert_allclose(seq.timestamps, T0 + np.arange(4))
    assert seq.pose_source == "odom" and seq.image_topic == "/camera/image_raw"
    np.testing.assert_array_equal(seq.camera_info.K, K)
    # Clouds at +0.01 and -0.03 and +0.04 s pair; the one 0.2 s away does not.
    np.testing.assert_allclose(seq.cloud_timestamps, [T0 + 0.01, np.nan, T0 + 2 - 0.03, T0 + 3.04])
    samples = [seq[i] for i in range(4)]
    assert all(isinstance(s, Sample) for s in samples)
    for k, s in enumerate(samples):
        np.testing.assert_array_equal(s.image, frame_image(k))
        assert s.index == k and s.run == "bag" and s.timestamp == pytest.approx(T0 + k)
    assert samples[1].cloud is None
    np.testing.assert_array_equal(samples[2].cloud, frame_cloud(2))
    # Frame 1 (t = 1 s) lies halfway between odom at 0 s (x 0, yaw 0) and 2 s (x 10, yaw 45 deg).
    assert samples[1].pose[0, 3] == pytest.approx(5.0)
    assert yaw_of(samples[1].pose) == pytest.approx(np.pi / 8)
    assert samples[3].pose[0, 3] == pytest.approx(15.0)
    assert seq[-1].index == 3
    with pytest.raises(IndexError):
        seq[4]


def test_require_cloud_drops_unpaired_frames(tmp_path, storage):
    seq = BagSequence(write_basic_bag(tmp_path / "bag", storage), require_cloud=True)
    np.testing.assert_allclose(seq.timestamps, T0 + np.array([0, 2, 3]))
    assert all(seq[i].cloud is not None for i in range(len(seq)))
    np.testing.assert_array_equal(seq[1].image, frame_image(2))
    wide = BagSequence(write_basic_bag(tmp_path / "bag2", storage), pair_tolerance=0.25)
    assert not np.isnan(wide.cloud_timestamps).any()


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_images(tmp_path, storage, fmt):
    seq = BagSequence(write_basic_bag(tmp_path / "bag", storage, compressed=fmt))
    assert seq.image_topic == "/camera/image_raw/compressed" and len(seq) == 4
    image = seq[3].image
    if fmt == "png":
        np.testing.assert_array_equal(image, frame_image(3))
    else:
        assert image.shape == (24, 32, 3) and np.abs(image.astype(int) - frame_image(3)).mean() < 6


def test_duplicate_stamps_keep_first(tmp_path, storage):
    """Two images logged at the same time: the first one written is kept, with a warning."""
    path = tmp_path / "bag"
    with BagWriter(path, storage=storage) as w:
        for k, t in enumerate([0.0, 1.0, 1.0, 2.0]):
            w.write_image(T0 + t, frame_image(k))
        for t in [0.0, 0.0, 3.0]:
            w.write_odom(T0 + t, pose_from_xyz_yaw(t, 0, 0, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seq = BagSequence(path)
    messages = " | ".join(str(w.message) for w in caught)
    assert "dropped 1 camera (/camera/image_raw) message(s) with duplicate stamps" in messages
    assert "dropped 1 odometry (/odom) message(s) with duplicate stamps" in messages
    np.testing.assert_allclose(seq.timestamps, T0 + np.arange(3))
    for i, k in enumerate([0, 1, 3]):
        np.testing.assert_array_equal(seq[i].image, frame_image(k))


def test_header_stamps_out_of_order(tmp_path, storage):
    """Header stamps disagree with the (increasing) log times: frames are sorted by header stamp."""
    store = ros2_typestore()
    T = store.types
    path = tmp_path / "bag"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=BAG_VERSION, storage_plugin=plugin) as writer:
        conn = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        for k, stamp in enumerate([2, 0, 1, 1, 3]):  # frame 3 repeats frame 2's header stamp
            time = T["builtin_interfaces/msg/Time"](sec=100 + stamp, nanosec=0)
            header = T["std_msgs/msg/Header"](stamp=time, frame_id="c")
            msg = T["sensor_msgs/msg/Image"](
                header=header, height=24, width=32, encoding="rgb8", is_bigendian=0, step=96,
                data=frame_image(k).reshape(-1),
            )
            writer.write(conn, (200 + k) * 1_000_000_000, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seq = BagSequence(path)
    messages = " | ".join(str(w.message) for w in caught)
    assert "camera (/camera/image_raw) stamps are out of order; sorted them" in messages
    assert "dropped 1 camera (/camera/image_raw) message(s) with duplicate stamps" in messages
    np.testing.assert_allclose(seq.timestamps, 100.0 + np.arange(4))
    for i, k in enumerate([1, 2, 0, 4]):
        np.testing.assert_array_equal(seq[i].image, frame_image(k))


def test_gps_poses_when_no_odometry(tmp_path, storage):
    """Fixes along a straight UTM track heading 30 deg north of east at 2 m/s."""
    e0, n0, zone, letter = utm.from_latlon(51.75, -1.25)
    heading = np.deg2rad(30)
    path = tmp_path / "bag"
    with BagWriter(path, storage=storage) as w:
        for k in range(6):
            w.write_image(T0 + k + 0.5, frame_image(k))
        for k in range(8):
            d = 2.0 * k
            lat, lon = utm.to_latlon(e0 + d * np.cos(heading), n0 + d * np.sin(heading), zone, letter)
            w.write_gps(T0 + k, lat, lon, 60.0 + k)
    seq = BagSequence(path)
    assert seq.pose_source == "gps" and seq.utm_zone == (zone, letter)
    d = 2.0 * (np.arange(6) + 0.5)
    np.testing.assert_allclose(seq.poses[:, 0, 3], e0 + d * np.cos(heading), atol=1e-3)
    np.testing.assert_allclose(seq.poses[:, 1, 3], n0 + d * np.sin(heading), atol=1e-3)
    np.testing.assert_allclose(seq.poses[:, 2, 3], 60.5 + np.arange(6), atol=1e-6)
    np.testing.assert_allclose([yaw_of(p) for p in seq.poses], heading, atol=1e-4)
    with pytest.raises(DataError, match="pose_source='odom' but the bag has no nav_msgs/msg/Odometry"):
        BagSequence(path, pose_source="odom")


def test_track_poses_holds_heading_when_stopped():
    t = np.arange(6.0)
    xyz = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 2, 0], [0, 2, 0]], float)
    yaw = [yaw_of(p) for p in track_poses(t, xyz)]
    np.testing.assert_allclose(yaw, np.pi / 2)  # north throughout, including the stops at both ends
    assert np.allclose(track_poses(t, np.zeros((6, 3)))[:, :3, :3], np.eye(3))


def test_no_pose_source_gives_nan_poses(tmp_path, storage):
    path = tmp_path / "bag"
    with BagWriter(path, storage=storage) as w:
        w.write_image(T0, frame_image(0))
    with pytest.warns(UserWarning, match="no odometry or GNSS topic"):
        seq = BagSequence(path)
    assert seq.pose_source == "none" and np.isnan(seq.poses).all()


def test_no_camera_topic_raises_listing_topics(tmp_path, storage):
    path = tmp_path / "nocam"
    with BagWriter(path, storage=storage) as w:
        w.write_odom(T0, np.eye(4))
        w.write_cloud(T0, frame_cloud(0))
    with pytest.raises(DataError, match=r"nocam: no camera topic.*topics present: /lidar/points .*PointCloud2.*/odom"):
        BagSequence(path)


def test_missing_bag_raises(tmp_path):
    with pytest.raises(DataError, match="nothere: bag not found"):
        BagSequence(tmp_path / "nothere")


def test_bare_storage_files_and_custom_topic_names(tmp_path, storage):
    topics = BagTopics(image="/cam0/image", cloud="/velodyne_points", odom="/lio/odom")
    path = tmp_path / "bag"
    with BagWriter(path, storage=storage, topics=topics) as w:
        w.write_image(T0, frame_image(0))
        w.write_cloud(T0, frame_cloud(0))
        w.write_odom(T0, np.eye(4))
    bare = next(path.glob("*.mcap" if storage == "mcap" else "*.db3"))
    seq = BagSequence(bare)  # default topic names are absent: the only topic of each type is used
    assert (seq.image_topic, seq.cloud_topic, seq.pose_source) == ("/cam0/image", "/velodyne_points", "odom")
    np.testing.assert_array_equal(seq[0].cloud, frame_cloud(0))


def test_malformed_messages_raise_data_error_naming_bag(tmp_path, storage):
    """An Image whose step disagrees with its data, and a cloud of NaNs, written with raw rosbags."""
    store = ros2_typestore()
    T = store.types
    path = tmp_path / "broken"
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=10, nanosec=0), frame_id="c")
    image = T["sensor_msgs/msg/Image"](
        header=header, height=2, width=2, encoding="rgb8", is_bigendian=0, step=6, data=np.zeros(11, np.uint8)
    )
    nan_cloud = np.full(3, np.nan, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    field = T["sensor_msgs/msg/PointField"]
    cloud = T["sensor_msgs/msg/PointCloud2"](
        header=header,
        height=1,
        width=3,
        fields=[field(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")],
        is_bigendian=False,
        point_step=12,
        row_step=36,
        data=nan_cloud.view(np.uint8),
        is_dense=False,
    )
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=BAG_VERSION, storage_plugin=plugin) as writer:
        for topic, msgtype, msg in [
            ("/camera/image_raw", "sensor_msgs/msg/Image", image),
            ("/lidar/points", "sensor_msgs/msg/PointCloud2", cloud),
        ]:
            conn = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conn, 10_000_000_000, store.serialize_cdr(msg, msgtype))
    with pytest.warns(UserWarning, match="poses are NaN"):
        seq = BagSequence(path)
    with pytest.raises(DataError, match=r"broken: /camera/image_raw at t=10\.000000: image data has 11 bytes"):
        seq[0]
    with pytest.raises(DataError, match=r"broken: /lidar/points at t=10\.000000: no finite points"):
        seq.cloud(0)


def test_copy_reopens_reader(tmp_path, storage):
    """Copies (as DataLoader workers make) do not share the open reader and still decode."""
    seq = BagSequence(write_basic_bag(tmp_path / "bag", storage))
    clone = copy.deepcopy(seq)
    seq.close()
    np.testing.assert_array_equal(clone[2].image, frame_image(2))
    with BagSequence(write_basic_bag(tmp_path / "bag2", storage)) as ctx:
        assert len(ctx) == 4


def test_writer_refuses_existing_path_and_unknown_storage(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(DataError, match="bag already exists"):
        BagWriter(tmp_path / "exists")
    with pytest.raises(ValueError, match="unknown bag storage"):
        BagWriter(tmp_path / "x", storage="bag")


def test_bags_as_a_training_source(tmp_path):
    from distilvpr_ros.training.config import DataConfig
    from distilvpr_ros.training.data import open_split

    write_basic_bag(tmp_path / "drive_a", "mcap")
    write_basic_bag(tmp_path / "drive_b", "mcap")
    cfg = DataConfig(source="bags", root=tmp_path, train_sequences=["drive_a", "drive_b"], val_sequences=["drive_b"])
    train = open_split(cfg, "train")
    assert [seq.run for seq in train] == ["drive_a", "drive_b"]
    assert len(train[0]) == 4 and np.isfinite(np.asarray(train[0].poses)).all()
    assert [seq.run for seq in open_split(cfg, "val")] == ["drive_b"]
