"""``ep2p-loc calibrate-covariance`` and ``calibrate-confidence``: localize held-out drives, fit what the localizer
reports about its own poses.

Each drive (a map and the KITTI-layout sequence it was built from) is localized globally and, for tracking, from
priors moved and turned by ``prior_noise`` (as an odometry that far off would give). The covariance calibration fits
one model-error term per mode from the errors of all drives together, with PnP's covariance alone
(``covariance_calibration.fit_model_error``); the confidence fits, per map environment and mode, how likely a pose is
right from the signals each result carries (``pose_confidence.fit_logistic``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..covariance_calibration import CovarianceCalibration, ModelError, fit_model_error
from ..errors import DataError
from ..localizer import Localizer, LocalizerConfig
from ..pose_confidence import ConfidenceModel, LogisticFit, fit_logistic, right_poses, signal_vector
from .evaluate import SequenceEvaluation, evaluate_sequence
from .metrics import pose_errors

__all__ = ["calibrate_confidence", "calibrate_covariance", "format_calibration", "format_confidence"]


def _localized_drives(
    drives: list[tuple[Path, Path]],
    model_dir: Path,
    config: LocalizerConfig,
    modes: tuple[str, ...],
    prior_noise: tuple[float, float],
    stride: int,
    seed: int,
    progress: bool,
    environment: str | None = None,
) -> Iterator[tuple[str, str, SequenceEvaluation]]:
    """(map environment, mode, evaluation) for each drive and mode: globally, and for ``tracking`` from priors
    moved and turned by ``prior_noise``. With ``environment``, every drive's map must be of it."""
    if not drives:
        raise ValueError("give at least one drive (a map and its sequence)")
    for map_dir, sequence in drives:
        loc = Localizer.from_paths(map_dir, model_dir, config)
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
            yield loc.map_environment, mode, ev


def _run_info(
    drives: list[tuple[Path, Path]], prior_noise: tuple[float, float], stride: int, seed: int
) -> dict[str, Any]:
    """How a calibration's drives were localized (its file's ``info``)."""
    return {
        "drives": [{"map": str(m), "sequence": str(s)} for m, s in drives],
        "prior_noise_m_deg": list(prior_noise),
        "stride": stride,
        "seed": seed,
    }


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

    cfg = replace(config or LocalizerConfig(), calibrated_covariance=False, confidence=False)
    collected: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {m: [] for m in modes}
    runs = _localized_drives(drives, model_dir, cfg, modes, prior_noise, stride, seed, progress, environment)
    for _, mode, ev in runs:
        collected[mode].append((ev.T_est, ev.T_gt, ev.covariances))
    fitted: dict[str, ModelError] = {}
    for mode, runs in collected.items():
        T_est, T_gt, covs = (np.concatenate([r[i] for r in runs]) for i in range(3))
        fitted[mode] = fit_model_error(T_est, T_gt, covs, *gross)
    info = {
        **_run_info(drives, prior_noise, stride, seed),
        "gross_limits_m_deg": list(gross),
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


def calibrate_confidence(
    drives: list[tuple[Path, Path]],
    model_dir: Path,
    config: LocalizerConfig | None = None,
    modes: tuple[str, ...] = ("global", "tracking"),
    prior_noise: tuple[float, float] = (1.0, 3.0),
    stride: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> ConfidenceModel:
    """Localize every drive in each mode and fit, per map environment and mode, the probability that a pose is
    within ``GOOD_LIMITS_M_DEG`` from its signals (aligned results only: the others carry no score). A pair with too
    few right or wrong poses to fit is skipped and named in ``info``; ``DataError`` when none could be fitted."""
    from ..model.network import WEIGHTS_FILE, sha256_file, verify_model_file

    cfg = replace(config or LocalizerConfig(), confidence=False)
    rows: dict[tuple[str, str], list[tuple[np.ndarray, bool]]] = {}
    for environment, mode, ev in _localized_drives(drives, model_dir, cfg, modes, prior_noise, stride, seed, progress):
        right = right_poses(*pose_errors(ev.T_est, ev.T_gt))
        for res, good in zip(ev.results, right, strict=True):
            if res.ok and res.aligned:
                x = signal_vector(res.alignment_score, res.support, res.inlier_ratio)
                rows.setdefault((environment, mode), []).append((x, bool(good)))
    fits: dict[str, dict[str, LogisticFit]] = {}
    skipped: dict[str, str] = {}
    for (environment, mode), data in sorted(rows.items()):
        X = np.stack([x for x, _ in data])
        good = np.array([g for _, g in data])
        try:
            fits.setdefault(environment, {})[mode] = fit_logistic(X, good, where=f"{environment} {mode}")
        except DataError as exc:
            skipped[f"{environment}.{mode}"] = str(exc)
    if not fits:
        raise DataError("no confidence could be fitted: " + "; ".join(skipped.values() or ["no aligned poses"]))
    info = {**_run_info(drives, prior_noise, stride, seed), **({"skipped": skipped} if skipped else {})}
    return ConfidenceModel(sha256_file(verify_model_file(model_dir, WEIGHTS_FILE)), fits, info)


def format_confidence(model: ConfidenceModel) -> str:
    """A markdown table: per environment and mode, the frames fitted, how many were right, AUC and Brier score on
    them, and the weights (of the standardised signals)."""
    lines = [
        "| environment | mode | frames (right) | AUC | Brier | weights: "
        + " / ".join(("alignment score", "log support", "log inlier ratio"))
        + " |",
        "|---|---|---|---|---|---|",
    ]
    for environment, modes in model.fits.items():
        for mode, f in modes.items():
            w = " / ".join(f"{v:+.2f}" for v in f.weights)
            lines.append(f"| {environment} | {mode} | {f.frames} ({f.right}) | {f.auc:.3f} | {f.brier:.3f} | {w} |")
    return "\n".join(lines)
