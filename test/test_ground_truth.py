"""Ground truth from poses and the pair batch sampler, checked against brute-force distances."""

import numpy as np
import pytest
from pydantic import ValidationError

from distilvpr_ros.config import GroundTruthConfig
from distilvpr_ros.data.geometry import pose_from_xyz_yaw
from distilvpr_ros.data.ground_truth import TrainingGroundTruth, cross_run_pairs
from distilvpr_ros.data.samplers import PairBatchSampler


class FakeRun:
    def __init__(self, run, xy):
        self.run = run
        self.poses = np.stack([pose_from_xyz_yaw(x, y, 0.0, 0.0) for x, y in xy])
        self.timestamps = np.arange(len(xy), dtype=float)

    def __len__(self):
        return len(self.poses)


def brute(pos, r):
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    return [np.flatnonzero((d[i] <= r) & (np.arange(len(pos)) != i)) for i in range(len(pos))]


def test_training_ground_truth_matches_brute_force():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 200, size=(300, 2))
    gt = TrainingGroundTruth.from_positions(pos, GroundTruthConfig(positive_m=10, non_negative_m=50))
    for a, b in zip(gt.positives, brute(pos, 10)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(gt.non_negatives, brute(pos, 50)):
        np.testing.assert_array_equal(a, b)


def test_batch_masks():
    pos = np.array([[0, 0], [5, 0], [30, 0], [100, 0]], dtype=float)
    gt = TrainingGroundTruth.from_positions(pos)
    p, n = gt.batch_masks([0, 1, 2, 3])
    assert p.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # 30 m is neither positive nor negative (non-negative zone); 100 m is a negative; self never.
    assert n[0].tolist() == [False, False, False, True]
    assert not n.diagonal().any()


def test_cross_run_pairs_true_matches():
    a = FakeRun("a", [(x, 0) for x in range(0, 100, 5)])
    b = FakeRun("b", [(x + 2, 3) for x in range(0, 200, 10)])
    pairs = cross_run_pairs([a, b], GroundTruthConfig(correct_m=25))
    assert {(p.database, p.query) for p in pairs} == {(0, 1), (1, 0)}
    ab = next(p for p in pairs if p.database == 0)
    pa, pb = a.poses[:, :2, 3], b.poses[:, :2, 3]
    for q, m in enumerate(ab.true_matches):
        expect = np.flatnonzero(np.linalg.norm(pa - pb[q], axis=1) <= 25)
        np.testing.assert_array_equal(m, expect)
    # b's queries beyond x=125 have no match in a (a ends at 95): they are not evaluable.
    assert len(ab.evaluable) < len(b)


def test_config_rejects_inverted_radii():
    with pytest.raises(ValidationError):
        GroundTruthConfig(positive_m=60, non_negative_m=50)


def test_pair_batch_sampler():
    rng = np.random.default_rng(1)
    pos = np.concatenate([rng.uniform(0, 300, size=(200, 2)), [[5000.0, 5000.0]]])  # last: no positive
    gt = TrainingGroundTruth.from_positions(pos)
    s = PairBatchSampler(gt, batch_size=16, seed=3)
    batches = list(s)
    assert len(batches) == len(s) > 0
    anchors = []
    for b in batches:
        assert len(b) == 16
        for a, p in zip(b[0::2], b[1::2]):
            assert p in gt.positives[a]
            anchors.append(a)
        assert 200 not in b
    assert len(set(anchors)) == len(anchors)
    assert batches == list(PairBatchSampler(gt, batch_size=16, seed=3))  # deterministic
    s.set_epoch(1)
    assert list(s) != batches


def test_pair_batch_sampler_rejects_bad_input():
    gt = TrainingGroundTruth.from_positions(np.array([[0.0, 0.0], [100.0, 0.0]]))
    with pytest.raises(ValueError, match="no element has a positive"):
        PairBatchSampler(gt, batch_size=4)
    with pytest.raises(ValueError, match="even"):
        PairBatchSampler(TrainingGroundTruth.from_positions(np.zeros((4, 2))), batch_size=3)
