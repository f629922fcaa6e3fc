"""Drifting odometry (sim/odometry.py): exact without drift, and a drift that grows with the distance as asked."""

from __future__ import annotations

import numpy as np
import pytest

from ep2p_loc_ros.geometry import invert, make_T, rotvec_to_matrix
from ep2p_loc_ros.sim.odometry import drifting_odometry


def _line(n: int, start: np.ndarray) -> np.ndarray:
    """``n`` poses 1 m apart along a straight road, starting at ``start``."""
    return np.stack([start @ make_T(np.eye(3), [float(i), 0.0, 0.0]) for i in range(n)])


START = make_T(rotvec_to_matrix([0.0, 0.0, 1.1]), [50.0, -20.0, 2.0])


def test_no_drift_is_the_true_motion_from_the_identity():
    T = _line(30, START)
    odo = drifting_odometry(T, 0.0, 0.0, np.random.default_rng(0))
    for i in range(len(T)):
        np.testing.assert_allclose(odo[i], invert(T[0]) @ T[i], atol=1e-9)


def test_position_drift_grows_like_a_random_walk_over_the_distance():
    T = _line(101, START)  # 100 m
    ends = np.stack([drifting_odometry(T, 0.01, 0.0, np.random.default_rng(s))[-1, :3, 3] for s in range(300)])
    err = ends - np.array([100.0, 0.0, 0.0])
    std = err.std(axis=0)  # 1 cm per 1 m step, 100 independent steps: 0.1 m per axis
    assert np.all((std > 0.08) & (std < 0.12)), std
    assert np.abs(err.mean(axis=0)).max() < 0.03  # unbiased


def test_heading_drift_bends_the_path():
    T = _line(101, START)
    ends = np.stack([drifting_odometry(T, 0.0, 0.05, np.random.default_rng(s))[-1, :3, 3] for s in range(200)])
    lateral = ends[:, 1].std()  # 0.05 deg/m heading random walk, integrated over 100 m: ~0.5 m sideways
    assert 0.3 < lateral < 0.8, lateral


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="poses"):
        drifting_odometry(np.eye(4), 0.01, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="drift"):
        drifting_odometry(_line(3, START), -0.01, 0.0, np.random.default_rng(0))
