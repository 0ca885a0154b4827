"""One network (torch checkpoint or ONNX Runtime) as a function from numpy sensor data to one
L2-normalised descriptor, with input validation (:class:`Embedder`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..mapping.database import EmbeddingSpace, IndexConfig
from ..utils.fileio import backup_path
from .config import STUDENT_SPACE, TEACHER_SPACE, ModelsConfig

#: Model kinds that may fill the map's teacher space (loop closures of the mapping node and build-map): the
#: camera+LiDAR teacher, a LiDAR student, or a no-training classical LiDAR kind (a checkpoint of one, or its
#: name: ``models.teacher_checkpoint: scan_context_fft``).
LOOP_CLOSURE_KINDS = ("teacher", "lidar_student", "ring_key", "scan_context_fft")


class ModelLoadError(RuntimeError):
    """A model file is missing, corrupt or not the kind the pipeline needs; the message says which."""


class Embedder:
    """One network as a function from numpy sensor data to one L2-normalised float32 descriptor.

    ``model`` is a torch :class:`~distilvpr_ros.models.vpr.VprModel` or an
    :class:`~distilvpr_ros.models.export.OnnxRunner`; ``identity`` is ``(name, sha256)`` of its weights
    (the map's embedding-space tag, :func:`~distilvpr_ros.models.checkpoint.model_identity`).
    """

    def __init__(self, model: Any, kind: str, identity: tuple[str, str], backend: str = "torch") -> None:
        from ..models.inference import input_spec_of

        self.model, self.kind, self.identity, self.backend = model, kind, identity, backend
        self.spec = input_spec_of(model)

    # ---- construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, kind: str, num_threads: int = 1,
                        accept: tuple[str, ...] | None = None) -> "Embedder":
        """A torch model from a checkpoint folder (or a classical kind's name), used as ``kind`` (the map
        space it fills); refuses a missing folder or a model whose kind is not ``kind`` (or in ``accept``)."""
        import torch

        from ..models.checkpoint import CheckpointError, classical_kind, load_model, model_identity

        accept = accept or (kind,)
        named = classical_kind(path)
        path = Path(path)
        if named is None and (not str(path) or not (path.is_dir() or backup_path(path).is_dir())):  # .bak: see fileio
            raise ModelLoadError(f"{kind} checkpoint not found: {str(path) or '(not set)'}")
        torch.set_num_threads(num_threads)
        try:
            model = load_model(path, expect_kind=accept[0] if len(accept) == 1 else None)
            if model.kind not in accept:
                raise CheckpointError(f"holds a {model.kind} model, expected {' or '.join(accept)}")
            identity = model_identity(path)
        except (CheckpointError, KeyError, ValueError, OSError) as e:
            raise ModelLoadError(f"{kind} checkpoint {path}: {e}") from None
        return cls(model, kind, identity, "torch")

    @classmethod
    def teacher_from_config(cls, cfg: ModelsConfig) -> "Embedder":
        """The model of the map's teacher space (loop closures): ``teacher_checkpoint`` holds any of
        :data:`LOOP_CLOSURE_KINDS` (or names a classical one)."""
        return cls.from_checkpoint(cfg.teacher_checkpoint, TEACHER_SPACE, cfg.num_threads, LOOP_CLOSURE_KINDS)

    @classmethod
    def from_onnx(cls, path: str | Path, kind: str = STUDENT_SPACE, checkpoint: str | Path | None = None,
                  num_threads: int = 1) -> "Embedder":
        """An ONNX Runtime model. Its identity comes from the checkpoint it was exported from: the
        ``checkpoint_sha256`` metadata written by :func:`~distilvpr_ros.models.export.export_model`, else the
        ``checkpoint`` folder."""
        from ..models.checkpoint import model_identity
        from ..models.export import ONNX_CHECKPOINT_NAME, ONNX_CHECKPOINT_SHA, OnnxRunner

        path = Path(path)
        if not str(path) or not path.is_file():
            raise ModelLoadError(f"{kind} ONNX model not found: {str(path) or '(not set)'}")
        try:
            runner = OnnxRunner(path, intra_op_num_threads=num_threads)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise ModelLoadError(f"{kind} ONNX model {path}: cannot load ({e})") from None
        got = runner.metadata.get("kind")
        if got != kind:
            raise ModelLoadError(f"{path}: holds a {got or 'unknown'} model, expected {kind}")
        if ONNX_CHECKPOINT_SHA in runner.metadata:
            identity = (runner.metadata.get(ONNX_CHECKPOINT_NAME, path.stem), runner.metadata[ONNX_CHECKPOINT_SHA])
        elif checkpoint:
            try:
                identity = model_identity(checkpoint)
            except Exception as e:
                raise ModelLoadError(f"checkpoint {checkpoint} (identity of {path}): {e}") from None
        else:
            raise ModelLoadError(f"{path} does not record the checkpoint it was exported from; export it with "
                                 "`distilvpr export` or also set models.student_checkpoint")
        return cls(runner, kind, identity, "onnxruntime")

    @classmethod
    def student_from_config(cls, cfg: ModelsConfig) -> "Embedder":
        """The camera student as configured (``backend`` torch → checkpoint, onnxruntime → ONNX file)."""
        if cfg.backend == "onnxruntime":
            return cls.from_onnx(cfg.student_onnx, STUDENT_SPACE, cfg.student_checkpoint or None, cfg.num_threads)
        return cls.from_checkpoint(cfg.student_checkpoint, STUDENT_SPACE, cfg.num_threads)

    # ---- use
    @property
    def dim(self) -> int:
        return self.spec.descriptor_dim

    @property
    def sha256(self) -> str:
        return self.identity[1]

    def space(self, index: IndexConfig | None = None) -> EmbeddingSpace:
        """The map embedding space of this model (named after its kind, tagged with its identity)."""
        return EmbeddingSpace(self.kind, self.dim, self.identity[0], self.identity[1], "ip", index or IndexConfig())

    def __call__(self, image: np.ndarray | None = None, cloud: np.ndarray | None = None) -> np.ndarray:
        """``(dim,)`` float32 unit descriptor of one frame; ValueError for unusable inputs."""
        from ..models.inference import embed_batch, model_inputs

        if "image" in self.spec.inputs:
            check_image(image)
        if "cloud" in self.spec.inputs:
            cloud = check_cloud(cloud)
        desc = embed_batch(self.model, model_inputs(self.spec, [image], [cloud]))[0]
        if desc.shape != (self.dim,) or not np.isfinite(desc).all():
            raise ValueError(f"{self.kind} produced an invalid descriptor (shape {desc.shape}, expected ({self.dim},))")
        return desc


MIN_IMAGE_SIDE = 8


def check_image(image: np.ndarray | None) -> np.ndarray:
    """An ``H x W x 3`` uint8 image with both sides >= 8 px, or ValueError saying what is wrong."""
    if image is None:
        raise ValueError("the model needs a camera image but none was given")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small (min side {MIN_IMAGE_SIDE} px)")
    return image


def check_cloud(cloud: np.ndarray | None) -> np.ndarray:
    """An ``N x C`` (C >= 3) cloud with at least one finite point (non-finite points removed)."""
    if cloud is None:
        raise ValueError("the model needs a LiDAR cloud but none was given")
    cloud = np.asarray(cloud)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"expected an N x C LiDAR cloud with C >= 3, got shape {cloud.shape}")
    finite = np.isfinite(cloud[:, :3]).all(axis=1)
    if not finite.any():
        raise ValueError(f"LiDAR cloud has no finite points ({len(cloud)} points, all NaN/inf or none)")
    return cloud if finite.all() else cloud[finite]


def configure_threads(num_threads: int) -> None:
    """Keep inference to ``num_threads`` CPU threads (torch, and OpenMP for libraries loaded later).

    Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``): a spinning pool made the
    torch backend stall when another process wanted the CPU (p99 1.75 s at 100 Hz). OpenMP reads it when a
    library loads, so the node and CLI entry points set it too, before torch and faiss load; a value
    already in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
    try:
        import torch

        torch.set_num_threads(num_threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        pass
