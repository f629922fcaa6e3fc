"""Faults of the ep2p_loc node with the real Localizer and the shipped model, over real DDS: onnxruntime's CUDA
provider failing (injected: the node falls back to CPU and says so); a pose the confidence calls unlikely right; the
robot leaves the map (a prior 1 km away); a map whose submap is empty; with odometry, a localization the confidence
calls unlikely right is not fused. Each: the node keeps running, publishes no
wrong pose, /diagnostics says why. The node's own faults (camera_info, mount TF, camera stopping) are in
test_fault_node.py.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not generated (scripts/build_tf2_msgs.sh)")

import ros_helpers as rh
from geometry_msgs.msg import PoseWithCovarianceStamped
from test_fault_node import REMAPS, Harness, _stamp
from tf2_msgs.msg import TFMessage

from ep2p_loc_ros.ros.convert import matrix_to_pose


# ----------------------------------------------------------------------------------------------------------
# the real Localizer, CUDA failing
@pytest.fixture(scope="module")
def empty_submap_map(demo_data, tmp_path_factory):
    """The demo map with submap 1 emptied (its viewpoint stays)."""
    from ep2p_loc_ros.map import load_map, save_map
    from ep2p_loc_ros.map.store import LidarMap

    m = load_map(demo_data.map_dir)
    off, idx = np.asarray(m.submap_offsets), np.asarray(m.submap_indices)
    counts = np.diff(off)
    counts[1] = 0
    keep = np.ones(len(idx), bool)
    keep[off[1] : off[2]] = False
    new = LidarMap(
        points=np.asarray(m.points),
        reflectance=np.asarray(m.reflectance),
        features=np.asarray(m.features),
        descriptors=np.asarray(m.descriptors),
        T_map_viewpoint=np.asarray(m.T_map_viewpoint),
        submap_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(off.dtype),
        submap_indices=idx[keep],
        viewpoint_frame_ids=np.asarray(m.viewpoint_frame_ids),
        params=dict(m.params),
    )
    out = save_map(new, tmp_path_factory.mktemp("empty_submap") / "map")
    assert load_map(out).submap(1).points.shape == (0, 3)
    return out


@pytest.fixture(scope="module")
def real(demo_data, tmp_path_factory):
    params = {
        "map_path": str(demo_data.map_dir),
        "localizer.top_k": 2,
        "localizer.max_points": 2000,
        "map_cloud_max_points": 0,
        "providers": "auto",
    }
    log_dir = tmp_path_factory.mktemp("fault_real")
    h = Harness(
        *rh.connect_node(
            lambda: rh.start_node(params, remaps=REMAPS, faults=["cuda"], log_dir=log_dir), "ep2p_fault_real_test"
        )
    )
    try:
        yield h
    finally:
        h.close()


def test_fault_onnxruntime_cuda_fails_falls_back_to_cpu_with_a_warning(real, demo):
    n = len(real.diags.messages())
    assert real.lc.configure() and real.lc.activate(), real.proc.log()
    log = real.proc.log()
    assert "falling back to CPU" in log and "degraded: CUDA provider failed" in log, log
    conf = real.ros.wait_for(
        lambda: [v for m in real.diags.messages()[n:] if (v := rh.diag_values(m)) and "configured" in v["message"]],
        5,
    )
    assert conf and conf[-1]["provider"] == "CPUExecutionProvider" and conf[-1]["level"] == "1", conf
    assert "CUDA provider failed" in conf[-1]["degraded"] and "injected" in conf[-1]["degraded"]
    # the shipped model's covariance calibration is found and named (models/covariance.json)
    assert (
        conf[-1]["covariance"].startswith("PnP + calibrated model error (")
        and "covariance.json" in conf[-1]["covariance"]
    ), conf
    # ... and its confidence model (models/confidence.json), fitted for the demo's outdoor maps
    assert "confidence.json (global, tracking fitted for outdoor maps)" in conf[-1]["confidence"], conf
    real.static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
    assert real.ros.wait_for(lambda: real.img_pub.get_subscription_count() > 0, 10)
    time.sleep(0.3)
    diag, _ = real.send(demo.image_msg(0, _stamp(demo, 0)), demo.camera_info_msg())
    assert diag is not None and int(diag["level"]) >= 1 and "CUDA" in diag["degraded"], diag
    # a pose the alignment refined says how likely it is right
    assert diag["aligned"] == "True" and 0 < float(diag["confidence"]) < 1, diag
    assert real.proc.alive


def test_fault_a_pose_unlikely_right_is_refused_and_the_diagnostics_say_how_likely(real, demo):
    """``gate.min_confidence`` without odometry: a pose less likely right than that is not published; /diagnostics
    gives the reason and the pose's confidence (the other gate tests off, so that this one decides)."""
    strict = {"gate.min_confidence": 0.999, "gate.min_inlier_ratio": 0.0, "gate.min_inliers": 0}
    assert rh.set_parameters(real.ros.node, strict) == [True] * 3
    assert real.lc.deactivate() and real.lc.cleanup() and real.lc.configure() and real.lc.activate(), real.proc.log()
    try:
        real.static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
        time.sleep(0.3)
        diag, pose = real.send(demo.image_msg(3, _stamp(demo, 3, 0.5)), demo.camera_info_msg())
        assert pose is None and diag["result"] == "rejected", diag
        assert diag["reason"] == f"confidence too low: {float(diag['confidence']):.2f} < gate.min_confidence 0.999"
        assert real.proc.alive
    finally:
        defaults = {"gate.min_confidence": 0.3, "gate.min_inlier_ratio": 0.1, "gate.min_inliers": 30}
        assert rh.set_parameters(real.ros.node, defaults) == [True] * 3
        assert real.lc.deactivate() and real.lc.cleanup() and real.lc.configure() and real.lc.activate()


def test_fault_with_odometry_a_localization_unlikely_right_is_not_fused(real, demo):
    """With odometry the map->odom filter takes each localization in place of the gate, but not one less likely
    right than ``gate.min_confidence`` (``pose_gate.fusion_refusal``): the frame is held, nothing is published, and
    /diagnostics says why with the localization's confidence. (Reconfiguring afterwards drops the odometry.)"""
    from ep2p_loc_ros.ros.tf import make_transform_stamped

    tf_pub = real.ros.node.create_publisher(TFMessage, "/tf", 100)
    assert rh.set_parameters(real.ros.node, {"gate.min_confidence": 0.999}) == [True]
    assert real.lc.deactivate() and real.lc.cleanup() and real.lc.configure() and real.lc.activate(), real.proc.log()
    try:
        real.static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
        i = 6
        for dt in (-0.05, 0.0, 0.05):  # odometry (the truth) around the image's stamp
            odom = make_transform_stamped(demo.T_map_base(i), "odom", "base_link", _stamp(demo, i, 3.0 + dt))
            tf_pub.publish(TFMessage(transforms=[odom]))
        time.sleep(0.3)
        diag, pose = real.send(demo.image_msg(i, _stamp(demo, i, 3.0)), demo.camera_info_msg())
        assert pose is None and diag["result"] == "held", diag
        confidence = float(diag["confidence"])
        reason = f"not fused: confidence too low: {confidence:.2f} < gate.min_confidence 0.999"
        assert "fusion: waiting for" in diag["reason"] and reason in diag["reason"], diag
        assert real.proc.alive
    finally:
        real.ros.node.destroy_publisher(tf_pub)
        assert rh.set_parameters(real.ros.node, {"gate.min_confidence": 0.3}) == [True]
        assert real.lc.deactivate() and real.lc.cleanup() and real.lc.configure() and real.lc.activate()


def _initial_pose(T_map_base):
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = "map"
    msg.pose.pose = matrix_to_pose(T_map_base)
    return msg


def test_fault_robot_leaves_the_map(real, demo):
    from ep2p_loc_ros.geometry import make_T

    far = demo.T_map_base(10) @ make_T(np.eye(3), [1000.0, 0.0, 0.0])  # 1 km off the drive
    real.init_pub.publish(_initial_pose(far))
    assert real.ros.wait_for(lambda: "initial pose received" in real.proc.log(), 5)
    diag, pose = real.send(demo.image_msg(10, _stamp(demo, 10, 1.0)), demo.camera_info_msg())
    assert pose is None and diag["result"] == "no pose" and diag["mode"] == "initial pose", diag
    assert "outside the map" in diag["reason"] and "outside the map" in diag["map"], diag
    assert real.proc.alive and real.lc.get_state() == "active"


def test_fault_map_submap_empty(real, demo, empty_submap_map):
    from ep2p_loc_ros.map import load_map

    assert rh.set_parameters(real.ros.node, {"map_path": str(empty_submap_map), "tracking.enabled": True}) == [True] * 2
    assert real.lc.deactivate() and real.lc.cleanup() and real.lc.configure() and real.lc.activate(), real.proc.log()
    m = load_map(empty_submap_map)
    # the vehicle at submap 1's viewpoint: the prior's submap has no points
    T_map_cam = np.asarray(m.T_map_viewpoint[1])
    real.init_pub.publish(_initial_pose(T_map_cam @ np.linalg.inv(demo.T_base_cam)))
    time.sleep(0.3)
    real.static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
    time.sleep(0.3)
    i = int(m.viewpoint_frame_ids[1])
    diag, pose = real.send(demo.image_msg(i, _stamp(demo, i, 2.0)), demo.camera_info_msg())
    assert pose is None and diag["result"] == "no pose", diag
    assert diag["localizer_status"] in ("no_matches", "no_submap"), diag
    assert real.proc.alive and real.lc.get_state() == "active"
    shutil.rmtree(empty_submap_map, ignore_errors=True)  # the node keeps it memory-mapped: fine on Linux
