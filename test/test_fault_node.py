"""Faults around the ep2p_loc node, each over real DDS: the node keeps running, publishes no wrong pose, and
/diagnostics says what is wrong.

- With :class:`ros_helpers.OracleLocalizer` (the node's own behaviour, independent of the model): camera_info
  never arrives; the TF of the camera mount is missing (then arrives); the camera stops and resumes; the IMU's
  gravity is used, late, or without an orientation.

The real Localizer's faults (CUDA failing, leaving the map, an empty submap) are in test_fault_model_node.py.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not generated (scripts/build_tf2_msgs.sh)")

import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, Imu
from tf2_msgs.msg import TFMessage

T0 = 5000.0


class Harness:
    def __init__(self, proc, ros, lc):
        self.proc, self.ros, self.lc = proc, ros, lc
        n = self.ros.node
        self.poses = self.ros.collect(PoseWithCovarianceStamped, "/ep2p_loc/pose")
        self.diags = self.ros.collect(DiagnosticArray, "/diagnostics")
        self.img_pub = n.create_publisher(Image, "/cam/image_raw", qos_profile_sensor_data)
        self.info_pub = n.create_publisher(CameraInfo, "/cam/camera_info", qos_profile_sensor_data)
        self.static_pub = n.create_publisher(
            TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        )
        self.init_pub = n.create_publisher(PoseWithCovarianceStamped, "/initialpose", 1)
        self.imu_pub = n.create_publisher(Imu, "/vehicle/imu", qos_profile_sensor_data)

    def send(self, image_msg, info_msg=None, timeout: float = 20.0):
        """(diagnostics values of this frame, pose msg or None)."""
        _, got, pose = rh.send_frame(
            self.ros, self.img_pub, self.info_pub, self.diags, self.poses, image_msg, info_msg, timeout, settle=0.05
        )
        return (rh.diag_values(got[1]) if got else None), (pose[1] if pose else None)

    def close(self):
        self.ros.close()
        rc = self.proc.stop()
        log = self.proc.log()
        assert rc == 0 and "Traceback" not in log, log


REMAPS = {"image": "/cam/image_raw", "camera_info": "/cam/camera_info", "imu": "/vehicle/imu"}


@pytest.fixture(scope="module")
def oracle(demo_data, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("fault_oracle")
    h = Harness(
        *rh.connect_node(
            lambda: rh.start_node(
                {
                    "map_path": str(demo_data.map_dir),
                    "image_timeout_s": 0.5,
                    "diagnostics_period": 0.2,
                    "imu.enabled": True,
                },
                remaps=REMAPS,
                oracle_sequence=demo_data.sequence_dir,
                log_dir=log_dir,
            ),
            "ep2p_fault_oracle_test",
        )
    )
    proc = h.proc
    try:
        assert h.lc.configure() and h.lc.activate(), proc.log()
        assert rh.wait_connected(h.ros, h.img_pub, h.diags), proc.log()
        yield h
    finally:
        h.close()


def _stamp(demo, i: int, offset: float = 0.0):
    return rh.stamp_msg(T0 + offset + float(demo.seq.times[i]))


def test_fault_camera_info_never_arrives(oracle, demo):
    for i in (0, 1, 2):
        diag, pose = oracle.send(demo.image_msg(i, _stamp(demo, i)))
        assert diag is not None and pose is None, diag
        assert diag["result"] == "bad input" and diag["level"] == "1", diag
        assert "no camera_info received yet on /cam/camera_info" in diag["reason"], diag
    assert oracle.proc.alive and oracle.lc.get_state() == "active"


def test_fault_camera_mount_tf_missing_publishes_no_pose_until_it_arrives(oracle, demo):
    for i in (3, 4):
        diag, pose = oracle.send(demo.image_msg(i, _stamp(demo, i)), demo.camera_info_msg())
        assert pose is None, "a camera pose where base_link's is expected would be a wrong pose"
        assert diag["result"] == "no pose" and diag["level"] == "2", diag
        assert "camera mount base_link->camera2_optical unknown" in diag["reason"], diag
    oracle.static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
    time.sleep(0.5)
    diag, pose = oracle.send(demo.image_msg(5, _stamp(demo, 5)), demo.camera_info_msg())
    assert diag["result"] == "localized" and diag["pose_of"] == "base_link" and pose is not None, diag


def test_fault_camera_stops_and_resumes(oracle, demo):
    diag, pose = oracle.send(demo.image_msg(6, _stamp(demo, 6)), demo.camera_info_msg())
    assert pose is not None
    n = len(oracle.diags.messages())

    def stale_reports() -> list[dict]:
        return [v for m in oracle.diags.messages()[n:] if (v := rh.diag_values(m)) and v.get("result") == "stale"]

    # the camera stops: image_timeout_s is 0.5 s, diagnostics every 0.2 s. Waited for rather than slept on: a
    # loaded CI host once delivered a single diagnostic in a fixed 1.5 s sleep.
    stale = oracle.ros.wait_for(stale_reports, timeout=10.0)
    assert stale, [rh.diag_values(m) for m in oracle.diags.messages()[n:]]
    assert stale[-1]["level"] == "1" and "no image for" in stale[-1]["message"]
    assert "/cam/image_raw" in stale[-1]["message"] and "camera stopped" in stale[-1]["message"]
    assert float(stale[-1]["image_age_s"]) > 0.5
    # it resumes: localized again (tracking and the gate pick up), and the warnings stop
    for i in (7, 8):
        sent = time.monotonic()
        diag, pose = oracle.send(demo.image_msg(i, _stamp(demo, i)), demo.camera_info_msg())
        assert diag["result"] == "localized" and pose is not None, diag
    n = len(oracle.diags.messages())
    time.sleep(0.3)
    # The old warning must not go on: its age counted from image 6 would exceed the time since image 8 was sent by the
    # whole stop. A loaded host can take over 0.5 s from image 8's arrival to the end of the sleep (CI once did), and
    # then reports a new, short, timeout, which is right.
    since_resumed = time.monotonic() - sent
    late = [v for m in oracle.diags.messages()[n:] if (v := rh.diag_values(m)) and v.get("result") == "stale"]
    assert all(float(v["image_age_s"]) <= since_resumed + 0.05 for v in late), (since_resumed, late)
    assert oracle.proc.alive


def test_the_imus_gravity_goes_with_each_image_and_is_left_out_when_late_or_without_orientation(oracle, demo):
    """An IMU on base_link (the mount on /tf_static): a message at the image's stamp gives the localizer gravity
    (its std from imu.sigma_deg where the covariance is unknown); one 0.5 s off, or one whose orientation_covariance
    says it has no orientation, gives none, and /diagnostics says why. The frame is localized either way."""
    from ep2p_loc_ros.geometry import matrix_to_quaternion

    oracle.static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))

    def imu(i: int, offset: float = 0.0, no_orientation: bool = False) -> Imu:
        msg = Imu()
        msg.header.stamp, msg.header.frame_id = _stamp(demo, i, offset), "base_link"
        x, y, z, w = matrix_to_quaternion(demo.T_map_base(i)[:3, :3])
        msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = (
            float(x),
            float(y),
            float(z),
            float(w),
        )
        if no_orientation:
            msg.orientation_covariance[0] = -1.0
        return msg

    # frames a second apart, so that the nearest message to each image is the one sent with it
    expected = {
        12: "imu, 0.05 deg (base_link)",
        22: "none: imu: orientation_covariance[0] is -1: the IMU gives no orientation",
        32: "none: the nearest IMU message is 0.500 s from the image (> imu.max_age_s)",
    }
    for i, msg in ((12, imu(12)), (22, imu(22, no_orientation=True)), (32, imu(32, offset=-0.5))):
        oracle.imu_pub.publish(msg)
        time.sleep(0.2)
        diag, pose = oracle.send(demo.image_msg(i, _stamp(demo, i)), demo.camera_info_msg())
        assert diag["result"] == "localized" and pose is not None, diag
        assert diag["gravity"] == expected[i], diag
    assert oracle.proc.alive and oracle.lc.get_state() == "active"


def test_the_nodes_gravity_is_off_left_out_on_maps_without_it_or_the_imus_own():
    """The node's choice of gravity for a frame, without DDS: off unless imu.enabled; not used on a map whose
    environment the localizer leaves it out on (indoors), and /diagnostics says so; else the message's own."""
    from types import SimpleNamespace

    import numpy as np

    from ep2p_loc_ros.ros.node import LocalizationNode
    from ep2p_loc_ros.ros.params import params_from_values

    stamp = rh.stamp_msg(7.0)
    on = params_from_values({"map_path": "/m", "imu.enabled": True})
    node = SimpleNamespace(
        params=params_from_values({"map_path": "/m"}),
        localizer=SimpleNamespace(map_environment="indoor", takes_gravity=False),
        _imu=[],
        _tf=None,
        resolve_topic_name=lambda name: "/" + name,
    )
    assert LocalizationNode._gravity(node, "cam", None, stamp) == (None, "off")
    node.params = on
    expected = (None, "not used on indoor maps (localizer.alignment.gravity_environments)")
    assert LocalizationNode._gravity(node, "cam", None, stamp) == expected
    node.localizer.map_environment, node.localizer.takes_gravity = "outdoor", True
    assert LocalizationNode._gravity(node, "cam", None, stamp) == (None, "none: no message on /imu yet")
    msg = Imu()
    msg.header.stamp, msg.header.frame_id = rh.stamp_msg(7.01), "cam"
    msg.orientation.w = 1.0  # the IMU's (here the camera's) axes are the world's: its down is -z
    node._imu = [msg]
    gravity, note = LocalizationNode._gravity(node, "cam", None, stamp)
    assert note == "imu, 0.05 deg (cam)"
    np.testing.assert_allclose(gravity.down_cam, [0.0, 0.0, -1.0])
    assert gravity.sigma_rad == np.radians(0.05)
