"""KITTI calibration readers and projection on the shipped real frames."""

from pathlib import Path

import numpy as np
import pytest

from ep2p_loc_ros.calib import (
    CalibrationError,
    read_kitti_object_calib,
    read_kitti_odometry_calib,
    read_kitti_raw_calib,
    read_velodyne_bin,
)
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import transform_points

KITTI_OBJECT = Path(__file__).parent / "data" / "kitti_object"


def _obj_calib_text(frame: str = "000000") -> dict[str, str]:
    lines = (KITTI_OBJECT / "calib" / f"{frame}.txt").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip())


def test_kitti_projection_counts_match_published_reference(kitti_frames, kitti_reference):
    """Both pixel conventions reproduce the dataset README's counts exactly."""
    for frame in kitti_frames:
        ref = kitti_reference[frame.frame_id]
        cam = frame.calib.camera
        assert [cam.width, cam.height] == ref["image_size"]
        assert len(frame.scan) == ref["points"]
        proj = cam.project(transform_points(frame.calib.T_cam_velo, frame.scan[:, :3].astype(np.float64)))
        assert int(proj.in_image.sum()) == ref["in_image_round"]
        u, v = proj.uv[:, 0], proj.uv[:, 1]
        floor_count = (proj.depth > 0) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        assert int(floor_count.sum()) == ref["in_image_floor"]


def test_kitti_object_calib_matches_direct_P2_product():
    """T_cam2_velo + K reproduce ``P2 · R0_rect · Tr_velo_to_cam`` (the README's formula)."""
    kv = {k: np.array(v.split(), float) for k, v in _obj_calib_text().items()}
    calib = read_kitti_object_calib(KITTI_OBJECT / "calib" / "000000.txt", (1224, 370))
    R0 = np.eye(4)
    R0[:3, :3] = kv["R0_rect"].reshape(3, 3)
    Tr = np.vstack([kv["Tr_velo_to_cam"].reshape(3, 4), [0, 0, 0, 1]])
    P = kv["P2"].reshape(3, 4) @ R0 @ Tr
    ours = calib.camera.K @ calib.T_cam_velo[:3]
    np.testing.assert_allclose(ours, P, rtol=1e-12, atol=1e-9)
    # cam2 sits ~6 cm left of cam0 along x (KITTI rig): the offset comes from P2's 4th column
    np.testing.assert_allclose(calib.T_cam_velo[0, 3] - Tr[0, 3] * 1, 0.0599, atol=0.005)


def test_kitti_odometry_calib(tmp_path: Path):
    kv = _obj_calib_text()
    # An odometry calib.txt: Tr maps velo directly into the rectified cam0 frame.
    R0 = np.array(kv["R0_rect"].split(), float).reshape(3, 3)
    Tr = np.array(kv["Tr_velo_to_cam"].split(), float).reshape(3, 4)
    Tr_rect = np.hstack([R0 @ Tr[:, :3], (R0 @ Tr[:, 3])[:, None]])
    text = "".join(f"P{i}:{kv[f'P{i}']}\n" for i in range(4)) + "Tr: " + " ".join(map(str, Tr_rect.ravel())) + "\n"
    (tmp_path / "calib.txt").write_text(text)
    odo = read_kitti_odometry_calib(tmp_path / "calib.txt", (1224, 370))
    obj = read_kitti_object_calib(KITTI_OBJECT / "calib" / "000000.txt", (1224, 370))
    np.testing.assert_allclose(odo.T_cam_velo, obj.T_cam_velo, atol=1e-6)
    np.testing.assert_allclose(odo.camera.K, obj.camera.K)


def test_kitti_raw_calib(tmp_path: Path):
    kv = _obj_calib_text()
    Tr = np.array(kv["Tr_velo_to_cam"].split(), float).reshape(3, 4)
    (tmp_path / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\ncorner_dist: 9.950000e-02\n"
        f"S_rect_02: 1.242000e+03 3.750000e+02\nR_rect_00:{kv['R0_rect']}\nP_rect_02:{kv['P2']}\n"
    )
    (tmp_path / "calib_velo_to_cam.txt").write_text(
        "calib_time: 15-Mar-2012 11:37:16\nR: "
        + " ".join(map(str, Tr[:, :3].ravel()))
        + "\nT: "
        + " ".join(map(str, Tr[:, 3]))
        + "\ndelta_f: 0 0\ndelta_c: 0 0\n"
    )
    raw = read_kitti_raw_calib(tmp_path / "calib_cam_to_cam.txt", tmp_path / "calib_velo_to_cam.txt")
    obj = read_kitti_object_calib(KITTI_OBJECT / "calib" / "000000.txt", (1242, 375))
    assert (raw.camera.width, raw.camera.height) == (1242, 375)
    np.testing.assert_allclose(raw.T_cam_velo, obj.T_cam_velo, atol=1e-12)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda kv: kv.pop("R0_rect"), "missing key 'R0_rect'"),
        (lambda kv: kv.update(P2=" 1 2 3"), "'P2' needs 12 numbers, got 3"),
        (lambda kv: kv.update(Tr_velo_to_cam=" nan" * 12), "'Tr_velo_to_cam' contains NaN"),
        (lambda kv: kv.update(Tr_velo_to_cam=" 2" * 12), "not a rigid transform"),
        (lambda kv: kv.update(P2=" 0" * 12), "'P2'"),
    ],
)
def test_kitti_calib_malformed_names_file_and_key(tmp_path: Path, edit, match):
    kv = _obj_calib_text()
    edit(kv)
    path = tmp_path / "bad.txt"
    path.write_text("".join(f"{k}:{v}\n" for k, v in kv.items()))
    with pytest.raises(CalibrationError, match=match) as info:
        read_kitti_object_calib(path, (100, 100))
    assert str(path) in str(info.value)


def test_kitti_calib_missing_or_garbage_file(tmp_path: Path):
    with pytest.raises(CalibrationError, match="cannot read"):
        read_kitti_object_calib(tmp_path / "nope.txt", (10, 10))
    (tmp_path / "junk.txt").write_text("this is not a calibration\n")
    with pytest.raises(CalibrationError, match=r"junk\.txt:1: expected 'KEY: values'"):
        read_kitti_object_calib(tmp_path / "junk.txt", (10, 10))


def test_kitti_velodyne_reader(tmp_path: Path):
    scan = read_velodyne_bin(KITTI_OBJECT / "velodyne" / "000000.bin")
    assert scan.dtype == np.float32 and scan.shape == (115384, 4)
    assert scan[:, 3].min() >= 0.0 and scan[:, 3].max() <= 1.0  # reflectance
    assert np.linalg.norm(scan[:, :3], axis=1).max() < 130.0  # HDL-64E range
    (tmp_path / "trunc.bin").write_bytes(b"\0" * 18)
    with pytest.raises(DataError, match=r"trunc\.bin: size 18 bytes is not a multiple of 16"):
        read_velodyne_bin(tmp_path / "trunc.bin")
