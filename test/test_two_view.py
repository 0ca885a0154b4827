"""Two-view (2D-2D) verification and re-ranking of a similarity matrix, as used on Corridor."""

import cv2
import numpy as np
import pytest

from distilvpr_ros.verification.two_view import TwoViewConfig, rerank_similarity, two_view_features, two_view_inliers
from distilvpr_ros.evaluation.metrics import similarity_matrix_metrics


def textured(seed: int, size=(240, 320)) -> np.ndarray:
    """An RGB image with random blobs and rectangles: plenty of corners, different for each seed."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.uniform(size=size) * 255).astype(np.uint8), (0, 0), 2.0)
    img = cv2.equalizeHist(img)
    for _ in range(40):
        x, y = int(rng.integers(0, size[1] - 30)), int(rng.integers(0, size[0] - 30))
        w, h = (int(v) for v in rng.integers(8, 30, 2))
        cv2.rectangle(img, (x, y), (x + w, y + h), int(rng.integers(0, 256)), -1)
    return np.repeat(img[..., None], 3, axis=2)


def warped(img: np.ndarray) -> np.ndarray:
    H = np.array([[0.95, 0.05, 8.0], [-0.03, 1.02, -5.0], [1e-4, -5e-5, 1.0]])
    return cv2.warpPerspective(img, H, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("features", ["orb", "sift"])
@pytest.mark.parametrize("model", ["homography", "fundamental"])
def test_same_scene_has_many_inliers_and_another_scene_few(features, model):
    cfg = TwoViewConfig(features=features, model=model)
    scene = textured(0)
    same, other = two_view_inliers(scene, warped(scene), cfg), two_view_inliers(scene, textured(1), cfg)
    assert same >= 50 and same > 5 * max(other, 1), (same, other)


def test_empty_or_featureless_images_give_zero_inliers():
    cfg = TwoViewConfig()
    flat = np.full((120, 160, 3), 128, np.uint8)
    assert two_view_inliers(flat, textured(0), cfg) == 0
    assert two_view_inliers(np.zeros((0, 0, 3), np.uint8), textured(0), cfg) == 0
    ext = cfg.extractor()
    result = two_view_features(ext.extract(flat), ext.extract(flat), cfg)
    assert not result.accepted and result.inliers == 0 and "too few matches" in result.reason


def test_rerank_moves_the_consistent_candidate_above_a_higher_scoring_distractor():
    cfg = TwoViewConfig()
    ext = cfg.extractor()
    scenes = [textured(s) for s in range(3)]
    queries = [ext.extract(warped(scenes[0])), ext.extract(warped(scenes[2]))]
    refs = [ext.extract(img) for img in scenes]
    # Query 0 is scene 0, but the descriptor prefers the distractor (ref 1); query 1 is scene 2, ranked first.
    similarity = np.array([[0.5, 0.9, 0.1], [0.2, 0.3, 0.8]])
    truth = [[0], [2]]
    assert similarity_matrix_metrics(similarity, truth)["recall@1"] == 0.5
    reranked, inliers = rerank_similarity(similarity, queries, refs, top_k=2, cfg=cfg)
    assert np.argmax(reranked[0]) == 0 and np.argmax(reranked[1]) == 2
    assert similarity_matrix_metrics(reranked, truth)["recall@1"] == 1.0
    assert inliers.shape == (2, 2)
    assert inliers[0, 1] > 5 * max(inliers[0, 0], 1)  # descriptor order: [ref 1, ref 0]
    assert reranked[0, 2] == -1.0  # outside the top-k: below every verified candidate


def test_rerank_ties_keep_descriptor_order_and_top_k_zero_is_a_no_op():
    ext = TwoViewConfig().extractor()
    flat = ext.extract(np.full((120, 160, 3), 128, np.uint8))  # no inliers anywhere: order must not change
    similarity = np.random.default_rng(0).uniform(size=(4, 6))
    reranked, _ = rerank_similarity(similarity, [flat] * 4, [flat] * 6, top_k=3)
    np.testing.assert_array_equal(np.argsort(-reranked, axis=1)[:, :3], np.argsort(-similarity, axis=1)[:, :3])
    unchanged, inliers = rerank_similarity(similarity, [flat] * 4, [flat] * 6, top_k=0)
    np.testing.assert_array_equal(unchanged, similarity)
    assert inliers.shape == (4, 0)
