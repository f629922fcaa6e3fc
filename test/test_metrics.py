"""Pose-error metrics on constructed poses with known errors."""

from __future__ import annotations

import numpy as np

from ep2p_loc_ros.evaluation.metrics import nees, pose_errors, recall_table, summarize_errors
from ep2p_loc_ros.geometry import make_T, rotvec_to_matrix


def _poses() -> tuple[np.ndarray, np.ndarray]:
    gt = np.stack([make_T(rotvec_to_matrix(np.array([0, 0, 0.1 * i])), np.array([i, 0.0, 0])) for i in range(4)])
    est = gt.copy()
    est[0, :3, 3] += [0.1, 0, 0]  # 0.1 m, 0 deg
    est[1, :3, :3] = rotvec_to_matrix(np.radians([0, 0, 3.0])) @ est[1, :3, :3]  # 0 m, 3 deg
    est[2, :3, 3] += [0, 2.0, 0]  # 2 m
    est[3] = np.nan  # not localized
    return est, gt


def test_metrics_pose_errors_and_recall():
    est, gt = _poses()
    t, r = pose_errors(est, gt)
    np.testing.assert_allclose(t[:3], [0.1, 0.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(r[:3], [0.0, 3.0, 0.0], atol=1e-6)
    assert np.isinf(t[3]) and np.isinf(r[3])
    rec = recall_table(t, r)
    assert rec == {"0.25m_2deg": 0.25, "0.5m_5deg": 0.5, "5m_10deg": 0.75}
    s = summarize_errors(t, r)
    assert s["localized"] == 0.75
    assert s["median_translation_m"] == 0.1


def test_metrics_nees_of_a_consistent_estimator_is_about_six():
    rng = np.random.default_rng(0)
    sig = np.array([0.1, 0.2, 0.05, 0.01, 0.02, 0.03])
    cov = np.diag(sig**2)
    gt = np.repeat(np.eye(4)[None], 4000, 0)
    e = rng.normal(0, 1, (4000, 6)) * sig
    est = gt.copy()
    for i in range(len(gt)):
        est[i, :3, 3] = e[i, :3]
        est[i, :3, :3] = rotvec_to_matrix(e[i, 3:])
    n = nees(est, gt, np.repeat(cov[None], len(gt), 0))
    assert 5.7 < n.mean() < 6.3
    # overconfident covariance (10x too small sigma) is flagged by a NEES far above 6
    assert nees(est[:10], gt[:10], np.repeat(cov[None] / 100, 10, 0)).mean() > 100
