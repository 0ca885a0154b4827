"""Place-recognition models: the camera+LiDAR teacher and the single-modality students (reference §1–2).

* ``TeacherModel``: LiDAR encoder (128-d) and image encoder (256-d), late fusion by concatenation
  ``fused = [cloud, image]`` (384-d), as DistilVPR's "minklocmmcat" (``fusion: concat``), by default of the
  L2-normalised branches, optionally weighted (``ModelConfig.fusion``).
* ``CameraStudent``: image encoder → 384-d (DistilVPR's 2D student).
* ``LidarStudent``: LiDAR encoder → 384-d (the 3D student).

Every ``forward`` returns a dict of **raw** descriptors with the key ``"fused"`` (plus ``"cloud"`` and
``"image"`` for the teacher), as the training losses expect. ``embed`` returns L2-normalised float32 numpy
for retrieval. ``input_spec`` says what to feed: ``image`` is ``B x 3 x H x W`` in [0, 1]
(``preprocess.image_to_tensor``), ``cloud`` is a BEV tensor (``preprocess.cloud_to_bev``) or raw clouds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import BevConfig, ModelConfig, ModelKind, PolarConfig
from .image import make_image_encoder
from .lidar import CloudInput, LidarEncoder

DESCRIPTOR_KEY = "fused"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (float32; all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def weighted_fusion(cloud: np.ndarray, image: np.ndarray, cloud_weight: float) -> np.ndarray:
    """Unit fused descriptors ``[sqrt(w) c, sqrt(1 - w) i]`` of the L2-normalised branch rows ``c``, ``i``.

    The cosine of two of them is ``w cos(cloud) + (1 - w) cos(image)``: the retrieval a ``weighted_concat``
    teacher with ``fusion_cloud_weight = w`` gives, computed from its two heads (e.g. to choose ``w`` on the
    validation region without retraining). ``w = 0.5`` is ``normalized_concat``.
    """
    if not 0.0 <= cloud_weight <= 1.0:
        raise ValueError(f"cloud_weight must be in [0, 1], got {cloud_weight}")
    return np.concatenate([np.sqrt(cloud_weight) * l2_normalize(cloud),
                           np.sqrt(1.0 - cloud_weight) * l2_normalize(image)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class InputSpec:
    """What a model consumes, for data loaders, the ROS layer and the ONNX exporter.

    ``inputs`` are the ``forward`` keyword names in order (also the ONNX input names).
    """

    inputs: tuple[str, ...]
    descriptor_dim: int
    image_size: tuple[int, int] | None = None  # (W, H)
    bev: BevConfig | PolarConfig | None = None  # the grid ``cloud`` is rasterised into (``cloud_to_bev``)

    @property
    def bev_shape(self) -> tuple[int, int, int] | None:
        """``(channels, rows, cols)`` of the BEV fed as ``cloud``, or None for camera-only models."""
        return None if self.bev is None else self.bev.shape

    def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs of the right shapes (for export, tests and timing)."""
        generator = torch.Generator().manual_seed(seed)
        examples: dict[str, torch.Tensor] = {}
        if self.image_size is not None:
            width, height = self.image_size
            examples["image"] = torch.rand(batch, 3, height, width, generator=generator)
        if self.bev_shape is not None:
            examples["cloud"] = torch.rand(batch, *self.bev_shape, generator=generator)
        return {name: examples[name] for name in self.inputs}


def make_lidar_encoder(out_dim: int, cfg: ModelConfig) -> nn.Module:
    """The LiDAR branch ``cfg.lidar_encoder`` names: the Cartesian BEV CNN or the yaw-invariant polar one."""
    if cfg.lidar_encoder == "polar":
        from .lidar_polar import PolarLidarEncoder

        return PolarLidarEncoder(out_dim, cfg.polar, cfg.polar_channels)
    return LidarEncoder(out_dim, cfg.bev, cfg.lidar_channels)


class VprModel(nn.Module):
    """Common interface: ``forward(**inputs) -> {"fused": B x D, ...}``, ``descriptor``, ``embed``."""

    kind: ModelKind
    input_spec: InputSpec

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def descriptor(self, **inputs) -> torch.Tensor:
        """Raw (unnormalised) ``B x D`` descriptor, with gradients when enabled."""
        return self(**inputs)[DESCRIPTOR_KEY]

    @torch.no_grad()
    def embed(self, **inputs) -> np.ndarray:
        """L2-normalised float32 ``B x D`` numpy descriptors, computed in eval mode (mode restored after).

        Inputs are batched tensors or numpy arrays named as in ``input_spec.inputs``.
        """
        was_training = self.training
        self.eval()
        try:
            tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
            descriptors = self.descriptor(**tensors)
        finally:
            self.train(was_training)
        return l2_normalize(descriptors.cpu().numpy())


class TeacherModel(VprModel):
    """Camera + LiDAR teacher: ``fused = concat(cloud_dim LiDAR, image_dim image)``.

    With ``cfg.fusion == "normalized_concat"`` (the default) each branch is L2-normalised before the
    concatenation. The paper concatenates raw GeM outputs; here that let the image branch dominate:
    after one epoch its descriptors had norm ~55 against ~3 for the LiDAR branch, and retrieval with
    the fused descriptor gave exactly the image branch's recall, i.e. the teacher ignored its LiDAR.

    ``weighted_concat`` scales the normalised branches by ``sqrt(2 w)`` and ``sqrt(2 (1 - w))``, ``w =
    cfg.fusion_cloud_weight``: the fused norm stays sqrt(2) as with ``normalized_concat`` (the triplet
    margin keeps its meaning) and the cosine of two fused descriptors is ``w cos(cloud) + (1 - w)
    cos(image)`` (``weighted_fusion``). ``learned_concat`` learns ``w = sigmoid(fusion_logit)``, started at
    ``fusion_cloud_weight``; the scale cannot grow, so the triplet loss can only move the balance.

    ``whitened_concat`` is ``weighted_concat`` of the branches centred and PCA-whitened first: each unit
    branch ``u`` becomes ``l2((u - mean) @ projection)`` (``models.whitening``), with the statistics held in
    the buffers ``{cloud,image}_whiten_{mean,projection}`` (so they travel in ``model.safetensors``). A model
    built from its config alone holds the identity (zero mean, identity projection: ``weighted_concat``);
    ``benchmarks/teacher_fusion.py --export-whitened`` fits them on the training region
    (``set_whitening``). It counters the LiDAR head's compressed cosines (all scans look alike along a few
    dominant directions), which let even a small camera share reorder the LiDAR's matches.
    """

    kind: ModelKind = "teacher"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.image_encoder = make_image_encoder(
            cfg.image_backbone, cfg.image_dim, cfg.pretrained, cfg.image_size, cfg.freeze_stages
        )
        self.lidar_encoder = make_lidar_encoder(cfg.cloud_dim, cfg)
        self.input_spec = InputSpec(("image", "cloud"), cfg.fused_dim, cfg.image_size, cfg.lidar_grid)
        if cfg.fusion == "learned_concat":
            weight = cfg.fusion_cloud_weight
            self.fusion_logit = nn.Parameter(torch.tensor(math.log(weight / (1.0 - weight))))
        if cfg.fusion == "whitened_concat":
            for branch, dim in (("cloud", cfg.cloud_dim), ("image", cfg.image_dim)):
                self.register_buffer(f"{branch}_whiten_mean", torch.zeros(dim))
                self.register_buffer(f"{branch}_whiten_projection", torch.eye(dim))

    def set_whitening(self, branch: str, mean: np.ndarray, projection: np.ndarray) -> None:
        """Install one branch's whitening statistics (``models.whitening.fit_whitening``)."""
        if self.cfg.fusion != "whitened_concat":
            raise ValueError(f"whitening statistics need fusion whitened_concat, not {self.cfg.fusion}")
        buffer_mean = getattr(self, f"{branch}_whiten_mean")
        buffer_projection = getattr(self, f"{branch}_whiten_projection")
        mean, projection = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(projection, dtype=torch.float32)
        if mean.shape != buffer_mean.shape or projection.shape != buffer_projection.shape:
            raise ValueError(f"{branch} whitening: shapes {tuple(mean.shape)}, {tuple(projection.shape)} do not "
                             f"fit {tuple(buffer_mean.shape)}, {tuple(buffer_projection.shape)}")
        buffer_mean.copy_(mean)
        buffer_projection.copy_(projection)

    @property
    def cloud_weight(self) -> float | None:
        """The LiDAR share ``w`` of the fused similarity (None for plain ``concat``)."""
        if self.cfg.fusion == "concat":
            return None
        if self.cfg.fusion == "learned_concat":
            return float(torch.sigmoid(self.fusion_logit.detach()))
        return 0.5 if self.cfg.fusion == "normalized_concat" else self.cfg.fusion_cloud_weight

    def forward(
        self, image: torch.Tensor, cloud: CloudInput, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        cloud_desc = self.lidar_encoder(cloud, mask)
        image_desc = self.image_encoder(image)
        parts = [cloud_desc, image_desc]
        if self.cfg.fusion != "concat":
            parts = [nn.functional.normalize(p, dim=1, eps=1e-12) for p in parts]
        if self.cfg.fusion == "whitened_concat":
            parts = [nn.functional.normalize((p - getattr(self, f"{b}_whiten_mean"))
                                             @ getattr(self, f"{b}_whiten_projection"), dim=1, eps=1e-12)
                     for p, b in zip(parts, ("cloud", "image"))]
        if self.cfg.fusion in ("weighted_concat", "learned_concat", "whitened_concat"):
            weight = (torch.sigmoid(self.fusion_logit) if self.cfg.fusion == "learned_concat"
                      else torch.tensor(self.cfg.fusion_cloud_weight))
            parts = [parts[0] * torch.sqrt(2.0 * weight), parts[1] * torch.sqrt(2.0 * (1.0 - weight))]
        return {"fused": torch.cat(parts, dim=1), "cloud": cloud_desc, "image": image_desc}


class CameraStudent(VprModel):
    """Camera-only student: image encoder → ``student_out_dim`` (384 by default)."""

    kind: ModelKind = "camera_student"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.image_encoder = make_image_encoder(
            cfg.image_backbone, cfg.student_out_dim, cfg.pretrained, cfg.image_size, cfg.freeze_stages
        )
        self.input_spec = InputSpec(("image",), cfg.student_out_dim, image_size=cfg.image_size)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fused": self.image_encoder(image)}


class LidarStudent(VprModel):
    """LiDAR-only student: BEV (or polar, ``cfg.lidar_encoder``) encoder → ``student_out_dim`` (384 by default)."""

    kind: ModelKind = "lidar_student"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.lidar_encoder = make_lidar_encoder(cfg.student_out_dim, cfg)
        self.input_spec = InputSpec(("cloud",), cfg.student_out_dim, bev=cfg.lidar_grid)

    def forward(self, cloud: CloudInput, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"fused": self.lidar_encoder(cloud, mask)}


MODEL_CLASSES: dict[str, type[VprModel]] = {
    "teacher": TeacherModel,
    "camera_student": CameraStudent,
    "lidar_student": LidarStudent,
}
