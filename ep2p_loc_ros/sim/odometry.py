"""Odometry that drifts like a real one: the true motion, each step corrupted in proportion to its length.

Why: a bag whose ``odom -> base_link`` is the ground truth never drifts, which flatters anything that fuses
localizations through odometry (``map_odom_filter.py``): map->odom would then be exactly constant. Wheel or visual
odometry errs by about 1 % of the distance driven and a few hundredths of a degree per metre; this gives the
demo bag and ``bench/fusion.py`` such an odometry, reproducibly (seeded).
"""

from __future__ import annotations

import numpy as np

from ..geometry import invert, make_T, rotvec_to_matrix

__all__ = ["drifting_odometry"]


def drifting_odometry(
    T_world_base: np.ndarray, fraction: float, deg_per_m: float, rng: np.random.Generator
) -> np.ndarray:
    """``T_odom_base`` (N, 4, 4) for true poses ``T_world_base`` (N, 4, 4), starting at the identity: each step's
    true relative motion times a random error of standard deviation ``fraction`` × its length (metres, per axis)
    and ``deg_per_m`` × its length (degrees, per axis), in the vehicle frame. Zero drift gives the true motion."""
    T = np.asarray(T_world_base, dtype=np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4) or len(T) == 0:
        raise ValueError(f"expected (N, 4, 4) poses, got {T.shape}")
    if not (fraction >= 0 and deg_per_m >= 0):
        raise ValueError(f"drift must be >= 0, got {fraction}, {deg_per_m}")
    out = np.empty_like(T)
    out[0] = np.eye(4)
    for i in range(1, len(T)):
        rel = invert(T[i - 1]) @ T[i]
        d = float(np.linalg.norm(rel[:3, 3]))
        err = make_T(rotvec_to_matrix(rng.normal(0.0, np.radians(deg_per_m) * d, 3)), rng.normal(0.0, fraction * d, 3))
        out[i] = out[i - 1] @ rel @ err
    return out
