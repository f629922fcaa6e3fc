"""The KITTI odometry-layout reader/writer that real and synthetic sequences share."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from ep2p_loc_ros.calib import read_kitti_object_calib
from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence, read_poses, write_calib, write_poses
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import invert, make_T, rotvec_to_matrix

KITTI_OBJECT = Path(__file__).parent / "data" / "kitti_object"


def _make_sequence(root: Path, n: int = 3) -> np.ndarray:
    """A sequence from the real frame 000001 repeated along a straight drive; returns T_world_cam0."""
    for d in ("image_2", "velodyne"):
        (root / d).mkdir(parents=True)
    obj = KITTI_OBJECT / "calib" / "000001.txt"
    kv = {
        k: np.array(v.split(), float)
        for k, v in (line.split(":", 1) for line in obj.read_text().splitlines() if line.strip())
    }
    R0 = make_T(kv["R0_rect"].reshape(3, 3), np.zeros(3))
    Tr = R0 @ np.vstack([kv["Tr_velo_to_cam"].reshape(3, 4), [0, 0, 0, 1]])
    write_calib(root / "calib.txt", [kv[f"P{i}"].reshape(3, 4) for i in range(4)], Tr)
    poses = np.stack([make_T(rotvec_to_matrix([0, 0.01 * i, 0]), [0, 0, 1.5 * i]) for i in range(n)])
    write_poses(root / "poses.txt", poses)
    (root / "times.txt").write_text("".join(f"{0.1 * i:.6f}\n" for i in range(n)))
    for i in range(n):
        shutil.copy(KITTI_OBJECT / "image_2" / "000001.png", root / "image_2" / f"{i:06d}.png")
        shutil.copy(KITTI_OBJECT / "velodyne" / "000001.bin", root / "velodyne" / f"{i:06d}.bin")
    return poses


def test_kitti_odometry_sequence_roundtrip(tmp_path: Path):
    poses = _make_sequence(tmp_path)
    seq = KittiOdometrySequence(tmp_path)
    assert len(seq) == 3 and seq.image_size == (1242, 375)
    np.testing.assert_allclose(read_poses(tmp_path / "poses.txt"), poses, atol=1e-9)
    obj = read_kitti_object_calib(KITTI_OBJECT / "calib" / "000001.txt", (1242, 375))
    np.testing.assert_allclose(seq.calib.T_cam_velo, obj.T_cam_velo, atol=1e-9)
    np.testing.assert_allclose(seq.calib.camera.K, obj.camera.K)
    # Camera 2 pose = cam0 pose composed with the cam0 -> cam2 offset (about 6 cm along x).
    T = seq.T_world_cam(1)
    np.testing.assert_allclose(invert(poses[1]) @ T, seq.T_cam0_velo @ invert(seq.calib.T_cam_velo), atol=1e-9)
    assert np.linalg.norm(T[:3, 3] - poses[1][:3, 3]) == pytest.approx(0.06, abs=0.01)
    assert seq.image(2).shape == (375, 1242, 3) and seq.scan(0).shape == (120268, 4)
    np.testing.assert_allclose(seq.times, [0.0, 0.1, 0.2])


def test_kitti_odometry_rejects_inconsistent_sequences(tmp_path: Path):
    _make_sequence(tmp_path)
    (tmp_path / "velodyne" / "000002.bin").unlink()
    with pytest.raises(DataError, match="3 images but 2 scans"):
        KittiOdometrySequence(tmp_path)
    (tmp_path / "image_2" / "000002.png").unlink()
    (tmp_path / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(DataError, match="1 poses for 2 frames"):
        KittiOdometrySequence(tmp_path)
    (tmp_path / "poses.txt").write_text("1 0 0\n")
    with pytest.raises(DataError, match="12 numbers"):
        KittiOdometrySequence(tmp_path)
    with pytest.raises(DataError, match="no image_2"):
        KittiOdometrySequence(tmp_path / "nothing")
