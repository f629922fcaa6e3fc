"""``ep2p-loc bag-to-sequence``: a recorded bag becomes a KITTI-layout sequence that build-map takes.

1. Round trip: a sequence written as a bag with its scans (``make-bag --lidar``) comes back with the same images,
   scans, poses and camera, and builds the same map.
2. A recorded-like bag: scans 30 ms after their images, poses at 100 Hz of a turning vehicle, one image without a
   scan and one before the trajectory. The scans, moved to the image stamps, land on the same world points.
3. Bags that cannot be converted are refused with a message that names what is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from test_bags import make_tiny_sequence

from ep2p_loc_ros.cli import main
from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import PinholeCamera, invert, make_T, rotvec_to_matrix, transform_points
from ep2p_loc_ros.ros.bag_to_sequence import bag_to_sequence
from ep2p_loc_ros.ros.bags import sequence_to_bag


def _world(seq: KittiOdometrySequence, i: int) -> np.ndarray:
    return transform_points(seq.T_world_velo(i), seq.scan(i)[:, :3])


def test_round_trip_through_a_bag_keeps_images_scans_poses_and_camera(tmp_path: Path, capsys) -> None:
    src = KittiOdometrySequence(make_tiny_sequence(tmp_path / "seq", n=6))
    sequence_to_bag(src.root, tmp_path / "bag", lidar=True)
    # the tiny sequence's "reflectance" is any number: keep it as it is
    args = ["bag-to-sequence", str(tmp_path / "bag"), str(tmp_path / "out"), "--intensity-scale", "1", "--no-progress"]
    assert main(args) == 0
    assert "6 frames" in capsys.readouterr().out
    out = KittiOdometrySequence(tmp_path / "out")
    assert len(out) == 6
    np.testing.assert_allclose(out.calib.camera.K, src.calib.camera.K)
    for i in range(6):
        np.testing.assert_array_equal(out.image(i), src.image(i))
        np.testing.assert_allclose(out.T_world_cam(i), src.T_world_cam(i), atol=1e-9)
        np.testing.assert_allclose(_world(out, i), _world(src, i), atol=1e-5)
        np.testing.assert_array_equal(out.scan(i)[:, 3], src.scan(i)[:, 3])  # reflectance as it was
    # absolute stamps (s) in float64: ~0.2 µs resolution around 1.7e9 s
    np.testing.assert_allclose(out.times - out.times[0], src.times - src.times[0], atol=1e-6)
    assert not list(tmp_path.glob(".out.partial*"))  # the staging directory is gone


def test_the_map_built_from_the_converted_bag_is_the_sequence_map(tmp_path: Path) -> None:
    from ep2p_loc_ros.map import MapBuildParams, build_map

    src = make_tiny_sequence(tmp_path / "seq", n=6)
    sequence_to_bag(src, tmp_path / "bag", lidar=True)
    bag_to_sequence(tmp_path / "bag", tmp_path / "out")
    params = MapBuildParams(spacing=4.0, radius=20.0, voxel=0.1)
    a = build_map(KittiOdometrySequence(src), params, progress=False)
    b = build_map(KittiOdometrySequence(tmp_path / "out"), params, progress=False)
    assert a.num_points == b.num_points and a.num_submaps == b.num_submaps
    np.testing.assert_allclose(b.T_map_viewpoint, a.T_map_viewpoint, atol=1e-8)
    for k in range(a.num_submaps):
        np.testing.assert_allclose(b.submap(k, features=False).points, a.submap(k, features=False).points, atol=1e-4)


def _vehicle(t: float) -> np.ndarray:
    """T_map_base of a vehicle driving 8 m/s while turning 0.3 rad/s (constant rates: exact to interpolate)."""
    return make_T(rotvec_to_matrix([0.0, 0.0, 0.3 * t]), [8.0 * t, 2.0 * t, 0.1 * t])


def _recorded_bag(path: Path, world: np.ndarray, pose_type: str) -> None:
    """Images at 10 Hz, each scan 30 ms later, poses (``pose_type``) at 100 Hz from t = 0.1 s; an image at t = 0
    (before the poses) and one at t = 0.65 s (no scan near it)."""
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from tf2_msgs.msg import TFMessage

    from ep2p_loc_ros.ros.bags import camera_to_camera_info, stamp_from_ns
    from ep2p_loc_ros.ros.convert import matrix_to_pose, rgb_to_image, xyz_to_pointcloud2
    from ep2p_loc_ros.ros.tf import make_transform_stamped

    T_base_cam = make_T(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [1.5, 0.0, 1.4])
    T_base_velo = make_T(rotvec_to_matrix([0.0, 0.0, 0.2]), [0.3, 0.0, 1.9])
    camera = PinholeCamera.from_params(64, 48, 50.0, 50.0, 31.5, 23.5)
    t0 = 1_800_000_000_000_000_000
    ts = get_typestore(Stores.ROS2_KILTED)
    rng = np.random.default_rng(0)
    msgs: list[tuple[str, int, object]] = []
    for k in range(100):
        t = 0.1 + 0.01 * k
        pose = {"PoseStamped": PoseStamped, "PoseWithCovarianceStamped": PoseWithCovarianceStamped}.get(
            pose_type, Odometry
        )()
        pose.header.stamp, pose.header.frame_id = stamp_from_ns(t0 + round(t * 1e9)), "map"
        if pose_type == "PoseStamped":
            pose.pose = matrix_to_pose(_vehicle(t))
        else:
            pose.pose.pose = matrix_to_pose(_vehicle(t))
        msgs.append(("/slam/pose", t0 + round(t * 1e9), pose))
    for t in [0.0, 0.2, 0.3, 0.4, 0.5, 0.65]:
        stamp = stamp_from_ns(t0 + round(t * 1e9))
        rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        msgs.append(("/cam/info", t0 + round(t * 1e9), camera_to_camera_info(camera, "cam", stamp)))
        msgs.append(("/cam/image_rect", t0 + round(t * 1e9), rgb_to_image(rgb, "bgr8", "cam", stamp)))
        if t in (0.65,):
            continue
        ts_ = t + 0.03
        pts = transform_points(invert(_vehicle(ts_) @ T_base_velo), world)
        scan = xyz_to_pointcloud2(pts, np.full(len(pts), 200.0), "lidar", stamp_from_ns(t0 + round(ts_ * 1e9)))
        msgs.append(("/lidar/points", t0 + round(ts_ * 1e9), scan))
    static = TFMessage(
        transforms=[
            make_transform_stamped(T_base_cam, "base_link", "cam", stamp_from_ns(t0)),
            make_transform_stamped(T_base_velo, "base_link", "lidar", stamp_from_ns(t0)),
        ]
    )
    msgs.append(("/tf_static", t0, static))
    types = {
        "/slam/pose": "nav_msgs/msg/Odometry" if pose_type == "Odometry" else f"geometry_msgs/msg/{pose_type}",
        "/cam/info": "sensor_msgs/msg/CameraInfo",
        "/cam/image_rect": "sensor_msgs/msg/Image",
        "/lidar/points": "sensor_msgs/msg/PointCloud2",
        "/tf_static": "tf2_msgs/msg/TFMessage",
    }
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {topic: w.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in types.items()}
        for topic, t_ns, msg in sorted(msgs, key=lambda m: m[1]):
            w.write(conns[topic], t_ns, serialize_message(msg))


@pytest.mark.parametrize("pose_type", ["PoseStamped", "PoseWithCovarianceStamped", "Odometry"])
def test_a_recorded_bag_with_late_scans_lands_on_the_same_world_points(tmp_path: Path, pose_type: str) -> None:
    world = np.random.default_rng(1).uniform([-20, -20, -2], [40, 40, 8], (300, 3))
    _recorded_bag(tmp_path / "bag", world, pose_type)
    s = bag_to_sequence(
        tmp_path / "bag",
        tmp_path / "seq",
        image_topic="/cam/image_rect",
        camera_info_topic="/cam/info",
        lidar_topic="/lidar/points",
        pose_topic="/slam/pose",
    )
    # 6 images: t = 0 has no pose yet, t = 0.65 s no scan within 50 ms
    assert (s.frames, s.images, s.scans) == (4, 6, 5)
    assert s.skipped == {"no scan within max_dt": 1, "outside the pose trajectory": 1}
    assert s.max_pair_dt_ms == pytest.approx(30.0, abs=1e-3)
    seq = KittiOdometrySequence(tmp_path / "seq")
    T_base_cam = make_T(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [1.5, 0.0, 1.4])
    for i, t in enumerate([0.2, 0.3, 0.4, 0.5]):
        np.testing.assert_allclose(seq.T_world_cam(i), _vehicle(t) @ T_base_cam, atol=1e-9)
        # the scan, moved to the image stamp, is the world seen from there: 30 ms at 8 m/s would be 0.25 m off
        np.testing.assert_allclose(_world(seq, i), world, atol=1e-4)
        np.testing.assert_allclose(seq.scan(i)[:, 3], 200.0 / 255.0, atol=1e-6)  # 8-bit intensity -> [0, 1]
    np.testing.assert_allclose(seq.times[0], 1_800_000_000.2, atol=1e-6)


def test_bags_that_cannot_become_a_sequence_are_refused(tmp_path: Path) -> None:
    src = make_tiny_sequence(tmp_path / "seq", n=3)
    sequence_to_bag(src, tmp_path / "nolidar")
    with pytest.raises(DataError, match="no scans topic '/velodyne_points'; the bag has"):
        bag_to_sequence(tmp_path / "nolidar", tmp_path / "a")
    sequence_to_bag(src, tmp_path / "bag", lidar=True)
    with pytest.raises(DataError, match="pose topic '/odom' must be one of"):
        bag_to_sequence(tmp_path / "bag", tmp_path / "b", pose_topic="/odom")
    with pytest.raises(DataError, match=r"no chassis -> 'camera' \(camera\) transform on /tf_static"):
        bag_to_sequence(tmp_path / "bag", tmp_path / "c", base_frame="chassis")
    (tmp_path / "exists").mkdir()
    with pytest.raises(DataError, match="exists"):
        bag_to_sequence(tmp_path / "bag", tmp_path / "exists")
    with pytest.raises(DataError, match="not a ROS 2 bag"):
        bag_to_sequence(tmp_path / "seq", tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")
