"""Replay a bag through the ``ep2p_loc`` node over DDS and record what it publishes (no rosbag2 / launch needed).

    replay_bag(bag, map, model, out_dir) -> out_dir/replay_result.json, out_dir/result_bag/ (MCAP)

1. The node runs as a child process (``python -m ep2p_loc_ros.cli node --ros-args ...``, log in
   ``out_dir/node.log``), with ``use_sim_time``; this process configures and activates it through its lifecycle
   services (what a launch file would do) and waits until it subscribes to the camera topics.
2. A player publishes the bag's messages as serialized CDR (byte-exact) on their own topics at their log
   times divided by ``rate``, with ``/clock`` following the bag time (so the node's clock is the bag's).
   ``lockstep`` instead sends each image once the node has answered the previous one (a ``/diagnostics``
   report naming its stamp): every frame is processed, whatever the machine's speed.
3. A recorder keeps ``/ep2p_loc/pose``, ``/ep2p_loc/raw_pose`` (before the gate), ``/ep2p_loc/visible_points``,
   ``/diagnostics`` and the node's ``/tf`` in
   the result bag (log time = bag time at receipt), together with the played ``/camera/camera_info``,
   ``/tf_static`` and ``/ground_truth/pose``, so the result bag alone can be scored. Per image it notes when it
   was sent and when its pose (or the node's verdict) came back: end-to-end latency, drops.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..evaluation.trajectory import RESULT_FILE, write_result
from .bags import TOPICS, load_bag_summary, msg_class, stamp_from_ns, stamp_to_ns

__all__ = ["NODE_NAME", "ReplayError", "ReplayOptions", "frames_from_result_bag", "replay_and_evaluate", "replay_bag"]

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_NAME = "ep2p_loc"
POSE_TOPIC = f"/{NODE_NAME}/pose"
RAW_POSE_TOPIC = f"/{NODE_NAME}/raw_pose"  # every pose found, before the node's quality gate
POINTS_TOPIC = f"/{NODE_NAME}/visible_points"
DIAG_TOPIC = "/diagnostics"
DIAG_NAME = "ep2p_loc: localization"
RESULT_BAG = "result_bag"


class ReplayError(RuntimeError):
    """The replay could not run (node did not start, lifecycle transition failed, ...); the text says why."""


@dataclass
class ReplayOptions:
    rate: float = 1.0  # playback speed factor on the bag's timestamps
    use_sim_time: bool = True  # publish /clock and run the node on it
    lockstep: bool = False  # wait for the node's answer to each image before the next
    params_file: Path | None = None  # node parameters YAML (default: the package's config/ep2p_loc.yaml)
    params: dict[str, Any] = field(default_factory=dict)  # -p name:=value overrides
    startup_timeout_s: float = 120.0  # node start + configure (model and map load) + activate
    result_timeout_s: float = 30.0  # after the last image (or per image in lockstep)
    progress: bool = True
    record_points: bool = True
    node_command: list[str] | None = None  # replaces ``python -m ep2p_loc_ros.cli node`` (tests: a stand-in)


def _ros_env() -> None:
    """Host-local DDS with large SHM segments (NOTES-ros §3), unless the caller chose otherwise."""
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_localhost.xml"))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def _param_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_param_value(x) for x in v) + "]"
    return str(v)


def node_command(map_dir: Path, model_dir: Path, opts: ReplayOptions) -> list[str]:
    cmd = list(opts.node_command or [sys.executable, "-m", "ep2p_loc_ros.cli", "node"])
    if opts.params_file is not None:
        cmd += ["--params-file", str(opts.params_file)]
    cmd += [
        "--ros-args",
        "-p",
        f"map_path:={Path(map_dir).resolve()}",
        "-p",
        f"model_path:={Path(model_dir).resolve()}",
        "-r",
        f"image:={TOPICS['image']}",
        "-r",
        f"camera_info:={TOPICS['camera_info']}",
        "-p",
        f"use_sim_time:={_param_value(opts.use_sim_time)}",
    ]
    for k, v in opts.params.items():
        cmd += ["-p", f"{k}:={_param_value(v)}"]
    return cmd


def _parse_stamp(text: str) -> int | None:
    try:
        sec, _, nsec = text.partition(".")
        return int(sec) * 1_000_000_000 + int(nsec.ljust(9, "0")[:9])
    except ValueError:
        return None


def _diag_values(msg: Any) -> dict[str, str] | None:
    for status in msg.status:
        if status.name == DIAG_NAME:
            return {"message": status.message, **{kv.key: kv.value for kv in status.values}}
    return None


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="replay", unit="img")

    def update(self, sent: int, answered: int, poses: int) -> None:
        if self.bar is not None:
            self.bar.n = sent
            self.bar.set_postfix_str(f"answered {answered}, poses {poses}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _say(opts: ReplayOptions, text: str) -> None:
    if opts.progress:
        print(text, flush=True)


def replay_bag(
    bag: str | Path, map_dir: str | Path, model_dir: str | Path, out_dir: str | Path, opts: ReplayOptions | None = None
) -> Path:
    """Play ``bag`` through a freshly started node; returns ``out_dir`` (see the module docstring)."""
    opts = opts or ReplayOptions()
    if not opts.rate > 0:
        raise ValueError(f"rate must be > 0, got {opts.rate}")
    bag, out = Path(bag), Path(out_dir)
    summary = load_bag_summary(bag)  # validates the bag
    if not summary.image_stamps_ns:
        raise DataError(f"{bag}: no {TOPICS['image']} messages")
    for p, what in ((map_dir, "map"), (model_dir, "model")):
        if not Path(p).is_dir():
            raise FileNotFoundError(f"{what} directory {p}: no such directory")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / RESULT_BAG, ignore_errors=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    _ros_env()

    ros_home = tempfile.mkdtemp(prefix="ep2p-replay-ros-")
    env = dict(os.environ)
    env.setdefault("ROS_HOME", ros_home)
    cmd = node_command(Path(map_dir), Path(model_dir), opts)
    log = open(out / "node.log", "w")  # noqa: SIM115 - closed in finally
    _say(opts, f"replay: starting the node (log: {out / 'node.log'})")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT))
    try:
        return _Replayer(bag, out, opts, summary, proc, Path(map_dir), Path(model_dir)).run()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(ros_home, ignore_errors=True)


class _Replayer:
    def __init__(self, bag, out, opts, summary, proc, map_dir, model_dir) -> None:
        self.bag, self.out, self.opts, self.summary, self.proc = bag, out, opts, summary, proc
        self.map_dir, self.model_dir = map_dir, model_dir
        self.lock = threading.Condition()
        self.sent_mono: dict[int, float] = {}  # image stamp -> monotonic send time
        self.poses: dict[int, tuple[Any, float]] = {}  # image stamp -> (msg, monotonic receive time)
        self.raw_poses: dict[int, Any] = {}  # image stamp -> the pose before the gate
        self.verdicts: dict[int, dict[str, str]] = {}  # image stamp -> the node's per-frame diagnostics
        self.last_diag: dict[str, str] = {}
        self.sim_ns = int(summary.image_stamps_ns[0])
        self.writer = None
        self.conns: dict[str, Any] = {}

    # -- recording ------------------------------------------------------------------------------------------
    def _record(self, topic: str, raw: bytes) -> None:
        if self.writer is not None and topic in self.conns:
            with self.lock:
                self.writer.write(self.conns[topic], self.sim_ns, bytes(raw))

    def _on_pose(self, raw: bytes) -> None:
        from rclpy.serialization import deserialize_message

        now = time.monotonic()
        msg = deserialize_message(raw, msg_class("geometry_msgs/msg/PoseWithCovarianceStamped"))
        self._record(POSE_TOPIC, raw)
        with self.lock:
            self.poses[stamp_to_ns(msg.header.stamp)] = (msg, now)
            self.lock.notify_all()

    def _on_raw_pose(self, raw: bytes) -> None:
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(raw, msg_class("geometry_msgs/msg/PoseWithCovarianceStamped"))
        self._record(RAW_POSE_TOPIC, raw)
        with self.lock:
            self.raw_poses[stamp_to_ns(msg.header.stamp)] = msg

    def _on_diag(self, raw: bytes) -> None:
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(raw, msg_class("diagnostic_msgs/msg/DiagnosticArray"))
        values = _diag_values(msg)
        if values is None:
            return
        self._record(DIAG_TOPIC, raw)
        stamp = _parse_stamp(values.get("image_stamp", ""))
        with self.lock:
            self.last_diag = values
            if stamp is not None and "result" in values:
                self.verdicts[stamp] = values
            self.lock.notify_all()

    def _on_tf(self, raw: bytes) -> None:
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(raw, msg_class("tf2_msgs/msg/TFMessage"))
        if any(t.header.frame_id.lstrip("/") == "map" for t in msg.transforms):  # the node's, not our odometry
            self._record(TOPICS["tf"], raw)

    def _on_points(self, raw: bytes) -> None:
        self._record(POINTS_TOPIC, raw)

    # -- main -----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        ctx = Context()
        rclpy.init(context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        node = rclpy.create_node(f"ep2p_loc_replay_{os.getpid()}", context=ctx)
        executor.add_node(node)
        spin = threading.Thread(target=self._spin, args=(executor,), daemon=True)
        ts = get_typestore(Stores.ROS2_KILTED)
        self.writer = Writer(self.out / RESULT_BAG, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        try:
            for topic, msgtype in (
                (POSE_TOPIC, "geometry_msgs/msg/PoseWithCovarianceStamped"),
                (RAW_POSE_TOPIC, "geometry_msgs/msg/PoseWithCovarianceStamped"),
                (POINTS_TOPIC, "sensor_msgs/msg/PointCloud2"),
                (DIAG_TOPIC, "diagnostic_msgs/msg/DiagnosticArray"),
                (TOPICS["tf"], "tf2_msgs/msg/TFMessage"),
                (TOPICS["tf_static"], "tf2_msgs/msg/TFMessage"),
                (TOPICS["camera_info"], "sensor_msgs/msg/CameraInfo"),
                (TOPICS["ground_truth"], "geometry_msgs/msg/PoseStamped"),
            ):
                if topic == POINTS_TOPIC and not self.opts.record_points:
                    continue
                self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=ts)
            self._setup(node)
            spin.start()
            t0 = time.monotonic()
            self._start_node(node)
            started_s = time.monotonic() - t0
            self._play()
            self._wait_for_answers()
            return self._write(started_s)
        finally:
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
            rclpy.try_shutdown(context=ctx)
            with self.lock:
                self.writer.close()
                self.writer = None

    @staticmethod
    def _spin(executor) -> None:
        with contextlib.suppress(Exception):
            executor.spin()

    def _setup(self, node) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
        )
        self.pubs = {
            TOPICS["image"]: node.create_publisher(msg_class("sensor_msgs/msg/Image"), TOPICS["image"], reliable),
            TOPICS["camera_info"]: node.create_publisher(
                msg_class("sensor_msgs/msg/CameraInfo"), TOPICS["camera_info"], reliable
            ),
            TOPICS["tf"]: node.create_publisher(
                msg_class("tf2_msgs/msg/TFMessage"), TOPICS["tf"], QoSProfile(depth=100)
            ),
            TOPICS["tf_static"]: node.create_publisher(
                msg_class("tf2_msgs/msg/TFMessage"), TOPICS["tf_static"], latched
            ),
            TOPICS["ground_truth"]: node.create_publisher(
                msg_class("geometry_msgs/msg/PoseStamped"), TOPICS["ground_truth"], reliable
            ),
        }
        self.clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=1)) if self.opts.use_sim_time else None
        self.clock_msg = Clock
        deep = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(
            msg_class("geometry_msgs/msg/PoseWithCovarianceStamped"), POSE_TOPIC, self._on_pose, deep, raw=True
        )
        node.create_subscription(
            msg_class("geometry_msgs/msg/PoseWithCovarianceStamped"), RAW_POSE_TOPIC, self._on_raw_pose, deep, raw=True
        )
        node.create_subscription(
            msg_class("diagnostic_msgs/msg/DiagnosticArray"), DIAG_TOPIC, self._on_diag, deep, raw=True
        )
        node.create_subscription(msg_class("tf2_msgs/msg/TFMessage"), TOPICS["tf"], self._on_tf, deep, raw=True)
        if self.opts.record_points:
            node.create_subscription(
                msg_class("sensor_msgs/msg/PointCloud2"), POINTS_TOPIC, self._on_points, 10, raw=True
            )

    def _clock(self, t_ns: int) -> None:
        with self.lock:
            self.sim_ns = max(self.sim_ns, int(t_ns))
            t = self.sim_ns
        if self.clock_pub is not None:
            self.clock_pub.publish(self.clock_msg(clock=stamp_from_ns(t)))

    def _check_node(self, what: str) -> None:
        if self.proc.poll() is not None:
            tail = (self.out / "node.log").read_text(errors="replace")[-3000:]
            raise ReplayError(f"the node exited (code {self.proc.returncode}) {what}; end of node.log:\n{tail}")

    def _start_node(self, node) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        opts = self.opts
        deadline = time.monotonic() + opts.startup_timeout_s
        self._clock(self.summary.image_stamps_ns[0])  # the node's sim clock starts at the bag's first stamp
        client = node.create_client(ChangeState, f"/{NODE_NAME}/change_state")
        while not client.wait_for_service(timeout_sec=0.5):
            self._check_node("before its lifecycle services came up")
            if time.monotonic() > deadline:
                raise ReplayError(f"no /{NODE_NAME}/change_state service within {opts.startup_timeout_s:.0f} s")
        for label, tid in (
            ("configure", Transition.TRANSITION_CONFIGURE),
            ("activate", Transition.TRANSITION_ACTIVATE),
        ):
            _say(opts, f"replay: {label} the node")
            fut = client.call_async(ChangeState.Request(transition=Transition(id=tid)))
            while not fut.done():
                self._check_node(f"during {label}")
                if time.monotonic() > deadline:
                    raise ReplayError(f"lifecycle {label} did not finish within {opts.startup_timeout_s:.0f} s")
                self._clock(self.sim_ns)
                time.sleep(0.05)
            if not fut.result().success:
                tail = (self.out / "node.log").read_text(errors="replace")[-3000:]
                raise ReplayError(f"lifecycle {label} failed; end of node.log:\n{tail}")
        # static transforms first (latched: the node gets them as its /tf_static subscription matches), so the
        # mount is known from the first image on; then wait until the node listens to the camera
        for conn, _, raw in self._messages([TOPICS["tf_static"]]):
            if conn.topic == TOPICS["tf_static"]:
                self.pubs[conn.topic].publish(bytes(raw))
        wanted = (TOPICS["image"], TOPICS["camera_info"])
        while not all(self.pubs[t].get_subscription_count() > 0 for t in wanted):
            self._check_node("before subscribing to the camera")
            if time.monotonic() > deadline:
                raise ReplayError(f"the node did not subscribe to {wanted} within {opts.startup_timeout_s:.0f} s")
            time.sleep(0.05)
        time.sleep(0.3)  # let the node's other subscriptions (/tf, /tf_static, /clock) match too

    def _messages(self, topics=None):
        from rosbags.rosbag2 import Reader

        with Reader(self.bag) as reader:
            conns = [c for c in reader.connections if c.topic in (topics or self.pubs)]
            yield from reader.messages(connections=conns)

    def _play(self) -> None:
        opts = self.opts
        n = len(self.summary.image_stamps_ns)
        t_first = self.summary.image_stamps_ns[0]
        _say(
            opts,
            f"replay: playing {n} images from {self.bag} "
            + ("in lockstep" if opts.lockstep else f"at {opts.rate:g}x ({self.summary.duration_s / opts.rate:.1f} s)"),
        )
        bar = _Progress(opts.progress, n)
        wall0 = None
        sent = 0
        ticker_stop = threading.Event()
        ticker = None
        if self.clock_pub is not None and not opts.lockstep:
            ticker = threading.Thread(target=self._tick, args=(ticker_stop, lambda: wall0, t_first), daemon=True)
            ticker.start()
        try:
            for conn, t_ns, raw in self._messages():
                if wall0 is None:
                    wall0 = time.monotonic()
                if not opts.lockstep:
                    delay = wall0 + (t_ns - t_first) / 1e9 / opts.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self._check_node("during playback")
                self._clock(t_ns)
                topic = conn.topic
                if topic in self.conns:
                    self._record(topic, raw)
                if topic == TOPICS["image"]:
                    with self.lock:
                        self.sent_mono[t_ns] = time.monotonic()
                    self.pubs[topic].publish(bytes(raw))
                    sent += 1
                    if opts.lockstep:
                        self._wait(lambda s=t_ns: s in self.verdicts, opts.result_timeout_s)
                    with self.lock:
                        bar.update(sent, len(self.verdicts), len(self.poses))
                else:
                    self.pubs[topic].publish(bytes(raw))
        finally:
            ticker_stop.set()
            if ticker is not None:
                ticker.join()
            if not opts.lockstep:  # the last answers come after the last image was sent
                self._wait(self._answered, opts.result_timeout_s)
            with self.lock:
                bar.update(sent, len(self.verdicts), len(self.poses))
            bar.close()

    def _tick(self, stop: threading.Event, wall0_fn, t_first: int) -> None:
        """/clock at 50 Hz between messages: bag time = first stamp + elapsed wall time x rate."""
        while not stop.wait(0.02):
            wall0 = wall0_fn()
            if wall0 is not None:
                self._clock(t_first + int((time.monotonic() - wall0) * self.opts.rate * 1e9))

    def _wait(self, done, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self.lock.wait(timeout=min(left, 0.2))
        return True

    def _answered(self) -> bool:
        n = len(self.sent_mono)
        dropped = int(_float(self.last_diag.get("frames_dropped")) or 0)
        return len(self.verdicts) + dropped >= n

    def _wait_for_answers(self) -> None:
        self._wait(self._answered, self.opts.result_timeout_s)
        time.sleep(0.2)  # the pose is published before its diagnostics; let stragglers of the recorder in

    def _write(self, started_s: float) -> Path:
        from .convert import pose_to_matrix

        frames = []
        pose_of = None
        lat_node, loc_ms = [], []
        with self.lock:
            for stamp in sorted(self.sent_mono):
                v = self.verdicts.get(stamp, {})
                row: dict[str, Any] = {
                    "stamp_ns": int(stamp),
                    "result": v.get("result", "no answer"),
                    "reason": v.get("reason"),
                    "localizer_status": v.get("localizer_status"),
                    "inliers": _float(v.get("inliers")),
                    "matches": _float(v.get("matches")),
                    "mode": v.get("mode"),
                    "node_latency_ms": _float(v.get("latency_ms")),
                    "localize_ms": _float(v.get("localize_ms")),
                    "confidence": _float(v.get("confidence")),  # of the localization (MODEL/confidence.json)
                    "pose_of": v.get("pose_of"),
                    "pose": None,
                    "covariance": None,
                    "raw_pose": None,
                    "latency_ms": None,
                }
                if row["node_latency_ms"] is not None:
                    lat_node.append(row["node_latency_ms"])
                if row["localize_ms"] is not None:
                    loc_ms.append(row["localize_ms"])
                if v.get("pose_of"):
                    pose_of = v["pose_of"]
                if stamp in self.raw_poses:
                    row["raw_pose"] = pose_to_matrix(self.raw_poses[stamp].pose.pose)
                if stamp in self.poses:
                    msg, t_recv = self.poses[stamp]
                    row["pose"] = pose_to_matrix(msg.pose.pose)
                    row["covariance"] = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
                    row["latency_ms"] = (t_recv - self.sent_mono[stamp]) * 1e3
                frames.append(row)
            last = dict(self.last_diag)
        n_pose = sum(f["pose"] is not None for f in frames)
        no_answer = sum(f["result"] == "no answer" for f in frames)
        dropped = int(_float(last.get("frames_dropped")) or 0)
        failed = sum(f["result"] not in ("localized", "no answer") for f in frames)
        meta = dict(
            input_bag=str(self.bag.resolve()),
            map=str(self.map_dir.resolve()),
            model=str(self.model_dir.resolve()),
            rate=self.opts.rate,
            lockstep=self.opts.lockstep,
            use_sim_time=self.opts.use_sim_time,
            params=self.opts.params,
            pose_frame="base_link" if pose_of in (None, "base_link") else "camera",
            pose_of=pose_of,
            images_sent=len(frames),
            poses=n_pose,
            dropped=dropped,
            failed=failed,
            no_answer=no_answer,
            node_counters={
                k: last.get(k) for k in ("frames_received", "frames_localized", "frames_rejected", "frames_dropped")
            },
            node_latency_ms={"total": lat_node, "localize": loc_ms},
            node_startup_s=started_s,
            result_bag=RESULT_BAG,
            node_log="node.log",
        )
        write_result(self.out, frames, **meta)
        _say(self.opts, f"replay: {len(frames)} images sent, {n_pose} poses, {failed} without pose, {dropped} dropped")
        return self.out


def frames_from_result_bag(result_bag: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-image rows and metadata from a result bag alone (latency: the node's own, from /diagnostics)."""
    from .bags import read_bag
    from .convert import pose_to_matrix

    rows: dict[int, dict[str, Any]] = {}
    last: dict[str, str] = {}
    pose_of = None
    for topic, _, msg in read_bag(result_bag, [TOPICS["camera_info"], POSE_TOPIC, RAW_POSE_TOPIC, DIAG_TOPIC]):
        if topic == TOPICS["camera_info"]:
            rows.setdefault(stamp_to_ns(msg.header.stamp), {"stamp_ns": stamp_to_ns(msg.header.stamp)})
        elif topic == RAW_POSE_TOPIC:
            r = rows.setdefault(stamp_to_ns(msg.header.stamp), {"stamp_ns": stamp_to_ns(msg.header.stamp)})
            r["raw_pose"] = pose_to_matrix(msg.pose.pose)
        elif topic == POSE_TOPIC:
            r = rows.setdefault(stamp_to_ns(msg.header.stamp), {"stamp_ns": stamp_to_ns(msg.header.stamp)})
            r["pose"] = pose_to_matrix(msg.pose.pose)
            r["covariance"] = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        else:
            v = _diag_values(msg)
            if v is None:
                continue
            last = v
            stamp = _parse_stamp(v.get("image_stamp", ""))
            if stamp is not None and stamp in rows and "result" in v:
                rows[stamp]["result"] = v["result"]
                rows[stamp]["latency_ms"] = _float(v.get("latency_ms"))
                rows[stamp]["confidence"] = _float(v.get("confidence"))
                rows[stamp]["pose_of"] = v.get("pose_of")
                pose_of = v.get("pose_of") or pose_of
    frames = [rows[k] for k in sorted(rows)]
    for f in frames:
        if f.get("pose") is None:
            f["latency_ms"] = None
    meta = {
        "pose_frame": "base_link" if pose_of in (None, "base_link") else "camera",
        "dropped": int(_float(last.get("frames_dropped")) or 0),
        "failed": sum(f.get("result") not in (None, "localized") for f in frames),
        "input_bag": str(result_bag),  # the result bag carries the ground truth and the mount
    }
    return frames, meta


def replay_and_evaluate(
    bag: str | Path,
    map_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    opts: ReplayOptions | None = None,
    report_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Replay, then score the result against the bag's ground truth (and write the report when asked)."""
    opts = opts or ReplayOptions()
    out = replay_bag(bag, map_dir, model_dir, out_dir, opts)
    from ..evaluation.trajectory import evaluate_result, load_result

    match = None
    if report_dir is not None:
        match = match_frame_in_process(out, bag, map_dir, model_dir, opts)
    summary = evaluate_result(out, bag, out_dir=report_dir, match_frame=match)
    load_result(out, bag).write_tum(out)
    return summary


def match_frame_in_process(result_dir: Path, bag: Path, map_dir, model_dir, opts: ReplayOptions) -> tuple | None:
    """The report's match image: the frame the node localized with most inliers (else the middle one),
    localized again in-process (the node publishes matched map points, not the pixels)."""
    from ..localizer import Localizer, LocalizerConfig
    from .bags import bag_frames

    rows = json.loads((Path(result_dir) / RESULT_FILE).read_text())["frames"]
    if not rows:
        return None
    ranked = sorted(rows, key=lambda r: (r.get("pose") is not None, r.get("inliers") or 0), reverse=True)
    pick = ranked[0]["stamp_ns"] if ranked[0].get("inliers") else rows[len(rows) // 2]["stamp_ns"]
    frame = next((f for f in bag_frames(bag) if f.stamp_ns == pick), None)
    if frame is None:
        return None
    _say(opts, "report: drawing the matches of one frame (in-process localizer)")
    cfg = _localizer_config(opts)
    loc = Localizer.from_paths(map_dir, model_dir, cfg or LocalizerConfig())
    res = loc.localize(frame.rgb, frame.camera, None)
    k = [r["stamp_ns"] for r in rows].index(pick)
    return (
        frame.rgb,
        res,
        f"frame {k} (t = {(pick - rows[0]['stamp_ns']) / 1e9:.1f} s): {res.status.value}, "
        f"{res.num_matches} matches, {res.num_inliers} inliers",
    )


def _localizer_config(opts: ReplayOptions):
    """The LocalizerConfig the node runs with (params file + ``localizer.*`` overrides), when readable."""
    from ..localizer import LocalizerConfig

    try:
        import yaml

        path = opts.params_file or (REPO_ROOT / "config" / "ep2p_loc.yaml")
        doc = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else {}
        params = (doc or {}).get("/**", {}).get("ros__parameters", {}) or {}
        loc = dict(params.get("localizer", {}) or {})
        for k, v in opts.params.items():
            if k.startswith("localizer."):
                d = loc
                *parents, leaf = k.split(".")[1:]
                for p in parents:
                    d = d.setdefault(p, {})
                d[leaf] = v
        return LocalizerConfig.from_dict(loc, source=str(path))
    except Exception:
        return None


def pick_domain_id() -> int:
    """A DDS domain of its own for a demo run (101..200), unless ROS_DOMAIN_ID is set."""
    return int(os.environ.get("ROS_DOMAIN_ID") or random.Random(os.getpid() ^ int(time.time())).randint(101, 200))
