"""``ep2p_loc``: the lifecycle node that localizes every camera frame in the LiDAR map.

Thin on purpose: it converts messages, calls the same :class:`~ep2p_loc_ros.localizer.Localizer` (and the same
:class:`~ep2p_loc_ros.localizer.LocalizerConfig`) as the CLI, gates the result
(:mod:`ep2p_loc_ros.pose_gate`) and publishes it. With odometry (odom->base on /tf) and ``fusion.enabled`` it
instead feeds every localization to a map->odom filter (:mod:`ep2p_loc_ros.map_odom_filter`) and publishes the
filter's pose: one image fixes the camera poorly along its optical axis, and averaging over time through odometry
cancels what varies between frames (``bench/fusion.py``).

Lifecycle
    configure   declare + validate parameters, load the model and the (memory-mapped) map, create publishers.
                A bad parameter or file fails the transition; the log names it. The node stays unconfigured.
    activate    subscriptions (image, camera_info, imu, /initialpose, /tf, /tf_static), ~/relocalize, the worker thread.
    deactivate  subscriptions and worker go; cleanup: publishers and the localizer go; shutdown: everything.
    Out-of-order transitions are refused by the lifecycle state machine; the node keeps running.

Topics (relative names: namespaces and remaps apply)
    in   image (sensor_msgs/Image; or image/compressed with image_transport:=compressed), camera_info,
         imu (sensor_msgs/Imu, with imu.enabled: gravity at the image's time keeps the alignment near that tilt),
         /initialpose (PoseWithCovarianceStamped of base_frame in map_frame, as RViz's "2D Pose Estimate")
    out  ~/pose (PoseWithCovarianceStamped, header.stamp = image stamp, header.frame_id = map_frame; the pose
         is of base_frame when the base->camera mount is known, else of the camera's optical frame:
         /diagnostics key ``pose_of`` says which; with fusion, the map->odom filter's pose of base_frame),
         ~/raw_pose (the same for every pose the localizer finds,
         before the quality gate: for evaluation and tuning the gate, never for fusion), ~/visible_points
         (PointCloud2, map frame, intensity 1 for PnP inliers), ~/debug_image (optional), ~/map_cloud (the map,
         thinned, latched: for RViz), /tf, /diagnostics.

Services (while active)
    ~/relocalize (std_srvs/Trigger): forget where the vehicle is (tracking, the quality gate, the map->odom filter)
         and search the next image globally, as nav2_amcl's reinitialize_global_localization: a vehicle that was
         moved while the node was not looking, or a pose the operator sees is wrong.

TF (REP-105, like nav2_amcl): map->odom when odom->base exists at the image stamp, else map->base (or
map->camera when the mount is unknown); stamped image stamp + transform_tolerance.

Frames are processed newest-first in one worker thread: a frame that arrives while the worker is busy
replaces the waiting one, which counts as dropped. A frame with a bad message, a failed localization or a
result refused by the quality gate publishes no pose; /diagnostics says why. Nothing a message contains
stops the node.

Signals: SIGINT / SIGTERM stop the node (within ``SPIN_WAKE_S``); SIGUSR1 writes every thread's Python stack to
stderr and the node runs on (to see where a stuck node waits).
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, PointCloud2
from std_srvs.srv import Trigger

from ..geometry import invert, make_T, quaternion_to_matrix
from ..gravity import GravityPrior
from ..localizer import Localizer
from ..map_odom_filter import MapOdomFilter
from ..pose_gate import PoseGate, fusion_refusal, rebase_pose
from ..tracking_policy import TrackingPolicy
from .convert import (
    ConversionError,
    camera_info_to_camera,
    compressed_image_to_rgb,
    image_to_rgb,
    imu_to_gravity,
    matrix_to_pose,
    pose_to_matrix,
    rgb_to_image,
    xyz_to_pointcloud2,
)
from .diagnostics import Level, make_diagnostics
from .params import NodeParams, ParamError, declare_params, read_params
from .tf import TransformPublisher, make_transform_stamped
from .tf_listener import TransformCache

__all__ = ["NODE_NAME", "LocalizationNode"]

NODE_NAME = "ep2p_loc"
IMU_KEPT = 200  # IMU messages kept to find the one nearest an image's stamp (1 s at 200 Hz)


def _stamp_s(stamp) -> float:
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _stamp_str(stamp) -> str:
    return f"{int(stamp.sec)}.{int(stamp.nanosec):09d}"


def _add_seconds(stamp, seconds: float):
    from builtin_interfaces.msg import Time

    ns = _stamp_ns(stamp) + round(seconds * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


@dataclass
class _Frame:
    msg: Any  # Image or CompressedImage
    received: float  # time.perf_counter() when the callback got it


class LocalizationNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.params: NodeParams | None = None
        self.localizer: Localizer | None = None
        self._pubs: dict[str, Any] = {}
        self._diag_pub = None
        self._tf_pub: TransformPublisher | None = None
        self._tf: TransformCache | None = None
        self._subs: list[Any] = []
        self._relocalize_srv = None
        self._diag_timer = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._pending: _Frame | None = None
        self._camera_info: CameraInfo | None = None
        self._imu: collections.deque[Imu] = collections.deque(maxlen=IMU_KEPT)  # the newest IMU messages
        self._camera_cache: tuple[int, Any] | None = None
        self._reset_counters()
        self._reset_tracking()
        self._state_label = "unconfigured"
        self._last_image_time: float | None = None  # time.monotonic() of the newest image message
        self._degraded: str = ""  # a standing fault (e.g. CUDA fell back to CPU), reported with every status
        # /diagnostics lives as long as the node: a failed configure is reported there too
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.get_logger().info("ep2p_loc: created (unconfigured); configure + activate to localize")

    # ------------------------------------------------------------------------------------------------------
    # lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            errors = declare_params(self)  # those rclpy refuses (type of a typed parameter, integer ranges)
            try:
                params = read_params(self)  # the rest, and the config dataclasses' own checks
            except ParamError as exc:
                errors.append(str(exc))
            if errors:
                for e in errors:
                    self.get_logger().error(f"configure failed: bad parameter {e}")
                self._report(Level.ERROR, f"configure failed: bad parameter {errors[0]}", {})
                return TransitionCallbackReturn.FAILURE
            t0 = time.perf_counter()
            try:
                localizer = Localizer.from_paths(params.map_path, params.model_path, params.localizer, params.providers)
            except Exception as exc:  # DataError / MapFormatError name the file and the fault; others: say which
                fault = str(exc) if isinstance(exc, ValueError | OSError) else f"{type(exc).__name__}: {exc}"
                self.get_logger().error(
                    f"configure failed: cannot load map_path={params.map_path!r} / model_path={params.model_path!r}: "
                    f"{fault}"
                )
                self._report(Level.ERROR, f"configure failed: {fault}", {})
                return TransitionCallbackReturn.FAILURE
            self.params, self.localizer = params, localizer
            session = getattr(localizer, "session", None)
            self._degraded = getattr(session, "fallback", None) or ""
            if self._degraded:
                self.get_logger().warning(f"degraded: {self._degraded}")
            covariance_source = getattr(localizer, "covariance_source", "n/a")
            if params.localizer.calibrated_covariance and covariance_source.startswith("PnP alone"):
                self.get_logger().warning(
                    f"covariance: {covariance_source}: PnP's covariance is far too small for a weak matcher; run "
                    "`ep2p-loc calibrate-covariance` on held-out drives"
                )
            self._gate = PoseGate(params.gate)
            self._fusion = MapOdomFilter(params.fusion) if params.fusion_enabled else None
            self._pubs = {
                "pose": self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/pose", 10),
                "raw_pose": self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/raw_pose", 10),
                "visible_points": self.create_lifecycle_publisher(PointCloud2, "~/visible_points", 2),
                "debug_image": self.create_lifecycle_publisher(Image, "~/debug_image", 2),
                "map_cloud": self.create_lifecycle_publisher(
                    PointCloud2,
                    "~/map_cloud",
                    QoSProfile(
                        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
                    ),
                ),
            }
            if self._tf_pub is None:  # kept across cleanup: its publishers live as long as the node
                self._tf_pub = TransformPublisher(self)
            self._state_label = "inactive"
            self.get_logger().info(
                f"configured in {time.perf_counter() - t0:.2f} s: map {params.map_path} "
                f"({localizer.map.num_submaps} submaps, {localizer.map.num_points} points), "
                f"model {params.model_path}, providers {params.providers}; "
                f"covariance: {covariance_source}; reflectance alignment: "
                f"{getattr(localizer, 'alignment_mode', 'n/a')} ({getattr(localizer, 'map_environment', '?')} map)"
            )
            self._report(
                Level.OK,
                "configured",
                {
                    "provider": getattr(session, "provider", "n/a"),
                    "covariance": covariance_source,
                    "confidence": getattr(localizer, "confidence_source", "n/a"),
                    "alignment": getattr(localizer, "alignment_mode", "n/a"),
                },
            )
            return TransitionCallbackReturn.SUCCESS
        except Exception as exc:  # never die in a transition
            self.get_logger().error(f"configure failed: {exc}\n{traceback.format_exc()}")
            self._release_all()
            return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            p = self.params
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=p.qos_depth,
                reliability=ReliabilityPolicy.BEST_EFFORT
                if p.qos_reliability == "best_effort"
                else ReliabilityPolicy.RELIABLE,
            )
            if p.image_transport == "compressed":
                self._subs.append(self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos))
            else:
                self._subs.append(self.create_subscription(Image, "image", self._on_image, qos))
            self._subs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos))
            if p.imu_enabled:  # sensor data: best effort, a second of history at a fast IMU's rate
                imu_qos = QoSProfile(
                    history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT
                )
                self._subs.append(self.create_subscription(Imu, "imu", self._on_imu, imu_qos))
            self._subs.append(
                self.create_subscription(PoseWithCovarianceStamped, "/initialpose", self._on_initial_pose, 1)
            )
            self._relocalize_srv = self.create_service(Trigger, "~/relocalize", self._on_relocalize)
            self._tf = TransformCache(self)
            self._reset_tracking()
            self._last_image_time = None
            self._stop.clear()
            self._worker = threading.Thread(target=self._work, name="ep2p_loc_worker", daemon=True)
            self._worker.start()
            self._diag_timer = self.create_timer(p.diagnostics_period, self._on_diag_timer)
            self._state_label = "active"
            ret = super().on_activate(state)  # lifecycle publishers publish from here on
            self._publish_map_cloud()
            self.get_logger().info(
                f"active: image topic {self.resolve_topic_name('image')}, QoS {p.qos_reliability}/{p.qos_depth}"
            )
            return ret
        except Exception as exc:
            self.get_logger().error(f"activate failed: {exc}\n{traceback.format_exc()}")
            self._release_active()
            return TransitionCallbackReturn.FAILURE

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._state_label = "inactive"
        self.get_logger().info("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        self._state_label = "unconfigured"
        self.get_logger().info("cleaned up: map and model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        self._state_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything, back to unconfigured")
        self._release_all()
        self._state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _release_active(self) -> None:
        self._stop.set()
        with self._cond:
            self._pending = None
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs.clear()
        if self._relocalize_srv is not None:
            self.destroy_service(self._relocalize_srv)
            self._relocalize_srv = None
        if self._tf is not None:
            self._tf.destroy()
            self._tf = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def _release_all(self) -> None:
        self._release_active()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self.localizer is not None:
            self.localizer.close()
        self.localizer = None
        self._degraded = ""
        self._camera_info = None
        self._camera_cache = None
        self._imu.clear()

    # ------------------------------------------------------------------------------------------------------
    # callbacks (executor thread): keep the newest frame, never block
    def _on_image(self, msg: Any) -> None:
        frame = _Frame(msg, time.perf_counter())
        self._last_image_time = time.monotonic()
        with self._cond:
            self._counters["frames_received"] += 1
            if self._pending is not None:
                self._counters["frames_dropped"] += 1
            self._pending = frame
            self._cond.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_imu(self, msg: Imu) -> None:
        self._imu.append(msg)

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        try:
            T_map_base = pose_to_matrix(msg.pose.pose)
        except ConversionError as exc:
            self.get_logger().warning(f"/initialpose ignored: {exc}")
            return
        if msg.header.frame_id and msg.header.frame_id.lstrip("/") != self.params.map_frame:
            self.get_logger().warning(
                f"/initialpose ignored: frame {msg.header.frame_id!r} is not map_frame {self.params.map_frame!r}"
            )
            return
        with self._cond:
            self._initial_pose, self._relocalize = T_map_base, False  # the later instruction wins
        self.get_logger().info(f"initial pose received: x={T_map_base[0, 3]:.2f} y={T_map_base[1, 3]:.2f}")

    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._cond:
            self._relocalize, self._initial_pose = True, None  # the later instruction wins
        self.get_logger().info("relocalize requested: the next image is searched globally")
        response.success = True
        response.message = (
            "the next image is searched globally; tracking, the quality gate and the map->odom filter start over"
        )
        return response

    def _on_diag_timer(self) -> None:
        now = time.monotonic()
        p = self.params
        last_image = self._last_image_time
        if last_image is not None and now - last_image > p.image_timeout_s:
            # the camera stopped (or the link): say so every period until images come back
            topic = self.resolve_topic_name("image/compressed" if p.image_transport == "compressed" else "image")
            self._report(
                Level.WARN,
                f"no image for {now - last_image:.1f} s on {topic} (> image_timeout_s {p.image_timeout_s}): "
                "camera stopped?",
                {"result": "stale", "image_age_s": now - last_image},
                keep_last=True,
            )
        elif self._last_diag_time is None or now - self._last_diag_time >= p.diagnostics_period:
            if self._counters["frames_received"] == 0:
                self._report(Level.WARN, f"waiting for images on {self.resolve_topic_name('image')}", {})
            else:
                self._report(self._last_level, self._last_message, {})

    # ------------------------------------------------------------------------------------------------------
    # worker
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while self._pending is None and not self._stop.is_set():
                    self._cond.wait(timeout=0.5)
                if self._stop.is_set():
                    return
                frame, self._pending = self._pending, None
            try:
                self._process(frame)
            except Exception as exc:  # a bug must not stop localization of the next frames
                self.get_logger().error(f"frame failed: {exc}\n{traceback.format_exc()}")
                self._reject(frame, Level.ERROR, "internal error", f"{type(exc).__name__}: {exc}", {})

    def _reject(self, frame: _Frame, level: int, result: str, reason: str, extra: dict[str, Any]) -> None:
        self._counters["frames_rejected"] += 1
        values = {
            "result": result,
            "reason": reason,
            "image_stamp": _stamp_str(frame.msg.header.stamp),
            "latency_ms": (time.perf_counter() - frame.received) * 1e3,
            **extra,
        }
        self._report(level, f"{result}: {reason}", values)

    def _camera(self, image_frame: str):
        """(PinholeCamera, camera frame id) from the newest camera_info. Raises ConversionError."""
        info = self._camera_info
        if info is None:
            raise ConversionError(f"no camera_info received yet on {self.resolve_topic_name('camera_info')}")
        if self._camera_cache is None or self._camera_cache[0] is not info:  # holds the message: no id reuse
            self._camera_cache = (info, camera_info_to_camera(info, rectified=self.params.rectified))
        frame_id = info.header.frame_id or image_frame or self.params.camera_frame
        return self._camera_cache[1], frame_id.lstrip("/")

    def _process(self, frame: _Frame) -> None:
        p, msg = self.params, frame.msg
        stamp = msg.header.stamp
        stamp_s = _stamp_s(stamp)
        if self._last_stamp is not None and stamp_s <= self._last_stamp:
            back = self._last_stamp - stamp_s
            if back > p.time_jump_reset_s:
                self.get_logger().warning(f"image stamps jumped back {back:.1f} s: restart, tracking state reset")
                self._reset_tracking()
            else:
                self._reject(frame, Level.WARN, "bad input", f"stamp went back {back:.3f} s (not after the last)", {})
                return
        try:
            rgb = compressed_image_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
            camera, cam_frame = self._camera(msg.header.frame_id)
            if (camera.width, camera.height) != (rgb.shape[1], rgb.shape[0]):
                raise ConversionError(
                    f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says {camera.width}x{camera.height}"
                )
        except (ConversionError, ValueError) as exc:
            self._reject(frame, Level.WARN, "bad input", str(exc), {})
            return
        self._last_stamp = stamp_s

        # the mount (base -> camera) and, with tracking, a prior
        T_base_cam = self._mount(cam_frame)
        prior, mode = self._prior(T_base_cam, stamp)
        outside = self._outside_map(prior)
        gravity, gravity_note = self._gravity(cam_frame, T_base_cam, stamp)
        t0 = time.perf_counter()
        result = self.localizer.localize(rgb, camera, prior, source=f"image {_stamp_str(stamp)}", gravity=gravity)
        localize_ms = (time.perf_counter() - t0) * 1e3
        extra = {
            "mode": mode,
            "gravity": gravity_note,
            "localize_ms": localize_ms,
            "inliers": result.num_inliers,
            "matches": result.num_matches,
            "localizer_status": result.status.value,
            "aligned": result.aligned,
            **{f"t_{k}_ms": float(v) for k, v in result.timings_ms.items()},
        }
        if math.isfinite(result.confidence):  # P(within 0.5 m / 5 deg): MODEL/confidence.json (pose_confidence.py)
            extra["confidence"] = result.confidence
        if p.publish_visible_points and result.num_matches:
            self._publish_points(result, stamp)
        if p.publish_debug_image:
            self._publish_debug(rgb, result, stamp, cam_frame)
        if outside:
            extra["map"] = outside
        T_odom_base = self._odom_T(stamp) if self._fusion is not None and T_base_cam is not None else None
        if T_odom_base is not None:
            self._fuse(frame, result, T_base_cam, T_odom_base, extra)
            return
        if not result.ok:
            self._tracking_failed()
            level = Level.ERROR if result.status.value == "bad_input" else Level.WARN
            reason = f"{result.status.value}: {result.message}"
            self._reject(frame, level, "no pose", f"{outside}; {reason}" if outside else reason, extra)
            return
        mount_known = T_base_cam is not None or not p.require_mount or cam_frame == p.base_frame
        if T_base_cam is not None:
            T_map_out, cov_out = rebase_pose(result.T_map_cam, result.covariance, T_base_cam)
            child, pose_of = p.base_frame, p.base_frame
        else:  # the camera's own pose (its frame is the base frame, or no mount is required)
            T_map_out, cov_out, child, pose_of = result.T_map_cam, result.covariance, cam_frame, cam_frame
        if mount_known:
            extra["pose_of"] = pose_of  # of ~/raw_pose too, so a refused frame's raw pose can be scored
            if p.publish_raw_pose:
                self._pubs["raw_pose"].publish(self._pose_msg(T_map_out, cov_out, stamp))
        decision = self._gate.check(
            result.T_map_cam,
            result.covariance,
            result.num_inliers,
            stamp_s,
            num_matches=result.num_matches,
            confidence=result.confidence,
        )
        extra.update(position_std_m=decision.position_std_m, rotation_std_deg=decision.rotation_std_deg)
        if not decision.accepted:
            self._tracking_failed()
            self._reject(frame, Level.WARN, "held" if decision.held else "rejected", decision.reason, extra)
            return

        if not mount_known:
            # a camera pose where the vehicle's is expected would be a wrong pose: publish none, say why
            self._reject(
                frame,
                Level.ERROR,
                "no pose",
                f"camera mount {p.base_frame}->{cam_frame} unknown: not on /tf_static and no camera_mount parameter "
                "(require_mount:=false publishes the camera's own pose instead)",
                extra,
            )
            return
        message = "localized" if decision.reason == "ok" else f"localized: {decision.reason}"
        self._localized(
            frame, T_map_out, cov_out, child, result.T_map_cam, self._odom_T(stamp), message, decision.reason, extra
        )

    def _fuse(self, frame: _Frame, result: Any, T_base_cam: np.ndarray, T_odom_base: np.ndarray, extra: dict) -> None:
        """With odometry: the localization (if any, with ``gate.min_inliers`` and ``gate.min_confidence``:
        :func:`fusion_refusal`) updates the map->odom filter, and the filter's pose is published (map_odom_filter.py:
        it averages what varies between frames and refuses gross errors by its own χ² test and hypotheses, so the
        per-frame gate's other tests do not apply here)."""
        p, stamp = self.params, frame.msg.header.stamp
        note = f"no localization ({result.status.value}: {result.message})"
        if result.ok:
            T_map_base, cov_base = rebase_pose(result.T_map_cam, result.covariance, T_base_cam)
            extra["pose_of"] = p.base_frame
            if p.publish_raw_pose:
                self._pubs["raw_pose"].publish(self._pose_msg(T_map_base, cov_base, stamp))
            refusal = fusion_refusal(p.gate, result.num_inliers, result.confidence)
            note = f"not fused: {refusal}"
            if refusal is None:
                try:
                    # tracked from the filter's own pose (its published one; before that, a prior came from elsewhere)
                    own = extra["mode"].startswith("tracking") and self._fusion.map_odom() is not None
                    extra["fusion_own_prior"] = own
                    up = self._fusion.update(T_map_base, cov_base, T_odom_base, own_prior=own)
                except ValueError as exc:  # e.g. a covariance that is not positive definite
                    note = f"not fused: {exc}"
                else:
                    note = "fused" if up.accepted else f"not fused: {up.reason}"
                    # fusion_weight < 1: far inside the gate, fusion.robust_chi2 counted it less
                    extra.update(
                        fusion_mahalanobis2=up.mahalanobis2, fusion_hypotheses=up.hypotheses, fusion_weight=up.weight
                    )
        self._fusion.predict(T_odom_base)  # odometry advances the filter with or without a localization
        fused = self._fusion.pose(T_odom_base)
        if fused is None:
            self._tracking_failed()
            waiting = f"fusion: waiting for {p.fusion.min_updates} agreeing localizations; {note}"
            self._reject(frame, Level.WARN, "held", waiting, extra)
            return
        T_map_base, cov = fused
        T_map_cam = T_map_base @ T_base_cam
        self._localized(
            frame,
            T_map_base,
            cov,
            p.base_frame,
            T_map_cam,
            T_odom_base,
            f"localized (fused): {note}",
            note,
            extra,
            joined=note == "fused",
        )

    def _localized(
        self,
        frame: _Frame,
        T_map_out: np.ndarray,
        cov_out: np.ndarray,
        child: str,
        T_map_cam: np.ndarray,
        T_odom_base: np.ndarray | None,
        message: str,
        reason: str,
        extra: dict,
        joined: bool = True,
    ) -> None:
        """Publish a pose of ``child`` (``~/pose``, TF), track from the camera pose ``T_map_cam`` (with the odometry
        at its stamp) and report it: the end of every frame that gets a pose, gated or fused. ``joined``: this
        frame's localization is part of that pose (a fused pose is published without one too; see
        :mod:`ep2p_loc_ros.tracking_policy`)."""
        stamp = frame.msg.header.stamp
        self._pubs["pose"].publish(self._pose_msg(T_map_out, cov_out, stamp))
        latency_ms = (time.perf_counter() - frame.received) * 1e3
        tf_note = self._publish_tf(T_map_out, child, stamp) if self.params.publish_tf else "off"
        with self._cond:
            self._tracked = (T_map_cam, _stamp_s(stamp), T_odom_base)
            self._policy.record(joined)
        self._counters["frames_localized"] += 1
        values = {
            "result": "localized",
            "reason": reason,
            "image_stamp": _stamp_str(stamp),
            "latency_ms": latency_ms,
            "pose_of": child,
            "tf": tf_note,
            **extra,
        }
        self._report(Level.OK, message, values)

    # -- helpers of the worker ------------------------------------------------------------------------------
    def _outside_map(self, prior: np.ndarray | None) -> str:
        """'' or why the prior is outside the map (farther from every submap viewpoint than a submap reaches)."""
        lidar_map = getattr(self.localizer, "map", None)
        if prior is None or lidar_map is None:
            return ""
        if lidar_map.num_submaps == 0:
            return "outside the map: the map has no submaps"
        from ..map import nearest_submaps

        _, dist = nearest_submaps(lidar_map, prior, 1)
        limit = float(getattr(self.params.localizer, "max_prior_distance", 0.0) or lidar_map.params.get("radius", 40))
        if float(dist[0]) > limit:
            return (
                f"outside the map: the prior pose is {float(dist[0]):.0f} m from the nearest submap viewpoint "
                f"(> {limit:g} m)"
            )
        return ""

    def _mount(self, cam_frame: str) -> np.ndarray | None:
        p = self.params
        if p.camera_mount is not None:
            x, y, z, *q = p.camera_mount
            return make_T(quaternion_to_matrix(np.array(q) / np.linalg.norm(q)), [x, y, z])
        if self._tf is None or cam_frame == p.base_frame:
            return None
        return self._tf.lookup(p.base_frame, cam_frame, 0, 0.0)

    def _gravity(self, cam_frame: str, T_base_cam: np.ndarray | None, stamp) -> tuple[GravityPrior | None, str]:
        """Gravity in the camera from the IMU message nearest ``stamp`` (``imu.enabled``), and what /diagnostics says
        of it: where it came from, or why there is none (the frame is localized without it)."""
        p = self.params
        if not p.imu_enabled:
            return None, "off"
        if not getattr(self.localizer, "takes_gravity", True):
            environment = getattr(self.localizer, "map_environment", "unknown")
            return None, f"not used on {environment} maps (localizer.alignment.gravity_environments)"
        t = _stamp_s(stamp)
        msgs = list(self._imu)  # (appended from the executor's thread)
        if not msgs:
            return None, f"none: no message on {self.resolve_topic_name('imu')} yet"
        msg = min(msgs, key=lambda m: abs(_stamp_s(m.header.stamp) - t))
        age = abs(_stamp_s(msg.header.stamp) - t)
        if age > p.imu_max_age_s:
            return None, f"none: the nearest IMU message is {age:.3f} s from the image (> imu.max_age_s)"
        imu_frame = msg.header.frame_id.lstrip("/") or p.base_frame
        if imu_frame == p.base_frame and T_base_cam is not None:
            T_cam_imu = invert(T_base_cam)
        elif imu_frame == cam_frame:
            T_cam_imu = np.eye(4)
        else:
            T_cam_imu = self._tf.lookup(cam_frame, imu_frame, 0, 0.0) if self._tf is not None else None
        if T_cam_imu is None:
            return None, f"none: the transform {imu_frame}->{cam_frame} is not on /tf_static"
        try:
            gravity = imu_to_gravity(msg, T_cam_imu[:3, :3], math.radians(p.imu_sigma_deg))
        except ConversionError as exc:
            return None, f"none: {exc}"
        return gravity, f"imu, {math.degrees(gravity.sigma_rad):.3g} deg ({imu_frame})"

    def _odom_T(self, stamp) -> np.ndarray | None:
        """``T_odom_base`` at ``stamp`` or None."""
        p = self.params
        if self._tf is None:
            return None
        return self._tf.lookup(p.odom_frame, p.base_frame, _stamp_ns(stamp), p.transform_tolerance)

    def _prior(self, T_base_cam: np.ndarray | None, stamp) -> tuple[np.ndarray | None, str]:
        with self._cond:
            initial, self._initial_pose = self._initial_pose, None
            relocalize, self._relocalize = self._relocalize, False
            tracked = self._tracked
        if initial is not None or relocalize:
            self._gate.reset()
            if self._fusion is not None:  # re-localized by hand: what the filter believed no longer counts
                self._fusion.reset()
            self._policy.reset()
        if initial is not None:
            T_map_cam = initial @ T_base_cam if T_base_cam is not None else initial
            return T_map_cam, "initial pose"
        if relocalize:
            with self._cond:
                self._tracked = None
            return None, "global (relocalize requested)"
        if not self.params.tracking_enabled or tracked is None:
            return None, "global"
        why = self._policy.global_reason(self._fusion)
        if why is not None:
            return None, f"global ({why})"
        T_map_cam_last, _, T_odom_base_last = tracked
        T_odom_base_now = self._odom_T(stamp)
        if T_base_cam is not None and T_odom_base_last is not None and T_odom_base_now is not None:
            # move the last pose by the odometry since then
            T_map_base_last = T_map_cam_last @ invert(T_base_cam)
            T_map_base_now = T_map_base_last @ invert(T_odom_base_last) @ T_odom_base_now
            return T_map_base_now @ T_base_cam, "tracking (odometry)"
        return T_map_cam_last, "tracking"

    def _tracking_failed(self) -> None:
        with self._cond:
            self._policy.record(False)  # from tracking.max_failures in a row on: global search

    def _pose_msg(self, T_map_out: np.ndarray, cov_out: np.ndarray, stamp) -> PoseWithCovarianceStamped:
        out = PoseWithCovarianceStamped()
        out.header.stamp = stamp
        out.header.frame_id = self.params.map_frame
        out.pose.pose = matrix_to_pose(T_map_out)
        out.pose.covariance = [float(v) for v in 0.5 * (cov_out + cov_out.T).ravel()]
        return out

    def _publish_tf(self, T_map_child: np.ndarray, child: str, stamp) -> str:
        p = self.params
        tf_stamp = _add_seconds(stamp, p.transform_tolerance)
        if child == p.base_frame:
            T_odom_base = self._odom_T(stamp)
            if T_odom_base is not None:
                T_map_odom = T_map_child @ invert(T_odom_base)
                self._tf_pub.send([make_transform_stamped(T_map_odom, p.map_frame, p.odom_frame, tf_stamp)])
                return f"{p.map_frame}->{p.odom_frame}"
            if self._tf is not None and self._tf.has_link(p.odom_frame, p.base_frame):
                return f"none: no {p.odom_frame}->{p.base_frame} within {p.transform_tolerance} s of the image"
        self._tf_pub.send([make_transform_stamped(T_map_child, p.map_frame, child, tf_stamp)])
        return f"{p.map_frame}->{child}"

    def _publish_map_cloud(self) -> None:
        """The map's points (evenly thinned), latched, so RViz shows the map the node localizes in."""
        n_max = self.params.map_cloud_max_points
        lidar_map = self.localizer.map
        if n_max <= 0 or lidar_map.num_points == 0:
            return
        rows = np.linspace(0, lidar_map.num_points - 1, min(n_max, lidar_map.num_points)).astype(np.int64)
        msg = xyz_to_pointcloud2(
            np.asarray(lidar_map.points[rows]),
            np.asarray(lidar_map.reflectance[rows]),
            frame_id=self.params.map_frame,
            stamp=self.get_clock().now().to_msg(),
        )
        self._pubs["map_cloud"].publish(msg)

    def _publish_points(self, result, stamp) -> None:
        msg = xyz_to_pointcloud2(
            result.matched_points, result.inlier_mask.astype(np.float32), frame_id=self.params.map_frame, stamp=stamp
        )
        self._pubs["visible_points"].publish(msg)

    def _publish_debug(self, rgb: np.ndarray, result, stamp, cam_frame: str) -> None:
        import cv2

        img = np.ascontiguousarray(rgb.copy())
        for (u, v), inlier in zip(result.matched_pixels, result.inlier_mask, strict=False):
            if np.isfinite(u) and np.isfinite(v):
                cv2.circle(img, (round(u), round(v)), 2, (0, 255, 0) if inlier else (255, 0, 0), -1)
        text = f"{result.status.value} inliers {result.num_inliers}/{result.num_matches}"
        cv2.putText(img, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
        self._pubs["debug_image"].publish(rgb_to_image(img, frame_id=cam_frame, stamp=stamp))

    # -- state and diagnostics ------------------------------------------------------------------------------
    def _reset_counters(self) -> None:
        self._counters = dict(frames_received=0, frames_localized=0, frames_rejected=0, frames_dropped=0)
        self._last_diag_time: float | None = None
        self._last_level, self._last_message = Level.OK, "starting"

    def _reset_tracking(self) -> None:
        self._tracked: tuple[np.ndarray, float, np.ndarray | None] | None = None
        self._initial_pose: np.ndarray | None = None
        self._relocalize = False  # ~/relocalize was called: the next frame starts over (see _prior)
        p = self.params
        hypotheses = getattr(self.localizer, "single_image_hypotheses", False)
        self._policy = (
            TrackingPolicy.for_localizer(p.tracking_max_failures, p.tracking_confirm_updates, hypotheses)
            if p
            else TrackingPolicy(1)
        )
        self._last_stamp: float | None = None
        if getattr(self, "_gate", None) is not None:
            self._gate.reset()
        if getattr(self, "_fusion", None) is not None:
            self._fusion.reset()

    def _report(self, level: int, message: str, values: dict[str, Any], keep_last: bool = False) -> None:
        pub = self._diag_pub
        if pub is None:
            return
        if self._degraded:  # a standing fault lowers every report to at least WARN and is named in it
            if level < Level.WARN:
                level, message = Level.WARN, f"{message} (degraded: {self._degraded})"
            values = {**values, "degraded": self._degraded}
        if not keep_last:
            self._last_level, self._last_message = level, message
        self._last_diag_time = time.monotonic()
        all_values = {"state": self._state_label, **values, **self._counters}
        msg = make_diagnostics(
            self.get_clock().now().to_msg(), self.get_fully_qualified_name(), level, message, all_values
        )
        with contextlib.suppress(Exception):  # publisher destroyed under us during a transition
            pub.publish(msg)


SPIN_WAKE_S = 0.25  # longest wait of the executor between checks for a shutdown (see main)


def main(args: list[str] | None = None, autostart: bool = False) -> int:
    """Run the node until SIGINT/SIGTERM (``args``: full argv for rclpy, e.g. with ``--ros-args``)."""
    import faulthandler
    import signal

    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    # `kill -USR1 <pid>` writes every thread's Python stack to stderr: how to see where a stuck node waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=args)
    node = LocalizationNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if autostart:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured (see above)")
        # Bounded waits, not executor.spin(): about once in twenty runs in tests a SIGINT left spin() waiting
        # forever (rclpy's handler did not wake the wait set); Python still raises KeyboardInterrupt at the next
        # return from the wait, so the node stops within SPIN_WAKE_S whatever rclpy's handler does.
        while rclpy.ok(context=node.context):
            try:
                executor.spin_once(timeout_sec=SPIN_WAKE_S)
            except Exception:
                if rclpy.ok(context=node.context):
                    raise
                # a SIGINT shut the context down between the check and the wait ("failed to initialize wait set:
                # the given context is not valid", once in ~200 stops in tests): a normal shutdown
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._release_all()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
