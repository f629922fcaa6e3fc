"""The ep2p_loc node with the real model, in its own process: configure errors, autostart, and the same results
as the in-process Localizer on the demo drive (plus latency and the node's overhead).

Ground-truth accuracy depends on the model. Without odometry the node publishes each frame's pose that passes the
quality gate; with the reflectance alignment and gate.min_inlier_ratio 0.1 (session 24) it published 3 of the 6
frames, all within 2 m / 5°: exactly the target of half, so a host whose floats differ may land either side of it,
and that one test stays a non-strict xfail that marks the target.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not generated (scripts/build_tf2_msgs.sh)")

import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from ep2p_loc_ros.geometry import rotation_angle_deg
from ep2p_loc_ros.pose_gate import rebase_pose
from ep2p_loc_ros.ros.convert import pose_to_matrix

FRAMES = [0, 7, 14, 21, 28, 35]
T0 = 2000.0
# the node's localizer settings, also used for the in-process reference (the node reads them as parameters)
LOCALIZER = {"top_k": 2, "max_points": 4000}
RESULTS: dict[str, object] = {}  # filled by the real-model test, read by the accuracy test


@pytest.fixture(scope="module")
def ros():
    session = rh.RosSession("ep2p_lifecycle_test")
    yield session
    session.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, demo_data):
    """Started with a map path that does not exist; the tests fix the parameters one by one."""
    params = {"map_path": "/nonexistent/ep2p/map", "tracking.enabled": False, "gate.min_inliers": 10}
    params.update({f"localizer.{k}": v for k, v in LOCALIZER.items()})
    proc = rh.start_node(params, log_dir=tmp_path_factory.mktemp("lifecycle_node"))
    yield proc
    rc = proc.stop()
    assert rc == 0 and "Traceback" not in proc.log(), proc.log()


def test_lifecycle_bad_map_path_fails_configure_and_names_it(ros, node):
    lc = rh.LifecycleClient(ros.node)
    assert lc.wait_ready(60), node.log()
    assert not lc.configure()
    assert "/nonexistent/ep2p/map" in node.log() and "configure failed" in node.log()
    assert lc.get_state() == "unconfigured" and node.alive


@pytest.mark.parametrize(
    "values, named",
    [
        ({"model_path": "/nonexistent/ep2p/model"}, "/nonexistent/ep2p/model"),
        ({"localizer.pnp.backend": "nope"}, "localizer.pnp: PnPConfig.backend"),
        ({"localizer.ipr.kernel_size": 4}, "kernel_size"),
        ({"qos.reliability": "sometimes"}, "qos.reliability"),
        ({"camera_mount": [1.0, 2.0, 3.0]}, "camera_mount"),
        ({"gate.max_position_std_m": -1.0}, "gate.max_position_std_m"),
    ],
)
def test_lifecycle_bad_parameter_fails_configure_and_names_it(ros, node, demo_data, values, named):
    good = {
        "map_path": str(demo_data.map_dir),
        "model_path": "",
        "localizer.pnp.backend": "opencv_usac",
        "localizer.ipr.kernel_size": 5,
        "qos.reliability": "best_effort",
        "camera_mount": [0.0],
        "gate.max_position_std_m": 2.0,
    }
    assert all(rh.set_parameters(ros.node, {**good, **values}))
    lc = rh.LifecycleClient(ros.node)
    n_log = len(node.log())
    assert not lc.configure()
    new_log = node.log()[n_log:]
    assert "configure failed" in new_log and named in new_log, new_log
    assert lc.get_state() == "unconfigured" and node.alive
    assert all(rh.set_parameters(ros.node, good))


def test_node_real_model_gives_the_in_process_results(ros, node, demo_data):
    """Over DDS, the node's result for each frame is the in-process Localizer's (same config, same frames)."""
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig

    lc = rh.LifecycleClient(ros.node)
    assert all(rh.set_parameters(ros.node, {"map_path": str(demo_data.map_dir)}))
    assert lc.configure(), node.log()[-3000:]
    assert lc.activate()
    demo = rh.DemoSequence(demo_data.sequence_dir)
    n = ros.node
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    poses = ros.collect(PoseWithCovarianceStamped, "/ep2p_loc/pose")
    img_pub = n.create_publisher(Image, "image", qos_profile_sensor_data)
    info_pub = n.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
    static_pub = n.create_publisher(
        TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    )
    static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
    assert ros.wait_for(lambda: img_pub.get_subscription_count() > 0 and info_pub.get_subscription_count() > 0, 10)
    # camera_info once ahead of the first image: topics have no order between them, and on a loaded host 50 ms
    # was not always enough for the first frame's (the node then says "no camera_info received yet")
    info_pub.publish(demo.camera_info_msg(rh.stamp_msg(T0)))
    time.sleep(0.5)
    node_results = {}
    for i in FRAMES:
        stamp = rh.stamp_msg(T0 + float(demo.seq.times[i]))
        info_pub.publish(demo.camera_info_msg(stamp))
        time.sleep(0.05)
        s = rh.stamp_str(stamp)
        t_pub = time.perf_counter()
        img_pub.publish(demo.image_msg(i, stamp))
        got = ros.wait_for(lambda s=s: diags.find(lambda d: (rh.diag_values(d) or {}).get("image_stamp") == s), 60)
        assert got is not None, node.log()[-3000:]
        pose = poses.find(lambda m, s=s: rh.stamp_str(m.header.stamp) == s)
        node_results[i] = (rh.diag_values(got[1]), pose[1] if pose else None, (got[0] - t_pub) * 1e3)
    assert lc.deactivate() and lc.cleanup()  # the node's CPU is free for the in-process run

    config = LocalizerConfig.from_dict(LOCALIZER)
    loc = Localizer.from_paths(demo_data.map_dir, demo_data.model_dir, config)
    # The reference runs in a worker thread, as in the node: torch.set_num_threads() (Localizer.from_paths) sets
    # the main thread's OpenMP team only, and on 2 busy cores a 2-thread team makes IPR ~30x slower.
    refs, inproc_ms = {}, []

    def run_in_process():
        for i in FRAMES:
            t = time.perf_counter()
            refs[i] = loc.localize(demo.seq.image(i), demo.camera)
            inproc_ms.append((time.perf_counter() - t) * 1e3)

    worker = threading.Thread(target=run_in_process)
    worker.start()
    worker.join()
    rows = []
    for i in FRAMES:
        ref = refs[i]
        diag, pose, latency = node_results[i]
        assert diag.get("localizer_status") == ref.status.value, (i, diag, ref.message)
        assert int(diag["inliers"]) == ref.num_inliers and int(diag["matches"]) == ref.num_matches
        assert diag["aligned"] == str(ref.aligned)  # the reflectance alignment ran in the node as in-process
        if pose is not None:
            T_ref, cov_ref = rebase_pose(ref.T_map_cam, ref.covariance, demo.T_base_cam)
            np.testing.assert_allclose(pose_to_matrix(pose.pose.pose), T_ref, atol=1e-6)
            np.testing.assert_allclose(np.asarray(pose.pose.covariance).reshape(6, 6), cov_ref, rtol=1e-6, atol=1e-12)
        rows.append((i, diag["result"], latency, float(diag["latency_ms"]), float(diag["localize_ms"])))
    latency = [r[2] for r in rows]
    overhead = [r[2] - r[4] for r in rows]  # message->result minus the Localizer's own time, same frame
    vs_inproc = [r[2] - t for r, t in zip(rows, inproc_ms, strict=True)]
    print(
        f"\nreal model, {len(FRAMES)} frames: message->result over DDS p50 {rh.percentile(latency, 50):.0f} ms, "
        f"p95 {rh.percentile(latency, 95):.0f} ms; node overhead (that minus Localizer.localize in the node) "
        f"p50 {rh.percentile(overhead, 50):.1f} ms, p95 {rh.percentile(overhead, 95):.1f} ms; inside the node "
        f"(callback->result minus localize) p50 {rh.percentile([r[3] - r[4] for r in rows], 50):.1f} ms; "
        f"in-process Localizer.localize p50 {rh.percentile(inproc_ms, 50):.0f} ms; message->result minus "
        f"in-process, per frame, p50 {rh.percentile(vs_inproc, 50):.0f} ms"
    )
    for r, t in zip(rows, inproc_ms, strict=True):
        print(
            f"  frame {r[0]:2d} {r[1]:>10s}  dds {r[2]:7.1f} ms  node {r[3]:7.1f} ms  "
            f"localize {r[4]:7.1f} ms  in-process {t:7.1f} ms"
        )
    # without odometry each frame's pose goes through the gate alone: the defaults must let the real model's through
    # (gate.min_inlier_ratio 0.25 refused every one until session 24)
    assert any(pose is not None for _, pose, _ in node_results.values()), [r[1] for r in rows]
    RESULTS.update(demo=demo, node_results=node_results)


@pytest.mark.xfail(
    reason="the shipped model is at the target's edge (3 of 6 frames within 2 m / 5 deg on the session-24 host; "
    "models/README.md has its measured recall); this marks the target a better model must clear",
    strict=False,
)
def test_node_real_model_ground_truth_accuracy():
    """Half the frames or more localized within 2 m / 5 deg of ground truth (base_link in map), published by the
    node without odometry (each frame's pose after the quality gate)."""
    if not RESULTS:
        pytest.skip("needs test_node_real_model_gives_the_in_process_results")
    demo, node_results = RESULTS["demo"], RESULTS["node_results"]
    good = 0
    for i, (_, pose, _) in node_results.items():
        if pose is None:
            continue
        T, T_gt = pose_to_matrix(pose.pose.pose), demo.T_map_base(i)
        if np.linalg.norm(T[:3, 3] - T_gt[:3, 3]) < 2.0 and rotation_angle_deg(T[:3, :3] @ T_gt[:3, :3].T) < 5.0:
            good += 1
    published = sum(pose is not None for _, pose, _ in node_results.values())
    print(f"\nnode without odometry: {published}/{len(node_results)} published, {good} within 2 m / 5 deg")
    assert good >= len(node_results) / 2, f"{good}/{len(node_results)} frames within 2 m / 5 deg"


def test_lifecycle_autostart_with_a_bad_parameter_stays_unconfigured(ros, demo_data, tmp_path):
    # a params file in place of the default one (note: rcl drops a `-p` override whose type differs from the
    # params file's, e.g. `-p transform_tolerance:=abc` over the default file's 0.1, so a file is what can be wrong)
    bad = {"map_path": str(demo_data.map_dir), "qos.depth": 0, "transform_tolerance": "abc"}
    name = "ep2p_loc_bad_autostart"  # its own name: the module's other node (the fixture) is still up
    proc = rh.start_node(
        autostart=True,
        params_file=rh.write_params_file(bad, tmp_path / "bad.yaml"),
        extra_args=["-r", f"__node:={name}"],
        log_dir=tmp_path,
    )
    try:
        assert proc.wait_log("autostart: configure failed", 60), proc.log()
        log = proc.log()
        assert "bad parameter qos.depth" in log and "bad parameter transform_tolerance" in log, log
        lc = rh.LifecycleClient(ros.node, name)
        assert lc.wait_ready(30) and lc.get_state() == "unconfigured" and proc.alive
    finally:
        assert proc.stop() == 0


def test_lifecycle_autostart_with_the_documented_command_line(ros, demo_data, tmp_path):
    """`ep2p-loc node --autostart --ros-args -p map_path:=... -p model_path:=... -r image:=... -r camera_info:=...`"""
    proc = rh.start_node(
        autostart=True,
        extra_args=[
            "-r",  # its own name: the module's other node (the fixture) is still up
            "__node:=ep2p_loc_autostart",
            "-p",
            f"map_path:={demo_data.map_dir}",
            "-p",
            f"model_path:={demo_data.model_dir}",
            "-r",
            "image:=/camera/image_raw",
            "-r",
            "camera_info:=/camera/camera_info",
        ],
        log_dir=tmp_path,
    )
    try:
        lc = rh.LifecycleClient(ros.node, "ep2p_loc_autostart")
        assert lc.wait_ready(60)
        assert ros.wait_for(lambda: lc.get_state() == "active", 60), proc.log()
        assert ros.wait_for(lambda: ros.node.count_subscribers("/camera/image_raw") >= 1, 10)
        assert ros.node.count_subscribers("/camera/camera_info") >= 1
        assert ros.node.count_publishers("/ep2p_loc_autostart/pose") >= 1
    finally:
        assert proc.stop() == 0
    assert "Traceback" not in proc.log()


def test_lifecycle_sigusr1_dumps_the_stacks_and_the_node_runs_on(ros, demo_data, tmp_path):
    """`kill -USR1 <pid>` writes where each thread is to the log (how to see where a stuck node waits); the node
    stays up, and SIGINT then stops it within a second."""
    import signal

    name = "ep2p_loc_sigusr1"  # its own name: the module's other node (the fixture) is still up
    proc = rh.start_node(
        autostart=True, extra_args=["-r", f"__node:={name}", "-p", f"map_path:={demo_data.map_dir}"], log_dir=tmp_path
    )
    try:
        lc = rh.LifecycleClient(ros.node, name)
        assert lc.wait_ready(60) and ros.wait_for(lambda: lc.get_state() == "active", 60), proc.log()
        proc.proc.send_signal(signal.SIGUSR1)
        assert proc.wait_log("in main", 10), proc.log()
        assert "ep2p_loc_ros/ros/node.py" in proc.log() and proc.alive
        assert lc.get_state() == "active"
        t0 = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - t0 < 5.0
    finally:
        proc.stop()
    assert "Traceback" not in proc.log()
