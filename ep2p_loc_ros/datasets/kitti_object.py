"""KITTI object-benchmark layout: ``image_2/``, ``velodyne/``, ``calib/`` with one file per frame id."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..calib import CameraLidarCalib, read_kitti_object_calib, read_velodyne_bin
from ..errors import DataError

__all__ = ["KittiObjectFrame", "frame_ids", "iter_frames", "load_frame", "load_image_rgb"]


@dataclass(frozen=True)
class KittiObjectFrame:
    """One frame: RGB image (H, W, 3) uint8, scan (N, 4) float32 in the Velodyne frame, and calibration."""

    frame_id: str
    image: np.ndarray
    scan: np.ndarray
    calib: CameraLidarCalib


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), with an error that names the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def frame_ids(root: str | Path) -> list[str]:
    """Frame ids that have an image, a scan and a calibration file."""
    root = Path(root)
    if not (root / "image_2").is_dir():
        raise FileNotFoundError(f"{root}: not a KITTI object-layout directory (no image_2/)")
    ids = sorted(p.stem for p in (root / "image_2").glob("*.png"))
    return [i for i in ids if (root / "velodyne" / f"{i}.bin").is_file() and (root / "calib" / f"{i}.txt").is_file()]


def load_frame(root: str | Path, frame_id: str) -> KittiObjectFrame:
    root = Path(root)
    image = load_image_rgb(root / "image_2" / f"{frame_id}.png")
    calib = read_kitti_object_calib(root / "calib" / f"{frame_id}.txt", (image.shape[1], image.shape[0]))
    scan = read_velodyne_bin(root / "velodyne" / f"{frame_id}.bin")
    return KittiObjectFrame(frame_id, image, scan, calib)


def iter_frames(root: str | Path) -> Iterator[KittiObjectFrame]:
    for frame_id in frame_ids(root):
        yield load_frame(root, frame_id)
