"""Every model kind by name: the learned teacher and students (``models.vpr``) and the no-training classical
LiDAR kinds (``models.classical``), built from one ``ModelConfig``."""

from __future__ import annotations

from .classical import CLASSICAL_MODELS
from .config import ModelConfig, ModelKind
from .vpr import MODEL_CLASSES, VprModel


def build_model(kind: ModelKind, cfg: ModelConfig | None = None) -> VprModel:
    """Build the teacher, a student or a no-training classical LiDAR kind from one ``ModelConfig`` (defaults
    when None)."""
    classes = {**MODEL_CLASSES, **CLASSICAL_MODELS}
    if kind not in classes:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(classes)}")
    return classes[kind](cfg or ModelConfig())
