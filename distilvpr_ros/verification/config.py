"""Settings of geometric verification (camera PnP, LiDAR registration, re-ranking), one pydantic schema.

Defaults come from ``benchmarks/verification.py`` on the synthetic world (see
``docs/results/verification/``) and the accept rules of the systems named in issue 13 (RTAB-Map:
>= 20 PnP inliers; LIO-SAM: ICP fitness score <= 0.3, here 0.5 because our fitness counts every
correspondence within 2 m and correct registrations reach 0.36).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import Section


class CameraVerificationConfig(Section):
    """Local features + PnP against a keyframe's LiDAR depth; gives the query's metric pose."""

    features: Literal["sift", "orb", "cnn"] = Field(
        "orb", description="local features: OpenCV SIFT or ORB (ORB: higher precision per ms and recall, measured), "
        "or cnn: ORB keypoints described by the ImageNet EfficientNet-Lite0 trunk's feature maps (cnn_stages)")
    photometric: Literal["none", "clahe", "median"] = Field(
        "none", description="grey-image filter before detection / ORB and SIFT description: none, clahe "
        "(equalisation) or median (3x3, against low-light pixel noise)")
    cnn_stages: str = Field(
        "3,4", description="features: cnn without cnn_head: comma-separated Lite0 stages sampled at the keypoints "
        "(0 stem .. 5; 2 = stride 4, 3 = stride 8, 4 = stride 16 / 80 channels)")
    max_features: int = Field(1000, ge=8, description="features detected per image at most")
    upright: bool = Field(
        True, description="describe keypoints at orientation 0 (a vehicle camera does not roll; rotation invariance "
        "only adds orientation noise): measured more true matches in every condition")
    cnn_head: str = Field(
        "", description="features: cnn: a descriptor head file (safetensors, from `python -m "
        "distilvpr_ros.verification.cnn_head_training`; its stages replace cnn_stages); empty: the raw stage features")
    ratio: float = Field(0.8, gt=0, le=1, description="Lowe ratio test: best / second-best descriptor distance "
                         "(1: mutual nearest neighbours only)")
    ratio_exclusion_px: float = Field(
        0.0, ge=0, description="ratio test's second-best: the best keyframe feature farther than this (px) from the "
        "best one (CNN descriptors of neighbouring keypoints look alike); 0: plain second-best")
    depth_radius_px: int = Field(4, ge=0, description="LiDAR depth is looked up within this pixel radius of a keypoint")
    depth_min_samples: int = Field(3, ge=1, description="LiDAR returns needed in that window to give a depth")
    depth_max_residual: float = Field(
        0.03, gt=0, description="largest relative depth residual of the window's plane fit (else: a depth edge)")
    drop_low_points: bool = Field(
        True, description="drop 2D-3D correspondences lower than min_point_height_m above the keyframe's base frame "
        "(road markings repeat along a street and make consistent wrong fixes); false keeps all")
    min_point_height_m: float = Field(
        0.3, description="height (m, in the keyframe's base frame) below which drop_low_points drops correspondences; "
        "every value is a height, 0.0 included")
    pnp_backend: Literal["auto", "poselib", "opencv"] = Field(
        "auto", description="PnP + RANSAC solver; auto: poselib when installed, else OpenCV")
    ransac_threshold_px: float = Field(4.0, gt=0, description="RANSAC inlier threshold on reprojection error (px)")
    ransac_iterations: int = Field(1000, ge=10, description="RANSAC iterations at most")
    min_inliers: int = Field(20, ge=4, description="accept: at least this many PnP inliers")
    max_reprojection_px: float = Field(2.0, gt=0, description="accept: inliers' RMS reprojection error at most (px)")
    min_sigma_px: float = Field(0.5, gt=0, description="floor of the pixel noise used for the pose covariance (px)")

    @field_validator("cnn_stages", mode="before")
    @classmethod
    def _stages_exist(cls, v):
        if isinstance(v, (list, tuple)):
            v = ",".join(str(s) for s in v)
        try:
            stages = sorted({int(s) for s in str(v).split(",") if s.strip()})
        except ValueError:
            stages = []
        if not stages or any(s < 0 or s > 5 for s in stages):
            raise ValueError(f"cnn_stages must be comma-separated stages in 0..5 (Lite0 stem and its five kept "
                             f"stages), got {v!r}")
        return ",".join(str(s) for s in stages)

    @property
    def cnn_stage_tuple(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.cnn_stages.split(","))

    @model_validator(mode="before")
    @classmethod
    def _legacy_unset_height(cls, data):
        """``min_point_height_m: null`` (the former way to keep every point) means ``drop_low_points: false``."""
        if isinstance(data, dict) and "min_point_height_m" in data and data["min_point_height_m"] is None:
            data = {k: v for k, v in data.items() if k != "min_point_height_m"}
            data["drop_low_points"] = False
        return data


class LidarVerificationConfig(Section):
    """Registration of a query scan/submap to a candidate's; gives the relative transform."""

    backend: Literal["small_gicp", "open3d"] = Field("small_gicp", description="registration library (GICP)")
    voxel_m: float = Field(0.5, gt=0, description="voxel size the clouds are downsampled to (m)")
    max_correspondence_m: float = Field(2.0, gt=0, description="registration's correspondence distance (m)")
    max_iterations: int = Field(50, ge=1, description="registration iterations at most")
    inlier_distance_m: float = Field(
        0.5, gt=0, description="a source point with a target point this near is an inlier (m)")
    min_inlier_ratio: float = Field(0.5, ge=0, le=1, description="accept: fraction of source points that are inliers")
    max_fitness: float = Field(
        0.5, gt=0, description="accept: mean squared distance of correspondences within max_correspondence_m at most "
        "(m^2; correct registrations <= 0.36 at p90, wrong places >= 0.66 on the synthetic world)")
    min_constraint: float = Field(
        0.02, ge=0, le=1, description="accept: smallest/largest eigenvalue of the inliers' normal information "
        "(rejects corridors and open fields, where a translation slides freely)")
    min_points: int = Field(50, ge=3, description="clouds with fewer points (after downsampling) are rejected")


class RerankConfig(Section):
    """Re-ranking of the top-k descriptor candidates by verification, and temporal confirmation."""

    top_k: int = Field(5, ge=1, description="candidates verified per query")
    stop_at_first: bool = Field(
        True, description="stop verifying at the first accepted candidate (latency); false: verify all top_k and "
                          "keep the one with the most inliers")
    consecutive: int = Field(1, ge=1, description="accepted only after this many consecutive agreeing frames")
    agree_m: float = Field(3.0, gt=0, description="consecutive poses agree within this distance (m)")
    agree_deg: float = Field(10.0, gt=0, description="consecutive poses agree within this rotation (deg)")
    tracking_min_inliers: int = Field(
        0, ge=0, description="tracking: while a prediction exists (the last accepted pose carried forward by "
        "odometry), accept a candidate with at least this many PnP inliers (fewer than camera.min_inliers) when its "
        "pose agrees with the prediction within tracking_agree_m / tracking_agree_deg; 0: off (every frame needs "
        "camera.min_inliers)")
    tracking_bootstrap: bool = Field(
        False, description="tracking without a fix yet: a pose with at least tracking_min_inliers is tentative, and "
        "the next frame's pose that agrees with it through the odometry is accepted (and starts the track)")
    tracking_agree_m: float = Field(2.0, gt=0, description="tracking: largest distance to the prediction (m)")
    tracking_agree_deg: float = Field(5.0, gt=0, description="tracking: largest rotation to the prediction (deg)")
    tracking_max_travel_m: float = Field(
        30.0, gt=0, description="tracking: the prediction lapses after this much odometry since the last accepted "
        "frame (drift); a frame without odometry ends it too")
    tracking_gate_fixes: bool = Field(
        False, description="tracking: while a prediction exists, a pose with camera.min_inliers must agree with it "
        "too (else rejected); the prediction still lapses after tracking_max_travel_m, and a fix then starts over")
    tracking_candidates: int = Field(
        0, ge=0, description="tracking: while a prediction exists, also verify the map keyframes nearest to it "
        "(at most this many, within tracking_candidate_radius_m and tracking_candidate_deg of its heading), before "
        "the descriptor's top_k: a true keyframe the descriptor ranks below top_k is still found; 0: off")
    tracking_candidate_radius_m: float = Field(
        10.0, gt=0, description="tracking_candidates: largest planar distance of a keyframe to the prediction (m)")
    tracking_candidate_deg: float = Field(
        30.0, gt=0, le=180, description="tracking_candidates: largest heading difference of a keyframe to the "
        "prediction (deg; a forward camera sees little of a place driven the other way)")
    tracking_local_map: bool = Field(
        False, description="tracking_candidates: verify the query against those keyframes pooled first (one PnP over "
        "all their 2D-3D correspondences, in the map frame); accepted as a tracked candidate is, listed under the "
        "nearest keyframe that can be verified against")
