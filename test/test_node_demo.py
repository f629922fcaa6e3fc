"""The ep2p_loc node in its own process, over real DDS, on the demo drive.

The node runs the shipped code with :class:`ros_helpers.OracleLocalizer` standing in for the model (real PnP on
ground-truth matches with noise and outliers), so these tests check the node itself: lifecycle, message
conversion, the mount from /tf_static, pose and covariance re-basing, TF (map->base_link, map->odom), fusion,
visible points, diagnostics, /initialpose, ~/relocalize, dropped frames and bad messages. The node with the real
model is in test_lifecycle_node.py.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not generated (scripts/build_tf2_msgs.sh)")

import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from ep2p_loc_ros.geometry import invert, make_T, rotation_angle_deg, rotvec_to_matrix
from ep2p_loc_ros.pose_gate import rebase_pose
from ep2p_loc_ros.ros.convert import pointcloud2_to_xyz, pose_to_matrix
from ep2p_loc_ros.ros.tf import make_transform_stamped

FRAMES = list(range(0, 36, 3))  # 12 frames of the 40-frame drive (34..39 for the odom and initial pose tests)
T0 = 1000.0  # stamps: T0 + the sequence's times


class Harness:
    def __init__(self, demo, proc, ros, lc):
        self.demo, self.proc, self.ros, self.lc = demo, proc, ros, lc
        n = self.ros.node
        self.poses = self.ros.collect(PoseWithCovarianceStamped, "/ep2p_loc/pose")
        self.diags = self.ros.collect(DiagnosticArray, "/diagnostics")
        self.tf = self.ros.collect(TFMessage, "/tf", 100)
        self.points = self.ros.collect(PointCloud2, "/ep2p_loc/visible_points")
        self.debug = self.ros.collect(Image, "/ep2p_loc/debug_image")
        self.img_pub = n.create_publisher(Image, "/cam/image_raw", qos_profile_sensor_data)
        self.info_pub = n.create_publisher(CameraInfo, "/cam/camera_info", qos_profile_sensor_data)
        self.static_pub = n.create_publisher(
            TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        )
        self.tf_pub = n.create_publisher(TFMessage, "/tf", 100)
        self.init_pub = n.create_publisher(PoseWithCovarianceStamped, "/initialpose", 1)
        self.latencies_ms: list[float] = []
        self.node_latencies_ms: list[float] = []

    def diag_for(self, stamp) -> dict | None:
        s = rh.stamp_str(stamp)
        hit = self.diags.find(lambda m: (rh.diag_values(m) or {}).get("image_stamp") == s)
        return rh.diag_values(hit[1]) if hit else None

    def send(self, image_msg, info_msg=None, timeout: float = 20.0) -> tuple[dict | None, object | None]:
        """Publish one frame (camera_info first), wait for its diagnostics; (diag values, pose msg or None)."""
        t_pub, got, pose = rh.send_frame(
            self.ros, self.img_pub, self.info_pub, self.diags, self.poses, image_msg, info_msg, timeout
        )
        if pose is not None:
            self.latencies_ms.append((pose[0] - t_pub) * 1e3)
            self.node_latencies_ms.append(float(rh.diag_values(got[1])["latency_ms"]))
        return (rh.diag_values(got[1]) if got else None), (pose[1] if pose else None)

    def close(self):
        self.ros.close()


@pytest.fixture(scope="module")
def h(demo_data, demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node_demo")
    proc, ros, lc = rh.connect_node(
        lambda: rh.start_node(
            # tracking.confirm_updates 4: the fused test sees one frame confirm the filter's pose globally
            {"map_path": str(demo_data.map_dir), "publish_debug_image": True, "tracking.confirm_updates": 4},
            remaps={"image": "/cam/image_raw", "camera_info": "/cam/camera_info"},
            oracle_sequence=demo_data.sequence_dir,
            log_dir=tmp,
        ),
        "ep2p_node_demo_test",
    )
    harness = Harness(demo, proc, ros, lc)
    try:
        yield harness
    finally:
        harness.close()
        rc = proc.stop()
        log = proc.log()
        assert rc == 0 and "Traceback" not in log, log


def _stamp(i: int, demo) -> object:
    return rh.stamp_msg(T0 + float(demo.seq.times[i]))


def test_node_lifecycle_refuses_out_of_order_transitions(h):
    assert h.lc.get_state() == "unconfigured"
    assert not h.lc.activate()  # no such transition from unconfigured
    assert not h.lc.deactivate()
    assert not h.lc.cleanup()
    assert h.proc.alive and h.lc.get_state() == "unconfigured"
    assert h.lc.configure()
    assert h.lc.get_state() == "inactive"
    assert not h.lc.configure()
    assert h.lc.activate()
    assert h.lc.get_state() == "active"
    assert not h.lc.activate()
    assert h.proc.alive


def test_node_localizes_demo_sequence_over_dds(h, demo, demo_data):
    from ep2p_loc_ros.localizer import LocalizerConfig

    h.static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
    assert rh.wait_connected(h.ros, h.img_pub, h.diags)
    oracle = rh.OracleLocalizer(demo_data.map_dir, demo_data.sequence_dir, LocalizerConfig())
    for i in FRAMES:
        stamp = _stamp(i, demo)
        diag, pose = h.send(demo.image_msg(i, stamp), demo.camera_info_msg(stamp))
        assert diag is not None, f"frame {i}: no diagnostics\n{h.proc.log()[-2000:]}"
        assert diag["result"] == "localized", diag
        assert diag["pose_of"] == "base_link" and diag["level"] == "0"
        assert pose is not None and pose.header.frame_id == "map"
        T_node = pose_to_matrix(pose.pose.pose)
        cov_node = np.asarray(pose.pose.covariance).reshape(6, 6)
        # exactly what the in-process pipeline gives, re-based to base_link (the node adds no math)
        ref = oracle.localize(demo.seq.image(i), demo.camera)
        T_ref, cov_ref = rebase_pose(ref.T_map_cam, ref.covariance, demo.T_base_cam)
        np.testing.assert_allclose(T_node, T_ref, atol=1e-6)
        np.testing.assert_allclose(cov_node, cov_ref, rtol=1e-6, atol=1e-12)
        assert int(diag["inliers"]) == ref.num_inliers
        # ground truth
        T_gt = demo.T_map_base(i)
        assert np.linalg.norm(T_node[:3, 3] - T_gt[:3, 3]) < 0.1
        assert rotation_angle_deg(T_node[:3, :3] @ T_gt[:3, :3].T) < 0.5
        # TF map -> base_link (no odom here), post-dated by transform_tolerance (0.1 s)
        tf_stamp = rh.stamp_msg(T0 + float(demo.seq.times[i]) + 0.1)
        hit = h.ros.wait_for(
            lambda st=tf_stamp: h.tf.find(
                lambda m: any(rh.stamp_str(t.header.stamp) == rh.stamp_str(st) for t in m.transforms)
            ),
            5,
        )
        assert hit is not None
        t = hit[1].transforms[0]
        assert (t.header.frame_id, t.child_frame_id) == ("map", "base_link")
        np.testing.assert_allclose(pose_to_matrix(t.transform), T_node, atol=1e-9)
    # the matched map points of the last frame, in the map frame, intensity 1 for inliers
    last = h.ros.wait_for(lambda: h.points.messages(), 5)
    assert last and last[-1].header.frame_id == "map"
    assert pointcloud2_to_xyz(last[-1]).shape == (int(diag["matches"]), 3)
    p50, p95 = rh.percentile(h.latencies_ms, 50), rh.percentile(h.latencies_ms, 95)
    n50 = rh.percentile(h.node_latencies_ms, 50)
    print(
        f"\nnode (oracle model) message->pose latency over DDS: p50 {p50:.1f} ms, p95 {p95:.1f} ms; "
        f"in the node {n50:.1f} ms"
    )


def test_node_fuses_localizations_through_odometry_and_publishes_map_to_odom(h, demo):
    """With odometry the node publishes the map->odom filter's pose: held until three localizations agree, then
    the fused pose, with map->odom on /tf such that map->odom->base is that pose; with tracking.confirm_updates it
    searches globally until the published pose holds that many localizations, then tracks from it."""
    T_odom_map = make_T(rotvec_to_matrix([0, 0, 0.4]), [3.0, -1.0, 0.0])  # odometry: the truth, from elsewhere
    results = []
    for i in (FRAMES[-1] + 1, FRAMES[-1] + 2, FRAMES[-1] + 3):
        T_odom_base = T_odom_map @ demo.T_map_base(i)
        for dt in (-0.05, 0.0, 0.05):  # odometry around the image stamp (it is interpolated at the stamp)
            st = rh.stamp_msg(T0 + float(demo.seq.times[i]) + dt)
            h.tf_pub.publish(TFMessage(transforms=[make_transform_stamped(T_odom_base, "odom", "base_link", st)]))
        time.sleep(0.3)
        stamp = _stamp(i, demo)
        diag, pose = h.send(demo.image_msg(i, stamp), demo.camera_info_msg(stamp))
        results.append((i, T_odom_base, diag, pose))
    for _, _, diag, pose in results[:2]:
        assert diag["result"] == "held" and "fusion: waiting for 3 agreeing" in diag["reason"], diag
        assert pose is None
    # before the filter publishes, no prior is its own (earlier tests left a tracked pose from the gate)
    assert all(d["fusion_own_prior"] == "False" for _, _, d, _ in results), [d for _, _, d, _ in results]
    i, T_odom_base, diag, pose = results[2]
    assert diag["result"] == "localized" and diag["reason"] == "fused" and diag["tf"] == "map->odom", diag
    T_pose = pose_to_matrix(pose.pose.pose)
    assert np.linalg.norm(T_pose[:3, 3] - demo.T_map_base(i)[:3, 3]) < 0.1  # oracle matches: near the truth
    tf_s = rh.stamp_str(rh.stamp_msg(T0 + float(demo.seq.times[i]) + 0.1))
    hit = h.ros.wait_for(
        lambda: h.tf.find(
            lambda m: any(t.child_frame_id == "odom" and rh.stamp_str(t.header.stamp) == tf_s for t in m.transforms)
        ),
        5,
    )
    assert hit is not None
    T_map_odom = pose_to_matrix(hit[1].transforms[0].transform)
    np.testing.assert_allclose(T_map_odom @ T_odom_base, T_pose, atol=1e-9)
    np.testing.assert_allclose(T_map_odom, invert(T_odom_map), atol=0.1)
    # tracking.confirm_updates 4: the next frame still searches globally (the published pose holds 3); the one after
    # tracks from the fused pose, and the filter is told so (fusion.intersect_own_prior uses it)
    for i, mode in ((FRAMES[-1] + 4, "global (confirming the fused pose: 3 of 4"), (FRAMES[-1] + 5, "tracking")):
        T_odom_base = T_odom_map @ demo.T_map_base(i)
        for dt in (-0.05, 0.0, 0.05):
            st = rh.stamp_msg(T0 + float(demo.seq.times[i]) + dt)
            h.tf_pub.publish(TFMessage(transforms=[make_transform_stamped(T_odom_base, "odom", "base_link", st)]))
        time.sleep(0.3)
        stamp = _stamp(i, demo)
        diag, pose = h.send(demo.image_msg(i, stamp), demo.camera_info_msg(stamp))
        assert diag["mode"].startswith(mode) and diag["fusion_own_prior"] == str(mode == "tracking"), diag
        assert diag["reason"] == "fused" and pose is not None, diag
        assert 0 < float(diag["fusion_weight"]) <= 1, diag  # how much it counted (fusion.robust_chi2)


def test_node_initialpose_seeds_the_next_frame(h, demo):
    i = FRAMES[-1] + 6
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = "map"
    from ep2p_loc_ros.ros.convert import matrix_to_pose

    msg.pose.pose = matrix_to_pose(demo.T_map_base(i))
    h.init_pub.publish(msg)
    assert h.ros.wait_for(lambda: "initial pose received" in h.proc.log(), 5)
    stamp = rh.stamp_msg(T0 + 5.0 + float(demo.seq.times[i]))  # 5 s after the last odometry: the gate's pose
    diag, pose = h.send(demo.image_msg(i, stamp), demo.camera_info_msg(stamp))
    assert diag["mode"] == "initial pose" and pose is not None


def test_node_relocalize_service_searches_the_next_frame_globally(h, demo):
    """~/relocalize (std_srvs/Trigger): a tracked node forgets its pose and searches the next image globally."""
    i = FRAMES[-1] + 3  # frames 36-38 again, 50 s later
    stamp = rh.stamp_msg(T0 + 50.0 + float(demo.seq.times[i]))
    diag, pose = h.send(demo.image_msg(i, stamp), demo.camera_info_msg(stamp))
    assert diag["mode"].startswith("tracking") and pose is not None, diag  # tracked from the initial pose's frame
    ok, message = rh.call_trigger(h.ros.node, "/ep2p_loc/relocalize")
    assert ok and "searched globally" in message, message
    assert h.ros.wait_for(lambda: "relocalize requested" in h.proc.log(), 5)
    for k, expected in ((1, "global (relocalize requested)"), (2, "tracking")):
        stamp = rh.stamp_msg(T0 + 50.0 + float(demo.seq.times[i + k]))
        diag, pose = h.send(demo.image_msg(i + k, stamp), demo.camera_info_msg(stamp))
        # the global search finds the pose again (oracle matches), and the frame after it tracks from there
        assert diag["mode"].startswith(expected) and diag["result"] == "localized" and pose is not None, diag
        T_pose = pose_to_matrix(pose.pose.pose)
        assert np.linalg.norm(T_pose[:3, 3] - demo.T_map_base(i + k)[:3, 3]) < 0.5


def _bad_cases(demo):
    """(name, image msg or None, camera_info msg, expected text in the reason)."""
    good_info = demo.camera_info_msg()
    cases = []
    img = demo.image_msg(0, None)
    img.encoding = "yuv422_yuy2"
    cases.append(("unknown encoding", img, good_info, "unsupported encoding 'yuv422_yuy2'"))
    img = demo.image_msg(0, None)
    img.step = img.width * 3 - 1
    cases.append(("step too small", img, good_info, "step"))
    img = demo.image_msg(0, None)
    img.data = bytes(img.data)[:-7]
    cases.append(("wrong data size", img, good_info, "expected step*height"))
    img = Image(height=0, width=0, encoding="rgb8", step=0)
    img.header.frame_id = demo.camera_frame
    cases.append(("empty image", img, good_info, "empty image"))
    img = demo.image_msg(0, None)
    img.width, img.step = img.width - 1, (img.width - 1) * 3
    img.data = np.frombuffer(bytes(img.data), np.uint8).reshape(img.height, -1)[:, : img.step].tobytes()
    cases.append(("size differs from camera_info", img, good_info, "but camera_info says"))
    info = demo.camera_info_msg()
    info.p = [0.0] * 12
    cases.append(("zero intrinsics", demo.image_msg(0, None), info, "focal length"))
    info = demo.camera_info_msg()
    p = list(info.p)
    p[2] = float("nan")
    info.p = p
    cases.append(("NaN intrinsics", demo.image_msg(0, None), info, "NaN"))
    return cases


def test_node_survives_bad_messages(h, demo):
    t = T0 + 100.0
    for name, img, info, expected in _bad_cases(demo):
        t += 0.1
        img.header.stamp = rh.stamp_msg(t)
        diag, pose = h.send(img, info)
        assert diag is not None, f"{name}: no diagnostics; node alive: {h.proc.alive}\n{h.proc.log()[-2000:]}"
        assert pose is None, name
        assert diag["result"] == "bad input" and expected in diag["reason"], (name, diag)
        assert diag["level"] == "1"
        assert h.proc.alive, name
    # a stamp going back (a little) is refused too
    good_info = demo.camera_info_msg()
    diag, pose = h.send(demo.image_msg(0, rh.stamp_msg(t + 0.1)), good_info)
    assert diag["result"] == "localized", diag
    diag, pose = h.send(demo.image_msg(1, rh.stamp_msg(t + 0.05)), good_info)  # a fresh stamp, 50 ms back
    assert pose is None and "stamp went back" in diag["reason"], diag
    # and the node still localizes afterwards
    diag, pose = h.send(demo.image_msg(2, rh.stamp_msg(t + 0.2)), good_info)
    assert diag["result"] == "localized" and pose is not None, diag
    assert h.lc.get_state() == "active"


def test_node_keeps_only_the_newest_frame_and_counts_drops(h, demo):
    h.info_pub.publish(demo.camera_info_msg())
    time.sleep(0.05)
    for burst in range(3):  # the counts must add up every time; a drop must happen in one of the bursts
        t = T0 + 200.0 + 10.0 * burst
        before = rh.diag_values(h.diags.messages()[-1])
        msgs = [demo.image_msg(i, rh.stamp_msg(t + 0.01 * i)) for i in range(8)]
        for m in msgs:  # a burst much faster than the node localizes (5 ms apart, a frame takes 15+ ms)
            h.img_pub.publish(m)
            time.sleep(0.005)
        last = rh.stamp_str(msgs[-1].header.stamp)
        got = h.ros.wait_for(
            lambda s=last: h.diags.find(lambda d: (rh.diag_values(d) or {}).get("image_stamp") == s), 20
        )
        assert got is not None, "the newest frame of the burst is always processed"
        time.sleep(0.2)
        after = rh.diag_values(h.diags.messages()[-1])
        dropped = int(after["frames_dropped"]) - int(before["frames_dropped"])
        received = int(after["frames_received"]) - int(before["frames_received"])
        done = sum(int(after[k]) - int(before[k]) for k in ("frames_localized", "frames_rejected"))
        assert 1 <= received <= 8 and done + dropped == received, (before, after)
        if dropped >= 1:
            break
    else:
        pytest.fail(f"no frame dropped in 3 bursts of 8 frames 5 ms apart: {after}")


def test_node_debug_image_map_cloud_and_diagnostics_between_frames(h, demo):
    # the map cloud is latched: a subscriber that comes late still gets it
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    cloud = h.ros.collect(PointCloud2, "/ep2p_loc/map_cloud", qos)
    got = h.ros.wait_for(lambda: cloud.messages(), 10)
    assert got and got[0].header.frame_id == "map" and 0 < got[0].width <= 200000
    debug = h.debug.messages()
    assert debug and debug[-1].encoding == "rgb8"
    assert (debug[-1].width, debug[-1].height) == (demo.camera.width, demo.camera.height)
    diags = [rh.diag_values(m) for m in h.diags.messages()]
    assert all(d is not None for d in diags)
    timer_reports = [d for d in diags if "image_stamp" not in d]
    assert timer_reports and all(d["state"] in ("inactive", "active") for d in timer_reports)


def test_node_deactivate_cleanup_shutdown(h, demo):
    assert h.lc.deactivate() and h.lc.get_state() == "inactive"
    with pytest.raises(TimeoutError, match="not available"):  # ~/relocalize is served only while active
        rh.call_trigger(h.ros.node, "/ep2p_loc/relocalize", timeout=1.0)
    n_poses = len(h.poses.messages())
    h.img_pub.publish(demo.image_msg(3, rh.stamp_msg(T0 + 300.0)))
    time.sleep(1.0)
    assert len(h.poses.messages()) == n_poses  # no subscription, no pose
    assert h.lc.cleanup() and h.lc.get_state() == "unconfigured"
    # parameters take effect at the next configure: a gate no frame passes publishes no pose and says why
    assert all(rh.set_parameters(h.ros.node, {"gate.min_inliers": 100000}))
    assert h.lc.configure() and h.lc.activate()
    h.info_pub.publish(demo.camera_info_msg())
    diag, pose = h.send(demo.image_msg(4, rh.stamp_msg(T0 + 400.0)), demo.camera_info_msg())
    assert pose is None and diag["result"] == "rejected" and diag["localizer_status"] == "ok", diag
    assert "too few inliers" in diag["reason"] and "gate.min_inliers 100000" in diag["reason"]
    assert h.lc.deactivate() and h.lc.cleanup()
    assert h.lc.shutdown() and h.lc.get_state() == "finalized"
    assert h.proc.alive
    assert not math.isnan(rh.percentile(h.latencies_ms, 50))
