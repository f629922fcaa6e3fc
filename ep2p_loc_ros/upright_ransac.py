"""RANSAC over the poses a guess allows: a turn about the camera's vertical axis and a bounded move.

Why: with a weak matcher most 2D-3D matches are wrong, and they are not random. Many map points land on the same
few look-alike patches, and a camera tens of metres away, tilted or upside down, "explains" such a pile better
than the true pose explains its scattered true matches. A 6-DoF RANSAC (P3P) happily returns that camera. But a
localizer always knows more than nothing: the retrieved submap's viewpoint (or the tracking prior) is near the
camera, and a vehicle's camera keeps its pitch and roll. So the search here:

- solves the *upright* two-point problem: the pose differs from the guess by a rotation ``phi`` about the guess
  camera's y axis (image "down", the vertical for a level camera) and a translation ``c``; two matches give at
  most two poses (closed form, vectorised over thousands of samples at once);
- drops every hypothesis farther than ``max_distance_m`` from the guess, more than ``max_height_m`` above or
  below it, or turned more than ``max_yaw_deg``, or with a sampled point behind the camera;
- scores the survivors on a random subset of the matches, then the best few on all of them. The score is how
  *spread* the inliers are, the number of distinct 32 x 32 px image cells holding one (``score="cells"``, ties
  to the most inliers), or simply the inlier count (``score="inliers"``).

Why spread: the weak matcher's errors pile up along the depth direction. Poses metres ahead of or behind the
true one explain nearly as many matches (far points barely move), but their inliers crowd into fewer parts of
the image than the true pose's, whose inliers include the near points around the image. On the held-out outdoor
drive, choosing by cells raised recall at 5 m / 10 deg from 50 % to 63 % (models/README.md); with a tracking
prior and guided matching (matches already spread) the plain count did better, so both are kept.

Two matches per sample instead of three or four makes a clean sample far likelier at low inlier ratios
(``e^2`` instead of ``e^4``), and the bounds remove the far-away look-alike poses before they are scored. The
result seeds :func:`ep2p_loc_ros.pnp.solve_pnp`'s full 6-DoF Levenberg-Marquardt refinement, which restores any
small pitch or roll difference.

Derivation (guess camera frame, points ``Y_i = R_g^T (X_i - C_g)``, bearings ``f_i`` of the pixels): the query
camera sees ``Y_i - c = lambda_i Ry(phi) f_i``. For two matches, ``D = Y_1 - Y_2 = Ry(phi) (lambda_1 f_1 -
lambda_2 f_2)``, so ``Ry(phi)^T D`` lies in the plane of ``f_1`` and ``f_2``: ``n . Ry(phi)^T D = 0`` with
``n = f_1 x f_2``, i.e. ``A cos(phi) + B sin(phi) = -C``, two solutions. The depths follow by least squares and
``c = Y_1 - lambda_1 Ry(phi) f_1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .geometry import invert, make_T

__all__ = [
    "SCORES",
    "UprightBounds",
    "compile_kernel",
    "occupied_cells",
    "rot_y",
    "search_rank",
    "upright_candidates",
    "upright_ransac",
    "yaw_about_camera_y",
]

SCORES = ("cells", "inliers")


@dataclass(frozen=True)
class UprightBounds:
    """How far the true pose may be from the guess (the search region)."""

    max_distance_m: float = 20.0  # horizontal move (the guess camera's x-z plane)
    max_height_m: float = 2.0  # move along the guess camera's y axis (up/down for a level camera)
    max_yaw_deg: float = 45.0  # turn about the guess camera's y axis

    def __post_init__(self) -> None:
        if not (self.max_distance_m > 0 and self.max_height_m > 0 and 0 < self.max_yaw_deg <= 180):
            raise ValueError(f"UprightBounds needs positive distances and 0 < max_yaw_deg <= 180, got {self}")


def rot_y(phi: np.ndarray | float) -> np.ndarray:
    """(..., 3, 3) rotations about y by ``phi`` (x' = cos x + sin z, z' = -sin x + cos z)."""
    phi = np.asarray(phi, dtype=np.float64)
    c, s = np.cos(phi), np.sin(phi)
    z, o = np.zeros_like(phi), np.ones_like(phi)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def yaw_about_camera_y(R_ref: np.ndarray, R: np.ndarray) -> float:
    """The angle ``phi`` (rad) of the turn about ``R_ref``'s y axis that best matches ``R``'s viewing direction."""
    axis = R_ref.T @ R[:, 2]  # R's optical axis in the reference camera frame
    return float(np.arctan2(axis[0], axis[2]))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (S, 3) arrays: ``np.cross``'s products and differences, without its axis
    handling (0.7 ms of each search's 1 ms for 2,000 samples; one-off profile, session 35)."""
    return np.stack(
        [
            a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
            a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0],
        ],
        1,
    )


def upright_candidates(
    Y1: np.ndarray, Y2: np.ndarray, f1: np.ndarray, f2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All upright poses of the sample pairs: (phi (S, 2), c (S, 2, 3), valid (S, 2)).

    ``Y1, Y2`` (S, 3) are points in the guess camera frame, ``f1, f2`` (S, 3) their bearings in the query camera.
    ``valid`` is False where a solution does not exist (no real root) or puts a point behind the camera.
    """
    D = Y1 - Y2
    n = _cross(f1, f2)
    A = n[:, 0] * D[:, 0] + n[:, 2] * D[:, 2]
    B = n[:, 2] * D[:, 0] - n[:, 0] * D[:, 2]
    C = n[:, 1] * D[:, 1]
    r = np.hypot(A, B)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos_arg = -C / r
    exists = np.isfinite(cos_arg) & (np.abs(cos_arg) <= 1.0)
    alpha = np.arctan2(B, A)
    delta = np.arccos(np.clip(cos_arg, -1.0, 1.0))
    phi = np.stack([alpha + delta, alpha - delta], 1)  # (S, 2)
    cos, sin = np.cos(phi), np.sin(phi)
    # E = Ry(phi)^T D = lambda1 f1 - lambda2 f2, written out (Ry(phi)^T maps (x, y, z) to (c x - s z, y, s x + c z))
    Dx, Dy, Dz = D[:, None, 0], D[:, None, 1], D[:, None, 2]
    Ex, Ez = cos * Dx - sin * Dz, sin * Dx + cos * Dz
    # Least squares for (lambda1, lambda2): [f1, -f2] lam = E, via the 2x2 normal equations.
    a11 = np.sum(f1 * f1, 1)[:, None]
    a22 = np.sum(f2 * f2, 1)[:, None]
    a12 = -np.sum(f1 * f2, 1)[:, None]
    b1 = Ex * f1[:, None, 0] + Dy * f1[:, None, 1] + Ez * f1[:, None, 2]
    b2 = -(Ex * f2[:, None, 0] + Dy * f2[:, None, 1] + Ez * f2[:, None, 2])
    det = a11 * a22 - a12 * a12
    with np.errstate(divide="ignore", invalid="ignore"):
        lam1 = (a22 * b1 - a12 * b2) / det
        lam2 = (a11 * b2 - a12 * b1) / det
    # c = Y1 - lambda1 Ry(phi) f1, Ry(phi) mapping (x, y, z) to (c x + s z, y, -s x + c z)
    f1x, f1y, f1z = f1[:, None, 0], f1[:, None, 1], f1[:, None, 2]
    Rf1 = np.stack([cos * f1x + sin * f1z, np.broadcast_to(f1y, cos.shape), cos * f1z - sin * f1x], -1)
    c = Y1[:, None, :] - lam1[..., None] * Rf1
    valid = exists[:, None] & (lam1 > 0) & (lam2 > 0) & np.isfinite(lam1) & np.isfinite(lam2)
    return phi, c, valid


def occupied_cells(masks: np.ndarray, uv: np.ndarray, cell: float = 32.0) -> np.ndarray:
    """(H,) number of distinct ``cell`` x ``cell`` pixel cells holding the pixels ``uv`` (N, 2) that each row of
    ``masks`` (H, N) selects (how spread a set of matches is over the image)."""
    masks = np.atleast_2d(masks)
    if masks.size == 0 or len(uv) == 0:
        return np.zeros(len(masks), dtype=np.int64)
    cells = np.floor(uv / cell).astype(np.int64)
    cells -= cells.min(axis=0)
    cell_id = cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1]  # one int per cell, row-major
    if int(cell_id.max()) >= 4 * len(uv):  # a sparse spread (pixels far apart): number the cells densely
        cell_id = np.unique(cell_id, return_inverse=True)[1].reshape(-1)
    return _occupied_counts(masks, cell_id, int(cell_id.max()) + 1)


@numba.njit(cache=True, nogil=True)
def _occupied_counts(masks: np.ndarray, cell_id: np.ndarray, n_cells: int) -> np.ndarray:  # pragma: no cover
    """(H,) how many distinct ``cell_id`` values (< ``n_cells``) each row of ``masks`` (H, N) selects. One pass a
    row, a cell marked with its row's stamp (no clearing between rows). Compiled: numpy's nonzero and scatter over
    the (H, N) masks were ~3 ms of a single image's PnP (13 calls; one-off profile, session 35)."""
    stamp = np.zeros(n_cells, np.int64)
    out = np.zeros(masks.shape[0], np.int64)
    for h in range(masks.shape[0]):
        row = masks[h]
        count = 0
        for m in range(row.shape[0]):
            if row[m] and stamp[cell_id[m]] != h + 1:
                stamp[cell_id[m]] = h + 1
                count += 1
        out[h] = count
    return out


def search_rank(masks: np.ndarray, uv: np.ndarray, score: str = "cells") -> np.ndarray:
    """(H,) rank of hypotheses by their inlier ``masks`` (H, N) over pixels ``uv`` (N, 2), higher is better: the
    image cells holding inliers first (``score="cells"``), the inlier count breaking ties; the count alone for
    ``score="inliers"``."""
    inliers = masks.sum(1)
    return inliers + (occupied_cells(masks, uv) * (len(uv) + 1) if score == "cells" else 0)


def _finalist_ranks(masks: np.ndarray, uv: np.ndarray, score: str, finalists: int) -> np.ndarray:
    """:func:`search_rank` of the hypotheses that can be among the ``finalists`` best; lower values for the rest.

    Why: counting a hypothesis's image cells is the costly part of its rank, and most hypotheses have too few
    inliers to matter. A hypothesis has at most as many cells as inliers, so once the cells of the most-inlier
    hypotheses are known, one with fewer inliers than the ``finalists``-th best cell count ranks below every
    finalist: its exact rank is not needed (its inlier count, lower still, stands in). The finalists and their
    order are those of ranking every hypothesis.
    """
    inliers = masks.sum(1)
    if score != "cells" or len(masks) <= finalists:
        return search_rank(masks, uv, score)
    ranks = inliers.astype(np.int64)  # stand-ins: below bound * (len(uv) + 1), the least rank a finalist has
    first = np.argsort(-inliers, kind="stable")[: 2 * finalists]
    ranks[first] = search_rank(masks[first], uv, score)
    bound = np.sort(ranks[first] // (len(uv) + 1))[-finalists]  # the finalists-th best cell count so far
    rest = np.setdiff1d(np.flatnonzero(inliers >= bound), first)  # the others that could still reach it
    ranks[rest] = search_rank(masks[rest], uv, score)
    return ranks


def _inliers(
    phi: np.ndarray, c: np.ndarray, Y: np.ndarray, uv: np.ndarray, K: np.ndarray, threshold_px: float
) -> np.ndarray:
    """(H, M) inlier flags of the matches (Y, uv) under each hypothesis (phi (H,), c (H, 3)).

    float32 (pixels need no more than 7 digits), in one compiled pass (:func:`_inliers_kernel`): this (H, M)
    test is the search's main cost, and numpy's ten passes over (H, M) temporaries took 3x as long."""
    f32 = np.float32
    out = np.empty((len(phi), len(Y)), bool)
    trig = np.stack([np.cos(phi).astype(f32), np.sin(phi).astype(f32)], 1)
    Y_t = np.ascontiguousarray(Y.astype(f32).T)
    # the pixel residual's constant part, as numpy computed it: principal point minus the observed pixel
    offset = np.ascontiguousarray((np.array([K[0, 2], K[1, 2]], f32) - uv.astype(f32)).T)
    intr = np.array([K[0, 0], K[1, 1], threshold_px**2, 1e-6], f32)
    _inliers_kernel(trig, np.ascontiguousarray(c, f32), Y_t, offset, intr, out)
    return out


def compile_kernel() -> None:
    """Compile the inlier test now (numba, ~1 s the first time on a host, well under from its on-disk cache), so
    that a node's first frame does not pay."""
    _inliers(np.zeros(1), np.zeros((1, 3)), np.ones((1, 3)), np.zeros((1, 2)), np.eye(3), 1.0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _inliers_kernel(
    trig: np.ndarray, c: np.ndarray, Y: np.ndarray, offset: np.ndarray, intr: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover (compiled)
    """``out`` (H, M): whether hypothesis h (cos, sin of phi: ``trig`` (H, 2); ``c`` (H, 3)) reprojects point m
    (``Y`` (3, M), guess camera frame) in front of the camera and within the threshold of its pixel (``offset``
    (2, M) = principal point - pixel; ``intr`` = fx, fy, threshold², least depth). float32 throughout."""
    fx, fy, thr2, min_depth = intr[0], intr[1], intr[2], intr[3]
    one = intr.dtype.type(1.0)
    X0, X1, X2, ou, ov = Y[0], Y[1], Y[2], offset[0], offset[1]
    for h in range(trig.shape[0]):
        cos, sin, c0, c1, c2 = trig[h, 0], trig[h, 1], c[h, 0], c[h, 1], c[h, 2]
        row = out[h]
        for m in range(X0.shape[0]):
            dx, dz = X0[m] - c0, X2[m] - c2
            xq = cos * dx - sin * dz  # Ry(phi)^T (Y - c)
            zq = sin * dx + cos * dz
            inv = one / zq
            u = xq * inv * fx + ou[m]
            v = (X1[m] - c1) * inv * fy + ov[m]
            row[m] = (zq > min_depth) & (u * u + v * v <= thr2)


def upright_ransac(
    X: np.ndarray,
    uv: np.ndarray,
    K: np.ndarray,
    T_world_guess: np.ndarray,
    bounds: UprightBounds,
    threshold_px: float,
    samples: int = 2000,
    seed: int = 0,
    score_subset: int = 512,
    finalists: int = 64,
    score: str = "cells",
) -> tuple[np.ndarray, np.ndarray]:
    """The best upright pose near ``T_world_guess`` for matches ``X`` (N, 3) world / ``uv`` (N, 2) undistorted
    pixels of a zero-skew ``K``. Returns ``(T_cam_world, inlier_mask)``; a NaN pose and an empty mask when no
    sample gives a pose inside ``bounds``. Deterministic for a given ``seed``. ``score`` picks the winner among
    the ``finalists`` (see the module docstring)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    n = len(X)
    empty = (np.full((4, 4), np.nan), np.zeros(n, dtype=bool))
    if n < 2:
        return empty
    R_g, C_g = T_world_guess[:3, :3], T_world_guess[:3, 3]
    Y = (X - C_g) @ R_g  # guess camera frame
    f = np.c_[(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(n)]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, samples)
    j = (i + rng.integers(1, n, samples)) % n  # j != i
    phi, c, valid = upright_candidates(Y[i], Y[j], f[i], f[j])
    phi = np.angle(np.exp(1j * phi))  # wrap to (-pi, pi]
    valid &= np.abs(phi) <= np.radians(bounds.max_yaw_deg)
    valid &= np.hypot(c[..., 0], c[..., 2]) <= bounds.max_distance_m
    valid &= np.abs(c[..., 1]) <= bounds.max_height_m
    phi, c = phi[valid], c[valid]
    if len(phi) == 0:
        return empty
    # Preemptive scoring: every hypothesis on a subset, the best few on all matches.
    subset = rng.choice(n, min(score_subset, n), replace=False)

    Y_sub, uv_sub = Y[subset], uv[subset]
    masks = np.concatenate(  # bounded memory: (1024, subset) float arrays at a time
        [_inliers(phi[s : s + 1024], c[s : s + 1024], Y_sub, uv_sub, K, threshold_px) for s in range(0, len(phi), 1024)]
    )
    preliminary = _finalist_ranks(masks, uv_sub, score, finalists)
    top = np.argsort(-preliminary, kind="stable")[:finalists]
    full = _inliers(phi[top], c[top], Y, uv, K, threshold_px)
    k = int(np.argmax(search_rank(full, uv, score)))
    phi_b, c_b = phi[top[k]], c[top[k]]
    R_wq = R_g @ rot_y(np.asarray(phi_b))
    C_wq = C_g + R_g @ c_b
    return invert(make_T(R_wq, C_wq)), full[k]
