"""Readers for KITTI calibration files (raw, object, odometry) and Velodyne scans.

Every reader returns the same thing, a :class:`CameraLidarCalib`: the rectified pinhole camera of one colour
camera and ``T_cam_velo`` (LiDAR frame -> that camera's optical frame), so later code never needs to know which
KITTI benchmark a sequence came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .geometry import CameraError, PinholeCamera, make_T

__all__ = [
    "CalibrationError",
    "CameraLidarCalib",
    "read_kitti_object_calib",
    "read_kitti_odometry_calib",
    "read_kitti_raw_calib",
    "read_kv_file",
    "read_velodyne_bin",
]


class CalibrationError(DataError):
    """A calibration file that is missing, malformed, or lacks a key; the message names file and key."""


@dataclass(frozen=True)
class CameraLidarCalib:
    """A rectified camera and the LiDAR-to-camera transform (``T_cam_velo``, optical frame)."""

    camera: PinholeCamera
    T_cam_velo: np.ndarray
    source: str  # file(s) it was read from, for messages


def read_kv_file(path: str | Path) -> dict[str, np.ndarray | str]:
    """Parse ``KEY: numbers...`` lines. Non-numeric values (e.g. ``calib_time``) are kept as strings."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read calibration file ({exc.strerror or exc})") from exc
    out: dict[str, np.ndarray | str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise CalibrationError(f"{path}:{lineno}: expected 'KEY: values', got {line.strip()[:60]!r}")
        try:
            out[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def _get(values: dict, key: str, size: int, path: Path) -> np.ndarray:
    """Fetch a numeric key with ``size`` finite entries, or raise naming file and key."""
    if key not in values:
        raise CalibrationError(f"{path}: missing key {key!r} (has: {', '.join(sorted(values)) or 'nothing'})")
    v = values[key]
    if isinstance(v, str):
        raise CalibrationError(f"{path}: key {key!r} is not numeric: {v[:60]!r}")
    if v.size != size:
        raise CalibrationError(f"{path}: key {key!r} needs {size} numbers, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise CalibrationError(f"{path}: key {key!r} contains NaN/Inf")
    return v


def _rigid(M34: np.ndarray, key: str, path: Path) -> np.ndarray:
    T = np.vstack([M34.reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
    R = T[:3, :3]
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or np.abs(R @ R.T - np.eye(3)).max() > 1e-3:
        raise CalibrationError(f"{path}: key {key!r} is not a rigid transform (rotation part not orthonormal)")
    return T


def _camera_from_P(P: np.ndarray, width: int, height: int, key: str, path: Path) -> tuple[PinholeCamera, np.ndarray]:
    """Split a rectified projection matrix ``P = K [I | t]`` into the camera and ``T_cam_rect0``."""
    P = P.reshape(3, 4)
    K = P[:, :3].copy()
    if abs(K[2, 2] - 1.0) > 1e-6 or abs(K[1, 0]) > 1e-9 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9:
        raise CalibrationError(f"{path}: key {key!r} is not a rectified projection matrix K[I|t]")
    try:
        camera = PinholeCamera(width, height, K)
    except CameraError as exc:
        raise CalibrationError(f"{path}: key {key!r}: {exc}") from exc
    T_cam_rect0 = make_T(np.eye(3), np.linalg.solve(K, P[:, 3]))
    return camera, T_cam_rect0


def read_kitti_object_calib(path: str | Path, image_size: tuple[int, int], cam: int = 2) -> CameraLidarCalib:
    """KITTI object benchmark calib (``P0..P3``, ``R0_rect``, ``Tr_velo_to_cam``); ``image_size`` is (W, H)."""
    path = Path(path)
    v = read_kv_file(path)
    key = f"P{cam}"
    camera, T_cam_rect0 = _camera_from_P(_get(v, key, 12, path), *image_size, key, path)
    R0 = _get(v, "R0_rect", 9, path).reshape(3, 3)
    T_rect0_velo = make_T(R0, np.zeros(3)) @ _rigid(_get(v, "Tr_velo_to_cam", 12, path), "Tr_velo_to_cam", path)
    return CameraLidarCalib(camera, T_cam_rect0 @ T_rect0_velo, str(path))


def read_kitti_odometry_calib(path: str | Path, image_size: tuple[int, int], cam: int = 2) -> CameraLidarCalib:
    """KITTI odometry ``calib.txt`` (``P0..P3`` and ``Tr`` = velo -> rectified cam0)."""
    path = Path(path)
    v = read_kv_file(path)
    key = f"P{cam}"
    camera, T_cam_rect0 = _camera_from_P(_get(v, key, 12, path), *image_size, key, path)
    T_rect0_velo = _rigid(_get(v, "Tr", 12, path), "Tr", path)
    return CameraLidarCalib(camera, T_cam_rect0 @ T_rect0_velo, str(path))


def read_kitti_raw_calib(cam_to_cam: str | Path, velo_to_cam: str | Path, cam: int = 2) -> CameraLidarCalib:
    """KITTI raw ``calib_cam_to_cam.txt`` + ``calib_velo_to_cam.txt``; image size from ``S_rect_0{cam}``."""
    c2c, v2c = Path(cam_to_cam), Path(velo_to_cam)
    cc = read_kv_file(c2c)
    vc = read_kv_file(v2c)
    w, h = _get(cc, f"S_rect_{cam:02d}", 2, c2c)
    key = f"P_rect_{cam:02d}"
    camera, T_cam_rect0 = _camera_from_P(_get(cc, key, 12, c2c), round(w), round(h), key, c2c)
    R_rect = make_T(_get(cc, "R_rect_00", 9, c2c).reshape(3, 3), np.zeros(3))
    T_cam0_velo = _rigid(
        np.hstack([_get(vc, "R", 9, v2c).reshape(3, 3), _get(vc, "T", 3, v2c).reshape(3, 1)]), "R|T", v2c
    )
    return CameraLidarCalib(camera, T_cam_rect0 @ R_rect @ T_cam0_velo, f"{c2c} + {v2c}")


def read_velodyne_bin(path: str | Path) -> np.ndarray:
    """Read a KITTI Velodyne scan: float32 ``(N, 4)`` with x, y, z (m) and reflectance."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size % 16:  # checked before reading: np.fromfile silently drops a trailing partial value
            raise DataError(f"{path}: size {size} bytes is not a multiple of 16 (x, y, z, r float32)")
        raw = np.fromfile(path, dtype="<f4")
    except OSError as exc:
        raise DataError(f"{path}: cannot read scan ({exc.strerror or exc})") from exc
    scan = raw.reshape(-1, 4)
    if not np.all(np.isfinite(scan)):
        raise DataError(f"{path}: scan contains NaN/Inf")
    return scan
