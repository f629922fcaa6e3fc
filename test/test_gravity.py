"""Gravity from an IMU: the camera's roll and pitch as a prior of the reflectance alignment."""

from __future__ import annotations

import numpy as np
import pytest
from test_reflectance_alignment import CAM, _corridor_hits, _paint  # the street the alignment's tests see

from ep2p_loc_ros.geometry import make_T, matrix_to_rotvec, rotvec_to_matrix, transform_points
from ep2p_loc_ros.gravity import GravityPrior, down_in_camera
from ep2p_loc_ros.reflectance_alignment import AlignmentConfig, align_to_reflectance, prepare_alignment_image

# the camera's optical frame (x right, y down, z forward) in a map with z up, looking along the map's x
R_MAP_OPT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _quat_xyzw(R: np.ndarray) -> np.ndarray:
    """A unit quaternion of ``R`` (w > 0 branch; the test's rotations are far from 180 deg)."""
    w = np.sqrt(max(1.0 + np.trace(R), 1e-12)) / 2
    return np.array([(R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w), w])


def test_gravity_from_an_imu_is_the_maps_down_in_the_camera_through_the_mount():
    """An IMU on the car's body (x forward, z up) rolled 2 deg and pitched 3 deg, yawed 40 deg, and a camera on it
    through a mount: the down it gives in the camera is the map's -z where the camera really is."""
    R_world_imu = rotvec_to_matrix(np.radians([0, 0, 40.0])) @ rotvec_to_matrix(np.radians([2.0, 3.0, 0.0]))
    R_imu_cam = rotvec_to_matrix(np.radians([0.5, -1.0, 0.3])) @ R_MAP_OPT  # the mount: optical frame in the body
    T_map_cam = make_T(R_world_imu @ R_imu_cam, [10.0, -3.0, 1.7])
    prior = GravityPrior.from_imu(_quat_xyzw(R_world_imu), R_imu_cam.T, np.radians(0.05))
    np.testing.assert_allclose(prior.down_cam, down_in_camera(T_map_cam), atol=1e-12)
    assert prior.tilt_error(T_map_cam) < 1e-7
    # the IMU's yaw says nothing of the tilt: the same down whatever the heading
    turned = rotvec_to_matrix(np.radians([0, 0, -75.0])) @ R_world_imu
    np.testing.assert_allclose(GravityPrior.from_imu(_quat_xyzw(turned), R_imu_cam.T, 0.01).down_cam, prior.down_cam)
    # a quaternion not normalised is normalised, as ROS drivers' rounding needs
    again = GravityPrior.from_imu(3 * _quat_xyzw(R_world_imu), R_imu_cam.T, 0.01)
    np.testing.assert_allclose(again.down_cam, prior.down_cam, atol=1e-12)


def test_a_pose_levelled_to_gravity_keeps_its_place_and_turns_least():
    R = rotvec_to_matrix(np.radians([0, 0, 25.0])) @ R_MAP_OPT
    truth = make_T(R, [4.0, 5.0, 1.65])
    prior = GravityPrior(down_in_camera(truth), np.radians(0.05))
    start = make_T(R @ rotvec_to_matrix(np.radians([1.2, 3.0, -0.8])), [4.5, 5.2, 1.9])  # pitch, yaw and roll off
    level = prior.levelled(start)
    assert prior.tilt_error(start) > np.radians(1.0) and prior.tilt_error(level) < 1e-9
    np.testing.assert_array_equal(level[:3, 3], start[:3, 3])
    turn = np.degrees(np.linalg.norm(matrix_to_rotvec(start[:3, :3].T @ level[:3, :3])))
    assert turn == pytest.approx(np.degrees(prior.tilt_error(start)), abs=1e-9)  # no more than the tilt's error
    np.testing.assert_array_equal(prior.levelled(level), level)  # a level pose stays as it is


@pytest.mark.parametrize(
    "down,sigma",
    [([0.0, 0.0, 0.0], 0.01), ([np.nan, 1.0, 0.0], 0.01), ([0.0, 1.0], 0.01), ([0, 1, 0], 0.0), ([0, 1, 0], np.nan)],
)
def test_a_gravity_prior_refuses_what_no_imu_measures(down, sigma):
    with pytest.raises(ValueError, match="gravity"):
        GravityPrior(np.array(down, dtype=float), sigma)


def test_an_imu_orientation_must_be_a_quaternion():
    with pytest.raises(ValueError, match="quaternion"):
        GravityPrior.from_imu(np.zeros(4), np.eye(3), 0.01)
    with pytest.raises(ValueError, match="R_cam_imu"):
        GravityPrior.from_imu(np.array([0, 0, 0, 1.0]), np.full((3, 3), np.nan), 0.01)


@pytest.fixture(scope="module")
def street():
    """test_reflectance_alignment's street in a map with z up (road 1.6 m below the camera, facades 5 m either side,
    painted in 0.5 m cells) and the image the camera at ``truth`` takes, rendered by ray casting in its own frame."""
    rng = np.random.default_rng(3)
    truth = make_T(R_MAP_OPT, [0.0, 0.0, 1.6])
    g = np.arange(0.05, 40.0, 0.1)
    road = np.stack(np.meshgrid(np.arange(-5, 5, 0.1), [1.6], g), -1).reshape(-1, 3)
    side = np.stack(np.meshgrid([5.0], np.arange(-4, 1.6, 0.1), g), -1).reshape(-1, 3)
    local = np.concatenate([road, side, side * [-1, 1, 1]])
    reflectance = 0.1 + 0.8 * _paint(local)
    v, u = np.mgrid[0 : CAM.height, 0 : CAM.width]
    dirs = np.stack([(u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy, np.ones(u.shape)], -1)
    grey = 255 * (0.2 + 0.7 * _paint(_corridor_hits(dirs))) + rng.normal(0, 3, u.shape)
    rgb = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return transform_points(truth, local), reflectance, rgb, truth


def _tilted(truth: np.ndarray, deg: list[float]) -> np.ndarray:
    """``truth`` turned about its own x (pitch) and z (roll) axes, in place."""
    return truth @ make_T(rotvec_to_matrix(np.radians(deg)), np.zeros(3))


def test_the_alignment_keeps_near_the_tilt_an_imu_measured_as_firmly_as_it_says(street):
    """From a start 1 m ahead, pitched 0.8 deg and rolled 0.5 deg: without gravity the image alone brings the pose
    back; with gravity measured 0.6 deg off the truth the pose keeps that tilt when the IMU says it is good to
    0.005 deg, and follows the image when it says 5 deg; measured right, the start is levelled and the pose ends
    at the truth."""
    points, refl, rgb, truth = street
    cfg = AlignmentConfig()
    start = _tilted(truth, [0.8, 0.0, 0.5]) @ make_T(np.eye(3), [0.0, 0.0, 1.0])
    wrong = GravityPrior(down_in_camera(_tilted(truth, [0.6, 0.0, 0.0])), np.radians(0.005))

    def aligned(prior: GravityPrior | None) -> np.ndarray:
        image = prepare_alignment_image(rgb, CAM, cfg, gravity=prior)
        res = align_to_reflectance(rgb, CAM, points, refl, start, cfg, image=image)
        assert res.ok, res.message
        return res.T_map_cam

    alone = aligned(None)
    assert np.degrees(wrong.tilt_error(alone)) > 0.45  # (the truth is 0.6 deg from the wrong gravity)
    assert np.degrees(GravityPrior(down_in_camera(truth), 1.0).tilt_error(alone)) < 0.2
    firm = aligned(wrong)
    assert np.degrees(wrong.tilt_error(firm)) < 0.05
    loose = aligned(GravityPrior(wrong.down_cam, np.radians(5.0)))
    assert np.degrees(wrong.tilt_error(loose)) > 0.45
    right = aligned(GravityPrior(down_in_camera(truth), np.radians(0.05)))
    assert np.linalg.norm(right[:3, 3] - truth[:3, 3]) < 0.25
    assert np.degrees(GravityPrior(down_in_camera(truth), 1.0).tilt_error(right)) < 0.05


def test_the_localizer_gives_its_alignment_the_imus_gravity(demo_data):
    """The real Localizer on the demo drive's single images: given gravity 0.5 deg off the truth with a std of
    0.005 deg, every aligned pose keeps that tilt (the frame's hypotheses and rescue all get it); without gravity, or
    on a map whose environment is not among ``gravity_environments``, the image puts them near the true tilt, far from
    that one."""
    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig

    seq = KittiOdometrySequence(demo_data.sequence_dir)
    loc = Localizer.from_paths(demo_data.map_dir, demo_data.model_dir)
    config = LocalizerConfig.from_dict({"alignment": {"gravity_environments": ["indoor"]}})
    indoor_only = Localizer.from_paths(demo_data.map_dir, demo_data.model_dir, config)
    assert loc.map_environment == "outdoor"
    try:
        for i in (5, 20):
            truth = seq.T_world_cam(i)
            wrong = GravityPrior(down_in_camera(_tilted(truth, [0.5, 0.0, 0.0])), np.radians(0.005))
            alone = loc.localize(seq.image(i), seq.calib.camera)
            kept = loc.localize(seq.image(i), seq.calib.camera, gravity=wrong)
            assert alone.ok and alone.aligned and kept.ok and kept.aligned, (alone.message, kept.message)
            assert np.degrees(wrong.tilt_error(alone.T_map_cam)) > 0.3
            assert np.degrees(wrong.tilt_error(kept.T_map_cam)) < 0.05
            ignored = indoor_only.localize(seq.image(i), seq.calib.camera, gravity=wrong)
            np.testing.assert_array_equal(ignored.T_map_cam, alone.T_map_cam)
    finally:
        loc.close()
        indoor_only.close()
