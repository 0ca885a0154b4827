"""Retrieval and precision/recall metrics against brute force and scikit-learn."""

import numpy as np
import pytest

from distilvpr_ros.evaluation.metrics import average_recalls, precision_recall, recall_at_n, similarity_matrix_metrics


def test_recall_at_n_brute_force():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(50, 300))
    truth = [rng.choice(300, size=rng.integers(0, 4), replace=False).tolist() for _ in range(50)]
    got = recall_at_n(sim, truth, ns=(1, 5, 10))
    ev = [i for i, t in enumerate(truth) if t]
    assert got["num_queries"] == len(ev)
    for n in (1, 5, 10, 3):  # 3 == recall@1% for 300 entries
        hits = [bool(set(np.argsort(-sim[i])[:n]) & set(truth[i])) for i in ev]
        key = "recall@1%" if n == 3 else f"recall@{n}"
        assert got[key] == pytest.approx(np.mean(hits))


def test_recall_no_evaluable_queries_is_nan_and_skipped_in_average():
    r0 = recall_at_n(np.zeros((3, 4)), [[], [], []])
    assert np.isnan(r0["recall@1"]) and r0["num_queries"] == 0
    r1 = recall_at_n(np.eye(3), [[0], [1], [0]])
    avg = average_recalls([r0, r1])
    assert avg["recall@1"] == pytest.approx(2 / 3) and avg["num_pairs"] == 1


def test_precision_recall_matches_sklearn_when_only_correct_queries_have_a_match():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=200)
    correct = rng.uniform(size=200) < scores  # confident ones tend to be right
    pr = precision_recall(scores, correct, correct)  # then recall's denominator is sklearn's
    p_ref, r_ref, t_ref = metrics.precision_recall_curve(correct, scores)
    ref = {round(t, 12): (p, r) for p, r, t in zip(p_ref[:-1], r_ref[:-1], t_ref)}
    for p, r, t in zip(pr["precision"], pr["recall"], pr["thresholds"]):
        assert (p, r) == pytest.approx(ref[round(t, 12)])
    f1_ref = np.max(2 * p_ref * r_ref / np.maximum(p_ref + r_ref, 1e-12))
    assert pr["max_f1"] == pytest.approx(f1_ref)


def test_precision_recall_counts_queries_without_match_and_wrong_matches():
    # scores high→low: correct, wrong (has match), wrong (no match), correct
    pr = precision_recall(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 0, 1], bool), np.array([1, 1, 0, 1], bool))
    np.testing.assert_allclose(pr["precision"], [1, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(pr["recall"], [1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert pr["recall@100p"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        precision_recall(np.ones(1), np.ones(1, bool), np.zeros(1, bool))
    empty = precision_recall(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool))  # no query answered
    assert len(empty["recall"]) == 0 and empty["auc"] == 0 and empty["max_f1"] == 0


def test_similarity_matrix_metrics_perfect_and_shuffled():
    truth = [[i] for i in range(20)]
    perfect = similarity_matrix_metrics(np.eye(20), truth)
    assert perfect["recall@1"] == 1 and perfect["pr_auc"] == pytest.approx(1) and perfect["max_f1"] == 1
    rng = np.random.default_rng(2)
    noisy = similarity_matrix_metrics(rng.normal(size=(20, 20)), truth)
    assert noisy["recall@1"] < 0.5
