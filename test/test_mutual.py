"""MutualVPR: CosFace, geographic classes and groups, view re-clustering, label alignment, training."""

import json

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import CosFaceLoss
from sklearn.metrics import adjusted_rand_score

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
        assert adjusted_rand_score(truth, labels) == 1.0  # sklearn: the planted partition, exactly
        assert purity([labels], [truth]) == 1.0
        assert purity([np.zeros_like(truth)], [truth]) == pytest.approx(1 / k)  # one cluster: the largest view
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


@pytest.fixture(scope="module")
def mutual_runs(world, tmp_path_factory):
    """Six epochs of a MutualVPR student without and with the three fixes (half the cells re-clustered per
    epoch, so ``cluster_all_first_visit`` has something to change): ``{fixes: run folder}``."""
    runs = {}
    for fixes in (False, True):
        fix = {f"classify.{name}": fixes for name in ("align_labels", "immediate_labels", "cluster_all_first_visit")}
        cfg = config(world, tmp_path_factory.mktemp(f"fixes_{fixes}"),
                     **{"optim.epochs": 6, "classify.recluster_fraction": 0.5, **fix})
        runs[fixes] = trainer.train_student(cfg.model_copy(update={"distill": cfg.distill.model_copy(
            update={"method": "none"})}))
    return runs


@pytest.mark.parametrize("fixes", [False, True])
def test_mutualvpr_student_trains_and_reports_diagnostics(mutual_runs, fixes):
    run = mutual_runs[fixes]
    history = json.loads((run / "history.json").read_text())
    losses = [r["train/loss"] for r in history]
    assert losses[-1] < losses[0]
    first = history[0]
    assert first["mutual/reclustered_cells"] > 0
    assert first["mutual/partition_churn"] <= first["mutual/churn"] + 1e-9
    assert (run / "view_clusters.png").is_file()
    assert load_model(run / "best").input_spec.inputs == ("image",)


def test_fixes_do_what_they_promise(mutual_runs):
    """Measured on the fixed seed: every cell clustered on the first visit; aligned labels stop the churn that
    is a mere renaming of clusters (the classifier rows keep their meaning), so labels settle and the loss
    falls further."""
    off, on = (json.loads((mutual_runs[fixes] / "history.json").read_text()) for fixes in (False, True))

    def chosen(record):  # cells picked for re-clustering (K-means skips cells with too few images)
        return record["mutual/reclustered_cells"] + record["mutual/skipped_cells"]

    cells = chosen(on[0])  # first visit with the fix: every cell of the group
    assert chosen(off[0]) == int(cells * 0.5) < cells  # without: recluster_fraction of them
    assert [chosen(r) for r in on[1:]] == [chosen(r) for r in off[1:]] == [int(cells * 0.5)] * 5

    def later(history, key):  # epochs after the first visit: the classifier rows have learned the views
        return np.array([r[key] for r in history[1:]])

    renaming_off = later(off, "mutual/churn") - later(off, "mutual/partition_churn")
    renaming_on = later(on, "mutual/churn") - later(on, "mutual/partition_churn")
    assert renaming_off.max() > 0.5  # without alignment some epoch renames most clusters
    assert renaming_on.max() < 0.05
    assert later(on, "mutual/churn").mean() < 0.5 * later(off, "mutual/churn").mean()
    assert on[-1]["train/loss"] < off[-1]["train/loss"]


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


# --- the task's re-clustering and the three fixes, on planted views (no model) ------------------------


class StubRun:
    """A run of ``len(yaws)`` frames at ``positions`` heading ``yaws``."""

    def __init__(self, positions, yaws):
        self.poses = np.tile(np.eye(4), (len(yaws), 1, 1))
        self.poses[:, 0, 0], self.poses[:, 1, 0] = np.cos(yaws), np.sin(yaws)
        self.poses[:, 0, 1], self.poses[:, 1, 1] = -np.sin(yaws), np.cos(yaws)
        self.poses[:, :2, 3] = positions


class StubData:
    """What ``ClassificationTask`` reads from ``TrainingData``: the frames, and their descriptors, which
    here are planted: frames heading east are near ``EAST``, frames heading west near ``WEST``."""

    EAST, WEST = np.eye(8)[0], np.eye(8)[1]

    def __init__(self, cells=4, per_cell=12, seed=0):
        rng = np.random.default_rng(seed)
        positions = np.repeat(np.arange(cells) * 10.0 + 5.0, per_cell)[:, None] * np.array([[1.0, 0.0]])
        self.west = np.tile(np.arange(per_cell) % 2 == 1, cells)
        run = StubRun(positions, np.where(self.west, np.pi, 0.0))
        self.train_store = type("Store", (), {"sequences": [run], "positions": positions})()
        centres = np.where(self.west[:, None], self.WEST, self.EAST)
        self.descriptors = torch.from_numpy(centres + 0.05 * rng.normal(size=centres.shape)).float()

    def embed(self, model, indices, batch_size):
        return {"fused": self.descriptors[list(indices)]}


def stub_task(fraction=0.25, **fixes):
    from distilvpr_ros.training.tasks.classification import ClassificationTask

    cfg = TrainConfig.from_yaml(None, {"loss.task": "cosface", "classify.cell_m": 10.0, "classify.views": 2,
                                       "classify.group_spacing": 1, "classify.recluster_fraction": fraction,
                                       "classify.batch_size": 4, **{f"classify.{k}": v for k, v in fixes.items()}})
    data = StubData()
    return ClassificationTask(cfg, data, {"fused": 1.0}, model=None), data


def brute_force_partition_changes(old, new, k):
    """Images that changed cluster, up to the best renaming (every permutation tried)."""
    from itertools import permutations

    return min(int((np.asarray(perm)[new] != old).sum()) for perm in permutations(range(k)))


def test_recluster_diagnostics_match_reference_computations():
    from sklearn.metrics.cluster import contingency_matrix

    from distilvpr_ros.training.tasks import Task

    task, data = stub_task(fraction=1.0)
    assert isinstance(task, Task)  # what the trainer relies on
    before = task.view.copy()
    record = task.start_epoch(0, None, data, None)
    after = task.view
    images = task.group_images(0)
    assert record["mutual/reclustered_cells"] == 4 and record["mutual/skipped_cells"] == 0
    assert record["mutual/churn"] == pytest.approx(np.mean(before[images] != after[images]))
    moved = sum(brute_force_partition_changes(before[task.images_of[p]], after[task.images_of[p]], 2)
                for p in task.groups[0])
    assert record["mutual/partition_churn"] == pytest.approx(moved / len(images))
    # the planted views are the true headings: every new cluster is one heading (purity 1), and purity
    # equals sklearn's contingency-matrix definition per cell
    expected = sum(contingency_matrix(task.true_heading[task.images_of[p]], after[task.images_of[p]]).max(axis=0).sum()
                   for p in task.groups[0]) / len(images)
    assert record["mutual/purity"] == pytest.approx(expected) == 1.0
    assert record["mutual/group_purity"] == 1.0
    before_purity = purity([before[task.images_of[p]] for p in task.groups[0]],
                           [task.true_heading[task.images_of[p]] for p in task.groups[0]])
    assert before_purity < 1.0  # the random initial split mixes headings, so purity 1 is the clustering's work
    assert (record["mutual/cluster_size_min"], record["mutual/cluster_size_max"]) == (6, 6)


def test_align_labels_names_clusters_after_the_classifier_rows():
    for align in (False, True):
        flips = 0
        for seed_epoch in range(4):
            task, data = stub_task(fraction=1.0, align_labels=align)
            rows = task.classifiers[0]["fused"].weight
            with torch.no_grad():  # row 2r holds cell r's view 0 (east), row 2r + 1 its view 1 (west)
                rows[0::2] = torch.from_numpy(StubData.EAST).float()
                rows[1::2] = torch.from_numpy(StubData.WEST).float()
            task.start_epoch(seed_epoch, None, data, None)
            if align:  # exactly the rows' naming, whatever k-means called the clusters
                np.testing.assert_array_equal(task.view, data.west.astype(np.int64))
            flips += int((task.view != data.west).any())
        if not align:
            assert flips > 0  # raw k-means indices: some cells come out with the other naming


def test_cluster_all_first_visit_and_immediate_labels():
    off, data = stub_task(fraction=0.25)
    on, _ = stub_task(fraction=0.25, cluster_all_first_visit=True)
    assert off.start_epoch(0, None, data, None)["mutual/reclustered_cells"] == 1  # ⌊4 × 0.25⌋
    assert on.start_epoch(0, None, data, None)["mutual/reclustered_cells"] == 4  # first visit: every cell
    assert on.start_epoch(1, None, data, None)["mutual/reclustered_cells"] == 1  # later visits: the fraction

    for immediate in (False, True):
        task, data = stub_task(fraction=1.0, immediate_labels=immediate)
        before = task.view.copy()
        task.start_epoch(0, None, data, None)
        assert (task.view != before).any()
        first_pass = task.batches(0)[:2]  # 8 classes in batches of 4: the first pass is two batches
        picks = np.concatenate([batch.indices for batch in first_pass])
        labels = np.concatenate([batch.labels for batch in first_pass])
        assert (task.class_of(picks, before) != task.class_of(picks, task.view)).any()  # the two can differ
        np.testing.assert_array_equal(labels, task.class_of(picks, task.view if immediate else before))
