"""TF publishing without tf2_ros: TFMessage on /tf and a latched /tf_static, received over real DDS."""

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
tf2_msgs = pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not generated (scripts/build_tf2_msgs.sh)")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402

from ep2p_loc_ros.geometry import make_T, rotvec_to_matrix  # noqa: E402
from ep2p_loc_ros.ros.convert import pose_to_matrix  # noqa: E402
from ep2p_loc_ros.ros.tf import TransformPublisher, make_transform_stamped  # noqa: E402


def _spin_until(executor, predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not predicate():
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_ros_tf_fallback_publishes_dynamic_and_latched_static(rclpy_context):
    TFMessage = tf2_msgs.TFMessage
    pub_node = rclpy.create_node("tf_pub_test", context=rclpy_context)
    sub_node = rclpy.create_node("tf_sub_test", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(pub_node)
    executor.add_node(sub_node)
    try:
        tfp = TransformPublisher(pub_node, use_tf2_ros=False)
        T_base_cam = make_T(rotvec_to_matrix([-np.pi / 2, 0, -np.pi / 2]), [1.5, 0.0, 1.7])
        stamp = pub_node.get_clock().now().to_msg()
        tfp.send_static([make_transform_stamped(T_base_cam, "base_link", "camera_optical", stamp)])
        tfp.send_static([make_transform_stamped(np.eye(4), "base_link", "velodyne", stamp)])
        # A subscriber created after the static transforms were sent still gets them (transient local).
        got_static, got_dynamic = [], []
        sub_node.create_subscription(
            TFMessage,
            "/tf_static",
            got_static.append,
            QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL),
        )
        sub_node.create_subscription(TFMessage, "/tf", got_dynamic.append, 100)
        assert _spin_until(executor, lambda: got_static)
        children = {t.child_frame_id: t for t in got_static[-1].transforms}
        assert set(children) == {"camera_optical", "velodyne"}
        np.testing.assert_allclose(pose_to_matrix(children["camera_optical"].transform), T_base_cam, atol=1e-12)

        T_map_odom = make_T(rotvec_to_matrix([0, 0, 0.3]), [10.0, -4.0, 0.0])
        assert _spin_until(executor, lambda: sub_node.count_publishers("/tf") > 0)

        def sent_and_received():
            tfp.send([make_transform_stamped(T_map_odom, "map", "odom", pub_node.get_clock().now().to_msg())])
            executor.spin_once(timeout_sec=0.05)
            return bool(got_dynamic)

        assert _spin_until(executor, sent_and_received)
        t = got_dynamic[0].transforms[0]
        assert (t.header.frame_id, t.child_frame_id) == ("map", "odom")
        np.testing.assert_allclose(pose_to_matrix(t.transform), T_map_odom, atol=1e-12)
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
