"""How likely a localization is right: a logistic model over signals the localizer measures anyway.

Why: the calibrated covariance (:mod:`.covariance_calibration`) describes a pose that is roughly right. It cannot
describe one at the wrong place (a look-alike along the road, a corridor seen turned toward a wall). Single images
give such poses often: on the held-out drives, 12 % of outdoor and 53 % of indoor single images are more than
5 m / 10° off, and their NEES runs into the thousands. A consumer (robot_localization's EKF, a pose graph, a person
looking at RViz) would take them in at the stated covariance. Three numbers the localizer has at its final pose tell
right poses from wrong ones, indoors nearly perfectly (models/README.md, "Session 33"):

- the alignment's score: the mutual information of the image and the map's reflectance where the pose projects it
  (:mod:`.reflectance_alignment`);
- the matches' support: the share of the 2D-3D matches that the pose reprojects within
  ``alignment.support_radius_px`` (:func:`.pose_hypotheses.match_support`);
- PnP's inlier ratio.

``confidence`` is the probability that the pose is within 0.5 m / 5° of the truth (the paper's recall threshold),
from a logistic regression on those signals (standardised), fitted per map environment and localization mode
(``global``, ``tracking``) on held-out drives by ``ep2p-loc calibrate-confidence``. It is stored as
``MODEL/confidence.json``, tied to the weights' sha256 like ``covariance.json``. A result without an alignment,
or on a map whose environment has no fit, has no confidence (NaN).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import read_json, write_text_atomic
from .errors import DataError
from .map.store import ENVIRONMENTS

__all__ = [
    "CONFIDENCE_FILE",
    "CONFIDENCE_FORMAT_VERSION",
    "GOOD_LIMITS_M_DEG",
    "SIGNALS",
    "ConfidenceModel",
    "LogisticFit",
    "confidence_summary",
    "fit_logistic",
    "right_poses",
    "signal_vector",
]

CONFIDENCE_FILE = "confidence.json"
CONFIDENCE_FORMAT_VERSION = 1
SIGNALS = ("alignment_score", "log_support", "log_inlier_ratio")
GOOD_LIMITS_M_DEG = (0.5, 5.0)  # "right": within these of the truth
MODES = ("global", "tracking")
MIN_FRAMES = 20  # fewer frames, or fewer than MIN_CLASS right or wrong ones, cannot fit four numbers usefully
MIN_CLASS = 5
_LOG_FLOOR = 1e-3  # a support or inlier ratio of 0 is log(1e-3), not -inf


def right_poses(t_err: np.ndarray, r_err: np.ndarray) -> np.ndarray:
    """Which pose errors (metres, degrees) are within ``GOOD_LIMITS_M_DEG``: what the confidence predicts."""
    return (np.asarray(t_err) <= GOOD_LIMITS_M_DEG[0]) & (np.asarray(r_err) <= GOOD_LIMITS_M_DEG[1])


def signal_vector(alignment_score: float, support: float, inlier_ratio: float) -> np.ndarray:
    """The model's inputs, in :data:`SIGNALS` order (shares as logs: their effect is multiplicative)."""
    return np.array(
        [alignment_score, math.log(max(support, 0.0) + _LOG_FLOOR), math.log(max(inlier_ratio, 0.0) + _LOG_FLOOR)]
    )


def _auc(p: np.ndarray, good: np.ndarray) -> float:
    """Probability that a right pose gets a higher confidence than a wrong one (ties count half)."""
    pos, neg = p[good], p[~good]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


@dataclass(frozen=True)
class LogisticFit:
    """P(right) = sigmoid(weights · (x - mean) / scale + bias), and what the fit saw."""

    mean: np.ndarray  # (len(SIGNALS),)
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    frames: int
    right: int  # frames within GOOD_LIMITS_M_DEG
    auc: float  # on the frames fitted
    brier: float

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(right) for signal vectors ``x`` ((len(SIGNALS),) or (N, len(SIGNALS))); NaN where a signal is."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def to_json(self) -> dict[str, Any]:
        return {
            "signals": list(SIGNALS),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "frames": self.frames,
            "right": self.right,
            "auc": self.auc,
            "brier": self.brier,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> LogisticFit:
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected an object")
        if data.get("signals") != list(SIGNALS):
            raise DataError(f"{where}: signals {data.get('signals')!r}, this version reads {list(SIGNALS)}")
        try:
            arrays = [np.array(data[k], dtype=np.float64) for k in ("mean", "scale", "weights")]
            bias = float(data["bias"])
            counts = int(data["frames"]), int(data["right"])
            stats = float(data["auc"]), float(data["brier"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: missing or malformed field ({exc})") from exc
        if any(a.shape != (len(SIGNALS),) or not np.isfinite(a).all() for a in arrays) or not math.isfinite(bias):
            raise DataError(f"{where}: mean, scale and weights must be {len(SIGNALS)} finite numbers, bias finite")
        if not (arrays[1] > 0).all():
            raise DataError(f"{where}: scale must be > 0")
        return cls(*arrays, bias, *counts, *stats)


def fit_logistic(X: np.ndarray, good: np.ndarray, l2: float = 1e-2, where: str = "confidence") -> LogisticFit:
    """Logistic regression of ``good`` ((N,) bool) on signal vectors ``X`` ((N, len(SIGNALS))), by Newton's method
    on standardised signals with a small ridge ``l2`` (which keeps a separable set finite). Rows with a non-finite
    signal are left out; raises ``DataError`` when too few frames, or too few right or wrong ones, remain."""
    X = np.asarray(X, dtype=np.float64).reshape(-1, len(SIGNALS))
    good = np.asarray(good, dtype=bool).reshape(-1)
    keep = np.isfinite(X).all(1)
    X, good = X[keep], good[keep]
    right = int(good.sum())
    if len(X) < MIN_FRAMES or min(right, len(X) - right) < MIN_CLASS:
        raise DataError(
            f"{where}: a confidence fit needs at least {MIN_FRAMES} frames with at least {MIN_CLASS} right and "
            f"{MIN_CLASS} wrong ones, got {len(X)} frames, {right} right: use more or other drives"
        )
    mean, scale = X.mean(0), X.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    A = np.c_[(X - mean) / scale, np.ones(len(X))]
    y = good.astype(np.float64)
    ridge = l2 * np.diag(np.r_[np.ones(len(SIGNALS)), 0.0])  # the bias is not shrunk
    w = np.zeros(A.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ w, -50.0, 50.0)))
        step = np.linalg.solve((A * (p * (1 - p))[:, None]).T @ A + ridge, A.T @ (p - y) + ridge @ w)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    fit = LogisticFit(mean, scale, w[:-1].copy(), float(w[-1]), len(X), right, math.nan, math.nan)
    p = fit.probability(X)
    return LogisticFit(mean, scale, fit.weights, fit.bias, len(X), right, _auc(p, good), float(np.mean((p - y) ** 2)))


@dataclass(frozen=True)
class ConfidenceModel:
    """Per map environment and mode, a :class:`LogisticFit`, for one model's weights (``confidence.json``)."""

    weights_sha256: str
    fits: dict[str, dict[str, LogisticFit]]  # environment -> mode -> fit
    info: dict[str, Any] = field(default_factory=dict)

    def confidence(self, mode: str, environment: str, signals: np.ndarray) -> float:
        """P(right) of a localization made in ``mode`` on a map of ``environment`` with ``signals``
        (:func:`signal_vector`); NaN without a fit for them or with a non-finite signal."""
        fit = self.fits.get(environment, {}).get(mode)
        if fit is None or not np.isfinite(signals).all():
            return math.nan
        return float(fit.probability(signals))

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": CONFIDENCE_FORMAT_VERSION,
            "weights_sha256": self.weights_sha256,
            "good_limits_m_deg": list(GOOD_LIMITS_M_DEG),
            "environments": {e: {m: f.to_json() for m, f in modes.items()} for e, modes in self.fits.items()},
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically: a reader sees the old file or the new one."""
        return write_text_atomic(Path(path), json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Any, source: str = "confidence model") -> ConfidenceModel:
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object")
        version = data.get("format_version")
        if version != CONFIDENCE_FORMAT_VERSION:
            raise DataError(
                f"{source}: format_version {version!r} is not supported (expected {CONFIDENCE_FORMAT_VERSION}); "
                "fit it again with ep2p-loc calibrate-confidence"
            )
        sha, envs = data.get("weights_sha256"), data.get("environments")
        if not isinstance(sha, str) or not isinstance(envs, dict) or not envs:
            raise DataError(f"{source}: needs 'weights_sha256' (string) and 'environments' (non-empty object)")
        if data.get("good_limits_m_deg") != list(GOOD_LIMITS_M_DEG):
            raise DataError(
                f"{source}: good_limits_m_deg {data.get('good_limits_m_deg')!r}, expected {list(GOOD_LIMITS_M_DEG)}"
            )
        fits: dict[str, dict[str, LogisticFit]] = {}
        for env, modes in envs.items():
            if env not in ENVIRONMENTS:
                raise DataError(f"{source}: unknown environment {env!r} (known: {list(ENVIRONMENTS)})")
            if not isinstance(modes, dict) or not modes or set(modes) - set(MODES):
                raise DataError(f"{source}: environments.{env} must be a non-empty object of modes {list(MODES)}")
            fits[env] = {m: LogisticFit.from_json(f, f"{source}: environments.{env}.{m}") for m, f in modes.items()}
        info = data.get("info", {})
        return cls(sha, fits, info if isinstance(info, dict) else {})

    @classmethod
    def load(cls, path: str | Path, weights_sha256: str | None = None) -> ConfidenceModel:
        """Read and check ``path``; with ``weights_sha256``, refuse a model fitted for other weights."""
        path = Path(path)
        data = read_json(path, "the confidence model")
        model = cls.from_json(data, str(path))
        if weights_sha256 is not None and model.weights_sha256 != weights_sha256:
            raise DataError(
                f"{path}: fitted for weights {model.weights_sha256[:12]}…, the model's are {weights_sha256[:12]}…: "
                "fit it again (ep2p-loc calibrate-confidence) or delete the file"
            )
        return model


def confidence_summary(confidence: np.ndarray, good: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """How well ``confidence`` ((N,), NaN where none) told right poses (``good``) from wrong ones: AUC, Brier
    score, and at ``threshold``: the share of frames at or above it and the share of those that are right."""
    c = np.asarray(confidence, dtype=np.float64)
    g = np.asarray(good, dtype=bool)
    have = np.isfinite(c)
    c, g = c[have], g[have]
    kept = c >= threshold
    return {
        "frames": len(c),
        "auc": _auc(c, g),
        "brier": float(np.mean((c - g) ** 2)) if len(c) else math.nan,
        "threshold": threshold,
        "kept": float(kept.mean()) if len(c) else math.nan,
        "right_of_kept": float(g[kept].mean()) if kept.any() else math.nan,
        "right_of_rest": float(g[~kept].mean()) if (~kept).any() else math.nan,
    }
