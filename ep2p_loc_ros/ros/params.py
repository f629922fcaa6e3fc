"""The node's parameters: one table (name, default, description, range), declared on configure and validated.

Three groups:

- the node's own (frames, topics, QoS, TF, outputs, tracking) in :data:`NODE_PARAMS`;
- ``gate.<field>``: the quality gate, :class:`~ep2p_loc_ros.pose_gate.GateConfig`;
- ``localizer.<field>``, ``localizer.ipr.<field>``, ``localizer.pnp.<field>``: the one
  :class:`~ep2p_loc_ros.localizer.LocalizerConfig` the CLI and the evaluation use too, built with its own
  ``from_dict`` (so its validation and messages are the same everywhere).

Parameters are read when the node is configured; a change takes effect at the next configure
(``deactivate`` -> ``cleanup`` -> ``configure`` -> ``activate``). ``config/ep2p_loc.yaml`` lists them all
with comments; a test checks that the file and this table agree.
"""

from __future__ import annotations

import array
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..localizer import LocalizerConfig
from ..map_odom_filter import FusionConfig
from ..pose_gate import GateConfig

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEFAULT_PARAMS_FILE",
    "NODE_PARAMS",
    "NodeParams",
    "ParamError",
    "ParamSpec",
    "all_param_specs",
    "declare_params",
    "params_from_values",
    "read_params",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "models"


def _default_params_file() -> Path:
    """The package's ``config/ep2p_loc.yaml``: from the ament index when installed, else the source tree."""
    here = REPO_ROOT / "config" / "ep2p_loc.yaml"
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("ep2p_loc_ros")) / "config" / "ep2p_loc.yaml"
    except Exception:  # no ament index (PyPI wheels without AMENT_PREFIX_PATH): the source path, even if absent
        return here


DEFAULT_PARAMS_FILE = _default_params_file()


class ParamError(ValueError):
    """A parameter with a wrong type or value; the text starts with the parameter's name."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any  # its type is the parameter's type (int accepted where float is expected)
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()


NODE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("map_path", "", "directory of the LiDAR map (ep2p-loc build-map); memory-mapped"),
    ParamSpec("model_path", "", "model directory (config.json, model.safetensors, ONNX); empty: the package's models/"),
    ParamSpec("providers", "auto", "onnxruntime providers", choices=("auto", "cpu", "cuda")),
    ParamSpec("map_frame", "map", "frame of the map and of the published pose"),
    ParamSpec("odom_frame", "odom", "odometry frame: map->odom is published when odom->base exists (REP-105)"),
    ParamSpec("base_frame", "base_link", "vehicle frame whose pose is published when the camera mount is known"),
    ParamSpec("camera_frame", "camera", "camera optical frame when camera_info/image carry no frame_id"),
    ParamSpec(
        "camera_mount",
        [0.0],
        "base->camera transform [x, y, z, qx, qy, qz, qw] (camera optical frame); empty or [0.0]: from /tf_static",
    ),
    ParamSpec(
        "require_mount",
        True,
        "no pose while the base->camera mount is unknown (false: publish the camera's own pose, pose_of says so)",
    ),
    ParamSpec("rectified", True, "images are rectified: intrinsics from camera_info P (else K and D)"),
    ParamSpec(
        "image_transport",
        "raw",
        "raw: subscribe 'image'; compressed: 'image/compressed'",
        choices=("raw", "compressed"),
    ),
    ParamSpec("qos.reliability", "best_effort", "QoS of image and camera_info", choices=("best_effort", "reliable")),
    ParamSpec("qos.depth", 1, "QoS history depth of image and camera_info", min=1, max=100),
    ParamSpec("publish_tf", True, "publish map->odom (or map->base/camera) on /tf"),
    ParamSpec(
        "transform_tolerance",
        0.1,
        "s: TF stamps are post-dated by this, and odom lookups may be this far off",
        min=0.0,
        max=10.0,
    ),
    ParamSpec("publish_visible_points", True, "publish ~/visible_points (matched map points, intensity 1 = inlier)"),
    ParamSpec("publish_debug_image", False, "publish ~/debug_image (matches drawn on the image)"),
    ParamSpec(
        "publish_raw_pose",
        True,
        "publish ~/raw_pose: every pose the localizer finds, before the quality gate (for evaluation and gate "
        "tuning; fuse ~/pose, never this)",
    ),
    ParamSpec(
        "map_cloud_max_points",
        200000,
        "~/map_cloud (latched, for RViz) carries at most this many map points, evenly thinned; 0: not published",
        min=0,
        max=100_000_000,
    ),
    ParamSpec("tracking.enabled", True, "use the last accepted pose (moved by odometry when there is one) as prior"),
    ParamSpec(
        "tracking.max_failures",
        3,
        "frames in a row whose localization did not join the published pose (none, refused, or fitting another fusion "
        "hypothesis) before the node searches the whole map again, until one joins (tracking_policy.py)",
        min=1,
        max=1000,
    ),
    ParamSpec(
        "tracking.confirm_updates",
        6,
        "with fusion, on maps where single images are aligned from several hypotheses (localizer.alignment."
        "hypothesis_environments): search the whole map, not from the published pose, until the published fusion "
        "hypothesis holds this many localizations, so that a first pose at a look-alike place meets its rivals (0: "
        "track at once)",
        min=0,
        max=1000,
    ),
    ParamSpec(
        "fusion.enabled",
        True,
        "with odometry (odom->base on /tf): fuse every localization over time in a map->odom filter and publish its "
        "pose (false: each frame's pose after the quality gate)",
    ),
    ParamSpec(
        "time_jump_reset_s", 3.0, "s: a stamp this far back is a restart (bag loop): state resets", min=0.0, max=1e9
    ),
    ParamSpec(
        "image_timeout_s",
        1.0,
        "s: no image for this long is reported on /diagnostics (camera stopped)",
        min=0.01,
        max=3600.0,
    ),
    ParamSpec("diagnostics_period", 1.0, "s: period of /diagnostics between frames", min=0.05, max=60.0),
    ParamSpec(
        "imu.enabled",
        False,
        "subscribe 'imu' (sensor_msgs/Imu, orientation in a gravity-aligned frame, REP-145) and give the localizer "
        "gravity in the camera at each image's time (the map's z up): its alignment keeps near that roll and pitch",
    ),
    ParamSpec(
        "imu.max_age_s", 0.05, "s: the IMU message nearest the image stamp is used if this close", min=0.0, max=10.0
    ),
    ParamSpec(
        "imu.sigma_deg",
        0.05,
        "deg: roll and pitch std when the message's orientation_covariance is unknown (all zeros)",
        min=1e-4,
        max=90.0,
    ),
)

_GATE_DESCRIPTIONS = {
    "min_inliers": "quality gate: fewest PnP inliers for a pose",
    "min_inlier_ratio": "quality gate: smallest share of the matches that are PnP inliers",
    "min_confidence": "quality gate: smallest probability that a pose is right (its confidence, MODEL/confidence.json; "
    "0: off); with odometry, the smallest for a localization to be fused (as gate.min_inliers)",
    "max_position_std_m": "quality gate: m, largest position standard deviation",
    "max_rotation_std_deg": "quality gate: deg, largest rotation standard deviation",
    "max_jump_sigma": "quality gate: allowed jump = sigma * combined std + speed * dt (0 disables)",
    "max_speed_mps": "quality gate: m/s, fastest motion between accepted poses",
    "max_angular_speed_dps": "quality gate: deg/s, fastest turn between accepted poses",
    "jump_timeout_s": "quality gate: s, no jump test against an older pose",
    "jump_reset_after": "quality gate: a pose far from the last is held until this many poses in a row agree with it",
    "first_confirmations": "quality gate: a pose with no recent published pose to test it against (the first, or "
    "after jump_timeout_s) is held until this many poses in a row agree with it; 1 publishes it at once",
}


_FUSION_DESCRIPTIONS = {
    "drift_m_per_m": "fusion: odometry position drift, m (std) per m driven",
    "drift_deg_per_m": "fusion: odometry rotation drift, deg (std) per m driven",
    "floor_m": "fusion: m, position std added at every update (measurements of one scene are not independent)",
    "floor_deg": "fusion: deg, rotation std added at every update",
    "gate_chi2": "fusion: a localization farther than this (Mahalanobis squared, 6 dof) starts another hypothesis",
    "min_updates": "fusion: agreeing localizations before the first fused pose",
    "switch_after": "fusion: localizations fitting a rival best (none the published one since) before it takes over",
    "max_hypotheses": "fusion: hypotheses kept (the published one and its rivals)",
    "correlation_length_m": "fusion: m of path over which localization errors stay alike (0: independent)",
    "correlated_share": "fusion: share (0-1) of each localization's covariance that is correlated in time",
    "intersect_own_prior": "fusion: fuse localizations tracked from the fused pose by covariance intersection",
    "robust_chi2": "fusion: a localization fitting at Mahalanobis squared d2 > this counts d2/robust_chi2 times less",
}


def _dataclass_specs(prefix: str, obj: Any, descriptions: dict[str, str] | None = None) -> list[ParamSpec]:
    specs: list[ParamSpec] = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            specs += _dataclass_specs(f"{prefix}.{f.name}", value)
        else:
            desc = (descriptions or {}).get(f.name) or f"{type(obj).__name__}.{f.name} (see its docstring)"
            value = list(value) if isinstance(value, tuple) else value  # a ROS array parameter, as YAML writes it
            specs.append(ParamSpec(f"{prefix}.{f.name}", value, desc))
    return specs


def all_param_specs() -> tuple[ParamSpec, ...]:
    return (
        *NODE_PARAMS,
        *_dataclass_specs("gate", GateConfig(), _GATE_DESCRIPTIONS),
        *_dataclass_specs("fusion", FusionConfig(), _FUSION_DESCRIPTIONS),
        *_dataclass_specs("localizer", LocalizerConfig()),
    )


@dataclass(frozen=True)
class NodeParams:
    map_path: str
    model_path: str
    providers: str
    map_frame: str
    odom_frame: str
    base_frame: str
    camera_frame: str
    camera_mount: tuple[float, ...] | None  # x y z qx qy qz qw, or None: from /tf_static
    require_mount: bool
    rectified: bool
    image_transport: str
    qos_reliability: str
    qos_depth: int
    publish_tf: bool
    transform_tolerance: float
    publish_visible_points: bool
    publish_debug_image: bool
    publish_raw_pose: bool
    map_cloud_max_points: int
    tracking_enabled: bool
    tracking_max_failures: int
    tracking_confirm_updates: int
    fusion_enabled: bool
    time_jump_reset_s: float
    diagnostics_period: float
    image_timeout_s: float
    imu_enabled: bool = False
    imu_max_age_s: float = 0.05
    imu_sigma_deg: float = 0.05
    gate: GateConfig = field(default_factory=GateConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)


def _check_value(spec: ParamSpec, value: Any) -> Any:
    """Type, range and choice check; int -> float where a float is expected. Raises ParamError."""
    default, name = spec.default, spec.name
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamError(f"{name}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f"{name}: expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(f"{name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ParamError(f"{name}: expected a finite number, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ParamError(f"{name}: expected a string, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise ParamError(f"{name}: must be one of {list(spec.choices)}, got {value!r}")
        return value
    elif isinstance(default, list | tuple):
        if value is None:
            return []
        if isinstance(value, array.array):  # rclpy hands double arrays back as array('d')
            value = value.tolist()
        if default and all(isinstance(v, str) for v in default):  # a string array (e.g. alignment.environments)
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ParamError(f"{name}: expected a list of strings, got {value!r}")
            return list(value)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise ParamError(f"{name}: expected a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if spec.min is not None and value < spec.min:
        raise ParamError(f"{name}: {value} is below the minimum {spec.min}")
    if spec.max is not None and value > spec.max:
        raise ParamError(f"{name}: {value} is above the maximum {spec.max}")
    return value


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return out


def _section(values: dict[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``prefix.*`` values with the prefix taken off (``skip``: names that are the node's, not the config's)."""
    n = len(prefix) + 1
    return {k[n:]: val for k, val in values.items() if k.startswith(prefix + ".") and k[n:] not in skip}


def _config(make: Callable[[], Any]) -> Any:
    """A config dataclass from its parameters; its own validation error becomes a :class:`ParamError`."""
    try:
        return make()
    except ValueError as exc:
        raise ParamError(str(exc)) from exc


def params_from_values(values: dict[str, Any]) -> NodeParams:
    """Flat ``{dotted name: value}`` (defaults for the missing) -> validated :class:`NodeParams`.

    Raises :class:`ParamError` whose text names the parameter and the fault.
    """
    specs = {s.name: s for s in all_param_specs()}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ParamError(f"{unknown[0]}: unknown parameter")
    v = {name: _check_value(spec, values.get(name, spec.default)) for name, spec in specs.items()}
    if not v["map_path"]:
        raise ParamError("map_path: not set (the directory of a map built with ep2p-loc build-map)")
    mount = v["camera_mount"]
    if mount in ([], [0.0]):
        mount = None
    elif len(mount) != 7:
        raise ParamError(f"camera_mount: expected 7 numbers [x, y, z, qx, qy, qz, qw], got {len(mount)}")
    elif not all(math.isfinite(x) for x in mount) or math.hypot(*mount[3:]) < 1e-6:
        raise ParamError(f"camera_mount: needs finite numbers and a non-zero quaternion, got {mount}")
    gate = _config(lambda: GateConfig(**_section(v, "gate")))
    fusion = _config(lambda: FusionConfig(**_section(v, "fusion", skip=("enabled",))))
    localizer = _config(lambda: LocalizerConfig.from_dict(_nest(_section(v, "localizer")), source="localizer"))
    return NodeParams(
        map_path=v["map_path"],
        model_path=v["model_path"] or str(DEFAULT_MODEL_DIR),
        providers=v["providers"],
        map_frame=v["map_frame"],
        odom_frame=v["odom_frame"],
        base_frame=v["base_frame"],
        camera_frame=v["camera_frame"],
        camera_mount=tuple(mount) if mount else None,
        require_mount=v["require_mount"],
        rectified=v["rectified"],
        image_transport=v["image_transport"],
        qos_reliability=v["qos.reliability"],
        qos_depth=v["qos.depth"],
        publish_tf=v["publish_tf"],
        transform_tolerance=v["transform_tolerance"],
        publish_visible_points=v["publish_visible_points"],
        publish_debug_image=v["publish_debug_image"],
        publish_raw_pose=v["publish_raw_pose"],
        map_cloud_max_points=v["map_cloud_max_points"],
        tracking_enabled=v["tracking.enabled"],
        tracking_max_failures=v["tracking.max_failures"],
        tracking_confirm_updates=v["tracking.confirm_updates"],
        fusion_enabled=v["fusion.enabled"],
        time_jump_reset_s=v["time_jump_reset_s"],
        diagnostics_period=v["diagnostics_period"],
        image_timeout_s=v["image_timeout_s"],
        imu_enabled=v["imu.enabled"],
        imu_max_age_s=v["imu.max_age_s"],
        imu_sigma_deg=v["imu.sigma_deg"],
        gate=gate,
        fusion=fusion,
        localizer=localizer,
    )


def _descriptor(spec: ParamSpec):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    d = ParameterDescriptor(description=spec.description)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    default = spec.default
    if isinstance(default, float) and not isinstance(default, bool):
        # dynamic typing so that YAML's `1` for a float is accepted (validated and converted on configure)
        d.dynamic_typing = True
        if spec.min is not None and spec.max is not None:
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max))]
    elif isinstance(default, int) and not isinstance(default, bool):
        d.type = ParameterType.PARAMETER_INTEGER
        if spec.min is not None and spec.max is not None:
            d.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    elif isinstance(default, list):
        d.dynamic_typing = True  # YAML's [] has no element type
    return d


def declare_params(node) -> list[str]:
    """Declare every parameter not declared yet (overrides from params files/-p apply). Returns the errors."""
    errors = []
    for spec in all_param_specs():
        if node.has_parameter(spec.name):
            continue
        try:
            node.declare_parameter(spec.name, spec.default, _descriptor(spec))
        except Exception as exc:  # rclpy raises InvalidParameterTypeException / ...ValueException
            errors.append(f"{spec.name}: {exc}")
    return errors


def read_params(node) -> NodeParams:
    """Declared parameters -> validated :class:`NodeParams` (raises :class:`ParamError` naming the parameter)."""
    values = {}
    for spec in all_param_specs():
        if node.has_parameter(spec.name):
            values[spec.name] = node.get_parameter(spec.name).value
    return params_from_values(values)
