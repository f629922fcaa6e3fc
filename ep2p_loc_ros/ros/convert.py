"""Message <-> array conversions: Image, CameraInfo, PointCloud2, Imu, poses.

Every function either returns a correct array/message or raises :class:`ConversionError` naming the field and
the fault, so the node can drop one bad frame, say why in diagnostics, and keep running.
"""

from __future__ import annotations

import math

import numpy as np
from geometry_msgs.msg import Pose, Transform
from sensor_msgs.msg import CameraInfo, Image, Imu, PointCloud2, PointField

from ..errors import DataError
from ..geometry import CameraError, PinholeCamera, make_T, matrix_to_quaternion, quaternion_to_matrix
from ..gravity import GravityPrior
from .compat import has_ros2_cv_bridge, has_sensor_msgs_py

__all__ = [
    "IMAGE_ENCODINGS",
    "ConversionError",
    "camera_info_to_camera",
    "compressed_image_to_rgb",
    "image_to_rgb",
    "imu_to_gravity",
    "matrix_to_pose",
    "matrix_to_transform",
    "pointcloud2_to_xyz",
    "pointcloud2_to_xyzi",
    "pose_to_matrix",
    "rgb_to_image",
    "xyz_to_pointcloud2",
]


class ConversionError(DataError):
    """A message that cannot be converted; the text names the field and the fault."""


# encoding -> (channels, numpy dtype); the numpy path handles exactly these.
IMAGE_ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "u1"),
    "bgr8": (3, "u1"),
    "rgba8": (4, "u1"),
    "bgra8": (4, "u1"),
    "mono8": (1, "u1"),
    "mono16": (1, "u2"),
}


def image_to_rgb(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` -> uint8 RGB array (H, W, 3), honouring ``step`` padding and byte order.

    mono16 keeps its 8 most significant bits. Encodings outside :data:`IMAGE_ENCODINGS` go to ROS 2's
    cv_bridge when it is installed, and are refused otherwise.
    """
    h, w, step, enc = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding)
    if h <= 0 or w <= 0:
        raise ConversionError(f"image: empty image ({w}x{h})")
    if enc not in IMAGE_ENCODINGS:
        if has_ros2_cv_bridge():
            return _image_to_rgb_cv_bridge(msg)
        raise ConversionError(f"image: unsupported encoding {enc!r} (supported: {', '.join(IMAGE_ENCODINGS)})")
    channels, kind = IMAGE_ENCODINGS[enc]
    itemsize = np.dtype(kind).itemsize
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise ConversionError(f"image: step {step} < width*bytes_per_pixel = {row_bytes} ({enc}, width {w})")
    data = memoryview(msg.data).cast("B") if not isinstance(msg.data, bytes | bytearray) else msg.data
    if len(data) != step * h:
        raise ConversionError(f"image: data has {len(data)} bytes, expected step*height = {step}*{h} = {step * h}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(h, step)[:, :row_bytes]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(h, w, channels)
    if enc == "mono16":
        pixels = (pixels >> 8).astype(np.uint8)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if enc.startswith("bgr"):
        pixels = pixels[..., 2::-1]
    return np.ascontiguousarray(pixels[..., :3])


def _image_to_rgb_cv_bridge(msg: Image) -> np.ndarray:
    from cv_bridge import CvBridge  # ROS 2 install only; see compat.has_ros2_cv_bridge

    try:
        return np.ascontiguousarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    except Exception as exc:  # cv_bridge raises several unrelated types for bad input
        raise ConversionError(f"image: cv_bridge cannot convert encoding {msg.encoding!r}: {exc}") from exc


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", frame_id: str = "", stamp=None) -> Image:
    """uint8 RGB (H, W, 3) -> ``sensor_msgs/Image`` in ``rgb8`` or ``bgr8`` (e.g. for bags and debug images)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ConversionError(f"image array must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if encoding not in ("rgb8", "bgr8"):
        raise ConversionError(f"rgb_to_image writes rgb8 or bgr8, not {encoding!r}")
    pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]
    h, w = rgb.shape[:2]
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3)
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def camera_info_to_camera(msg: CameraInfo, rectified: bool = True) -> PinholeCamera:
    """``CameraInfo`` -> :class:`PinholeCamera`.

    ``rectified=True`` (``image_rect`` topics, KITTI): intrinsics from ``P`` (no distortion). Otherwise ``K`` and
    ``D`` (plumb_bob or rational_polynomial). Binning and ROI are applied, as image_proc does.
    """
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise ConversionError(f"camera_info: image size {w}x{h} is not positive")
    if rectified:
        P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        K, dist, src = P[:, :3].copy(), np.zeros(5), "P"
    else:
        K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy()
        model = str(msg.distortion_model)
        D = np.asarray(msg.d, dtype=np.float64)
        if model not in ("plumb_bob", "rational_polynomial", "") or (model == "" and D.size):
            raise ConversionError(f"camera_info: distortion model {model!r} is not supported (plumb_bob, rational)")
        dist, src = (D if D.size else np.zeros(5)), "K"
    if not np.all(np.isfinite(K)) or not np.all(np.isfinite(dist)):
        raise ConversionError(f"camera_info: {src} or D contains NaN/Inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConversionError(f"camera_info: {src} has zero or negative focal length (fx={K[0, 0]}, fy={K[1, 1]})")
    roi = msg.roi
    if roi.width and roi.height and (roi.width, roi.height) != (w, h):
        K[0, 2] -= roi.x_offset
        K[1, 2] -= roi.y_offset
        w, h = int(roi.width), int(roi.height)
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    if bx > 1 or by > 1:
        K[0] /= bx
        K[1] /= by
        w, h = w // bx, h // by
    try:
        return PinholeCamera(w, h, K, dist)
    except CameraError as exc:
        raise ConversionError(f"camera_info: {exc}") from exc


_XYZI = ("x", "y", "z", "intensity")


def imu_to_gravity(msg: Imu, R_cam_imu: np.ndarray, default_sigma_rad: float) -> GravityPrior:
    """Gravity in the camera's optical frame from an IMU's orientation (REP-145: the IMU frame in a gravity-aligned
    frame) and the rotation from the IMU's frame to the camera's; its std the larger of the roll and pitch variances'
    roots, or ``default_sigma_rad`` where those are unknown (zeros)."""
    cov = np.asarray(msg.orientation_covariance, dtype=np.float64)
    if cov.shape == (9,) and cov[0] == -1.0:
        raise ConversionError("imu: orientation_covariance[0] is -1: the IMU gives no orientation")
    if cov.shape != (9,) or not np.isfinite(cov).all() or cov[0] < 0 or cov[4] < 0:
        raise ConversionError(f"imu: orientation_covariance must be finite with variances >= 0, got {cov.tolist()}")
    q = msg.orientation
    sigma = math.sqrt(max(cov[0], cov[4])) or default_sigma_rad  # (0: roll and pitch variances unknown)
    try:
        return GravityPrior.from_imu(np.array([q.x, q.y, q.z, q.w]), R_cam_imu, sigma)
    except ValueError as exc:
        raise ConversionError(f"imu: {exc}") from None


def xyz_to_pointcloud2(
    xyz: np.ndarray, intensity: np.ndarray | None = None, frame_id: str = "map", stamp=None
) -> PointCloud2:
    """(N, 3) points (+ optional intensity) -> ``PointCloud2`` of float32 x, y, z, intensity."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    data = np.zeros((n, 4), dtype="<f4")
    data[:, :3] = xyz
    if intensity is not None:
        data[:, 3] = np.asarray(intensity, dtype=np.float32).reshape(n)
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, name in enumerate(_XYZI)]
    msg = PointCloud2(
        height=1,
        width=n,
        fields=fields,
        is_bigendian=False,
        point_step=16,
        row_step=16 * n,
        is_dense=bool(np.all(np.isfinite(xyz))),
    )
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.data = data.tobytes()
    return msg


_PF_DTYPES = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}


def _pointcloud2_fields(msg: PointCloud2, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The float64 values (N,) of the fields ``names`` of a ``PointCloud2``, layout checked before any byte is read:
    fields within ``point_step``, points within ``row_step``, ``len(data) == row_step * height``."""
    by_name = {f.name: f for f in msg.fields}
    missing = [k for k in names if k not in by_name]
    if missing:
        raise ConversionError(f"pointcloud2: needs fields {list(names)}, has {sorted(by_name)}")
    width, height, point_step, row_step = int(msg.width), int(msg.height), int(msg.point_step), int(msg.row_step)
    n = width * height
    if len(msg.data) != row_step * height or point_step * width > row_step:
        raise ConversionError("pointcloud2: data size does not match row_step*height / point_step*width")
    fields = [by_name[k] for k in names]
    for f in fields:
        if f.datatype not in _PF_DTYPES or f.count != 1:
            raise ConversionError(
                f"pointcloud2: field {f.name!r} has unsupported datatype {f.datatype}/count {f.count}"
            )
        end = int(f.offset) + np.dtype(_PF_DTYPES[f.datatype]).itemsize
        if end > point_step:
            raise ConversionError(f"pointcloud2: field {f.name!r} ends at byte {end}, beyond point_step {point_step}")
    if n == 0:
        return {k: np.zeros(0, np.float64) for k in names}
    order = ">" if msg.is_bigendian else "<"
    dt = np.dtype(
        {
            "names": list(names),
            "formats": [order + _PF_DTYPES[f.datatype] for f in fields],
            "offsets": [int(f.offset) for f in fields],
            "itemsize": point_step,
        }
    )
    rows = np.frombuffer(memoryview(msg.data).cast("B"), np.uint8).reshape(height, row_step)
    rows = np.ascontiguousarray(rows[:, : point_step * width])
    pts = rows.view(dt).reshape(n)
    return {k: pts[k].astype(np.float64) for k in names}


def pointcloud2_to_xyz(msg: PointCloud2) -> np.ndarray:
    """``PointCloud2`` -> float64 (N, 3) of its x, y, z fields (sensor_msgs_py when installed; the layout is
    checked first either way)."""
    f = _pointcloud2_fields(msg, ("x", "y", "z"))
    if len(f["x"]) and has_sensor_msgs_py():
        from sensor_msgs_py import point_cloud2

        n = int(msg.width) * int(msg.height)
        return point_cloud2.read_points_numpy(msg, field_names=("x", "y", "z")).astype(np.float64).reshape(n, 3)
    return np.stack([f["x"], f["y"], f["z"]], axis=1)


def pointcloud2_to_xyzi(msg: PointCloud2) -> np.ndarray:
    """``PointCloud2`` -> float64 (N, 4): x, y, z and the ``intensity`` field (zeros when the cloud has none)."""
    has_i = any(f.name == "intensity" for f in msg.fields)
    f = _pointcloud2_fields(msg, ("x", "y", "z", "intensity") if has_i else ("x", "y", "z"))
    return np.stack([f["x"], f["y"], f["z"], f["intensity"] if has_i else np.zeros_like(f["x"])], axis=1)


def pose_to_matrix(pose: Pose | Transform) -> np.ndarray:
    """``geometry_msgs/Pose`` or ``Transform`` -> 4x4 (refuses NaN and zero quaternions)."""
    if isinstance(pose, Transform):
        t, q = pose.translation, pose.rotation
    else:
        t, q = pose.position, pose.orientation
    vals = [t.x, t.y, t.z, q.x, q.y, q.z, q.w]
    if not all(math.isfinite(v) for v in vals):
        raise ConversionError(f"pose contains NaN/Inf: {vals}")
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    scale = float(np.abs(quat).max())
    try:
        R = quaternion_to_matrix(quat / scale if scale > 0 else quat)  # scaled first: no overflow in the norm
    except ValueError as exc:
        raise ConversionError(f"pose: {exc}") from exc
    return make_T(R, [t.x, t.y, t.z])


def matrix_to_pose(T: np.ndarray) -> Pose:
    q = matrix_to_quaternion(T[:3, :3])
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def matrix_to_transform(T: np.ndarray) -> Transform:
    q = matrix_to_quaternion(T[:3, :3])
    tf = Transform()
    tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in T[:3, 3])
    tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w = (float(v) for v in q)
    return tf


MAX_COMPRESSED_PIXELS = 50_000_000  # a header claiming more (a decompression bomb) is refused before decoding


def _compressed_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOF header, without decoding; None when not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
                i += 2
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if length < 2:
                return None
            i += 2 + length
    return None


def compressed_image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg/png, as image_transport's compressed plugin sends) -> uint8 RGB.

    A header claiming more than :data:`MAX_COMPRESSED_PIXELS` is refused before anything is decoded.
    """
    import cv2

    data = np.frombuffer(memoryview(msg.data).cast("B"), np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size == 0:
        raise ConversionError("compressed image: no data")
    size = _compressed_size(data[:65536].tobytes())
    if size is not None and size[0] * size[1] > MAX_COMPRESSED_PIXELS:
        raise ConversionError(
            f"compressed image: header says {size[0]}x{size[1]} pixels, more than the {MAX_COMPRESSED_PIXELS} allowed"
        )
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ConversionError(f"compressed image: cannot decode {data.size} bytes ({str(exc).strip()[-120:]})") from exc
    if img is None or img.size == 0:
        raise ConversionError(f"compressed image: cannot decode {data.size} bytes (format {msg.format!r})")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ConversionError(f"compressed image: decoded to {img.dtype}, expected 8 or 16 bit")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ConversionError(f"compressed image: decoded to shape {img.shape}, expected gray, BGR or BGRA")
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img[..., ::-1])  # OpenCV decodes to BGR
