"""Which optional ROS 2 Python packages exist here.

A normal ROS 2 install has tf2_ros, cv_bridge and sensor_msgs_py and the code uses them; the PyPI wheels have
none of them, and then small numpy/message equivalents in this package take over.
"""

from __future__ import annotations

import importlib.util
from functools import cache


def _spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


@cache
def has_ros2_cv_bridge() -> bool:
    """True only for ROS 2's cv_bridge, whose converter is a compiled extension.

    PyPI's ``cv-bridge`` (1.13.0.post0) is a repackaged ROS 1 cv_bridge with a pure-Python stand-in for that
    extension; with ROS 2 messages it fails (``buffer is too small``, ``ndarray.tostring`` removed in numpy 2),
    so it must not be taken for the real one.
    """
    spec = _spec("cv_bridge.boost.cv_bridge_boost")
    return bool(spec and spec.origin and not spec.origin.endswith(".py"))


@cache
def has_tf2_ros() -> bool:
    return _spec("tf2_ros") is not None


@cache
def has_sensor_msgs_py() -> bool:
    return _spec("sensor_msgs_py") is not None
