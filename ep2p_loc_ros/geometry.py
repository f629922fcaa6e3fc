"""Rigid transforms, rotations and the pinhole camera.

Conventions (see README, "Conventions"):
- A pose is a 4x4 float64 matrix ``T_target_source``: it maps a point expressed in ``source`` to ``target``.
- Quaternions are ordered like ROS messages: ``(x, y, z, w)``.
- Pixel centres lie at integer coordinates (OpenCV convention): pixel ``(col, row)`` covers
  ``[col - 0.5, col + 0.5) x [row - 0.5, row + 0.5)``.
- Camera frames are optical frames (REP-103 ``*_optical``): x right, y down, z forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CameraError",
    "PinholeCamera",
    "Projection",
    "best_distinct",
    "invert",
    "lever_jacobian",
    "make_T",
    "matrix_to_quaternion",
    "matrix_to_rotvec",
    "moved_in_view",
    "pose_add",
    "pose_difference",
    "quaternion_to_matrix",
    "rotation_angle_deg",
    "rotvec_to_matrix",
    "se3_exp",
    "symmetric_offsets",
    "transform_points",
]


class CameraError(ValueError):
    """Intrinsics or image size that cannot describe a real camera."""


# --------------------------------------------------------------------------- SE(3) / SO(3)


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Build a 4x4 transform from a rotation matrix and a translation."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform without a general matrix inverse (exact for SE(3))."""
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def moved_in_view(T_map_cam: np.ndarray, along_m: ArrayLike, across_m: ArrayLike | None = None) -> np.ndarray:
    """(N, 4, 4): ``T_map_cam`` moved by each ``along_m`` along its own optical axis (camera z) and ``across_m``
    sideways (camera x), not turned. Why one function: the alignment's line search, the likelihood's grid and the
    Manhattan starts all search where the camera looks (the misses lie along the optical axis)."""
    T = np.asarray(T_map_cam, dtype=np.float64)
    along = np.atleast_1d(np.asarray(along_m, dtype=np.float64))
    across = np.broadcast_to(np.asarray(0.0 if across_m is None else across_m, dtype=np.float64), along.shape)
    out = np.repeat(T[None], len(along), axis=0)
    out[:, :3, 3] += along[:, None] * T[:3, 2] + across[:, None] * T[:3, 0]
    return out


def symmetric_offsets(reach: float, step: float) -> np.ndarray:
    """0, ±step, ±2 step, ... up to ±reach (inclusive; just 0 when either is 0): one axis of a search grid."""
    if reach <= 0 or step <= 0:
        return np.zeros(1)
    n = int(np.floor(reach / step + 1e-9))
    return np.arange(-n, n + 1, dtype=np.float64) * step


def best_distinct(
    poses: np.ndarray, values: ArrayLike | None, count: int, distinct_m: float, distinct_deg: float
) -> list[int]:
    """Indices of the ``count`` best of ``poses`` (N, 4, 4) by ``values`` (higher first; NaN never; None: in the
    order given), each more than ``distinct_m`` or more than ``distinct_deg`` from every one kept before it. Why: a
    grid's best scores crowd around one peak; starts for a search should be at different peaks."""
    if values is None:
        order, values = np.arange(len(poses)), np.zeros(len(poses))
    else:
        values = np.asarray(values, dtype=np.float64)
        order = np.argsort(-values, kind="stable")
    cos_max = np.cos(np.radians(distinct_deg))
    kept: list[int] = []
    for k in order:
        if len(kept) >= count or np.isnan(values[k]):
            break
        T = poses[k]
        near = [
            np.linalg.norm(T[:3, 3] - poses[j][:3, 3]) <= distinct_m
            and (np.trace(T[:3, :3].T @ poses[j][:3, :3]) - 1.0) / 2.0 >= cos_max
            for j in kept
        ]
        if not any(near):
            kept.append(int(k))
    return kept


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``T`` (4x4) to ``points`` (N, 3)."""
    points = np.asarray(points)
    return points @ T[:3, :3].T.astype(points.dtype, copy=False) + T[:3, 3].astype(points.dtype, copy=False)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: axis-angle vector (rad) to rotation matrix."""
    rotvec = np.asarray(rotvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(rotvec))
    K = _skew(rotvec)
    if theta < 1e-8:  # second-order Taylor expansion keeps it exact to float precision
        return np.eye(3) + K + 0.5 * K @ K
    return np.eye(3) + np.sin(theta) / theta * K + (1.0 - np.cos(theta)) / theta**2 * K @ K


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotvec_to_matrix`, stable near 0 and pi (via the quaternion)."""
    x, y, z, w = matrix_to_quaternion(R)
    if w < 0:
        x, y, z, w = -x, -y, -z, -w
    s = np.sqrt(x * x + y * y + z * z)
    if s < 1e-12:
        return 2.0 * np.array([x, y, z])
    angle = 2.0 * np.arctan2(s, w)
    return angle / s * np.array([x, y, z])


def se3_exp(xi: np.ndarray) -> np.ndarray:
    """Small pose update ``[tx, ty, tz, rx, ry, rz]`` -> 4x4, translation and rotation applied separately.

    This is the parametrisation used for covariances (ROS order: x, y, z, then rotation), so that a
    covariance entry reads directly as metres and radians.
    """
    xi = np.asarray(xi, dtype=np.float64).reshape(6)
    return make_T(rotvec_to_matrix(xi[3:]), xi[:3])


def pose_difference(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``[t_A - t_B, Log(R_A R_Bᵀ)]``: how far pose ``A`` is from ``B`` in the covariance parametrisation of
    :func:`se3_exp` (position in the parent frame, rotation about the parent's axes)."""
    return np.concatenate([A[:3, 3] - B[:3, 3], matrix_to_rotvec(A[:3, :3] @ B[:3, :3].T)])


def pose_add(B: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Pose ``B`` moved by ``d`` = ``[δt, δr]`` in the same parametrisation: ``t_B + δt``, ``Exp(δr) R_B``. The inverse
    of :func:`pose_difference`: ``pose_add(B, pose_difference(A, B))`` is ``A``."""
    T = np.array(B, dtype=np.float64)
    T[:3, 3] += d[:3]
    T[:3, :3] = rotvec_to_matrix(d[3:]) @ T[:3, :3]
    return T


def lever_jacobian(d: np.ndarray) -> np.ndarray:
    """``[[I, -[d]x], [0, I]]``: how a perturbation of a pose (parametrisation of :func:`se3_exp`) moves a frame
    rigidly attached to it whose origin lies ``d`` (parent axes) from the pose's origin. Moves a 6x6 covariance
    between two frames of one rigid body: ``J Σ Jᵀ``."""
    J = np.eye(6)
    J[:3, 3:] = -_skew(np.asarray(d, dtype=np.float64).reshape(3))
    return J


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees (e.g. of ``R_est @ R_true.T``)."""
    c = (np.trace(R) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternion ``(x, y, z, w)`` (ROS order; normalised here) to rotation matrix."""
    q = np.asarray(q, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has no direction")
    x, y, z, w = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix to quaternion ``(x, y, z, w)`` with ``w >= 0`` (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


# --------------------------------------------------------------------------- camera


@dataclass(frozen=True)
class Projection:
    """Result of projecting points: pixels (N, 2), depth along the optical axis (N,), and in-image mask."""

    uv: np.ndarray
    depth: np.ndarray
    in_image: np.ndarray

    def pixel_index(self) -> np.ndarray:
        """Integer ``(col, row)`` of the pixel each point falls in (meaningful where ``in_image``; -1 if no pixel)."""
        uv = np.clip(np.where(np.isfinite(self.uv), self.uv, -1.0), -1.0, 2.0**31)  # far off: no int64 overflow
        return np.floor(uv + 0.5).astype(np.int64)


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera with image size, K and optional plumb_bob distortion ``(k1, k2, p1, p2, k3)``."""

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        dist = np.zeros(5) if self.dist is None else np.asarray(self.dist, dtype=np.float64).reshape(-1)
        if K.shape != (3, 3):
            raise CameraError(f"K must be 3x3, got shape {K.shape}")
        if not np.all(np.isfinite(K)) or not np.all(np.isfinite(dist)):
            raise CameraError(f"intrinsics contain NaN/Inf: K={K.tolist()} dist={dist.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise CameraError(f"focal lengths must be > 0, got fx={K[0, 0]} fy={K[1, 1]}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise CameraError(f"image size must be positive, got {self.width}x{self.height}")
        if dist.size not in (4, 5, 8):
            raise CameraError(f"plumb_bob/rational distortion needs 4, 5 or 8 coefficients, got {dist.size}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "dist", dist)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @classmethod
    def from_params(cls, width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> PinholeCamera:
        return cls(width, height, np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.dist != 0))

    @property
    def key(self) -> tuple:
        """A hashable identity of the intrinsics: equal for the same size, K and distortion."""
        return self.width, self.height, self.K.tobytes(), self.dist.tobytes()

    def scaled(self, factor: float) -> PinholeCamera:
        """The same camera for an image resized by ``factor`` (pixel centres at integers are kept)."""
        K = self.K.copy()
        K[:2, :2] *= factor
        K[:2, 2] = (K[:2, 2] + 0.5) * factor - 0.5
        return PinholeCamera(round(self.width * factor), round(self.height * factor), K, self.dist)

    def distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Apply plumb_bob (or rational) distortion to normalised image coordinates (N, 2)."""
        if not self.has_distortion:
            return xy
        d = np.zeros(8)
        d[: self.dist.size] = self.dist
        k1, k2, p1, p2, k3, k4, k5, k6 = d
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=1)

    def project(self, points_cam: np.ndarray) -> Projection:
        """Project points given in this camera's optical frame.

        Points at or behind the camera (depth <= 0) get NaN pixels and ``in_image = False``.
        """
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        z = p[:, 2]
        front = z > 1e-9
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = p[:, :2] / np.where(front, z, np.nan)[:, None]
        xy = self.distort_normalized(xy)
        uv = xy * [self.fx, self.fy] + [self.cx, self.cy]
        uv[:, 0] += self.K[0, 1] * xy[:, 1]  # skew, zero for every real camera we know of
        in_image = (
            front
            & (uv[:, 0] >= -0.5)
            & (uv[:, 0] < self.width - 0.5)
            & (uv[:, 1] >= -0.5)
            & (uv[:, 1] < self.height - 0.5)
        )
        return Projection(uv=uv, depth=z, in_image=in_image)

    def undistort_pixels(self, uv: np.ndarray) -> np.ndarray:
        """Pixels of this camera -> pixels of the same camera without distortion (identity if none)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if not self.has_distortion or uv.shape[0] == 0:
            return uv
        import cv2

        und = cv2.undistortPoints(uv[:, None, :], self.K, self.dist, P=self.K)
        return und.reshape(-1, 2)

    def without_distortion(self) -> PinholeCamera:
        return PinholeCamera(self.width, self.height, self.K, np.zeros(5))
