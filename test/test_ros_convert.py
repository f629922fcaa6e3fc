"""Image / CameraInfo / PointCloud2 / pose conversions, through real CDR serialisation."""

import numpy as np
import pytest

pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, Imu, PointCloud2

from ep2p_loc_ros.geometry import matrix_to_quaternion, rotvec_to_matrix
from ep2p_loc_ros.gravity import down_in_camera
from ep2p_loc_ros.ros.convert import (
    ConversionError,
    camera_info_to_camera,
    image_to_rgb,
    imu_to_gravity,
    matrix_to_pose,
    matrix_to_transform,
    pointcloud2_to_xyz,
    pose_to_matrix,
    rgb_to_image,
    xyz_to_pointcloud2,
)


def _wire(msg):
    """Round-trip through CDR, as a subscriber would receive it."""
    return deserialize_message(serialize_message(msg), type(msg))


def _image(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1)
    if arr.dtype.itemsize == 2:
        row = row.astype(">u2" if bigendian else "<u2").view(np.uint8)
    padded = np.zeros((h, row.shape[1] + pad), np.uint8)
    padded[:, : row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


RGB = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(
    "encoding, pixels",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
    ],
)
def test_ros_convert_color_encodings_with_row_padding(encoding, pixels, pad):
    out = image_to_rgb(_wire(_image(np.ascontiguousarray(pixels), encoding, pad)))
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("bigendian", [False, True])
def test_ros_convert_mono_encodings(bigendian):
    gray = RGB[..., 0]
    np.testing.assert_array_equal(image_to_rgb(_image(gray[..., None], "mono8", pad=1)), np.dstack([gray] * 3))
    gray16 = gray.astype(np.uint16) * 256 + 77  # low byte must be dropped, high byte kept
    out = image_to_rgb(_wire(_image(gray16[..., None], "mono16", pad=2, bigendian=bigendian)))
    np.testing.assert_array_equal(out, np.dstack([gray] * 3))


def test_ros_convert_rgb_to_image_roundtrip():
    for enc in ("rgb8", "bgr8"):
        msg = _wire(rgb_to_image(RGB, enc, frame_id="cam"))
        assert msg.encoding == enc and msg.header.frame_id == "cam" and msg.step == 15
        np.testing.assert_array_equal(image_to_rgb(msg), RGB)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding 'yuv422'"),
        (lambda m: setattr(m, "step", 10), "step 10 < width"),
        (lambda m: setattr(m, "height", 8), "expected step"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "expected step"),
        (lambda m: setattr(m, "width", 0), "empty image"),
    ],
)
def test_ros_convert_bad_images_raise_clear_errors(mutate, match):
    msg = _image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ConversionError, match=match):
        image_to_rgb(msg)


def _camera_info() -> CameraInfo:
    info = CameraInfo(width=1242, height=375, distortion_model="plumb_bob")
    info.k = [721.5, 0.0, 609.6, 0.0, 721.5, 172.9, 0.0, 0.0, 1.0]
    info.d = [-0.3, 0.1, 0.0, 0.0, 0.0]
    info.p = [707.0, 0.0, 604.1, 45.8, 0.0, 707.0, 180.5, -0.3, 0.0, 0.0, 1.0, 0.005]
    return info


def test_ros_convert_camera_info_rectified_uses_P_else_K_and_D():
    info = _wire(_camera_info())
    rect = camera_info_to_camera(info, rectified=True)
    assert (rect.width, rect.height, rect.fx, rect.cx, rect.cy) == (1242, 375, 707.0, 604.1, 180.5)
    assert not rect.has_distortion
    raw = camera_info_to_camera(info, rectified=False)
    assert (raw.fx, raw.cx) == (721.5, 609.6)
    np.testing.assert_array_equal(raw.dist, [-0.3, 0.1, 0, 0, 0])


def test_ros_convert_camera_info_binning_and_roi():
    info = _camera_info()
    info.binning_x = info.binning_y = 2
    cam = camera_info_to_camera(info)
    assert (cam.width, cam.height, cam.fx, cam.cx) == (621, 187, 353.5, 302.05)
    info = _camera_info()
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 50, 400, 200
    cam = camera_info_to_camera(info)
    assert (cam.width, cam.height) == (400, 200)
    assert cam.cx == pytest.approx(504.1) and cam.cy == pytest.approx(130.5)


@pytest.mark.parametrize(
    "mutate, rectified, match",
    [
        (lambda m: setattr(m, "p", [0.0] * 12), True, "zero or negative focal"),
        (lambda m: setattr(m, "k", [0.0] * 9), False, "zero or negative focal"),
        (lambda m: setattr(m, "p", [float("nan")] * 12), True, "NaN"),
        (lambda m: setattr(m, "width", 0), True, "not positive"),
        (lambda m: setattr(m, "distortion_model", "equidistant"), False, "'equidistant' is not supported"),
    ],
)
def test_ros_convert_bad_camera_info(mutate, rectified, match):
    info = _camera_info()
    mutate(info)
    with pytest.raises(ConversionError, match=match):
        camera_info_to_camera(info, rectified=rectified)


def test_ros_convert_pointcloud2_roundtrip():
    xyz = np.random.default_rng(1).normal(size=(1000, 3)) * 20
    msg = _wire(xyz_to_pointcloud2(xyz, intensity=np.arange(1000), frame_id="map"))
    assert isinstance(msg, PointCloud2) and msg.width == 1000 and msg.header.frame_id == "map"
    np.testing.assert_allclose(pointcloud2_to_xyz(msg), xyz.astype(np.float32))
    empty = _wire(xyz_to_pointcloud2(np.zeros((0, 3))))
    assert pointcloud2_to_xyz(empty).shape == (0, 3)
    msg.row_step += 4
    with pytest.raises(ConversionError, match="data size"):
        pointcloud2_to_xyz(msg)


def test_ros_convert_pose_and_transform_roundtrip():
    T = np.eye(4)
    T[:3, :3] = rotvec_to_matrix([0.2, -0.5, 1.1])
    T[:3, 3] = [1.0, -2.0, 3.5]
    np.testing.assert_allclose(pose_to_matrix(_wire(matrix_to_pose(T))), T, atol=1e-12)
    np.testing.assert_allclose(pose_to_matrix(matrix_to_transform(T)), T, atol=1e-12)
    bad = matrix_to_pose(T)
    bad.orientation.w = float("nan")
    with pytest.raises(ConversionError, match="NaN"):
        pose_to_matrix(bad)
    bad.orientation.x = bad.orientation.y = bad.orientation.z = bad.orientation.w = 0.0
    with pytest.raises(ConversionError, match="no direction"):
        pose_to_matrix(bad)


def test_ros_convert_compressed_image_png_jpeg_and_bad_data():
    import cv2
    from sensor_msgs.msg import CompressedImage

    from ep2p_loc_ros.ros.convert import compressed_image_to_rgb

    rgb = np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    _, png = cv2.imencode(".png", rgb[..., ::-1])
    msg = CompressedImage(format="rgb8; png compressed bgr8")
    msg.data = png.tobytes()
    np.testing.assert_array_equal(compressed_image_to_rgb(_wire(msg)), rgb)
    _, png16 = cv2.imencode(".png", (rgb[..., 0].astype(np.uint16) << 8))
    msg.data = png16.tobytes()
    np.testing.assert_array_equal(compressed_image_to_rgb(_wire(msg)), np.repeat(rgb[..., :1], 3, axis=2))
    yy, xx = np.mgrid[0:32, 0:48]
    smooth = np.stack([xx * 5, yy * 7, 255 - xx * 5], axis=2).astype(np.uint8)  # JPEG is lossy on noise
    _, jpg = cv2.imencode(".jpg", smooth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    msg.data = jpg.tobytes()
    assert np.abs(compressed_image_to_rgb(_wire(msg)).astype(int) - smooth).mean() < 3
    msg.data = b"not an image"
    with pytest.raises(ConversionError, match="cannot decode 12 bytes"):
        compressed_image_to_rgb(_wire(msg))
    msg.data = b""
    with pytest.raises(ConversionError, match="no data"):
        compressed_image_to_rgb(_wire(msg))


def _imu(R_world_imu: np.ndarray, cov: list[float] | None = None) -> Imu:
    msg = Imu()
    q = matrix_to_quaternion(R_world_imu)
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = (float(c) for c in q)
    if cov is not None:
        msg.orientation_covariance = [float(c) for c in cov]
    return msg


def test_an_imu_message_gives_gravity_in_the_camera_with_its_covariance_or_the_default():
    """The IMU's orientation through the mount is the map's down in the camera; the std is the root of the larger of
    the roll and pitch variances, or the default where the covariance is unknown (zeros)."""
    R_world_imu = rotvec_to_matrix(np.radians([1.5, -2.0, 70.0]))
    R_imu_cam = rotvec_to_matrix(np.radians([-90.0, 0.0, 0.0])) @ rotvec_to_matrix(np.radians([0.0, 90.0, 0.0]))
    T = np.eye(4)
    T[:3, :3] = R_world_imu @ R_imu_cam
    g = imu_to_gravity(_imu(R_world_imu), R_imu_cam.T, 0.001)
    np.testing.assert_allclose(g.down_cam, down_in_camera(T), atol=1e-9)
    assert g.sigma_rad == 0.001
    cov = [4e-6, 0, 0, 0, 9e-6, 0, 0, 0, 1.0]  # roll 0.002 rad, pitch 0.003 rad, yaw poorly known
    assert imu_to_gravity(_imu(R_world_imu, cov), R_imu_cam.T, 0.001).sigma_rad == pytest.approx(0.003)


@pytest.mark.parametrize(
    "cov,quat,match",
    [
        ([-1.0] + [0.0] * 8, None, "gives no orientation"),
        ([np.nan] + [0.0] * 8, None, "finite with variances >= 0"),
        ([0.0] * 4 + [-1e-6] + [0.0] * 4, None, "finite with variances >= 0"),
        (None, (0.0, 0.0, 0.0, 0.0), "quaternion"),
        (None, (np.nan, 0.0, 0.0, 1.0), "quaternion"),
    ],
)
def test_an_imu_message_without_a_usable_orientation_is_refused_by_name(cov, quat, match):
    msg = _imu(np.eye(3), cov)
    if quat is not None:
        msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = quat
    with pytest.raises(ConversionError, match=f"imu: .*{match}"):
        imu_to_gravity(msg, np.eye(3), 0.001)
