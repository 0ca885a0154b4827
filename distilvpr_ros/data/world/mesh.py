"""Triangle-mesh building blocks for the town: material table, boxes, ellipsoids, mesh assembly.

Everything is flat-shaded: the renderer uses open3d's per-triangle normals, so boxes share their
8 corners. Each triangle carries a material id (row of a :class:`MaterialTable`) and, for vertical
faces, a horizontal *facade axis* and origin so procedural facade patterns can be evaluated from a
hit point's coordinate along the wall (``u = hit_xy . axis - u0``) and its height.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Kind(IntEnum):
    """What a material is; selects the shading rule."""

    GROUND = 0  # everything at street level outside the blocks: road with markings, fields beyond the town
    BLOCK = 1  # raised block: sidewalk band + interior (paving, grass or parking lot); its sides are curbs
    WALL = 2  # building facade (procedural windows)
    ROOF = 3
    TRUNK = 4
    FOLIAGE = 5  # tree crowns (season-dependent colour)
    POLE = 6  # lamp posts and sign posts
    LAMP = 7  # lamp heads (emissive at night)
    SIGN = 8  # retro-reflective sign plates
    VEHICLE = 9  # car body
    WINDOW = 10  # car cabin glass
    PEDESTRIAN = 11


N_PARAMS = 8


@dataclass
class MaterialTable:
    """Rows of material properties, indexed by the per-triangle material id.

    ``params`` is kind-specific (see :mod:`.town` for walls and blocks, :mod:`.shading` for use).
    Colours are linear RGB in [0, 1]; ``reflectivity`` is the LiDAR reflectivity in [0, 1].
    """

    kind: list[int] = field(default_factory=list)
    color: list[tuple[float, float, float]] = field(default_factory=list)
    color2: list[tuple[float, float, float]] = field(default_factory=list)
    params: list[tuple[float, ...]] = field(default_factory=list)
    reflectivity: list[float] = field(default_factory=list)

    def add(self, kind: Kind, color, reflectivity: float, color2=(0.0, 0.0, 0.0), params=()) -> int:
        """Append a material and return its id."""
        p = tuple(float(x) for x in params)
        if len(p) > N_PARAMS:
            raise ValueError(f"at most {N_PARAMS} material params")
        self.kind.append(int(kind))
        self.color.append(tuple(float(c) for c in color))
        self.color2.append(tuple(float(c) for c in color2))
        self.params.append(p + (0.0,) * (N_PARAMS - len(p)))
        self.reflectivity.append(float(reflectivity))
        return len(self.kind) - 1

    def __len__(self) -> int:
        return len(self.kind)

    def arrays(self) -> "MaterialArrays":
        return MaterialArrays(
            kind=np.asarray(self.kind, dtype=np.int8),
            color=np.asarray(self.color, dtype=np.float32).reshape(-1, 3),
            color2=np.asarray(self.color2, dtype=np.float32).reshape(-1, 3),
            params=np.asarray(self.params, dtype=np.float32).reshape(-1, N_PARAMS),
            reflectivity=np.asarray(self.reflectivity, dtype=np.float32),
        )


@dataclass
class MaterialArrays:
    """Numpy view of a material table, for vectorised lookups by material id."""

    kind: np.ndarray  # (M,) int8
    color: np.ndarray  # (M, 3) float32
    color2: np.ndarray  # (M, 3) float32
    params: np.ndarray  # (M, N_PARAMS) float32
    reflectivity: np.ndarray  # (M,) float32

    @staticmethod
    def concat(parts: list["MaterialArrays"]) -> "MaterialArrays":
        return MaterialArrays(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                                ("kind", "color", "color2", "params", "reflectivity")))


@dataclass
class Mesh:
    """Triangle soup with per-triangle material id and facade axis/origin."""

    vertices: np.ndarray  # (V, 3) float32
    triangles: np.ndarray  # (T, 3) int64
    material: np.ndarray  # (T,) int32

    @staticmethod
    def empty() -> "Mesh":
        return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), np.zeros(0, np.int32))

    @staticmethod
    def concat(parts: list["Mesh"]) -> "Mesh":
        parts = [p for p in parts if len(p.triangles)]
        if not parts:
            return Mesh.empty()
        offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
        return Mesh(
            np.concatenate([p.vertices for p in parts]).astype(np.float32),
            np.concatenate([p.triangles + o for p, o in zip(parts, offsets)]),
            np.concatenate([p.material for p in parts]).astype(np.int32),
        )

    def facade_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-triangle horizontal facade axis (T, 2) and origin ``u0`` (T,).

        The axis is the outward normal turned by +90 deg about z; ``u0`` is the smallest
        coordinate of the triangle's vertices along it, which for the two triangles of a
        rectangular wall is the wall's left edge. Meaningless (but harmless) for horizontal faces.
        """
        v = self.vertices[self.triangles]  # (T, 3, 3)
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        axis = np.stack([-n[:, 1], n[:, 0]], axis=1)
        norm = np.linalg.norm(axis, axis=1, keepdims=True)
        axis = np.where(norm > 1e-9, axis / np.maximum(norm, 1e-12), np.array([1.0, 0.0]))
        u0 = np.einsum("tkj,tj->tk", v[:, :, :2], axis).min(axis=1)
        return axis.astype(np.float32), u0.astype(np.float32)


# Corner c of a unit box: x = bit 0, y = bit 1, z = bit 2. Triangles wound counter-clockwise
# seen from outside (bottom, top, -y, +y, -x, +x).
_BOX_CORNERS = np.array([[(c & 1) - 0.5, ((c >> 1) & 1) - 0.5, (c >> 2) & 1] for c in range(8)], dtype=np.float64)
_BOX_FACES = np.array(
    [[0, 2, 3], [0, 3, 1], [4, 5, 7], [4, 7, 6], [0, 1, 5], [0, 5, 4],
     [2, 6, 7], [2, 7, 3], [0, 4, 6], [0, 6, 2], [1, 3, 7], [1, 7, 5]],
    dtype=np.int64,
)
# Which of the 12 triangles are the top face (materials may differ there, e.g. roofs).
BOX_TOP = np.array([False, False, True, True] + [False] * 8)


def boxes(center_xy, z0, size, yaw, material, top_material=None, bottom: bool = False) -> Mesh:
    """Oriented boxes standing on ``z0``: ``size`` = (length along yaw, width, height).

    All arguments broadcast over N boxes. ``top_material`` (default: ``material``) is used for
    the top faces; bottoms are left out unless ``bottom`` (nothing is ever seen from below).
    """
    center_xy = np.atleast_2d(np.asarray(center_xy, dtype=np.float64))
    n = len(center_xy)
    z0 = np.broadcast_to(np.asarray(z0, dtype=np.float64), (n,))
    size = np.broadcast_to(np.asarray(size, dtype=np.float64), (n, 3))
    yaw = np.broadcast_to(np.asarray(yaw, dtype=np.float64), (n,))
    material = np.broadcast_to(np.asarray(material, dtype=np.int32), (n,))
    top = material if top_material is None else np.broadcast_to(np.asarray(top_material, dtype=np.int32), (n,))

    local = _BOX_CORNERS[None] * size[:, None, :]  # (n, 8, 3)
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = c * local[..., 0] - s * local[..., 1] + center_xy[:, 0:1]
    y = s * local[..., 0] + c * local[..., 1] + center_xy[:, 1:2]
    z = local[..., 2] + z0[:, None]
    verts = np.stack([x, y, z], axis=-1).reshape(-1, 3)

    faces = _BOX_FACES if bottom else _BOX_FACES[2:]
    is_top = BOX_TOP if bottom else BOX_TOP[2:]
    tris = (faces[None] + 8 * np.arange(n)[:, None, None]).reshape(-1, 3)
    mats = np.where(is_top[None], top[:, None], material[:, None]).reshape(-1)
    return Mesh(verts.astype(np.float32), tris, mats.astype(np.int32))


def _icosphere() -> tuple[np.ndarray, np.ndarray]:
    """Unit icosahedron subdivided once (42 vertices, 80 outward-wound triangles)."""
    p = (1 + 5**0.5) / 2
    v = [(-1, p, 0), (1, p, 0), (-1, -p, 0), (1, -p, 0), (0, -1, p), (0, 1, p),
         (0, -1, -p), (0, 1, -p), (p, 0, -1), (p, 0, 1), (-p, 0, -1), (-p, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
         (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.array(x, dtype=float) / np.linalg.norm(x) for x in v]
    mid: dict[tuple[int, int], int] = {}

    def midpoint(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in mid:
            m = verts[a] + verts[b]
            verts.append(m / np.linalg.norm(m))
            mid[key] = len(verts) - 1
        return mid[key]

    faces = []
    for a, b, c in f:
        ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
        faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
    return np.array(verts), np.array(faces, dtype=np.int64)


_SPHERE_V, _SPHERE_F = _icosphere()


def ellipsoids(center, radii, material) -> Mesh:
    """Low-poly ellipsoids (80 triangles each); ``center`` (N, 3), ``radii`` (N, 3)."""
    center = np.atleast_2d(np.asarray(center, dtype=np.float64))
    n = len(center)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (n, 3))
    verts = (_SPHERE_V[None] * radii[:, None, :] + center[:, None, :]).reshape(-1, 3)
    nv = len(_SPHERE_V)
    tris = (_SPHERE_F[None] + nv * np.arange(n)[:, None, None]).reshape(-1, 3)
    mats = np.repeat(np.broadcast_to(np.asarray(material, dtype=np.int32), (n,)), len(_SPHERE_F))
    return Mesh(verts.astype(np.float32), tris, mats.astype(np.int32))


def quad_xy(x0: float, y0: float, x1: float, y1: float, z: float, material: int) -> Mesh:
    """Horizontal rectangle facing up."""
    v = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float32)
    return Mesh(v, np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64), np.full(2, material, np.int32))


def vehicle_boxes(center_xy, yaw, body_material, cabin_material, length: float = 4.4) -> Mesh:
    """Cars as two boxes: a body (with a gap underneath, as LiDAR sees it) and a cabin."""
    center_xy = np.atleast_2d(np.asarray(center_xy, dtype=np.float64))
    yaw = np.broadcast_to(np.asarray(yaw, dtype=np.float64), (len(center_xy),))
    back = np.stack([np.cos(yaw), np.sin(yaw)], axis=1) * -0.3 * length / 4.4
    return Mesh.concat([
        boxes(center_xy, 0.3, (length, 1.8, 0.75), yaw, body_material),
        boxes(center_xy + back, 1.05, (0.55 * length, 1.6, 0.55), yaw, cabin_material, top_material=body_material),
    ])


def pedestrian_boxes(center_xy, yaw, material, skin_material) -> Mesh:
    """People as a body box and a head box (1.75 m tall)."""
    return Mesh.concat([
        boxes(center_xy, 0.0, (0.32, 0.5, 1.5), yaw, material),
        boxes(center_xy, 1.53, (0.22, 0.2, 0.22), yaw, skin_material),
    ])
