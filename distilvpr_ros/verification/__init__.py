"""Geometric verification of place matches (ROS-free): camera PnP against a keyframe's LiDAR depth, which also
gives the query's metric 6-DoF pose; LiDAR scan registration; re-ranking of candidates by inliers."""

from .calibration import CameraCalibration
from .camera import CameraVerification, CameraVerifier, KeyframeView
from .config import CameraVerificationConfig, LidarVerificationConfig, RerankConfig

__all__ = ["CameraCalibration", "CameraVerification", "CameraVerifier", "KeyframeView", "CameraVerificationConfig",
           "LidarVerificationConfig", "RerankConfig"]
