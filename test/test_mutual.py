"""MutualVPR: CosFace, geographic classes and groups, view re-clustering, label alignment, training."""

import json

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import CosFaceLoss

from distilvpr_ros.losses.cosface import CosFaceClassifier
from distilvpr_ros.training import trainer
from distilvpr_ros.models.checkpoint import load_checkpoint, load_model
from distilvpr_ros.training.config import TrainConfig
from distilvpr_ros.training.tasks.geo_classes import (align_to_rows, group_places, heading_bins, initial_split,
                                                      kmeans_views, partition_changes, place_cells, purity)


def test_cosface_equals_pytorch_metric_learning():
    torch.manual_seed(0)
    ours = CosFaceClassifier(num_classes=7, dim=12, scale=30.0, margin=0.4)
    reference = CosFaceLoss(num_classes=7, embedding_size=12, margin=0.4, scale=30.0)
    reference.W.data = ours.weight.detach().T.clone()  # PML keeps D x C
    x, y = torch.randn(10, 12), torch.randint(0, 7, (10,))
    assert torch.allclose(ours(x, y), reference(x, y), atol=1e-5)
    wrong = CosFaceClassifier(num_classes=7, dim=12, scale=30.0, margin=0.1)
    wrong.weight.data = ours.weight.data.clone()
    assert not torch.allclose(wrong(x, y), reference(x, y), atol=1e-3)


def test_cells_groups_and_headings():
    positions = np.array([[3.0, 4.0], [13.0, 4.0], [-0.5, 59.0], [51.0, 4.0], [4.0, 9.9]])
    cells = place_cells(positions, 10.0)
    assert cells.tolist() == [[0, 0], [1, 0], [-1, 5], [5, 0], [0, 0]]
    place_of, groups = group_places(cells, cells % 5, max_groups=8)
    assert place_of.tolist() == [0, 1, 2, 3, 0]
    # (0,0) and (5,0) share a group (5 cells = 50 m apart); first-appearance order
    assert groups == [[0, 3], [1], [2]]
    assert group_places(cells, cells % 5, max_groups=2)[1] == [[0, 3], [1]]
    assert heading_bins(np.radians([0.0, 29.0, 31.0, -1.0, 359.0]), 30.0).tolist() == [0, 0, 1, 11, 11]
    assert heading_bins(np.radians([-40.0, 40.0, 50.0, 180.0]), 90.0, centred=True).tolist() == [0, 0, 1, 2]


def test_initial_split_is_the_official_one():
    labels = initial_split(11, 3, np.random.default_rng(0))
    assert np.bincount(labels).tolist() == [11 - 2 * 3, 3, 3]
    assert initial_split(2, 3, np.random.default_rng(0)).tolist() == [0, 0]  # views 1, 2 stay empty


def planted_views(k=3, per_view=12, dim=32, noise=0.15, seed=0):
    """Descriptors of one cell with k planted views (random unit centres + noise), shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.permutation(np.repeat(np.arange(k), per_view))
    x = centres[truth] + noise * rng.normal(size=(len(truth), dim))
    return x, truth, centres


@pytest.mark.parametrize("k", [3, 6])
def test_reclustering_recovers_planted_views(k):
    for seed in range(3):
        x, truth, _ = planted_views(k=k, seed=seed)
        labels = kmeans_views(x, k, n_init=10, seed=seed)
        assert purity([labels], [truth]) >= 0.9
        assert purity([np.zeros_like(truth)], [truth]) < 0.5  # one cluster: not pure, so the check can fail
    assert kmeans_views(x[:2], 3) is None  # fewer images than clusters: keep the old labels


def test_alignment_keeps_classifier_rows_on_their_views():
    x, truth, centres = planted_views(k=4, seed=1)
    rows = centres + 0.05 * np.random.default_rng(2).normal(size=centres.shape)  # row v learned view v
    labels = kmeans_views(x, 4, seed=5)
    aligned = align_to_rows(x, labels, rows)
    assert (aligned == truth).all()
    assert partition_changes(labels, aligned, 4) == 0  # only a renaming
    assert partition_changes(truth, np.roll(truth, 1), 4) > 0


# --- training -----------------------------------------------------------------------------------------

SMALL = {
    "model.image_size": [96, 72],
    "model.pretrained": True,
    "model.freeze_stages": 5,
    "model.bev.cells": 32,
    "model.lidar_channels": [8, 16],
    "optim.epochs": 3,
    "optim.student_lr": 1e-3,
    "threads": 2,
    "eval_batch_size": 32,
    "progress": False,
    "loss.task": "cosface",
    # the tiny world has few frames: large cells, one group, every cell re-clustered each epoch
    "classify.cell_m": 40.0,
    "classify.views": 2,
    "classify.group_spacing": 1,
    "classify.batch_size": 8,
    "classify.iterations": 6,
    "classify.recluster_fraction": 1.0,
}


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


def config(world, out_dir, **overrides) -> TrainConfig:
    return TrainConfig.from_yaml(None, {**SMALL, "data.root": str(world), "out_dir": str(out_dir), **overrides})


@pytest.mark.parametrize("fixes", [False, True])
def test_mutualvpr_student_trains_and_reports_diagnostics(world, tmp_path, fixes):
    fix = {f"classify.{name}": fixes for name in ("align_labels", "immediate_labels", "cluster_all_first_visit")}
    cfg = config(world, tmp_path, **{"optim.epochs": 6, **fix})
    run = trainer.train_student(cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"method": "none"})}))
    history = json.loads((run / "history.json").read_text())
    losses = [r["train/loss"] for r in history]
    assert losses[-1] < losses[0]
    first = history[0]
    assert first["mutual/reclustered_cells"] > 0
    assert 0.0 <= first["mutual/churn"] <= 1.0 and 0.0 <= first["mutual/purity"] <= 1.0
    assert first["mutual/partition_churn"] <= first["mutual/churn"] + 1e-9
    assert (run / "view_clusters.png").is_file()
    assert load_model(run / "best").input_spec.inputs == ("image",)


def test_heading_bins_and_single_view_baselines_train(world, tmp_path):
    for name, overrides in {"heading": {"classify.labels": "heading", "classify.cell_m": 20.0},
                            "k1": {"classify.views": 1}}.items():
        run = trainer.train_teacher(config(world, tmp_path / name, **{"optim.epochs": 1, **overrides}))
        record = json.loads((run / "history.json").read_text())[0]
        assert "mutual/reclustered_cells" not in record  # nothing to cluster with one view per place
        assert record["train/cosface/fused"] > 0 and record["train/cosface/cloud"] > 0


def test_resume_restores_view_labels_and_classifiers(world, tmp_path):
    full = trainer.train_teacher(config(world, tmp_path / "full", **{"optim.epochs": 2}))
    part = trainer.train_teacher(config(world, tmp_path / "part", **{"optim.epochs": 1}))
    resumed = trainer.train_teacher(config(world, part, **{"optim.epochs": 2, "resume": True}))
    _, a, state_a = load_checkpoint(full / "last", with_train_state=True)
    _, b, state_b = load_checkpoint(resumed / "last", with_train_state=True)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert torch.equal(state_a["task"]["view"], state_b["task"]["view"])
    for ca, cb in zip(state_a["task"]["classifiers"], state_b["task"]["classifiers"]):
        for key in ca:
            assert torch.allclose(ca[key], cb[key], atol=1e-6)


def test_cosface_task_under_distillation(world, tmp_path):
    teacher = trainer.train_teacher(config(world, tmp_path / "teacher", **{"optim.epochs": 1}))
    run = trainer.train_student(config(world, tmp_path / "student", **{
        "distill.teacher": str(teacher / "best"), "distill.method": "sc", "classify.images_per_class": 2}))
    record = json.loads((run / "history.json").read_text())[-1]
    assert record["train/cosface/fused"] > 0
    assert any(key.startswith("train/self/") for key in record)
    assert any(key.startswith("train/cross/") for key in record)


def test_example_config_states_the_defaults():
    from pathlib import Path

    cfg = TrainConfig.from_yaml(Path(__file__).parents[1] / "config" / "mutualvpr.yaml")
    assert cfg.loss.task == "cosface"
    assert cfg.classify == TrainConfig().classify
