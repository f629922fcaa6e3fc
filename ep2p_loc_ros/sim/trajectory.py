"""Smooth vehicle trajectories: a corner polyline -> circular-arc fillets -> speed profile -> poses per frame.

Speed follows the path: at most ``v_max`` on straights, slower in turns (lateral acceleration bound), with
bounded longitudinal acceleration, so the spacing between frames varies like a real drive (about 1 m at
10 m/s and 10 Hz outdoors, less in turns). The vehicle body gets a small, smooth pitch/roll/heave (suspension)
so that the camera is not perfectly level, as on a real car.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import make_T

__all__ = ["MotionProfile", "sample_trajectory", "smooth_path"]


@dataclass(frozen=True)
class MotionProfile:
    v_max: float = 10.0  # m/s
    a_lat: float = 3.0  # m/s^2, bounds the speed in turns
    a_long: float = 1.5  # m/s^2, bounds acceleration and braking
    rate_hz: float = 10.0  # frames per second
    body_motion_deg: float = 0.3  # amplitude of pitch/roll oscillation
    heave_m: float = 0.01  # amplitude of vertical oscillation

    def __post_init__(self) -> None:
        for name in ("v_max", "a_lat", "a_long", "rate_hz"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"MotionProfile.{name} must be > 0, got {getattr(self, name)}")


def smooth_path(corners: np.ndarray, radii: np.ndarray, step: float = 0.05) -> tuple[np.ndarray, ...]:
    """Replace each corner of a polyline by a circular arc (radius shrunk where segments are short).

    Returns dense samples: xy (M, 2), heading (M,) rad (unwrapped), curvature (M,) 1/m, arc length s (M,).
    """
    P = np.asarray(corners, dtype=np.float64)
    if len(P) < 2:
        raise ValueError("a path needs at least two points")
    seg = np.diff(P, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    if np.any(seg_len < 1e-9):
        raise ValueError("path has repeated points")
    d = seg / seg_len[:, None]
    # tangent length at each interior corner, limited to half of each neighbouring segment
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (xy, heading, curvature) per piece
    cur = P[0]
    for k in range(1, len(P) - 1):
        a, b = d[k - 1], d[k]
        turn = float(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b))
        if abs(turn) < 1e-6:
            continue
        tan_half = np.tan(abs(turn) / 2)
        L = min(float(radii[k]) * tan_half, 0.5 * seg_len[k - 1], 0.5 * seg_len[k])
        R = L / tan_half
        start, end = P[k] - a * L, P[k] + b * L
        pieces.append(_line(cur, start, step))
        left = np.array([-a[1], a[0]])
        centre = start + np.sign(turn) * R * left
        h0 = np.arctan2(a[1], a[0])
        n = max(2, int(np.ceil(R * abs(turn) / step)) + 1)
        h = h0 + np.linspace(0.0, turn, n)
        # position on the arc: centre + R * (normal pointing from the centre to the path)
        xy = centre + R * np.sign(turn) * np.column_stack([np.sin(h), -np.cos(h)])
        pieces.append((xy, h, np.full(n, np.sign(turn) / R)))
        cur = end
    pieces.append(_line(cur, P[-1], step))
    xy = np.vstack([p[0] for p in pieces])
    heading = np.concatenate([p[1] for p in pieces])
    curv = np.concatenate([p[2] for p in pieces])
    # drop duplicate joints between pieces
    ds = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    keep = np.concatenate([[True], ds > 1e-9])
    xy, heading, curv = xy[keep], heading[keep], curv[keep]
    heading = np.unwrap(heading)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    return xy, heading, curv, s


def _line(p0: np.ndarray, p1: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    length = float(np.linalg.norm(p1 - p0))
    n = max(2, int(np.ceil(length / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    h = np.arctan2(*(p1 - p0)[::-1]) if length > 0 else 0.0
    return p0 + (p1 - p0) * t, np.full(n, h), np.zeros(n)


def sample_trajectory(
    corners: np.ndarray,
    radii: np.ndarray,
    n_frames: int,
    profile: MotionProfile,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Vehicle poses ``T_world_base`` (N, 4, 4) and timestamps (N,) along the smoothed path.

    ``rng`` only draws the phases of the body motion. Raises ValueError if the path is too short.
    """
    if n_frames < 1:
        raise ValueError(f"need at least one frame, got {n_frames}")
    xy, heading, curv, s = smooth_path(corners, radii)
    v = np.minimum(profile.v_max, np.sqrt(profile.a_lat / np.maximum(np.abs(curv), 1e-9)))
    ds = np.diff(s)
    for i in range(1, len(v)):  # acceleration limit
        v[i] = min(v[i], np.sqrt(v[i - 1] ** 2 + 2 * profile.a_long * ds[i - 1]))
    for i in range(len(v) - 2, -1, -1):  # braking limit
        v[i] = min(v[i], np.sqrt(v[i + 1] ** 2 + 2 * profile.a_long * ds[i]))
    t = np.concatenate([[0.0], np.cumsum(ds / (0.5 * (v[1:] + v[:-1])))])
    times = np.arange(n_frames) / profile.rate_hz
    if times[-1] > t[-1]:
        raise ValueError(f"path too short: {s[-1]:.0f} m lasts {t[-1]:.1f} s, {n_frames} frames need {times[-1]:.1f} s")
    s_f = np.interp(times, t, s)
    x, y = np.interp(s_f, s, xy[:, 0]), np.interp(s_f, s, xy[:, 1])
    yaw = np.interp(s_f, s, heading)

    # suspension: a few slow sinusoids with random phases (smooth, bounded)
    amp = np.radians(profile.body_motion_deg)
    freqs = np.array([0.13, 0.37, 0.71])
    ph = rng.uniform(0.0, 2 * np.pi, (3, len(freqs)))

    def wobble(row: int) -> np.ndarray:
        return np.sum(np.sin(2 * np.pi * freqs * times[:, None] + ph[row]), axis=1) / len(freqs)

    pitch, roll, heave = amp * wobble(0), amp * wobble(1), profile.heave_m * wobble(2)
    T = np.empty((n_frames, 4, 4))
    for i in range(n_frames):
        cy, sy = np.cos(yaw[i]), np.sin(yaw[i])
        cp, sp = np.cos(pitch[i]), np.sin(pitch[i])
        cr, sr = np.cos(roll[i]), np.sin(roll[i])
        Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        T[i] = make_T(Rz @ Ry @ Rx, [x[i], y[i], heave[i]])
    return T, times
