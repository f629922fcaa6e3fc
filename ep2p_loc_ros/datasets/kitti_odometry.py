"""KITTI odometry layout, the one format for sequences (real KITTI and the project's synthetic worlds).

```
SEQ/
  image_2/000000.png ...   left colour camera, rectified
  velodyne/000000.bin ...  float32 x, y, z, reflectance in the LiDAR frame
  calib.txt                P0..P3 (rectified projections), Tr (LiDAR -> rectified cam0)
  poses.txt                one line per frame: the 3x4 pose T_world_cam0 (row-major); may be absent for test data
  times.txt                one timestamp (s) per frame
```
Synthetic sequences add ``world_mesh.npz`` (the scene's triangles, for exact visibility) and ``sim.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..calib import CameraLidarCalib, read_kitti_odometry_calib, read_velodyne_bin
from ..errors import DataError
from ..geometry import invert
from .kitti_object import load_image_rgb

__all__ = ["KittiOdometrySequence", "read_poses", "write_calib", "write_poses"]


def read_poses(path: str | Path) -> np.ndarray:
    """``poses.txt`` -> (N, 4, 4) float64; each line 12 numbers (3x4, row-major)."""
    path = Path(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read poses ({exc})") from exc
    if rows.shape[1] != 12:
        raise DataError(f"{path}: each pose line needs 12 numbers, got {rows.shape[1]}")
    if not np.all(np.isfinite(rows)):
        raise DataError(f"{path}: poses contain NaN/Inf")
    T = np.tile(np.eye(4), (len(rows), 1, 1))
    T[:, :3, :] = rows.reshape(-1, 3, 4)
    return T


def write_poses(path: str | Path, T: np.ndarray) -> None:
    """Write (N, 4, 4) poses in KITTI format (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    np.savetxt(tmp, np.asarray(T)[:, :3, :].reshape(-1, 12), fmt="%.9e")
    tmp.replace(path)


def write_calib(path: str | Path, P: list[np.ndarray], Tr: np.ndarray) -> None:
    """Write ``calib.txt``: ``P0..P3`` (each 3x4) and ``Tr`` (3x4 or 4x4, LiDAR -> rectified cam0), atomically."""
    path = Path(path)
    if len(P) != 4:
        raise ValueError(f"calib.txt needs 4 projection matrices P0..P3, got {len(P)}")
    lines = [f"P{i}: " + " ".join(f"{v:.12e}" for v in np.asarray(Pi)[:3, :4].ravel()) for i, Pi in enumerate(P)]
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in np.asarray(Tr)[:3, :4].ravel()))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


@dataclass
class KittiOdometrySequence:
    """Lazy reader of one sequence; images and scans are read on demand."""

    root: Path
    cam: int = 2

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        for name in ("image_2", "velodyne"):
            if not (self.root / name).is_dir():
                raise DataError(f"{self.root}: not a KITTI odometry-layout sequence (no {name}/)")
        if not (self.root / "calib.txt").is_file():
            raise DataError(f"{self.root}: missing calib.txt")
        n_img, n_scan = len(self.image_paths), len(self.scan_paths)
        if n_img != n_scan:
            raise DataError(f"{self.root}: {n_img} images but {n_scan} scans")
        if self.poses is not None and len(self.poses) != n_img:
            raise DataError(f"{self.root / 'poses.txt'}: {len(self.poses)} poses for {n_img} frames")

    def __len__(self) -> int:
        return len(self.image_paths)

    @cached_property
    def image_paths(self) -> list[Path]:
        return sorted((self.root / "image_2").glob("*.png"))

    @cached_property
    def scan_paths(self) -> list[Path]:
        return sorted((self.root / "velodyne").glob("*.bin"))

    @cached_property
    def image_size(self) -> tuple[int, int]:
        """(W, H) of the first image (KITTI sequences have one size throughout)."""
        from PIL import Image

        if not self.image_paths:
            raise DataError(f"{self.root}: no images")
        with Image.open(self.image_paths[0]) as im:
            return im.size

    @cached_property
    def calib(self) -> CameraLidarCalib:
        """Camera ``cam`` and ``T_cam_velo``."""
        return read_kitti_odometry_calib(self.root / "calib.txt", self.image_size, cam=self.cam)

    @cached_property
    def T_cam0_velo(self) -> np.ndarray:
        return read_kitti_odometry_calib(self.root / "calib.txt", self.image_size, cam=0).T_cam_velo

    @cached_property
    def poses(self) -> np.ndarray | None:
        """(N, 4, 4) ``T_world_cam0`` or None when the sequence has no poses.txt."""
        path = self.root / "poses.txt"
        return read_poses(path) if path.is_file() else None

    @cached_property
    def times(self) -> np.ndarray:
        path = self.root / "times.txt"
        if not path.is_file():
            return np.arange(len(self), dtype=np.float64) * 0.1  # KITTI records at 10 Hz
        t = np.loadtxt(path, dtype=np.float64, ndmin=1)
        if len(t) != len(self):
            raise DataError(f"{path}: {len(t)} timestamps for {len(self)} frames")
        return t

    def _require_poses(self) -> np.ndarray:
        if self.poses is None:
            raise DataError(f"{self.root}: sequence has no poses.txt")
        return self.poses

    def T_world_velo(self, i: int) -> np.ndarray:
        return self._require_poses()[i] @ self.T_cam0_velo

    def T_world_cam(self, i: int) -> np.ndarray:
        """Pose of camera ``cam`` (optical frame) in the world."""
        return self.T_world_velo(i) @ invert(self.calib.T_cam_velo)

    def image(self, i: int) -> np.ndarray:
        return load_image_rgb(self.image_paths[i])

    def scan(self, i: int) -> np.ndarray:
        return read_velodyne_bin(self.scan_paths[i])
