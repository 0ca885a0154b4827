"""Networks: image and LiDAR encoders, the fusion teacher, the students, GeM, preprocessing, ONNX export.

Typical use::

    from distilvpr_ros.models import ModelConfig, build_model, image_to_tensor

    model = build_model("camera_student", ModelConfig())
    desc = model.embed(image=image_to_tensor(rgb, model.input_spec.image_size)[None])

``export`` (onnx/onnxruntime) is imported on demand: ``from distilvpr_ros.models.export import OnnxRunner``.
"""

from .config import BEV_CHANNELS, BevConfig, ModelConfig
from .image import ImageEncoder, make_image_encoder
from .lidar import LidarEncoder, bev_from_points, pad_clouds
from .pooling import GeM
from .preprocess import cloud_to_bev, image_to_tensor
from .factory import build_model
from .vpr import CameraStudent, InputSpec, LidarStudent, TeacherModel, VprModel, l2_normalize

__all__ = [
    "BEV_CHANNELS",
    "BevConfig",
    "CameraStudent",
    "GeM",
    "ImageEncoder",
    "InputSpec",
    "LidarEncoder",
    "LidarStudent",
    "ModelConfig",
    "TeacherModel",
    "VprModel",
    "bev_from_points",
    "build_model",
    "cloud_to_bev",
    "image_to_tensor",
    "l2_normalize",
    "make_image_encoder",
    "pad_clouds",
]
