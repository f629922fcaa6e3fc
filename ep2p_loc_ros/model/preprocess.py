"""Image preprocessing: any camera image -> the network's fixed input size, with the camera scaled to match.

The network always sees ``(config.image_height, config.image_width)``; the image is resized per axis (no crop),
so the aspect ratio may change slightly (KITTI 1242x375 -> 640x192: 0.5 %). The intrinsics follow the same
per-axis map, with pixel centres at integers (OpenCV's resize convention):

    u' = (u + 0.5) * sx - 0.5,     sx = W' / W   (and likewise for v with sy = H' / H)

so a 3D point projected with the returned camera lands exactly where its projection in the original image
lands after resizing. Distortion is defined on normalised coordinates and is unchanged.

Per-channel mean/std normalisation lives inside the network (``ImageEncoder``), so the ONNX model takes [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import DataError
from ..geometry import PinholeCamera
from .config import ModelConfig

__all__ = ["MIN_IMAGE_SIDE", "camera_for_network", "prepare_image", "resize_camera", "resize_rgb"]

MIN_IMAGE_SIDE = 32  # pixels; smaller images carry too little to localise and usually mean a decoding fault


def resize_camera(camera: PinholeCamera, width: int, height: int) -> PinholeCamera:
    """``camera`` for its image resized to ``(width, height)``: ``K' = S K`` with the pixel-centre map ``S``."""
    sx = width / camera.width
    sy = height / camera.height
    S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return PinholeCamera(int(width), int(height), S @ camera.K, camera.dist)


def camera_for_network(camera: PinholeCamera, config: ModelConfig) -> PinholeCamera:
    """The camera as the network sees it (image resized to the config's input size)."""
    return resize_camera(camera, config.image_width, config.image_height)


def _check_image(rgb: object, camera: PinholeCamera, source: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise DataError(f"{source}: expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise DataError(f"{source}: expected dtype uint8 (8-bit RGB), got {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(
            f"{source}: expected shape (H, W, 3) RGB, got {rgb.shape}; convert mono/BGRA/Bayer images to RGB first"
        )
    h, w = rgb.shape[:2]
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise DataError(f"{source}: image {w}x{h} is too small (each side must be >= {MIN_IMAGE_SIDE} px)")
    if (w, h) != (camera.width, camera.height):
        raise DataError(
            f"{source}: image is {w}x{h} but the camera intrinsics describe {camera.width}x{camera.height}; "
            "the intrinsics would not match the pixels"
        )
    return rgb


def resize_rgb(rgb: np.ndarray, config: ModelConfig) -> np.ndarray:
    """A uint8 RGB image at the network size (unchanged if it is that size already).

    INTER_AREA averages when shrinking (no aliasing); it uses the same half-pixel centre map as ``resize_camera``.
    """
    size = (config.image_width, config.image_height)
    if rgb.shape[1] == size[0] and rgb.shape[0] == size[1]:
        return rgb
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)


def prepare_image(
    rgb: np.ndarray, camera: PinholeCamera, config: ModelConfig, source: str = "image"
) -> tuple[np.ndarray, PinholeCamera]:
    """RGB uint8 (H, W, 3) -> float32 (1, 3, h, w) in [0, 1] at the network size, and the camera scaled to it.

    ``source`` names the image in errors (a file path or a topic). Raises ``DataError`` for a wrong dtype or
    shape, a tiny image, or an image whose size disagrees with ``camera``.
    """
    rgb = resize_rgb(_check_image(rgb, camera, source), config)
    size = (config.image_width, config.image_height)
    image = np.empty((1, 3, size[1], size[0]), dtype=np.float32)
    np.multiply(rgb.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=image[0], casting="unsafe")
    return image, camera_for_network(camera, config)
