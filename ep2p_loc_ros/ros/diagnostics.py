"""The node's ``/diagnostics``: one ``DiagnosticStatus`` per report, built from plain values.

Keys (all strings, as diagnostic_msgs wants): ``state`` (lifecycle), ``result`` (localized / rejected / bad
input / ...), ``reason``, ``image_stamp``, ``latency_ms`` (message received -> pose published, in the node),
``localize_ms`` (the Localizer's own time), ``inliers``, ``matches``, ``pose_of`` (base or camera frame),
``mode`` (tracking / global), ``aligned`` (the pose was refined by the reflectance alignment), and the counters
``frames_received``, ``frames_localized``, ``frames_rejected``,
``frames_dropped`` (replaced by a newer frame before the worker got to them).
"""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["DIAG_NAME", "Level", "diagnostics_values", "make_diagnostics"]

DIAG_NAME = "ep2p_loc: localization"


class Level:
    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def make_diagnostics(
    stamp, hardware_id: str, level: int, message: str, values: dict[str, Any], name: str = DIAG_NAME
) -> DiagnosticArray:
    status = DiagnosticStatus(level=bytes([int(level)]), name=name, message=message, hardware_id=hardware_id)
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    arr = DiagnosticArray(status=[status])
    arr.header.stamp = stamp
    return arr


def diagnostics_values(msg: DiagnosticArray, name: str = DIAG_NAME) -> dict[str, str] | None:
    """The key/values of our status in ``msg`` (for tests and tools), or None when it is not ours."""
    for status in msg.status:
        if status.name == name:
            level = status.level if isinstance(status.level, int) else int.from_bytes(bytes(status.level), "little")
            return {"level": str(level), "message": status.message, **{kv.key: kv.value for kv in status.values}}
    return None
