"""Exact visibility of arbitrary 3D points from a camera pose, by ray casting against the world mesh.

This is the ground truth that IPR (``ep2p_loc_ros.ipr``), which only sees a point cloud, is scored against: a
point is visible when it lies in front of the camera, projects inside the image, and the segment from the
camera centre to it crosses no surface (up to ``tol`` before the point, so a point lying on a surface counts
as visible). One ``cast_rays`` call for all points.

Map points from a LiDAR are noisy and voxel-averaged, i.e. a few centimetres off their surface; at grazing
angles (the road seen from 1.65 m) that offset can put a point "under" its own surface as seen from the
camera. :func:`snap_to_surface` moves such points onto the mesh first, so the answer is about the surface
sample the point stands for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry import PinholeCamera, invert, transform_points
from .sensors import Tracer
from .world import WorldMesh

__all__ = ["as_tracer", "snap_to_surface", "visible_points"]

MeshLike = WorldMesh | Tracer | str | Path


def as_tracer(mesh: MeshLike) -> Tracer:
    """A :class:`Tracer` for a mesh, a ``world_mesh.npz`` path, or the tracer itself (reused: no rebuild)."""
    if isinstance(mesh, Tracer):
        return mesh
    if isinstance(mesh, str | Path):
        mesh = WorldMesh.load(mesh)
    return Tracer(mesh)


def visible_points(
    mesh: MeshLike,
    points_world: np.ndarray,
    T_world_cam: np.ndarray,
    camera: PinholeCamera,
    tol: float = 0.05,
) -> np.ndarray:
    """(N,) bool: in front of the camera, inside the image, and not occluded by the mesh.

    Args:
        mesh: the world (pass a :class:`Tracer` when calling repeatedly: building the scene costs ~0.1 s).
        points_world: (N, 3) points in the world frame.
        T_world_cam: camera pose (optical frame -> world).
        camera: image size and intrinsics (distortion only matters for the in-image test).
        tol: metres; the first surface along the ray may lie up to ``tol`` before the point.
    """
    tracer = as_tracer(mesh)
    P = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be finite and >= 0, got {tol}")
    finite = np.all(np.isfinite(P), axis=1)
    P_cam = transform_points(invert(np.asarray(T_world_cam, dtype=np.float64)), np.where(finite[:, None], P, 0.0))
    inside = camera.project(P_cam).in_image & finite
    out = np.zeros(len(P), dtype=bool)
    idx = np.nonzero(inside)[0]
    if idx.size == 0:
        return out
    centre = np.asarray(T_world_cam, dtype=np.float64)[:3, 3]
    ray = P[idx] - centre
    dist = np.linalg.norm(ray, axis=1)
    hits = tracer.cast(centre, ray / dist[:, None])
    out[idx] = hits.t >= dist - tol
    return out


def snap_to_surface(mesh: MeshLike, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest point on the mesh (N, 3) for each point, and the distance moved (N,)."""
    tracer = as_tracer(mesh)
    P = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    snapped, _ = tracer.closest_points(P)
    return snapped, np.linalg.norm(snapped - P, axis=1)
