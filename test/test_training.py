"""Training: augmentations, the frozen-feature cache, teacher training, distillation, selection, resume."""

import numpy as np
import pytest
import torch

from distilvpr_ros.losses import make_distill_loss
from distilvpr_ros.models import build_model
from distilvpr_ros.training import data as training_data
from distilvpr_ros.training import trainer
from distilvpr_ros.training.augment import ImageAugment, PointAugment, hsv_to_rgb, rgb_to_hsv
from distilvpr_ros.models.checkpoint import load_checkpoint, load_model, read_checkpoint_meta
from distilvpr_ros.training.config import AugmentConfig, TrainConfig
from distilvpr_ros.training.data import FrameStore, build_feature_cache, open_split
from distilvpr_ros.training.tasks import TaskBatch, TripletTask

SMALL = {
    "model.image_size": [96, 72],
    "model.pretrained": True,
    "model.freeze_stages": 5,
    "model.bev.cells": 32,
    "model.lidar_channels": [8, 16],
    "optim.batch_size": 8,
    "optim.epochs": 2,
    "threads": 2,
    "eval_batch_size": 32,
    "progress": False,
}


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


def small_config(world, out_dir, **overrides) -> TrainConfig:
    return TrainConfig.from_yaml(None, {**SMALL, "data.root": str(world), "out_dir": str(out_dir), **overrides})


@pytest.fixture(scope="module")
def teacher_run(world, tmp_path_factory):
    return trainer.train_teacher(small_config(world, tmp_path_factory.mktemp("teacher")))


# --- augmentation ---------------------------------------------------------------------------------------


def test_image_augment_is_deterministic_and_in_range():
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    augment = ImageAugment(AugmentConfig(erase_p=1.0))
    a = augment(image, np.random.default_rng(3))
    b = augment(image, np.random.default_rng(3))
    c = augment(image, np.random.default_rng(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == image.shape and a.min() >= 0 and a.max() <= 1
    erased = (a == 0).all(dim=0).float().mean()  # p = 1: a box of 10-40 % of the image is zeroed
    assert 0.05 <= erased <= 0.45


def test_hsv_round_trip_and_zero_jitter_is_identity():
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(image)), image, atol=1e-5)
    still = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, erase_p=0)
    assert torch.allclose(ImageAugment(still)(image, np.random.default_rng(0)), image, atol=1e-6)


def test_point_augment_is_deterministic_and_bounded():
    rng = np.random.default_rng(0)
    cloud = np.concatenate([rng.uniform(-30, 30, (5000, 3)), rng.uniform(0, 1, (5000, 3))], axis=1).astype(np.float32)
    augment = PointAugment(AugmentConfig())
    a = augment(cloud, np.random.default_rng(7))
    assert np.array_equal(a, augment(cloud, np.random.default_rng(7)))
    assert not np.array_equal(a, augment(cloud, np.random.default_rng(8)))
    assert a.dtype == np.float32 and a.shape[1] == 6 and 0.5 * len(cloud) < len(a) <= len(cloud)

    jitter_only = PointAugment(AugmentConfig(rotate_deg=0, flip_p=(0, 0), remove_max=0, translate_sigma=0, block_p=0))
    moved = jitter_only(cloud, np.random.default_rng(1))
    shift = np.abs(moved[:, :3] - cloud[:, :3])
    assert shift.max() <= 0.002 * 40.0 + 1e-4  # clip 0.002 Oxford units at 40 m per unit
    assert 0.02 < shift.std() < 0.06  # σ = 0.001 * 40 m, clipped at 2σ
    assert np.array_equal(moved[:, 3:], cloud[:, 3:])


# --- feature cache --------------------------------------------------------------------------------------


def test_feature_cache_equals_uncached_forward(world):
    cfg = small_config(world, "unused")
    model = build_model("camera_student", cfg.model)
    store = FrameStore(open_split(cfg.data, "train"), cfg.model.image_size, None)
    images = torch.stack([store.image(k) for k in range(6)])
    features = build_feature_cache(model.image_encoder, store, batch_size=4)[:6, 0]
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            direct = model(image=images)["fused"]
            with model.image_encoder.frozen_input():
                cached = model(image=features)["fused"]
        torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-5)


# --- teacher training, selection, resume -------------------------------------------------------------


def test_teacher_training_lowers_loss_and_selects_on_validation(teacher_run):
    history = trainer.json.loads((teacher_run / trainer.HISTORY_FILE).read_text())
    assert len(history) == 2
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert all(record["steps"] > 0 and "seconds_per_step" in record for record in history)
    best = read_checkpoint_meta(teacher_run / "best")
    assert best["metrics"]["selection_metric"] == "val/recall@1"
    assert best["metrics"]["val/recall@1"] == max(record["val/recall@1"] for record in history)
    assert not any(key.startswith("test") for key in best["metrics"])
    assert (teacher_run / trainer.PLOT_FILE).is_file() and (teacher_run / trainer.CONFIG_FILE).is_file()
    assert load_model(teacher_run / "best", expect_kind="teacher").kind == "teacher"


def test_validation_frames_come_from_the_validation_region(world):
    cfg = small_config(world, "unused")
    data = training_data.TrainingData(cfg, build_model("camera_student", cfg.model))
    regions = {seq.meta(i)["region"] for seq in data.val_sequences for i in range(len(seq))}
    assert regions == {"val"}


def test_validation_gives_the_evaluate_numbers(world):
    """Validation computes AR@N from the metric functions; on the same frames it equals evaluate_sequences."""
    from distilvpr_ros.evaluation.evaluate import RECALL_KEYS, evaluate_sequences
    from distilvpr_ros.models.inference import embed_sequences

    cfg = small_config(world, "unused")
    torch.manual_seed(0)
    model = build_model("camera_student", cfg.model)
    data = training_data.TrainingData(cfg, model)
    got = trainer.validate(model, data, cfg)
    want = evaluate_sequences(embed_sequences(model, data.val_sequences, batch_size=8, progress=False),
                              data.val_sequences, cfg.ground_truth)
    assert got == pytest.approx({f"val/{key}": want[key] for key in (*RECALL_KEYS, "num_pairs")})
    assert got["val/num_pairs"] == want["num_pairs"] > 0


def test_condition_filter_holds_out_a_condition(world):
    cfg = small_config(world, "unused", **{"data.train_conditions": ["day", "rain-winter"]})
    conditions = {seq.meta(i)["condition"] for seq in open_split(cfg.data, "train") for i in range(len(seq))}
    assert conditions == {"day", "rain-winter"}


def test_resume_equals_uninterrupted(world, tmp_path):
    full = trainer.train_teacher(small_config(world, tmp_path / "full"))
    trainer.train_teacher(small_config(world, tmp_path / "split", **{"optim.epochs": 1}))
    resumed = trainer.train_teacher(small_config(world, tmp_path / "split", resume=True))
    _, full_state, full_train = load_checkpoint(full / "last", with_train_state=True)
    _, resumed_state, resumed_train = load_checkpoint(resumed / "last", with_train_state=True)
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=1e-6, msg=key)
    assert resumed_train["scheduler"]["last_epoch"] == full_train["scheduler"]["last_epoch"] == 2
    full_history = trainer.json.loads((full / trainer.HISTORY_FILE).read_text())
    resumed_history = trainer.json.loads((resumed / trainer.HISTORY_FILE).read_text())
    np.testing.assert_allclose(resumed_history[-1]["step_losses"], full_history[-1]["step_losses"], rtol=1e-5)


def test_two_stage_teacher_starts_from_its_lidar_warmup_and_learns_its_fusion_weight(world, tmp_path, monkeypatch):
    cfg = small_config(world, tmp_path / "two", **{"teacher.lidar_warmup_epochs": 1, "optim.epochs": 1,
                                                   "model.fusion": "learned_concat"})
    loaded = []
    load_lidar_branch = trainer.load_lidar_branch

    def spy(teacher, path):
        load_lidar_branch(teacher, path)
        loaded.append((path, {k: v.clone() for k, v in teacher.lidar_encoder.state_dict().items()}))
    monkeypatch.setattr(trainer, "load_lidar_branch", spy)
    run = trainer.train_teacher(cfg)
    (path, state), = loaded
    assert path == run / trainer.LIDAR_WARMUP_DIR / "best"
    warm = load_model(path, expect_kind="lidar_student")
    assert warm.input_spec.descriptor_dim == cfg.model.cloud_dim
    for key, value in warm.lidar_encoder.state_dict().items():
        torch.testing.assert_close(state[key], value, msg=key)
    assert len(trainer.json.loads((path.parent / trainer.HISTORY_FILE).read_text())) == 1
    teacher = load_model(run / "last", expect_kind="teacher")
    assert teacher.cloud_weight != pytest.approx(0.5, abs=1e-4)  # the fusion weight has its optimizer group

    fits = []
    monkeypatch.setattr(trainer, "fit", lambda cfg_, env, name, *rest, **kw: fits.append(name) or run)
    trainer.train_teacher(cfg)  # the finished warm-up is reused, not repeated
    assert fits == ["train_teacher"]
    polar = build_model("teacher", small_config(world, "unused", **{"model.lidar_encoder": "polar"}).model)
    with pytest.raises(ValueError, match="LiDAR encoder"):
        trainer.load_lidar_branch(polar, path)


def test_frozen_lidar_branch_stays_bit_identical_through_fused_epochs(world, tmp_path):
    cfg = small_config(world, tmp_path / "frozen", **{"teacher.lidar_warmup_epochs": 1, "optim.epochs": 1,
                                                      "teacher.lidar_freeze": True})
    run = trainer.train_teacher(cfg)
    warm = load_model(run / trainer.LIDAR_WARMUP_DIR / "best", expect_kind="lidar_student")
    teacher = load_model(run / "last", expect_kind="teacher")
    history = trainer.json.loads((run / trainer.HISTORY_FILE).read_text())
    assert history[0]["steps"] > 0
    state = teacher.lidar_encoder.state_dict()
    assert any("running_mean" in key for key in state)  # BatchNorm statistics are part of the check
    for key, value in warm.lidar_encoder.state_dict().items():
        assert torch.equal(state[key], value), key
    # the image branch did train in the same run
    fresh = build_model("teacher", cfg.model)
    assert any(not torch.equal(p, q) for p, q in zip(teacher.image_encoder.proj.parameters(),
                                                     fresh.image_encoder.proj.parameters()))
    with pytest.raises(ValueError, match="untrained LiDAR branch"):
        small_config(world, tmp_path / "x", **{"teacher.lidar_freeze": True})


def test_freeze_branch_keeps_weights_and_batchnorm_statistics_in_train_mode():
    torch.manual_seed(0)
    frozen = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    head = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    trainer.freeze_branch(frozen)
    model = torch.nn.ModuleDict({"frozen": frozen, "head": head})
    optimizer = torch.optim.Adam(trainer._trainable(model), lr=0.1)
    assert len(optimizer.param_groups[0]["params"]) == 2  # only the head's weight and bias
    model.train()
    for _ in range(3):
        out = head(frozen(torch.randn(5, 2, 6, 6) * 3 + 1).mean(dim=(2, 3)))
        optimizer.zero_grad()
        out.square().mean().backward()
        optimizer.step()
    assert not frozen.training and head.training
    for key, value in frozen.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- distillation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("student, method", [("camera_student", "sc"), ("camera_student", "none"),
                                             ("lidar_student", "c")])
def test_distillation_writes_loadable_checkpoints(world, teacher_run, tmp_path, student, method):
    cfg = small_config(world, tmp_path, **{"distill.teacher": str(teacher_run / "best"), "distill.method": method,
                                           "distill.student": student, "optim.epochs": 1})
    run = trainer.train_student(cfg)
    model = load_model(run / "best", expect_kind=student)
    assert model.input_spec.descriptor_dim == cfg.model.student_out_dim
    history = trainer.json.loads((run / trainer.HISTORY_FILE).read_text())
    assert ("train/distill" in history[0]) == (method in ("sc", "c"))


class FixedBatchTask(TripletTask):
    """The triplet task, but every one of the epoch's 6 steps takes the same batch (the sampler's first)."""

    def batches(self, epoch):
        self.sampler.set_epoch(0)
        return [TaskBatch(list(next(iter(self.sampler))))] * 6


def test_distillation_moves_the_student_towards_the_teacher(world, teacher_run, tmp_path, monkeypatch):
    """Six steps of ``train_student`` on one fixed batch. Distillation alone (task weight ~0) lowers the DistilVPR
    relational loss between teacher and student on that batch at every step; the same six steps without
    distillation (the task loss alone) do not: their student ends farther from the teacher's relations."""
    monkeypatch.setattr(trainer, "make_task", lambda cfg, data, heads, model: FixedBatchTask(cfg, data, heads))
    common = {"distill.teacher": str(teacher_run / "best"), "optim.epochs": 1}
    kd_only = {"distill.method": "sc", "loss.student_heads": {"fused": 1e-6}}
    kd_cfg = small_config(world, tmp_path / "kd", **common, **kd_only)
    kd_run = trainer.train_student(kd_cfg)
    plain_run = trainer.train_student(small_config(world, tmp_path / "plain", **common, **{"distill.method": "none"}))

    # the loss the trainer minimised, recomputed on the batch: the student's train-mode outputs on the
    # (epoch 0) training inputs against the cached clean teacher descriptors
    torch.manual_seed(kd_cfg.seed)  # as train_student: the seeded RNG builds the teacher, then the student
    teacher = load_model(teacher_run / "best", expect_kind="teacher")
    initial = build_model("camera_student", kd_cfg.model)
    data = training_data.TrainingData(kd_cfg, initial)
    indices = FixedBatchTask(kd_cfg, data, kd_cfg.loss.student_heads).batches(0)[0].indices
    pos, neg = (torch.from_numpy(m) for m in data.ground_truth.batch_masks(indices))
    target = training_data.TrainingData(kd_cfg, teacher).embed(teacher, indices, 8)["fused"]
    relational = make_distill_loss("sc", **kd_cfg.distill.loss_kwargs())
    batch = data.train.batch(indices)

    def kd_loss(model):
        model.train()
        with torch.no_grad(), data.model_inputs(model):
            outputs = model(**{name: batch[name] for name in model.input_spec.inputs})
        return float(relational(outputs["fused"], target, pos, neg)[0])

    start = kd_loss(initial)
    steps = trainer.json.loads((kd_run / trainer.HISTORY_FILE).read_text())[0]["step_losses"]
    assert steps[0] == pytest.approx(start, rel=1e-4)  # the same loss the first step saw
    assert all(later < earlier for earlier, later in zip(steps, steps[1:])), steps
    distilled = kd_loss(load_model(kd_run / "last", expect_kind="camera_student"))
    plain = kd_loss(load_model(plain_run / "last", expect_kind="camera_student"))
    assert distilled < 0.85 * start, (start, distilled)  # measured: 0.168 -> 0.123
    assert plain > 1.3 * distilled, (plain, distilled)  # measured: 0.201


def test_teacher_cache_is_computed_once(world, teacher_run, tmp_path, monkeypatch):
    calls = []
    original = trainer.compute_teacher_cache

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_teacher_cache", counting)
    cfg = small_config(world, tmp_path, **{"distill.teacher": str(teacher_run / "best"), "distill.method": "rkd",
                                           "distill.teacher_cache": "augmented", "optim.epochs": 2})
    trainer.train_student(cfg)
    assert len(calls) == 1


def test_disk_cache_is_reused_and_changes_nothing(world, teacher_run, tmp_path, monkeypatch):
    calls = {"features": 0, "teacher": 0}
    build, embed = training_data.build_feature_cache, trainer._embed_teacher

    def counting_build(*args, **kwargs):
        calls["features"] += 1
        return build(*args, **kwargs)

    def counting_embed(*args, **kwargs):
        calls["teacher"] += 1
        return embed(*args, **kwargs)

    monkeypatch.setattr(training_data, "build_feature_cache", counting_build)
    monkeypatch.setattr(trainer, "_embed_teacher", counting_embed)
    common = {"distill.teacher": str(teacher_run / "best"), "distill.method": "s", "optim.epochs": 1}
    plain = trainer.train_student(small_config(world, tmp_path / "plain", **common))
    assert calls == {"features": 3, "teacher": 1}  # student train + val features, teacher train features
    cache = {"feature_cache.dir": str(tmp_path / "cache"), **common}
    first = trainer.train_student(small_config(world, tmp_path / "first", **cache))
    second = trainer.train_student(small_config(world, tmp_path / "second", seed=8, **cache))
    # The first cached run computes the student's features and the teacher embeddings (the teacher's frozen
    # stages are the student's ImageNet ones, so it finds their features); the second computes nothing.
    assert calls == {"features": 5, "teacher": 2}
    losses = [trainer.json.loads((run / trainer.HISTORY_FILE).read_text())[0]["step_losses"] for run in (plain, first)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    assert (second / "best").is_dir()


def test_config_overrides_and_validation(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("optim:\n  epochs: 3\ndistill:\n  method: SC\n")
    cfg = TrainConfig.from_yaml(path, {"optim.batch_size": 16, "augment": {"hue": 0.05}})
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.augment.hue, cfg.distill.method) == (3, 16, 0.05, "sc")
    assert (cfg.optim.image_lr, cfg.optim.cloud_lr, cfg.optim.milestones, cfg.seed) == (1e-4, 1e-3, [40], 7)
    with pytest.raises(ValueError):
        TrainConfig.from_yaml(None, {"distill.method": "nope"})
    with pytest.raises(ValueError):
        TrainConfig.from_yaml(None, {"optim.batch_size": 7})
    with pytest.raises(ValueError):
        TrainConfig.from_yaml(None, {"resume": True})


def test_distillation_with_pair_restriction_grad_norms_and_night_rain_copies(
        world, teacher_run, tmp_path, monkeypatch):
    """Issue 12 recipe knobs through ``train_student``: the trainer hands the distillation loss the pair
    weights of ``RelationPairs`` for each batch, logs per-term gradient norms, and trains on night/rain
    augmented feature copies."""
    seen = []
    real = trainer.make_distill_loss

    def recording(method, **kwargs):
        loss = real(method, **kwargs)
        forward = loss.forward

        def spy(student, teacher, pos=None, neg=None, pair_weights=None):
            seen.append(pair_weights)
            return forward(student, teacher, pos, neg, pair_weights=pair_weights)
        loss.forward = spy
        return loss

    monkeypatch.setattr(trainer, "make_distill_loss", recording)
    cfg = small_config(world, tmp_path, **{
        "distill.teacher": str(teacher_run / "best"), "distill.method": "sc", "optim.epochs": 1,
        "distill.relation_pairs": "same_direction", "distill.grad_norm_every": 1,
        "feature_cache.augmented_copies": 2, "augment.night_p": 0.5, "augment.rain_p": 0.5})
    run = trainer.train_student(cfg)
    history = trainer.json.loads((run / trainer.HISTORY_FILE).read_text())
    assert history[0]["steps"] >= 1
    grads = {k for k in history[0] if k.startswith("train/grad/")}
    assert {"train/grad/task", "train/grad/distill", "train/grad/self/euclidean",
            "train/grad/cross/st2ss/hyperbolic"} <= grads
    assert all(np.isfinite(history[0][k]) for k in grads)
    weights = [w for w in seen if w is not None]
    assert weights and all(w.shape[0] == w.shape[1] and set(w.unique().tolist()) <= {0.0, 1.0} for w in weights)
    assert torch.equal(torch.diagonal(weights[0]), torch.ones(len(weights[0])))
