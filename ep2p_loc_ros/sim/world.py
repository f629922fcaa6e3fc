"""Procedural scenes as one triangle mesh with per-triangle materials, plus the route a vehicle can drive.

A world is built from a seed alone (``numpy.random.default_rng`` streams, nothing else), so the same seed
gives the same mesh byte for byte, and the world does not depend on how many frames are rendered: a 50-frame
and a 500-frame run of one seed share the same scene and the same first 50 poses.

Every triangle carries a material id, an instance id (a row of ``instance_params``: a building's colour and
window grid, a car's paint, a room's wall colour) and per-vertex ``uv`` in metres in the surface's own frame
(``u`` along a wall, centred on it; ``v`` = height above ground for vertical faces). ``textures.py`` turns
these into colours at any hit point, so the appearance is computed, not stored, and needs no image files.

Two kinds:
- ``outdoor``: a grid of streets (two lanes, parking lanes, kerbs, sidewalks, lane markings, crosswalks),
  blocks of buildings with textured facades, street lights, signs, traffic lights, trees and parked cars.
- ``indoor``: stands in for 2D-3D-S: a corridor with lobbies at both ends and rooms on both sides, doors,
  door leaves, furniture (tables, chairs, shelves, cabinets, sofas, monitors, plants).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = [
    "N_PARAMS",
    "Lighting",
    "Material",
    "MeshBuilder",
    "World",
    "WorldMesh",
    "build_world",
    "plan_route",
]

MESH_FORMAT_VERSION = 1
N_PARAMS = 10  # floats per instance; their meaning depends on the material (see textures.py)


class Material(IntEnum):
    """Surface types: textures.py colours them, the LiDAR model gives each its reflectivity."""

    ASPHALT = 0
    LANE_MARK = 1
    SIDEWALK = 2
    KERB = 3
    GRASS = 4
    FACADE = 5
    ROOF = 6
    POLE = 7
    SIGN = 8
    CAR_BODY = 9
    CAR_GLASS = 10
    TYRE = 11
    BARK = 12
    FOLIAGE = 13
    LAMP = 14
    WALL = 15
    FLOOR = 16
    CEILING = 17
    WOOD = 18
    FABRIC = 19
    METAL = 20
    DOOR = 21
    BOOKS = 22
    SCREEN = 23


MATERIAL_NAMES: tuple[str, ...] = tuple(m.name.lower() for m in Material)


# --------------------------------------------------------------------------- mesh


@dataclass
class WorldMesh:
    """The scene's triangles. Saved as ``world_mesh.npz`` (plain arrays, loads with ``allow_pickle=False``)."""

    vertices: np.ndarray  # (V, 3) float32, world frame (z up, ground at z = 0)
    triangles: np.ndarray  # (T, 3) int32
    materials: np.ndarray  # (T,) int32, Material ids
    uv: np.ndarray  # (V, 2) float32, surface coordinates in metres
    instances: np.ndarray  # (T,) int32, row of instance_params
    instance_params: np.ndarray  # (I, N_PARAMS) float32

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.triangles = np.ascontiguousarray(self.triangles, dtype=np.int32).reshape(-1, 3)
        self.materials = np.ascontiguousarray(self.materials, dtype=np.int32).reshape(-1)
        self.uv = np.ascontiguousarray(self.uv, dtype=np.float32).reshape(-1, 2)
        self.instances = np.ascontiguousarray(self.instances, dtype=np.int32).reshape(-1)
        self.instance_params = np.ascontiguousarray(self.instance_params, dtype=np.float32).reshape(-1, N_PARAMS)
        n_t, n_v = len(self.triangles), len(self.vertices)
        if len(self.materials) != n_t or len(self.instances) != n_t or len(self.uv) != n_v:
            raise DataError(
                f"world mesh arrays disagree: {n_t} triangles, {len(self.materials)} materials, "
                f"{len(self.instances)} instances, {n_v} vertices, {len(self.uv)} uv"
            )
        if n_t and (self.triangles.min() < 0 or self.triangles.max() >= n_v):
            raise DataError("world mesh: triangle index out of range")
        if n_t and (self.instances.min() < 0 or self.instances.max() >= len(self.instance_params)):
            raise DataError("world mesh: instance id out of range")
        if n_t and (self.materials.min() < 0 or self.materials.max() >= len(Material)):
            raise DataError("world mesh: unknown material id")

    @property
    def n_triangles(self) -> int:
        return len(self.triangles)

    def save(self, path: str | Path) -> None:
        """Write the npz (uncompressed: deterministic bytes and fast to load)."""
        with open(path, "wb") as f:
            np.savez(
                f,
                format_version=np.int32(MESH_FORMAT_VERSION),
                vertices=self.vertices,
                triangles=self.triangles,
                materials=self.materials,
                uv=self.uv,
                instances=self.instances,
                instance_params=self.instance_params,
                material_names=np.array(MATERIAL_NAMES),
            )

    @classmethod
    def load(cls, path: str | Path) -> WorldMesh:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["format_version"])
                if version != MESH_FORMAT_VERSION:
                    raise DataError(f"{path}: world mesh format {version}, this code reads {MESH_FORMAT_VERSION}")
                names = tuple(str(s) for s in z["material_names"])
                if names != MATERIAL_NAMES[: len(names)]:
                    raise DataError(f"{path}: material table differs from this code's ({names[:4]}...)")
                return cls(z["vertices"], z["triangles"], z["materials"], z["uv"], z["instances"], z["instance_params"])
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}: cannot read world mesh ({exc})") from exc


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class MeshBuilder:
    """Accumulates quads, boxes, prisms and blobs; every face gets uv in metres (see module docstring)."""

    def __init__(self) -> None:
        self._v: list[np.ndarray] = []
        self._uv: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self._m: list[np.ndarray] = []
        self._i: list[np.ndarray] = []
        self._n = 0
        self.params: list[np.ndarray] = [np.zeros(N_PARAMS)]  # instance 0: defaults

    def instance(self, *values: float) -> int:
        """Register an instance (up to N_PARAMS floats) and return its id."""
        row = np.zeros(N_PARAMS)
        row[: len(values)] = values
        self.params.append(row)
        return len(self.params) - 1

    def add(self, verts: np.ndarray, uv: np.ndarray, tris: np.ndarray, material: int, inst: int = 0) -> None:
        verts = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
        tris = np.asarray(tris, dtype=np.int64).reshape(-1, 3)
        self._v.append(verts)
        self._uv.append(np.asarray(uv, dtype=np.float64).reshape(-1, 2))
        self._t.append(tris + self._n)
        self._m.append(np.full(len(tris), int(material)))
        self._i.append(np.full(len(tris), int(inst)))
        self._n += len(verts)

    def quad(self, corners: np.ndarray, uv: np.ndarray, material: int, inst: int = 0) -> None:
        """Four corners in order around the quad (either winding: surfaces are two-sided)."""
        self.add(corners, uv, [[0, 1, 2], [0, 2, 3]], material, inst)

    def ground_rect(self, x0: float, y0: float, x1: float, y1: float, z: float, material: int, inst: int = 0) -> None:
        """Horizontal rectangle; uv = world x, y (so ground textures line up across pieces)."""
        c = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])
        self.quad(c, c[:, :2], material, inst)

    def oriented_rect(
        self,
        centre: tuple[float, float],
        along: float,
        across: float,
        yaw: float,
        z: float,
        material: int,
        inst: int = 0,
    ) -> None:
        """Horizontal rectangle of size along x across, rotated by yaw (for markings); uv local, centred."""
        hx, hy = along / 2, across / 2
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        c, s = np.cos(yaw), np.sin(yaw)
        xy = local @ np.array([[c, s], [-s, c]]) + np.asarray(centre)
        self.quad(np.column_stack([xy, np.full(4, z)]), local, material, inst)

    def box(
        self,
        centre: tuple[float, float, float],
        size: tuple[float, float, float],
        yaw: float,
        material: int,
        inst: int = 0,
        bottom: bool = False,
        top: bool = True,
    ) -> None:
        """Box centred at ``centre`` (x, y, z of the centre), size along its own x, y, z, rotated by yaw.

        Side faces: u along the face, centred on it, left to right seen from outside; v = world z. Top and
        bottom: uv = local x, y. The bottom face is left out by default (things stand on the ground).
        """
        sx, sy, sz = (s / 2 for s in size)
        R = _rot_z(yaw)
        cx, cy, cz = centre
        corner = np.array([[-sx, -sy], [sx, -sy], [sx, sy], [-sx, sy]])
        lo = np.column_stack([corner, np.full(4, -sz)]) @ R.T + [cx, cy, cz]
        hi = np.column_stack([corner, np.full(4, sz)]) @ R.T + [cx, cy, cz]
        zl, zh = cz - sz, cz + sz
        half_len = [sx, sy, sx, sy]
        for k in range(4):  # side faces, counter-clockwise seen from above: outside is to the right of a->b
            a, b = k, (k + 1) % 4
            h = half_len[k]
            self.quad(np.array([lo[a], lo[b], hi[b], hi[a]]), [[-h, zl], [h, zl], [h, zh], [-h, zh]], material, inst)
        if top:
            self.quad(hi, corner, material, inst)
        if bottom:
            self.quad(lo[::-1], corner[::-1], material, inst)

    def prism(
        self, p0: np.ndarray, p1: np.ndarray, radius: float, sides: int, material: int, inst: int = 0, caps: bool = True
    ) -> None:
        """Polygonal cylinder from p0 to p1 (poles, trunks, wheels); uv = (arc length, distance along axis)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        axis = p1 - p0
        length = float(np.linalg.norm(axis))
        a = axis / length
        ref = np.array([0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        e1 = np.cross(a, ref)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(a, e1)
        ang = np.arange(sides) * 2 * np.pi / sides
        ring = np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2
        verts = np.vstack([p0 + radius * ring, p1 + radius * ring])
        arc = ang * radius
        v0 = p0[2] if abs(a[2]) > 0.9 else 0.0  # vertical: v = height, like walls
        uv = np.vstack(
            [np.column_stack([arc, np.full(sides, v0)]), np.column_stack([arc, np.full(sides, v0 + length)])]
        )
        tris = []
        for k in range(sides):
            n = (k + 1) % sides
            tris += [[k, n, sides + n], [k, sides + n, sides + k]]
        if caps:
            tris += [[sides, sides + k, sides + k + 1] for k in range(1, sides - 1)]
            tris += [[0, k + 1, k] for k in range(1, sides - 1)]
        self.add(verts, uv, tris, material, inst)

    def blob(
        self,
        centre: np.ndarray,
        radii: tuple[float, float, float],
        rng: np.random.Generator,
        material: int,
        inst: int = 0,
    ) -> None:
        """Lumpy ellipsoid (tree canopies, bushes): an icosahedron subdivided once (80 triangles), jittered."""
        verts, tris = _icosphere_1()
        verts = verts * (1.0 + rng.uniform(-0.15, 0.15, (len(verts), 1))) * np.asarray(radii)
        verts = verts + np.asarray(centre)
        self.add(verts, verts[:, :2], tris, material, inst)

    def build(self) -> WorldMesh:
        if not self._t:
            raise ValueError("empty world")
        return WorldMesh(
            np.vstack(self._v),
            np.vstack(self._t),
            np.concatenate(self._m),
            np.vstack(self._uv),
            np.concatenate(self._i),
            np.array(self.params),
        )


def _icosphere_1() -> tuple[np.ndarray, np.ndarray]:
    t = (1.0 + 5**0.5) / 2.0
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]  # fmt: skip
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
         [6, 2, 10], [8, 6, 7], [9, 8, 1]]  # fmt: skip
    verts = [np.array(p, float) / np.linalg.norm(p) for p in v]
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
        faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    return np.array(verts), np.array(faces)


# --------------------------------------------------------------------------- world


@dataclass(frozen=True)
class Lighting:
    """Illumination shared by all frames of a sequence (so appearance is consistent between frames)."""

    sun_dir: tuple[float, float, float]  # unit vector towards the sun (world frame)
    sun: float  # direct light strength
    ambient: float
    sky_zenith: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    shadows: bool
    fog_m: float  # distance at which 63% of the colour is haze (0: none)


@dataclass
class World:
    """A built scene: mesh, lighting and what the route planner needs (street grid or corridor/rooms)."""

    kind: str
    seed: int
    mesh: WorldMesh
    lighting: Lighting
    layout: dict = field(default_factory=dict)  # kind-specific, JSON-serialisable summary used by plan_route


KINDS = ("outdoor", "indoor")

# rng streams: world geometry, route choices, vehicle jitter, per-frame sensor noise (see sensors.py)
STREAM_WORLD, STREAM_ROUTE, STREAM_JITTER = 0, 1, 2


def build_world(kind: str, seed: int, blocks: int = 4) -> World:
    """Build the scene for ``kind`` from ``seed``; ``blocks``: street-grid junctions per side (outdoor)."""
    if kind not in KINDS:
        raise ValueError(f"unknown world kind {kind!r} (expected one of {', '.join(KINDS)})")
    rng = np.random.default_rng([int(seed), STREAM_WORLD])
    if kind == "outdoor":
        if blocks < 2:
            raise ValueError(f"outdoor worlds need blocks >= 2, got {blocks}")
        return _build_outdoor(rng, int(seed), int(blocks))
    return _build_indoor(rng, int(seed))


# ----------------------------------------------------------------- outdoor

# street cross-section (metres from the street's centre line)
LANE_W = 3.5  # one driving lane per direction
PARK_W = 2.2  # parking lane next to the kerb
ROAD_HW = LANE_W + PARK_W  # kerb line
SIDEWALK_W = 3.5
BUILD_LINE = ROAD_HW + SIDEWALK_W  # facades stand here
KERB_H = 0.15
MARK_Z = 0.005  # paint floats 5 mm above the asphalt (no coplanar triangles)

CAR_COLOURS = np.array(
    [[0.8, 0.8, 0.82], [0.1, 0.1, 0.12], [0.55, 0.56, 0.58], [0.6, 0.08, 0.07], [0.1, 0.2, 0.45],
     [0.85, 0.85, 0.8], [0.2, 0.35, 0.25], [0.75, 0.6, 0.2], [0.3, 0.3, 0.33], [0.9, 0.9, 0.9]]
)  # fmt: skip
FACADE_COLOURS = np.array(
    [[0.85, 0.8, 0.7], [0.75, 0.6, 0.45], [0.6, 0.35, 0.25], [0.8, 0.78, 0.75], [0.55, 0.55, 0.55],
     [0.9, 0.85, 0.6], [0.7, 0.5, 0.4], [0.65, 0.7, 0.72], [0.85, 0.7, 0.6], [0.5, 0.42, 0.35]]
)  # fmt: skip


def _build_outdoor(rng: np.random.Generator, seed: int, n: int) -> World:
    b = MeshBuilder()
    # street lines: n walkable junction lines plus one outer line per side (the route stays on the inner ones)
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(60.0, 100.0, n + 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(60.0, 100.0, n + 1))])
    xs -= xs[(n + 1) // 2]
    ys -= ys[(n + 1) // 2]
    margin = 400.0
    asphalt = b.instance(rng.uniform(0.3, 0.38))
    b.ground_rect(xs[0] - margin, ys[0] - margin, xs[-1] + margin, ys[-1] + margin, 0.0, Material.ASPHALT, asphalt)

    # blocks (raised sidewalk ring, courtyard, buildings along the four sides) between the street lines, and
    # a ring of blocks beyond the outer streets so that every street has buildings on both sides
    def edges(lines: np.ndarray, k: int) -> tuple[float, float]:
        lo = lines[k] + ROAD_HW if k >= 0 else lines[0] - 80.0
        hi = lines[k + 1] - ROAD_HW if k + 1 < len(lines) else lines[-1] + 80.0
        return float(lo), float(hi)

    for i in range(-1, len(xs)):
        for j in range(-1, len(ys)):
            _outdoor_block(b, rng, *edges(xs, i), *edges(ys, j))

    # streets: markings and furniture on every segment between two junctions
    for axis, lines, cross in ((0, ys, xs), (1, xs, ys)):
        for c in lines:
            for k in range(len(cross) - 1):
                _street_segment(b, rng, axis, float(c), float(cross[k]), float(cross[k + 1]))
    for x in xs:
        for y in ys:
            _junction(b, rng, float(x), float(y))

    elev = np.radians(rng.uniform(25.0, 55.0))
    azim = rng.uniform(0.0, 2 * np.pi)
    sun = (float(np.cos(elev) * np.cos(azim)), float(np.cos(elev) * np.sin(azim)), float(np.sin(elev)))
    lighting = Lighting(sun, 0.75, 0.42, (0.32, 0.5, 0.82), (0.78, 0.84, 0.9), True, 450.0)
    layout = {"xs": xs.tolist(), "ys": ys.tolist(), "walkable": [1, n], "lane_offset": LANE_W / 2}
    return World("outdoor", seed, b.build(), lighting, layout)


def _facade_instance(b: MeshBuilder, rng: np.random.Generator) -> int:
    """Building appearance: style, colour, window spacing/width, floor height, window height (textures.py)."""
    style = rng.choice(4, p=[0.4, 0.3, 0.18, 0.12])  # plaster, brick, concrete panels, glass
    colour = FACADE_COLOURS[rng.integers(len(FACADE_COLOURS))] * rng.uniform(0.85, 1.1, 3)
    if style == 1:
        colour = np.array([0.55, 0.28, 0.2]) * rng.uniform(0.8, 1.15, 3)
    return b.instance(
        style, *np.clip(colour, 0, 1), rng.uniform(2.4, 4.0), rng.uniform(0.35, 0.6), rng.uniform(2.9, 3.5),
        rng.uniform(0.4, 0.6), rng.integers(0, 2), rng.uniform(0.0, 1000.0)
    )  # fmt: skip


def _outdoor_block(b: MeshBuilder, rng: np.random.Generator, x0: float, x1: float, y0: float, y1: float) -> None:
    """A block between kerb lines: kerb faces, sidewalk ring, courtyard, and a ring of buildings."""
    if x1 - x0 < 2 * SIDEWALK_W + 4 or y1 - y0 < 2 * SIDEWALK_W + 4:
        b.box(((x0 + x1) / 2, (y0 + y1) / 2, KERB_H / 2), (x1 - x0, y1 - y0, KERB_H), 0.0, Material.SIDEWALK)
        return
    kerb = b.instance(rng.uniform(0.55, 0.65))
    pave = b.instance(rng.uniform(0.55, 0.68), rng.uniform(0.3, 0.5))
    # kerb sides (the top is drawn as sidewalk and courtyard below)
    for (ax, ay), (bx, by), h in (
        ((x0, y0), (x1, y0), (x1 - x0) / 2), ((x1, y0), (x1, y1), (y1 - y0) / 2),
        ((x1, y1), (x0, y1), (x1 - x0) / 2), ((x0, y1), (x0, y0), (y1 - y0) / 2),
    ):  # fmt: skip
        b.quad(np.array([[ax, ay, 0], [bx, by, 0], [bx, by, KERB_H], [ax, ay, KERB_H]]),
               [[-h, 0], [h, 0], [h, KERB_H], [-h, KERB_H]], Material.KERB, kerb)  # fmt: skip
    s = SIDEWALK_W
    b.ground_rect(x0, y0, x1, y0 + s, KERB_H, Material.SIDEWALK, pave)
    b.ground_rect(x0, y1 - s, x1, y1, KERB_H, Material.SIDEWALK, pave)
    b.ground_rect(x0, y0 + s, x0 + s, y1 - s, KERB_H, Material.SIDEWALK, pave)
    b.ground_rect(x1 - s, y0 + s, x1, y1 - s, KERB_H, Material.SIDEWALK, pave)
    b.ground_rect(x0 + s, y0 + s, x1 - s, y1 - s, KERB_H, Material.GRASS, b.instance(rng.uniform(0.8, 1.1)))

    bx0, bx1, by0, by1 = x0 + s, x1 - s, y0 + s, y1 - s
    max_depth = max(6.0, min(bx1 - bx0, by1 - by0) / 2 - 2.0)
    for side in range(4):  # 0: south (front faces -y), 1: east, 2: north, 3: west
        along0, along1 = (bx0, bx1) if side % 2 == 0 else (by0, by1)
        pos = along0
        while pos < along1 - 4.0:
            width = min(rng.uniform(8.0, 26.0), along1 - pos)
            if along1 - pos - width < 6.0:
                width = along1 - pos
            depth = min(rng.uniform(9.0, 18.0), max_depth)
            height = rng.choice([rng.uniform(6.0, 12.0), rng.uniform(12.0, 22.0), rng.uniform(22.0, 35.0)],
                                p=[0.45, 0.4, 0.15])  # fmt: skip
            gap = rng.random() < 0.1
            inst = _facade_instance(b, rng)
            if not gap:
                mid = pos + width / 2
                if side == 0:
                    c = (mid, by0 + depth / 2)
                elif side == 2:
                    c = (mid, by1 - depth / 2)
                elif side == 1:
                    c = (bx1 - depth / 2, mid)
                else:
                    c = (bx0 + depth / 2, mid)
                size = (width, depth) if side % 2 == 0 else (depth, width)
                b.box((c[0], c[1], height / 2), (size[0], size[1], height), 0.0, Material.FACADE, inst, top=False)
                b.ground_rect(c[0] - size[0] / 2, c[1] - size[1] / 2, c[0] + size[0] / 2, c[1] + size[1] / 2,
                              height, Material.ROOF, inst)  # fmt: skip
            pos += width + (rng.uniform(3.0, 8.0) if gap else 0.0)


def _street_segment(b: MeshBuilder, rng: np.random.Generator, axis: int, c: float, a0: float, a1: float) -> None:
    """Markings and furniture along a street between junctions at a0 and a1 (street along x if axis == 0).

    ``across`` is measured along +y (axis 0) or +x (axis 1); traffic keeps right, so on side ``s`` it drives
    towards +along when ``drive(s) > 0``.
    """

    def xy(along: float, across: float) -> tuple[float, float]:
        return (along, c + across) if axis == 0 else (c + across, along)

    def drive(side: int) -> int:
        return -side if axis == 0 else side

    yaw = 0.0 if axis == 0 else np.pi / 2
    across_yaw = np.pi / 2 if axis == 0 else 0.0
    s0, s1 = a0 + BUILD_LINE + 1.0, a1 - BUILD_LINE - 1.0  # between the crosswalks
    if s1 - s0 < 10:
        return
    paint = b.instance(rng.uniform(0.75, 0.95))
    # centre line: 3 m dashes every 9 m; solid edge lines between driving and parking lanes
    pos = s0 + rng.uniform(0.0, 6.0)
    while pos + 3.0 < s1:
        b.oriented_rect(xy(pos + 1.5, 0.0), 3.0, 0.15, yaw, MARK_Z, Material.LANE_MARK, paint)
        pos += 9.0
    for side in (-1, 1):
        b.oriented_rect(xy((s0 + s1) / 2, side * LANE_W), s1 - s0, 0.12, yaw, MARK_Z, Material.LANE_MARK, paint)
    # crosswalks and stop lines at both ends
    for end, sgn in ((a0, 1.0), (a1, -1.0)):
        if rng.random() < 0.6:
            mid = end + sgn * (ROAD_HW + SIDEWALK_W / 2)
            across = -ROAD_HW + 0.8
            while across < ROAD_HW - 0.5:
                b.oriented_rect(xy(mid, across), 3.0, 0.5, yaw, MARK_Z, Material.LANE_MARK, paint)
                across += 1.0
        stop = end + sgn * (BUILD_LINE + 0.4)
        b.oriented_rect(xy(stop, -sgn * LANE_W / 2), 0.4, LANE_W, yaw, MARK_Z, Material.LANE_MARK, paint)

    for side in (-1, 1):
        # parked cars in the parking lane
        p_park = rng.uniform(0.1, 0.7)
        pos = s0 + 3.0
        while pos + 5.0 < s1 - 3.0:
            if rng.random() < p_park:
                _car(b, rng, xy(pos + 2.5, side * (LANE_W + PARK_W / 2 + rng.uniform(-0.15, 0.1))),
                     yaw + (0.0 if drive(side) > 0 else np.pi) + rng.normal(0.0, 0.02))  # fmt: skip
            pos += rng.uniform(5.6, 7.5)
        # street lights, with trees between them
        spacing = rng.uniform(22.0, 35.0)
        pole = b.instance(*rng.choice([[0.45, 0.46, 0.48], [0.15, 0.25, 0.18], [0.2, 0.2, 0.22]]))
        pos = s0 + rng.uniform(0.0, spacing)
        trees = rng.random() < 0.7
        while pos < s1:
            _street_light(b, rng, xy(pos, side * (ROAD_HW + 0.5)), across_yaw + (np.pi if side > 0 else 0.0), pole)
            if trees and pos + spacing / 2 < s1 and rng.random() < 0.8:
                _tree(b, rng, xy(pos + spacing / 2, side * (ROAD_HW + 1.7)))
            pos += spacing
        # a traffic sign before the next junction, facing the traffic that drives on this side
        if rng.random() < 0.6:
            forward = drive(side) > 0
            along = s1 - 2.0 if forward else s0 + 2.0
            _sign(b, rng, xy(along, side * (ROAD_HW + 0.4)), yaw + (np.pi if forward else 0.0))


def _junction(b: MeshBuilder, rng: np.random.Generator, x: float, y: float) -> None:
    """Traffic lights on some corners of a junction, facing the approaching traffic."""
    if rng.random() < 0.5:
        return
    pole = b.instance(0.2, 0.2, 0.22)
    d = ROAD_HW + 0.5
    for (sx, sy), face in (((1, -1), np.pi), ((1, 1), -np.pi / 2), ((-1, 1), 0.0), ((-1, -1), np.pi / 2)):
        if rng.random() < 0.75:
            p = (x + sx * d, y + sy * d)
            b.prism((p[0], p[1], KERB_H), (p[0], p[1], 3.4), 0.07, 6, Material.POLE, pole)
            head = b.instance(3.0, rng.integers(0, 3))
            b.box((p[0], p[1], 3.0), (0.3, 0.3, 0.9), face, Material.SIGN, head)


def _car(b: MeshBuilder, rng: np.random.Generator, centre: tuple[float, float], yaw: float) -> None:
    length, width = rng.uniform(3.8, 4.9), rng.uniform(1.65, 1.9)
    body_h, cabin_h = rng.uniform(0.55, 0.75), rng.uniform(0.45, 0.6)
    paint = b.instance(*CAR_COLOURS[rng.integers(len(CAR_COLOURS))])
    glass = b.instance(0.0)
    R = _rot_z(yaw)
    cx, cy = centre
    b.box((cx, cy, 0.3 + body_h / 2), (length, width, body_h), yaw, Material.CAR_BODY, paint, bottom=True)
    cab_len = length * rng.uniform(0.45, 0.55)
    off = R[:2, 0] * (-length * 0.05)
    b.box((cx + off[0], cy + off[1], 0.3 + body_h + cabin_h / 2), (cab_len, width * 0.92, cabin_h), yaw,
          Material.CAR_GLASS, glass)  # fmt: skip
    b.box((cx + off[0], cy + off[1], 0.3 + body_h + cabin_h + 0.02), (cab_len * 0.8, width * 0.85, 0.04), yaw,
          Material.CAR_BODY, paint)  # fmt: skip
    tyre = b.instance(0.0)
    for fx in (-0.33, 0.33):
        for fy in (-0.5, 0.5):
            p = np.array([cx, cy, 0.32]) + R @ np.array([fx * length, fy * width, 0.0])
            ax = R[:, 1] * 0.11
            b.prism(p - ax, p + ax, 0.32, 6, Material.TYRE, tyre)


def _street_light(b: MeshBuilder, rng: np.random.Generator, base: tuple[float, float], yaw_to_road: float,
                  pole: int) -> None:  # fmt: skip
    h = rng.uniform(6.5, 8.5)
    x, y = base
    b.prism((x, y, KERB_H), (x, y, h), 0.09, 6, Material.POLE, pole)
    d = np.array([np.cos(yaw_to_road), np.sin(yaw_to_road)])
    arm = rng.uniform(1.2, 2.0)
    b.prism((x, y, h - 0.1), (x + d[0] * arm, y + d[1] * arm, h - 0.1), 0.05, 4, Material.POLE, pole)
    b.box((x + d[0] * arm, y + d[1] * arm, h - 0.22), (0.6, 0.28, 0.16), yaw_to_road, Material.LAMP)


def _tree(b: MeshBuilder, rng: np.random.Generator, base: tuple[float, float]) -> None:
    x, y = base
    trunk_h = rng.uniform(2.2, 3.2)
    r = rng.uniform(1.3, 2.0)
    bark = b.instance(rng.uniform(0.8, 1.2))
    b.prism((x, y, KERB_H), (x, y, trunk_h + r * 0.5), rng.uniform(0.1, 0.18), 6, Material.BARK, bark)
    leaves = b.instance(rng.uniform(0.0, 1.0), rng.uniform(0.7, 1.2))
    b.blob((x, y, trunk_h + r * 0.8), (r, r, r * rng.uniform(0.9, 1.3)), rng, Material.FOLIAGE, leaves)


def _sign(b: MeshBuilder, rng: np.random.Generator, base: tuple[float, float], facing: float) -> None:
    """Sign on a pole; ``facing`` = yaw of the direction the sign face looks to."""
    x, y = base
    kind = int(rng.integers(0, 3))  # 0 round prohibition, 1 blue mandatory, 2 green direction board
    w, h = (0.65, 0.65) if kind < 2 else (rng.uniform(1.0, 1.6), 0.45)
    top = rng.uniform(2.6, 3.1)
    b.prism((x, y, KERB_H), (x, y, top), 0.04, 6, Material.POLE, b.instance(0.5, 0.5, 0.52))
    # box x axis across the face, y axis along the facing direction
    b.box((x, y, top - h / 2), (w, 0.04, h), facing - np.pi / 2, Material.SIGN, b.instance(kind, rng.uniform()))


# ----------------------------------------------------------------- indoor

WALL_T = 0.12
DOOR_W, DOOR_H = 1.0, 2.1
LOBBY_L, LOBBY_HW = 5.5, 3.5
ROOM_STRIP = 2.2  # free strip along the corridor wall inside each room (the route runs there)
WALL_COLOURS = np.array(
    [[0.92, 0.9, 0.85], [0.85, 0.88, 0.9], [0.9, 0.85, 0.75], [0.75, 0.82, 0.75], [0.95, 0.95, 0.95],
     [0.8, 0.75, 0.85], [0.9, 0.8, 0.7], [0.7, 0.78, 0.85]]
)  # fmt: skip


def _wall_instance(b: MeshBuilder, rng: np.random.Generator, windows: bool = False) -> int:
    colour = WALL_COLOURS[rng.integers(len(WALL_COLOURS))] * rng.uniform(0.9, 1.05, 3)
    return b.instance(*np.clip(colour, 0, 1), rng.uniform(0.0, 1000.0), 1.0 if windows else 0.0)


def _wall(b: MeshBuilder, p0: tuple[float, float], p1: tuple[float, float], height: float, inst: int,
          doors: list[float] = ()) -> None:  # fmt: skip
    """Wall of thickness WALL_T on the line p0-p1, with door openings centred at the given distances from p0."""
    p0a, p1a = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1a - p0a))
    d = (p1a - p0a) / length
    yaw = float(np.arctan2(d[1], d[0]))
    cuts = sorted(doors)
    start = 0.0
    pieces: list[tuple[float, float, float, float]] = []  # along0, along1, z0, z1
    for c in cuts:
        pieces.append((start, c - DOOR_W / 2, 0.0, height))
        pieces.append((c - DOOR_W / 2, c + DOOR_W / 2, DOOR_H, height))
        start = c + DOOR_W / 2
    pieces.append((start, length, 0.0, height))
    for a0, a1, z0, z1 in pieces:
        if a1 - a0 < 1e-3:
            continue
        m = p0a + d * (a0 + a1) / 2
        b.box((m[0], m[1], (z0 + z1) / 2), (a1 - a0, WALL_T, z1 - z0), yaw, Material.WALL, inst)


def _build_indoor(rng: np.random.Generator, seed: int) -> World:
    b = MeshBuilder()
    H = rng.uniform(2.7, 3.1)
    wc = rng.uniform(2.2, 2.6)  # corridor width (between wall faces)
    y_wall = wc / 2 + WALL_T / 2  # centre line of the corridor walls
    L = rng.uniform(36.0, 48.0)
    corridor = _wall_instance(b, rng)
    rooms: list[dict] = []
    for side in (1, -1):
        depth = rng.uniform(5.2, 7.0)
        y_out = side * (wc / 2 + WALL_T + depth + WALL_T / 2)
        x = 0.0
        bounds = [0.0]
        while x < L - 0.1:
            w = rng.uniform(5.0, 8.5)
            if L - (x + w) < 5.0:
                w = L - x
            x += w
            bounds.append(x)
        doors_here: list[float] = []
        for x0, x1 in itertools.pairwise(bounds):
            xa, xb = x0 + WALL_T / 2 + 0.36 + DOOR_W / 2, x1 - WALL_T / 2 - 0.36 - DOOR_W / 2
            doors_here += [xa, xb]
            inst = _wall_instance(b, rng, windows=True)
            rooms.append({"side": side, "x0": x0, "x1": x1, "doors": [xa, xb], "depth": depth})
            _wall(b, (x0, y_out), (x1, y_out), H, inst)  # outer wall, with windows
            _room_contents(b, rng, side, x0, x1, wc / 2 + WALL_T, depth, H, xa, xb)
            b.ground_rect(x0, min(side * (wc / 2), y_out), x1, max(side * (wc / 2), y_out), 0.0, Material.FLOOR,
                          _floor_instance(b, rng))  # fmt: skip
        for xb_ in bounds:  # partition walls (the first and last close the row towards the lobbies)
            _wall(b, (xb_, side * wc / 2), (xb_, y_out + side * WALL_T / 2), H, _wall_instance(b, rng))
        _wall(b, (0.0, side * y_wall), (L, side * y_wall), H, corridor, doors=doors_here)
        for xd in doors_here:  # door frames and open door leaves (hinged on the side away from the room's middle)
            _door(b, rng, xd, side, wc, rooms)
    # corridor and lobbies
    b.ground_rect(0.0, -wc / 2, L, wc / 2, 0.0, Material.FLOOR, _floor_instance(b, rng, kind=2))
    lobby_floor = _floor_instance(b, rng, kind=2)
    lobby = _wall_instance(b, rng, windows=True)
    for x0 in (-LOBBY_L, L):
        b.ground_rect(x0, -LOBBY_HW, x0 + LOBBY_L, LOBBY_HW, 0.0, Material.FLOOR, lobby_floor)
        xe = x0 if x0 < 0 else x0 + LOBBY_L
        _wall(b, (xe, -LOBBY_HW), (xe, LOBBY_HW), H, lobby)
        for s in (-1, 1):
            _wall(b, (x0, s * LOBBY_HW), (x0 + LOBBY_L, s * LOBBY_HW), H, lobby)
        _lobby_contents(b, rng, x0)
    b.ground_rect(-LOBBY_L - 1, -12.0, L + LOBBY_L + 1, 12.0, H, Material.CEILING, b.instance(rng.uniform(0.85, 0.95)))

    key = np.array([0.25, 0.35, 0.9]) / np.linalg.norm([0.25, 0.35, 0.9])  # diffuse "ceiling light" direction
    lighting = Lighting(tuple(float(v) for v in key), 0.35, 0.7, (0.95, 0.95, 0.95), (0.9, 0.9, 0.9), False, 0.0)
    layout = {"length": L, "corridor_width": wc, "height": H, "rooms": rooms,
              "strip": wc / 2 + WALL_T + ROOM_STRIP / 2}  # fmt: skip
    return World("indoor", seed, b.build(), lighting, layout)


def _floor_instance(b: MeshBuilder, rng: np.random.Generator, kind: int | None = None) -> int:
    """Floor: kind 0 carpet, 1 wooden planks, 2 tiles; colour and scale."""
    k = int(rng.integers(0, 3)) if kind is None else kind
    base = [[0.35, 0.38, 0.45], [0.55, 0.4, 0.28], [0.75, 0.74, 0.7]][k] * rng.uniform(0.8, 1.15, 3)
    return b.instance(k, *np.clip(base, 0, 1), rng.uniform(0.3, 0.6))


def _door(b: MeshBuilder, rng: np.random.Generator, xd: float, side: int, wc: float, rooms: list[dict]) -> None:
    frame = b.instance(0.35, 0.35, 0.38)
    y0 = side * wc / 2
    y1 = side * (wc / 2 + WALL_T)
    yc = (y0 + y1) / 2
    for sx in (-1, 1):
        b.box(
            (xd + sx * (DOOR_W / 2 - 0.03), yc, DOOR_H / 2), (0.06, WALL_T + 0.02, DOOR_H), 0.0, Material.METAL, frame
        )
    b.box((xd, yc, DOOR_H - 0.03), (DOOR_W, WALL_T + 0.02, 0.06), 0.0, Material.METAL, frame)
    # hinge on the partition side: doors near a room's start open towards -x, near its end towards +x
    room = next(r for r in rooms if r["side"] == side and r["x0"] <= xd <= r["x1"])
    hinge_sign = -1.0 if xd == room["doors"][0] else 1.0
    hx = xd + hinge_sign * (DOOR_W / 2 - 0.08)
    leaf = b.instance(rng.integers(0, 2), *rng.uniform(0.3, 0.7, 3))
    b.box((hx, y1 + side * 0.45, DOOR_H / 2 - 0.02), (0.04, 0.9, DOOR_H - 0.06), 0.0, Material.DOOR, leaf)


def _room_contents(b: MeshBuilder, rng: np.random.Generator, side: int, x0: float, x1: float, y_in: float,
                   depth: float, H: float, xa: float, xb: float) -> None:  # fmt: skip
    """Furniture beyond the free strip: shelves and cabinets on the outer wall, tables with chairs and monitors,
    sometimes a sofa or a plant; ``y_in`` is |y| of the corridor wall's inner face."""

    def Y(r: float) -> float:  # distance into the room -> world y
        return side * (y_in + r)

    r_far = depth - 0.05
    pos = x0 + WALL_T / 2 + 0.1
    while pos < x1 - 1.0:  # along the outer wall
        w = min(rng.uniform(0.8, 2.0), x1 - WALL_T / 2 - 0.1 - pos)
        if w < 0.6:
            break
        if rng.random() < 0.7:
            tall = rng.random() < 0.6
            d = 0.4 if tall else 0.5
            h = rng.uniform(1.7, 2.2) if tall else rng.uniform(0.8, 1.2)
            mat = Material.BOOKS if tall else Material.METAL
            inst = b.instance(rng.uniform(0.0, 1000.0), *rng.uniform(0.3, 0.7, 3))
            b.box((pos + w / 2, Y(r_far - d / 2), h / 2), (w, d, h), 0.0, mat, inst)
        pos += w + rng.uniform(0.05, 0.8)
    # tables in the middle band
    band0, band1 = ROOM_STRIP + 0.4, r_far - 0.9
    if band1 - band0 > 1.2:
        pos = x0 + 0.8
        wood = b.instance(*rng.uniform([0.45, 0.3, 0.18], [0.75, 0.55, 0.4]))
        while pos < x1 - 2.2:
            tw, td = rng.uniform(1.2, 1.8), rng.uniform(0.7, 0.9)
            rc = (band0 + band1) / 2
            cx = pos + tw / 2
            if rng.random() < 0.8:
                _table(b, rng, cx, Y(rc), tw, td, wood)
                for cs in (-1, 1):
                    if rng.random() < 0.7:
                        _chair(
                            b, rng, cx + rng.uniform(-0.3, 0.3), Y(rc + cs * (td / 2 + 0.3)), 0.0 if cs < 0 else np.pi
                        )
            elif rng.random() < 0.5:
                fabric = b.instance(*rng.uniform(0.15, 0.6, 3))
                b.box((cx, Y(rc), 0.22), (tw + 0.4, 0.85, 0.44), 0.0, Material.FABRIC, fabric)
                b.box((cx, Y(rc + 0.35), 0.6), (tw + 0.4, 0.2, 0.5), 0.0, Material.FABRIC, fabric)
            else:
                _plant(b, rng, cx, Y(rc))
            pos += tw + rng.uniform(0.8, 1.6)


def _table(b: MeshBuilder, rng: np.random.Generator, x: float, y: float, w: float, d: float, wood: int) -> None:
    b.box((x, y, 0.74), (w, d, 0.04), 0.0, Material.WOOD, wood, bottom=True)
    metal = b.instance(0.3, 0.3, 0.32)
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.box(
                (x + sx * (w / 2 - 0.05), y + sy * (d / 2 - 0.05), 0.36), (0.04, 0.04, 0.72), 0.0, Material.METAL, metal
            )
    if rng.random() < 0.7:
        b.box((x + rng.uniform(-w / 4, w / 4), y, 0.97), (0.55, 0.03, 0.34), 0.0, Material.SCREEN)
        b.box((x, y, 0.81), (0.08, 0.08, 0.1), 0.0, Material.METAL, metal)


def _chair(b: MeshBuilder, rng: np.random.Generator, x: float, y: float, yaw: float) -> None:
    fabric = b.instance(*rng.uniform(0.1, 0.6, 3))
    b.box((x, y, 0.46), (0.45, 0.45, 0.06), yaw, Material.FABRIC, fabric, bottom=True)
    back = np.array([np.cos(yaw + np.pi / 2), np.sin(yaw + np.pi / 2)]) * -0.22
    b.box((x + back[0], y + back[1], 0.75), (0.45, 0.05, 0.5), yaw, Material.FABRIC, fabric)
    b.prism((x, y, 0.0), (x, y, 0.43), 0.03, 4, Material.METAL, b.instance(0.2, 0.2, 0.2))


def _plant(b: MeshBuilder, rng: np.random.Generator, x: float, y: float) -> None:
    b.prism((x, y, 0.0), (x, y, 0.45), 0.2, 8, Material.WOOD, b.instance(0.6, 0.35, 0.25))
    r = rng.uniform(0.35, 0.55)
    b.blob((x, y, 0.45 + r * 1.2), (r, r, r * 1.4), rng, Material.FOLIAGE, b.instance(rng.uniform(), 1.0))


def _lobby_contents(b: MeshBuilder, rng: np.random.Generator, x0: float) -> None:
    """A desk and plants along the lobby's side walls; the middle stays free for the route's U-turn."""
    for s in (-1, 1):
        if rng.random() < 0.8:
            _plant(b, rng, x0 + rng.uniform(0.8, LOBBY_L - 0.8), s * (LOBBY_HW - 0.5))
    wood = b.instance(*rng.uniform([0.45, 0.3, 0.18], [0.75, 0.55, 0.4]))
    s = 1 if rng.random() < 0.5 else -1
    b.box((x0 + LOBBY_L / 2, s * (LOBBY_HW - 0.45), 0.55), (1.8, 0.6, 1.1), 0.0, Material.WOOD, wood)


# --------------------------------------------------------------------------- routes


def plan_route(world: World, min_length: float) -> tuple[np.ndarray, np.ndarray]:
    """Corner points (K, 2) of a drivable polyline at least ``min_length`` long, and fillet radii (K,).

    The route is drawn from its own rng stream and grows one piece at a time, so a longer route starts with
    exactly the corners of a shorter one (same seed, more frames -> same first poses).
    """
    rng = np.random.default_rng([world.seed, STREAM_ROUTE])
    if world.kind == "outdoor":
        return _route_outdoor(world.layout, rng, min_length)
    return _route_indoor(world.layout, min_length)


def _polyline_length(pts: list[np.ndarray]) -> float:
    return float(sum(np.linalg.norm(b - a) for a, b in itertools.pairwise(pts)))


def _route_outdoor(layout: dict, rng: np.random.Generator, min_length: float) -> tuple[np.ndarray, np.ndarray]:
    """Random walk on the inner junction grid, driving in the right-hand lane, no U-turns."""
    xs, ys = np.asarray(layout["xs"]), np.asarray(layout["ys"])
    lo, hi = layout["walkable"]
    off = float(layout["lane_offset"])
    node = np.array([(lo + hi) // 2, (lo + hi) // 2])
    heading = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])[rng.integers(4)]
    nodes = [node.copy()]
    dirs: list[np.ndarray] = []
    length = 0.0
    while length < min_length + 200.0:
        left = np.array([-heading[1], heading[0]])
        options, weights = [], []
        for d, w in ((heading, 0.5), (left, 0.25), (-left, 0.25)):
            nxt = node + d
            if lo <= nxt[0] <= hi and lo <= nxt[1] <= hi:
                options.append(d)
                weights.append(w)
        if not options:  # dead end cannot happen on a grid >= 2x2 without U-turns, but be safe
            options, weights = [-heading], [1.0]
        w = np.array(weights) / sum(weights)
        heading = options[rng.choice(len(options), p=w)]
        p0 = np.array([xs[node[0]], ys[node[1]]])
        node = node + heading
        p1 = np.array([xs[node[0]], ys[node[1]]])
        length += float(np.linalg.norm(p1 - p0))
        nodes.append(node.copy())
        dirs.append(heading.copy())
    # offset to the right-hand lane: each corner moves right of both the incoming and the outgoing direction
    pts = []
    for k, nd in enumerate(nodes):
        p = np.array([xs[nd[0]], ys[nd[1]]], float)
        d_in = dirs[k - 1] if k > 0 else dirs[0]
        d_out = dirs[k] if k < len(dirs) else dirs[-1]
        r_in = np.array([d_in[1], -d_in[0]], float)
        r_out = np.array([d_out[1], -d_out[0]], float)
        shift = r_in * off if np.array_equal(d_in, d_out) else (r_in + r_out) * off
        pts.append(p + shift)
    # start mid-block so that the first frame does not sit in a junction
    pts[0] = pts[0] + (pts[1] - pts[0]) * 0.3
    return np.array(pts), np.full(len(pts), 9.0)


def _route_indoor(layout: dict, min_length: float) -> tuple[np.ndarray, np.ndarray]:
    """Laps along the corridor: out visiting the rooms of one side, U-turn in the lobby, back along the other."""
    L = float(layout["length"])
    strip = float(layout["strip"])
    rooms = layout["rooms"]
    pts: list[np.ndarray] = [np.array([-LOBBY_L + 1.5, 0.0])]
    lap = 0
    while _polyline_length(pts) < min_length + 20.0:
        out_side = 1 if lap % 2 == 0 else -1
        for direction, side in ((1, out_side), (-1, -out_side)):
            visit = sorted((r for r in rooms if r["side"] == side), key=lambda r: direction * r["x0"])
            x_now = pts[-1][0]
            for r in visit:
                xa, xb = r["doors"] if direction > 0 else r["doors"][::-1]
                if direction * (xa - x_now) < 1.8:  # too close to turn in: skip this room
                    continue
                y = side * strip
                pts += [np.array([xa, 0.0]), np.array([xa, y]), np.array([xb, y]), np.array([xb, 0.0])]
                x_now = xb
            # U-turn in the lobby ahead: a "P" loop, keeping right of the incoming path
            if direction > 0:
                xe = L + LOBBY_L - 2.0
                pts += [np.array([xe, 0.0]), np.array([xe, 2.2]), np.array([L + 1.0, 2.2]), np.array([L + 1.0, 0.0])]
            else:
                xe = -LOBBY_L + 2.0
                pts += [np.array([xe, 0.0]), np.array([xe, -2.2]), np.array([-1.0, -2.2]), np.array([-1.0, 0.0])]
        lap += 1
    # drop consecutive duplicates
    clean = [pts[0]]
    for p in pts[1:]:
        if np.linalg.norm(p - clean[-1]) > 1e-6:
            clean.append(p)
    return np.array(clean), np.full(len(clean), 0.8)
