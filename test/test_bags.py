"""make-bag: a KITTI odometry-layout sequence -> ROS 2 bag (MCAP / sqlite3), read back with rclpy and rosbags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence, write_calib, write_poses
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import invert, make_T, rotvec_to_matrix
from ep2p_loc_ros.ros.bags import (
    FRAMES,
    TOPICS,
    bag_frames,
    load_bag_summary,
    read_bag,
    sequence_base_mount,
    sequence_to_bag,
)

W, H = 64, 48


def make_tiny_sequence(root: Path, n: int = 6, sim_mount: bool = True, seed: int = 0) -> Path:
    """A small KITTI odometry-layout sequence: noise images, a few LiDAR points, a curved drive, 10 Hz."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "image_2").mkdir(parents=True)
    (root / "velodyne").mkdir()
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    P = [np.hstack([K, np.array([[tx], [0], [0]])]) for tx in (0.0, -20.0, 2.0, -18.0)]
    T_cam0_velo = make_T(np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float), [0.0, -0.08, -0.27])
    write_calib(root / "calib.txt", P, T_cam0_velo)
    poses = []
    for i in range(n):
        yaw = 0.05 * i
        T_world_base = make_T(rotvec_to_matrix([0, 0, yaw]), [2.0 * i, 0.3 * i * i, 0.0])
        T_base_cam0 = make_T(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [0.27, 0.0, 1.65])
        poses.append(T_world_base @ T_base_cam0)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "image_2" / f"{i:06d}.png")
        rng.normal(size=(10, 4)).astype(np.float32).tofile(root / "velodyne" / f"{i:06d}.bin")
    write_poses(root / "poses.txt", np.stack(poses))
    np.savetxt(root / "times.txt", np.arange(n) * 0.1)
    if sim_mount:
        T_base_velo = make_T(np.eye(3), [0, 0, 1.73])
        (root / "sim.json").write_text(json.dumps({"T_base_velo": T_base_velo.tolist()}))
    return root


@pytest.fixture
def tiny_seq(tmp_path: Path) -> Path:
    return make_tiny_sequence(tmp_path / "seq")


@pytest.mark.parametrize("storage, suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_bag_round_trip(tiny_seq: Path, tmp_path: Path, storage: str, suffix: str) -> None:
    seq = KittiOdometrySequence(tiny_seq)
    out = tmp_path / "bag"
    info = sequence_to_bag(tiny_seq, out, storage=storage)
    assert info.frames == list(range(6))
    assert sorted(p.name for p in out.iterdir()) == sorted(["metadata.yaml", "bag" + suffix])
    assert not list(tmp_path.glob(".bag*")), "staging directory left behind"
    assert info.topics == {
        TOPICS["tf_static"]: 1,
        TOPICS["tf"]: 6,
        TOPICS["camera_info"]: 6,
        TOPICS["image"]: 6,
        TOPICS["ground_truth"]: 6,
    }

    frames = list(bag_frames(out))
    assert len(frames) == 6
    for k, fr in enumerate(frames):
        np.testing.assert_array_equal(fr.rgb, seq.image(k))
        np.testing.assert_allclose(fr.camera.K, seq.calib.camera.K)
        assert (fr.camera.width, fr.camera.height) == (W, H)
        assert fr.stamp_ns == info.stamps_ns[k]
    assert np.diff(info.stamps_ns).tolist() == [100_000_000] * 5

    s = load_bag_summary(out)
    mount = sequence_base_mount(seq)
    np.testing.assert_allclose(s.T_base_cam, mount, atol=1e-9)
    for k in range(6):  # ground truth is base_link in the map; with the mount it is the camera pose
        np.testing.assert_allclose(s.T_map_base_gt[k] @ s.T_base_cam, seq.T_world_cam(k), atol=1e-9)
    # the sim base is on the ground below the LiDAR: the camera sits 1.65 m above it
    assert mount[2, 3] == pytest.approx(1.65, abs=0.01)

    # odometry: odom -> base_link starts at identity and follows the ground truth's relative motion
    odo = [m for t, _, m in read_bag(out, [TOPICS["tf"]])]
    from ep2p_loc_ros.ros.convert import pose_to_matrix

    T0 = pose_to_matrix(odo[0].transforms[0].transform)
    np.testing.assert_allclose(T0, np.eye(4), atol=1e-9)
    T5 = pose_to_matrix(odo[5].transforms[0].transform)
    np.testing.assert_allclose(T5, invert(s.T_map_base_gt[0]) @ s.T_map_base_gt[5], atol=1e-9)
    assert (odo[5].transforms[0].header.frame_id, odo[5].transforms[0].child_frame_id) == (
        FRAMES["odom"],
        FRAMES["base"],
    )


def test_bag_is_standard_ros2(tiny_seq: Path, tmp_path: Path) -> None:
    """Readable without rclpy (rosbags' own Kilted typestore), with type hashes and latched /tf_static QoS."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    out = tmp_path / "bag"
    sequence_to_bag(tiny_seq, out)
    ts = get_typestore(Stores.ROS2_KILTED)
    with Reader(out) as r:
        types = {c.topic: c.msgtype for c in r.connections}
        assert types[TOPICS["image"]] == "sensor_msgs/msg/Image"
        assert types[TOPICS["ground_truth"]] == "geometry_msgs/msg/PoseStamped"
        for c, _, raw in r.messages():
            msg = ts.deserialize_cdr(raw, c.msgtype)
            if c.topic == TOPICS["camera_info"]:
                assert msg.width == W and msg.distortion_model == "plumb_bob"
    meta = (out / "metadata.yaml").read_text()
    assert "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47" in meta  # Image hash
    assert "durability: transient_local" in meta  # transient local for /tf_static (what ros2 bag play offers)


def test_bag_frame_selection_and_lidar_base(tmp_path: Path) -> None:
    seq_dir = make_tiny_sequence(tmp_path / "seq", n=6, sim_mount=False)
    seq = KittiOdometrySequence(seq_dir)
    info = sequence_to_bag(seq_dir, tmp_path / "bag", stride=2, max_frames=2, odometry=False, storage="sqlite3")
    assert info.frames == [0, 2]
    assert TOPICS["tf"] not in info.topics
    s = load_bag_summary(tmp_path / "bag")
    np.testing.assert_allclose(s.T_base_cam, invert(seq.calib.T_cam_velo), atol=1e-9)  # base_link = LiDAR
    assert s.gt_stamps_ns == info.stamps_ns


def test_bag_refuses_bad_input(tiny_seq: Path, tmp_path: Path) -> None:
    out = tmp_path / "bag"
    out.mkdir()
    with pytest.raises(DataError, match="exists"):
        sequence_to_bag(tiny_seq, out)
    with pytest.raises(ValueError, match="storage"):
        sequence_to_bag(tiny_seq, tmp_path / "b2", storage="rosbag1")
    with pytest.raises(DataError, match="outside"):
        sequence_to_bag(tiny_seq, tmp_path / "b3", frames=[0, 9])
    (tiny_seq / "poses.txt").unlink()
    with pytest.raises(DataError, match="poses"):
        sequence_to_bag(tiny_seq, tmp_path / "b4")
    with pytest.raises(DataError, match=r"metadata\.yaml"):
        list(read_bag(tmp_path))


def test_make_bag_cli(tiny_seq: Path, tmp_path: Path, capsys) -> None:
    from ep2p_loc_ros.cli import main

    out = tmp_path / "cli-bag"
    assert main(["make-bag", str(tiny_seq), str(out), "--max-frames", "3", "--no-progress"]) == 0
    assert "3 frames" in capsys.readouterr().out
    assert len(list(bag_frames(out))) == 3
    assert main(["make-bag", str(tiny_seq), str(out)]) == 2  # exists: a clear error, no traceback
