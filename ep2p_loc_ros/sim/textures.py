"""Procedural appearance: colour, gloss and glow of any surface point, from its material, instance and uv.

Nothing is stored as an image: a facade's windows, the bricks, the asphalt's grain and repairs, lane paint
wear, paving joints, book spines and floor planks are functions of the hit point, evaluated per pixel with
integer-hash value noise (pure integer arithmetic, so identical on every machine). That keeps the world file
small, gives detail at every distance, and, most importantly for EP2P-Loc, makes the images carry appearance
that geometry alone does not explain (windows on a flat wall, markings on a flat road).

Per-instance parameters (rows of ``WorldMesh.instance_params``) by material:
- FACADE: style (0 plaster, 1 brick, 2 concrete panels, 3 glass), r, g, b, window spacing (m), window width
  (fraction of spacing), floor height (m), window height (fraction of floor), shop ground floor (0/1), seed.
- WALL: r, g, b, seed, windows (0/1).  FLOOR: kind (0 carpet, 1 planks, 2 tiles), r, g, b, scale.
- SIGN: kind (0 prohibition, 1 mandatory, 2 direction board, 3 traffic light), seed / lit lamp.
- others: r, g, b (or a brightness in the first slot); an all-zero row means "default colour".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import Material, WorldMesh

__all__ = ["REFLECTIVITY", "Surface", "TextureContext", "fbm", "hash2", "value_noise"]

# LiDAR reflectivity per material (HDL-64 style 0..1; retro-reflective signs and paint high, glass low)
REFLECTIVITY = np.zeros(len(Material), dtype=np.float32)
for _m, _r in {
    Material.ASPHALT: 0.12, Material.LANE_MARK: 0.65, Material.SIDEWALK: 0.25, Material.KERB: 0.3,
    Material.GRASS: 0.4, Material.FACADE: 0.3, Material.ROOF: 0.2, Material.POLE: 0.35, Material.SIGN: 0.95,
    Material.CAR_BODY: 0.35, Material.CAR_GLASS: 0.05, Material.TYRE: 0.05, Material.BARK: 0.3,
    Material.FOLIAGE: 0.45, Material.LAMP: 0.4, Material.WALL: 0.5, Material.FLOOR: 0.3, Material.CEILING: 0.5,
    Material.WOOD: 0.35, Material.FABRIC: 0.3, Material.METAL: 0.45, Material.DOOR: 0.35, Material.BOOKS: 0.3,
    Material.SCREEN: 0.05,
}.items():  # fmt: skip
    REFLECTIVITY[_m] = _r


# --------------------------------------------------------------------------- noise


def hash2(ix: np.ndarray, iy: np.ndarray, seed: int | np.ndarray = 0) -> np.ndarray:
    """Uniform [0, 1) per integer lattice point (ix, iy), decorrelated by ``seed``; float64."""
    h = (
        np.asarray(ix, dtype=np.int64) * 0x27D4EB2D
        + np.asarray(iy, dtype=np.int64) * 0x165667B1
        + np.asarray(seed, dtype=np.int64) * 0x9E3779B1
    ) & 0xFFFFFFFF
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def value_noise(x: np.ndarray, y: np.ndarray, seed: int | np.ndarray = 0) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1) with unit lattice spacing."""
    fx, fy = np.floor(x), np.floor(y)
    tx, ty = x - fx, y - fy
    tx = tx * tx * (3 - 2 * tx)
    ty = ty * ty * (3 - 2 * ty)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    a, b = hash2(ix, iy, seed), hash2(ix + 1, iy, seed)
    c, d = hash2(ix, iy + 1, seed), hash2(ix + 1, iy + 1, seed)
    return (a + (b - a) * tx) * (1 - ty) + (c + (d - c) * tx) * ty


def fbm(x: np.ndarray, y: np.ndarray, octaves: int = 3, seed: int | np.ndarray = 0) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1)."""
    total, amp, norm = np.zeros_like(x, dtype=np.float64), 1.0, 0.0
    for k in range(octaves):
        total += amp * value_noise(x * 2**k, y * 2**k, np.asarray(seed) * 7 + k)
        norm += amp
        amp *= 0.5
    return total / norm


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


# --------------------------------------------------------------------------- shading inputs


@dataclass
class Surface:
    """What the renderer needs at each hit: albedo (M, 3) in [0, 1], gloss (M,) and emission (M,) in [0, 1]."""

    albedo: np.ndarray
    gloss: np.ndarray
    emissive: np.ndarray


@dataclass
class _Hits:
    p: np.ndarray  # world point (M, 3)
    uv: np.ndarray  # interpolated uv (M, 2)
    lo: np.ndarray  # uv min of the triangle's quad (M, 2)
    ext: np.ndarray  # uv extent of the quad (M, 2)
    par: np.ndarray  # instance params (M, N_PARAMS)
    inst: np.ndarray  # instance id (M,)

    @property
    def st(self) -> np.ndarray:
        """Position inside the quad, 0..1 on both axes (a sign's face, a door leaf)."""
        return (self.uv - self.lo) / np.maximum(self.ext, 1e-6)


class TextureContext:
    """Per-mesh lookups (triangle uv corners and extents) prepared once, then :meth:`surface` per batch of hits."""

    def __init__(self, mesh: WorldMesh) -> None:
        self.mesh = mesh
        tri_uv = mesh.uv[mesh.triangles].astype(np.float64)  # (T, 3, 2)
        self.tri_uv = tri_uv
        self.uv_lo = tri_uv.min(axis=1)
        self.uv_ext = tri_uv.max(axis=1) - self.uv_lo
        self.params = mesh.instance_params.astype(np.float64)

    def surface(self, tri: np.ndarray, bary: np.ndarray, points: np.ndarray) -> tuple[Surface, np.ndarray]:
        """Appearance at hits on triangles ``tri`` with barycentrics ``bary`` (Embree's u, v) at ``points``.

        Returns the surface and the material id of each hit.
        """
        tri = np.asarray(tri, dtype=np.int64)
        b = np.asarray(bary, dtype=np.float64)
        w = np.column_stack([1.0 - b[:, 0] - b[:, 1], b[:, 0], b[:, 1]])
        uv = np.einsum("mk,mkj->mj", w, self.tri_uv[tri])
        mat = self.mesh.materials[tri]
        inst = self.mesh.instances[tri]
        M = len(tri)
        albedo = np.zeros((M, 3))
        gloss = np.zeros(M)
        emissive = np.zeros(M)
        points = np.asarray(points, dtype=np.float64)
        for m in np.unique(mat):
            sel = np.nonzero(mat == m)[0]
            h = _Hits(
                points[sel], uv[sel], self.uv_lo[tri[sel]], self.uv_ext[tri[sel]], self.params[inst[sel]], inst[sel]
            )
            a, g, e = _SHADERS[Material(int(m))](h)
            albedo[sel] = a
            gloss[sel] = g
            emissive[sel] = e
        return Surface(np.clip(albedo, 0.0, 1.0), gloss, emissive), mat


# --------------------------------------------------------------------------- materials

Shaded = tuple[np.ndarray, np.ndarray | float, np.ndarray | float]


def _colour(h: _Hits, default: tuple[float, float, float]) -> np.ndarray:
    """Instance colour from params 0..2, or ``default`` where the instance has none."""
    c = h.par[:, :3].copy()
    none = c.sum(axis=1) <= 0
    c[none] = default
    return c


def _grey(v: np.ndarray, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    return v[:, None] * np.asarray(tint)


def _asphalt(h: _Hits) -> Shaded:
    x, y = h.p[:, 0], h.p[:, 1]
    g = np.where(h.par[:, 0] > 0, h.par[:, 0], 0.34)
    big = fbm(x * 0.05, y * 0.05, 2, 11)
    mid = value_noise(x * 0.8, y * 0.8, 12)
    fine = hash2(np.floor(x * 30), np.floor(y * 30), 13)
    v = g * (0.8 + 0.35 * big) * (0.9 + 0.18 * mid) * (0.9 + 0.2 * fine)
    repairs = fbm(x * 0.1, y * 0.1, 2, 14) > 0.68
    v = np.where(repairs, v * 0.68, v)
    return _grey(v, (0.97, 1.0, 1.04)), 0.0, 0.0


def _lane_mark(h: _Hits) -> Shaded:
    x, y = h.p[:, 0], h.p[:, 1]
    wear = value_noise(x * 4, y * 4, 21) * 0.6 + 0.4 * hash2(np.floor(x * 40), np.floor(y * 40), 22)
    v = np.where(h.par[:, 0] > 0, h.par[:, 0], 0.85) * (0.75 + 0.25 * wear)
    return _grey(v, (1.0, 1.0, 0.96)), 0.0, 0.0


def _sidewalk(h: _Hits) -> Shaded:
    x, y = h.p[:, 0], h.p[:, 1]
    base = np.where(h.par[:, 0] > 0, h.par[:, 0], 0.6)
    tile = np.where(h.par[:, 1] > 0, h.par[:, 1], 0.4)
    gx, gy = x / tile, y / tile
    jitter = hash2(np.floor(gx), np.floor(gy), 31)
    joint = (_frac(gx) < 0.03 / tile) | (_frac(gy) < 0.03 / tile)
    v = base * (0.86 + 0.22 * jitter) * (0.9 + 0.15 * value_noise(x * 3, y * 3, 32))
    v = np.where(joint, v * 0.6, v)
    return _grey(v, (1.0, 0.97, 0.92)), 0.0, 0.0


def _kerb(h: _Hits) -> Shaded:
    u, v = h.uv[:, 0], h.uv[:, 1]
    g = np.where(h.par[:, 0] > 0, h.par[:, 0], 0.6)
    stone = hash2(np.floor(u / 1.0), 0, 41)  # 1 m kerb stones
    joint = _frac(u / 1.0) < 0.02
    val = g * (0.85 + 0.2 * stone) * (0.9 + 0.15 * value_noise(u * 6, v * 6, 42))
    return _grey(np.where(joint, val * 0.55, val)), 0.0, 0.0


def _grass(h: _Hits) -> Shaded:
    x, y = h.p[:, 0], h.p[:, 1]
    b = np.where(h.par[:, 0] > 0, h.par[:, 0], 1.0)
    g = fbm(x * 0.4, y * 0.4, 3, 51)
    dry = fbm(x * 0.06, y * 0.06, 2, 52)[:, None]
    green = np.array([0.2, 0.36, 0.12]) * ((0.65 + 0.7 * g) * b)[:, None]
    col = green * (1 - dry * 0.6) + np.array([0.45, 0.42, 0.26]) * dry * 0.6
    return col * (0.85 + 0.3 * hash2(np.floor(x * 20), np.floor(y * 20), 53))[:, None], 0.0, 0.0


def _glass(n: int, tint: np.ndarray, rnd: np.ndarray) -> np.ndarray:
    """Window glass: dark, tinted, some windows with light curtains behind."""
    col = np.array([0.1, 0.13, 0.17]) + 0.08 * np.broadcast_to(tint, (n, 3))
    curtain = rnd > 0.75
    out = col * (0.8 + 0.5 * rnd[:, None])
    out[curtain] = np.array([0.62, 0.58, 0.5]) * (0.7 + 0.6 * (rnd[curtain, None] - 0.75) * 4)
    return out


def _facade(h: _Hits) -> Shaded:
    style = np.rint(h.par[:, 0]).astype(int)
    base = _colour(h, (0.8, 0.78, 0.72))
    sx = np.where(h.par[:, 4] > 0, h.par[:, 4], 3.0)
    ww = sx * np.where(h.par[:, 5] > 0, h.par[:, 5], 0.45)
    fh = np.where(h.par[:, 6] > 0, h.par[:, 6], 3.2)
    wh = fh * np.where(h.par[:, 7] > 0, h.par[:, 7], 0.5)
    shop = h.par[:, 8] > 0.5
    seed = np.floor(h.par[:, 9]).astype(np.int64) + h.inst
    u, z = h.uv[:, 0], h.p[:, 2]
    half = h.ext[:, 0] / 2
    top = h.lo[:, 1] + h.ext[:, 1]
    gf = fh + 0.9  # ground floor height

    # wall material
    n = len(u)
    col = base * (0.9 + 0.14 * fbm(u * 0.4, z * 0.4, 2, seed))[:, None]
    brick = style == 1
    if brick.any():
        row = np.floor(z[brick] / 0.075)
        bu = u[brick] / 0.25 + 0.5 * (row % 2)
        mortar = (_frac(z[brick] / 0.075) < 0.15) | (_frac(bu) < 0.05)
        jit = hash2(np.floor(bu), row, seed[brick])
        c = base[brick] * (0.82 + 0.3 * jit)[:, None]
        c[mortar] = np.array([0.7, 0.68, 0.63])
        col[brick] = c
    panels = style == 2
    if panels.any():
        pu, pz = u[panels] / 1.5, (z[panels] - gf[panels]) / fh[panels]
        seam = (_frac(pu) < 0.015) | (_frac(pz) < 0.02)
        col[panels] *= (0.9 + 0.1 * hash2(np.floor(pu), np.floor(pz), seed[panels]))[:, None]
        col[panels] = np.where(seam[:, None], col[panels] * 0.6, col[panels])

    # upper-floor windows on a grid centred on the wall, none cut by the wall's ends
    cell = np.floor(u / sx + 0.5)
    lu = u - cell * sx
    floor_i = np.floor((z - gf) / fh)
    ly = z - gf - floor_i * fh
    fits = np.abs(cell * sx) + ww / 2 < half - 0.4
    upper = (z > gf) & (z < top - 0.9)
    win = upper & fits & (np.abs(lu) < ww / 2) & (ly > 0.9) & (ly < 0.9 + wh)
    frame = win & ((np.abs(lu) > ww / 2 - 0.07) | (ly < 0.97) | (ly > 0.83 + wh) | (np.abs(lu) < 0.03))
    sill = upper & fits & (np.abs(lu) < ww / 2 + 0.1) & (ly > 0.8) & (ly <= 0.9)
    rnd = hash2(cell.astype(np.int64), floor_i.astype(np.int64), seed)
    gloss = np.zeros(n)
    glass = win & ~frame
    col[glass] = _glass(int(glass.sum()), base[glass], rnd[glass])
    gloss[glass] = 0.3
    col[frame] = np.array([0.85, 0.85, 0.82])
    col[sill] = np.array([0.7, 0.7, 0.68])

    # glass curtain walls: glass everywhere above the ground floor, mullions on a 1.5 m x floor grid
    curtain = (style == 3) & (z > gf) & (z < top - 0.5)
    if curtain.any():
        mu, mz = u[curtain] / 1.5, (z[curtain] - gf[curtain]) / fh[curtain]
        mull = (_frac(mu) < 0.04) | (_frac(mz) < 0.06)
        c = np.array([0.12, 0.2, 0.24]) * (0.8 + 0.4 * hash2(np.floor(mu), np.floor(mz), seed[curtain]))[:, None]
        c[mull] = np.array([0.35, 0.36, 0.38])
        col[curtain] = c
        gloss[curtain] = np.where(mull, 0.05, 0.45)

    # ground floor: plinth, shop windows or small windows, a door in the middle of the wall
    ground = z <= gf
    plinth = z < 0.5
    col[ground & ~plinth] *= 0.92
    col[plinth] = base[plinth] * 0.55
    door = ground & (np.abs(u) < 0.65) & (z < 2.4)
    cell_g = np.floor(u / (2 * sx) + 0.5)
    lug = u - cell_g * 2 * sx
    shopwin = ground & shop & ~door & (np.abs(lug) < sx * 0.8) & (z > 0.6) & (z < gf - 0.6)
    shopwin &= np.abs(cell_g * 2 * sx) + sx * 0.8 < half - 0.3
    smallwin = ground & ~shop & ~door & fits & (np.abs(lu) < ww / 2) & (z > 1.0) & (z < 1.0 + wh * 0.8)
    for m in (shopwin, smallwin):
        col[m] = _glass(int(m.sum()), base[m], hash2(cell[m].astype(np.int64), -1, seed[m]))
        gloss[m] = 0.3
    sign_band = ground & shop & (z > gf - 0.55) & (z < gf - 0.15) & (np.abs(u) < half - 1.0)
    col[sign_band] = np.array([[0.7, 0.1, 0.1], [0.1, 0.25, 0.5], [0.15, 0.15, 0.15], [0.9, 0.75, 0.2]])[
        (seed[sign_band] % 4)
    ]
    col[door] = np.array([0.3, 0.2, 0.14]) * (0.8 + 0.4 * hash2(seed[door], 5, 61))[:, None]
    cornice = z > top - 0.35
    col[cornice] = base[cornice] * 0.75
    return col, gloss, 0.0


def _roof(h: _Hits) -> Shaded:
    x, y = h.p[:, 0], h.p[:, 1]
    return _grey(0.3 * (0.8 + 0.3 * fbm(x * 0.5, y * 0.5, 2, 71)), (1.0, 0.97, 0.95)), 0.0, 0.0


def _pole(h: _Hits) -> Shaded:
    col = _colour(h, (0.5, 0.5, 0.52))
    return col * (0.9 + 0.15 * value_noise(h.uv[:, 0] * 10, h.uv[:, 1] * 2, 81))[:, None], 0.05, 0.0


def _sign(h: _Hits) -> Shaded:
    kind = np.rint(h.par[:, 0]).astype(int)
    st = h.st
    dx, dy = st[:, 0] - 0.5, st[:, 1] - 0.5
    r = np.hypot(dx, dy)
    n = len(kind)
    col = np.tile(np.array([0.55, 0.55, 0.57]), (n, 1))  # back / blank
    emis = np.zeros(n)
    k0 = kind == 0
    col[k0 & (r < 0.46)] = (0.75, 0.08, 0.08)
    col[k0 & (r < 0.34)] = (0.95, 0.95, 0.95)
    bar = k0 & (np.abs(dy) < 0.06) & (np.abs(dx) < 0.25)
    col[bar & (hash2(h.inst, 0, 91) > 0.5)] = (0.1, 0.1, 0.1)  # "no entry" bar on half of them
    k1 = kind == 1
    col[k1 & (r < 0.46)] = (0.1, 0.25, 0.65)
    arrow = k1 & (
        ((np.abs(dx) < 0.06) & (dy > -0.3) & (dy < 0.12))
        | ((dy >= 0.12) & (dy < 0.32) & (np.abs(dx) < (0.32 - dy) * 0.9))
    )
    col[arrow] = (0.95, 0.95, 0.95)
    k2 = kind == 2
    col[k2] = (0.05, 0.35, 0.15)
    border = k2 & ((st[:, 0] < 0.03) | (st[:, 0] > 0.97) | (st[:, 1] < 0.08) | (st[:, 1] > 0.92))
    ch = np.floor(st[:, 0] * 16)
    text = k2 & (st[:, 1] > 0.3) & (st[:, 1] < 0.7) & (st[:, 0] > 0.08) & (st[:, 0] < 0.92)
    text &= (hash2(ch, h.inst, 92) > 0.3) & (_frac(st[:, 0] * 16) > 0.15) & (_frac(st[:, 0] * 16) < 0.85)
    col[border | text] = (0.95, 0.95, 0.95)
    k3 = kind == 3  # traffic light: black housing, three lamps bottom-up green / amber / red, one lit
    col[k3] = (0.06, 0.06, 0.07)
    lamp_colours = np.array([[0.1, 0.9, 0.3], [1.0, 0.7, 0.1], [1.0, 0.1, 0.1]])
    for i in range(3):
        zc = h.lo[:, 1] + h.ext[:, 1] * (i + 0.5) / 3
        lamp = k3 & (np.hypot(h.uv[:, 0] - (h.lo[:, 0] + h.ext[:, 0] / 2), h.p[:, 2] - zc) < 0.1)
        lit = lamp & (np.rint(h.par[:, 1]) == i)
        col[lamp] = lamp_colours[i] * 0.25
        col[lit] = lamp_colours[i]
        emis[lit] = 1.0
    return col, 0.0, emis


def _car_body(h: _Hits) -> Shaded:
    col = _colour(h, (0.6, 0.6, 0.62)) * (0.92 + 0.1 * value_noise(h.uv[:, 0] * 2, h.uv[:, 1] * 2, 101))[:, None]
    low = h.p[:, 2] < 0.42
    col[low] *= 0.45  # bumpers, sills
    return col, 0.15, 0.0


def _car_glass(h: _Hits) -> Shaded:
    n = len(h.p)
    return np.tile([0.06, 0.07, 0.09], (n, 1)), 0.45, 0.0


def _tyre(h: _Hits) -> Shaded:
    return np.tile([0.05, 0.05, 0.055], (len(h.p), 1)), 0.0, 0.0


def _bark(h: _Hits) -> Shaded:
    b = np.where(h.par[:, 0] > 0, h.par[:, 0], 1.0)
    v = b * (0.7 + 0.6 * value_noise(h.uv[:, 0] * 12, h.uv[:, 1] * 2, 111))
    return _grey(v, (0.33, 0.25, 0.17)), 0.0, 0.0


def _foliage(h: _Hits) -> Shaded:
    hue = h.par[:, 0][:, None]
    b = np.where(h.par[:, 1] > 0, h.par[:, 1], 1.0)
    x, y, z = h.p[:, 0], h.p[:, 1], h.p[:, 2]
    n1 = fbm(x * 1.7 + z * 1.3, y * 1.7 - z * 0.9, 3, 121)
    fine = hash2(np.floor((x + z) * 12), np.floor((y - z) * 12), 122)
    col = np.array([0.14, 0.3, 0.09]) * (1 - hue) + np.array([0.3, 0.4, 0.12]) * hue
    return col * (b * (0.5 + 0.8 * n1) * (0.75 + 0.4 * fine))[:, None], 0.0, 0.0


def _lamp(h: _Hits) -> Shaded:
    return np.tile([0.8, 0.8, 0.74], (len(h.p), 1)), 0.1, 0.0


def _wall(h: _Hits) -> Shaded:
    base = _colour(h, (0.9, 0.9, 0.88))
    seed = np.floor(h.par[:, 3]).astype(np.int64) + h.inst
    windows = h.par[:, 4] > 0.5
    u, z = h.uv[:, 0], h.p[:, 2]
    n = len(u)
    col = base * (0.95 + 0.07 * value_noise(u * 1.5, z * 1.5, seed))[:, None]
    emis = np.zeros(n)
    # decorations in 2.6 m cells along the wall: framed pictures and whiteboards
    cell = np.floor(u / 2.6)
    lu = u - cell * 2.6 - 1.3
    r = hash2(cell, 0, seed)
    pw = 0.5 + 0.9 * hash2(cell, 1, seed)
    ph = 0.45 + 0.5 * hash2(cell, 2, seed)
    pic = ~windows & (r < 0.35) & (np.abs(lu) < pw / 2) & (z > 1.25) & (z < 1.25 + ph)
    edge = pic & ((np.abs(lu) > pw / 2 - 0.04) | (z < 1.29) | (z > 1.21 + ph))
    blocks = hash2(np.floor(lu * 4) + 100 * cell, np.floor(z * 4), seed + 7)
    palette = np.array([[0.8, 0.3, 0.2], [0.2, 0.4, 0.7], [0.9, 0.8, 0.3], [0.2, 0.5, 0.3], [0.15, 0.12, 0.2],
                        [0.85, 0.85, 0.8]])  # fmt: skip
    col[pic] = palette[(blocks[pic] * len(palette)).astype(int)]
    col[edge] = (0.15, 0.12, 0.1)
    board = ~windows & (r >= 0.35) & (r < 0.5) & (np.abs(lu) < 0.9) & (z > 0.95) & (z < 1.95)
    bedge = board & ((np.abs(lu) > 0.86) | (z < 0.99) | (z > 1.91))
    ink = board & (_frac(z * 9) < 0.12) & (hash2(np.floor(lu * 10), np.floor(z * 9), seed + 3) > 0.5)
    col[board] = (0.95, 0.95, 0.95)
    col[ink] = (0.15, 0.2, 0.5)
    col[bedge] = (0.6, 0.6, 0.62)
    # windows (outer walls): bright, with mullions
    wcell = np.floor(u / 2.0 + 0.5)
    wu = u - wcell * 2.0
    win = windows & (np.abs(wu) < 0.65) & (z > 0.9) & (z < 2.2) & (np.abs(wcell * 2.0) + 0.65 < h.ext[:, 0] / 2 - 0.2)
    mull = win & ((np.abs(wu) > 0.6) | (np.abs(wu) < 0.03) | (z < 0.95) | (z > 2.15))
    col[win] = np.array([0.78, 0.86, 0.95]) * (0.9 + 0.1 * hash2(wcell[win], 3, seed[win]))[:, None]
    emis[win] = 0.8
    col[mull] = (0.85, 0.85, 0.85)
    emis[mull] = 0.0
    skirting = z < 0.1
    col[skirting] = base[skirting] * 0.5
    return col, 0.0, emis


def _floor(h: _Hits) -> Shaded:
    kind = np.rint(h.par[:, 0]).astype(int)
    base = np.where(h.par[:, 1:4].sum(axis=1, keepdims=True) > 0, h.par[:, 1:4], 0.6)
    x, y = h.p[:, 0], h.p[:, 1]
    n = len(x)
    col = np.empty((n, 3))
    c = kind == 0  # carpet
    col[c] = (
        base[c]
        * (
            (0.85 + 0.3 * fbm(x[c] * 2, y[c] * 2, 2, 131))
            * (0.88 + 0.24 * hash2(np.floor(x[c] * 50), np.floor(y[c] * 50), 132))
        )[:, None]
    )
    p = kind == 1  # planks along x, 0.18 m wide, 1.2 m long, staggered
    row = np.floor(y[p] / 0.18)
    off = hash2(row, 0, 133) * 1.2
    col_i = np.floor((x[p] + off) / 1.2)
    gap = (_frac(y[p] / 0.18) < 0.04) | (_frac((x[p] + off) / 1.2) < 0.006)
    grain = value_noise(x[p] * 4, y[p] * 60, 134)
    pc = base[p] * ((0.8 + 0.3 * hash2(col_i, row, 135)) * (0.85 + 0.25 * grain))[:, None]
    pc[gap] *= 0.5
    col[p] = pc
    t = kind == 2  # tiles
    ts = np.where(h.par[t, 4] > 0, h.par[t, 4], 0.5)
    gx, gy = x[t] / ts, y[t] / ts
    grout = (_frac(gx) < 0.02 / ts) | (_frac(gy) < 0.02 / ts)
    tc = base[t] * (0.9 + 0.15 * hash2(np.floor(gx), np.floor(gy), 136))[:, None]
    tc[grout] = base[t][grout] * 0.7
    col[t] = tc
    return col, np.where(t, 0.08, 0.0), 0.0


def _ceiling(h: _Hits) -> Shaded:
    b = np.where(h.par[:, 0] > 0, h.par[:, 0], 0.9)
    x, y = h.p[:, 0], h.p[:, 1]
    col = _grey(b * (0.95 + 0.05 * hash2(np.floor(x / 0.6), np.floor(y / 0.6), 141)))
    grid = (_frac(x / 0.6) < 0.03) | (_frac(y / 0.6) < 0.03)
    col[grid] *= 0.75
    lx, ly = x - (np.floor(x / 2.4) + 0.5) * 2.4, y - (np.floor(y / 2.4) + 0.5) * 2.4
    light = (np.abs(lx) < 0.6) & (np.abs(ly) < 0.3)
    col[light] = (1.0, 1.0, 0.97)
    return col, 0.0, light.astype(np.float64)


def _wood(h: _Hits) -> Shaded:
    col = _colour(h, (0.6, 0.42, 0.28))
    g = value_noise(h.uv[:, 0] * 3, h.uv[:, 1] * 25 + h.p[:, 2] * 25, 151)
    return col * (0.75 + 0.35 * g)[:, None], 0.05, 0.0


def _fabric(h: _Hits) -> Shaded:
    col = _colour(h, (0.4, 0.4, 0.45))
    weave = hash2(np.floor(h.uv[:, 0] * 60), np.floor((h.uv[:, 1] + h.p[:, 2]) * 60), 161)
    return col * (0.8 + 0.3 * weave)[:, None], 0.0, 0.0


def _metal(h: _Hits) -> Shaded:
    col = _colour(h, (0.5, 0.5, 0.52)) * (0.9 + 0.12 * value_noise(h.uv[:, 0] * 5, h.p[:, 2] * 5, 171))[:, None]
    drawer = (_frac(h.p[:, 2] / 0.32) < 0.03) & (h.p[:, 2] > 0.05)
    col[drawer] *= 0.5
    return col, 0.08, 0.0


def _door(h: _Hits) -> Shaded:
    painted = np.rint(h.par[:, 0]) == 1
    col = np.where(painted[:, None], h.par[:, 1:4], np.array([0.45, 0.3, 0.18]) * (0.6 + h.par[:, 1:2]))
    st = h.st
    g = value_noise(st[:, 0] * 4, st[:, 1] * 60, 181)
    col = col * np.where(painted, 1.0, 0.8 + 0.3 * g)[:, None]
    panel = (np.abs(st[:, 0] - 0.5) > 0.32) & (np.abs(st[:, 0] - 0.5) < 0.35)
    panel |= (
        (np.abs(st[:, 1] - 0.5) < 0.015) | (st[:, 1] < 0.1) & (st[:, 1] > 0.08) | (st[:, 1] > 0.9) & (st[:, 1] < 0.92)
    )
    col[panel] *= 0.65
    handle = (np.abs(h.p[:, 2] - 1.05) < 0.03) & ((st[:, 0] < 0.12) | (st[:, 0] > 0.88))
    col[handle] = (0.75, 0.75, 0.72)
    return col, 0.05, 0.0


def _books(h: _Hits) -> Shaded:
    seed = np.floor(h.par[:, 0]).astype(np.int64) + h.inst
    wood = np.where(h.par[:, 1:4].sum(axis=1, keepdims=True) > 0, h.par[:, 1:4], 0.5)
    u, z = h.uv[:, 0], h.p[:, 2]
    level = np.floor(z / 0.38)
    lz = z - level * 0.38
    board = lz < 0.025
    spine = np.floor(u / 0.035 + hash2(level, 0, seed) * 7)
    r = hash2(spine, level, seed)
    height = 0.2 + 0.13 * hash2(spine, level + 50, seed)
    palette = np.array([[0.6, 0.1, 0.1], [0.1, 0.2, 0.5], [0.15, 0.4, 0.2], [0.85, 0.8, 0.65], [0.1, 0.1, 0.1],
                        [0.7, 0.5, 0.1], [0.5, 0.3, 0.5], [0.9, 0.9, 0.88]])  # fmt: skip
    col = palette[(r * len(palette)).astype(int)] * (0.8 + 0.3 * hash2(spine, 7, seed))[:, None]
    empty = (lz > height) | (r < 0.06)
    col[empty] = wood[empty] * 0.35  # shadowed back panel
    col[board] = wood[board]
    return col, 0.0, 0.0


def _screen(h: _Hits) -> Shaded:
    return np.tile([0.03, 0.03, 0.04], (len(h.p), 1)), 0.3, 0.0


_SHADERS = {
    Material.ASPHALT: _asphalt, Material.LANE_MARK: _lane_mark, Material.SIDEWALK: _sidewalk, Material.KERB: _kerb,
    Material.GRASS: _grass, Material.FACADE: _facade, Material.ROOF: _roof, Material.POLE: _pole,
    Material.SIGN: _sign, Material.CAR_BODY: _car_body, Material.CAR_GLASS: _car_glass, Material.TYRE: _tyre,
    Material.BARK: _bark, Material.FOLIAGE: _foliage, Material.LAMP: _lamp, Material.WALL: _wall,
    Material.FLOOR: _floor, Material.CEILING: _ceiling, Material.WOOD: _wood, Material.FABRIC: _fabric,
    Material.METAL: _metal, Material.DOOR: _door, Material.BOOKS: _books, Material.SCREEN: _screen,
}  # fmt: skip
assert len(_SHADERS) == len(Material)
