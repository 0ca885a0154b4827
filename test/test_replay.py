"""`distilvpr replay`: the scoring on a hand-made recording, and real replays over DDS (tiny world, tiny models)."""

import json

import numpy as np
import pytest
import torch

from distilvpr_ros.evaluation.replay_metrics import (REPLAY_KEYS, Recording, align, parse_scores, positives,
                                                     score_replay)

torch.set_num_threads(1)


# --- scoring (no ROS) ----------------------------------------------------------------------------------


def scores_data(t, ids, scores):
    """``place_candidates/scores`` data: [t_query, id_1, score_1, t_1, ...] (keyframe stamps = id)."""
    return [t] + [v for i, s in zip(ids, scores) for v in (float(i), s, float(i))]


def test_replay_metrics_count_tp_fp_fn_drops_and_latency():
    """Four keyframes 100 m apart; six published queries with known outcomes:

    q0 near kf0: top-1 kf0 (0.9), accepted          -> TP
    q1 near kf1: top-1 kf2 (0.8), accepted          -> FP (wrong place)
    q2 near kf2: top-1 kf2 (0.4), not accepted      -> FN (right place, rejected)
    q3 far away: top-1 kf3 (0.3), not accepted      -> TN (no true match)
    q4 near kf3: no output                          -> dropped
    q5 near kf0: top-1 kf1 (0.7), kf0 second, not accepted -> FN, a Recall@1 miss
    """
    map_xy = np.array([[0, 0], [100, 0], [200, 0], [300, 0]], float)
    query_xy = np.array([[2, 0], [101, 0], [199, 3], [500, 0], [300, 0], [0, 1]], float)
    stamps = 1000.0 + 0.5 * np.arange(6)
    wall = 10.0 + np.arange(6)
    outputs = {0: ([0, 1], [0.9, 0.1]), 1: ([2, 1], [0.8, 0.7]), 2: ([2, 0], [0.4, 0.1]), 3: ([3, 2], [0.3, 0.2]),
               5: ([1, 0], [0.7, 0.6])}
    jitter = 3e-10  # header stamps round-trip through (sec, nanosec)
    rec = Recording(stamps, wall,
                    scores=[(wall[i] + 0.01 * (i + 1), scores_data(stamps[i] + jitter, *o)) for i, o in outputs.items()]
                    + [(9.0, scores_data(900.0, [0], [1.0]))],  # a warm-up answer: not a published query
                    matches=[(wall[0] + 0.01, stamps[0], (0.0, 0.0, 0.0)), (wall[1] + 0.02, stamps[1], (200.0, 0, 0))],
                    loop_closures=[(wall[0] + 0.01, stamps[0], 0.0)], node={"drops": 1.0}, node_rss_mb=[100.0, 101.0])
    truth = positives(query_xy, map_xy, 25.0)
    assert [t.tolist() for t in truth] == [[0], [1], [2], [], [3], [0]]

    m, details = score_replay(rec, query_xy, map_xy, truth, correct_m=25.0)
    assert set(REPLAY_KEYS) <= set(m)
    assert (m["frames"], m["answered"], m["dropped_frames"], m["top_k"]) == (6, 5, 1, 2)
    assert m["recall@1"] == pytest.approx(2 / 4)  # q0, q2 of q0, q1, q2, q5
    assert m["accepted"] == 2 and m["accepted_precision"] == pytest.approx(0.5)
    assert m["accepted_recall"] == pytest.approx(1 / 4)
    # top-1 PR, scores 0.9 TP, 0.8 FP, 0.7 FP, 0.4 TP, 0.3 FP; 4 queries with a match
    assert m["recall@100p"] == pytest.approx(0.25) and m["max_f1"] == pytest.approx(0.5)
    assert m["pr_auc"] == pytest.approx(0.25 * 1.0 + 0.25 * (1 / 3 + 1 / 2) / 2)
    np.testing.assert_allclose(details["precision"], [1, 1 / 2, 1 / 3, 1 / 2, 2 / 5])
    assert m["latency_ms_p50"] == pytest.approx(30.0)  # latencies 10, 20, 30, 40, 60 ms
    assert m["latency_ms_p99"] == pytest.approx(59.2)
    assert m["rate_hz"] == pytest.approx(4 / (15.06 - 10.01))
    assert m["loop_closures"] == 1 and m["node"] == {"drops": 1.0} and m["node_rss_mb_max"] == 101.0
    assert details["answered"].tolist() == [True, True, True, True, False, True]
    assert details["accepted_correct"].tolist() == [True, False, False, False, False, False]


def test_replay_metrics_helpers():
    assert parse_scores([5.0, 3, 0.5, 1.5, 1, 0.25, 2.5])[1].tolist() == [3, 1]
    with pytest.raises(ValueError):
        parse_scores([5.0, 3, 0.5])
    assert align(np.array([1.0, 2.0, 3.0]), [2.0 + 1e-9, 2.5, 0.0, 3.0]).tolist() == [1, -1, -1, 2]
    assert align(np.array([1.0]), [1.0, 1.1]).tolist() == [0, -1]
    # temporal exclusion: a keyframe of the query's own run within exclude_recent_s is no positive
    truth = positives(np.zeros((2, 2)), np.zeros((2, 2)), 25.0, np.array([100.0, 200.0]), np.array([95.0, 95.0]),
                      ["run_a", "run_b"], "run_a", exclude_recent_s=30.0)
    assert [t.tolist() for t in truth] == [[1], [0, 1]]
    empty = score_replay(Recording(np.array([1.0]), np.array([0.0])), np.zeros((1, 2)), np.zeros((1, 2)), [[0]])[0]
    assert empty["dropped_frames"] == 1 and np.isnan(empty["recall@1"]) and np.isnan(empty["latency_ms_p50"])


# --- real replays over DDS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny world with bags, tiny 64x48 checkpoints, and a map of the first run."""
    pytest.importorskip("rclpy")
    from distilvpr_ros.data.synthetic import load_synthetic
    from distilvpr_ros.data.world.config import load_world_config
    from distilvpr_ros.data.world.generate import generate_world
    from distilvpr_ros.pipeline.offline import build_map_from_sequence
    from tiny_models import tiny_checkpoints

    out = tmp_path_factory.mktemp("replay")
    generate_world(out / "world", load_world_config("tiny", None, None), write_bags=True, progress=False)
    ckpt = tiny_checkpoints(out)
    teacher, student = ckpt["teacher"], ckpt["student"]
    runs = load_synthetic(out / "world")
    build_map_from_sequence(runs[0], teacher, student, out / "map")
    return {"root": out, "student": student, "map": out / "map", "bag": out / "world" / "bags" / runs[1].run}


@pytest.mark.ros
def test_cli_replay_writes_the_report(assets, tmp_path):
    from distilvpr_ros.cli import main
    from distilvpr_ros.pipeline.offline import open_bag_sequence

    out = tmp_path / "replay"
    assert main(["replay", "--bag", str(assets["bag"]), "--map", str(assets["map"]), "--model",
                 str(assets["student"]), "--rate", "20", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(REPLAY_KEYS) <= set(metrics)
    assert metrics["frames"] == len(open_bag_sequence(assets["bag"]))
    assert metrics["frames"] == metrics["answered"] + metrics["dropped_frames"] and metrics["answered"] > 0
    for key in ("recall@1", "accepted_precision", "accepted_recall", "max_f1", "recall@100p", "pr_auc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p99"] and metrics["rate_hz"] > 0
    assert metrics["backend"] == "torch" and metrics["node"]["map_size"] == metrics["map_size"]
    for name in ("metrics.md", "pr.png", "trajectory.png", "trajectory_top1.png", "queries.npz", "node.log",
                 "localization_params.yaml"):
        assert (out / name).stat().st_size > 0, name
    assert "recall@1" in (out / "metrics.md").read_text()
    assert main(["replay", "--bag", str(tmp_path / "nope"), "--map", str(assets["map"]), "--model",
                 str(assets["student"])]) == 2


@pytest.mark.ros
def test_fast_replay_drops_frames_instead_of_queueing(assets, tmp_path):
    """Images at 200 Hz played 5x faster than real time (1 kHz, far above what the node can process): the
    node answers fewer frames than it was sent (latest-frame policy) and its memory stays flat."""
    from distilvpr_ros.data.geometry import pose_from_xyz_yaw
    from distilvpr_ros.data.rosbag_io import BagWriter
    from distilvpr_ros.ros.replay_localization import record_replay, replay_config
    from distilvpr_ros.pipeline.offline import open_bag_sequence

    n, dt, t0 = 400, 0.005, 0.5  # starts 0.5 s after 0: warm-up stamps must fit before it (no negative /clock)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 48, 64, 3), dtype=np.uint8)
    with BagWriter(tmp_path / "dense") as bag:
        for k in range(n):
            bag.write_odom(t0 + k * dt, pose_from_xyz_yaw(0.1 * k, 0, 0, 0))
            bag.write_image(t0 + k * dt, images[k % len(images)])
    cfg = replay_config(tmp_path / "dense", assets["map"], assets["student"])
    rec = record_replay(open_bag_sequence(tmp_path / "dense", cfg), cfg, tmp_path, rate=5.0)
    answered = int((align(rec.sent_stamps, [data[0] for _, data in rec.scores]) >= 0).sum())
    assert len(rec.sent_stamps) == n
    assert 0 < answered < n and rec.node["processed"] == answered
    assert rec.node["drops"] + (n - rec.node["frames"]) == n - answered  # slot replaced + lost in DDS
    assert rec.node["drops_transport"] == n - rec.node["frames"]  # the node now sees the DDS losses itself
    assert rec.node["drops"] > 0 or rec.node["frames"] < n
    assert max(rec.node_rss_mb) - rec.node_rss_mb[0] < 50.0, rec.node_rss_mb
