"""Overload soak of the ep2p_loc node: images at 3x the camera rate, to a node that can take a third of them.

The node runs in its own process with the test stand-in localizer (``test/ros_helpers.py`` OracleLocalizer:
real PnP on ground-truth matches, independently of the model), given a set cost per frame (``--frame-cost-ms``,
default three image periods: 100 ms at 30 Hz, the pipeline's latency budget). Why a set cost: PnP alone takes
12 ms a frame on a fast host, which kept up with 30 Hz and dropped nothing, so an overload that relied on the
host being slow did not overload. The demo drive is played forwards and backwards (continuous motion) at
``--rate`` Hz (the camera is 10 Hz) with stamps advancing at the same rate. Measured every second: the node's RSS
(/proc), its per-frame latency (from /diagnostics), the frame counters, and the round-trip time of the lifecycle
``get_state`` service.

Pass criteria (printed, and the exit status): RSS growth after warm-up < 5 % (the last quarter's median over the
first quarter's, and any peak under +25 %); frames dropped rather than queued (received = processed + dropped, at
most one waiting); latency bounded (p99 under ``--max-latency-ms``, and the last quarter's p95 at most 2x the first
quarter's); lifecycle calls answered within 100 ms (p99; on a shared 2-core machine the host alone can stall one
call in a hundred, so the slowest must be under 1 s).

    .venv/bin/python bench/soak.py                    # 10 minutes at 30 Hz, 100 ms a frame
    .venv/bin/python bench/soak.py --duration 120     # 2 minutes
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RATE_HZ = 30.0  # default images per second: 3x the camera
OVERLOAD = 3.0  # default frame cost in image periods: the node can take a third of what comes
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))


def probe_get_state(period_s: float) -> None:
    """Child-process mode: call /ep2p_loc/get_state every ``period_s`` and print each round trip (ms) per line."""
    import rclpy
    from lifecycle_msgs.srv import GetState

    rclpy.init()
    node = rclpy.create_node("ep2p_soak_prober")
    client = node.create_client(GetState, "/ep2p_loc/get_state")
    client.wait_for_service(timeout_sec=30.0)
    try:
        while rclpy.ok():  # SIGTERM (how the soak stops this child) shuts rclpy down
            t0 = time.perf_counter()
            fut = client.call_async(GetState.Request())
            rclpy.spin_until_future_complete(node, fut, timeout_sec=2.0)
            ms = (time.perf_counter() - t0) * 1e3 if fut.done() else 2000.0
            print(f"{ms:.3f}", flush=True)
            time.sleep(period_s)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        rclpy.try_shutdown()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


@dataclass
class SoakResult:
    duration_s: float
    rate_hz: float
    warmup_s: float
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (t, MB)
    service_ms: list[float] = field(default_factory=list)
    latency_ms: list[tuple[float, float]] = field(default_factory=list)  # (t, ms) per processed frame
    sent: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)
    alive: bool = True
    max_latency_ms: float = 1000.0
    frame_cost_ms: float = 0.0

    def rss_levels(self) -> tuple[float, float, float]:
        """(median of the first quarter after warm-up, median of the last quarter, peak) in MB. Why medians: RSS
        stays flat but for spikes of single 0.5-s samples (up to 22 MB over 345 MB, cause not traced: they fall
        back at once); a leak lifts the whole last quarter, a spike only its own samples."""
        after = [m for t, m in self.rss_mb if t >= self.warmup_s]
        if len(after) < 8:
            return float("nan"), float("nan"), float("nan")
        q = len(after) // 4
        return float(np.median(after[:q])), float(np.median(after[-q:])), float(max(after))

    @property
    def rss_growth(self) -> float:
        first, last, _ = self.rss_levels()
        return (last - first) / first

    @property
    def rss_peak(self) -> float:
        """The peak over the first quarter's level: bounded too, so a queue that fills and drains is caught."""
        first, _, peak = self.rss_levels()
        return (peak - first) / first

    def latency_quarters(self) -> tuple[float, float]:
        lat = [(t, v) for t, v in self.latency_ms if t >= self.warmup_s]
        if len(lat) < 8:
            return float("nan"), float("nan")
        q = len(lat) // 4
        first = np.percentile([v for _, v in lat[:q]], 95)
        last = np.percentile([v for _, v in lat[-q:]], 95)
        return float(first), float(last)

    @property
    def processed(self) -> int:
        """Frames the node finished (localized or rejected), from its last diagnostics."""
        return self.counters.get("frames_localized", 0) + self.counters.get("frames_rejected", 0)

    def checks(self) -> dict[str, tuple[bool, str]]:
        c = self.counters
        received, dropped = c.get("frames_received", 0), c.get("frames_dropped", 0)
        done = self.processed
        lat = [v for t, v in self.latency_ms if t >= self.warmup_s]
        p99 = float(np.percentile(lat, 99)) if lat else float("nan")
        first, last = self.latency_quarters()
        svc = np.asarray(self.service_ms) if self.service_ms else np.array([np.nan])
        svc_p99, svc_max = float(np.percentile(svc, 99)), float(svc.max())
        return {
            "node alive": (self.alive, ""),
            "RSS growth < 5 % after warm-up": (
                self.rss_growth < 0.05 and self.rss_peak < 0.25,
                f"{self.rss_growth * 100:.2f} % (median of the last quarter over the first's); "
                f"peak +{self.rss_peak * 100:.1f} % (< 25)",
            ),
            "frames dropped, not queued": (
                dropped > 0 and 0 <= received - done - dropped <= 1,
                f"received {received}, processed {done}, dropped {dropped}",
            ),
            "latency bounded": (
                p99 < self.max_latency_ms and last <= 2.0 * first + 5.0,
                f"p99 {p99:.1f} ms (< {self.max_latency_ms:g}); p95 first/last quarter {first:.1f}/{last:.1f} ms",
            ),
            "lifecycle service < 100 ms": (
                svc_p99 < 100.0 and svc_max < 1000.0,
                f"p99 {svc_p99:.1f} ms, max {svc_max:.1f} ms (< 1000) over {len(self.service_ms)} calls",
            ),
        }

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.checks().values())

    def table(self) -> str:
        rows = ["| check | ok | measured |", "| --- | --- | --- |"]
        rows += [f"| {k} | {'yes' if ok else 'NO'} | {v} |" for k, (ok, v) in self.checks().items()]
        rss = [m for _, m in self.rss_mb]
        lat = [v for _, v in self.latency_ms]
        summary = (
            f"{self.duration_s:.0f} s at {self.rate_hz:g} Hz, {self.frame_cost_ms:g} ms a frame: "
            f"sent {self.sent} images; results {self.results}; "
            f"RSS {min(rss):.0f}-{max(rss):.0f} MB; latency p50 {np.percentile(lat, 50):.1f} ms; "
            f"get_state p50 {np.percentile(self.service_ms, 50):.1f} ms"
            if rss and lat and self.service_ms
            else "no data"
        )
        return summary + "\n\n" + "\n".join(rows)


def run_soak(
    duration_s: float = 600.0,
    rate_hz: float = RATE_HZ,
    warmup_s: float | None = None,
    log_dir: str | Path | None = None,
    max_latency_ms: float = 1000.0,
    progress: bool = False,
    frame_cost_ms: float | None = None,
) -> SoakResult:
    """``frame_cost_ms``: the stand-in localizer's least time per frame (default ``OVERLOAD`` image periods)."""
    import ros_helpers as rh
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from ep2p_loc_ros.demo_data import ensure_demo_data

    demo_data = ensure_demo_data(progress=False)
    demo = rh.DemoSequence(demo_data.sequence_dir)
    warmup_s = min(30.0, duration_s / 4) if warmup_s is None else warmup_s
    cost = OVERLOAD * 1e3 / rate_hz if frame_cost_ms is None else frame_cost_ms
    res = SoakResult(duration_s, rate_hz, warmup_s, max_latency_ms=max_latency_ms, frame_cost_ms=cost)
    proc = rh.start_node(
        {"map_path": str(demo_data.map_dir), "map_cloud_max_points": 0, "publish_visible_points": False},
        remaps={"image": "/cam/image_raw", "camera_info": "/cam/camera_info"},
        oracle_sequence=demo_data.sequence_dir,
        oracle_cost_ms=cost,
        log_dir=log_dir,
    )
    ros = rh.RosSession("ep2p_soak")
    try:
        n = ros.node
        lc = rh.LifecycleClient(n)
        if not lc.wait_ready(60) or not (lc.configure() and lc.activate()):
            raise RuntimeError(f"node did not start:\n{proc.log()[-3000:]}")
        lock = threading.Lock()
        start = [time.monotonic()]

        def on_diag(msg) -> None:
            v = rh.diag_values(msg)
            if not v:
                return
            t = time.monotonic() - start[0]
            with lock:
                res.counters = {k: int(v[k]) for k in v if k.startswith("frames_")}
                if "image_stamp" in v and "latency_ms" in v:
                    res.latency_ms.append((t, float(v["latency_ms"])))
                    res.results[v.get("result", "?")] = res.results.get(v.get("result", "?"), 0) + 1

        n.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 100)
        img_pub = n.create_publisher(Image, "/cam/image_raw", qos_profile_sensor_data)
        info_pub = n.create_publisher(CameraInfo, "/cam/camera_info", qos_profile_sensor_data)
        static_pub = n.create_publisher(
            TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        )
        static_pub.publish(TFMessage(transforms=[demo.mount_tf(rh.stamp_msg(0.0))]))
        rh.RosSession.wait_for(lambda: img_pub.get_subscription_count() > 0, 10)
        info = demo.camera_info_msg()
        frames = [demo.image_msg(i, None) for i in range(len(demo))]
        order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))  # forwards and back
        stop = threading.Event()

        # The lifecycle service is probed from a process of its own: in this process the 30 Hz publisher holds
        # the GIL for whole milliseconds at a time, which would be timing this harness, not the node.
        prober_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--probe-get-state", "0.5"],
            env=rh.ros_env(),
            stdout=subprocess.PIPE,
            text=True,
        )

        def probe() -> None:  # RSS every 0.5 s, and the prober's lifecycle round-trip times as they come
            for line in prober_proc.stdout:
                t = time.monotonic() - start[0]
                try:
                    ms = float(line)
                    mb = rss_mb(proc.proc.pid)
                except ValueError:
                    continue
                except OSError:
                    res.alive = False
                    return
                with lock:
                    if not stop.is_set():
                        res.service_ms.append(ms)
                        res.rss_mb.append((t, mb))

        prober = threading.Thread(target=probe, daemon=True)
        start[0] = time.monotonic()
        prober.start()
        period = 1.0 / rate_hz
        k, next_t, last_print = 0, time.monotonic(), 0.0
        while time.monotonic() - start[0] < duration_s:
            stamp = rh.stamp_msg(1000.0 + k * period)
            msg = frames[order[k % len(order)]]
            msg.header.stamp = stamp
            info.header.stamp = stamp
            if k % 3 == 0:
                info_pub.publish(info)
            img_pub.publish(msg)
            k += 1
            res.sent = k
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
            t = time.monotonic() - start[0]
            if progress and t - last_print >= 10.0:
                last_print = t
                with lock:
                    print(
                        f"  t={t:5.0f} s  sent {k}  RSS {res.rss_mb[-1][1] if res.rss_mb else 0:.0f} MB  "
                        f"{res.counters}",
                        flush=True,
                    )
        time.sleep(1.5)  # the last frame's diagnostics
        stop.set()
        prober_proc.terminate()
        try:
            prober_proc.wait(5)
        except subprocess.TimeoutExpired:
            prober_proc.kill()
            prober_proc.wait(5)
        prober.join(5.0)
        res.alive = res.alive and proc.alive
        return res
    finally:
        ros.close()
        proc.stop()


def main() -> int:
    import os
    import random
    import tempfile

    # as the tests do (test/conftest.py): host-local Fast DDS with a SHM segment big enough for images (without
    # it, 1.4 MB images go over fragmented UDP and about half are lost), a domain of its own, a ROS_HOME
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(101, 200)))
    os.environ.setdefault("ROS_HOME", tempfile.mkdtemp(prefix="ep2p-soak-"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default: %(default)s)")
    ap.add_argument("--rate", type=float, default=RATE_HZ, help="images per second (default: %(default)s)")
    ap.add_argument(
        "--frame-cost-ms",
        type=float,
        default=None,
        help=f"least time the stand-in localizer takes a frame (default: {OVERLOAD:g} image periods)",
    )
    ap.add_argument("--warmup", type=float, default=None, help="seconds before RSS growth counts (default: 30)")
    ap.add_argument("--probe-get-state", type=float, default=None, help=argparse.SUPPRESS)  # the prober child
    args = ap.parse_args()
    if args.probe_get_state is not None:
        probe_get_state(args.probe_get_state)
        return 0
    res = run_soak(args.duration, args.rate, args.warmup, progress=True, frame_cost_ms=args.frame_cost_ms)
    print(res.table())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
