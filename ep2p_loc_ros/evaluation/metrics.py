"""Pose-error metrics: recall at (translation, rotation) thresholds, error statistics, NEES."""

from __future__ import annotations

import numpy as np

from ..geometry import pose_difference

__all__ = ["CHI2_6_95", "CHI2_6_MEDIAN", "RECALL_THRESHOLDS", "nees", "pose_errors", "recall_table", "summarize_errors"]

# chi-square with 6 degrees of freedom (a pose's NEES when its covariance is right): median, 95th percentile
CHI2_6_MEDIAN = 5.348120627447116
CHI2_6_95 = 12.591587243743977

# name -> (metres, degrees), as in the EP2P-Loc paper and the usual visual-localization benchmarks
RECALL_THRESHOLDS: dict[str, tuple[float, float]] = {
    "0.25m_2deg": (0.25, 2.0),
    "0.5m_5deg": (0.5, 5.0),
    "5m_10deg": (5.0, 10.0),
}


def pose_errors(T_est: np.ndarray, T_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) errors of camera poses (N, 4, 4); a NaN estimate gives +inf."""
    T_est = np.asarray(T_est, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    t_err = np.linalg.norm(T_est[:, :3, 3] - T_gt[:, :3, 3], axis=1)
    R_rel = T_est[:, :3, :3] @ np.transpose(T_gt[:, :3, :3], (0, 2, 1))
    cos = np.clip((np.trace(R_rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    r_err = np.degrees(np.arccos(cos))
    bad = ~np.isfinite(T_est).all(axis=(1, 2))
    t_err[bad] = np.inf
    r_err[bad] = np.inf
    return t_err, r_err


def recall_table(t_err: np.ndarray, r_err: np.ndarray) -> dict[str, float]:
    """Share of frames (failed ones count as misses) within each threshold pair."""
    n = max(len(t_err), 1)
    return {name: float(np.sum((t_err <= tm) & (r_err <= rd)) / n) for name, (tm, rd) in RECALL_THRESHOLDS.items()}


def summarize_errors(t_err: np.ndarray, r_err: np.ndarray) -> dict[str, float]:
    """Medians and percentiles over localized frames, plus the share localized at all."""
    ok = np.isfinite(t_err)
    out: dict[str, float] = {"localized": float(ok.mean()) if len(ok) else 0.0}
    if ok.any():
        out.update(
            median_translation_m=float(np.median(t_err[ok])),
            median_rotation_deg=float(np.median(r_err[ok])),
            p90_translation_m=float(np.percentile(t_err[ok], 90)),
            p90_rotation_deg=float(np.percentile(r_err[ok], 90)),
        )
    else:
        out.update(
            median_translation_m=float("nan"),
            median_rotation_deg=float("nan"),
            p90_translation_m=float("nan"),
            p90_rotation_deg=float("nan"),
        )
    return out


def nees(T_est: np.ndarray, T_gt: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Normalised estimation error squared of poses ``T_map_cam`` under the ROS covariance model of pnp.py.

    e = [t_est − t_gt, Log(R_est R_gtᵀ)]; NEES = eᵀ Σ⁻¹ e (6 for a consistent estimator, on average).
    """
    T_est = np.asarray(T_est, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    cov = np.asarray(covariance, dtype=np.float64).reshape(-1, 6, 6)
    out = np.full(len(T_est), np.nan)
    for i in range(len(T_est)):
        if not (np.isfinite(T_est[i]).all() and np.isfinite(cov[i]).all()):
            continue
        e = pose_difference(T_est[i], T_gt[i])
        try:
            out[i] = float(e @ np.linalg.solve(cov[i], e))
        except np.linalg.LinAlgError:
            continue
    return out
