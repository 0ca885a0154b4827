"""Tiny models shared by the tests: resnet18 from scratch at 64x48, 16x16 BEV, small descriptors."""

import torch

from distilvpr_ros.models import BevConfig, ModelConfig, build_model
from distilvpr_ros.models.checkpoint import save_model_checkpoint

TINY = dict(image_size=(64, 48), pretrained=False, image_backbone="resnet18", student_dim=32, cloud_dim=16,
            image_dim=16, lidar_channels=(8, 16), bev=BevConfig(cells=16))


def tiny_checkpoints(out) -> dict:
    """Random-weight teacher and student checkpoints (seed 0) and a second student (seed 1) under ``out``."""
    torch.manual_seed(0)
    teacher = save_model_checkpoint(out / "teacher", build_model("teacher", ModelConfig(**TINY)))
    student = save_model_checkpoint(out / "student", build_model("camera_student", ModelConfig(**TINY)))
    torch.manual_seed(1)
    other = save_model_checkpoint(out / "other_student", build_model("camera_student", ModelConfig(**TINY)))
    return {"teacher": teacher, "student": student, "other": other}
