"""SE(3), rotations, quaternions (ROS order) and the pinhole camera."""

import numpy as np
import pytest

from ep2p_loc_ros.geometry import (
    CameraError,
    PinholeCamera,
    best_distinct,
    invert,
    lever_jacobian,
    make_T,
    matrix_to_quaternion,
    matrix_to_rotvec,
    moved_in_view,
    pose_add,
    pose_difference,
    quaternion_to_matrix,
    rotation_angle_deg,
    rotvec_to_matrix,
    symmetric_offsets,
    transform_points,
)


def _random_T(rng: np.random.Generator) -> np.ndarray:
    return make_T(rotvec_to_matrix(rng.normal(size=3)), rng.normal(size=3) * 5)


def test_geometry_invert_and_compose_roundtrip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T = _random_T(rng)
        np.testing.assert_allclose(T @ invert(T), np.eye(4), atol=1e-12)
        pts = rng.normal(size=(10, 3))
        np.testing.assert_allclose(transform_points(invert(T), transform_points(T, pts)), pts, atol=1e-12)


def test_moved_in_view_moves_along_the_cameras_own_axes_without_turning_it():
    T = _random_T(np.random.default_rng(3))
    moved = moved_in_view(T, [2.0, -1.5, 0.0], [0.5, 0.0, -3.0])
    assert moved.shape == (3, 4, 4)
    for P, want in zip(moved, ([0.5, 0.0, 2.0], [0.0, 0.0, -1.5], [-3.0, 0.0, 0.0]), strict=True):
        np.testing.assert_allclose(P[:3, :3], T[:3, :3])  # not turned
        # the moved camera's centre, seen from the original camera: sideways (x) and along the optical axis (z)
        np.testing.assert_allclose(transform_points(invert(T), P[None, :3, 3])[0], want, atol=1e-12)
    np.testing.assert_allclose(moved_in_view(T, 1.0)[0][:3, 3], T[:3, 3] + T[:3, 2])  # a scalar, no sideways move


def test_symmetric_offsets_reach_either_way_in_whole_steps():
    np.testing.assert_allclose(symmetric_offsets(2.5, 0.5), np.arange(-5, 6) * 0.5)
    np.testing.assert_allclose(symmetric_offsets(1.0, 0.3), [-0.9, -0.6, -0.3, 0.0, 0.3, 0.6, 0.9])
    np.testing.assert_allclose(symmetric_offsets(0.9, 0.3), [-0.9, -0.6, -0.3, 0.0, 0.3, 0.6, 0.9])  # (float-safe)
    for reach, step in ((0.0, 0.5), (2.0, 0.0)):
        np.testing.assert_array_equal(symmetric_offsets(reach, step), [0.0])


def test_best_distinct_keeps_the_best_poses_apart_in_place_or_in_heading():
    """Four poses crowd one peak, one is 1 m away, one turned 20 deg in place; NaN never counts."""
    from ep2p_loc_ros.pose_hypotheses import turned_by

    T = _random_T(np.random.default_rng(4))
    near = moved_in_view(T, [0.0, 0.2, 0.0, -0.3, 1.0], [0.0, 0.0, 0.3, 0.0, 0.0])
    poses = np.concatenate([near, turned_by(T, [20.0]), T[None]])
    values = [5.0, 4.0, 3.5, 3.0, 2.0, 1.0, np.nan]
    assert best_distinct(poses, values, 10, 0.5, 10.0) == [0, 4, 5]
    assert best_distinct(poses, values, 2, 0.5, 10.0) == [0, 4]
    assert best_distinct(poses, values, 10, 0.5, 30.0) == [0, 4]  # the turn is within 30 deg: alike
    assert best_distinct(poses, values, 10, 0.1, 10.0) == [0, 1, 2, 3, 4, 5]
    assert best_distinct(poses, values, 0, 0.5, 10.0) == []
    assert best_distinct(poses, None, 10, 0.5, 10.0) == [0, 4, 5]  # in the order given
    assert best_distinct(poses[::-1], None, 10, 0.5, 10.0) == [0, 1, 2]  # T, its turn, the pose 1 m away


def test_geometry_rotvec_matrix_roundtrip_including_near_pi_and_zero():
    rng = np.random.default_rng(1)
    vecs = [np.zeros(3), np.array([1e-10, 0, 0]), np.array([0, 0, np.pi - 1e-7])]
    vecs += [rng.normal(size=3) for _ in range(50)]
    for v in vecs:
        R = rotvec_to_matrix(v)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(rotvec_to_matrix(matrix_to_rotvec(R)), R, atol=1e-9)


def test_geometry_quaternion_is_ros_order_xyzw():
    # 90 degrees about z: ROS (x, y, z, w) = (0, 0, sin 45, cos 45)
    R = rotvec_to_matrix([0, 0, np.pi / 2])
    np.testing.assert_allclose(matrix_to_quaternion(R), [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix([0, 0, np.sqrt(0.5), np.sqrt(0.5)]), R, atol=1e-12)
    rng = np.random.default_rng(2)
    for _ in range(50):
        R = rotvec_to_matrix(rng.normal(size=3) * 2)
        q = matrix_to_quaternion(R)
        assert q[3] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-12)
    with pytest.raises(ValueError, match="no direction"):
        quaternion_to_matrix([0, 0, 0, 0])


def test_geometry_rotation_angle():
    assert rotation_angle_deg(rotvec_to_matrix([0.3, 0, 0])) == pytest.approx(np.degrees(0.3))
    assert rotation_angle_deg(np.eye(3)) == 0.0


def test_geometry_camera_projection_pixels_depth_and_mask():
    cam = PinholeCamera.from_params(100, 50, fx=100.0, fy=100.0, cx=49.5, cy=24.5)
    pts = np.array([[0.0, 0.0, 2.0], [1.0, 0.5, 2.0], [0.0, 0.0, -1.0], [10.0, 0.0, 1.0], [-0.495, 0, 1.0]])
    proj = cam.project(pts)
    np.testing.assert_allclose(proj.uv[0], [49.5, 24.5])
    np.testing.assert_allclose(proj.uv[1], [99.5, 49.5])  # just past the last pixel centre + 0.5 -> outside
    np.testing.assert_allclose(proj.depth, pts[:, 2])
    assert proj.in_image.tolist() == [True, False, False, False, True]
    assert np.isnan(proj.uv[2]).all()  # behind the camera: no pixel
    assert proj.pixel_index()[4].tolist() == [0, 25]  # u=0.005 -> column 0; v=24.5 -> row 25 ([24.5, 25.5))
    assert proj.pixel_index()[2].tolist() == [-1, -1]  # no pixel behind the camera


def test_geometry_camera_distortion_matches_opencv_and_undistorts():
    cv2 = pytest.importorskip("cv2")
    K = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])
    dist = np.array([-0.3, 0.1, 0.001, -0.002, 0.01])
    cam = PinholeCamera(1200, 360, K, dist)
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(-3, 3, 200), rng.uniform(-1, 1, 200), rng.uniform(4, 30, 200)])
    ours = cam.project(pts).uv
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, dist)
    np.testing.assert_allclose(ours, ref.reshape(-1, 2), atol=1e-6)
    ideal = cam.without_distortion().project(pts).uv
    np.testing.assert_allclose(cam.undistort_pixels(ours), ideal, atol=1e-3)


def test_geometry_camera_scaled_keeps_pixel_centres():
    cam = PinholeCamera.from_params(1240, 376, 718.0, 718.0, 607.0, 185.0)
    half = cam.scaled(0.5)
    pts = np.array([[1.0, 0.2, 10.0], [-3.0, 1.0, 20.0]])
    np.testing.assert_allclose(half.project(pts).uv, (cam.project(pts).uv + 0.5) * 0.5 - 0.5, atol=1e-9)
    assert (half.width, half.height) == (620, 188)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"K": np.zeros((3, 3))}, "focal"),
        ({"K": np.full((3, 3), np.nan)}, "NaN"),
        ({"K": np.eye(2)}, "3x3"),
        ({"width": 0}, "size"),
        ({"dist": np.zeros(3)}, "coefficients"),
    ],
)
def test_geometry_camera_rejects_bad_intrinsics(kwargs, match):
    args = {"width": 10, "height": 10, "K": np.diag([5.0, 5.0, 1.0])} | kwargs
    with pytest.raises(CameraError, match=match):
        PinholeCamera(**args)


def test_pose_add_and_pose_difference_are_inverse_and_follow_the_covariance_convention():
    """Position moves in the parent frame, rotation is a small rotation about the parent's fixed axes (pnp.py's
    covariance convention); ``lever_jacobian`` moves such a perturbation to a frame rigidly attached ``d`` away."""
    rng = np.random.default_rng(7)
    A, B = _random_T(rng), _random_T(rng)
    np.testing.assert_allclose(pose_add(B, pose_difference(A, B)), A, atol=1e-12)
    d = np.r_[rng.normal(size=3), 0.3 * rng.normal(size=3)]
    np.testing.assert_allclose(pose_difference(pose_add(B, d), B), d, atol=1e-12)
    moved = pose_add(B, d)
    np.testing.assert_allclose(moved[:3, 3], B[:3, 3] + d[:3], atol=1e-12)
    np.testing.assert_allclose(moved[:3, :3], rotvec_to_matrix(d[3:]) @ B[:3, :3], atol=1e-12)
    # a small perturbation of B carries a frame attached at offset o (parent axes) by J = lever_jacobian(o)
    o = rng.normal(size=3)
    small = 1e-6 * rng.normal(size=6)
    child_before = B.copy()  # the attached frame: B's rotation, origin moved by o in the parent frame
    child_before[:3, 3] = B[:3, 3] + o
    child_after = pose_add(B, small)
    child_after[:3, 3] += child_after[:3, :3] @ B[:3, :3].T @ o
    np.testing.assert_allclose(pose_difference(child_after, child_before), lever_jacobian(o) @ small, atol=1e-11)
