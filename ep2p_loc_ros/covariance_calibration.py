"""Calibrated pose covariance: PnP's covariance plus the model's own error, measured on held-out drives.

Why: the covariance that LM gives (``pnp.py``) assumes every inlier is a right match with independent pixel
noise. A weak matcher breaks that: most inliers are look-alike matches that agree with each other, so the pose
is off by metres while the LM covariance says centimetres (held-out drives: median position std 4 cm against a
median error of 2.2 m, NEES in the thousands). A filter downstream (robot_localization's EKF, a pose graph) would
trust such a pose far too much. So the published covariance adds a *model-error* term: the second moment of the
pose errors this model makes, expressed in the camera's own axes (it is long along the optical axis), scaled so
that the median NEES over the calibration frames is that of a consistent estimator (χ²₆ median, 5.35), and
rotated into the map frame with each pose.

Gross failures (beyond ``gross_translation_m`` / ``gross_rotation_deg``, 5 m / 10° by default) are left out of
the fit and counted: no Gaussian describes them; catching them is the gate's job (inlier ratio, jump test).

The calibration belongs to one model (it records the sha256 of its weights and is refused for other weights) and
to a localization mode: ``global`` (retrieval) and ``tracking`` (from a prior) err differently. It is written by
``ep2p-loc calibrate-covariance`` into the model directory as ``covariance.json``; the localizer applies it when
it is there. Covariances follow ``pnp.py``: ROS order (x, y, z, roll, pitch, yaw), the position in the map frame,
the rotation a small rotation about the map's fixed axes (``R <- Exp(dtheta) R``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import read_json, write_text_atomic
from .errors import DataError
from .evaluation.metrics import CHI2_6_95, CHI2_6_MEDIAN, nees
from .geometry import pose_difference
from .map.store import ENVIRONMENTS

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_FORMAT_VERSION",
    "MODES",
    "CovarianceCalibration",
    "ModelError",
    "camera_frame_errors",
    "fit_model_error",
    "inflate",
]

CALIBRATION_FILE = "covariance.json"
CALIBRATION_FORMAT_VERSION = 1
MODES = ("global", "tracking")
MIN_FRAMES = 8  # fewer non-gross frames cannot pin down a 6x6 second moment usefully


def _pose_error_world(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """e = [t_est - t_gt, Log(R_est R_gtᵀ)]: the error in the covariance model's (map-frame) coordinates, as
    ``evaluation.metrics.nees`` measures it."""
    return pose_difference(T_est, T_gt)


def _frame_rotation(T: np.ndarray) -> np.ndarray:
    """(6, 6) blockdiag(R, R) of a pose: camera-axes error -> map-frame error (both halves rotate alike)."""
    G = np.zeros((6, 6))
    G[:3, :3] = G[3:, 3:] = T[:3, :3]
    return G


def camera_frame_errors(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """(N, 6) pose errors of ``T_map_cam`` estimates in each estimate's camera axes (x right, y down, z forward).

    Rows of frames without an estimate are NaN.
    """
    T_est = np.asarray(T_est, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    out = np.full((len(T_est), 6), np.nan)
    for i in range(len(T_est)):
        if np.isfinite(T_est[i]).all():
            out[i] = _frame_rotation(T_est[i]).T @ _pose_error_world(T_est[i], T_gt[i])
    return out


def inflate(T_map_cam: np.ndarray, covariance: np.ndarray, model_covariance_cam: np.ndarray) -> np.ndarray:
    """PnP's ``covariance`` (6, 6, map frame) plus the model error (6, 6, camera axes) rotated into the map frame."""
    G = _frame_rotation(np.asarray(T_map_cam, dtype=np.float64))
    out = np.asarray(covariance, dtype=np.float64) + G @ model_covariance_cam @ G.T
    return 0.5 * (out + out.T)


@dataclass(frozen=True)
class ModelError:
    """The model-error term of one mode and what its fit saw."""

    covariance: np.ndarray  # (6, 6) in camera axes, ROS order
    frames: int  # frames fitted (estimates within the gross limits)
    gross: int  # estimates beyond them (left out)
    missing: int  # frames without an estimate
    nees_median_before: float  # over the fitted frames, PnP's covariance alone
    nees_median_after: float  # ... with the model error added (≈ CHI2_6_MEDIAN by construction)
    within_95_before: float  # share of the fitted frames whose NEES is within χ²₆'s 95th percentile
    within_95_after: float

    def to_json(self) -> dict[str, Any]:
        return {
            "covariance": self.covariance.tolist(),
            "std_camera_axes": [float(math.sqrt(v)) for v in np.diag(self.covariance)],
            "frames": self.frames,
            "gross": self.gross,
            "missing": self.missing,
            "nees_median_before": self.nees_median_before,
            "nees_median_after": self.nees_median_after,
            "within_95_before": self.within_95_before,
            "within_95_after": self.within_95_after,
        }


def fit_model_error(
    T_est: np.ndarray,
    T_gt: np.ndarray,
    covariances: np.ndarray,
    gross_translation_m: float = 5.0,
    gross_rotation_deg: float = 10.0,
) -> ModelError:
    """The model-error covariance (camera axes) that makes the median NEES of the non-gross frames χ²₆'s median.

    Its shape is the errors' second moment about zero (a bias is an error a consumer sees too); its scale comes
    from a bisection on the median NEES with PnP's own covariance included, so where PnP's covariance is already
    large the added term is smaller. Raises ``DataError`` with fewer than ``MIN_FRAMES`` usable frames.
    """
    T_est = np.asarray(T_est, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    cov = np.asarray(covariances, dtype=np.float64).reshape(-1, 6, 6)
    if not (len(T_est) == len(T_gt) == len(cov)):
        raise ValueError(f"need as many estimates, truths and covariances, got {len(T_est)}, {len(T_gt)}, {len(cov)}")
    e_cam = camera_frame_errors(T_est, T_gt)
    have = np.isfinite(e_cam).all(1) & np.isfinite(cov).all((1, 2))
    t_err = np.linalg.norm(e_cam[:, :3], axis=1)
    r_err = np.degrees(np.linalg.norm(e_cam[:, 3:], axis=1))
    keep = have & (t_err <= gross_translation_m) & (r_err <= gross_rotation_deg)
    n = int(keep.sum())
    if n < MIN_FRAMES:
        raise DataError(
            f"covariance calibration needs at least {MIN_FRAMES} estimates within {gross_translation_m} m / "
            f"{gross_rotation_deg}° of the truth, got {n} (of {len(T_est)} frames): use more or easier frames"
        )
    e = e_cam[keep]
    shape = e.T @ e / n
    shape += np.eye(6) * 1e-9 * max(float(np.trace(shape)), 1e-12)  # a degenerate fit stays invertible
    Tk, Gk, Ck = T_est[keep], T_gt[keep], cov[keep]
    before = nees(Tk, Gk, Ck)

    def median_nees(scale: float) -> float:
        inflated = np.stack([inflate(T, C, scale * shape) for T, C in zip(Tk, Ck, strict=True)])
        return float(np.nanmedian(nees(Tk, Gk, inflated)))

    lo, hi = 1e-6, 1e6  # the scale lies between; median NEES falls as the scale grows
    if median_nees(lo) <= CHI2_6_MEDIAN:
        scale = lo  # PnP's covariance is already wide enough
    else:
        for _ in range(60):  # bisection in log space: 60 halvings pin the scale to ~1e-16 relative
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if median_nees(mid) > CHI2_6_MEDIAN else (lo, mid)
        scale = hi
    model_cov = scale * shape
    after = nees(Tk, Gk, np.stack([inflate(T, C, model_cov) for T, C in zip(Tk, Ck, strict=True)]))
    return ModelError(
        covariance=0.5 * (model_cov + model_cov.T),
        frames=n,
        gross=int((have & ~keep).sum()),
        missing=int((~have).sum()),
        nees_median_before=float(np.nanmedian(before)),
        nees_median_after=float(np.nanmedian(after)),
        within_95_before=float(np.mean(before <= CHI2_6_95)),
        within_95_after=float(np.mean(after <= CHI2_6_95)),
    )


def _check_matrix(value: Any, where: str) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: not a 6x6 matrix of numbers ({exc})") from exc
    if m.shape != (6, 6) or not np.isfinite(m).all():
        raise DataError(f"{where}: expected a finite 6x6 matrix, got shape {m.shape}")
    if not np.allclose(m, m.T, rtol=1e-9, atol=1e-12):
        raise DataError(f"{where}: not symmetric")
    if np.linalg.eigvalsh(m).min() < -1e-12 * max(1.0, float(np.abs(m).max())):
        raise DataError(f"{where}: not positive semi-definite")
    return m


def _parse_modes(modes: dict[str, Any], where: str) -> dict[str, ModelError]:
    """``{mode: ModelError}`` from a calibration file's ``modes`` object (``where`` names it in errors)."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise DataError(f"{where}: unknown modes {unknown} (known: {list(MODES)})")
    out: dict[str, ModelError] = {}
    for name, m in modes.items():
        at = f"{where}.{name}"
        if not isinstance(m, dict):
            raise DataError(f"{at}: expected an object")
        try:
            out[name] = ModelError(
                covariance=_check_matrix(m.get("covariance"), f"{at}.covariance"),
                frames=int(m["frames"]),
                gross=int(m["gross"]),
                missing=int(m["missing"]),
                nees_median_before=float(m["nees_median_before"]),
                nees_median_after=float(m["nees_median_after"]),
                within_95_before=float(m["within_95_before"]),
                within_95_after=float(m["within_95_after"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{at}: missing or malformed field ({exc})") from exc
    return out


@dataclass(frozen=True)
class CovarianceCalibration:
    """Per-mode model errors for one model's weights (``weights_sha256``), as stored in ``covariance.json``."""

    modes: dict[str, ModelError]
    weights_sha256: str
    info: dict[str, Any] = field(default_factory=dict)  # how it was made (drives, limits, command)
    # Per map environment (a map's MapBuildParams.environment): modes calibrated on that environment's drives alone,
    # used instead of ``modes`` on such maps. Why: the pipeline differs by environment (indoors the alignment
    # compares local contrast and also starts from the prior), and so does its error: indoors a tracked pose errs
    # far less than outdoors (models/README.md "Session 27").
    environments: dict[str, dict[str, ModelError]] = field(default_factory=dict)

    def model_error(self, mode: str, environment: str | None = None) -> ModelError | None:
        """The model error of ``mode`` on a map of ``environment``: the environment's own when calibrated, else the
        pooled one (None when neither is)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        own = self.environments.get(environment, {}) if environment is not None else {}
        return own.get(mode, self.modes.get(mode))

    def apply(
        self, mode: str, T_map_cam: np.ndarray, covariance: np.ndarray, environment: str | None = None
    ) -> np.ndarray:
        """``covariance`` with the model error of ``mode`` (on a map of ``environment``) added; unchanged when that
        mode was not calibrated."""
        err = self.model_error(mode, environment)
        return covariance if err is None else inflate(T_map_cam, covariance, err.covariance)

    def with_environment(
        self, environment: str, modes: dict[str, ModelError], info: dict[str, Any]
    ) -> CovarianceCalibration:
        """This calibration with ``modes`` (and how they were made, ``info``) as ``environment``'s own; the pooled
        modes and other environments stay."""
        if environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {ENVIRONMENTS}, got {environment!r}")
        envs = {**self.environments, environment: {**self.environments.get(environment, {}), **modes}}
        made = {**self.info.get("environments", {}), environment: info}
        return replace(self, environments=envs, info={**self.info, "environments": made})

    def to_json(self) -> dict[str, Any]:
        out = {
            "format_version": CALIBRATION_FORMAT_VERSION,
            "weights_sha256": self.weights_sha256,
            "modes": {k: v.to_json() for k, v in self.modes.items()},
            "info": self.info,
        }
        if self.environments:  # (optional: files without it read as before, and older readers skip it)
            out["environments"] = {e: {k: v.to_json() for k, v in m.items()} for e, m in self.environments.items()}
        return out

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary sibling, fsync, rename): a reader sees the old file or the new one."""
        return write_text_atomic(Path(path), json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Any, source: str = "covariance calibration") -> CovarianceCalibration:
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object")
        version = data.get("format_version")
        if version != CALIBRATION_FORMAT_VERSION:
            raise DataError(
                f"{source}: format_version {version!r} is not supported (expected {CALIBRATION_FORMAT_VERSION}); "
                "calibrate again with ep2p-loc calibrate-covariance"
            )
        sha = data.get("weights_sha256")
        modes = data.get("modes")
        if not isinstance(sha, str) or not isinstance(modes, dict) or not modes:
            raise DataError(f"{source}: needs 'weights_sha256' (string) and 'modes' (non-empty object)")
        out = _parse_modes(modes, f"{source}: modes")
        environments = data.get("environments", {})
        if not isinstance(environments, dict):
            raise DataError(f"{source}: 'environments' must be an object of environment -> modes")
        unknown_env = sorted(set(environments) - set(ENVIRONMENTS))
        if unknown_env:
            raise DataError(f"{source}: unknown environments {unknown_env} (known: {list(ENVIRONMENTS)})")
        per_env = {}
        for env, env_modes in environments.items():
            if not isinstance(env_modes, dict) or not env_modes:
                raise DataError(f"{source}: environments.{env} must be a non-empty object of modes")
            per_env[env] = _parse_modes(env_modes, f"{source}: environments.{env}")
        info = data.get("info", {})
        return cls(out, sha, info if isinstance(info, dict) else {}, per_env)

    @classmethod
    def load(cls, path: str | Path, weights_sha256: str | None = None) -> CovarianceCalibration:
        """Read and check ``path``; with ``weights_sha256``, refuse a calibration made for other weights."""
        path = Path(path)
        data = read_json(path, "covariance calibration")
        cal = cls.from_json(data, str(path))
        if weights_sha256 is not None and cal.weights_sha256 != weights_sha256:
            raise DataError(
                f"{path}: calibrated for weights {cal.weights_sha256[:12]}…, the model's are {weights_sha256[:12]}…: "
                "calibrate again (ep2p-loc calibrate-covariance) or delete the file"
            )
        return cal
