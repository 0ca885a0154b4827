"""Teacher training and DistilVPR distillation (``reference/distilvpr.md`` §1, §3.5, §4).

``train_teacher(cfg)``: the camera+LiDAR teacher with 0.5·triplet(fused) + 0.5·triplet(cloud), Adam with
image lr 1e-4 and LiDAR lr 1e-3. ``train_student(cfg)`` (alias ``distill``): the teacher is loaded
frozen, embeds every training frame **once** (clean by default, one augmented draw as the official code
with ``distill.teacher_cache: augmented``), then a camera (or LiDAR) student trains with
0.5·triplet(s) + weight·distill(s, cached t) under the same geographic masks. Both share ``fit``:

* batches and the task loss from a task (the ``training.tasks.Task`` protocol): ``PairBatchSampler`` pairs +
  triplet, or MutualVPR/CosPlace classification (``training.tasks.classification``, ``loss.task: cosface``);
  frames and datasets from ``training.data.TrainingData``; masks from
  ``TrainingGroundTruth.batch_masks``; batches without any triplet are skipped before the forward;
* with ``feature_cache.enabled`` and frozen image stages, the frozen trunk runs once per image and the
  steps run only the trainable tail (``ImageEncoder.frozen_input``); with ``feature_cache.dir`` those
  features and the teacher embeddings are kept on disk for later runs (other seeds and methods);
* after every epoch: cross-run AR@1 on the **validation** region (never the test split) → ``best/``
  (highest ``val/recall@1``) and ``last/`` checkpoints; ``last/`` also holds the optimizer, scheduler
  and RNG state, and ``cfg.resume`` continues from it to the same weights an uninterrupted run reaches;
* ``history.json`` (per-epoch loss terms, validation metrics, seconds and seconds per step),
  ``training.png`` and ``config.yaml`` in the run folder; tqdm bars with the running loss;
* under ``torchrun`` the same functions train with DDP (``training.distributed``), e.g.
  ``torchrun --nproc_per_node 2 -m distilvpr_ros.cli train-teacher --config cfg.yaml --out runs/t``.

Randomness: the model is initialised from ``cfg.seed``; the sampler draws from (seed, epoch), and each
element's augmentation from (seed, epoch, element), so nothing depends on RNG state carried across
epochs and a resumed run replays the remaining epochs exactly.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..config import dump_config
from ..data.ground_truth import cross_run_pairs
from ..evaluation.metrics import average_recalls, recall_at_n
from ..losses import make_distill_loss
from ..models import build_model, l2_normalize
from ..models.checkpoint import load_checkpoint, load_model, read_checkpoint_meta, save_model_checkpoint
from ..models.inference import run_in_batches
from ..models.vpr import VprModel
from ..utils.results import make_run_dir, write_json
from .augment import ImageAugment, PointAugment
from .config import TrainConfig
from .data import (FrameStore, TrainingData, VprDataset, disk_cached, frames_fingerprint, frozen_features,
                   reachable_radius, taking_features, uses_feature_cache, weights_fingerprint)
from .distributed import DistEnv, gather_batch, init_distributed, shard, shutdown_distributed, wrap_model
from .relation_pairs import RelationPairs
from .tasks import Task, TaskBatch, make_task

log = logging.getLogger(__name__)

SELECTION_METRIC = "val/recall@1"
BEST, LAST = "best", "last"
HISTORY_FILE, PLOT_FILE, CONFIG_FILE = "history.json", "training.png", "config.yaml"
#: Generator "epoch" key of the augmented teacher-cache draw (apart from every training epoch).
TEACHER_CACHE_EPOCH = 1 << 30

#: ``loss_fn(outputs, batch, pos_mask, neg_mask) -> (loss, terms)`` on the global batch (``TaskBatch``).
LossFn = Callable[[dict[str, torch.Tensor], TaskBatch, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


# --- public entry points -------------------------------------------------------------------------------


def train_teacher(cfg: TrainConfig, train_sequences=None, val_sequences=None) -> Path:
    """Train the camera+LiDAR teacher; returns the run folder (``best/``, ``last/``, history, plot).

    ``train_sequences`` / ``val_sequences`` (lists of ``Sequence``) replace the ones ``cfg.data`` names.
    """
    with _session(cfg) as env:
        model = build_model("teacher", cfg.model)
        lidar_init = cfg.teacher.lidar_init
        if lidar_init is None and cfg.teacher.lidar_warmup_epochs > 0:
            if cfg.out_dir is None:  # one run folder for both stages
                cfg = cfg.model_copy(update={"out_dir": _run_dir(cfg, "train_teacher", env)})
            lidar_init = _lidar_warmup(cfg, env, train_sequences, val_sequences)
        if lidar_init is not None:
            load_lidar_branch(model, lidar_init)
        if cfg.teacher.lidar_freeze:
            freeze_branch(model.lidar_encoder)
        data = TrainingData(cfg, model, train_sequences, val_sequences)
        task = make_task(cfg, data, cfg.loss.teacher_heads, model)
        groups = [{"params": _trainable(model.image_encoder), "lr": cfg.optim.image_lr}]
        if not cfg.teacher.lidar_freeze:
            groups.append({"params": _trainable(model.lidar_encoder), "lr": cfg.optim.cloud_lr})
        if cfg.model.fusion == "learned_concat":
            groups.append({"params": [model.fusion_logit], "lr": cfg.teacher.fusion_lr})
        return fit(cfg, env, "train_teacher", model, groups, task, data)


LIDAR_WARMUP_DIR = "lidar_warmup"


def _lidar_warmup(cfg: TrainConfig, env: DistEnv, train_sequences, val_sequences) -> Path:
    """Stage 1 of the two-stage teacher (``cfg.out_dir`` set): the LiDAR branch alone, trained as a
    ``cloud_dim`` LiDAR student.

    Returns its ``best`` checkpoint folder (``<run>/lidar_warmup/best``); a finished warm-up found there
    (its ``last/`` at the warm-up's epoch count) is reused, so ``resume`` does not repeat it.
    """
    out = Path(cfg.out_dir) / LIDAR_WARMUP_DIR
    epochs = cfg.teacher.lidar_warmup_epochs
    if (out / LAST).is_dir() and read_checkpoint_meta(out / LAST).get("epoch") == epochs:
        return out / BEST
    warm_cfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"student_dim": cfg.model.cloud_dim}),
        "optim": cfg.optim.model_copy(update={"epochs": epochs, "student_lr": cfg.teacher.lidar_warmup_lr,
                                              "milestones": [max(1, int(0.7 * epochs))]}),
        "out_dir": out, "resume": cfg.resume and (out / LAST).is_dir()})
    student = build_model("lidar_student", warm_cfg.model)
    data = TrainingData(warm_cfg, student, train_sequences, val_sequences)
    task = make_task(warm_cfg, data, warm_cfg.loss.student_heads, student)
    groups = [{"params": _trainable(student), "lr": warm_cfg.optim.student_lr}]
    fit(warm_cfg, env, "lidar_warmup", student, groups, task, data)
    return out / BEST


def load_lidar_branch(teacher: VprModel, path: Path) -> None:
    """Copy the LiDAR encoder of the checkpoint at ``path`` (a teacher, or a ``lidar_student`` whose
    descriptor size is the teacher's ``cloud_dim``) into ``teacher.lidar_encoder``; shapes must match."""
    source = load_model(path)
    if source.kind not in ("teacher", "lidar_student"):
        raise ValueError(f"{path}: a {source.kind} has no LiDAR branch")
    if source.cfg.lidar_encoder != teacher.cfg.lidar_encoder:
        raise ValueError(f"{path}: its LiDAR encoder is {source.cfg.lidar_encoder}, the teacher's "
                         f"{teacher.cfg.lidar_encoder}")
    teacher.lidar_encoder.load_state_dict(source.lidar_encoder.state_dict())


def freeze_branch(module: torch.nn.Module) -> None:
    """Keep ``module`` as it is while the rest of its model trains (``teacher.lidar_freeze``): no gradients,
    and eval mode (BatchNorm uses and keeps its running statistics) at every forward, also after the
    model's ``train()``."""
    module.requires_grad_(False)
    module.eval()
    module.register_forward_pre_hook(_stay_in_eval)


def _stay_in_eval(module: torch.nn.Module, _args) -> None:
    if module.training:
        module.eval()


def train_student(cfg: TrainConfig, train_sequences=None, val_sequences=None) -> Path:
    """Distil the teacher at ``cfg.distill.teacher`` into ``cfg.distill.student``; returns the run folder."""
    method = cfg.distill.method
    if cfg.distill.teacher is None and method != "none":
        raise ValueError("distill.teacher is not set (a teacher checkpoint folder, e.g. <run>/best); "
                         "distill.method=none trains the student on the task loss alone")
    with _session(cfg) as env:
        teacher = None
        if cfg.distill.teacher is not None:  # loaded first: its construction draws from the seeded RNG
            teacher = load_model(cfg.distill.teacher, expect_kind="teacher").requires_grad_(False)
        model = build_model(cfg.distill.student, cfg.model)
        if method != "none" and teacher.input_spec.descriptor_dim != model.input_spec.descriptor_dim:
            raise ValueError(f"teacher descriptors are {teacher.input_spec.descriptor_dim}-d, the student's "
                             f"{model.input_spec.descriptor_dim}-d: relational losses need equal sizes")
        data = TrainingData(cfg, model, train_sequences, val_sequences)
        teacher_descriptors = None
        if method != "none":
            teacher_descriptors = compute_teacher_cache(teacher, cfg, data.train_sequences, env)
        task = make_task(cfg, data, cfg.loss.student_heads, model)
        distill_loss = make_distill_loss(method, **cfg.distill.loss_kwargs())
        pairs = None
        if cfg.distill.relation_pairs != "all":
            pairs = RelationPairs.from_config(cfg.distill, data.train_sequences)
        steps = 0

        def loss_fn(outputs, batch, pos, neg):
            nonlocal steps
            loss, terms = task.loss(outputs, batch, pos, neg)
            if teacher_descriptors is not None:
                teacher_batch = teacher_descriptors[batch.indices]
                extra = {} if pairs is None else {"pair_weights": pairs.weights(batch.indices)}
                kd, kd_terms = distill_loss(outputs["fused"], teacher_batch, pos, neg, **extra)
                if every := cfg.distill.grad_norm_every:
                    if steps % every == 0:
                        kd_terms.update(_grad_norms(outputs["fused"], loss, distill_loss, cfg.distill.weight,
                                                    kd, teacher_batch, extra.get("pair_weights")))
                loss = loss + cfg.distill.weight * kd
                terms.update(kd_terms)
            steps += 1
            return loss, terms

        groups = [{"params": _trainable(model), "lr": cfg.optim.student_lr}]
        return fit(cfg, env, "distill", model, groups, task, data, loss_fn)


distill = train_student


def _grad_norms(student: torch.Tensor, task_loss: torch.Tensor, distill_loss, weight: float, kd: torch.Tensor,
                teacher: torch.Tensor, pair_weights: torch.Tensor | None) -> dict[str, float]:
    """‖∂term/∂(student descriptors)‖ of the task loss, the weighted distillation total and, for
    DistilVPR, each of its weighted terms; keyed "grad/<term>". (Terms are logged as epoch means of the
    steps that measured them, like every other term.)"""
    parts = {"grad/task": task_loss, "grad/distill": weight * kd}
    if hasattr(distill_loss, "weighted_terms"):
        parts.update({f"grad/{k}": weight * v
                      for k, v in distill_loss.weighted_terms(student, teacher, pair_weights).items()})
    norms = {}
    for key, value in parts.items():
        if not value.requires_grad:
            continue
        (grad,) = torch.autograd.grad(value, student, retain_graph=True, allow_unused=True)
        norms[key] = float(grad.norm()) if grad is not None else 0.0
    return norms


# --- setup --------------------------------------------------------------------------------------------


@contextmanager
def _session(cfg: TrainConfig) -> Iterator[DistEnv]:
    """Threads, seeds and (under torchrun) the process group, torn down afterwards."""
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    env = init_distributed()
    try:
        yield env
    finally:
        shutdown_distributed(env)


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def compute_teacher_cache(teacher: VprModel, cfg: TrainConfig, sequences, env: DistEnv) -> torch.Tensor:
    """Raw teacher descriptors (``N x D``) of every training frame, computed once before training.

    ``distill.teacher_cache``: "clean" embeds unaugmented inputs; "augmented" embeds one augmented draw
    per frame, as the official code does (its caching loader reads the training dataset). Kept in
    ``feature_cache.dir`` across runs when that is set.
    """
    augmented = cfg.distill.teacher_cache == "augmented"
    key = {"kind": "teacher_embeddings", "weights": weights_fingerprint([teacher]),
           "frames": frames_fingerprint(sequences), "mode": cfg.distill.teacher_cache,
           "seed": cfg.seed if augmented else None,
           "augment": cfg.augment.model_dump(mode="json") if augmented else None}
    return disk_cached(cfg.feature_cache.dir, key, lambda: _embed_teacher(teacher, cfg, sequences, env, augmented))


def _embed_teacher(teacher: VprModel, cfg: TrainConfig, sequences, env: DistEnv, augmented: bool) -> torch.Tensor:
    spec = teacher.input_spec
    point_augment = PointAugment(cfg.augment) if augmented and cfg.augment.points else None
    image_augment = ImageAugment(cfg.augment) if augmented and cfg.augment.image else None
    keep_clouds = reachable_radius(spec.bev, point_augment) if point_augment is not None else None
    store = FrameStore(sequences, spec.image_size, spec.bev, keep_clouds)
    cached = image_augment is None and uses_feature_cache(cfg, teacher)
    features = frozen_features(cfg, teacher.image_encoder, store) if cached else None
    dataset = VprDataset(store, spec.inputs, cfg.seed, image_augment, point_augment, features)
    dataset.set_epoch(TEACHER_CACHE_EPOCH)
    with taking_features(teacher, cached):
        out = run_in_batches(teacher, len(dataset), cfg.eval_batch_size, _fused_step(teacher, dataset),
                             progress=cfg.progress and env.is_main, desc="teacher cache")
    return torch.cat(out)


def _fused_step(model: VprModel, dataset: VprDataset) -> Callable[[range], torch.Tensor]:
    """A ``run_in_batches`` step: the raw ``"fused"`` output of ``model`` on some elements of ``dataset``."""
    def step(items: range) -> torch.Tensor:
        batch = dataset.batch(items)
        return model(**{name: batch[name] for name in model.input_spec.inputs})["fused"]
    return step


# --- evaluation ---------------------------------------------------------------------------------------


def validate(model: VprModel, data: TrainingData, cfg: TrainConfig) -> dict[str, float]:
    """Cross-run retrieval on the validation frames: AR@N over ordered run pairs, ``val/``-prefixed.

    The same numbers as ``evaluation.evaluate.evaluate_sequences`` (overall block), from the metric
    functions themselves: Recall@N per ordered (database, query) run pair, averaged over pairs.
    """
    with data.model_inputs(model):
        descriptors = run_in_batches(model, len(data.val), cfg.eval_batch_size, _fused_step(model, data.val))
    descriptors = l2_normalize(torch.cat(descriptors).numpy())
    offsets = np.cumsum([0] + [len(seq) for seq in data.val_sequences])
    per_run = [descriptors[offsets[r] : offsets[r + 1]] for r in range(len(data.val_sequences))]
    per_pair = [recall_at_n(per_run[pair.query] @ per_run[pair.database].T, pair.true_matches)
                for pair in cross_run_pairs(list(data.val_sequences), cfg.ground_truth)]
    metrics = average_recalls(per_pair)
    if not metrics["num_pairs"]:
        raise ValueError("validation needs at least two runs (cross-run evaluation)")
    return {f"val/{key}": value for key, value in metrics.items() if key.startswith("recall@")} | {
        "val/num_pairs": int(metrics["num_pairs"])}


# --- the loop -----------------------------------------------------------------------------------------


def fit(cfg: TrainConfig, env: DistEnv, name: str, model: VprModel, param_groups: list[dict], task: Task,
        data: TrainingData, loss_fn: LossFn | None = None) -> Path:
    """Train ``model`` for ``cfg.optim.epochs`` epochs; returns the run folder.

    ``task`` (``training.tasks``) gives each epoch's batches and the task loss; ``loss_fn`` replaces
    ``task.loss`` (e.g. task + distillation). Each step: the global batch, this rank's slice of it
    through the model, the slices gathered back into the global batch, ``loss_fn`` on it, backward,
    Adam steps on the model and on the task's own parameters (classifiers).
    """
    loss_fn = loss_fn or task.loss
    run_dir = _run_dir(cfg, name, env)
    optimizer = torch.optim.Adam(param_groups, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.optim.milestones, gamma=cfg.optim.gamma)
    history: list[dict] = []
    best = -np.inf
    if cfg.resume:
        history, best = _restore(run_dir / LAST, model, optimizer, scheduler, task)
    train_model = wrap_model(model, env)

    for epoch in range(len(history), cfg.optim.epochs):
        started = time.perf_counter()
        record = {"epoch": epoch + 1, **task.start_epoch(epoch, model, data, env)}
        data.train.set_epoch(epoch)
        train_model.train()
        lrs = [group["lr"] for group in optimizer.param_groups]
        optimizers = [optimizer, *task.optimizers()]
        terms_sum: dict[str, float] = defaultdict(float)
        terms_count: dict[str, int] = defaultdict(int)
        step_losses: list[float] = []
        skipped, step_seconds = 0, 0.0
        bar = tqdm(task.batches(epoch), desc=f"{name} epoch {epoch + 1}/{cfg.optim.epochs}",
                   disable=not (cfg.progress and env.is_main), leave=False)
        for batch in bar:
            step_start = time.perf_counter()
            pos, neg = (torch.from_numpy(m) for m in data.ground_truth.batch_masks(batch.indices))
            if task.needs_triplets and not (pos.any(dim=1) & neg.any(dim=1)).any():
                skipped += 1
                continue
            inputs = data.train.batch(shard(batch.indices, env))
            with data.model_inputs(model):
                outputs = train_model(**{key: inputs[key] for key in model.input_spec.inputs})
            loss, terms = loss_fn(gather_batch(outputs, env), batch, pos, neg)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            (loss * env.loss_scale).backward()
            _unscale_task_grads(task, env)
            for opt in optimizers:
                opt.step()
            step_seconds += time.perf_counter() - step_start
            terms["loss"] = float(loss.detach())
            step_losses.append(terms["loss"])
            for key, value in terms.items():
                terms_sum[key] += value
                terms_count[key] += 1
            bar.set_postfix(loss=f"{terms['loss']:.4f}", s_per_step=f"{step_seconds / len(step_losses):.2f}")
        scheduler.step()

        steps = max(len(step_losses), 1)
        record.update({"steps": len(step_losses), "skipped_batches": skipped, "lr": lrs})
        record.update({f"train/{key}": value / terms_count[key] for key, value in terms_sum.items()})
        record["seconds_per_step"] = step_seconds / steps
        record["step_losses"] = step_losses
        if env.is_main:
            record.update(validate(model, data, cfg))
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            if record[SELECTION_METRIC] > best:
                best = record[SELECTION_METRIC]
                _save(run_dir / BEST, model, cfg, epoch + 1, record)
            _save(run_dir / LAST, model, cfg, epoch + 1, record, optimizer, scheduler, history, best, task)
            write_json(run_dir / HISTORY_FILE, history)
            plot_history(history, run_dir / PLOT_FILE)
            task.write_diagnostics(run_dir)
            if cfg.progress:
                tqdm.write(f"{name} epoch {epoch + 1}: loss {record.get('train/loss', float('nan')):.4f}  "
                           f"{SELECTION_METRIC} {record[SELECTION_METRIC]:.3f}  {record['seconds']:.1f} s")
        else:
            history.append(record)
        env.barrier()
    return run_dir


def _unscale_task_grads(task: Task, env: DistEnv) -> None:
    """Task parameters are not DDP-wrapped: each rank holds the full global-batch gradient, times
    ``loss_scale``; undo that factor (a no-op in one process)."""
    if env.loss_scale == 1.0:
        return
    for opt in task.optimizers():
        for group in opt.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.div_(env.loss_scale)


def _run_dir(cfg: TrainConfig, name: str, env: DistEnv) -> Path:
    """The run folder: ``cfg.out_dir`` or a fresh ``results/<name>/<stamp>`` (made by rank 0, shared)."""
    if cfg.out_dir is not None:
        run_dir = Path(cfg.out_dir)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
    elif env.distributed:
        raise ValueError("distributed training needs out_dir (all ranks must agree on the run folder)")
    else:
        run_dir = make_run_dir(cfg.results_root, name)
    if env.is_main:
        dump_config(cfg, run_dir / CONFIG_FILE)
    return run_dir


def _save(path: Path, model: VprModel, cfg: TrainConfig, epoch: int, record: dict, optimizer=None, scheduler=None,
          history=None, best=None, task=None) -> None:
    metrics = {"selection_metric": SELECTION_METRIC, **{k: v for k, v in record.items() if k.startswith("val/")}}
    train_state = None
    if optimizer is not None:
        train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "torch_rng": torch.get_rng_state(), "best": best, "history": json.dumps(history),
                       "task": task.state_dict() if task is not None else {}}
    save_model_checkpoint(path, model, config=cfg.model_dump(mode="json"), epoch=epoch, metrics=metrics,
                          train_state=train_state)


def _restore(path: Path, model, optimizer, scheduler, task) -> tuple[list[dict], float]:
    """Load ``last/`` into the model, optimizer, scheduler and task; returns (history, best selection value)."""
    _, state, train_state = load_checkpoint(path, with_train_state=True)
    model.load_state_dict(state)
    optimizer.load_state_dict(train_state["optimizer"])
    scheduler.load_state_dict(train_state["scheduler"])
    torch.set_rng_state(train_state["torch_rng"])
    task.load_state_dict(train_state.get("task", {}))
    return json.loads(train_state["history"]), float(train_state["best"])


def plot_history(history: list[dict], path: Path) -> None:
    """Training loss and validation AR@1 per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, [r.get("train/loss", np.nan) for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_val.plot(epochs, [r[SELECTION_METRIC] for r in history], marker="o", color="tab:green")
    ax_val.set(xlabel="epoch", ylabel="AR@1", title="validation AR@1 (cross-run)", ylim=(0, 1))
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
