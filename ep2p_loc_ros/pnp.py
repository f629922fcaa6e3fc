"""Runtime PnP: robust 2D-3D pose with a covariance that a ROS ``PoseWithCovariance`` can carry.

Pipeline (why each step is there):

1. **Input checks.** Bad input (wrong shapes, NaN/Inf, too few rows, collinear points) is reported as a
   :class:`PnPStatus`, never raised, so a localisation node keeps running on a bad frame.
2. **RANSAC** from a well-kept library (OpenCV USAC or PoseLib, see :class:`PnPConfig`), on undistorted
   pixels. With a guess pose (the localizer always has one: the retrieved viewpoint or the tracking prior) the
   default is instead our upright search around it (``upright_ransac.py``): neither library samples only poses
   within given bounds of a guess, which is what keeps look-alike matches from winning. Its minimal solver is
   checked against PoseLib's ``up2p``.
3. **Levenberg-Marquardt** on the inliers (own, small, vectorised, analytic Jacobian, optional per-point
   weights), then the inliers are re-checked with the refined pose (and refined again if they changed).
   We own this step because the covariance must come from exactly the problem that was solved.
4. **Covariance** ``sigma^2 (J^T W J)^-1`` with ``sigma^2 = sum(w r^2) / (2n - 6)``, propagated to the pose
   ROS publishes, ``T_world_cam``.

Covariance model (ROS ``PoseWithCovariance`` order ``x, y, z, roll, pitch, yaw``): a 6-vector
``[dt, dtheta]`` perturbs ``T_world_cam = (R, t)`` as::

    t <- t + dt                  (metres, world frame: the camera centre moves by dt)
    R <- Exp(dtheta) @ R         (radians, small rotation about the fixed world axes)

so the error of an estimate is ``e = [t_est - t_true, Log(R_est @ R_true.T)]``.

Failure convention: whenever ``status != OK`` the pose and covariance are NaN-filled (never identity, which
would look like a valid pose to a careless consumer); ``inlier_mask`` still says what was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import numba
import numpy as np

from .geometry import PinholeCamera, invert, make_T, rotvec_to_matrix
from .upright_ransac import SCORES, UprightBounds, search_rank, upright_ransac

__all__ = [
    "BACKENDS",
    "PnPConfig",
    "PnPStatus",
    "PoseEstimate",
    "camera_to_world_jacobian",
    "compile_kernel",
    "refine_pose_lm",
    "solve_pnp",
]

BACKENDS = ("opencv_usac", "poselib")
MIN_POINTS = 4  # 2n - 6 > 0 residual degrees of freedom are needed for sigma^2


class PnPStatus(str, Enum):
    """Outcome of :func:`solve_pnp`; anything but ``OK`` means the pose is NaN."""

    OK = "ok"
    TOO_FEW_POINTS = "too_few_points"  # fewer than 4 usable (finite) correspondences
    INVALID_INPUT = "invalid_input"  # wrong shapes/dtypes, negative weights, nothing finite
    DEGENERATE = "degenerate"  # coincident/collinear points or a singular Hessian
    RANSAC_FAILED = "ransac_failed"  # the backend found no model (or raised)
    TOO_FEW_INLIERS = "too_few_inliers"  # a model, but fewer than ``min_inliers`` support it


@dataclass(frozen=True)
class PnPConfig:
    """Tunables of :func:`solve_pnp`; frozen so a config file maps onto it one-to-one.

    ``reprojection_threshold_px`` is the inlier radius (Euclidean, undistorted pixels) used by RANSAC and by
    the final inlier re-check. ``min_sigma_px`` floors the estimated pixel noise so a perfect fit still gets a
    positive-definite covariance (pixel quantisation alone is ~0.3 px). ``ransac_min_iterations`` only
    applies to PoseLib (its own default of 1000 wastes time on easy frames).
    """

    reprojection_threshold_px: float = 8.0
    ransac_max_iterations: int = 10000
    ransac_min_iterations: int = 100
    confidence: float = 0.9999
    min_inliers: int = 10
    lm_max_iterations: int = 30
    max_inlier_rounds: int = 3
    min_sigma_px: float = 0.1
    backend: str = "opencv_usac"
    # With a guess pose (the retrieved viewpoint, or the tracking prior): search only upright poses near it
    # (upright_ransac.py) instead of the backend's 6-DoF RANSAC. The bounds say how far from the guess.
    upright_search: bool = True
    search_max_distance_m: float = 20.0
    search_max_height_m: float = 2.0
    search_max_yaw_deg: float = 45.0
    search_samples: int = 2000
    search_score: str = "cells"  # the winning pose: most image cells with inliers ("cells") or most inliers

    def __post_init__(self) -> None:
        # A bad config is a programming/configuration error, so it raises (unlike bad measurements).
        if self.backend not in BACKENDS:
            raise ValueError(f"PnPConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not (self.reprojection_threshold_px > 0 and np.isfinite(self.reprojection_threshold_px)):
            raise ValueError(f"reprojection_threshold_px must be > 0, got {self.reprojection_threshold_px}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.ransac_max_iterations < 1 or self.ransac_min_iterations < 0:
            raise ValueError("ransac_max_iterations must be >= 1 and ransac_min_iterations >= 0")
        if self.min_inliers < MIN_POINTS:
            raise ValueError(f"min_inliers must be >= {MIN_POINTS}, got {self.min_inliers}")
        if self.lm_max_iterations < 0 or self.max_inlier_rounds < 1 or self.min_sigma_px < 0:
            raise ValueError("lm_max_iterations >= 0, max_inlier_rounds >= 1 and min_sigma_px >= 0 required")
        if self.search_samples < 1:
            raise ValueError(f"search_samples must be >= 1, got {self.search_samples}")
        if self.search_score not in SCORES:
            raise ValueError(f"search_score must be one of {SCORES}, got {self.search_score!r}")
        self.search_bounds()  # raises on bad bounds

    def search_bounds(self) -> UprightBounds:
        return UprightBounds(self.search_max_distance_m, self.search_max_height_m, self.search_max_yaw_deg)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _nan_pose() -> np.ndarray:
    return np.full((4, 4), np.nan)


@dataclass(frozen=True)
class PoseEstimate:
    """Result of :func:`solve_pnp`. ``covariance`` is for ``T_world_cam`` in the model of the module docstring."""

    T_cam_world: np.ndarray = field(default_factory=_nan_pose)
    covariance: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))
    inlier_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    reprojection_error_px: float = float("nan")  # RMS of per-point pixel distance over inliers
    status: PnPStatus = PnPStatus.INVALID_INPUT
    message: str = ""
    guess_index: int = -1  # which of several guesses the upright search won from (-1: no search)

    @property
    def ok(self) -> bool:
        return self.status is PnPStatus.OK

    @property
    def T_world_cam(self) -> np.ndarray:
        """The camera's pose in the world (what ROS publishes); NaN when not ``ok``."""
        if not np.all(np.isfinite(self.T_cam_world)):
            return _nan_pose()
        return invert(self.T_cam_world)

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inlier_mask))

    @property
    def inlier_ratio(self) -> float:
        """Inliers over all input rows (dropped NaN rows count as outliers)."""
        n = self.inlier_mask.size
        return self.num_inliers / n if n else 0.0


def _fail(status: PnPStatus, message: str, n: int, inliers: np.ndarray | None = None) -> PoseEstimate:
    mask = np.zeros(n, dtype=bool) if inliers is None else inliers
    return PoseEstimate(inlier_mask=mask, status=status, message=message)


# --------------------------------------------------------------------------- residuals and LM


def _project(R: np.ndarray, t: np.ndarray, X: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (N, 2), camera-frame points ``R X + t`` (N, 3) and their inverse depths (N,) for an undistorted
    ``K`` (the LM's residuals and Jacobian share them)."""
    Xc = X @ R.T
    Xc += t
    with np.errstate(divide="ignore", invalid="ignore"):
        iz = 1.0 / Xc[:, 2]
    x, y = Xc[:, 0] * iz, Xc[:, 1] * iz
    uv = np.empty((len(Xc), 2))
    uv[:, 0] = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    uv[:, 1] = K[1, 1] * y + K[1, 2]
    return uv, Xc, iz


def _jacobian(Xc: np.ndarray, iz: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """d(pixels)/d(delta) (N, 2, 6) for ``R <- Exp(w) R, t <- t + v`` (camera frame), ``delta = [v, w]``."""
    fx, s, fy = K[0, 0], K[0, 1], K[1, 1]
    X, Y = Xc[:, 0], Xc[:, 1]
    iz2 = iz * iz
    J = np.zeros((Xc.shape[0], 2, 6))
    # d(u, v) / d(Xc), which is also d(u, v) / dv since d(Xc)/dv = I
    d00, d01, d02 = fx * iz, s * iz, -(fx * X + s * Y) * iz2
    d11, d12 = fy * iz, -fy * Y * iz2
    J[:, 0, 0], J[:, 0, 1], J[:, 0, 2] = d00, d01, d02
    J[:, 1, 1], J[:, 1, 2] = d11, d12
    # d(Xc)/dw = -[R X]_x  (Exp(w) R X ~ R X + w x R X); rows of d(u,v)/d(Xc) times that, written out
    RX = Xc - t
    a, b, c = RX[:, 0], RX[:, 1], RX[:, 2]
    J[:, 0, 3] = d02 * b - d01 * c
    J[:, 0, 4] = d00 * c - d02 * a
    J[:, 0, 5] = d01 * a - d00 * b
    J[:, 1, 3] = d12 * b - d11 * c
    J[:, 1, 4] = -d12 * a
    J[:, 1, 5] = d11 * a
    return J


# LM stops when a step lowers the cost by less than this fraction of it. Near the optimum that is a pose change of
# micrometres at most (on 119 problems captured from a held-out drive the poses moved by <= 4e-8 m against 1e-14);
# the tighter 1e-14, which float64 rarely reaches, only added ten failing damped steps to every LM.
LM_RELATIVE_TOLERANCE = 1e-10


def refine_pose_lm(
    T_cam_world: np.ndarray,
    points_world: np.ndarray,
    pixels: np.ndarray,
    K: np.ndarray,
    weights: np.ndarray | None = None,
    max_iterations: int = 30,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares reprojection refinement (Levenberg-Marquardt, Marquardt diagonal scaling).

    ``pixels`` must be undistorted for ``K``. Returns the refined ``T_cam_world``, the Gauss-Newton Hessian
    ``J^T W J`` at it (camera-frame parametrisation ``[v, w]``: ``t <- t + v``, ``R <- Exp(w) R``) and the
    residuals (N, 2) in pixels. The iterations are compiled (:func:`_lm_iterations`): a few hundred inliers
    made numpy's per-iteration overhead the cost (0.75 ms a call, ~8 calls a frame).
    """
    X = np.ascontiguousarray(points_world, dtype=np.float64)
    uv = np.ascontiguousarray(pixels, dtype=np.float64)
    w = np.ones(X.shape[0]) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    R, t = T_cam_world[:3, :3].astype(np.float64), T_cam_world[:3, 3].astype(np.float64)
    K = np.ascontiguousarray(K, dtype=np.float64)
    _lm_iterations(R, t, X, uv, K, w, int(max_iterations), LM_RELATIVE_TOLERANCE)
    # Re-orthonormalise (repeated small-rotation products drift at the 1e-16 level).
    U, _, Vt = np.linalg.svd(R)
    R = U @ Vt
    proj, Xc, iz = _project(R, t, X, K)
    J = _jacobian(Xc, iz, t, K).reshape(-1, 6)
    H = J.T @ (J * np.repeat(w, 2)[:, None])
    return make_T(R, t), H, proj - uv


def compile_kernel() -> None:
    """Compile LM's kernels now (numba; ~2 s the first time on a host, well under a second from its on-disk cache),
    so that a node's first frame does not pay."""
    X = np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 6.0], [0.0, 1.0, 7.0], [1.0, 1.0, 5.0]])
    uv = X[:, :2] / X[:, 2:]
    refine_pose_lm(np.eye(4), X, uv, np.eye(3))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lm_cost(
    R: np.ndarray, t: np.ndarray, X: np.ndarray, uv: np.ndarray, K: np.ndarray, w: np.ndarray
) -> float:  # pragma: no cover (compiled)
    """Weighted squared reprojection error at ``(R, t)``; inf when a point is behind the camera (a step that puts
    an inlier there is never accepted)."""
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    cost = 0.0
    for i in range(X.shape[0]):
        x0, x1, x2 = X[i, 0], X[i, 1], X[i, 2]
        xc = R[0, 0] * x0 + R[0, 1] * x1 + R[0, 2] * x2 + t[0]
        yc = R[1, 0] * x0 + R[1, 1] * x1 + R[1, 2] * x2 + t[1]
        zc = R[2, 0] * x0 + R[2, 1] * x1 + R[2, 2] * x2 + t[2]
        if not zc > 1e-9:
            return np.inf
        iz = 1.0 / zc
        du = fx * xc * iz + s * yc * iz + cx - uv[i, 0]
        dv = fy * yc * iz + cy - uv[i, 1]
        cost += w[i] * (du * du + dv * dv)
    return cost


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lm_normal_equations(
    R: np.ndarray,
    t: np.ndarray,
    X: np.ndarray,
    uv: np.ndarray,
    K: np.ndarray,
    w: np.ndarray,
    H: np.ndarray,
    g: np.ndarray,
) -> None:  # pragma: no cover (compiled)
    """``H`` = J^T W J and ``g`` = J^T W r at ``(R, t)``, accumulated point by point (J as :func:`_jacobian`)."""
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    H[:] = 0.0
    g[:] = 0.0
    j0, j1 = np.zeros(6), np.zeros(6)
    for i in range(X.shape[0]):
        x0, x1, x2 = X[i, 0], X[i, 1], X[i, 2]
        a = R[0, 0] * x0 + R[0, 1] * x1 + R[0, 2] * x2  # R X
        b = R[1, 0] * x0 + R[1, 1] * x1 + R[1, 2] * x2
        c = R[2, 0] * x0 + R[2, 1] * x1 + R[2, 2] * x2
        xc, yc, zc = a + t[0], b + t[1], c + t[2]
        iz = 1.0 / zc
        r0 = fx * xc * iz + s * yc * iz + cx - uv[i, 0]
        r1 = fy * yc * iz + cy - uv[i, 1]
        iz2 = iz * iz
        d00, d01, d02 = fx * iz, s * iz, -(fx * xc + s * yc) * iz2
        d11, d12 = fy * iz, -fy * yc * iz2
        j0[0], j0[1], j0[2] = d00, d01, d02
        j0[3], j0[4], j0[5] = d02 * b - d01 * c, d00 * c - d02 * a, d01 * a - d00 * b
        j1[0], j1[1], j1[2] = 0.0, d11, d12
        j1[3], j1[4], j1[5] = d12 * b - d11 * c, -d12 * a, d11 * a
        wi = w[i]
        for p in range(6):
            g[p] += wi * (j0[p] * r0 + j1[p] * r1)
            for q in range(p, 6):
                H[p, q] += wi * (j0[p] * j0[q] + j1[p] * j1[q])
    for p in range(6):
        for q in range(p):
            H[p, q] = H[q, p]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _solve_spd(A: np.ndarray, b: np.ndarray, x: np.ndarray) -> bool:  # pragma: no cover (compiled)
    """x = A^-1 b for a symmetric positive-definite 6x6 ``A`` (Cholesky, in place in ``A``); False if it is not."""
    n = A.shape[0]
    for j in range(n):
        d = A[j, j]
        for k in range(j):
            d -= A[j, k] * A[j, k]
        if not d > 0.0:
            return False
        d = np.sqrt(d)
        A[j, j] = d
        for i in range(j + 1, n):
            v = A[i, j]
            for k in range(j):
                v -= A[i, k] * A[j, k]
            A[i, j] = v / d
    for i in range(n):  # L y = b
        v = b[i]
        for k in range(i):
            v -= A[i, k] * x[k]
        x[i] = v / A[i, i]
    for i in range(n - 1, -1, -1):  # L^T x = y
        v = x[i]
        for k in range(i + 1, n):
            v -= A[k, i] * x[k]
        x[i] = v / A[i, i]
    return True


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _rodrigues(r: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """:func:`ep2p_loc_ros.geometry.rotvec_to_matrix`, compiled."""
    theta = np.sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2])
    Kx = np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    if theta < 1e-8:
        a, b = 1.0, 0.5
    else:
        a, b = np.sin(theta) / theta, (1.0 - np.cos(theta)) / theta**2
    return np.eye(3) + a * Kx + b * (Kx @ Kx)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lm_iterations(
    R: np.ndarray,
    t: np.ndarray,
    X: np.ndarray,
    uv: np.ndarray,
    K: np.ndarray,
    w: np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> None:  # pragma: no cover (compiled)
    """LM on ``(R, t)`` in place: Marquardt-scaled damping, a step taken when it does not raise the cost, stopped
    when the gradient vanishes, a step gains less than ``tolerance`` of the cost, or ten dampings fail."""
    H, g, A, delta = np.zeros((6, 6)), np.zeros(6), np.zeros((6, 6)), np.zeros(6)
    cost = _lm_cost(R, t, X, uv, K, w)
    lam = 1e-3
    for _ in range(max_iterations):
        _lm_normal_equations(R, t, X, uv, K, w, H, g)
        if np.max(np.abs(g)) < 1e-12 * max(1.0, cost):
            break
        dmax = 0.0
        for p in range(6):
            dmax = max(dmax, H[p, p])
        improved = converged = False
        for _ in range(10):
            A[:] = H
            for p in range(6):
                A[p, p] += lam * max(H[p, p], 1e-12 * max(1.0, dmax))
            if not _solve_spd(A, -g, delta):
                lam *= 10.0
                continue
            R_new = _rodrigues(delta[3:]) @ R
            t_new = t + delta[:3]
            new_cost = _lm_cost(R_new, t_new, X, uv, K, w)
            if new_cost <= cost:
                converged = cost - new_cost <= tolerance * max(cost, 1e-30) or np.max(np.abs(delta)) < 1e-12
                R[:] = R_new
                t[:] = t_new
                cost = new_cost
                lam = max(lam / 10.0, 1e-12)
                improved = True
                break
            lam *= 10.0
        if not improved or converged:
            break


def camera_to_world_jacobian(T_cam_world: np.ndarray) -> np.ndarray:
    """``d[dt, dtheta] / d[v, w]``: camera-frame LM perturbation -> world-frame ``T_world_cam`` perturbation.

    With ``R_cw <- Exp(w) R_cw, t_cw <- t_cw + v``: ``R_wc <- R_wc Exp(-w) = Exp(-R_wc w) R_wc`` and
    ``t_wc = -R_cw^T t_cw <- t_wc - R_wc v - R_wc [t_cw]_x w`` (first order).
    """
    R_wc = T_cam_world[:3, :3].T
    t_cw = T_cam_world[:3, 3]
    G = np.zeros((6, 6))
    G[:3, :3] = -R_wc
    G[:3, 3:] = -R_wc @ _skew(t_cw)
    G[3:, 3:] = -R_wc
    return G


# --------------------------------------------------------------------------- RANSAC backends


def _ransac_opencv(X: np.ndarray, uv: np.ndarray, K: np.ndarray, cfg: PnPConfig) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    ok, rvec, tvec, idx = cv2.solvePnPRansac(
        X,
        uv,
        K,
        None,
        iterationsCount=int(cfg.ransac_max_iterations),
        reprojectionError=float(cfg.reprojection_threshold_px),
        confidence=float(cfg.confidence),
        flags=cv2.USAC_DEFAULT,
    )
    mask = np.zeros(X.shape[0], dtype=bool)
    if not ok or idx is None or rvec is None or tvec is None:
        return _nan_pose(), mask
    mask[np.asarray(idx).reshape(-1)] = True
    return make_T(rotvec_to_matrix(np.asarray(rvec).reshape(3)), np.asarray(tvec).reshape(3)), mask


def _ransac_poselib(X: np.ndarray, uv: np.ndarray, K: np.ndarray, cfg: PnPConfig) -> tuple[np.ndarray, np.ndarray]:
    import poselib

    camera = {"model": "PINHOLE", "width": 0, "height": 0, "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}
    ransac = {
        "max_reproj_error": float(cfg.reprojection_threshold_px),
        "max_iterations": int(cfg.ransac_max_iterations),
        "min_iterations": int(min(cfg.ransac_min_iterations, cfg.ransac_max_iterations)),
        "success_prob": float(cfg.confidence),
    }
    pose, info = poselib.estimate_absolute_pose(uv, X, camera, ransac, {})
    mask = np.asarray(info.get("inliers", []), dtype=bool).reshape(-1)
    if mask.size != X.shape[0] or not mask.any():
        return _nan_pose(), np.zeros(X.shape[0], dtype=bool)
    return make_T(np.asarray(pose.R), np.asarray(pose.t)), mask


_BACKEND_FN = {"opencv_usac": _ransac_opencv, "poselib": _ransac_poselib}


# --------------------------------------------------------------------------- main entry


def _rank_deficient(P: np.ndarray, rel_tol: float = 1e-6) -> bool:
    """True if the rows of ``P`` are (numerically) coincident or collinear."""
    s = np.linalg.svd(P - P.mean(axis=0), compute_uv=False)
    return bool(s[0] <= 1e-12 or s[1] <= rel_tol * s[0])


def solve_pnp(
    points_world: np.ndarray,
    pixels: np.ndarray,
    camera: PinholeCamera,
    config: PnPConfig | None = None,
    weights: np.ndarray | None = None,
    guess: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> PoseEstimate:
    """Robust camera pose from 3D world points and their pixels; never raises on bad measurements.

    Args:
        points_world: (N, 3) points in the world (map) frame.
        pixels: (N, 2) observed pixels of ``camera`` (distorted if the camera has distortion; they are
            undistorted first).
        camera: the intrinsics.
        config: thresholds and backend (:class:`PnPConfig` defaults if None).
        weights: optional (N,) non-negative per-point weights (e.g. match confidence or ``1/sigma_i^2``).
            Only the least-squares refinement and covariance use them; RANSAC does not. Their overall
            scale does not matter (sigma^2 absorbs it).
        guess: optional (4, 4) ``T_world_cam`` near the truth, or (G, 4, 4) candidates (e.g. the retrieved
            submaps' viewpoints). With ``config.upright_search`` RANSAC then only tries poses within the config's
            search bounds of them (upright_ransac.py); the best search result over the guesses (by
            ``config.search_score``) goes on to LM once, and ``guess_index`` says which guess it came from.
            Without a guess, or with the search off, the backend's unconstrained 6-DoF RANSAC runs.
        start: optional (4, 4) ``T_world_cam`` already close (within the reprojection threshold for most
            inliers): no RANSAC; its inliers seed the LM <-> inlier loop. For polishing a pose found on coarser
            pixels once finer ones are known.

    Rows with NaN/Inf (in points, pixels or weights) are dropped and marked outliers. Returns a
    :class:`PoseEstimate`; ``covariance`` is for ``T_world_cam`` (see the module docstring for the model).
    """
    cfg = config if config is not None else PnPConfig()
    try:
        X_all = np.asarray(points_world, dtype=np.float64)
        uv_all = np.asarray(pixels, dtype=np.float64)
        w_all = None if weights is None else np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return _fail(PnPStatus.INVALID_INPUT, f"inputs are not numeric arrays: {exc}", 0)
    if X_all.ndim != 2 or X_all.shape[1] != 3 or uv_all.ndim != 2 or uv_all.shape[1] != 2:
        shapes = f"{X_all.shape}, {uv_all.shape}"
        return _fail(PnPStatus.INVALID_INPUT, f"need (N,3) points and (N,2) pixels, got {shapes}", 0)
    n = X_all.shape[0]
    if uv_all.shape[0] != n:
        return _fail(PnPStatus.INVALID_INPUT, f"{n} points but {uv_all.shape[0]} pixels", 0)
    if w_all is not None and w_all.shape != (n,):
        return _fail(PnPStatus.INVALID_INPUT, f"weights must have shape ({n},), got {w_all.shape}", n)
    if w_all is not None and np.any(w_all < 0):
        return _fail(PnPStatus.INVALID_INPUT, "weights must be >= 0", n)
    if n < MIN_POINTS:
        return _fail(PnPStatus.TOO_FEW_POINTS, f"{n} correspondences, PnP needs at least {MIN_POINTS}", n)

    finite = np.all(np.isfinite(X_all), axis=1) & np.all(np.isfinite(uv_all), axis=1)
    if w_all is not None:
        finite &= np.isfinite(w_all)
    n_valid = int(finite.sum())
    dropped = f" ({n - n_valid} of {n} rows had NaN/Inf and were dropped)" if n_valid < n else ""
    if n_valid == 0:
        return _fail(PnPStatus.INVALID_INPUT, f"no finite correspondence among {n}", n)
    if n_valid < MIN_POINTS:
        return _fail(PnPStatus.TOO_FEW_POINTS, f"{n_valid} usable correspondences, need {MIN_POINTS}{dropped}", n)
    valid_idx = np.flatnonzero(finite)
    X = np.ascontiguousarray(X_all[finite])
    w = np.ones(n_valid) if w_all is None else w_all[finite]

    # Undistort, then drop skew for the RANSAC libraries (an affine pixel change; zero for real cameras).
    uv = camera.undistort_pixels(uv_all[finite]) if camera.has_distortion else uv_all[finite]
    if not np.all(np.isfinite(uv)):
        return _fail(PnPStatus.INVALID_INPUT, "undistortion produced NaN/Inf pixels", n)
    K = camera.K
    K0 = K.copy()
    K0[0, 1] = 0.0
    uv0 = uv if K[0, 1] == 0.0 else (np.c_[uv, np.ones(n_valid)] @ (K0 @ np.linalg.inv(K)).T)[:, :2]
    uv0 = np.ascontiguousarray(uv0)

    if _rank_deficient(X):
        return _fail(PnPStatus.DEGENERATE, f"3D points are coincident or collinear{dropped}", n)
    if _rank_deficient(uv0):
        return _fail(PnPStatus.DEGENERATE, f"pixels are coincident or collinear{dropped}", n)

    if start is not None:
        if not (np.shape(start) == (4, 4) and np.all(np.isfinite(start))):
            return _fail(PnPStatus.INVALID_INPUT, "start must be a finite 4x4 pose", n)
        T0 = invert(np.asarray(start, dtype=np.float64))
        mask = _inlier_mask(T0, X, uv, K, cfg.reprojection_threshold_px)
        return _refine_and_check(X, uv, w, T0, mask, camera, cfg, n, valid_idx, dropped, "start pose")
    search = guess is not None and cfg.upright_search
    guesses = np.asarray(guess, dtype=np.float64) if search else np.zeros((0, 4, 4))
    if search and not (guesses.shape[-2:] == (4, 4) and guesses.ndim in (2, 3) and np.all(np.isfinite(guesses))):
        return _fail(PnPStatus.INVALID_INPUT, "guess must be a finite 4x4 pose or a stack of them", n)
    guesses = guesses.reshape(-1, 4, 4)
    method = "upright search" if search else cfg.backend
    won = -1
    try:
        if search:
            T0, mask, won = _search_guesses(X, uv0, K0, guesses, cfg)
        else:
            T0, mask = _BACKEND_FN[cfg.backend](X, uv0, K0, cfg)
    except Exception as exc:  # a library failure on one frame must not kill the node
        return _fail(PnPStatus.RANSAC_FAILED, f"{method} raised {type(exc).__name__}: {exc}", n)
    if not np.all(np.isfinite(T0)) or not mask.any():
        where = " within the search bounds of the guess" if search else ""
        return _fail(PnPStatus.RANSAC_FAILED, f"{method} found no pose{where}{dropped}", n)
    if mask.sum() < cfg.min_inliers:
        return _fail(
            PnPStatus.TOO_FEW_INLIERS,
            f"RANSAC: {int(mask.sum())} inliers < min_inliers={cfg.min_inliers}",
            n,
            _full_mask(n, valid_idx, mask),
        )
    est = _refine_and_check(X, uv, w, T0, mask, camera, cfg, n, valid_idx, dropped, method)
    return replace(est, guess_index=won) if search else est


def _search_guesses(
    X: np.ndarray, uv0: np.ndarray, K0: np.ndarray, guesses: np.ndarray, cfg: PnPConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """The upright search around each guess; the best result (image cells with inliers, then inliers, with
    ``search_score="cells"``; inliers alone otherwise) and the guess it came from. LM then runs on one pose."""
    best: tuple[int, np.ndarray, np.ndarray, int] | None = None
    for g, guess in enumerate(guesses):
        T, mask = upright_ransac(
            X,
            uv0,
            K0,
            guess,
            cfg.search_bounds(),
            cfg.reprojection_threshold_px,
            cfg.search_samples,
            score=cfg.search_score,
        )
        if not np.all(np.isfinite(T)) or not mask.any():
            continue
        key = int(search_rank(mask[None], uv0, cfg.search_score)[0])  # the search's own ranking, across guesses
        if best is None or key > best[0]:
            best = (key, T, mask, g)
    if best is None:
        return np.full((4, 4), np.nan), np.zeros(len(X), dtype=bool), -1
    return best[1], best[2], best[3]


def _inlier_mask(T_cam_world: np.ndarray, X: np.ndarray, uv: np.ndarray, K: np.ndarray, thr: float) -> np.ndarray:
    """Rows in front of the camera that reproject within ``thr`` pixels of ``uv`` (undistorted, for ``K``)."""
    proj, Xc, _ = _project(T_cam_world[:3, :3], T_cam_world[:3, 3], X, K)
    r2 = np.sum((proj - uv) ** 2, axis=1)
    return (Xc[:, 2] > 1e-9) & np.isfinite(r2) & (r2 <= thr**2)


def _full_mask(n: int, valid_idx: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """A mask over the finite rows -> over all ``n`` input rows."""
    m = np.zeros(n, dtype=bool)
    m[valid_idx[sub]] = True
    return m


def _refine_and_check(
    X: np.ndarray,
    uv: np.ndarray,
    w: np.ndarray,
    T0: np.ndarray,
    mask: np.ndarray,
    camera: PinholeCamera,
    cfg: PnPConfig,
    n: int,
    valid_idx: np.ndarray,
    dropped: str,
    method: str,
) -> PoseEstimate:
    """From a first pose ``T0`` (camera <- world) and its inliers: LM <-> inlier loop, checks, covariance."""
    K = camera.K

    def full_mask(sub: np.ndarray) -> np.ndarray:
        return _full_mask(n, valid_idx, sub)

    # LM on inliers <-> inlier re-check with the refined pose, until the set is stable.
    T, H = T0, np.full((6, 6), np.nan)
    for _ in range(cfg.max_inlier_rounds):
        if mask.sum() < MIN_POINTS:
            break
        T, H, _ = refine_pose_lm(T, X[mask], uv[mask], K, w[mask], cfg.lm_max_iterations)
        new_mask = _inlier_mask(T, X, uv, K, cfg.reprojection_threshold_px)
        if np.array_equal(new_mask, mask):
            break
        mask = new_mask
    else:
        # The set changed in the last round: refine once more on it so pose, mask and Hessian agree.
        if mask.sum() >= MIN_POINTS:
            T, H, _ = refine_pose_lm(T, X[mask], uv[mask], K, w[mask], cfg.lm_max_iterations)

    n_eff = int(np.count_nonzero(mask & (w > 0)))
    if n_eff < cfg.min_inliers:
        return _fail(
            PnPStatus.TOO_FEW_INLIERS,
            f"after refinement: {n_eff} inliers with weight > 0 < min_inliers={cfg.min_inliers}",
            n,
            full_mask(mask),
        )
    if _rank_deficient(X[mask]):
        return _fail(PnPStatus.DEGENERATE, "inliers are collinear", n, full_mask(mask))
    if not np.all(np.isfinite(T)) or not np.all(np.isfinite(H)):
        return _fail(PnPStatus.DEGENERATE, "refinement diverged", n, full_mask(mask))

    # Covariance: sigma0^2 (J^T W J)^-1, with a Jacobi-scaled conditioning check (mixed m / rad units).
    d = np.sqrt(np.diag(H))
    if np.any(d <= 0):
        return _fail(PnPStatus.DEGENERATE, "singular Hessian (a pose direction is unobserved)", n, full_mask(mask))
    Hs = H / np.outer(d, d)
    eig = np.linalg.eigvalsh(Hs)
    if eig[0] <= 1e-10 * eig[-1]:
        return _fail(
            PnPStatus.DEGENERATE,
            f"singular Hessian (condition {eig[-1] / max(eig[0], 1e-300):.1e})",
            n,
            full_mask(mask),
        )
    proj, _, _ = _project(T[:3, :3], T[:3, 3], X[mask], K)
    r2 = np.sum((proj - uv[mask]) ** 2, axis=1)
    wm = w[mask]
    sigma2 = float(np.sum(wm * r2)) / (2 * n_eff - 6)
    sigma2 = max(sigma2, cfg.min_sigma_px**2 * float(np.mean(wm[wm > 0])))
    cov_cam = sigma2 * (np.linalg.inv(Hs) / np.outer(d, d))
    G = camera_to_world_jacobian(T)
    cov = G @ cov_cam @ G.T
    cov = 0.5 * (cov + cov.T)
    rms = float(np.sqrt(np.mean(r2)))
    return PoseEstimate(
        T_cam_world=T,
        covariance=cov,
        inlier_mask=full_mask(mask),
        reprojection_error_px=rms,
        status=PnPStatus.OK,
        message=f"{int(mask.sum())}/{n} inliers, RMS {rms:.2f} px, {method}{dropped}",
    )
