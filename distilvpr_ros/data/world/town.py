"""The procedural town: an irregular street grid lined with buildings, trees, poles and parked cars.

Layout (local map frame, metres, x east / y north / z up; the origin is the south-west street
intersection):

* N-S streets at ``grid.xs``, E-W streets at ``grid.ys`` (jittered spacing). A street has
  ``lanes_per_direction`` lanes each way and a parking strip before each curb; the curb is
  ``grid.half_width`` from the centre line.
* City blocks fill the space between streets, plus a built-up ring (``border_m`` deep) outside the
  outermost streets. Blocks are raised by the curb height; a sidewalk band runs along their edges.
  Most blocks hold buildings (boxes of varied footprint, height and facade pattern); some are parks
  (grass + trees) or parking lots.
* Sidewalks carry trees (trunk + crown), street lamps and signs; parking strips carry parked cars.

Tree crowns and parked cars are kept apart from the rest: winter runs have no crowns and a share of
the parking slots changes between runs (:meth:`Town.scene_mesh`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TownConfig
from .mesh import Kind, MaterialTable, Mesh, boxes, ellipsoids, quad_xy, vehicle_boxes

FACADE_KINDS = ("windows", "glass", "bands", "brick", "plain")
BLOCK_INTERIORS = ("paving", "grass", "lot")

# Linear-RGB palettes (facade walls by kind, cars, roofs).
_WALL_PALETTE = {
    "windows": [(0.75, 0.62, 0.42), (0.62, 0.52, 0.45), (0.55, 0.62, 0.70), (0.78, 0.45, 0.35), (0.70, 0.70, 0.66)],
    "glass": [(0.22, 0.24, 0.27), (0.35, 0.36, 0.38)],
    "bands": [(0.80, 0.80, 0.78), (0.58, 0.58, 0.60), (0.72, 0.66, 0.55)],
    "brick": [(0.45, 0.17, 0.10), (0.52, 0.26, 0.16), (0.38, 0.20, 0.15)],
    "plain": [(0.66, 0.64, 0.60), (0.50, 0.50, 0.52), (0.74, 0.70, 0.58)],
}
_WINDOW_PALETTE = {
    "glass": [(0.10, 0.22, 0.30), (0.12, 0.28, 0.26), (0.18, 0.20, 0.28)],
    "other": [(0.05, 0.07, 0.10), (0.08, 0.08, 0.07), (0.12, 0.14, 0.18)],
}
_ROOF_PALETTE = [(0.25, 0.25, 0.27), (0.40, 0.20, 0.15), (0.35, 0.38, 0.35), (0.55, 0.55, 0.55)]
CAR_PALETTE = [(0.80, 0.80, 0.82), (0.05, 0.05, 0.06), (0.55, 0.05, 0.04), (0.05, 0.12, 0.45), (0.45, 0.45, 0.48),
               (0.80, 0.62, 0.05), (0.10, 0.30, 0.12), (0.90, 0.90, 0.90)]
_FACADE_SHAPES = {  # kind: (floor height, window spacing, window width fraction, window height fraction) ranges
    "windows": ((3.0, 3.8), (2.2, 3.6), (0.45, 0.6), (0.45, 0.6)),
    "glass": ((3.5, 4.2), (1.4, 2.0), (0.88, 0.93), (0.78, 0.85)),
    "bands": ((3.3, 3.8), (1.0, 1.0), (1.0, 1.0), (0.4, 0.55)),
    "brick": ((3.0, 3.4), (2.4, 3.0), (0.35, 0.45), (0.5, 0.6)),
    "plain": ((3.0, 3.5), (4.5, 7.0), (0.2, 0.3), (0.35, 0.45)),
}
_WALL_REFLECTIVITY = {"windows": 0.45, "glass": 0.25, "bands": 0.55, "brick": 0.35, "plain": 0.5}


@dataclass
class StreetGrid:
    """Street centre lines and cross-section; answers "where on the street is this point"."""

    xs: np.ndarray  # x of the N-S streets, increasing
    ys: np.ndarray  # y of the E-W streets, increasing
    half_width: float  # centre line to curb (m)
    lane_width: float
    lanes: int  # per direction
    sidewalk_width: float
    curb_height: float
    extent: tuple[float, float, float, float]  # built-up area incl. the border ring: x0, y0, x1, y1

    @property
    def street_bounds(self) -> tuple[float, float, float, float]:
        """Outer curbs of the street network: x0, y0, x1, y1."""
        hw = self.half_width
        return self.xs[0] - hw, self.ys[0] - hw, self.xs[-1] + hw, self.ys[-1] + hw

    def street_coords(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For points (N, 2): offset from the nearest N-S centre line, from the nearest E-W one, and
        whether the point lies on a N-S street, on an E-W street (inside the street network)."""
        dx = xy[:, 0] - _nearest(self.xs, xy[:, 0])
        dy = xy[:, 1] - _nearest(self.ys, xy[:, 1])
        x0, y0, x1, y1 = self.street_bounds
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        return dx, dy, inside & (np.abs(dx) < self.half_width), inside & (np.abs(dy) < self.half_width)


def _nearest(sorted_vals: np.ndarray, q: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(sorted_vals, q), 1, len(sorted_vals) - 1)
    lo, hi = sorted_vals[i - 1], sorted_vals[i]
    return np.where(q - lo < hi - q, lo, hi)


@dataclass
class ParkingSlots:
    """Places where cars may be parked; occupancy is drawn per run."""

    center: np.ndarray  # (P, 2)
    yaw: np.ndarray  # (P,)
    occupied: np.ndarray  # (P,) bool: the town's base occupancy
    body_material: np.ndarray  # (P,) material id of each slot's car body
    cabin_material: int


@dataclass
class Town:
    grid: StreetGrid
    materials: MaterialTable
    static: Mesh  # ground, blocks, buildings, trunks, poles, signs
    crowns: Mesh  # tree crowns (absent in winter)
    parking: ParkingSlots
    lamps: np.ndarray  # (L, 3) lamp head positions: point lights at night
    buildings: np.ndarray  # (B, 5) x0, y0, x1, y1, height (for maps and tests)

    def scene_mesh(self, with_crowns: bool, parked: np.ndarray) -> Mesh:
        """The static geometry of one run: crowns or not, cars in the slots where ``parked``."""
        p = self.parking
        cars = vehicle_boxes(p.center[parked], p.yaw[parked], p.body_material[parked], p.cabin_material) \
            if parked.any() else Mesh.empty()
        return Mesh.concat([self.static, self.crowns if with_crowns else Mesh.empty(), cars])

    def parked_for_run(self, cfg: TownConfig, rng: np.random.Generator) -> np.ndarray:
        """Occupancy of the parking slots in one run: the base one with a share re-drawn."""
        redraw = rng.random(len(self.parking.occupied)) < cfg.parked_vehicle_turnover
        fresh = rng.random(len(self.parking.occupied)) < cfg.parked_vehicle_probability
        return np.where(redraw, fresh, self.parking.occupied)


def _intervals(n_blocks: int, cfg: TownConfig, hw: float, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Street centre positions along one axis and the block intervals between/around them."""
    sides = cfg.block_size_m + rng.uniform(-cfg.block_jitter_m, cfg.block_jitter_m, n_blocks)
    streets = np.concatenate([[0.0], np.cumsum(sides + 2 * hw)])
    blocks = [(streets[i] + hw, streets[i + 1] - hw, False) for i in range(n_blocks)]
    if cfg.border_m > 0:
        blocks = [(streets[0] - hw - cfg.border_m, streets[0] - hw, True)] + blocks
        blocks.append((streets[-1] + hw, streets[-1] + hw + cfg.border_m, True))
    return streets, blocks


class _TownBuilder:
    """Draws the town from one RNG; each ``_add_*`` appends meshes and materials."""

    def __init__(self, cfg: TownConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.mat = MaterialTable()
        self.static: list[Mesh] = []
        self.crowns: list[Mesh] = []
        self.slots: list[tuple[float, float, float]] = []  # parking: x, y, yaw
        self.lamps: list[tuple[float, float, float]] = []
        self.buildings: list[tuple[float, float, float, float, float]] = []
        self.m_trunk = self.mat.add(Kind.TRUNK, (0.18, 0.12, 0.08), 0.35)
        self.m_pole = self.mat.add(Kind.POLE, (0.30, 0.31, 0.33), 0.45)
        self.m_lamp = self.mat.add(Kind.LAMP, (0.85, 0.85, 0.80), 0.5)
        sign_colors = [(0.6, 0.03, 0.02), (0.02, 0.1, 0.5), (0.85, 0.65, 0.02)]
        self.m_signs = [self.mat.add(Kind.SIGN, c, 0.95) for c in sign_colors]
        self.m_cabin = self.mat.add(Kind.WINDOW, (0.04, 0.05, 0.07), 0.1)

    def build(self) -> Town:
        c, rng = self.cfg, self.rng
        hw = c.lanes_per_direction * c.lane_width_m + c.parking_width_m
        xs, xblocks = _intervals(c.blocks_x, c, hw, rng)
        ys, yblocks = _intervals(c.blocks_y, c, hw, rng)
        extent = (xblocks[0][0], yblocks[0][0], xblocks[-1][1], yblocks[-1][1])
        self.grid = StreetGrid(xs, ys, hw, c.lane_width_m, c.lanes_per_direction, c.sidewalk_width_m,
                               c.curb_height_m, extent)
        ground = self.mat.add(Kind.GROUND, (0.09, 0.09, 0.10), 0.12, color2=(0.22, 0.30, 0.12))
        far = 400.0
        self.static.append(quad_xy(extent[0] - far, extent[1] - far, extent[2] + far, extent[3] + far, 0.0, ground))
        for bx0, bx1, xborder in xblocks:
            for by0, by1, yborder in yblocks:
                border = xborder or yborder
                u = rng.random()
                kind = "buildings" if border or u >= c.park_fraction + c.lot_fraction else (
                    "park" if u < c.park_fraction else "lot")
                self._add_block(bx0, by0, bx1, by1, kind)
        n_slots = len(self.slots)
        slots = np.asarray(self.slots, dtype=np.float64).reshape(-1, 3)
        body = [self.mat.add(Kind.VEHICLE, _jitter(rng, CAR_PALETTE[rng.integers(len(CAR_PALETTE))], 0.03), 0.6)
                for _ in range(n_slots)]
        parking = ParkingSlots(slots[:, :2], slots[:, 2], rng.random(n_slots) < c.parked_vehicle_probability,
                               np.asarray(body, dtype=np.int32), self.m_cabin)
        return Town(self.grid, self.mat, Mesh.concat(self.static), Mesh.concat(self.crowns), parking,
                    np.asarray(self.lamps, dtype=np.float64).reshape(-1, 3),
                    np.asarray(self.buildings, dtype=np.float64).reshape(-1, 5))

    # -- blocks ---------------------------------------------------------------------------------

    def _add_block(self, x0: float, y0: float, x1: float, y1: float, kind: str) -> None:
        c, rng = self.cfg, self.rng
        interior = {"buildings": "paving", "park": "grass", "lot": "lot"}[kind]
        interior_color = {"paving": (0.42, 0.40, 0.37), "grass": (0.12, 0.26, 0.06),
                          "lot": (0.13, 0.13, 0.14)}[interior]
        m = self.mat.add(Kind.BLOCK, interior_color, 0.3 if interior != "lot" else 0.15, color2=(0.50, 0.50, 0.48),
                         params=(x0, y0, x1, y1, BLOCK_INTERIORS.index(interior), c.sidewalk_width_m))
        self.static.append(boxes([((x0 + x1) / 2, (y0 + y1) / 2)], 0.0, (x1 - x0, y1 - y0, c.curb_height_m), 0.0, m))
        sw = c.sidewalk_width_m
        ix0, iy0, ix1, iy1 = x0 + sw, y0 + sw, x1 - sw, y1 - sw
        if kind == "buildings":
            self._add_buildings(ix0, iy0, ix1, iy1)
        elif kind == "park":
            area = (ix1 - ix0) * (iy1 - iy0)
            n = rng.poisson(c.park_trees_per_100m2 * area / 100.0)
            self._add_trees(np.stack([rng.uniform(ix0 + 2, ix1 - 2, n), rng.uniform(iy0 + 2, iy1 - 2, n)], axis=1))
        else:  # parking lot: rows of perpendicular slots
            for y in np.arange(iy0 + 4.0, iy1 - 3.0, 6.5):
                for x in np.arange(ix0 + 2.0, ix1 - 1.5, 2.8):
                    self.slots.append((x, y, np.pi / 2))
        self._add_street_furniture(x0, y0, x1, y1)

    def _add_buildings(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Split the block's inner rectangle into frontage columns along its long side, 1-2 rows deep."""
        c, rng = self.cfg, self.rng
        along_x = (x1 - x0) >= (y1 - y0)
        a0, a1, b0, b1 = (x0, x1, y0, y1) if along_x else (y0, y1, x0, x1)
        cuts = [a0]
        while a1 - cuts[-1] > c.building_width_m[1]:
            cuts.append(cuts[-1] + rng.uniform(*c.building_width_m))
        if a1 - cuts[-1] < c.building_width_m[0] and len(cuts) > 1:
            cuts.pop()
        cuts.append(a1)
        rows = [(b0, b1)] if b1 - b0 < 26.0 else [(b0, (b0 + b1) / 2), ((b0 + b1) / 2, b1)]
        for r0, r1 in rows:
            for i in range(len(cuts) - 1):
                lo, hi = [cuts[i], cuts[i + 1]], [r0, r1]
                # Street-facing sides get a setback, inner sides an alley or a courtyard gap.
                for side, outer in ((0, lo[0] == a0), (1, lo[1] == a1)):
                    lo[side] += (-1) ** side * (rng.uniform(*c.building_setback_m) if outer else
                                                (1.2 if rng.random() < c.alley_probability else 0.0))
                for side, outer in ((0, hi[0] == b0), (1, hi[1] == b1)):
                    hi[side] += (-1) ** side * (rng.uniform(*c.building_setback_m) if outer else rng.uniform(0, 3))
                if lo[1] - lo[0] < 4 or hi[1] - hi[0] < 4:
                    continue
                bx0, bx1, by0, by1 = (*lo, *hi) if along_x else (*hi, *lo)
                self._add_building(bx0, by0, bx1, by1)

    def _add_building(self, x0: float, y0: float, x1: float, y1: float) -> None:
        c, rng = self.cfg, self.rng
        kind = c.facade_kinds[rng.integers(len(c.facade_kinds))]
        floor_h, spacing, ww, wh = (rng.uniform(*r) for r in _FACADE_SHAPES[kind])
        shop_h = rng.uniform(3.5, 4.5) if rng.random() < 0.5 else 0.0
        lo, hi = c.building_height_m
        height = max(lo + (hi - lo) * rng.random() ** 1.6, shop_h + floor_h)
        wall_color = _jitter(rng, _WALL_PALETTE[kind][rng.integers(len(_WALL_PALETTE[kind]))], 0.04)
        windows = _WINDOW_PALETTE["glass" if kind == "glass" else "other"]
        bid = len(self.buildings)
        wall = self.mat.add(Kind.WALL, wall_color, _WALL_REFLECTIVITY[kind],
                            color2=_jitter(rng, windows[rng.integers(len(windows))], 0.02),
                            params=(FACADE_KINDS.index(kind), floor_h, spacing, ww, wh, shop_h,
                                    rng.uniform(0.15, 0.6), bid))
        roof = self.mat.add(Kind.ROOF, _jitter(rng, _ROOF_PALETTE[rng.integers(len(_ROOF_PALETTE))], 0.03), 0.3)
        z0 = c.curb_height_m
        self.static.append(boxes([((x0 + x1) / 2, (y0 + y1) / 2)], z0, (x1 - x0, y1 - y0, height), 0.0, wall, roof))
        self.buildings.append((x0, y0, x1, y1, height))

    # -- sidewalks --------------------------------------------------------------------------------

    def _add_street_furniture(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Trees, lamps, signs on the sidewalk and parking slots along each block edge facing a street."""
        c, rng = self.cfg, self.rng
        edges = [  # start point, unit direction along the edge, outward normal, length
            ((x0, y0), (1.0, 0.0), (0.0, -1.0), x1 - x0), ((x1, y1), (-1.0, 0.0), (0.0, 1.0), x1 - x0),
            ((x0, y1), (0.0, -1.0), (-1.0, 0.0), y1 - y0), ((x1, y0), (0.0, 1.0), (1.0, 0.0), y1 - y0),
        ]
        for start, d, n, length in edges:
            start, d, n = np.asarray(start), np.asarray(d), np.asarray(n)
            probe = start + d * length / 2 + n * 2.0
            _, _, on_ns, on_ew = self.grid.street_coords(probe[None])
            if not (on_ns[0] or on_ew[0]) or length < 12:
                continue
            along_yaw = float(np.arctan2(d[1], d[0]))
            lamps_t = np.arange(rng.uniform(4, 4 + c.pole_spacing_m / 2), length - 4, c.pole_spacing_m)
            lamp_xy = start + np.outer(lamps_t, d) - n * 0.5
            self._add_lamps(lamp_xy, n)
            slot_t = np.arange(rng.uniform(3, 3 + c.tree_spacing_m), length - 3, c.tree_spacing_m)
            slot_t = slot_t[np.all(np.abs(slot_t[:, None] - lamps_t[None]) > 2.5, axis=1)] if len(lamps_t) else slot_t
            draw = rng.random(len(slot_t))
            trees = draw < c.tree_probability
            signs = (draw >= c.tree_probability) & (draw < c.tree_probability + c.sign_probability)
            self._add_trees(start + np.outer(slot_t[trees], d) - n * 1.3)
            self._add_signs(start + np.outer(slot_t[signs], d) - n * 0.4, along_yaw)
            park_t = np.arange(5.0, length - 5.0, 6.5)
            for p in start + np.outer(park_t, d) + n * (c.parking_width_m / 2):
                self.slots.append((p[0], p[1], along_yaw))

    def _add_trees(self, xy: np.ndarray) -> None:
        if len(xy) == 0:
            return
        rng, n, z0 = self.rng, len(xy), self.cfg.curb_height_m
        trunk_h = rng.uniform(2.2, 3.4, n)
        r = rng.uniform(1.4, 2.8, n)
        self.static.append(boxes(xy, z0, np.stack([np.full(n, 0.35), np.full(n, 0.35), trunk_h + r * 0.5], 1),
                                 rng.uniform(0, np.pi, n), self.m_trunk))
        foliage = [self.mat.add(Kind.FOLIAGE, (0.08, 0.22, 0.05), 0.55, params=(rng.random(),)) for _ in range(n)]
        centre = np.column_stack([xy, z0 + trunk_h + r * 0.9])
        self.crowns.append(ellipsoids(centre, np.stack([r, r * rng.uniform(0.8, 1.0, n), r * 1.15], 1), foliage))

    def _add_lamps(self, xy: np.ndarray, outward: np.ndarray) -> None:
        if len(xy) == 0:
            return
        z0, height, arm = self.cfg.curb_height_m, 7.0, 1.8
        yaw = float(np.arctan2(outward[1], outward[0]))
        self.static.append(boxes(xy, z0, (0.2, 0.2, height), 0.0, self.m_pole))
        self.static.append(boxes(xy + outward * arm / 2, z0 + height - 0.15, (arm, 0.12, 0.12), yaw, self.m_pole))
        head = xy + outward * arm
        self.static.append(boxes(head, z0 + height - 0.3, (0.7, 0.35, 0.18), yaw, self.m_lamp))
        self.lamps += [(x, y, z0 + height - 0.35) for x, y in head]

    def _add_signs(self, xy: np.ndarray, along_yaw: float) -> None:
        rng, z0 = self.rng, self.cfg.curb_height_m
        for p in xy:
            self.static.append(boxes([p], z0, (0.09, 0.09, 2.6), 0.0, self.m_pole))
            # Plate faces along the street, so drivers in either direction see it.
            plate = self.m_signs[rng.integers(len(self.m_signs))]
            self.static.append(boxes([p], z0 + 2.1, (0.04, 0.75, 0.75), along_yaw, plate))


def _jitter(rng: np.random.Generator, color, amount: float) -> tuple[float, float, float]:
    return tuple(np.clip(np.asarray(color) + rng.uniform(-amount, amount, 3), 0.0, 1.0))


def build_town(cfg: TownConfig, rng: np.random.Generator) -> Town:
    """The town for ``cfg``, drawn from ``rng`` (same generator state -> same town)."""
    return _TownBuilder(cfg, rng).build()
