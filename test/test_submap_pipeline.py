"""LiDAR submaps and classical LiDAR kinds in `distilvpr evaluate` and `distilvpr build-map` (tiny world)."""

import json

import numpy as np
import pytest
import torch

from distilvpr_ros.cli import main
from distilvpr_ros.data.submap import SubmapConfig, accumulate_submap
from distilvpr_ros.data.synthetic import load_synthetic, read_world_meta
from distilvpr_ros.data.world.config import load_world_config
from distilvpr_ros.data.world.generate import generate_world
from distilvpr_ros.evaluation.evaluate import evaluate_sequences
from distilvpr_ros.mapping.database import PlaceDatabase
from distilvpr_ros.models.classical import fft_descriptor, scan_context
from distilvpr_ros.models.vpr import l2_normalize
from distilvpr_ros.pipeline.config import TEACHER_SPACE, NodeConfig
from distilvpr_ros.pipeline.embedder import Embedder, ModelLoadError
from distilvpr_ros.pipeline.offline import build_map_from_sequence, open_bag_sequence
from tiny_models import tiny_checkpoints

torch.set_num_threads(1)
D = 30.0  # the tiny world's frames are ~12 m apart: a trailing 30 m submap holds up to 3 scans


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_tiny_bags")
    generate_world(out, load_world_config("tiny", None, None), write_bags=True, progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


def fft(cloud: np.ndarray) -> np.ndarray:
    """The scan_context_fft descriptor of one cloud, computed from the maths functions."""
    return l2_normalize(fft_descriptor(scan_context(cloud))[None])[0]


def trailing_ffts(clouds, poses, T_base_lidar, length_m=D) -> np.ndarray:
    cfg = SubmapConfig(length_m=length_m)
    return np.stack([fft(accumulate_submap(clouds, poses, i, cfg, T_base_lidar)) for i in range(len(clouds))])


def test_evaluate_reads_submaps_with_a_classical_kind_by_name(world, tmp_path):
    metrics = {}
    for length in (0.0, D):
        out = tmp_path / f"eval_{length:g}"
        assert main(["evaluate", "--checkpoint", "scan_context_fft", "--world", str(world), "--region", "test",
                     "--submap-length-m", str(length), "--out", str(out), "--batch-size", "8"]) == 0
        metrics[length] = json.loads((out / "metrics.json").read_text())
    config = metrics[D]["config"]
    assert config["model_kind"] == "scan_context_fft" and config["submap"]["length_m"] == D
    assert config["submap"]["window"] == "trailing"
    # the same figures from descriptors computed by hand: trailing submaps of each test-region run
    runs = load_synthetic(world, regions={"test"})
    T = np.asarray(read_world_meta(world)["calibration"]["T_base_lidar"])
    descs = [trailing_ffts([run.cloud(i) for i in range(len(run))], run.poses, T) for run in runs]
    expected = evaluate_sequences(descs, runs, query_subsets=("same_direction", "opposite_direction"))
    for key in ("recall@1", "recall@5", "recall_curve"):
        np.testing.assert_allclose(metrics[D][key], expected[key], atol=1e-9)
    assert [p["recall@1%"] for p in metrics[D]["pairs"]] == pytest.approx([p["recall@1%"] for p in expected["pairs"]])
    single = [np.stack([fft(run.cloud(i)) for i in range(len(run))]) for run in runs]
    np.testing.assert_allclose(metrics[0.0]["recall_curve"], evaluate_sequences(single, runs)["recall_curve"])
    assert metrics[0.0]["recall_curve"] != metrics[D]["recall_curve"]  # the flag changed what was read


def test_build_map_with_a_classical_kind_on_trailing_submaps(world, checkpoints, tmp_path):
    run = load_synthetic(world)[0]
    bag = world / "bags" / run.run
    assert main(["build-map", "--bag", str(bag), "--teacher", "scan_context_fft", "--student",
                 str(checkpoints["student"]), "--out", str(tmp_path / "map"), "--submap-length-m", str(D)]) == 0
    db = PlaceDatabase.load(tmp_path / "map")
    assert len(db) == len(run)  # 12 m frame spacing > 2 m keyframe distance: every frame is a keyframe
    space = db.spaces[TEACHER_SPACE]
    assert space.model_name == "scan_context_fft:builtin" and space.dim == 20 * 31
    seq = open_bag_sequence(bag)
    T = np.asarray(read_world_meta(world)["calibration"]["T_base_lidar"])
    clouds = [seq[i].cloud for i in range(len(seq))]
    expected = trailing_ffts(clouds, np.asarray(seq.poses), T)
    np.testing.assert_allclose(db.descriptors(TEACHER_SPACE), expected, atol=1e-5)
    single = np.stack([fft(c) for c in clouds])
    assert not np.allclose(db.descriptors(TEACHER_SPACE)[1:], single[1:], atol=1e-3)
    # views keep the keyframe's own scan (verification registers single scans)
    assert db.view(3) is not None


class PoseGap:
    """A run whose frame ``gap`` has no pose (odometry lost there)."""

    def __init__(self, run, gap: int):
        self.run, self.parent, self.run_dir = run.run, run, run.run_dir
        self.timestamps = run.timestamps
        self.poses = np.array(run.poses, dtype=float)
        self.poses[gap] = np.nan

    def __len__(self):
        return len(self.parent)

    def __getitem__(self, i):
        return self.parent[i]


def test_build_map_submaps_fall_back_after_an_odometry_gap(world, checkpoints, tmp_path):
    run = load_synthetic(world)[0]
    cfg = NodeConfig(**{"submap": {"length_m": D}})
    summary = build_map_from_sequence(PoseGap(run, 5), "scan_context_fft", checkpoints["student"], tmp_path / "m", cfg)
    assert summary["skipped"]["no_pose"] == 1 and summary["keyframes"] == len(run) - 1
    # frames 6, 7 and 8 reach back to the gap with less than 30 m of travel (12 m steps)
    assert summary["submap"]["breaks"] == 1 and summary["submap"]["cut_short"] == 3
    db = PlaceDatabase.load(tmp_path / "m")
    T = np.asarray(read_world_meta(world)["calibration"]["T_base_lidar"])
    # frame 6 follows the gap: its submap is its own scan, not frames 3-4 across the gap; frame 7 adds frame 6
    expected = trailing_ffts([run.cloud(6), run.cloud(7)], run.poses[6:8], T)
    across = trailing_ffts([run.cloud(i) for i in range(8)], run.poses[:8], T)
    for frame in (6, 7):
        row = int(np.flatnonzero(np.isclose(db.stamps, run.timestamps[frame], rtol=0, atol=1e-6))[0])
        np.testing.assert_allclose(db.descriptors(TEACHER_SPACE)[row], expected[frame - 6], atol=1e-5)
        assert not np.allclose(db.descriptors(TEACHER_SPACE)[row], across[frame], atol=1e-3)


def test_teacher_space_takes_lidar_kinds_and_refuses_a_camera_student(checkpoints, tmp_path):
    fft_model = Embedder.teacher_from_config(NodeConfig().models.model_copy(
        update={"teacher_checkpoint": "scan_context_fft"}))
    assert fft_model.kind == TEACHER_SPACE and fft_model.model.kind == "scan_context_fft"
    assert fft_model.identity[0] == "scan_context_fft:builtin"
    with pytest.raises(ModelLoadError, match="holds a camera_student model, expected teacher or lidar_student"):
        Embedder.teacher_from_config(NodeConfig().models.model_copy(
            update={"teacher_checkpoint": str(checkpoints["student"])}))
    with pytest.raises(ValueError, match="only knows the past"):
        NodeConfig(**{"submap": {"length_m": 20.0, "window": "centred"}})


def test_training_data_config_reads_submaps(world):
    from distilvpr_ros.training.config import DataConfig
    from distilvpr_ros.training.data import open_split

    single = open_split(DataConfig(root=world), "train")
    submaps = open_split(DataConfig(root=world, submap=SubmapConfig(length_m=D, window="centred")), "train")
    assert [s.run for s in submaps] == [s.run for s in single] and len(submaps[0]) == len(single[0])
    run, i = single[0], len(single[0]) // 2
    T = np.asarray(read_world_meta(world)["calibration"]["T_base_lidar"])
    expected = accumulate_submap([run.cloud(j) for j in range(len(run))], run.poses, i,
                                 SubmapConfig(length_m=D, window="centred"), T)
    np.testing.assert_array_equal(submaps[0][i].cloud, expected)
    assert len(expected) > len(run.cloud(i))
