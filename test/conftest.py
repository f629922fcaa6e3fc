"""Shared test set-up: real data paths, and a private, host-local DDS world for tests that use rclpy."""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KITTI_OBJECT = ROOT / "test" / "data" / "kitti_object"

# One OpenMP thread: torch's spinning worker threads stall when other processes (the node under test, DDS,
# or open3d's own OpenMP runtime) share the two cores; the suite is faster and steadier this way.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Before rclpy is imported anywhere: DDS stays on this host, in a domain of its own (concurrent runs do not
# see each other), and rclpy's log files go to a temporary directory.
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(10, 100)))
if "ROS_HOME" not in os.environ:
    os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="ep2p-ros-home-")
    atexit.register(shutil.rmtree, os.environ["ROS_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def kitti_reference() -> dict:
    """Published per-frame projection counts of the shipped KITTI frames (test/data/kitti_object/README.md)."""
    return json.loads((KITTI_OBJECT / "reference.json").read_text())


@pytest.fixture(scope="session")
def kitti_frames():
    from ep2p_loc_ros.datasets.kitti_object import iter_frames

    return list(iter_frames(KITTI_OBJECT))


@pytest.fixture(scope="session")
def demo_data():
    """The demo drive and its map for the shipped model (made on first use, cached in .cache/demo)."""
    from ep2p_loc_ros.demo_data import ensure_demo_data

    return ensure_demo_data(progress=False)


@pytest.fixture(scope="module")
def demo(demo_data):
    """The demo drive as ROS messages (test/ros_helpers.py)."""
    import ros_helpers

    return ros_helpers.DemoSequence(demo_data.sequence_dir)


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context, shut down after the test."""
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)
