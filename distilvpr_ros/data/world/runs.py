"""Routes and trajectories: where each run drives, when, and which region each frame lies in.

All runs follow one closed loop through the town's street grid (a Hamiltonian cycle over the
intersections, corners rounded), forwards or backwards, in a chosen lane with right-hand traffic.
Lateral offset, heading and speed wobble smoothly; frames are taken at roughly constant spacing
(distance-triggered keyframes), so the frame rate follows the speed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from ..geometry import pose_from_xyz_yaw
from .config import RunConfig, WorldConfig
from .town import StreetGrid

ROUTE_STEP_M = 0.5  # resolution of the dense route polylines
_HOUR_OF = {"day": 10.5, "dusk": 20.75, "night": 23.25}  # local clock time of a run's start (summer dates)


@dataclass
class Polyline:
    """A closed planar curve sampled densely, with arc-length lookups that wrap around."""

    points: np.ndarray  # (N, 2); the last point is not repeated
    s: np.ndarray  # (N,) arc length of each point
    length: float  # total length including the closing segment

    @staticmethod
    def closed(points: np.ndarray) -> "Polyline":
        seg = np.linalg.norm(np.diff(np.vstack([points, points[:1]]), axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
        return Polyline(points, s, float(seg.sum()))

    def resampled(self, step: float) -> "Polyline":
        s = np.arange(0.0, self.length, step)
        return Polyline.closed(self.at(s)[0])

    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points (N, 2) and unit tangents (N, 2) at arc lengths ``s`` (any real; wraps)."""
        s = np.mod(np.atleast_1d(np.asarray(s, dtype=float)), self.length)
        pts = np.vstack([self.points, self.points[:1]])
        ss = np.append(self.s, self.length)
        xy = np.stack([np.interp(s, ss, pts[:, k]) for k in (0, 1)], axis=1)
        i = np.clip(np.searchsorted(ss, s, side="right") - 1, 0, len(self.points) - 1)
        d = pts[i + 1] - pts[i]
        return xy, d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)

    def reversed(self) -> "Polyline":
        return Polyline.closed(self.points[::-1].copy())

    def offset(self, lateral: np.ndarray) -> "Polyline":
        """The curve shifted by ``lateral`` (per point, metres) to the right of travel."""
        _, t = self.at(self.s)
        right = np.stack([t[:, 1], -t[:, 0]], axis=1)
        return Polyline.closed(self.points + right * np.asarray(lateral)[:, None])


def intersection_cycle(n_cols: int, n_rows: int) -> list[tuple[int, int]]:
    """A cycle visiting every intersection (col, row) of an ``n_cols x n_rows`` grid once.

    Snakes along the rows over columns 1.. and returns along column 0; needs an even number of
    rows, so it transposes when only the column count is even and drops the last row when both
    are odd.
    """
    if n_cols < 2 or n_rows < 2:
        raise ValueError("the route needs at least 2 x 2 intersections (blocks_x, blocks_y >= 1)")
    if n_rows % 2:
        if n_cols % 2 == 0:
            return [(c, r) for r, c in intersection_cycle(n_rows, n_cols)]
        n_rows -= 1
    cycle = [(c, 0) for c in range(n_cols)]
    for r in range(1, n_rows):
        cols = range(n_cols - 1, 0, -1) if r % 2 else range(1, n_cols)
        cycle += [(c, r) for c in cols]
    cycle += [(0, r) for r in range(n_rows - 1, 0, -1)]
    return cycle


def town_route(grid: StreetGrid, corner_radius: float) -> Polyline:
    """The town's route loop along street centre lines, corners rounded with circular arcs."""
    nodes = np.array([(grid.xs[c], grid.ys[r]) for c, r in intersection_cycle(len(grid.xs), len(grid.ys))])
    # Keep only turning points.
    prev, nxt = np.roll(nodes, 1, axis=0), np.roll(nodes, -1, axis=0)
    d_in, d_out = _unit(nodes - prev), _unit(nxt - nodes)
    turning = np.abs(_cross(d_in, d_out)) > 1e-6
    corners, d_in, d_out = nodes[turning], d_in[turning], d_out[turning]
    pts = []
    for p, a, b in zip(corners, d_in, d_out):
        left = _cross(a, b) > 0
        normal = np.array([-a[1], a[0]]) if left else np.array([a[1], -a[0]])  # towards the turn centre
        centre = p - a * corner_radius + normal * corner_radius
        start = p - a * corner_radius - centre
        sweep = np.pi / 2 if left else -np.pi / 2
        ang = np.arctan2(start[1], start[0]) + np.linspace(0.0, sweep, 16)
        pts.append(centre + corner_radius * np.stack([np.cos(ang), np.sin(ang)], axis=1))
    return Polyline.closed(np.vstack(pts)).resampled(ROUTE_STEP_M)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z component of the cross product of planar vectors."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def smooth_noise(rng: np.random.Generator, s: np.ndarray, wavelengths=(37.0, 83.0, 191.0)) -> np.ndarray:
    """Smooth zero-mean, unit-variance noise along ``s``: a sum of random-phase sinusoids."""
    phases = rng.uniform(0, 2 * np.pi, len(wavelengths))
    out = sum(np.sin(2 * np.pi * s / w + ph) for w, ph in zip(wavelengths, phases))
    return out * np.sqrt(2.0 / len(wavelengths))


@dataclass
class Trajectory:
    """Per-frame facts of one run (arrays of length N)."""

    run_id: str
    run: RunConfig
    path: Polyline  # the lane the run drives in (its own direction)
    s: np.ndarray  # arc length along ``path`` (unwrapped, increasing)
    xy: np.ndarray  # (N, 2) local map position
    yaw: np.ndarray  # (N,) heading (rad, counter-clockwise from east)
    speed: np.ndarray  # (N,) m/s
    timestamps: np.ndarray  # (N,) epoch seconds
    region: np.ndarray  # (N,) str

    def poses(self) -> np.ndarray:
        """(N, 4, 4) world_T_base."""
        return np.stack([pose_from_xyz_yaw(x, y, 0.0, a) for (x, y), a in zip(self.xy, self.yaw)])

    def __len__(self) -> int:
        return len(self.s)


def region_bounds(cfg: WorldConfig, grid: StreetGrid) -> list[dict]:
    """West-to-east bands ``{name, x_min, x_max}`` over the street network, gaps between them.

    The outer bands reach to the edges of the built-up area.
    """
    x0, _, x1, _ = grid.street_bounds
    names = list(cfg.regions.fractions)
    w = np.array([cfg.regions.fractions[n] for n in names])
    edges = x0 + (x1 - x0) * np.concatenate([[0.0], np.cumsum(w / w.sum())])
    half_gap = cfg.regions.gap_m / 2
    bounds = []
    for i, n in enumerate(names):
        lo = grid.extent[0] if i == 0 else edges[i] + half_gap
        hi = grid.extent[2] if i == len(names) - 1 else edges[i + 1] - half_gap
        bounds.append({"name": n, "x_min": float(lo), "x_max": float(hi)})
    return bounds


def assign_regions(x: np.ndarray, bounds: list[dict]) -> np.ndarray:
    """Region name of each easting; ``"gap"`` between regions."""
    out = np.full(len(x), "gap", dtype=object)
    for b in bounds:
        out[(x >= b["x_min"]) & (x < b["x_max"])] = b["name"]
    return out.astype(str)


def run_start_time(cfg: WorldConfig, run: RunConfig, rng: np.random.Generator) -> float:
    """Epoch seconds of a run's first frame: its day after the start date, at its time of day (UTC)."""
    day0 = dt.datetime.fromisoformat(cfg.geo.start_date).replace(tzinfo=dt.timezone.utc)
    hours = _HOUR_OF[run.condition.time_of_day] + rng.uniform(-0.4, 0.4)
    return (day0 + dt.timedelta(days=run.day, hours=hours)).timestamp()


def make_trajectory(cfg: WorldConfig, route: Polyline, grid: StreetGrid, run_index: int,
                    rng: np.random.Generator) -> Trajectory:
    """Frames of run ``run_index``: lane path, keyframe spacing, speed, heading, times, regions."""
    run = cfg.runs[run_index]
    base = route if run.direction == 1 else route.reversed()
    lateral = (run.lane + 0.5) * grid.lane_width + cfg.lateral_jitter_m * smooth_noise(rng, base.s)
    path = base.offset(lateral).resampled(ROUTE_STEP_M)

    start = rng.uniform(0, path.length) if run.start_offset_m is None else run.start_offset_m
    n = max(2, int(run.laps * path.length / cfg.frame_spacing_m))
    steps = cfg.frame_spacing_m * (1 + rng.uniform(-cfg.frame_spacing_jitter, cfg.frame_spacing_jitter, n))
    s = start + np.concatenate([[0.0], np.cumsum(steps[:-1])])
    xy, tangent = path.at(s)
    yaw = np.arctan2(tangent[:, 1], tangent[:, 0]) + np.deg2rad(cfg.heading_jitter_deg) * smooth_noise(rng, s)
    speed = run.speed_mps * (1 + cfg.speed_variation * np.clip(smooth_noise(rng, s), -1.5, 1.5) / 1.5)
    dt_s = np.diff(s) / (0.5 * (speed[1:] + speed[:-1]))
    t = np.round(run_start_time(cfg, run, rng) + np.concatenate([[0.0], np.cumsum(dt_s)]), 6)  # whole microseconds
    region = assign_regions(xy[:, 0], region_bounds(cfg, grid))
    return Trajectory(cfg.run_ids()[run_index], run, path, s, xy, np.angle(np.exp(1j * yaw)), speed, t, region)
