"""Atomic writes: SIGKILL of ``ep2p-loc build-map`` / ``make-bag`` while they write leaves the previous output intact.

Each command runs as a subprocess on the demo drive; the test waits until it has started writing (its staging
directory appears next to the output), kills it with SIGKILL, then checks the previous output byte for byte and
that it still loads; a rerun afterwards succeeds. (``train``'s model directory: see the report of issue 8.)
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _digest(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _run_and_kill(cmd: list[str], parent: Path, staging_prefix: str, timeout: float = 120.0) -> bool:
    """Start ``cmd``; SIGKILL it once a staging entry starting with ``staging_prefix`` exists under ``parent``.

    Returns True when it was killed while writing (False: it finished before the staging entry was seen).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            staged = [p for p in parent.iterdir() if p.name.startswith(staging_prefix)]
            if staged and any(f.is_file() and f.stat().st_size > 0 for s in staged for f in s.rglob("*")):
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.005)
        pytest.fail(f"{cmd} did not start writing within {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return False


def test_atomic_build_map_killed_midway_leaves_previous_map(demo_data, tmp_path):
    from ep2p_loc_ros.map import load_map

    out = tmp_path / "map"
    cmd = [sys.executable, "-m", "ep2p_loc_ros.cli", "build-map", str(demo_data.sequence_dir), "--out", str(out)]
    subprocess.run([*cmd, "--quiet", "--spacing", "20"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    before = _digest(out)
    assert before and load_map(out).num_submaps > 0
    killed = _run_and_kill([*cmd, "--quiet"], tmp_path, ".map.tmp-")
    assert killed, "build-map finished before it could be killed"
    assert _digest(out) == before, "the previous map changed"
    assert load_map(out).num_submaps > 0
    # a rerun replaces it completely
    subprocess.run([*cmd, "--quiet"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert load_map(out).num_submaps > 0 and _digest(out) != before


def test_atomic_make_bag_killed_midway_leaves_no_partial_bag(demo_data, tmp_path):
    from ep2p_loc_ros.ros.bags import load_bag_summary

    prev = tmp_path / "prev_bag"
    base = [sys.executable, "-m", "ep2p_loc_ros.cli", "make-bag", str(demo_data.sequence_dir)]
    subprocess.run([*base, str(prev), "--no-progress", "--max-frames", "5"], cwd=ROOT, check=True, timeout=300)
    before = _digest(prev)
    out = tmp_path / "bag"
    killed = _run_and_kill([*base, str(out), "--no-progress"], tmp_path, ".bag.partial")
    assert killed, "make-bag finished before it could be killed"
    assert not out.exists(), "a half-written bag is where the bag should be"
    assert _digest(prev) == before  # the previous bag is untouched
    assert load_bag_summary(prev) is not None
    # a rerun cleans the abandoned staging directory and writes the whole bag
    subprocess.run([*base, str(out), "--no-progress", "--max-frames", "5"], cwd=ROOT, check=True, timeout=300)
    assert load_bag_summary(out) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bag.partial")]
