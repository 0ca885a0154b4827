"""Headless CPU rendering of the town with open3d ray casting: an RGB pinhole camera and a spinning LiDAR.

Both sensors sit on the vehicle (base frame: x forward, y left, z up, on the ground) with known
extrinsics: ``T_base_camera`` (optical frame: z forward, x right, y down) and ``T_base_lidar``
(x forward, y left, z up). A run's static geometry is one ray-casting scene; the moving objects of
a frame go into a small second scene and the nearer hit wins, which also tells which pixels show
dynamic objects.

The camera shades hits with Lambert from the sun (with cast shadows) plus sky ambient, ego
headlights, street lamps and lit windows at night, then applies fog, rain streaks and sensor noise.
The LiDAR returns range and an intensity from the surface reflectivity and the incidence angle;
lighting never reaches it, weather only through range, dropouts and noise (see
:class:`~.shading.Lighting`). Clouds are rendered from the frame's pose (motion-compensated), with
the per-point firing ``time`` of a clockwise sweep starting behind the vehicle.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from ..geometry import make_pose
from .config import CameraConfig, Condition, LidarConfig, WorldConfig
from .mesh import MaterialArrays, MaterialTable, Mesh
from .shading import Lighting, lighting_for, surface
from .town import Town

_HEADLIGHT_BASE = np.array([2.3, 0.0, 0.7])  # headlight position in the base frame
_LAMPS_USED = 5  # nearest street lamps that light a frame


def _rotate(R: np.ndarray, v_t: np.ndarray) -> np.ndarray:
    """Rotate vectors given as a (3, N) array; returns (N, 3) float32.

    ``R @ v_t`` with the long axis last is one fast BLAS call; ``(N, 3) @ (3, 3)`` is not.
    """
    return np.ascontiguousarray((R.astype(np.float32) @ v_t).T)


class PinholeCamera:
    """Intrinsics, extrinsics and per-pixel ray directions (optical frame) of the camera."""

    def __init__(self, cfg: CameraConfig):
        self.width, self.height = cfg.width, cfg.height
        f = (cfg.width / 2) / np.tan(np.deg2rad(cfg.hfov_deg) / 2)
        cx, cy = (cfg.width - 1) / 2, (cfg.height - 1) / 2  # pixel centres at integer coordinates
        self.K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=np.float64)
        optical_to_base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
        pitch = np.deg2rad(cfg.pitch_deg)
        pitch_down = np.array([[np.cos(pitch), 0, np.sin(pitch)], [0, 1, 0], [-np.sin(pitch), 0, np.cos(pitch)]])
        self.T_base_camera = np.eye(4)
        self.T_base_camera[:3, :3] = pitch_down @ optical_to_base
        self.T_base_camera[:3, 3] = cfg.mount_xyz
        u, v = np.meshgrid(np.arange(cfg.width), np.arange(cfg.height))
        d = np.stack([(u - cx) / f, (v - cy) / f, np.ones_like(u, dtype=float)], axis=-1).reshape(-1, 3)
        self.dirs = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
        self.dirs_t = np.ascontiguousarray(self.dirs.T)  # (3, N), for fast rotation


class SpinningLidar:
    """Extrinsics and per-ray directions (LiDAR frame), ring and firing time of the LiDAR.

    Rays are ordered ring-major: index ``ring * columns + column``; ring 0 is the lowest beam.
    """

    def __init__(self, cfg: LidarConfig):
        self.cfg = cfg
        self.beams, self.columns = cfg.beams, cfg.columns
        self.T_base_lidar = make_pose(cfg.mount_xyz, (0, 0, 0, 1))
        elev = np.deg2rad(np.linspace(cfg.vfov_deg[0], cfg.vfov_deg[1], cfg.beams))
        azim = np.pi - 2 * np.pi * (np.arange(cfg.columns) + 0.5) / cfg.columns  # clockwise from behind
        e, a = np.meshgrid(elev, azim, indexing="ij")
        dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1)
        self.dirs = dirs.reshape(-1, 3).astype(np.float32)
        self.dirs_t = np.ascontiguousarray(self.dirs.T)  # (3, N), for fast rotation
        self.ring = np.repeat(np.arange(cfg.beams), cfg.columns).astype(np.float32)
        self.time = np.tile(np.arange(cfg.columns) * (cfg.sweep_period_s / cfg.columns), cfg.beams).astype(np.float32)


@dataclass
class CameraFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 z-depth along the optical axis (m); inf where the sky is seen
    dynamic_mask: np.ndarray  # (H, W) bool: pixel shows a moving object

    @property
    def dynamic_fraction(self) -> float:
        return float(self.dynamic_mask.mean())


@dataclass
class LidarFrame:
    cloud: np.ndarray  # (N, 6) float32 x, y, z, intensity in [0, 1], ring, time; returns only
    range_image: np.ndarray  # (beams, columns) float32 range (m); 0 = no return


@dataclass
class _Hits:
    """Rays that hit something: their indices and per-hit facts (compact arrays)."""

    index: np.ndarray  # (H,) indices of the rays that hit
    t: np.ndarray  # (H,) ray length (m)
    point: np.ndarray  # (H, 3) world hit point
    normal: np.ndarray  # (H, 3) unit normal facing the ray
    material: np.ndarray  # (H,) material id
    u: np.ndarray  # (H,) coordinate along the facade (static walls)
    dynamic: np.ndarray  # (H,) bool: the hit is a moving object


class DynamicScene:
    """The moving objects of one frame as a small ray-casting scene."""

    def __init__(self, mesh: Mesh, material_offset: int):
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles.astype(np.uint32)))
        self.material = mesh.material + material_offset


class Renderer:
    """Renders one run: the town's static geometry for the run's season and parked cars."""

    def __init__(self, cfg: WorldConfig, town: Town, condition: Condition, parked: np.ndarray,
                 traffic_materials: MaterialTable | None = None):
        mesh = town.scene_mesh(condition.season != "winter", parked)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles.astype(np.uint32)))
        self.tri_material = mesh.material
        self.tri_axis, self.tri_u0 = mesh.facade_frames()
        parts = [town.materials.arrays()] + ([traffic_materials.arrays()] if traffic_materials else [])
        self.materials = MaterialArrays.concat(parts)
        self.dynamic_offset = len(town.materials)
        self.town = town
        self.light: Lighting = lighting_for(condition)
        self.camera = PinholeCamera(cfg.camera)
        self.lidar = SpinningLidar(cfg.lidar)
        self.shadows = cfg.render.shadows and float(self.light.sun.max()) > 0.3
        self.threads = cfg.render.threads
        # Commit the scene now: open3d builds it lazily on the first query, which must not race
        # between threads rendering frames concurrently.
        self.scene.test_occlusions(o3d.core.Tensor(np.array([[0, 0, 1, 0, 0, 1]], dtype=np.float32)))

    def dynamic_scene(self, mesh: Mesh) -> DynamicScene | None:
        """Scene of a frame's moving objects (material ids local to the traffic table); None if empty."""
        return DynamicScene(mesh, self.dynamic_offset) if len(mesh.triangles) else None

    # -- ray casting ----------------------------------------------------------------------------

    def _rays(self, origin: np.ndarray, dirs: np.ndarray) -> o3d.core.Tensor:
        rays = np.empty((len(dirs), 6), dtype=np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = dirs
        return o3d.core.Tensor(rays)

    def _cast(self, origin: np.ndarray, dirs: np.ndarray, dynamic: DynamicScene | None) -> _Hits:
        rays = self._rays(origin, dirs)
        r = self.scene.cast_rays(rays, nthreads=self.threads)
        t = r["t_hit"].numpy()
        if dynamic is not None:
            rd = dynamic.scene.cast_rays(rays, nthreads=self.threads)
            t_dyn = rd["t_hit"].numpy()
            t = np.minimum(t, t_dyn)
        idx = np.flatnonzero(np.isfinite(t))
        t = t[idx]
        prim = r["primitive_ids"].numpy()[idx].astype(np.int64)
        normal = np.take(r["primitive_normals"].numpy(), idx, axis=0)  # np.take: much faster than [idx] on rows
        is_dyn = np.zeros(len(idx), dtype=bool)
        if dynamic is not None:
            is_dyn = t_dyn[idx] <= t
            if is_dyn.any():
                prim[is_dyn] = 0  # the static hit (if any) is hidden
                normal[is_dyn] = rd["primitive_normals"].numpy()[idx[is_dyn]]
        material = self.tri_material[prim]
        if is_dyn.any():
            material[is_dyn] = dynamic.material[rd["primitive_ids"].numpy()[idx[is_dyn]]]
        d = np.take(dirs, idx, axis=0)
        point = origin + d * t[:, None]
        facing_away = normal[:, 0] * d[:, 0] + normal[:, 1] * d[:, 1] + normal[:, 2] * d[:, 2] > 0
        normal[facing_away] *= -1.0
        axis = np.take(self.tri_axis, prim, axis=0)
        u = point[:, 0] * axis[:, 0] + point[:, 1] * axis[:, 1] - self.tri_u0[prim]
        return _Hits(idx, t, point, normal, material, u, is_dyn)

    # -- camera ---------------------------------------------------------------------------------

    def render_camera(self, pose: np.ndarray, dynamic: DynamicScene | None = None,
                      rng: np.random.Generator | None = None) -> CameraFrame:
        """Image, depth and dynamic mask seen from vehicle pose ``pose`` (world_T_base)."""
        cam = self.camera
        T = pose @ cam.T_base_camera
        dirs = _rotate(T[:3, :3], cam.dirs_t)
        hits = self._cast(T[:3, 3].astype(np.float32), dirs, dynamic)
        n_px = cam.width * cam.height
        miss = np.ones(n_px, dtype=bool)
        miss[hits.index] = False
        color = np.empty((n_px, 3), dtype=np.float32)
        color[miss] = self._sky(np.take(dirs, np.flatnonzero(miss), axis=0))
        color[hits.index] = self._shade(hits, pose)
        image = self._finish(color.reshape(cam.height, cam.width, 3), rng)
        depth = np.full(n_px, np.inf, dtype=np.float32)
        depth[hits.index] = hits.t * cam.dirs[hits.index, 2]
        dyn = np.zeros(n_px, dtype=bool)
        dyn[hits.index] = hits.dynamic
        return CameraFrame(image, depth.reshape(cam.height, cam.width), dyn.reshape(cam.height, cam.width))

    def _sky(self, dirs: np.ndarray) -> np.ndarray:
        L = self.light
        up = np.sqrt(np.clip(dirs[:, 2], 0.0, 1.0))[:, None]
        sky = L.sky_horizon + (L.sky_zenith - L.sky_horizon) * up
        if L.sun.max() > 0:
            sky = sky + L.sun * 0.5 * np.exp(48 * (dirs @ L.sun_dir - 1))[:, None]  # glow around the sun
        return sky

    def _shade(self, hits: _Hits, pose: np.ndarray) -> np.ndarray:
        L = self.light
        p, n = hits.point, hits.normal
        albedo, _, emission = surface(self.materials, self.town.grid, L, hits.material, p, n, hits.u)
        irradiance = L.ambient * (0.6 + 0.4 * n[:, 2:3])
        if L.sun.max() > 0:
            lambert = np.clip(n @ L.sun_dir, 0.0, None)
            if self.shadows:
                lit = np.flatnonzero(lambert > 0)
                rays = np.empty((len(lit), 6), dtype=np.float32)
                rays[:, :3] = p[lit] + n[lit] * 0.03
                rays[:, 3:] = L.sun_dir
                occluded = self.scene.test_occlusions(o3d.core.Tensor(rays), nthreads=self.threads).numpy()
                lambert[lit[occluded]] = 0.0
            irradiance = irradiance + L.sun * lambert[:, None]
        if L.headlights > 0:
            irradiance = irradiance + self._headlights(p, n, pose)
        if L.lamps > 0:
            irradiance = irradiance + self._street_lamps(p, n, pose)
        color = albedo * irradiance + emission
        if np.isfinite(L.fog_distance_m):
            keep = np.exp(-hits.t / L.fog_distance_m)[:, None]
            color = color * keep + L.fog * (1 - keep)
        return color

    def _headlights(self, p, n, pose) -> np.ndarray:
        """Irradiance from the ego's headlights: a cone around the driving direction, 1/d^2 falloff."""
        src = (pose[:3, :3] @ _HEADLIGHT_BASE + pose[:3, 3]).astype(np.float32)
        fwd = pose[:3, 0].astype(np.float32)
        to_light = src - p
        d = np.sqrt(np.einsum("ij,ij->i", to_light, to_light))
        inv = 1.0 / np.maximum(d, 1e-3)
        cos_axis = -(to_light @ fwd) * inv
        lo, hi = np.cos(np.deg2rad(38)), np.cos(np.deg2rad(12))
        cone = np.clip((cos_axis - lo) / (hi - lo), 0, 1)
        lambert = np.clip(np.einsum("ij,ij->i", n, to_light) * inv, 0, None)
        power = self.light.headlights * 2.2 * cone * lambert / (1 + (d / 9.0) ** 2)
        return power[:, None] * np.array([1.0, 0.95, 0.85], np.float32)

    def _street_lamps(self, p, n, pose) -> np.ndarray:
        """Irradiance from the street lamps nearest to the vehicle (downward point lights)."""
        lamps = self.town.lamps
        dist = np.linalg.norm(lamps[:, :2] - pose[:2, 3], axis=1)
        near = lamps[np.argsort(dist)[:_LAMPS_USED]].astype(np.float32)
        px, py, pz = p[:, 0], p[:, 1], p[:, 2]
        nx, ny, nz = n[:, 0], n[:, 1], n[:, 2]
        power = np.zeros(len(p), dtype=np.float32)
        for lx, ly, lz in near:
            dx, dy, dz = lx - px, ly - py, lz - pz
            d2 = dx * dx + dy * dy + dz * dz
            inv = 1.0 / np.sqrt(np.maximum(d2, 1e-6))
            lambert = np.clip((nx * dx + ny * dy + nz * dz) * inv, 0, None)
            power += lambert * np.clip(dz * inv, 0, None) / (1 + d2 / 36.0)  # shining downwards
        return (self.light.lamps * 0.6 * power)[:, None] * np.array([1.0, 0.82, 0.55], np.float32)

    def _finish(self, color: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Rain streaks, sensor noise, exposure and gamma; uint8 RGB."""
        L = self.light
        h, w = color.shape[:2]
        if rng is not None:
            if L.rain:
                drops = (rng.random((h, w), dtype=np.float32) < 0.003).astype(np.float32)
                length = max(5, h // 14)
                kernel = np.zeros((length, length), np.float32)
                kernel[np.arange(length), np.linspace(0, length // 3, length).astype(int)] = 1.0
                streaks = cv2.filter2D(drops, -1, kernel)
                color = color + 0.25 * np.clip(streaks, 0, 1)[..., None] * (L.sky_horizon + 0.1)
            color = color + rng.standard_normal(color.shape, dtype=np.float32) * (L.noise / L.exposure)
        img = np.clip(color * L.exposure, 0.0, 1.0) ** (1 / 2.2)
        return (img * 255 + 0.5).astype(np.uint8)

    # -- LiDAR ----------------------------------------------------------------------------------

    def render_lidar(self, pose: np.ndarray, dynamic: DynamicScene | None = None,
                     rng: np.random.Generator | None = None) -> LidarFrame:
        """Returns of one sweep from vehicle pose ``pose`` (world_T_base), in the LiDAR frame."""
        lid, L = self.lidar, self.light
        T = pose @ lid.T_base_lidar
        dirs_l = lid.dirs
        dirs = _rotate(T[:3, :3], lid.dirs_t)
        origin = T[:3, 3].astype(np.float32)
        hits = self._cast(origin, dirs, dynamic)
        r = hits.t
        max_r = lid.cfg.max_range_m * L.lidar_range_factor
        keep = (r <= max_r) & (r >= lid.cfg.min_range_m)
        if rng is not None:
            r = r + rng.standard_normal(len(r), dtype=np.float32) * (lid.cfg.range_noise_m * L.lidar_noise_factor)
            loss = L.lidar_dropout + L.lidar_far_loss * (r / max_r) ** 2
            keep &= rng.random(len(r), dtype=np.float32) >= loss
        k = np.flatnonzero(keep)
        idx, rk, n = hits.index[k], r[k], hits.normal[k]
        _, refl, _ = surface(self.materials, self.town.grid, L, hits.material[k], hits.point[k], n, hits.u[k])
        cos_inc = np.abs(np.einsum("ij,ij->i", n, dirs[idx]))
        intensity = np.clip(refl * (0.25 + 0.75 * cos_inc) * (0.8 if L.rain else 1.0), 0, 1)
        rk = rk[:, None]
        cloud = np.column_stack([dirs_l[idx] * rk, intensity, lid.ring[idx], lid.time[idx]]).astype(np.float32)
        range_image = np.zeros(lid.beams * lid.columns, np.float32)
        range_image[idx] = rk[:, 0]
        return LidarFrame(cloud, range_image.reshape(lid.beams, lid.columns))
