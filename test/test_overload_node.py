"""Overload: images at 30 Hz (3x the camera rate) for 60 s over real DDS into a node that takes 100 ms a frame
(``bench/soak.py``, whose 10-minute run is the long soak). The stand-in localizer (PnP on true matches) is given
that set cost because on a fast host it took 12 ms a frame and kept up with 30 Hz: nothing was dropped and the
overload went untested (session 15 raised the rate to 90 Hz, which only moves the host speed at which it breaks).
Memory stays flat after warm-up (RSS growth < 5 %, quarter medians), latency stays bounded, frames are dropped rather
than queued, and lifecycle services answer within 100 ms (p99; every call within 1 s: a CI run once saw its slowest
of 121 calls take 241 ms against a median of 2.6 ms: a stall of the shared host).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _soak_module():
    spec = importlib.util.spec_from_file_location("ep2p_soak", ROOT / "bench" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_overload_service_check_takes_p99_and_refuses_any_call_over_1s():
    res = _soak_module().SoakResult(60.0, 30.0, 20.0)
    res.service_ms = [3.0] * 120 + [241.0]  # one host stall in 121 calls
    assert res.checks()["lifecycle service < 100 ms"][0]
    res.service_ms = [3.0] * 118 + [150.0] * 3  # 2.5 % of the calls late: the node is slow
    assert not res.checks()["lifecycle service < 100 ms"][0]
    res.service_ms = [3.0] * 120 + [2000.0]  # a call not answered (the prober's timeout)
    assert not res.checks()["lifecycle service < 100 ms"][0]


def test_overload_memory_check_takes_a_spike_and_refuses_a_leak():
    """A CI run once failed on one 0.5-s sample 22 MB over a flat 345 MB (then measured as peak over the first
    sample); a 240-s soak stayed at 344.6-344.7 MB between such spikes. The check compares quarter medians."""
    res = _soak_module().SoakResult(60.0, 30.0, 20.0)
    flat = [(20.0 + 0.5 * i, 345.0) for i in range(80)]
    res.rss_mb = [*flat[:50], (45.0, 367.0), *flat[51:]]  # one spike, +6.4 %
    assert res.checks()["RSS growth < 5 % after warm-up"][0]
    res.rss_mb = [(t, 345.0 * (1 + 0.08 * i / 80)) for i, (t, _) in enumerate(flat)]  # a steady leak, +8 %
    assert not res.checks()["RSS growth < 5 % after warm-up"][0]
    res.rss_mb = [*flat[:50], (45.0, 450.0), *flat[51:]]  # a queue that filled and drained, +30 %
    assert not res.checks()["RSS growth < 5 % after warm-up"][0]
    res.rss_mb = flat[:5]  # too few samples to tell
    assert not res.checks()["RSS growth < 5 % after warm-up"][0]


def test_overload_30hz_into_100ms_frames_for_60s_memory_flat_latency_bounded_drops_not_queue(tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not generated (scripts/build_tf2_msgs.sh)")
    soak = _soak_module()
    # warm-up 20 s: DDS shared-memory pools and the allocator settle in the first seconds of the flood
    res = soak.run_soak(duration_s=60.0, rate_hz=30.0, warmup_s=20.0, log_dir=tmp_path, frame_cost_ms=100.0)
    print("\n" + res.table())
    failed = {k: v for k, (ok, v) in res.checks().items() if not ok}
    assert not failed, res.table()
    # the set cost holds: at most one frame per 100 ms was processed, each took at least that long
    assert res.processed <= 60.0 / 0.1 * 1.05, res.counters
    assert min(v for _, v in res.latency_ms) >= 100.0, res.latency_ms[:5]
    assert res.results.get("localized", 0) > 0, res.results
