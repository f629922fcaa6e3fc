"""Node parameters: the table, config/ep2p_loc.yaml and the validation agree (no DDS)."""

from pathlib import Path

import pytest
import yaml

from ep2p_loc_ros.localizer import LocalizerConfig
from ep2p_loc_ros.map_odom_filter import FusionConfig
from ep2p_loc_ros.ros.params import DEFAULT_PARAMS_FILE, ParamError, all_param_specs, params_from_values

ROOT = Path(__file__).resolve().parents[1]


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_node_params_file_lists_every_parameter_with_its_default():
    assert DEFAULT_PARAMS_FILE == ROOT / "config" / "ep2p_loc.yaml"
    text = DEFAULT_PARAMS_FILE.read_text()
    values = _flatten(yaml.safe_load(text)["/**"]["ros__parameters"])
    specs = {s.name: s for s in all_param_specs()}
    assert set(values) == set(specs)
    for name, spec in specs.items():
        if name != "model_path":
            assert values[name] == spec.default, name
    # every parameter line has a comment (a group header's comment covers its nested lines)
    for line in text.splitlines():
        if line.strip() and ":" in line and not line.strip().startswith("#") and "ros__parameters" not in line:
            key = line.split(":")[0].strip()
            if key in ("/**", "qos", "tracking", "ipr", "pnp"):
                continue
            assert "#" in line or key in ("ransac_max_iterations",), line


def test_node_params_defaults_validate_and_localizer_config_is_the_same_dataclass():
    p = params_from_values({"map_path": "/m"})
    assert p.localizer == LocalizerConfig()
    assert p.fusion_enabled and p.fusion == FusionConfig()
    assert p.camera_mount is None and p.qos_reliability == "best_effort"
    p = params_from_values(
        {"map_path": "/m", "localizer.pnp.min_inliers": 20, "localizer.top_k": 5, "transform_tolerance": 1}
    )
    assert p.localizer.pnp.min_inliers == 20 and p.localizer.top_k == 5 and p.transform_tolerance == 1.0
    p = params_from_values({"map_path": "/m", "localizer.alignment.environments": ["outdoor", "indoor"]})
    assert p.localizer.alignment.environments == ("outdoor", "indoor")


@pytest.mark.parametrize(
    "values, match",
    [
        ({"map_path": ""}, "map_path: not set"),
        ({"qos.reliability": "x"}, "qos.reliability: must be one of"),
        ({"qos.depth": 0}, "qos.depth: 0 is below"),
        ({"transform_tolerance": "abc"}, "transform_tolerance: expected a number"),
        ({"publish_tf": 1}, "publish_tf: expected true/false"),
        ({"camera_mount": [1.0, 2.0]}, "camera_mount: expected 7 numbers"),
        ({"camera_mount": [0, 0, 0, 0, 0, 0, 0]}, "non-zero quaternion"),
        ({"gate.min_inliers": -1}, "gate.min_inliers"),
        ({"fusion.switch_after": 0}, "fusion.switch_after"),
        ({"fusion.gate_chi2": -1.0}, "fusion.gate_chi2"),
        ({"fusion.enabled": "yes"}, "fusion.enabled: expected true/false"),
        ({"localizer.ipr.kernel_size": 4}, "kernel_size"),
        ({"localizer.alignment.environments": [1.0]}, "environments: expected a list of strings"),
        ({"localizer.alignment.environments": ["mars"]}, "alignment.environments must be among"),
        ({"nope": 1}, "nope: unknown parameter"),
    ],
)
def test_node_params_bad_values_name_the_parameter(values, match):
    with pytest.raises(ParamError, match=match):
        params_from_values({"map_path": "/m", **values})


def test_node_tf_listener_chains_and_interpolates(rclpy_context):
    """The fallback TF cache: static + dynamic edges, common ancestor, interpolation at a stamp, tolerance."""
    import numpy as np
    import rclpy

    pytest.importorskip("tf2_msgs.msg")
    from tf2_msgs.msg import TFMessage

    from ep2p_loc_ros.geometry import invert, make_T, rotvec_to_matrix
    from ep2p_loc_ros.pose_gate import interpolate_transform
    from ep2p_loc_ros.ros.tf import make_transform_stamped
    from ep2p_loc_ros.ros.tf_listener import TransformCache

    node = rclpy.create_node("tf_cache_test", context=rclpy_context)
    try:
        cache = TransformCache(node, use_tf2_ros=False)
        T_base_cam = make_T(rotvec_to_matrix([-np.pi / 2, 0, -np.pi / 2]), [1.5, 0, 1.7])
        T_base_lidar = make_T(np.eye(3), [0, 0, 2.0])

        def st(t):
            from builtin_interfaces.msg import Time

            return Time(sec=int(t), nanosec=round((t % 1) * 1e9))

        cache._on_static(
            TFMessage(
                transforms=[
                    make_transform_stamped(T_base_cam, "base_link", "cam", st(0)),
                    make_transform_stamped(T_base_lidar, "base_link", "lidar", st(0)),
                ]
            )
        )
        T0 = make_T(rotvec_to_matrix([0, 0, 0.1]), [0, 0, 0])
        T1 = make_T(rotvec_to_matrix([0, 0, 0.3]), [2, 0, 0])
        for t, T in ((10.0, T0), (11.0, T1)):
            cache._on_dynamic(TFMessage(transforms=[make_transform_stamped(T, "odom", "base_link", st(t))]))
        np.testing.assert_allclose(cache.lookup("lidar", "cam"), invert(T_base_lidar) @ T_base_cam, atol=1e-12)
        np.testing.assert_allclose(
            cache.lookup("odom", "cam", int(10.5e9)), interpolate_transform(T0, T1, 0.5) @ T_base_cam, atol=1e-9
        )
        np.testing.assert_allclose(cache.lookup("odom", "base_link", 0), T1, atol=1e-12)  # 0: latest
        assert cache.lookup("odom", "base_link", int(11.2e9), 0.1) is None  # beyond the tolerance
        np.testing.assert_allclose(cache.lookup("odom", "base_link", int(11.05e9), 0.1), T1, atol=1e-12)
        assert cache.lookup("map", "cam") is None  # not connected
        assert cache.has_link("odom", "base_link") and not cache.has_link("map", "odom")
        cache.destroy()
    finally:
        node.destroy_node()
