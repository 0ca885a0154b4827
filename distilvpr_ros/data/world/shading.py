"""Appearance: lighting per condition and procedural surface patterns (no textures).

:func:`lighting_for` turns a :class:`Condition` into sun, sky, fog, artificial lights, sensor noise
and the (much smaller) LiDAR degradations. :func:`surface` evaluates, for ray hits, the albedo,
LiDAR reflectivity and emission from the material table and the hit coordinates: facade windows
from the coordinate along the wall and the height, road markings and sidewalk slabs from the
position in the street grid, foliage colour from the season.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Condition
from .mesh import Kind, MaterialArrays
from .town import FACADE_KINDS, StreetGrid

_WINDOW_REFLECTIVITY = 0.08
_MARKING_REFLECTIVITY = 0.85
_WARM_LIGHT = np.array([1.0, 0.72, 0.38], dtype=np.float32)


@dataclass(frozen=True)
class Lighting:
    """Everything a condition changes in the rendering."""

    sun_dir: np.ndarray  # (3,) unit vector towards the sun
    sun: np.ndarray  # (3,) direct sun radiance (linear RGB)
    ambient: np.ndarray  # (3,) sky light from above
    sky_zenith: np.ndarray  # (3,)
    sky_horizon: np.ndarray  # (3,)
    fog: np.ndarray  # (3,) fog colour
    fog_distance_m: float  # e-folding distance of the haze (inf: none)
    exposure: float
    noise: float  # image noise standard deviation (fraction of full scale)
    headlights: float  # ego headlight strength
    lamps: float  # street-lamp strength (lighting and glowing heads)
    windows: float  # lit-window emission strength
    rain: bool  # streaks on the image, wet (darker) ground, LiDAR dropouts
    season: str
    lidar_range_factor: float  # max range multiplier
    lidar_dropout: float  # random return loss probability
    lidar_noise_factor: float  # range-noise multiplier
    lidar_far_loss: float  # extra loss probability at max range (grows with range squared)


def _sun(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    e, a = np.deg2rad([elevation_deg, azimuth_deg])
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], dtype=np.float32)


def lighting_for(condition: Condition) -> Lighting:
    """Lighting of a condition: time of day sets the base, weather modifies it."""
    f = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
    if condition.time_of_day == "day":
        base = dict(sun_dir=_sun(50, -60), sun=f(1.1, 1.05, 0.95), ambient=f(0.25, 0.29, 0.36),
                    sky_zenith=f(0.16, 0.34, 0.75), sky_horizon=f(0.62, 0.72, 0.86), fog=f(0.72, 0.74, 0.76),
                    exposure=1.0, noise=0.008, headlights=0.0, lamps=0.0, windows=0.0)
    elif condition.time_of_day == "dusk":
        base = dict(sun_dir=_sun(6, 150), sun=f(1.0, 0.48, 0.2), ambient=f(0.13, 0.11, 0.16),
                    sky_zenith=f(0.12, 0.12, 0.32), sky_horizon=f(0.95, 0.48, 0.22), fog=f(0.55, 0.42, 0.38),
                    exposure=1.5, noise=0.015, headlights=0.5, lamps=0.3, windows=0.4)
    else:
        base = dict(sun_dir=_sun(-30, 0), sun=f(0, 0, 0), ambient=f(0.012, 0.014, 0.025),
                    sky_zenith=f(0.005, 0.006, 0.015), sky_horizon=f(0.05, 0.04, 0.05), fog=f(0.05, 0.05, 0.06),
                    exposure=2.2, noise=0.03, headlights=1.0, lamps=1.0, windows=1.0)
    lidar = dict(lidar_range_factor=1.0, lidar_dropout=0.0, lidar_noise_factor=1.0, lidar_far_loss=0.0)
    fog_distance, rain = np.inf, False
    if condition.weather == "fog":
        base["sun"] = base["sun"] * 0.25
        base["ambient"] = base["ambient"] * 1.6
        base["sky_zenith"] = base["sky_horizon"] = base["fog"]
        fog_distance = 35.0
        lidar = dict(lidar_range_factor=0.65, lidar_dropout=0.02, lidar_noise_factor=1.5, lidar_far_loss=0.5)
    elif condition.weather == "rain":
        grey = f(0.45, 0.47, 0.5) * (float(base["sky_horizon"].mean()) / 0.73)
        base["sun"] = base["sun"] * 0.15
        base["ambient"] = base["ambient"] * 1.3
        base["sky_zenith"], base["sky_horizon"] = grey * 0.8, grey
        base["noise"] += 0.01
        fog_distance, rain = 160.0, True
        lidar = dict(lidar_range_factor=0.9, lidar_dropout=0.06, lidar_noise_factor=2.5, lidar_far_loss=0.2)
    return Lighting(fog_distance_m=fog_distance, rain=rain, season=condition.season, **base, **lidar)


def hash01(*ints: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer lattice coordinates."""
    h = np.zeros(np.broadcast(*ints).shape, dtype=np.uint32)
    for k, v in zip((73856093, 19349663, 83492791, 2654435761), ints):
        h ^= (np.asarray(v).astype(np.int64) * k).astype(np.uint32)
    h ^= h >> np.uint32(13)
    h *= np.uint32(1274126177)
    h ^= h >> np.uint32(16)
    return (h & np.uint32(0xFFFF)).astype(np.float32) / np.float32(65536)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _foliage(variation: np.ndarray, season: str) -> np.ndarray:
    v = variation[:, None]
    if season == "autumn":
        yellow, orange, red = (np.array(c, np.float32)
                               for c in ((0.62, 0.42, 0.03), (0.62, 0.2, 0.02), (0.38, 0.05, 0.02)))
        return np.where(v < 0.5, yellow + (orange - yellow) * v * 2, orange + (red - orange) * (v - 0.5) * 2)
    return np.array([0.06, 0.2, 0.04], np.float32) + v * np.array([0.05, 0.06, 0.0], np.float32)


def _grass(season: str) -> np.ndarray:
    return np.array({"summer": (0.12, 0.26, 0.06), "autumn": (0.2, 0.2, 0.06), "winter": (0.3, 0.27, 0.18)}[season],
                    np.float32)


def facade_windows(u: np.ndarray, z: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Window mask and window id (for lit-window hashing) on facades.

    ``params`` rows: pattern kind, floor height, window spacing, window width and height fractions,
    shop-front height (0: none), lit probability, building id. ``z`` is the height above the base.
    """
    kind, floor_h, spacing, ww, wh, shop_h = (params[:, i] for i in range(6))
    shop = (shop_h > 0) & (z < shop_h)
    zf = np.where(shop, z, z - shop_h)
    level = np.where(shop, shop_h, floor_h)
    us, zs = u / spacing, zf / level
    col, row = np.floor(us), np.floor(zs)
    fu, fz = us - col, zs - row
    row = row - shop
    ww = np.where(shop, 0.85, ww)
    wh = np.where(shop, 0.7, wh)
    in_window = (np.abs(fu - 0.5) < ww / 2) & (np.abs(fz - 0.45) < wh / 2)
    bands = kind == FACADE_KINDS.index("bands")
    in_window = np.where(bands & ~shop, np.abs(fz - 0.45) < wh / 2, in_window)
    return in_window, (col.astype(np.int64), row.astype(np.int64))


def surface(mats: MaterialArrays, grid: StreetGrid, light: Lighting, mat: np.ndarray, p: np.ndarray,
            n: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo (N, 3), LiDAR reflectivity (N,) and emission (N, 3) of hits.

    ``mat``: material ids; ``p``: hit points; ``n``: unit normals; ``u``: coordinate along the
    facade (walls only).
    """
    kind = mats.kind[mat]
    albedo = np.take(mats.color, mat, axis=0)
    refl = mats.reflectivity[mat].copy()
    emission = np.zeros_like(albedo)

    g = kind == Kind.GROUND
    if g.any():
        _ground(albedo, refl, g, p, grid, light)
    b = kind == Kind.BLOCK
    if b.any():
        _block(albedo, refl, b, mats, mat, p, n, light)
    w = (kind == Kind.WALL) & (np.abs(n[:, 2]) < 0.5)
    if w.any():
        prm = mats.params[mat[w]]
        win, (col, row) = facade_windows(u[w], p[w, 2] - grid.curb_height, prm)
        brick = (prm[:, 0] == FACADE_KINDS.index("brick")) & ~win & (_frac(p[w, 2] / 0.3) < 0.12)
        aw = albedo[w]
        aw[win] = mats.color2[mat[w]][win]
        aw[brick] = aw[brick] * 1.6 + 0.05
        albedo[w] = aw
        rw = refl[w]
        rw[win] = _WINDOW_REFLECTIVITY
        refl[w] = rw
        if light.windows > 0:
            face = np.round(np.arctan2(n[w, 1], n[w, 0]) * 2 / np.pi).astype(np.int64)  # which side
            lit = win & (hash01(prm[:, 7].astype(np.int64), col, row, face) < prm[:, 6])
            ew = emission[w]
            ew[lit] = _WARM_LIGHT * (0.35 * light.windows)
            emission[w] = ew
    f = kind == Kind.FOLIAGE
    if f.any():
        cell = np.floor(p[f] / 0.45).astype(np.int64)
        mottle = 0.7 + 0.6 * hash01(cell[:, 0], cell[:, 1], cell[:, 2])
        albedo[f] = _foliage(mats.params[mat[f], 0], light.season) * mottle[:, None]
    if light.lamps > 0:
        lamp = kind == Kind.LAMP
        emission[lamp] = np.array([1.0, 0.9, 0.7], np.float32) * (2.0 * light.lamps)
    return albedo, refl, emission


def _ground(albedo, refl, g, p, grid: StreetGrid, light: Lighting) -> None:
    """Asphalt with lane markings inside the street network; a field outside it."""
    xy = p[g, :2]
    dx, dy, on_ns, on_ew = grid.street_coords(xy)
    x0, y0, x1, y1 = grid.street_bounds
    inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    cell = np.floor(xy / 0.6).astype(np.int64)
    ag = albedo[g] * (0.85 + 0.3 * hash01(cell[:, 0], cell[:, 1]))[:, None]
    ag[~inside] = _grass(light.season) * (0.8 + 0.4 * hash01(cell[~inside, 0] // 4, cell[~inside, 1] // 4))[:, None]
    # Markings only along a street, not inside intersections.
    along_ew, along_ns = on_ew & ~on_ns, on_ns & ~on_ew
    lat = np.where(along_ew, dy, dx)
    along = np.where(along_ew, xy[:, 0], xy[:, 1])
    a = np.abs(lat)
    lane_edges = grid.lane_width * np.arange(1, grid.lanes)
    dashed = (np.abs(a[:, None] - lane_edges[None]) < 0.08).any(axis=1) & (_frac(along / 6.0) < 0.5)
    edge = np.abs(a - grid.lane_width * grid.lanes) < 0.08
    centre = (a > 0.08) & (a < 0.22)
    street = along_ew | along_ns
    white, yellow = street & (dashed | edge), street & centre
    ag[white] = (0.75, 0.75, 0.72)
    ag[yellow] = (0.7, 0.5, 0.05)
    if light.rain:
        ag *= 0.6
    albedo[g] = ag
    rg = refl[g]
    rg[white | yellow] = _MARKING_REFLECTIVITY
    rg[~inside] = 0.3
    refl[g] = rg


def _block(albedo, refl, b, mats: MaterialArrays, mat, p, n, light: Lighting) -> None:
    """Raised blocks: sidewalk slabs along the edge, the interior (paving, grass, parking lot) inside."""
    prm = mats.params[mat[b]]
    x, y = p[b, 0], p[b, 1]
    top = n[b, 2] > 0.5
    edge_dist = np.minimum.reduce([x - prm[:, 0], prm[:, 2] - x, y - prm[:, 1], prm[:, 3] - y])
    sidewalk = top & (edge_dist < prm[:, 5])
    interior = prm[:, 4].astype(np.int64)
    ab = albedo[b]
    joints = (_frac(x / 1.5) < 0.04) | (_frac(y / 1.5) < 0.04)
    ab[sidewalk] = mats.color2[mat[b]][sidewalk] * np.where(joints[sidewalk], 0.7, 1.0)[:, None]
    grass = top & ~sidewalk & (interior == 1)
    cell = np.floor(p[b][grass, :2] / 0.8).astype(np.int64)
    ab[grass] = _grass(light.season) * (0.8 + 0.4 * hash01(cell[:, 0], cell[:, 1]))[:, None]
    lines = top & ~sidewalk & (interior == 2) & (_frac(x / 2.8) < 0.04)
    ab[lines] = (0.7, 0.7, 0.68)
    ab[~top] = (0.55, 0.55, 0.53)  # curb faces
    if light.rain:
        ab[top] *= 0.65
    albedo[b] = ab
    rb = refl[b]
    rb[sidewalk] = 0.4
    rb[lines] = _MARKING_REFLECTIVITY
    refl[b] = rb
