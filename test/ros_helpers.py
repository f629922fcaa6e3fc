"""Shared helpers for tests that run the ep2p_loc node in its own process over real DDS.

- :func:`ros_env`: a clean environment for a child process (NOTES-ros §2/§3: no inherited wheel bootstrap,
  host-local Fast DDS profile, a domain id, a ROS_HOME).
- :func:`start_node`: ``ep2p-loc node`` (or a stand-in, see :class:`OracleLocalizer`) as a child process with a
  params dict, remaps and extra ``--ros-args``; :class:`NodeProcess` wraps it (log, alive, stop).
- :class:`RosSession`: an rclpy context + node spinning in a background thread, with :meth:`collect` and
  :meth:`wait_for`; :class:`LifecycleClient`: drives ``/<node>/change_state`` and ``get_state``;
  :func:`set_parameters`.
- :class:`DemoSequence`: the demo drive as ROS messages (Image, CameraInfo, static TF base->camera) and
  ground truth; :func:`model_is_placeholder`.

``python test/ros_helpers.py oracle-node ARGS...`` runs the real node with :class:`OracleLocalizer` in place of
the model (see there); ``python test/ros_helpers.py node ARGS...`` runs it as ``ep2p-loc node`` does. In both,
``EP2P_TEST_FAULTS`` (comma-separated, see :func:`install_faults`) injects faults from outside the node, e.g.
``cuda``: onnxruntime offers CUDA but creating a CUDA session fails. Everything else is the shipped code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = ROOT / "config" / "fastdds_localhost.xml"
NODE_NAME = "ep2p_loc"


# ----------------------------------------------------------------------------------------------------------
# processes
def ros_env(domain_id: int | str | None = None, ros_home: str | Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for a ROS child process: this one's, minus the wheel bootstrap markers, plus DDS settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("_ROS_WHEELS_BOOTSTRAP_COMPLETE", "LD_LIBRARY_PATH")}
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else os.environ.get("ROS_DOMAIN_ID", "0"))
    env["ROS_HOME"] = str(ros_home or os.environ.get("ROS_HOME") or tempfile.mkdtemp(prefix="ep2p-ros-home-"))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = (
        "1"  # a crash in a child (e.g. a rare SIGSEGV at exit) leaves its Python stacks in the log
    )
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_params_file(params: dict[str, Any], path: str | Path, node: str = "/**") -> Path:
    """Flat ``{"qos.depth": 1, ...}`` (or nested) -> a ROS 2 params YAML for ``node``."""
    import yaml

    nested: dict[str, Any] = {}
    for key, value in params.items():
        d = nested
        *parents, last = key.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = value
    path = Path(path)
    path.write_text(yaml.safe_dump({node: {"ros__parameters": nested}}, sort_keys=False))
    return path


class NodeProcess:
    """A node child process with its combined stdout/stderr in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.cmd, self.log_path = cmd, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log():
                return True
            if not self.alive:
                return text in self.log()
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT, then SIGKILL after ``timeout``; returns the exit code. A node still running at the timeout is
        first asked for its threads' stacks (SIGUSR1, the node's faulthandler), so the log shows where it hung."""
        if self.alive:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def start_node(
    params: dict[str, Any] | None = None,
    remaps: dict[str, str] | None = None,
    extra_args: Iterable[str] = (),
    *,
    autostart: bool = False,
    params_file: str | Path | None = None,
    domain_id: int | str | None = None,
    log_dir: str | Path | None = None,
    oracle_sequence: str | Path | None = None,
    oracle_cost_ms: float = 0.0,
    env: dict[str, str] | None = None,
    faults: Iterable[str] = (),
) -> NodeProcess:
    """Start ``ep2p-loc node`` in a child process (not waiting for it).

    ``params``: flat dotted names -> values, written to a params file passed after the default one.
    ``remaps``: ``{"image": "/camera/image_raw"}`` -> ``-r image:=/camera/image_raw``. ``extra_args``: more
    ``--ros-args`` items. ``oracle_sequence``: run with :class:`OracleLocalizer` on that sequence;
    ``oracle_cost_ms``: the least time it takes a frame. ``faults``: injected faults (:func:`install_faults`).
    """
    faults = list(faults)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="ep2p-node-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if oracle_sequence is not None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "oracle-node", str(oracle_sequence)]
    elif faults:
        cmd = [sys.executable, str(Path(__file__).resolve()), "node"]
    else:
        cmd = [sys.executable, "-m", "ep2p_loc_ros.cli", "node"]
    if autostart:
        cmd.append("--autostart")
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    ros_args: list[str] = []
    if params:
        ros_args += ["--params-file", str(write_params_file(params, log_dir / "params.yaml"))]
    for src, dst in (remaps or {}).items():
        ros_args += ["-r", f"{src}:={dst}"]
    ros_args += list(extra_args)
    if ros_args:
        cmd += ["--ros-args", *ros_args]
    env = dict(env or ros_env(domain_id))
    if oracle_cost_ms > 0:
        env["EP2P_ORACLE_COST_MS"] = f"{oracle_cost_ms:g}"
    if faults:
        env["EP2P_TEST_FAULTS"] = ",".join(faults)
    return NodeProcess(cmd, env, log_dir / "node.log")


# ----------------------------------------------------------------------------------------------------------
# the test side of DDS
class RosSession:
    """An rclpy context with one node, spun by a background thread (callbacks run there)."""

    def __init__(self, name: str = "ep2p_test_driver") -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # shutdown while spinning
            self.executor.spin()

    def collect(self, msg_type, topic: str, qos: Any = 10) -> Collector:
        c = Collector()
        c.sub = self.node.create_subscription(msg_type, topic, c.add, qos)
        return c

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, period: float = 0.02) -> Any:
        end = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() > end:
                return value
            time.sleep(period)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


class Collector:
    """Messages of one subscription with their receive time (``time.perf_counter()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[float, Any]] = []
        self.sub = None

    def add(self, msg: Any) -> None:
        with self._lock:
            self.items.append((time.perf_counter(), msg))

    def messages(self) -> list[Any]:
        with self._lock:
            return [m for _, m in self.items]

    def find(self, predicate: Callable[[Any], bool]) -> tuple[float, Any] | None:
        with self._lock:
            for t, m in self.items:
                if predicate(m):
                    return t, m
        return None


def wait_connected(ros: Any, img_pub: Any, diags: Collector, timeout: float = 10.0) -> bool:
    """True once the node subscribes to ``img_pub``'s topic and its /diagnostics have reached ``diags``, then a
    moment more. Why: DDS matches each pair of endpoints on its own, so seeing the node's subscription does not
    mean the node has matched our publisher yet: a best-effort image sent at once can be dropped on its side (a
    fault test then waited 20 s for the reply to a frame the node never got, CI in session 50)."""
    ok = ros.wait_for(lambda: img_pub.get_subscription_count() > 0 and diags.messages(), timeout)
    time.sleep(0.3)
    return bool(ok)


RESEND_AFTER_S = 6.0  # send_frame: seconds without a reply after which a frame is sent again


def send_frame(
    ros: Any,
    img_pub: Any,
    info_pub: Any,
    diags: Collector,
    poses: Collector,
    image_msg: Any,
    info_msg: Any = None,
    timeout: float = 20.0,
    settle: float = 0.0,
) -> tuple[float, tuple[float, Any] | None, tuple[float, Any] | None]:
    """Publish one frame (its camera_info first) and wait for its diagnostics, then for its pose where they say it
    was localized: the pose and the diagnostics are different topics, either can arrive first. Otherwise the pose
    is looked for after ``settle`` seconds (a pose that should not exist may come late). Returns the publish time
    (``time.perf_counter()``), the diagnostics and the pose as :meth:`Collector.find` gives them, or None."""
    s = stamp_str(image_msg.header.stamp)

    def reply() -> tuple[float, Any] | None:
        return diags.find(lambda m: (diag_values(m) or {}).get("image_stamp") == s)

    # A frame the node never replies to within ``RESEND_AFTER_S`` is sent again (its camera_info too): camera
    # topics are best effort, and a loaded CI host has dropped a frame on the way (no reply in 20 s, twice in
    # session 50). Were the first copy only late, the node rejects the second as not after the last, and its
    # reply comes after the first's, which is the one found.
    end, sent = time.monotonic() + timeout, []
    while True:
        if info_msg is not None:
            info_pub.publish(info_msg)
            time.sleep(0.05)  # different topics have no order between them
        sent.append(time.perf_counter())
        img_pub.publish(image_msg)
        got = ros.wait_for(reply, min(RESEND_AFTER_S, max(end - time.monotonic(), 0.0)))
        if got is not None or time.monotonic() >= end:
            break
    t_pub = sent[0]

    def pose() -> tuple[float, Any] | None:
        return poses.find(lambda m: stamp_str(m.header.stamp) == s)

    if got and diag_values(got[1]).get("result") == "localized":
        return t_pub, got, ros.wait_for(pose, 5.0)
    time.sleep(settle)
    return t_pub, got, pose()


def _call(client, request, timeout: float):
    if not client.wait_for_service(timeout_sec=timeout):
        raise TimeoutError(f"service {client.srv_name} not available after {timeout} s")
    future = client.call_async(request)
    end = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > end:
            client.remove_pending_request(future)
            raise TimeoutError(f"service {client.srv_name}: no answer after {timeout} s")
        time.sleep(0.01)
    return future.result()


def call_trigger(node, name: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Call a std_srvs/Trigger service (as ``ros2 service call NAME std_srvs/srv/Trigger``): (success, message)."""
    from std_srvs.srv import Trigger

    client = node.create_client(Trigger, name)
    try:
        response = _call(client, Trigger.Request(), timeout)
    finally:
        node.destroy_client(client)
    return bool(response.success), str(response.message)


def connect_node(
    start: Callable[[], NodeProcess], session_name: str, attempts: int = 2, timeout: float = 30.0
) -> tuple[NodeProcess, RosSession, LifecycleClient]:
    """Start a node and a session that reach each other both ways (a ``get_state`` round trip).

    Why the retry: discovery between two new Fast DDS participants once stalled half-way in CI: the node got the
    request, its reply "failed to send response (timeout)", and no topic between the two matched for minutes.
    Both are then replaced by new ones (new participants), once.
    """
    log = ""
    for _ in range(attempts):
        proc = start()
        ros = RosSession(session_name)
        lc = LifecycleClient(ros.node)
        if lc.wait_ready(timeout):
            return proc, ros, lc
        log = proc.log()
        ros.close()
        proc.stop()
    raise RuntimeError(f"the node never answered get_state ({attempts} tries); last log:\n{log[-3000:]}")


class LifecycleClient:
    """Drives a lifecycle node through its services, as ``ros2 lifecycle set`` or launch_ros would."""

    TRANSITIONS: ClassVar[dict[str, int]] = {"configure": 1, "cleanup": 2, "activate": 3, "deactivate": 4}
    SHUTDOWN: ClassVar[dict[str, int]] = {"unconfigured": 5, "inactive": 6, "active": 7}

    def __init__(self, node, node_name: str = NODE_NAME) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        name = node_name if node_name.startswith("/") else "/" + node_name
        self._change = node.create_client(ChangeState, f"{name}/change_state")
        self._get = node.create_client(GetState, f"{name}/get_state")

    def get_state(self, timeout: float = 10.0) -> str:
        from lifecycle_msgs.srv import GetState

        return _call(self._get, GetState.Request(), timeout).current_state.label

    def change(self, transition: str | int, timeout: float = 60.0) -> bool:
        """Trigger a transition by label ('configure', ..., 'shutdown') or id; True when it succeeded."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        if transition == "shutdown":
            transition = self.SHUTDOWN.get(self.get_state(timeout), 5)
        tid = self.TRANSITIONS[transition] if isinstance(transition, str) else int(transition)
        return bool(_call(self._change, ChangeState.Request(transition=Transition(id=tid)), timeout).success)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """The lifecycle services are discovered and answer a call: a service whose replies cannot reach us
        (discovery complete one way only) is not ready."""
        end = time.monotonic() + timeout
        if not (self._change.wait_for_service(timeout_sec=timeout) and self._get.wait_for_service(timeout_sec=timeout)):
            return False
        while time.monotonic() < end:
            try:
                self.get_state(timeout=min(5.0, max(0.1, end - time.monotonic())))
                return True
            except TimeoutError:
                continue
        return False

    def configure(self, timeout: float = 60.0) -> bool:
        return self.change("configure", timeout)

    def activate(self, timeout: float = 30.0) -> bool:
        return self.change("activate", timeout)

    def deactivate(self, timeout: float = 30.0) -> bool:
        return self.change("deactivate", timeout)

    def cleanup(self, timeout: float = 30.0) -> bool:
        return self.change("cleanup", timeout)

    def shutdown(self, timeout: float = 30.0) -> bool:
        return self.change("shutdown", timeout)


def set_parameters(node, values: dict[str, Any], node_name: str = NODE_NAME, timeout: float = 10.0) -> list[bool]:
    """``ros2 param set`` for several parameters; one success flag each."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    name = node_name if node_name.startswith("/") else "/" + node_name
    client = node.create_client(SetParameters, f"{name}/set_parameters")
    try:
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return [r.successful for r in _call(client, req, timeout).results]
    finally:
        node.destroy_client(client)


def diag_values(msg) -> dict[str, str] | None:
    from ep2p_loc_ros.ros.diagnostics import diagnostics_values

    return diagnostics_values(msg)


def stamp_msg(t_s: float):
    from builtin_interfaces.msg import Time

    ns = round(t_s * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_str(stamp) -> str:
    return f"{int(stamp.sec)}.{int(stamp.nanosec):09d}"


def percentile(values: Iterable[float], q: float) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(v, q)) if v.size else float("nan")


# ----------------------------------------------------------------------------------------------------------
# demo data as messages
@dataclass
class DemoSequence:
    """The demo drive as ROS messages; ground truth of camera and base in the map."""

    sequence_dir: Path
    camera_frame: str = "camera2_optical"
    base_frame: str = "base_link"

    def __post_init__(self) -> None:
        from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
        from ep2p_loc_ros.geometry import invert

        self.seq = KittiOdometrySequence(self.sequence_dir)
        self.camera = self.seq.calib.camera
        sim = json.loads((Path(self.sequence_dir) / "sim.json").read_text())
        T_base_cam0 = np.asarray(sim["T_base_cam0"], dtype=np.float64)
        # cam0 -> cam2 through the LiDAR: T_cam0_cam2 = T_cam0_velo @ T_velo_cam2
        self.T_base_cam = T_base_cam0 @ self.seq.T_cam0_velo @ invert(self.seq.calib.T_cam_velo)

    def __len__(self) -> int:
        return len(self.seq)

    def T_map_cam(self, i: int) -> np.ndarray:
        return self.seq.T_world_cam(i)

    def T_map_base(self, i: int) -> np.ndarray:
        from ep2p_loc_ros.geometry import invert

        return self.seq.T_world_cam(i) @ invert(self.T_base_cam)

    def image_msg(self, i: int, stamp, encoding: str = "rgb8"):
        from ep2p_loc_ros.ros.convert import rgb_to_image

        return rgb_to_image(self.seq.image(i), encoding=encoding, frame_id=self.camera_frame, stamp=stamp)

    def camera_info_msg(self, stamp=None):
        from sensor_msgs.msg import CameraInfo

        cam = self.camera
        msg = CameraInfo(width=cam.width, height=cam.height, distortion_model="plumb_bob")
        msg.header.frame_id = self.camera_frame
        if stamp is not None:
            msg.header.stamp = stamp
        msg.k = [float(v) for v in cam.K.ravel()]
        msg.d = [0.0] * 5
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        P = np.zeros((3, 4))
        P[:, :3] = cam.K
        msg.p = [float(v) for v in P.ravel()]
        return msg

    def mount_tf(self, stamp):
        from ep2p_loc_ros.ros.tf import make_transform_stamped

        return make_transform_stamped(self.T_base_cam, self.base_frame, self.camera_frame, stamp)


def model_is_placeholder(model_dir: str | Path = ROOT / "models") -> bool:
    """True for the barely-trained stand-in model (config.json's info.train.steps below 1000)."""
    try:
        info = json.loads((Path(model_dir) / "config.json").read_text()).get("info", {})
        return int(info.get("train", {}).get("steps", 0)) < 1000
    except (OSError, ValueError):
        return True


# ----------------------------------------------------------------------------------------------------------
# a stand-in for the model, to test the node's own behaviour independently of how good the model is
class OracleLocalizer:
    """Same interface as :class:`~ep2p_loc_ros.localizer.Localizer`; its matches come from ground truth.

    The image is recognised by its bytes (a frame of the sequence); the map points of the submap nearest the
    true pose that project into the image get their true pixel plus 0.5 px noise, 15 % are replaced by
    outliers, and the real ``solve_pnp`` (RANSAC + LM + covariance) makes the pose. Deterministic per frame,
    so a test can compute exactly what the node must publish.

    ``cost_ms``: the least time a frame takes (it sleeps the rest, releasing the GIL as onnxruntime and torch do).
    Why: PnP on true matches takes 12 ms on a fast host, so a test that must overload the node cannot rely on the
    host being slow; with a set cost the node's capacity is known on any host.
    """

    def __init__(self, map_dir: str | Path, sequence_dir: str | Path, config=None, cost_ms: float = 0.0) -> None:
        import hashlib

        from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
        from ep2p_loc_ros.localizer import LocalizerConfig
        from ep2p_loc_ros.map import load_map

        self.config = config or LocalizerConfig()
        self.map = load_map(map_dir)
        self.seq = KittiOdometrySequence(sequence_dir)
        self.cost_ms = float(cost_ms)
        self._index = {hashlib.sha1(self.seq.image(i).tobytes()).hexdigest(): i for i in range(len(self.seq))}
        # as the Localizer says it (the node confirms its first fused pose where this is true)
        environment = str(self.map.params.get("environment", "unknown"))
        self.single_image_hypotheses = self.config.alignment.hypotheses_on(environment)

    @classmethod
    def from_paths(cls, map_dir, model_dir=None, config=None, providers: str = "auto") -> OracleLocalizer:
        cost_ms = float(os.environ.get("EP2P_ORACLE_COST_MS", "0"))
        return cls(map_dir, os.environ["EP2P_ORACLE_SEQUENCE"], config, cost_ms)

    def close(self) -> None:
        """As :meth:`Localizer.close` (the node calls it when it releases the localizer); this one has no threads."""
        self.closed = True

    def frame_of(self, rgb: np.ndarray) -> int | None:
        import hashlib

        return self._index.get(hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest())

    def localize(self, rgb, camera, T_map_cam_prior=None, source: str = "image", gravity=None):
        from ep2p_loc_ros.geometry import invert, transform_points
        from ep2p_loc_ros.localizer import LocalizationStatus, _failure, result_from_pnp
        from ep2p_loc_ros.map import nearest_submaps
        from ep2p_loc_ros.pnp import solve_pnp

        t0 = time.perf_counter()
        i = self.frame_of(rgb)
        if i is None:
            return _failure(LocalizationStatus.NO_MATCHES, "oracle: not a frame of the sequence")
        T_map_cam = self.seq.T_world_cam(i)
        ids, _ = nearest_submaps(self.map, T_map_cam, 1)
        X = self.map.submap(int(ids[0])).points.astype(np.float64)
        Xc = transform_points(invert(T_map_cam), X)
        front = Xc[:, 2] > 1.0
        X, Xc = X[front], Xc[front]
        uv = Xc[:, :2] / Xc[:, 2:] * [camera.fx, camera.fy] + [camera.cx, camera.cy]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < camera.width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height - 1)
        X, uv = X[inside], uv[inside]
        if len(X) > 400:
            keep = np.linspace(0, len(X) - 1, 400).astype(np.int64)
            X, uv = X[keep], uv[keep]
        rng = np.random.default_rng(i)
        px = uv + rng.normal(0.0, 0.5, uv.shape)
        out = rng.random(len(px)) < 0.15
        px[out] = rng.uniform([0, 0], [camera.width - 1, camera.height - 1], (int(out.sum()), 2))
        est = solve_pnp(X, px, camera, self.config.pnp)
        time.sleep(max(0.0, self.cost_ms / 1e3 - (time.perf_counter() - t0)))
        return result_from_pnp(est, X, px, {"total": (time.perf_counter() - t0) * 1e3})


FAULTS = ("cuda",)


def install_faults(faults: Iterable[str]) -> None:
    """Inject faults into this process before the node starts.

    ``cuda``: onnxruntime claims the CUDA provider, but every session asked to use it fails to start (as with a
    missing driver or cuDNN); sessions on CPU alone work.
    """
    faults = [f for f in faults if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown faults {unknown} (known: {list(FAULTS)})")
    if "cuda" in faults:
        import onnxruntime as ort

        real_session = ort.InferenceSession

        def failing_session(path, sess_options=None, providers=None, **kwargs):
            if providers and "CUDAExecutionProvider" in providers:
                raise RuntimeError("CUDA failure 100 (injected): no CUDA-capable device is detected")
            return real_session(path, sess_options=sess_options, providers=providers, **kwargs)

        ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
        ort.InferenceSession = failing_session


def _oracle_node_main(argv: list[str]) -> int:
    """``oracle-node SEQUENCE_DIR [ep2p-loc node args...]``: the real node with :class:`OracleLocalizer`."""
    os.environ["EP2P_ORACLE_SEQUENCE"] = argv[0]
    import ep2p_loc_ros.ros.node as node_module
    from ep2p_loc_ros.cli import main

    node_module.Localizer = OracleLocalizer
    return main(["node", *argv[1:]])


if __name__ == "__main__":
    install_faults(os.environ.get("EP2P_TEST_FAULTS", "").split(","))
    if len(sys.argv) >= 3 and sys.argv[1] == "oracle-node":
        sys.exit(_oracle_node_main(sys.argv[2:]))
    if len(sys.argv) >= 2 and sys.argv[1] == "node":
        from ep2p_loc_ros.cli import main

        sys.exit(main(["node", *sys.argv[2:]]))
    print(
        "usage: python test/ros_helpers.py oracle-node SEQUENCE_DIR [ep2p-loc node args...]\n"
        "       python test/ros_helpers.py node [ep2p-loc node args...]   (EP2P_TEST_FAULTS=cuda,...)",
        file=sys.stderr,
    )
    sys.exit(2)
