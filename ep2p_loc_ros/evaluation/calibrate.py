"""``ep2p-loc calibrate-covariance``: measure the model's pose errors on held-out drives, fit the covariance term.

Each drive (a map and the KITTI-layout sequence it was built from) is localized globally and, for tracking, from
priors moved and turned by ``prior_noise`` (as an odometry that far off would give), with PnP's covariance alone;
the errors of all drives together fit one model-error term per mode (``covariance_calibration.fit_model_error``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..covariance_calibration import CovarianceCalibration, ModelError, fit_model_error
from ..localizer import Localizer, LocalizerConfig
from .evaluate import evaluate_sequence

__all__ = ["calibrate_covariance", "format_calibration"]


def calibrate_covariance(
    drives: list[tuple[Path, Path]],
    model_dir: Path,
    config: LocalizerConfig | None = None,
    modes: tuple[str, ...] = ("global", "tracking"),
    prior_noise: tuple[float, float] = (1.0, 3.0),
    stride: int = 1,
    gross: tuple[float, float] = (5.0, 10.0),
    seed: int = 0,
    progress: bool = True,
    environment: str | None = None,
) -> CovarianceCalibration:
    """Localize every drive in each mode (PnP covariance alone) and fit each mode's model error. With
    ``environment``, every drive's map must be of it (what is fitted is then that environment's own)."""
    from ..model.network import WEIGHTS_FILE, sha256_file, verify_model_file

    if not drives:
        raise ValueError("give at least one drive (a map and its sequence)")
    cfg = replace(config or LocalizerConfig(), calibrated_covariance=False)
    collected: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {m: [] for m in modes}
    for map_dir, sequence in drives:
        loc = Localizer.from_paths(map_dir, model_dir, cfg)
        if environment is not None and loc.map_environment != environment:
            raise ValueError(f"{map_dir} is an {loc.map_environment!r} map, not {environment!r}")
        for mode in modes:
            tracking = mode == "tracking"
            ev = evaluate_sequence(
                loc,
                sequence,
                stride=stride,
                use_prior=tracking,
                prior_noise=prior_noise if tracking else (0.0, 0.0),
                progress=progress,
                seed=seed,
            )
            collected[mode].append((ev.T_est, ev.T_gt, ev.covariances))
    fitted: dict[str, ModelError] = {}
    for mode, runs in collected.items():
        T_est, T_gt, covs = (np.concatenate([r[i] for r in runs]) for i in range(3))
        fitted[mode] = fit_model_error(T_est, T_gt, covs, *gross)
    info: dict[str, Any] = {
        "drives": [{"map": str(m), "sequence": str(s)} for m, s in drives],
        "prior_noise_m_deg": list(prior_noise),
        "gross_limits_m_deg": list(gross),
        "stride": stride,
        "seed": seed,
        **({"environment": environment} if environment is not None else {}),
    }
    return CovarianceCalibration(fitted, sha256_file(verify_model_file(model_dir, WEIGHTS_FILE)), info)


def format_calibration(cal: CovarianceCalibration) -> str:
    """A markdown table: per mode, frames used, NEES and χ²₆-95 % share before/after, the added std per axis."""
    lines = [
        "| mode | frames fitted | gross / no pose | NEES median: PnP → calibrated | within χ²₆ 95 %: PnP → calibrated "
        "| added std x / y / z (m), camera axes | added std, rotation about x / y / z (°) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in cal.modes.items():
        std = np.sqrt(np.diag(m.covariance))
        lines.append(
            f"| {mode} | {m.frames} | {m.gross} / {m.missing} | {m.nees_median_before:.0f} → {m.nees_median_after:.2f} "
            f"| {m.within_95_before:.0%} → {m.within_95_after:.0%} | {std[0]:.2f} / {std[1]:.2f} / {std[2]:.2f} "
            f"| {np.degrees(std[3]):.2f} / {np.degrees(std[4]):.2f} / {np.degrees(std[5]):.2f} |"
        )
    return "\n".join(lines)
