"""Camera and LiDAR models that render the same triangle mesh with Open3D's ``RaycastingScene`` (Embree).

Both sensors see exactly the same geometry, so a LiDAR point projected with the true calibration and pose lands
on the pixel that shows the same surface: the ground truth is exact, not estimated. The rig is KITTI's
(odometry ``calib.txt`` conventions): colour camera cam2 6 cm left of cam0, 1.65 m above the ground, LiDAR
(x forward, y left, z up) 1.73 m above the ground and 0.27 m behind the cameras.

Everything random (image noise, exposure, LiDAR range noise, dropouts) comes from a generator the caller passes,
so frames are reproducible one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import PinholeCamera, invert, make_T, rotvec_to_matrix
from .textures import REFLECTIVITY, TextureContext
from .world import Lighting, WorldMesh

__all__ = ["CameraFrame", "CameraModel", "LidarModel", "Rig", "Tracer", "kitti_rig"]

# KITTI odometry sequence 00, cam0/cam2 rectified intrinsics and image size
KITTI_FX, KITTI_CX, KITTI_CY = 718.856, 607.1928, 185.2157
KITTI_W, KITTI_H = 1241, 376


# --------------------------------------------------------------------------- ray casting


@dataclass
class Hits:
    """First hits of a batch of rays: distance in units of the ray direction (inf: miss), triangle, Embree's
    barycentric (u, v) and the triangle's normal."""

    t: np.ndarray
    tri: np.ndarray
    bary: np.ndarray
    normal: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return np.isfinite(self.t)


class Tracer:
    """One Embree scene of a :class:`WorldMesh`, shared by the camera, the LiDAR and exact visibility."""

    def __init__(self, mesh: WorldMesh, nthreads: int = 0) -> None:
        import open3d as o3d

        self._o3d = o3d
        self.mesh = mesh
        self.nthreads = int(nthreads)
        self.scene = o3d.t.geometry.RaycastingScene(nthreads=self.nthreads)
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles.astype(np.uint32)))
        self.textures = TextureContext(mesh)

    def _rays(self, origins: np.ndarray, dirs: np.ndarray) -> object:
        origins = np.broadcast_to(np.asarray(origins, dtype=np.float32), np.shape(dirs))
        rays = np.concatenate([origins, np.asarray(dirs, dtype=np.float32)], axis=-1).reshape(-1, 6)
        return self._o3d.core.Tensor(np.ascontiguousarray(rays))

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> Hits:
        """First hit along each ray (origins (N, 3) or (3,), directions (N, 3), not necessarily unit)."""
        out = self.scene.cast_rays(self._rays(origins, dirs), nthreads=self.nthreads)
        t = out["t_hit"].numpy().astype(np.float64)
        tri = out["primitive_ids"].numpy().astype(np.int64)
        tri[~np.isfinite(t)] = -1
        return Hits(t, tri, out["primitive_uvs"].numpy(), out["primitive_normals"].numpy().astype(np.float64))

    def occluded(self, origins: np.ndarray, dirs: np.ndarray, tnear: float, tfar: float) -> np.ndarray:
        """Whether anything lies on each ray between ``tnear`` and ``tfar`` (in direction units)."""
        out = self.scene.test_occlusions(self._rays(origins, dirs), tnear=tnear, tfar=tfar, nthreads=self.nthreads)
        return out.numpy().astype(bool)

    def closest_points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest surface point (N, 3) and its triangle (N,) for each query point."""
        q = self._o3d.core.Tensor(np.ascontiguousarray(np.asarray(points, dtype=np.float32).reshape(-1, 3)))
        out = self.scene.compute_closest_points(q, nthreads=self.nthreads)
        return out["points"].numpy().astype(np.float64), out["primitive_ids"].numpy().astype(np.int64)


# --------------------------------------------------------------------------- rig


@dataclass(frozen=True)
class Rig:
    """Sensor placement on the vehicle (``base``: on the ground below the LiDAR, x forward, y left, z up).

    ``cam_x`` are the rectified cameras' translations ``t`` in ``P_i = K [I | t]`` (x only, metres): cam_i's
    optical frame is cam0's shifted by ``-t``; KITTI: cam1 and cam3 are the right cameras, cam2 is 6 cm left.
    """

    camera: PinholeCamera
    T_base_velo: np.ndarray
    T_base_cam0: np.ndarray
    cam_x: tuple[float, float, float, float] = (0.0, -0.54, 0.06, -0.47)

    @property
    def T_cam0_velo(self) -> np.ndarray:
        return invert(self.T_base_cam0) @ self.T_base_velo

    def T_cam_cam0(self, i: int) -> np.ndarray:
        return make_T(np.eye(3), [self.cam_x[i], 0.0, 0.0])

    def T_base_cam(self, i: int) -> np.ndarray:
        return self.T_base_cam0 @ invert(self.T_cam_cam0(i))

    def projection(self, i: int) -> np.ndarray:
        """``P_i`` (3x4) as in KITTI's calib.txt."""
        P = np.zeros((3, 4))
        P[:, :3] = self.camera.K
        P[:, 3] = self.camera.K @ np.array([self.cam_x[i], 0.0, 0.0])
        return P


def kitti_rig(
    lidar_height: float = 1.73, camera_height: float = 1.65, camera_forward: float = 0.27, tilt_deg: float = 0.0
) -> Rig:
    """KITTI-like rig. The camera's small mounting rotation (fixed, < 0.5 deg) keeps the calibration from being
    an exact axis permutation, as on the real car; ``tilt_deg`` pitches it further down (indoor: none)."""
    K = np.array([[KITTI_FX, 0.0, KITTI_CX], [0.0, KITTI_FX, KITTI_CY], [0.0, 0.0, 1.0]])
    camera = PinholeCamera(KITTI_W, KITTI_H, K)
    # optical axes in the vehicle frame: x_opt = -y_base (right), y_opt = -z_base (down), z_opt = x_base (forward)
    R_base_opt = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    mount = rotvec_to_matrix(np.radians([0.25, -0.15 + tilt_deg, 0.3]))  # about base x (roll), y (pitch), z (yaw)
    T_base_cam0 = make_T(mount @ R_base_opt, [camera_forward, 0.0, camera_height])
    T_base_velo = make_T(np.eye(3), [0.0, 0.0, lidar_height])
    return Rig(camera, T_base_velo, T_base_cam0)


# --------------------------------------------------------------------------- camera


@dataclass
class CameraFrame:
    """A rendered image (H, W, 3) uint8, the optical-axis depth of each pixel's centre (H, W) float32, inf for
    sky, and the material seen there (H, W) int16, -1 for sky."""

    rgb: np.ndarray
    depth: np.ndarray
    material: np.ndarray


def _sky(dirs: np.ndarray, lighting: Lighting) -> np.ndarray:
    """Sky colour seen along unit world directions (horizon to zenith gradient; the ground side darker)."""
    up = dirs[:, 2]
    a = np.clip(up, 0.0, 1.0) ** 0.6
    col = np.asarray(lighting.sky_horizon) * (1 - a[:, None]) + np.asarray(lighting.sky_zenith) * a[:, None]
    below = up < 0
    col[below] = np.asarray(lighting.sky_horizon) * 0.45
    return col


@dataclass
class CameraModel:
    """Rectified pinhole camera with procedural shading, a light optical blur and seeded sensor noise."""

    camera: PinholeCamera
    noise_dn: float = 2.0  # Gaussian noise per channel, in 8-bit digital numbers
    exposure_jitter: float = 0.03  # per-frame gain ~ N(1, jitter): auto-exposure never settles exactly
    _dirs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cam = self.camera
        cols, rows = np.meshgrid(np.arange(cam.width, dtype=np.float64), np.arange(cam.height, dtype=np.float64))
        # ray through each pixel centre with unit z: the hit distance is then the optical-axis depth
        x = (cols - cam.cx - cam.K[0, 1] * (rows - cam.cy) / cam.fy) / cam.fx
        y = (rows - cam.cy) / cam.fy
        self._dirs = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3)

    def render(
        self, tracer: Tracer, T_world_cam: np.ndarray, lighting: Lighting, rng: np.random.Generator | None
    ) -> CameraFrame:
        """Render from ``T_world_cam`` (optical frame); ``rng`` None: no noise and no exposure jitter."""
        if self.camera.has_distortion:
            raise ValueError("the simulated camera is rectified (no distortion)")
        H, W = self.camera.height, self.camera.width
        R, c = T_world_cam[:3, :3], T_world_cam[:3, 3]
        dirs = self._dirs @ R.T  # world directions, optical-axis component 1
        hits = tracer.cast(c, dirs)
        hit = hits.hit
        colour = np.empty((H * W, 3))
        miss = np.nonzero(~hit)[0]
        if miss.size:
            d_miss = dirs[miss]
            colour[miss] = _sky(d_miss / np.linalg.norm(d_miss, axis=1, keepdims=True), lighting)
        material = np.full(H * W, -1, dtype=np.int16)
        idx = np.nonzero(hit)[0]
        if idx.size:
            d = dirs[idx]
            ray_len = np.linalg.norm(d, axis=1)
            p = c + d * hits.t[idx, None]
            d = d / ray_len[:, None]
            surf, mat = tracer.textures.surface(hits.tri[idx], hits.bary[idx], p)
            material[idx] = mat
            n = hits.normal[idx]
            n = np.where((np.sum(n * d, axis=1) > 0)[:, None], -n, n)  # two-sided: face the viewer
            sun = np.asarray(lighting.sun_dir)
            lambert = np.clip(n @ sun, 0.0, None)
            if lighting.shadows:
                lit_side = np.nonzero(lambert > 0)[0]
                if lit_side.size:
                    origin = p[lit_side] + n[lit_side] * 0.01
                    blocked = tracer.occluded(origin, np.broadcast_to(sun, origin.shape), 0.0, 1e4)
                    lambert[lit_side[blocked]] = 0.0
            ambient = lighting.ambient * (0.8 + 0.2 * np.clip(n[:, 2], 0.0, 1.0))  # open-sky term
            light = ambient[:, None] * np.array([0.95, 1.0, 1.08]) + (lighting.sun * lambert)[:, None] * np.array(
                [1.0, 0.96, 0.88]
            )
            shaded = surf.albedo * light
            glossy = np.nonzero(surf.gloss > 0)[0]
            if glossy.size:
                dg, ng = d[glossy], n[glossy]
                refl = dg - 2 * np.sum(dg * ng, axis=1, keepdims=True) * ng
                g = surf.gloss[glossy, None]
                shaded[glossy] = shaded[glossy] * (1 - g) + _sky(refl, lighting) * g
            glow = np.nonzero(surf.emissive > 0)[0]
            if glow.size:
                e = surf.emissive[glow, None]
                shaded[glow] = shaded[glow] * (1 - e) + surf.albedo[glow] * e
            if lighting.fog_m > 0:
                f = np.exp(-hits.t[idx] * ray_len / lighting.fog_m)[:, None]
                shaded = shaded * f + np.asarray(lighting.sky_horizon) * (1 - f)
            colour[idx] = shaded
        img = colour.reshape(H, W, 3).astype(np.float32) * np.float32(255.0)
        # optics: a light separable blur (softens aliasing of window grids and markings at distance)
        a, b = np.float32(0.7), np.float32(0.15)
        out = a * img
        out[1:] += b * img[:-1]
        out[0] += b * img[0]
        out[:-1] += b * img[1:]
        out[-1] += b * img[-1]
        img = a * out
        img[:, 1:] += b * out[:, :-1]
        img[:, 0] += b * out[:, 0]
        img[:, :-1] += b * out[:, 1:]
        img[:, -1] += b * out[:, -1]
        if rng is not None:
            img *= np.float32(rng.normal(1.0, self.exposure_jitter))
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise_dn)
        rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        depth = np.where(hit, hits.t, np.inf).astype(np.float32).reshape(H, W)
        return CameraFrame(rgb, depth, material.reshape(H, W))


# --------------------------------------------------------------------------- LiDAR


@dataclass
class LidarModel:
    """Spinning 64-beam LiDAR (HDL-64E-like): elevations evenly spread over ``[fov_down, fov_up]``."""

    n_beams: int = 64
    fov_up_deg: float = 2.0
    fov_down_deg: float = -24.9
    azimuth_step_deg: float = 0.2
    max_range: float = 120.0
    min_range: float = 0.9
    range_noise: float = 0.02  # metres, Gaussian along the beam
    dropout: float = 0.005  # fraction of returns lost at random
    _dirs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.01 <= self.azimuth_step_deg <= 5.0:
            raise ValueError(f"LiDAR azimuth step must be in [0.01, 5] degrees, got {self.azimuth_step_deg}")
        if self.n_beams < 1 or not self.fov_down_deg < self.fov_up_deg:
            raise ValueError("LiDAR needs >= 1 beam and fov_down < fov_up")
        elev = np.radians(np.linspace(self.fov_up_deg, self.fov_down_deg, self.n_beams))
        n_az = round(360.0 / self.azimuth_step_deg)
        az = np.radians(np.arange(n_az) * (360.0 / n_az))
        e, a = np.meshgrid(elev, az)  # azimuth-major: one firing of all beams per column, like the sensor
        self._dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)

    @property
    def n_rays(self) -> int:
        return len(self._dirs)

    def scan(self, tracer: Tracer, T_world_velo: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """(N, 4) float32 x, y, z (LiDAR frame) and reflectance in [0, 1]; ``rng`` None: noise-free."""
        R, c = T_world_velo[:3, :3], T_world_velo[:3, 3]
        dirs_w = self._dirs @ R.T
        hits = tracer.cast(c, dirs_w)
        keep = hits.hit & (hits.t >= self.min_range) & (hits.t <= self.max_range)
        if rng is not None:
            noise = rng.normal(0.0, self.range_noise, len(keep))
            drop = rng.random(len(keep)) < self.dropout
            keep &= ~drop
        else:
            noise = np.zeros(len(keep))
        idx = np.nonzero(keep)[0]
        r = hits.t[idx] + noise[idx]
        pts = self._dirs[idx] * r[:, None]
        p_world = c + dirs_w[idx] * hits.t[idx, None]
        surf, mat = tracer.textures.surface(hits.tri[idx], hits.bary[idx], p_world)
        lum = surf.albedo @ np.array([0.3, 0.5, 0.2])
        cos_inc = np.abs(np.sum(hits.normal[idx] * dirs_w[idx], axis=1))
        refl = REFLECTIVITY[mat] * (0.6 + 0.9 * lum) * (0.35 + 0.65 * cos_inc)
        if rng is not None:
            refl = refl + rng.normal(0.0, 0.01, len(refl))
        out = np.empty((len(idx), 4), dtype=np.float32)
        out[:, :3] = pts
        out[:, 3] = np.clip(refl, 0.0, 1.0)
        return out
