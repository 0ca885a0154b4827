"""Dataset readers on small fixtures written in each dataset's on-disk layout, and on the real Corridor set."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from distilvpr_ros.data.errors import DataError
from distilvpr_ros.data.geometry import yaw_of
from distilvpr_ros.data.readers.boreas import BoreasSequence
from distilvpr_ros.data.readers.kitti import KittiSequence
from distilvpr_ros.data.readers.oxford import (
    TEST_REGION_CENTRES,
    OxfordRun,
    build_training_tuples,
    in_test_region,
    list_runs,
)
from distilvpr_ros.data.readers.vprbench import VPRBenchDataset
from distilvpr_ros.evaluation.corridor import peer_recalls
from distilvpr_ros.evaluation.metrics import recall_at_n
from distilvpr_ros.data.sample import Sample, Sequence

RNG = np.random.default_rng(3)
CORRIDOR = Path(__file__).resolve().parents[2] / "shared" / "data" / "corridor"


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def colour_image(value: int, shape=(12, 16)) -> np.ndarray:
    img = np.zeros((*shape, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = value, 255 - value, 7
    return img


# --- Oxford (PointNetVLAD benchmark) --------------------------------------------------------------

OXFORD_ORIGIN = np.array([5_736_500.0, 621_500.0])  # northing, easting outside the test squares


def write_oxford_run(root: Path, run: str, northing_easting: np.ndarray, t0: int, variant: str = "20m"):
    """Submaps every 2 s (UNIX microseconds) at the given positions; CSV written like pandas does."""
    stamps = t0 + 2_000_000 * np.arange(len(northing_easting))
    folder = root / run / f"pointcloud_{variant}"
    folder.mkdir(parents=True)
    lines = ["timestamp,northing,easting"]
    for ts, (n, e) in zip(stamps, northing_easting):
        RNG.uniform(-1, 1, (4096, 3)).astype("<f8").tofile(folder / f"{ts}.bin")
        lines.append(f"{ts},{n:.6f},{e:.6f}")
    (root / run / f"pointcloud_locations_{variant}.csv").write_text("\n".join(lines) + "\n")
    return stamps


@pytest.fixture
def oxford(tmp_path):
    root = tmp_path / "benchmark_datasets" / "oxford"
    track = OXFORD_ORIGIN + np.c_[np.zeros(5), 15.0 * np.arange(5)]
    stamps = write_oxford_run(root, "2014-05-19-13-20-57", track, 1_400_000_000_000_000)
    write_oxford_run(root, "2014-06-26-09-24-58", track + [3.0, 4.0], 1_403_000_000_000_000)
    write_oxford_run(root, "2014-05-19-13-20-57", track[:3], 1_400_000_000_000_000, variant="20m_10overlap")
    images = tmp_path / "oxford_images"
    centre = images / "2014-05-19-13-20-57" / "stereo" / "centre"
    for k, ts in enumerate(stamps[:4]):  # no image near the last submap
        write_png(centre / f"{ts + 40_000 * (k + 1)}.png", colour_image(10 * k))
    # A raw RobotCar image (single-channel GBRG mosaic) 1.5 s after the last submap.
    mosaic = np.zeros((8, 8), np.uint8)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2] = 100, 30, 200, 100
    cv2.imwrite(str(centre / f"{stamps[-1] + 1_500_000}.png"), mosaic)
    return root, images, stamps


def test_oxford_run(oxford):
    root, images, stamps = oxford
    assert list_runs(root) == ["2014-05-19-13-20-57", "2014-06-26-09-24-58"]
    assert list_runs(root, "20m_10overlap") == ["2014-05-19-13-20-57"]
    run = OxfordRun(root, "2014-05-19-13-20-57", images_root=images, image_max_dt=1.0)
    assert isinstance(run, Sequence) and len(run) == 5
    np.testing.assert_allclose(run.timestamps, stamps * 1e-6)
    np.testing.assert_allclose(run.poses[:, 0, 3], OXFORD_ORIGIN[1] + 15.0 * np.arange(5))  # x = easting
    np.testing.assert_allclose(run.poses[:, 1, 3], OXFORD_ORIGIN[0])  # y = northing
    sample = run[2]
    assert isinstance(sample, Sample) and sample.cloud.shape == (4096, 4) and sample.cloud.dtype == np.float32
    raw = np.fromfile(root / run.run / "pointcloud_20m" / f"{stamps[2]}.bin", dtype="<f8").reshape(-1, 3)
    np.testing.assert_allclose(sample.cloud[:, :3], raw, rtol=1e-6)
    np.testing.assert_array_equal(sample.image, colour_image(20))
    assert run[4].image is None  # the nearest image is 1.5 s away
    assert len(OxfordRun(root, "2014-05-19-13-20-57", variant="20m_10overlap")) == 3


def test_oxford_as_a_training_source(oxford):
    from distilvpr_ros.training.config import DataConfig
    from distilvpr_ros.training.data import open_split

    root, images, _ = oxford
    run = "2014-05-19-13-20-57"
    cfg = DataConfig(source="oxford", root=root, images_root=images, train_sequences=[run], val_sequences=[run])
    train = open_split(cfg, "train")
    assert [seq.run for seq in train] == [run] and len(train[0]) == 5
    assert train[0][0].image is not None
    with pytest.raises(DataError, match="image folder not found"):  # this run has no images in the fixture
        open_split(cfg.model_copy(update={"val_sequences": ["2014-06-26-09-24-58"]}), "val")


def test_oxford_raw_bayer_image_is_demosaiced(oxford):
    root, images, _ = oxford
    run = OxfordRun(root, "2014-05-19-13-20-57", images_root=images, image_max_dt=2.0)
    np.testing.assert_array_equal(run[4].image[3:5, 3:5], np.broadcast_to([200, 100, 30], (2, 2, 3)))


def test_oxford_errors(oxford, tmp_path):
    root, images, stamps = oxford
    run = OxfordRun(root, "2014-05-19-13-20-57", images_root=images)
    (root / run.run / "pointcloud_20m" / f"{stamps[1]}.bin").unlink()
    with pytest.raises(DataError, match=rf"{stamps[1]}\.bin: cannot read point cloud"):
        run[1]
    corrupt = run.image_paths[0]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=rf"{corrupt.name}: could not decode"):
        run[0]
    with pytest.raises(DataError, match="pointcloud_locations_20m.csv: cannot read CSV"):
        OxfordRun(root, "no-such-run")
    with pytest.raises(DataError, match="stereo/centre: image folder not found"):
        OxfordRun(root, "2014-06-26-09-24-58", images_root=images)


def test_oxford_test_regions():
    n, e = TEST_REGION_CENTRES[2]
    assert in_test_region([n, n + 149, n + 151, OXFORD_ORIGIN[0]], [e, e - 149, e, OXFORD_ORIGIN[1]]).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_training_tuples_match_brute_force(tmp_path):
    """Two runs of random positions (some inside a test square) against a brute-force distance matrix."""
    root = tmp_path / "oxford"
    a = OXFORD_ORIGIN + RNG.uniform(0, 120, (25, 2))
    b = OXFORD_ORIGIN + RNG.uniform(0, 120, (20, 2))
    b[:4] = TEST_REGION_CENTRES[0] + RNG.uniform(-50, 50, (4, 2))  # excluded from training
    a[1] = a[0] + [6.0, 8.0]  # exactly 10 m apart: inclusive radius
    write_oxford_run(root, "run_a", a, 1_000_000, variant="20m_10overlap")
    write_oxford_run(root, "run_b", b, 9_000_000, variant="20m_10overlap")
    runs = [OxfordRun(root, r, variant="20m_10overlap") for r in ("run_a", "run_b")]
    tuples = build_training_tuples(runs)
    assert len(tuples) == 41 and tuples.run.count("run_b") == 16
    np.testing.assert_array_equal(tuples.frame[25:], np.arange(4, 20))
    xy = np.concatenate([a[:, ::-1], b[4:, ::-1]])  # easting, northing
    np.testing.assert_allclose(tuples.positions, xy)
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    for k in range(len(tuples)):
        expected_pos = np.flatnonzero((dist[k] <= 10) & (np.arange(len(xy)) != k))
        np.testing.assert_array_equal(tuples.positives[k], expected_pos)
        np.testing.assert_array_equal(tuples.non_negatives[k], np.flatnonzero(dist[k] <= 50))
        np.testing.assert_array_equal(tuples.negatives(k), np.flatnonzero(dist[k] > 50))
    assert 1 in tuples.positives[0]
    assert len(build_training_tuples(runs, exclude_test_regions=False)) == 45


# --- Boreas ---------------------------------------------------------------------------------------

POSE_HEADER = (
    "GPSTime,easting,northing,altitude,vel_east,vel_north,vel_up,roll,pitch,heading,angvel_z,angvel_y,angvel_x"
)


def boreas_rotation(roll: float, pitch: float, heading: float) -> np.ndarray:
    """C_enu_sensor as pyboreas builds it: roll(r) @ pitch(p) @ yaw(h) with its elementary matrices."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(heading), np.sin(heading)
    R = np.array([[1, 0, 0], [0, cr, sr], [0, -sr, cr]])
    P = np.array([[cp, 0, -sp], [0, 1, 0], [sp, 0, cp]])
    Y = np.array([[cy, sy, 0], [-sy, cy, 0], [0, 0, 1]])
    return R @ P @ Y


def write_pose_csv(path: Path, stamps_us, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [POSE_HEADER] + [
        f"{ts},{e:.6f},{n:.6f},{a:.6f},0,0,0,{r:.9f},{p:.9f},{h:.9f},0,0,0"
        for ts, (e, n, a, r, p, h) in zip(stamps_us, rows)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def boreas(tmp_path):
    seq = tmp_path / "boreas" / "boreas-2021-09-02-11-42"
    cam_us = 1_630_597_331_000_000 + 100_000 * np.arange(4)
    lidar_us = np.r_[cam_us[:3] + 3_000, cam_us[3] + 200_000]  # the last scan is 0.2 s off
    cam_rows = [(623_000.0 + 2 * k, 4_848_000.0 + k, 150.0, 0.01 * k, -0.02, 0.5 + 0.1 * k) for k in range(4)]
    write_pose_csv(seq / "applanix" / "camera_poses.csv", cam_us, cam_rows)
    write_pose_csv(seq / "applanix" / "lidar_poses.csv", lidar_us, cam_rows)
    T_camera_lidar = np.eye(4)
    T_camera_lidar[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    T_camera_lidar[:3, 3] = [0.1, -0.3, -0.2]
    (seq / "calib").mkdir()
    np.savetxt(seq / "calib" / "T_camera_lidar.txt", T_camera_lidar)
    np.savetxt(seq / "calib" / "T_applanix_lidar.txt", np.eye(4))
    np.savetxt(seq / "calib" / "P_camera.txt", [[1460.9, 0, 1230, 0], [0, 1460.9, 1035, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    (seq / "lidar").mkdir()
    for k, ts in enumerate(lidar_us):
        cloud = RNG.normal(size=(100, 6)).astype(np.float32)
        cloud[:, 0] = k
        cloud.tofile(seq / "lidar" / f"{ts}.bin")
    for k, ts in enumerate(cam_us):
        write_png(seq / "camera" / f"{ts}.png", colour_image(k))
    return seq.parent, seq.name, cam_us, cam_rows, T_camera_lidar


def test_boreas_sequence(boreas):
    root, name, cam_us, cam_rows, T_camera_lidar = boreas
    seq = BoreasSequence(root, name)
    assert isinstance(seq, Sequence) and len(seq) == 4 and seq.run == name
    np.testing.assert_allclose(seq.timestamps, cam_us * 1e-6)
    for k, (e, n, a, r, p, h) in enumerate(cam_rows):
        T_enu_camera = np.eye(4)
        T_enu_camera[:3, :3] = boreas_rotation(r, p, h)
        T_enu_camera[:3, 3] = (e, n, a)
        np.testing.assert_allclose(seq.poses[k], T_enu_camera @ T_camera_lidar, atol=1e-9)
    sample = seq[1]
    np.testing.assert_array_equal(sample.image, colour_image(1))
    assert sample.cloud.shape == (100, 6) and (sample.cloud[:, 0] == 1).all()
    assert seq[3].cloud is None  # nearest scan is 0.2 s away
    assert seq.camera_info.K[0, 0] == 1460.9 and (seq.camera_info.width, seq.camera_info.height) == (16, 12)


def test_boreas_errors(boreas):
    root, name, cam_us, _, _ = boreas
    (root / name / "camera" / f"{cam_us[2]}.png").unlink()
    with pytest.raises(DataError, match=rf"{cam_us[2]}\.png: cannot read image"):
        BoreasSequence(root, name)[2]
    (root / name / "calib" / "T_camera_lidar.txt").unlink()
    with pytest.raises(DataError, match="T_camera_lidar.txt: calibration file not found"):
        BoreasSequence(root, name)
    with pytest.raises(DataError, match="Boreas sequence folder not found"):
        BoreasSequence(root, "boreas-nope")


# --- KITTI odometry -------------------------------------------------------------------------------

KITTI_TR = np.array(  # velodyne -> cam0 of sequence 00 (rounded)
    [[0.0, -1, 0, -0.004], [0, 0, -1, -0.076], [1, 0, 0, -0.27]]
)


@pytest.fixture
def kitti(tmp_path):
    """Straight 1 m/frame for 3 frames along the camera's z, then a 30 deg right turn (about camera y)."""
    root = tmp_path / "dataset"
    seq = root / "sequences" / "05"
    seq.mkdir(parents=True)
    P = np.c_[np.array([[718.9, 0, 607.2], [0, 718.9, 185.2], [0, 0, 1]]), np.zeros(3)]
    calib = [f"P{i}: " + " ".join(f"{v:e}" for v in P.reshape(-1)) for i in range(4)]
    calib.append("Tr: " + " ".join(f"{v:e}" for v in KITTI_TR.reshape(-1)))
    (seq / "calib.txt").write_text("\n".join(calib) + "\n")
    np.savetxt(seq / "times.txt", 0.1 * np.arange(4), fmt="%e")
    poses = []
    for k in range(4):
        T = np.eye(4)[:3]
        T[2, 3] = k
        if k == 3:
            a = np.deg2rad(30)
            T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        poses.append(T.reshape(-1))
    (root / "poses").mkdir()
    np.savetxt(root / "poses" / "05.txt", poses)
    (seq / "velodyne").mkdir()
    for k in range(4):
        RNG.normal(size=(50, 4)).astype("<f4").tofile(seq / "velodyne" / f"{k:06d}.bin")
        write_png(seq / "image_2" / f"{k:06d}.png", colour_image(k))
    return root


def test_kitti_world_frame_is_planar(kitti):
    seq = KittiSequence(kitti, 5)
    assert isinstance(seq, Sequence) and seq.run == "05" and len(seq) == 4
    np.testing.assert_allclose(seq.timestamps, [0, 0.1, 0.2, 0.3])
    # Forward along camera z becomes +x; the body (Velodyne) frame starts level and facing +x.
    np.testing.assert_allclose(seq.poses[0, :3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(seq.poses[:3, 0, 3] - seq.poses[0, 0, 3], [0, 1, 2])
    np.testing.assert_allclose(seq.poses[:, 2, 3], seq.poses[0, 2, 3], atol=0.1)
    # A positive rotation about camera y (down) turns right: yaw -30 deg in the z-up world.
    assert yaw_of(seq.poses[3]) == pytest.approx(-np.pi / 6)
    assert yaw_of(seq.poses[2]) == pytest.approx(0.0)
    sample = seq[2]
    assert sample.cloud.shape == (50, 4) and sample.cloud.dtype == np.float32
    np.testing.assert_array_equal(sample.image, colour_image(2))
    assert seq.camera_info.K[0, 0] == pytest.approx(718.9) and seq.camera_info.width == 16


def test_kitti_errors(kitti):
    (kitti / "sequences" / "05" / "velodyne" / "000001.bin").unlink()
    with pytest.raises(DataError, match=r"000001\.bin: cannot read point cloud"):
        KittiSequence(kitti, "05")[1]
    (kitti / "sequences" / "05" / "image_2" / "000003.png").write_bytes(b"corrupt")
    with pytest.raises(DataError, match=r"000003\.png: could not decode"):
        KittiSequence(kitti, "05")[3]
    with pytest.raises(DataError, match=r"poses/11\.txt: poses file not found"):
        (kitti / "sequences" / "11").mkdir()
        (kitti / "sequences" / "11" / "calib.txt").write_text((kitti / "sequences" / "05" / "calib.txt").read_text())
        np.savetxt(kitti / "sequences" / "11" / "times.txt", [0.0])
        KittiSequence(kitti, 11)
    np.savetxt(kitti / "poses" / "05.txt", np.zeros((2, 12)))
    with pytest.raises(DataError, match="2 poses for 4 frames"):
        KittiSequence(kitti, 5)
    (kitti / "sequences" / "05" / "calib.txt").write_text("P0: 1 2 3\n")
    with pytest.raises(DataError, match="calib.txt: entry 'P0' is not 12 numbers"):
        KittiSequence(kitti, 5)


# --- VPR-Bench ------------------------------------------------------------------------------------


@pytest.mark.skipif(not CORRIDOR.is_dir(), reason="shared/data/corridor is not present")
def test_corridor_and_peer_recall():
    data = VPRBenchDataset(CORRIDOR)
    assert len(data.query_images()) == 111 and len(data.ref_images()) == 111
    assert len(data.ground_truth) == 111 and data.ground_truth[0] == [0, 1, 2]
    assert data.query_images()[5].shape == (120, 160, 3)
    readme = {
        "HybridNet": 0.901, "AMOSNet": 0.847, "denseVLAD": 0.703, "AlexNet_VPR": 0.685, "NetVLAD": 0.676,
        "CoHOG": 0.622, "ap-gem-r101": 0.532, "HOG": 0.477, "RegionVLAD": 0.432, "CALC": 0.324,
    }
    recall = peer_recalls(data)
    assert recall.keys() == readme.keys()
    for name, value in readme.items():
        assert recall[name] == pytest.approx(value, abs=1e-3), name


def write_vprbench(root: Path, n: int = 4) -> None:
    for k in range(n):
        write_png(root / "query" / f"{k:07d}.png", colour_image(k))
        write_png(root / "ref" / f"{k:07d}.png", colour_image(100 + k))
    (root / "ground_truth.json").write_text(json.dumps([{"query": q, "refs": [q]} for q in range(n)]))


def test_vprbench_fixture_and_recall(tmp_path):
    write_vprbench(tmp_path)
    (tmp_path / "peer_similarity").mkdir()
    sim = np.eye(4, dtype=np.float32)
    sim[3] = [0, 0.9, 0.5, 0.8]  # query 3: wrong at rank 1, right at rank 2
    np.save(tmp_path / "peer_similarity" / "toy.npy", sim)
    data = VPRBenchDataset(tmp_path)
    np.testing.assert_array_equal(data.ref_images()[2], colour_image(102))
    assert peer_recalls(data) == {"toy": 0.75}
    assert peer_recalls(data, n=2) == {"toy": 1.0}
    assert recall_at_n(sim, data.ground_truth, ns=(2,))["recall@2"] == 1.0


def test_vprbench_errors(tmp_path):
    write_vprbench(tmp_path)
    (tmp_path / "ground_truth.json").write_text(json.dumps([{"query": 0, "refs": [0]}]))
    with pytest.raises(DataError, match="ground_truth.json: ground truth must list every query 0..3"):
        VPRBenchDataset(tmp_path)
    (tmp_path / "ground_truth.json").write_text(json.dumps([{"query": q, "refs": [9]} for q in range(4)]))
    with pytest.raises(DataError, match="reference index out of range"):
        VPRBenchDataset(tmp_path)
    write_vprbench(tmp_path)
    (tmp_path / "peer_similarity").mkdir()
    np.save(tmp_path / "peer_similarity" / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled.npy: not a plain numeric .npy array"):
        VPRBenchDataset(tmp_path).peer_similarity()
    (tmp_path / "peer_similarity" / "pickled.npy").unlink()
    np.save(tmp_path / "peer_similarity" / "small.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"small.npy: similarity matrix has shape \(2, 2\), expected \(4, 4\)"):
        VPRBenchDataset(tmp_path).peer_similarity()
    (tmp_path / "query" / "0000001.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"0000001\.png: could not decode"):
        VPRBenchDataset(tmp_path).query_images()[1]
    with pytest.raises(DataError, match="query: image folder not found"):
        VPRBenchDataset(tmp_path / "elsewhere")
