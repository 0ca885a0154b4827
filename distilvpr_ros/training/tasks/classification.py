"""MutualVPR: geographic classes split into view clusters that follow the encoder (``reference/mutualvpr.md``).

Classes (§2.1–2.3, §7.1):

* a **place** is a UTM cell of side M = 10 m (``labels: views``) or, for the CosPlace baseline, a
  (cell, heading bin of α = 30°) triple (``labels: heading``);
* the **group** of a place is (cell_e mod N, cell_n mod N) (N = 5; with heading bins also h mod L,
  L = 2); only the first ``groups`` (8) groups in order of first appearance are used, one per epoch
  in rotation, each with its own CosFace classifier and Adam state; the inactive ones are not touched;
* with ``labels: views`` each place has K view sub-classes, first a random split (sub-classes 1..K−1
  get ⌊n/K⌋ random images each, sub-class 0 the rest); class = (place, view); K = 1 is "no view split".

The mutual-learning alternation (§2.4), at the start of every epoch: sample ⌊cells/5⌋ of the current
group's cells, embed all their images with the current model (eval mode, clean inputs), K-means them
(scikit-learn, n_init 10) and replace the cell's labels when all K clusters are non-empty. As in the
official code the raw cluster indices become the labels (the classifier rows re-learn), and the new
labels take effect only after one pass over the classes (its loader was built before re-clustering).
Three switches fix that code's flaws (§8): ``align_labels`` (Hungarian matching of new clusters to the
classifier rows by centroid-row cosine), ``cluster_all_first_visit``, ``immediate_labels``.
K-means is seeded from (seed, epoch, cell) here so runs are reproducible (the official code is not).

Steps (§2.5): batches of distinct classes of the current group, one random image each (uniform over
classes), ``iterations`` per epoch; ``images_per_class: 2`` draws two images per class instead, which
gives batches positives for mask-based distillation losses.

Diagnostics per epoch (``history.json`` under ``mutual/``): re-clustered cells, label churn (images
whose label changed; ``partition_churn`` ignores a mere renaming of clusters), purity of the new
clusters and of the whole group's labels against true heading bins (90°, centred on the compass axes),
cluster sizes; ``view_clusters.png`` shows heading histograms per cluster for a few cells.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from ...losses.cosface import CosFaceClassifier
from .base import TaskBatch
from .geo_classes import (align_to_rows, group_places, heading_bins, initial_split, kmeans_views, partition_changes,
                          place_cells, pose_yaws, purity)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import TrainingData

log = logging.getLogger(__name__)

PLOT_FILE = "view_clusters.png"


class ClassificationTask:
    """CosFace classification on MutualVPR view clusters or CosPlace heading bins (see module doc)."""

    needs_triplets = False

    def __init__(self, cfg: "TrainConfig", data: "TrainingData", heads: Mapping[str, float], model):
        self.cfg = cfg.classify
        self.seed = cfg.seed
        self.eval_batch_size = cfg.eval_batch_size
        self.heads = {head: float(w) for head, w in heads.items() if w != 0}
        store = data.train_store
        poses = np.concatenate([np.asarray(seq.poses) for seq in store.sequences])
        yaws = pose_yaws(poses)
        cells = place_cells(store.positions, self.cfg.cell_m)
        n = self.cfg.group_spacing
        if self.cfg.labels == "heading":
            bins = heading_bins(yaws, self.cfg.heading_bin_deg)
            place_keys = np.column_stack([cells, bins])
            group_keys = np.column_stack([cells % n, bins % self.cfg.heading_groups])
            self.k = 1
        else:
            place_keys, group_keys = cells, cells % n
            self.k = self.cfg.views
        self.place_of, self.groups = group_places(place_keys, group_keys, self.cfg.groups)
        self.true_heading = heading_bins(yaws, self.cfg.purity_bin_deg, centred=True)
        self.images_of = [np.flatnonzero(self.place_of == p) for p in range(self.place_of.max() + 1)]
        #: per place: its rank within its group (classifier rows rank*K .. rank*K + K − 1)
        self.rank = np.full(len(self.images_of), -1, dtype=np.int64)
        for places in self.groups:
            self.rank[places] = np.arange(len(places))
        rng = np.random.default_rng([self.seed, 0x6D76])
        self.view = np.zeros(len(self.place_of), dtype=np.int64)
        for images in self.images_of:
            self.view[images] = initial_split(len(images), self.k, rng)
        self.visited: set[int] = set()
        self._pass_labels: np.ndarray | None = None  # labels of the epoch's first pass (delayed labels)
        dims = self._head_dims(model, data)
        self.classifiers = [torch.nn.ModuleDict({
            head: CosFaceClassifier(len(places) * self.k, dims[head], self.cfg.scale, self.cfg.margin)
            for head in self.heads}) for places in self.groups]
        self._optimizers = [torch.optim.Adam(c.parameters(), lr=self.cfg.classifier_lr) for c in self.classifiers]
        self.group = 0
        log.info("classification task: %d places in %d groups (%s), %d classes per group on average",
                 sum(len(g) for g in self.groups), len(self.groups), self.cfg.labels,
                 int(np.mean([len(g) for g in self.groups])) * self.k)

    @staticmethod
    def _head_dims(model, data) -> dict[str, int]:
        outputs = data.embed(model, [0], batch_size=1)
        return {head: value.shape[1] for head, value in outputs.items()}

    # --- per epoch ---

    def group_of_epoch(self, epoch: int) -> int:
        return epoch % len(self.groups)

    def group_images(self, group: int) -> np.ndarray:
        return np.concatenate([self.images_of[p] for p in self.groups[group]])

    def class_of(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Class index within its group of each image (under ``labels``, default the current views)."""
        views = self.view if labels is None else labels
        return self.rank[self.place_of[images]] * self.k + views[images]

    def start_epoch(self, epoch: int, model, data, env) -> dict[str, float]:
        """Re-cluster part of this epoch's group with the current model; returns the diagnostics."""
        self.group = self.group_of_epoch(epoch)
        self._pass_labels = None if self.cfg.immediate_labels else self.view.copy()
        record: dict[str, float] = {"mutual/group": self.group}
        if self.k > 1:
            record.update(self._recluster(epoch, model, data))
        images = self.group_images(self.group)
        own = [self.images_of[p] for p in self.groups[self.group]]
        record["mutual/group_purity"] = purity([self.view[i] for i in own], [self.true_heading[i] for i in own])
        sizes = np.bincount(self.class_of(images), minlength=len(self.groups[self.group]) * self.k)
        record.update({"mutual/class_size_min": int(sizes.min()), "mutual/class_size_median": float(np.median(sizes)),
                       "mutual/class_size_max": int(sizes.max()), "mutual/empty_classes": int((sizes == 0).sum())})
        self.visited.add(self.group)
        return record

    def _recluster(self, epoch: int, model, data) -> dict[str, float]:
        places = self.groups[self.group]
        rng = np.random.default_rng([self.seed, epoch, 0x6B6D])
        if self.cfg.cluster_all_first_visit and self.group not in self.visited:
            chosen = list(places)
        else:
            count = int(len(places) * self.cfg.recluster_fraction)
            chosen = rng.choice(places, size=count, replace=False).tolist() if count else []
        if not chosen:
            return {"mutual/reclustered_cells": 0}
        images = np.concatenate([self.images_of[p] for p in chosen])
        descriptors = data.embed(model, images.tolist(), self.eval_batch_size)["fused"].numpy()
        offset, changed, moved, done, skipped = 0, 0, 0, 0, 0
        new_clusters, truths, sizes = [], [], []
        for place in chosen:
            own = self.images_of[place]
            desc = descriptors[offset : offset + len(own)]
            offset += len(own)
            labels = kmeans_views(desc, self.k, self.cfg.kmeans_n_init, seed=int(rng.integers(2**31)))
            if labels is None:
                skipped += 1
                continue
            if self.cfg.align_labels:
                first = self.rank[place] * self.k
                rows = self.classifiers[self.group]["fused" if "fused" in self.heads else next(iter(self.heads))]
                labels = align_to_rows(desc, labels, rows.weight.detach()[first : first + self.k].numpy())
            old = self.view[own]
            changed += int((labels != old).sum())
            moved += partition_changes(old, labels, self.k)
            self.view[own] = labels
            done += 1
            new_clusters.append(labels)
            truths.append(self.true_heading[own])
            sizes += np.bincount(labels, minlength=self.k).tolist()
        total = sum(len(c) for c in new_clusters)
        return {
            "mutual/reclustered_cells": done,
            "mutual/skipped_cells": skipped,
            "mutual/churn": changed / total if total else float("nan"),
            "mutual/partition_churn": moved / total if total else float("nan"),
            "mutual/purity": purity(new_clusters, truths),
            "mutual/cluster_size_min": int(min(sizes)) if sizes else 0,
            "mutual/cluster_size_max": int(max(sizes)) if sizes else 0,
        }

    # --- batches and loss ---

    def batches(self, epoch: int) -> list[TaskBatch]:
        """This epoch's steps: passes over the group's non-empty classes in random order, batched."""
        images = self.group_images(self.group)
        per_class = self.cfg.images_per_class
        size = self.cfg.batch_size // per_class
        steps = self.cfg.iterations or max(1, math.ceil(len(images) / self.cfg.batch_size))
        rng = np.random.default_rng([self.seed, epoch, 0x6261])
        out: list[TaskBatch] = []
        pass_index = 0
        while len(out) < steps:
            labels = self.view if (pass_index or self._pass_labels is None) else self._pass_labels
            classes = self.class_of(images, labels)
            members = {c: images[classes == c] for c in np.unique(classes)}
            order = rng.permutation(sorted(members))
            batch_classes = min(size, len(order))
            for start in range(0, len(order) - batch_classes + 1, batch_classes):
                chosen = order[start : start + batch_classes]
                picks, picked_labels = [], []
                for c in chosen:
                    pool = members[c]
                    draw = rng.choice(pool, size=per_class, replace=len(pool) < per_class)
                    picks += draw.tolist()
                    picked_labels += [c] * per_class
                out.append(TaskBatch(picks, np.asarray(picked_labels, dtype=np.int64)))
                if len(out) == steps:
                    break
            pass_index += 1
        return out

    def loss(self, outputs: dict[str, torch.Tensor], batch: TaskBatch, pos=None, neg=None):
        labels = torch.as_tensor(batch.labels)
        classifiers = self.classifiers[self.group]
        total, terms = 0.0, {}
        for head, weight in self.heads.items():
            classifier = classifiers[head]
            loss = classifier(outputs[head], labels)
            total = total + weight * loss
            terms[f"cosface/{head}"] = float(loss.detach())
            with torch.no_grad():
                terms[f"accuracy/{head}"] = float((classifier.cosine(outputs[head]).argmax(1) == labels).float().mean())
        terms["task"] = float(total.detach())
        return total, terms

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Only the current group's classifier optimizer steps (the others stay untouched)."""
        return [self._optimizers[self.group]]

    # --- resume and diagnostics ---

    def state_dict(self) -> dict:
        return {"view": torch.from_numpy(self.view.copy()), "visited": sorted(self.visited),
                "classifiers": [c.state_dict() for c in self.classifiers],
                "optimizers": [o.state_dict() for o in self._optimizers]}

    def load_state_dict(self, state: dict) -> None:
        self.view = state["view"].numpy().astype(np.int64)
        self.visited = set(int(g) for g in state["visited"])
        for classifier, weights in zip(self.classifiers, state["classifiers"]):
            classifier.load_state_dict(weights)
        for optimizer, opt_state in zip(self._optimizers, state["optimizers"]):
            optimizer.load_state_dict(opt_state)

    def write_diagnostics(self, run_dir: Path, cells: int = 6) -> None:
        """Heading histograms per view cluster for the ``cells`` largest places of the current group."""
        if self.k == 1:
            return
        plot_view_clusters(self, Path(run_dir) / PLOT_FILE, cells)


def plot_view_clusters(task: ClassificationTask, path: Path, cells: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    places = sorted(task.groups[task.group], key=lambda p: -len(task.images_of[p]))[:cells]
    bins = int(math.ceil(360.0 / task.cfg.purity_bin_deg))
    fig, axes = plt.subplots(1, len(places), figsize=(2.6 * len(places), 2.6), squeeze=False)
    for ax, place in zip(axes[0], places):
        images = task.images_of[place]
        for view in range(task.k):
            counts = np.bincount(task.true_heading[images[task.view[images] == view]], minlength=bins)
            ax.bar(np.arange(bins) + view / (task.k + 1), counts, width=1 / (task.k + 1), label=f"view {view}")
        ax.set(title=f"cell {place} ({len(images)} img)", xlabel="true heading bin", xticks=range(bins))
    axes[0][0].set_ylabel("images")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"view clusters of group {task.group}: true heading ({task.cfg.purity_bin_deg:.0f}° bins) per cluster")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
