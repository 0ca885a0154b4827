"""Which occupied 1 m voxels of the world's structure each camera frame sees (ray casting, open3d).

A coarse grid of camera rays (``rays_x x rays_y``, default 128 x 96, spread evenly over the image with
the world's intrinsics ``K``) is cast from each frame's camera pose (``world_T_base @ T_base_camera``, optical frame:
z forward, x right, y down) into the run's static scene: the town with the run's tree crowns (none in
winter) and parked cars, exactly as :class:`~.render.Renderer` builds it, without the moving traffic. A
hit counts when its ray is at most ``max_range_m`` long and it lies more than ``min_height_m`` above the
ground (z = 0); its voxel is ``floor(point / voxel_m)`` of the hit point pushed ``voxel_m / 20`` into the
surface (against its normal), so a wall on a voxel boundary falls in the voxel its solid occupies.
A frame's *visible voxels* are the distinct voxels of its hits.

The grid is a sample: a wall seen at a grazing angle is hit only every few metres, and two viewpoints
then hit different voxels of the same wall. On the default world 64 x 48 rays find 164 voxels per
frame, 128 x 96 find 209 and 256 x 192 find 231; the share of opposite-direction queries with a visible
match was 0.19 / 0.22 / 0.22 on two of its runs, so the default is 128 x 96 (4x the rays of 64 x 48).

:func:`visible_voxel_sets` does this for any triangle mesh (tests use hand-made scenes);
:func:`world_visible_voxels` for every frame of every run of a generated world. The cache, the overlap
of two frames' sets and the pose-only proxy live in :mod:`distilvpr_ros.data.visibility`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

#: Frames ray-cast per call (bounds the memory of one call to about 12,000 rays x 128 frames).
_CHUNK = 128


@dataclass(frozen=True)
class RayCastParams:
    """What a frame's visible voxels depend on (besides the world); part of the cache key."""

    voxel_m: float = 1.0
    min_height_m: float = 0.3
    max_range_m: float = 30.0
    rays_x: int = 128
    rays_y: int = 96

    def __post_init__(self):
        if not (self.voxel_m > 0 and self.max_range_m > 0 and self.rays_x > 0 and self.rays_y > 0):
            raise ValueError(f"invalid ray-casting parameters {self}")


def camera_ray_directions(K: np.ndarray, width: int, height: int, rays_x: int, rays_y: int) -> np.ndarray:
    """Unit directions (optical frame) of a ``rays_x x rays_y`` grid of rays at the centres of equal image cells."""
    K = np.asarray(K, dtype=float)
    u = (np.arange(rays_x) + 0.5) * width / rays_x - 0.5
    v = (np.arange(rays_y) + 0.5) * height / rays_y - 0.5
    uu, vv = np.meshgrid(u, v)
    d = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], axis=-1).reshape(-1, 3)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def visible_voxel_sets(vertices: np.ndarray, triangles: np.ndarray, world_T_camera: np.ndarray, K: np.ndarray,
                       width: int, height: int, params: RayCastParams = RayCastParams(), *, threads: int = 1,
                       progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Visible voxels of camera poses in a triangle mesh.

    Args:
        vertices, triangles: the scene (``(V, 3)`` metres, ``(T, 3)`` vertex indices).
        world_T_camera: ``(N, 4, 4)`` camera (optical frame) poses.
        K, width, height: the camera's intrinsics and image size.

    Returns:
        ``indptr`` (``N + 1``) and ``voxels`` (``indptr[-1] x 3`` int32): frame ``i``'s distinct voxel
        coordinates are ``voxels[indptr[i]:indptr[i + 1]]`` (sorted).
    """
    import open3d as o3d  # heavy; only computing needs it

    scene = o3d.t.geometry.RaycastingScene(nthreads=threads)
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(triangles, dtype=np.uint32)))
    poses = np.asarray(world_T_camera, dtype=float).reshape(-1, 4, 4)
    dirs = camera_ray_directions(K, width, height, params.rays_x, params.rays_y)
    n_rays = len(dirs)
    counts = np.zeros(len(poses), dtype=np.int64)
    parts = []
    for c0 in tqdm(range(0, len(poses), _CHUNK), desc="ray casting camera views", disable=not progress, leave=False):
        chunk = poses[c0:c0 + _CHUNK]
        origins = np.repeat(chunk[:, :3, 3], n_rays, axis=0)
        world_dirs = np.einsum("fij,rj->fri", chunk[:, :3, :3], dirs).reshape(-1, 3)
        rays = np.concatenate([origins, world_dirs], axis=1).astype(np.float32)
        answer = scene.cast_rays(o3d.core.Tensor(rays))
        t = answer["t_hit"].numpy().astype(float)
        hit = np.isfinite(t) & (t <= params.max_range_m)
        points = origins[hit] + world_dirs[hit] * t[hit, None]
        frame = np.repeat(np.arange(len(chunk)), n_rays)[hit]
        above = points[:, 2] > params.min_height_m
        normals = answer["primitive_normals"].numpy()[hit][above].astype(float)
        into = normals * np.sign(np.einsum("ij,ij->i", normals, world_dirs[hit][above]))[:, None]  # along the ray
        inside = points[above] + into * (params.voxel_m / 20)
        cells = np.floor(inside / params.voxel_m).astype(np.int64)
        keyed = np.unique(np.concatenate([frame[above, None], cells], axis=1), axis=0)
        counts[c0:c0 + len(chunk)] = np.bincount(keyed[:, 0], minlength=len(chunk))
        parts.append(keyed[:, 1:].astype(np.int32))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    voxels = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int32)
    return indptr, voxels


def world_visible_voxels(root: Path, params: RayCastParams = RayCastParams(), *, threads: int = 1,
                         progress: bool = False) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Visible voxels of every frame of every run of the generated world at ``root`` (all regions).

    Poses come from the runs' ``poses.csv``, the camera from ``world.json``'s calibration, the scene from
    the world's config (the town and each run's crowns and parked cars are deterministic in its seed).

    Returns:
        run names, and per run the ``indptr`` and ``voxels`` of :func:`visible_voxel_sets` (frame ``k`` of a
        run is its file index ``k``).
    """
    from ..synthetic import SyntheticRun, read_world_meta
    from .config import WorldConfig
    from .generate import STREAM_PARKING, _rng, world_town
    from .layout import RUNS_DIR

    root = Path(root)
    meta = read_world_meta(root)
    cfg = WorldConfig.model_validate(meta["config"])
    calib = meta["calibration"]
    T_base_camera = np.asarray(calib["T_base_camera"], dtype=float)
    town = world_town(cfg)
    names, indptrs, voxel_sets = [], [], []
    for i, run_cfg in enumerate(cfg.runs):
        name = cfg.run_ids()[i]
        run = SyntheticRun(root / RUNS_DIR / name)
        if not np.array_equal(run.frame_indices, np.arange(len(run))):
            raise ValueError(f"{run.run_dir}: frame indices are not 0..{len(run) - 1}")
        parked = town.parked_for_run(cfg.town, _rng(cfg, STREAM_PARKING, i))  # as generate.RunRenderer draws them
        mesh = town.scene_mesh(run_cfg.condition.season != "winter", parked)
        indptr, voxels = visible_voxel_sets(mesh.vertices, mesh.triangles, run.poses @ T_base_camera, calib["K"],
                                            calib["width"], calib["height"], params, threads=threads,
                                            progress=progress)
        names.append(run.run)
        indptrs.append(indptr)
        voxel_sets.append(voxels)
    return names, indptrs, voxel_sets
