"""Training of the CNN descriptor head (:class:`~.cnn_descriptors.DescriptorHead`) on a synthetic world's geometry.

Pairs: every ``step``-th frame of each non-day run of the chosen region (``train`` by default: the head never sees
the val / test frames it is selected / reported on) with its *positive* map frame, the nearest frame of the day run
driving the same direction within 5 m and 30 degrees. The map frame is prepared as a map stores and verification
uses it (JPEG q90, LiDAR points voxel-downsampled to 0.3 m, upright ORB keypoints with a LiDAR 3D point); the query
gets upright ORB keypoints. The ground-truth relative pose projects each keyframe point into the query: a keypoint
within ``match_px`` of it is its correspondence.

Loss: InfoNCE in both directions (each corresponding keyframe keypoint against all query keypoints of the pair, and
each corresponding query keypoint against all keyframe keypoints) at temperature ``tau``, so the head learns to tell
a keypoint from its neighbours and from the rest of the image. The trunk is frozen: its stage vectors are
computed once per image. One thread, CPU; ~5 min on the default world's train region.

    python -m distilvpr_ros.verification.cnn_head_training --world data/world_default \\
        --out results/verification/cnn_head.safetensors
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..data.calibration import CameraCalibration
from ..data.geometry import invert, transform_points, yaw_of
from ..data.synthetic import load_synthetic, read_world_meta
from .camera import CameraVerifier, KeyframeView
from .cnn_descriptors import CnnDescriptor, DescriptorHead
from .config import CameraVerificationConfig
from .lidar import voxel_downsample

#: As a map stores a keyframe's view (``pipeline.views.make_view`` defaults).
JPEG_QUALITY = 90
VOXEL_M = 0.3


@dataclass
class PairSample:
    """One training pair: the stage vectors of both images' keypoints and the corresponding index pairs."""

    condition: str
    keyframe: torch.Tensor  # (K, in_dim) float16
    query: torch.Tensor  # (Q, in_dim) float16
    kf_index: np.ndarray  # (P,) keyframe keypoints with a query correspondence
    q_index: np.ndarray  # (P,) their query keypoints


def _stored_image(rgb: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def positive_pairs(world: Path, region: str, step: int = 1, neighbours: int = 1):
    """``(query run, frame, map run, map frame)`` of every ``step``-th non-day frame and its positive (module doc;
    ``neighbours`` > 1: that many nearest positives each, for more viewpoint changes), with the runs
    (``{run id: SyntheticRun}``)."""
    runs = {r.run: r for r in load_synthetic(world, {region})}
    day = {r.info["direction"]: r.run for r in runs.values() if r.info["condition"]["name"] == "day"}
    out = []
    for q, qr in runs.items():
        m = day.get(qr.info["direction"])
        if qr.info["condition"]["name"] == "day" or m is None or len(qr) == 0:
            continue
        mr = runs[m]
        map_xy, map_yaw = mr.poses[:, :2, 3], np.array([yaw_of(p) for p in mr.poses])
        for i in range(0, len(qr), step):
            qp = qr.poses[i]
            d = np.linalg.norm(map_xy - qp[:2, 3], axis=1)
            dyaw = np.abs((np.degrees(map_yaw - yaw_of(qp)) + 180) % 360 - 180)
            d = np.where(dyaw < 30, d, np.inf)
            out += [(q, i, m, int(j)) for j in np.argsort(d)[:neighbours] if d[j] <= 5]
    return out, runs


def pair_sample(verifier: CameraVerifier, cnn: CnnDescriptor, kf: KeyframeView, query: np.ndarray,
                query_pose: np.ndarray, condition: str = "", match_px: float = 3.0,
                kf_vectors: torch.Tensor | None = None) -> PairSample | None:
    """The training pair of a prepared keyframe and a query image taken at ``query_pose`` (world_T_base, same
    calibration); None when the query has no features."""
    calib = kf.calibration
    qf = verifier.features(query)
    if len(qf) < 2 or verifier.prepare(kf):
        return None
    kx = kf_vectors if kf_vectors is not None else cnn.stage_vectors(kf.image, kf.features.uv).half()
    T = invert(query_pose @ calib.T_base_camera) @ kf.pose @ calib.T_base_camera  # keyframe camera -> query camera
    uv, inside = calib.project(transform_points(T, kf.points), 0.5)
    dist, nearest = cKDTree(qf.uv).query(np.where(np.isfinite(uv), uv, -1e6))
    pos = np.flatnonzero(inside & (dist < match_px))
    return PairSample(condition, kx, cnn.stage_vectors(query, qf.uv).half(), pos, nearest[pos])


def collect(world: Path, region: str, stages: tuple[int, ...], step: int = 1, match_px: float = 3.0,
            neighbours: int = 1, log=print) -> list[PairSample]:
    """The :class:`PairSample` of every positive pair of ``region`` (module doc)."""
    calib = CameraCalibration.from_world_meta(read_world_meta(world))
    pairs, runs = positive_pairs(world, region, step, neighbours)
    verifier = CameraVerifier(CameraVerificationConfig(features="orb", upright=True))
    cnn = CnnDescriptor(stages)
    keyframes: dict[tuple[str, int], tuple[KeyframeView, torch.Tensor] | None] = {}
    samples, t0 = [], time.time()
    for n, (q, i, m, j) in enumerate(pairs):
        if (m, j) not in keyframes:
            s = runs[m][j]
            img = _stored_image(s.image)
            pts = voxel_downsample(np.asarray(s.cloud)[:, :3].astype(np.float64), VOXEL_M).astype(np.float16)
            kf = KeyframeView.from_cloud(s.pose, calib, img, pts.astype(np.float64))
            keyframes[(m, j)] = None if verifier.prepare(kf) else (kf, cnn.stage_vectors(img, kf.features.uv).half())
        if keyframes[(m, j)] is None:
            continue
        kf, kx = keyframes[(m, j)]
        s = pair_sample(verifier, cnn, kf, runs[q].image(i), runs[q].poses[i], runs[q].info["condition"]["name"],
                        match_px, kx)
        if s is not None:
            samples.append(s)
        if (n + 1) % 200 == 0:
            log(f"collected {n + 1}/{len(pairs)} pairs ({time.time() - t0:.0f} s)")
    return samples


def info_nce(head: DescriptorHead, s: PairSample, tau: float) -> torch.Tensor:
    """Both directions' InfoNCE of one pair (module doc)."""
    k, q = head(s.keyframe.float()), head(s.query.float())
    ki, qi = torch.from_numpy(s.kf_index), torch.from_numpy(s.q_index)
    return F.cross_entropy(k[ki] @ q.T / tau, qi) + F.cross_entropy(q[qi] @ k.T / tau, ki)


def train_head(samples: list[PairSample], stages: tuple[int, ...], epochs: int = 3, lr: float = 1e-3,
               tau: float = 0.05, hidden: int = 256, out_dim: int = 128, min_correspondences: int = 8, seed: int = 0,
               log=print) -> tuple[DescriptorHead, list[float]]:
    """A head trained on ``samples`` (pairs with fewer than ``min_correspondences`` are left out); mean loss per
    epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    use = [s for s in samples if len(s.kf_index) >= min_correspondences]
    if not use:
        raise ValueError("no training pair has enough correspondences")
    head = DescriptorHead(stages, hidden, out_dim)
    opt = torch.optim.Adam(head.parameters(), lr)
    losses = []
    for epoch in range(epochs):
        total, t0 = 0.0, time.time()
        for k in rng.permutation(len(use)):
            loss = info_nce(head, use[k], tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / len(use))
        log(f"epoch {epoch}: loss {losses[-1]:.4f} ({time.time() - t0:.0f} s, {len(use)} pairs)")
    return head.eval().requires_grad_(False), losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    p.add_argument("--region", default="train", help="frames trained on (never the region reported on)")
    p.add_argument("--out", type=Path, default=Path("results/verification/cnn_head.safetensors"))
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Lite0 stages (cnn_descriptors)")
    p.add_argument("--step", type=int, default=1, help="every n-th query frame")
    p.add_argument("--neighbours", type=int, default=1, help="positives per query frame (the nearest ones)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--out-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    t0 = time.time()
    stages = tuple(sorted(set(args.stages)))
    samples = collect(args.world, args.region, stages, args.step, neighbours=args.neighbours)
    print(f"{len(samples)} pairs, median {np.median([len(s.kf_index) for s in samples]):.0f} correspondences "
          f"({time.time() - t0:.0f} s)", flush=True)
    head, losses = train_head(samples, stages, args.epochs, tau=args.tau, hidden=args.hidden, out_dim=args.out_dim,
                              seed=args.seed)
    head.save(args.out, world=str(args.world), region=args.region, pairs=len(samples), epochs=args.epochs,
              neighbours=args.neighbours,
              tau=args.tau, seed=args.seed, losses=losses, seconds=time.time() - t0)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
