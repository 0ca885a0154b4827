"""Dynamic occluders: moving cars, pedestrians and a lead car, different in every run.

Cars drive along the town's route loop in both directions, in lanes other than the ego's own;
pedestrians walk the sidewalks; for a share of the run a lead car drives ahead of the ego in its
lane. :meth:`Traffic.mesh_at` gives the triangles around the ego at a frame, for a small per-frame
ray-casting scene (their material ids index :attr:`Traffic.materials`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import WorldConfig
from .mesh import Kind, MaterialTable, Mesh, pedestrian_boxes, vehicle_boxes
from .runs import Polyline, Trajectory, smooth_noise
from .town import CAR_PALETTE, StreetGrid

_CLOTHES = [(0.05, 0.05, 0.06), (0.5, 0.05, 0.05), (0.1, 0.2, 0.5), (0.7, 0.6, 0.4), (0.25, 0.35, 0.25),
            (0.8, 0.8, 0.8)]
_SKIN = [(0.65, 0.45, 0.32), (0.40, 0.26, 0.18), (0.80, 0.62, 0.50)]


@dataclass
class Traffic:
    materials: MaterialTable
    route: Polyline
    is_car: np.ndarray  # (A,) bool; pedestrians otherwise
    s0: np.ndarray  # (A,) arc length along the route at the run's start time
    velocity: np.ndarray  # (A,) m/s along the route (negative: against the route's direction)
    lateral: np.ndarray  # (A,) offset to the right of the route's direction (m)
    body: np.ndarray  # (A,) material id (car body / clothes)
    skin: np.ndarray  # (A,) material id (pedestrian heads)
    cabin: int  # car glass material id
    lead_gap: np.ndarray  # (N,) distance of the lead car ahead of the ego at each frame; nan: none
    lead_body: int
    t0: float
    visible_range: float

    def mesh_at(self, traj: Trajectory, k: int) -> Mesh:
        """Triangles of the dynamic objects near the ego at frame ``k``."""
        s = self.s0 + self.velocity * (traj.timestamps[k] - self.t0)
        xy, tangent = self.route.at(s)
        xy = xy + np.stack([tangent[:, 1], -tangent[:, 0]], axis=1) * self.lateral[:, None]
        yaw = np.arctan2(tangent[:, 1], tangent[:, 0]) + np.where(self.velocity < 0, np.pi, 0.0)
        near = np.linalg.norm(xy - traj.xy[k], axis=1) < self.visible_range
        cars, peds = near & self.is_car, near & ~self.is_car
        cars_mesh = vehicle_boxes(xy[cars], yaw[cars], self.body[cars], self.cabin) if cars.any() else Mesh.empty()
        peds_mesh = (pedestrian_boxes(xy[peds], yaw[peds], self.body[peds], self.skin[peds]) if peds.any()
                     else Mesh.empty())
        parts = [cars_mesh, peds_mesh]
        if np.isfinite(self.lead_gap[k]):
            p, t = traj.path.at(traj.s[k] + self.lead_gap[k])
            parts.append(vehicle_boxes(p, np.arctan2(t[:, 1], t[:, 0]), self.lead_body, self.cabin))
        return Mesh.concat(parts)


def make_traffic(cfg: WorldConfig, route: Polyline, grid: StreetGrid, traj: Trajectory,
                 rng: np.random.Generator) -> Traffic:
    """Draw the run's moving cars, pedestrians and lead-car schedule."""
    tc, run = cfg.traffic, traj.run
    mat = MaterialTable()
    km = route.length / 1000.0
    n_car, n_ped = rng.poisson(tc.vehicles_per_km * km), rng.poisson(tc.pedestrians_per_km * km)

    # Cars: direction along the route, then a lane that is not the ego's (same direction only).
    car_dir = rng.choice([-1, 1], n_car)
    lanes = rng.integers(0, grid.lanes, n_car)
    if grid.lanes > 1:
        same = car_dir == run.direction
        lanes[same] = (run.lane + 1 + rng.integers(0, grid.lanes - 1, same.sum())) % grid.lanes
    else:
        car_dir[:] = -run.direction  # a single lane each way: only oncoming cars
    car_lat = car_dir * (lanes + 0.5) * grid.lane_width
    car_v = car_dir * rng.uniform(5.0, 13.0, n_car)

    ped_side = rng.choice([-1, 1], n_ped)
    ped_lat = ped_side * (grid.half_width + rng.uniform(0.6, 1.6, n_ped))
    ped_v = rng.choice([-1, 1], n_ped) * rng.uniform(0.8, 1.6, n_ped)

    cars = [mat.add(Kind.VEHICLE, CAR_PALETTE[i], 0.6) for i in rng.integers(len(CAR_PALETTE), size=n_car)]
    clothes = [mat.add(Kind.PEDESTRIAN, _CLOTHES[i], 0.4) for i in rng.integers(len(_CLOTHES), size=n_ped)]
    skins = [mat.add(Kind.PEDESTRIAN, c, 0.4) for c in _SKIN]
    cabin = mat.add(Kind.WINDOW, (0.04, 0.05, 0.07), 0.1)
    lead_body = mat.add(Kind.VEHICLE, CAR_PALETTE[rng.integers(len(CAR_PALETTE))], 0.6)

    presence = smooth_noise(rng, traj.s)
    if tc.lead_vehicle_fraction > 0:
        present = presence >= np.quantile(presence, 1.0 - tc.lead_vehicle_fraction)
    else:
        present = np.zeros(len(traj), dtype=bool)
    gap = 16.0 + 7.0 * np.clip(smooth_noise(rng, traj.s), -1.2, 1.2)  # 7.6 .. 24.4 m
    return Traffic(
        materials=mat, route=route,
        is_car=np.concatenate([np.ones(n_car, bool), np.zeros(n_ped, bool)]),
        s0=rng.uniform(0, route.length, n_car + n_ped),
        velocity=np.concatenate([car_v, ped_v]),
        lateral=np.concatenate([car_lat, ped_lat]),
        body=np.asarray(cars + clothes, dtype=np.int32),
        skin=np.concatenate([np.zeros(n_car, np.int32), np.asarray(skins, np.int32)[rng.integers(3, size=n_ped)]]),
        cabin=cabin, lead_gap=np.where(present, gap, np.nan), lead_body=lead_body,
        t0=float(traj.timestamps[0]), visible_range=tc.visible_range_m,
    )
