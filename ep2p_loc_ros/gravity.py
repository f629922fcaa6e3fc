"""Gravity's direction in the camera, as an IMU measures it: a prior on the camera's roll and pitch.

Why: a single image fixes the camera poorly along its optical axis, and the reflectance alignment trades that
distance against pitch and height: on the ground ahead, moving the camera forward by D shifts a point d metres
away by f h D / d^2 pixels (h: the camera's height), pitching it by a shifts every point by f a, so at d = 30 m a
pitch off by 0.05 deg moves the best fit ~0.5 m along the axis. A car's INS measures roll and pitch to a few
hundredths of a degree (KITTI's OXTS RT3003: 0.03 deg), far better than the image can; with it the alignment's
starts are levelled and its ascent pays for leaving the measured tilt (``AlignmentConfig.gravity_weight``;
models/README.md "Session 51").

The map frame must have z up (REP-103), as maps built from the simulator's or a ROS robot's poses do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import rotvec_to_matrix

__all__ = ["GravityPrior", "down_in_camera"]


def down_in_camera(T_map_cam: np.ndarray) -> np.ndarray:
    """The unit vector toward the ground (map -z) in the camera's frame at ``T_map_cam`` (map z up)."""
    return -np.asarray(T_map_cam, dtype=np.float64)[2, :3].copy()


@dataclass(frozen=True, eq=False)
class GravityPrior:
    """Gravity's direction in the camera's optical frame (``down_cam``, normalised) and its standard deviation
    per tilt axis (``sigma_rad``): what the alignment needs of an IMU's orientation."""

    down_cam: np.ndarray
    sigma_rad: float

    def __post_init__(self) -> None:
        down = np.asarray(self.down_cam, dtype=np.float64).reshape(-1)
        if down.shape != (3,) or not np.isfinite(down).all() or not np.linalg.norm(down) > 1e-6:
            raise ValueError(f"gravity: down_cam must be a finite, non-zero 3-vector, got {self.down_cam!r}")
        sigma = float(self.sigma_rad)
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"gravity: sigma_rad must be finite and > 0, got {self.sigma_rad!r}")
        down = down / np.linalg.norm(down)
        down.flags.writeable = False
        object.__setattr__(self, "down_cam", down)
        object.__setattr__(self, "sigma_rad", sigma)

    @classmethod
    def from_imu(cls, q_xyzw: np.ndarray, R_cam_imu: np.ndarray, sigma_rad: float) -> GravityPrior:
        """From an IMU's orientation (``q_xyzw``: the IMU frame in a gravity-aligned world, z up, as
        ``sensor_msgs/Imu`` gives it, REP-145) and the rotation from the IMU's frame to the camera's optical frame."""
        q = np.asarray(q_xyzw, dtype=np.float64).reshape(-1)
        if q.shape != (4,) or not np.isfinite(q).all() or not np.linalg.norm(q) > 0.5:
            raise ValueError(f"gravity: an IMU orientation must be a finite unit quaternion, got {q_xyzw!r}")
        x, y, z, w = q / np.linalg.norm(q)
        # the world's z axis in the IMU frame is the third row of R_world_imu
        up_imu = np.array([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])
        R = np.asarray(R_cam_imu, dtype=np.float64)
        if R.shape != (3, 3) or not np.isfinite(R).all():
            raise ValueError("gravity: R_cam_imu must be a finite 3x3 rotation")
        return cls(-(R @ up_imu), sigma_rad)

    def tilt_error(self, T_map_cam: np.ndarray) -> float:
        """The angle (rad) between gravity as ``T_map_cam`` has it and as measured."""
        c = float(np.clip(down_in_camera(T_map_cam) @ self.down_cam, -1.0, 1.0))
        return float(np.arccos(c))

    def levelled(self, T_map_cam: np.ndarray) -> np.ndarray:
        """``T_map_cam`` turned by the smallest rotation that gives it the measured gravity, about its own centre:
        its position, and its heading up to that small turn, are kept. Where a start's tilt comes from (PnP on
        the matches, a viewpoint of the map drive) it is known worse than an IMU measures it."""
        T = np.array(T_map_cam, dtype=np.float64)
        have, want = down_in_camera(T), self.down_cam
        axis = np.cross(want, have)  # turning the camera by Q (its frame) maps its down to Q^T down
        s, c = np.linalg.norm(axis), float(have @ want)
        if s < 1e-12:
            return T
        T[:3, :3] = T[:3, :3] @ rotvec_to_matrix(axis / s * np.arctan2(s, c))
        return T
