"""Every hyper-parameter of teacher training and distillation, in one typed config (``TrainConfig``).

Defaults are the DistilVPR recipe (``reference/distilvpr.md`` §3.5, §4): Adam (image lr 1e-4, cloud lr
1e-3 for the teacher, 1e-4 for the student, weight decay 1e-4), 60 epochs, MultiStepLR at epoch 40 with
γ 0.1, batch 128 of (anchor, positive) pairs, seed 7, evaluation batch 160, the Oxford augmentations,
λ_S 10 and cross-agent weights 0.1/0.1/0.1. A YAML file mirrors the nesting; ``TrainConfig.from_yaml``
applies overrides given as nested dicts or dotted keys (``{"optim.epochs": 2}``). Every run dumps the
config it used into its run folder (``config.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import GroundTruthConfig, Section, load_yaml, merge_config
from ..data.sources import DataSource
from ..data.submap import SubmapConfig
from ..losses import DISTILL_METHODS
from ..losses.task import STUDENT_HEAD_WEIGHTS, TEACHER_HEAD_WEIGHTS, TRIPLET_MARGIN
from ..models.config import ModelConfig

StudentKind = Literal["camera_student", "lidar_student"]


class DataConfig(Section):
    """Which frames train and which validate.

    ``source: synthetic`` reads a generated world (``root``) and splits it by region; ``bags`` reads
    ROS 2 bags under ``root`` (``train_sequences`` / ``val_sequences`` name the bag folders; camera and
    LiDAR paired by stamp, poses from odometry or GPS via UTM, see ``data.rosbag_io.BagSequence``);
    ``oxford`` (PointNetVLAD runs, images from ``images_root``), ``boreas`` and ``kitti`` read the named
    sequences under ``root``. Several synthetic towns: ``train_roots`` (kept apart, see
    ``data.synthetic.load_worlds``) and ``val_root`` replace ``root``; ``*_region: all`` uses whole towns. The
    run and condition filters let experiments hold out runs or conditions (synthetic worlds record a
    per-frame ``condition``; filtering by it needs that metadata). ``submap`` replaces every cloud by its
    LiDAR submap (``data.submap``: ``length_m`` metres of travel, ``trailing`` or ``centred``).
    """

    source: DataSource = Field("synthetic", description="dataset reader")
    root: Path | None = Field(None, description="world folder (synthetic) or dataset root")
    train_region: str = Field("train", description="synthetic: region whose frames train (all: every frame)")
    val_region: str = Field("val", description="synthetic: region whose frames validate (model selection; "
                            "all: every frame)")
    train_roots: list[Path] = Field(default_factory=list, description="synthetic: several worlds (towns) whose "
                                    "train_region frames train, kept apart (replaces root for training)")
    val_root: Path | None = Field(None, description="synthetic: the world whose val_region frames validate "
                                  "(replaces root for validation)")
    train_sequences: list[str] = Field(default_factory=list, description="bags/oxford/boreas/kitti: training sequences")
    val_sequences: list[str] = Field(default_factory=list, description="bags/oxford/boreas/kitti: validation sequences")
    images_root: Path | None = Field(None, description="oxford: RobotCar image folders (<run>/stereo/centre)")
    train_runs: list[str] | None = Field(None, description="train only on these runs (None: all)")
    train_conditions: list[str] | None = Field(None, description="train only on these conditions (None: all)")
    val_runs: list[str] | None = Field(None, description="validate only on these runs (None: all)")
    val_conditions: list[str] | None = Field(None, description="validate only on these conditions (None: all)")
    submap: SubmapConfig = Field(default_factory=SubmapConfig, description="LiDAR submaps instead of single scans "
                                 "(submap.length_m = D metres of travel, 0: single scans; data.submap)")

    @model_validator(mode="after")
    def _worlds(self) -> "DataConfig":
        if (self.train_roots or self.val_root is not None) and self.source != "synthetic":
            raise ValueError("train_roots and val_root name synthetic worlds (source: synthetic)")
        return self

    def roots(self, split: str) -> Path | list[Path] | None:
        """Where the ``train`` or ``val`` frames come from: ``train_roots`` / ``val_root`` when set, else ``root``."""
        if split == "train" and self.train_roots:
            return list(self.train_roots)
        if split == "val" and self.val_root is not None:
            return self.val_root
        return self.root


class OptimConfig(Section):
    """Adam + MultiStepLR, batch composition (reference §4)."""

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=2, description="pairs sampler batch (B/2 anchors with one positive each)")
    image_lr: float = Field(1e-4, gt=0, description="teacher image-branch learning rate")
    cloud_lr: float = Field(1e-3, gt=0, description="teacher LiDAR-branch learning rate")
    student_lr: float = Field(1e-4, gt=0, description="learning rate of every student parameter")
    weight_decay: float = Field(1e-4, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [40], description="MultiStepLR epochs")
    gamma: float = Field(0.1, gt=0, description="MultiStepLR factor")

    @field_validator("batch_size")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("batch_size must be even (anchor, positive pairs)")
        return value


class LossConfig(Section):
    """Task loss, weighted per head: batch-hard triplet (margin 0.2, reference §3.1) or CosFace
    classification on geographic classes (``task: cosface``, configured in ``classify``)."""

    task: Literal["triplet", "cosface"] = Field("triplet", description="triplet, or cosface (MutualVPR/CosPlace)")
    margin: float = Field(TRIPLET_MARGIN, gt=0, description="triplet margin")
    teacher_heads: dict[str, float] = Field(default_factory=lambda: dict(TEACHER_HEAD_WEIGHTS))
    student_heads: dict[str, float] = Field(default_factory=lambda: dict(STUDENT_HEAD_WEIGHTS))


class AugmentConfig(Section):
    """Training augmentations (reference §4); see ``training.augment`` for the exact maths.

    Point offsets are in Oxford units (clouds normalised to about [-1, 1]); ``unit_m`` converts them to
    our metric clouds: jitter σ = ``jitter_sigma * unit_m`` metres, translation σ likewise. The default
    40 m is the BEV half extent, i.e. the span that [-1, 1] covers here.
    """

    image: bool = Field(True, description="colour jitter + random erasing on training images")
    points: bool = Field(True, description="point augmentation before the BEV")
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    erase_p: float = Field(0.5, ge=0, le=1)
    erase_scale: tuple[float, float] = (0.1, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    rotate_deg: float = Field(5.0, ge=0, description="rotation about z, uniform ±this")
    flip_p: tuple[float, float] = Field((0.25, 0.25), description="probability of flipping x, of flipping y")
    unit_m: float = Field(40.0, gt=0, description="metres per Oxford unit (scales jitter and translation)")
    jitter_sigma: float = Field(0.001, ge=0, description="per-point jitter σ (Oxford units)")
    jitter_clip: float = Field(0.002, ge=0, description="jitter clipped at ± this (Oxford units)")
    remove_max: float = Field(0.1, ge=0, lt=1, description="drop a fraction U(0, this) of the points")
    translate_sigma: float = Field(0.01, ge=0, description="whole-cloud translation σ per axis (Oxford units)")
    block_p: float = Field(0.4, ge=0, le=1, description="probability of removing a random block")
    block_scale: tuple[float, float] = Field((0.02, 0.33), description="block area / cloud bounding-box area")
    block_ratio: tuple[float, float] = Field((0.3, 3.3), description="block aspect ratio")
    lateral_shift_m: float = Field(0.0, ge=0, description="move the sensor sideways (along y) by U(-this, this) m "
                                   "before the rotation (another lane; the polar teacher uses 7)")
    range_cut_p: float = Field(0.0, ge=0, le=1, description="probability of cutting the cloud at a random range "
                               "(fog)")
    range_cut_m: tuple[float, float] = Field((40.0, 90.0), description="the cut range is U(low, high) m")
    # appearance aimed at unseen conditions (training.appearance; applied after the colour jitter)
    night_p: float = Field(0.0, ge=0, le=1, description="probability of the night transform (dark, gamma, "
                           "colour cast, noise)")
    night_brightness: tuple[float, float] = Field((0.15, 0.5), description="night: brightness factor U(low, high)")
    night_gamma: tuple[float, float] = Field((1.2, 2.2), description="night: gamma U(low, high) (x ** gamma)")
    cast: float = Field(0.2, ge=0, lt=1, description="night: per-channel gains U(1 - this, 1 + this)")
    noise_sigma: float = Field(0.08, ge=0, description="night: Gaussian noise σ ~ U(0, this)")
    rain_p: float = Field(0.0, ge=0, le=1, description="probability of the rain transform (veil, blur, streaks)")
    rain_veil: tuple[float, float] = Field((0.2, 0.5), description="rain: weight of the grey veil U(low, high)")
    blur_sigma: tuple[float, float] = Field((0.3, 1.2), description="rain: Gaussian blur σ U(low, high) px")
    streak_density: tuple[float, float] = Field((0.002, 0.01), description="rain: share of pixels starting a streak")
    streak_length: tuple[float, float] = Field((0.05, 0.15), description="rain: streak length / image height")
    streak_angle_deg: float = Field(20.0, ge=0, le=90, description="rain: streak angle U(±this) from vertical")


class FeatureCacheConfig(Section):
    """Cache the frozen image trunk's output (needs ``model.freeze_stages > 0``).

    The frozen stages run once per image (eval mode) instead of every step; training runs only the
    trainable tail. ``augmented_copies`` = K > 0 caches K photometrically augmented versions per image
    (colour jitter + erasing) and each epoch draws one; K = 0 caches the clean image only, so image
    augmentation is then off (point augmentation is unaffected).
    """

    enabled: bool = True
    augmented_copies: int = Field(0, ge=0)
    dir: Path | None = Field(
        None, description="keep frozen features and teacher embeddings here across runs (None: recompute)"
    )


class ClassifyConfig(Section):
    """Classification supervision (``loss.task: cosface``): MutualVPR view clusters or CosPlace heading bins.

    Defaults are MutualVPR's released code (``reference/mutualvpr.md`` §2, §4.2) except ``views``: K = 3
    as in the paper's headline (the code's default is 6, the paper's choice for ResNet-50). The three
    ``align_labels`` / ``cluster_all_first_visit`` / ``immediate_labels`` switches fix known flaws of the
    official code (§8) and are off by default, so the default reproduces it.
    """

    labels: Literal["views", "heading"] = Field(
        "views", description="views: K view clusters per cell (MutualVPR; K=1: one class per cell); "
        "heading: CosPlace classes (cell, heading bin)")
    cell_m: float = Field(10.0, gt=0, description="UTM cell side M (m)")
    group_spacing: int = Field(5, ge=1, description="N: group of a cell = (cell_e mod N, cell_n mod N)")
    groups: int = Field(8, ge=1, description="groups used, in order of first appearance; one per epoch")
    views: int = Field(3, ge=1, description="K view clusters per cell (labels: views)")
    heading_bin_deg: float = Field(30.0, gt=0, le=360, description="CosPlace heading bin α (labels: heading)")
    heading_groups: int = Field(2, ge=1, description="CosPlace L: heading bins per group cycle (labels: heading)")
    scale: float = Field(60.0, gt=0, description="CosFace s (CosPlace: 30)")
    margin: float = Field(0.5, ge=0, description="CosFace m (CosPlace: 0.4)")
    classifier_lr: float = Field(1e-2, gt=0, description="Adam learning rate of the classifiers")
    batch_size: int = Field(32, ge=2, description="images per batch")
    images_per_class: int = Field(1, ge=1, le=2, description="1: distinct classes (official); 2: image pairs "
                                  "of one class (gives the batch positives, for mask-based KD losses)")
    iterations: int | None = Field(None, ge=1, description="steps per epoch (None: one pass over the group's images)")
    recluster_fraction: float = Field(0.2, ge=0, le=1, description="share of the group's cells re-clustered per epoch")
    kmeans_n_init: int = Field(10, ge=1)
    align_labels: bool = Field(False, description="fix: Hungarian-match new clusters to the classifier rows")
    cluster_all_first_visit: bool = Field(False, description="fix: re-cluster every cell on a group's first visit")
    immediate_labels: bool = Field(False, description="fix: new labels from the first step (official code: after "
                                   "one pass over the classes)")
    purity_bin_deg: float = Field(90.0, gt=0, le=180, description="diagnostics: true-heading bins, centred on 0°")


class DistillConfig(Section):
    """Student training: which teacher, which student, which distillation loss (reference §3.5–3.6)."""

    teacher: Path | None = Field(None, description="teacher checkpoint folder (e.g. <teacher run>/best)")
    student: StudentKind = "camera_student"
    method: str = Field("sc", description=f"one of {', '.join(DISTILL_METHODS)}; none = task loss only")
    weight: float = Field(1.0, ge=0, description="factor on the distillation loss (distil_logit_weight)")
    self_weight: float = Field(10.0, ge=0, description="λ_S of DistilVPR s/sc (Oxford 10, Boreas 1)")
    cross_weights: tuple[float, float, float] = Field((0.1, 0.1, 0.1), description="st2ss eucl/sph/hyp")
    manifolds: list[str] = Field(default_factory=lambda: ["euclidean", "spherical", "hyperbolic"])
    curvature: float = Field(0.1, gt=0, description="Poincaré ball curvature c")
    spherical: Literal["angle", "cosine"] = Field("angle", description="self-agent spherical relation")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra arguments of the loss class")
    teacher_cache: Literal["clean", "augmented"] = Field(
        "clean", description="teacher embeddings from clean inputs, or from one augmented draw (official code)"
    )
    # which pairs the relational terms use (training.relation_pairs); s / c / sc only
    relation_pairs: Literal["all", "same_direction", "visible"] = Field(
        "all", description="all pairs (reference), pairs driven within relation_heading_deg, or pairs sharing "
        "visible structure (data.visibility: the world's ray-cast cache when there, else the pose proxy)")
    relation_other_weight: float = Field(0.0, ge=0, le=1, description="weight of the pairs outside the mask")
    relation_heading_deg: float = Field(90.0, gt=0, le=180, description="same direction: heading difference <= this")
    relation_visible_m: float = Field(25.0, gt=0, description="visible (pose proxy): planar distance <= this")
    grad_norm_every: int = Field(0, ge=0, description="every N steps log the gradient norm of each loss term "
                                 "w.r.t. the student descriptor (train/grad/<term>); 0: off")

    @field_validator("method")
    @classmethod
    def _known(cls, value: str) -> str:
        if value.lower() not in DISTILL_METHODS:
            raise ValueError(f"unknown distillation method {value!r}; valid: {', '.join(DISTILL_METHODS)}")
        return value.lower()

    @model_validator(mode="after")
    def _pairs_need_relations(self) -> "DistillConfig":
        if self.relation_pairs != "all" and self.method not in ("s", "c", "sc"):
            raise ValueError(f"distill.relation_pairs={self.relation_pairs} needs method s, c or sc, "
                             f"not {self.method!r}")
        return self

    def loss_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of ``make_distill_loss(self.method, ...)``."""
        if self.method in ("s", "c", "sc"):
            own = dict(self_weight=self.self_weight, cross_weights=self.cross_weights, manifolds=self.manifolds,
                       curvature=self.curvature, spherical=self.spherical)
            return {**own, **self.kwargs}
        return dict(self.kwargs)


class TeacherConfig(Section):
    """Teacher only: where its LiDAR branch starts (the two-stage recipe) and how its fusion weight learns.

    ``lidar_init`` loads the branch from a checkpoint folder: a ``lidar_student`` with ``student_dim``
    equal to the teacher's ``cloud_dim`` and the same LiDAR encoder, or a teacher. Otherwise
    ``lidar_warmup_epochs`` > 0 first trains the branch alone, as that LiDAR student (triplet, Adam at
    ``lidar_warmup_lr``, MultiStepLR at 70 % of the warm-up epochs, the same frames, augmentation and seed),
    into ``<run>/lidar_warmup/``; its best validation checkpoint starts the fused training, in which the
    branch then trains at ``optim.cloud_lr``. Fused steps run the image tail as well, so LiDAR-only epochs
    are the cheap way to give the LiDAR branch the steps it needs. ``lidar_freeze`` keeps the started
    branch as it is through the fused epochs (no gradients, BatchNorm statistics fixed): the teacher's
    LiDAR head is then exactly the LiDAR model it started from.
    """

    lidar_init: Path | None = Field(None, description="LiDAR branch weights from this checkpoint folder")
    lidar_warmup_epochs: int = Field(0, ge=0, description="LiDAR-only epochs before the fused ones (0: none)")
    lidar_warmup_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the LiDAR-only warm-up")
    fusion_lr: float = Field(0.05, gt=0, description="Adam learning rate of the learned fusion weight "
                             "(model.fusion: learned_concat; one scalar, so larger than the branches')")
    lidar_freeze: bool = Field(False, description="keep the LiDAR branch from lidar_init / the warm-up frozen "
                               "in the fused epochs (no gradients, eval mode); optim.cloud_lr is then unused")

    @model_validator(mode="after")
    def _freeze_needs_a_trained_branch(self) -> "TeacherConfig":
        if self.lidar_freeze and self.lidar_init is None and self.lidar_warmup_epochs == 0:
            raise ValueError("teacher.lidar_freeze needs teacher.lidar_init or teacher.lidar_warmup_epochs > 0 "
                             "(it would freeze an untrained LiDAR branch)")
        return self


class TrainConfig(Section):
    """One training run (teacher or distillation)."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ground_truth: GroundTruthConfig = Field(default_factory=GroundTruthConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    feature_cache: FeatureCacheConfig = Field(default_factory=FeatureCacheConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    seed: int = Field(7, description="torch/numpy/sampler seed")
    threads: int = Field(2, ge=1, description="torch.set_num_threads")
    eval_batch_size: int = Field(160, ge=1, description="batch for validation and cache passes")
    out_dir: Path | None = Field(None, description="run folder; default results/<train_teacher|distill>/<stamp>")
    results_root: Path = Field(Path("results"), description="root of timestamped run folders")
    resume: bool = Field(False, description="continue from out_dir/last (out_dir required)")
    progress: bool = Field(True, description="tqdm progress bars")

    @model_validator(mode="after")
    def _resume_needs_dir(self) -> "TrainConfig":
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs out_dir (the run folder holding last/)")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """Defaults ← YAML file (optional) ← overrides (nested dicts, or dotted keys like ``optim.epochs``)."""
        values = merge_config(load_yaml(path) if path is not None else {}, overrides)
        return cls.model_validate(values)
