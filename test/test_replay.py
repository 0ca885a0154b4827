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
    # the pose each place_match carries against the truth: planar without query poses; 3D + rotation with them
    assert m["match_translation_m_median"] == pytest.approx((2 + 99) / 2) and np.isnan(m["match_rotation_deg_median"])
    yaw = np.radians(10.0)
    quat = (0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2))
    rec.matches = [(wall[0] + 0.01, stamps[0], (0.0, 0.0, 0.0), quat)]
    poses = np.tile(np.eye(4), (6, 1, 1))
    poses[:, :2, 3] = query_xy
    poses[:, 2, 3] = 1.0
    m2, _ = score_replay(rec, query_xy, map_xy, truth, correct_m=25.0, query_poses=poses)
    assert m2["match_translation_m_median"] == pytest.approx(np.sqrt(5.0))
    assert m2["match_rotation_deg_median"] == pytest.approx(10.0)


def test_replay_scores_the_nodes_verified_matches():
    """Three keyframes 100 m apart; the node verified q0 (right keyframe, metric pose 0.5 m off) and q1 (re-ranked
    from a wrong top-1 to the right one), rejected q2 (its descriptor match was accepted and wrong)."""
    from distilvpr_ros.ros.messages import inliers_msg

    map_xy = np.array([[0, 0], [100, 0], [200, 0]], float)
    query_xy = np.array([[1, 0], [100, 2], [200, 0]], float)
    stamps, wall = 50.0 + np.arange(3), 5.0 + np.arange(3)
    truth = positives(query_xy, map_xy, 25.0)
    tops = {0: ([0, 1], [0.9, 0.5]), 1: ([2, 1], [0.8, 0.7]), 2: ([0, 2], [0.95, 0.1])}
    inl = {0: (False, True, [(0, 80, 1.0), (1, 0, -1.0)]), 1: (True, True, [(2, 3, 0.0), (1, 60, 1.0)]),
           2: (True, False, [(0, 4, 0.0), (2, 12, 0.0)])}
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :2, 3] = query_xy
    ident = (0.0, 0.0, 0.0, 1.0)
    rec = Recording(stamps, wall, scores=[(wall[i] + 0.01, scores_data(stamps[i], *o)) for i, o in tops.items()],
                    matches=[(wall[0] + 0.01, stamps[0], (1.5, 0.0, 0.0), ident),
                             (wall[1] + 0.01, stamps[1], (100.0, 2.0, 0.0), ident)],
                    loop_closures=[(wall[0] + 0.01, stamps[0], 0.0), (wall[1] + 0.01, stamps[1], 1.0)],
                    inliers=[(wall[i] + 0.01, list(inliers_msg(stamps[i], *o).data)) for i, o in inl.items()])
    m, details = score_replay(rec, query_xy, map_xy, truth, correct_m=25.0, query_poses=poses,
                              map_stamps=np.array([0.0, 1.0, 2.0]))
    v = m["verified_matches"]
    assert v["before"]["accepted"] == 2 and v["before"]["correct"] == 0 and v["before"]["precision"] == 0.0
    assert v["after"]["accepted"] == 2 and v["after"]["correct"] == 2 and v["after"]["precision"] == 1.0
    assert v["after"]["recall"] == pytest.approx(2 / 3)
    assert v["recall@1"]["before"] == pytest.approx(1 / 3) and v["recall@1"]["after"] == pytest.approx(2 / 3)
    assert v["pose_error"]["count"] == 2 and v["pose_error"]["translation_m_median"] == pytest.approx(0.25)
    assert details["verified_id"].tolist() == [0, 1, -1] and details["verified"].tolist() == [True, True, False]
    assert m["loop_closures_correct"] == 2 and m["loop_closure_precision"] == 1.0
    assert m["match_translation_m_median"] == pytest.approx(0.25)


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
    return {"root": out, "teacher": teacher, "student": student, "map": out / "map",
            "bag": out / "world" / "bags" / runs[1].run}


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
    from distilvpr_ros.ros.messages import msg_stamp
    from distilvpr_ros.ros.replay_localization import OUTPUTS_BAG, record_replay, replay_config
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

    # what the node published is in the outputs bag as the recorder got it, logged at the /clock of its arrival
    back = read_bag_back(tmp_path / OUTPUTS_BAG)
    scores = back["/distilvpr_replay/place_candidates/scores"]
    assert [list(msg.data) for _, msg in scores] == [data for _, data in rec.scores]
    matches = back.get("/distilvpr_replay/place_match", [])
    assert [msg_stamp(msg) for _, msg in matches] == [stamp for _, stamp, _ in rec.matches]
    assert len(back.get("/distilvpr_replay/loop_closure", [])) == len(rec.loop_closures)
    log_times = np.array([t for t, _ in scores])
    assert (np.diff(log_times) >= 0).all() and log_times[-1] <= rec.sent_stamps[-1] + 1e-6
    assert (log_times >= np.array([msg.data[0] for _, msg in scores]) - 1e-6).all()  # answered after its frame
    assert len(back["/distilvpr_replay/place_candidates"]) == len(scores)


def read_bag_back(path):
    """``{topic: [(log time s, message), ...]}`` of a bag, read with rosbags (as Foxglove or ros2 bag would)."""
    from rosbags.highlevel import AnyReader

    from distilvpr_ros.data.rosbag_io import ros2_typestore

    out = {}
    with AnyReader([path], default_typestore=ros2_typestore()) as reader:
        for conn, t_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t_ns * 1e-9, reader.deserialize(raw, conn.msgtype)))
    return out


def test_outputs_bag_round_trip(tmp_path):
    """The recorder's bag writer: rclpy messages in, the same messages (types, stamps, data, log times) read
    back by rosbags in log-time order; a bag already there is replaced, anything else refused."""
    pytest.importorskip("rclpy")
    from distilvpr_ros.mapping.matcher import Candidate, MatchResult
    from distilvpr_ros.ros.messages import candidates_msgs, loop_closure_msg, place_match_msg
    from distilvpr_ros.ros.recorder import write_bag

    pose = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0])
    cands = [Candidate(id=4, score=0.9, stamp=7.5, pose=pose), Candidate(id=2, score=0.5, stamp=3.25, pose=pose + 1)]
    result = MatchResult(stamp=12.5, candidates=cands, best=cands[0], accepted=True, reason="",
                         covariance=np.eye(6), loop_closure=(12.5, 7.5))
    poses, scores = candidates_msgs(result, "map")
    entries = [(12.6, "/ns/place_candidates/scores", scores), (12.55, "/ns/place_candidates", poses),
               (12.7, "/ns/place_match", place_match_msg(result, "map")), (12.7, "/ns/loop_closure",
                                                                           loop_closure_msg(12.5, 7.5))]
    write_bag(tmp_path / "out", entries)
    back = read_bag_back(tmp_path / "out")
    assert sorted(back) == sorted(e[1] for e in entries) and all(len(v) == 1 for v in back.values())
    (t_scores, scores_back), = back["/ns/place_candidates/scores"]
    assert t_scores == pytest.approx(12.6, abs=1e-9) and scores_back.layout.data_offset == 1
    assert list(scores_back.data) == list(scores.data) == [12.5, 4, 0.9, 7.5, 2, 0.5, 3.25]
    match = back["/ns/place_match"][0][1]
    assert (match.header.stamp.sec, match.header.stamp.nanosec, match.header.frame_id) == (12, 500_000_000, "map")
    assert match.pose.pose.position.y == 2.0 and match.pose.covariance.reshape(6, 6).tolist() == np.eye(6).tolist()
    assert [p.position.x for p in back["/ns/place_candidates"][0][1].poses] == [1.0, 2.0]
    assert list(back["/ns/loop_closure"][0][1].data) == [12.5, 7.5]

    write_bag(tmp_path / "out", entries[:1])  # a second run into the same folder replaces its bag
    assert list(read_bag_back(tmp_path / "out")) == ["/ns/place_candidates/scores"]
    (tmp_path / "notabag").mkdir()
    with pytest.raises(FileExistsError):
        write_bag(tmp_path / "notabag", entries)


@pytest.mark.ros
def test_mapping_replay_forwards_the_bag_and_records_the_node(assets, tmp_path):
    """The tiny world's bag played into the mapping node: every camera, LiDAR and odometry message of the bag
    is published as recorded, the node saves a map, and the bag of its outputs holds what it published."""
    from distilvpr_ros.data.rosbag_io import bag_summary
    from distilvpr_ros.pipeline.config import NodeConfig
    from distilvpr_ros.ros.replay_mapping import OUTPUTS_BAG, mapping_topics, run_mapping

    result = run_mapping(assets["bag"], assets["teacher"], assets["student"], tmp_path / "map", rate=8.0,
                         odom_lead_s=1.0, max_unpaired=0, out_dir=tmp_path,
                         overrides={"diagnostics.period_s": 0.2})  # frames are held until diagnostics say paired
    counts = bag_summary(assets["bag"])["topics"]
    topics = mapping_topics(assets["bag"], NodeConfig())
    assert result["published"] == {node: counts[topic]["count"] for topic, (node, _) in topics.items()}
    assert result["exit_code"] == 0 and 0 < result["node"]["keyframes"] <= result["map_size"]
    assert json.loads((tmp_path / "mapping.json").read_text())["map_size"] == result["map_size"]

    back = read_bag_back(tmp_path / OUTPUTS_BAG)
    assert {topic: len(kept) for topic, kept in back.items()} == result["outputs_bag"]["messages"]
    assert [list(msg.data) for _, msg in back.get("/distilvpr_mapping_replay/loop_closure", [])] == \
        result["loop_closures"]
    node = "/distilvpr_mapping_replay/distilvpr_mapping"
    assert any(s.hardware_id == node for _, msg in back["/diagnostics"] for s in msg.status)


@pytest.mark.ros
def test_replay_plays_odometry_when_the_localizer_uses_it(assets, tmp_path):
    """With tracking on, the replay also plays the bag's odometry into the node (only the camera frames are paced at
    ``hz`` and counted by ``max_frames``); without a use for it, none is played."""
    from distilvpr_ros.pipeline.offline import open_bag_sequence
    from distilvpr_ros.ros.replay_localization import odometry_topic, record_replay, replay_config

    cfg = replay_config(assets["bag"], assets["map"], assets["student"],
                        overrides={"verification.rerank.tracking_min_inliers": 8})
    assert odometry_topic(assets["bag"], cfg) == {"/odom": ("odom", "nav_msgs/msg/Odometry")}
    seq = open_bag_sequence(assets["bag"], cfg)
    rec = record_replay(seq, cfg, tmp_path, hz=20.0, max_frames=6)
    assert len(rec.sent_stamps) == 6 and rec.node["odometry"] > 0 and rec.node["processed"] > 0
    plain = replay_config(assets["bag"], assets["map"], assets["student"])
    assert odometry_topic(assets["bag"], plain) == {}
