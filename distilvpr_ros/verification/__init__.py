"""Geometric verification of place matches (ROS-free): camera PnP against a keyframe's LiDAR depth, which also
gives the query's metric 6-DoF pose; LiDAR scan registration; a cheap bird's-eye-view check of LiDAR candidates;
re-ranking of candidates by inliers; temporal confirmation over consecutive frames."""

from .agreement import ConsecutiveAgreement
from ..data.calibration import CameraCalibration
from .bev import BevMatch, BevVerificationConfig, BevVerifier
from .camera import CameraVerification, CameraVerifier, KeyframeView
from .config import CameraVerificationConfig, LidarVerificationConfig, RerankConfig
from .lidar import LidarVerifier, Registration
from .rerank import Reranked, VerifiedCandidate, rerank

__all__ = ["BevMatch", "BevVerificationConfig", "BevVerifier", "CameraCalibration", "CameraVerification",
           "CameraVerifier", "KeyframeView", "CameraVerificationConfig",
           "ConsecutiveAgreement", "LidarVerificationConfig", "LidarVerifier", "Registration", "RerankConfig",
           "Reranked", "VerifiedCandidate", "rerank"]
