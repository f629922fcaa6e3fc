"""Pose refinement by aligning the map's LiDAR reflectance with the image (mutual information).

Why: the learned matcher places a single image's camera near the retrieved submap viewpoint along its optical
axis (models/README.md, "Session 20"): its matches are too often in the wrong patch to say how far forward the
camera is. The map already holds a second, independent cue: each point's LiDAR reflectance, which follows the
surface's albedo (paint, signs, grass against asphalt) as the camera's grey level does. Projected from the right
pose, bright points land on bright pixels; from a pose a metre off they land on other surfaces, and the two stop
predicting each other. Their mutual information, over a few thousand points, peaks at the true pose (the idea
of Wolcott & Eustice, IROS 2014, and Pandey et al., AAAI 2012, for camera-LiDAR calibration).

The search: first along the camera's optical axis (where the matcher's pose is most wrong), each candidate on the
points it sees (IPR), then a coordinate ascent over the six pose parameters with shrinking steps, on the points
the camera sees from where the first search ended. Indoors the score has a broad ridge rather than a peak (walls
and floors differ in grey level and reflectance alike wherever the camera stands), so it is an outdoor tool.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import PinholeCamera, invert, make_T, rotvec_to_matrix
from .ipr import IPRConfig, visible_mask
from .model.preprocess import resize_camera

__all__ = ["AlignmentConfig", "AlignmentResult", "align_to_reflectance", "mutual_information"]


@dataclass(frozen=True)
class AlignmentConfig:
    """How the alignment searches (module docstring). Distances in metres, angles in degrees."""

    # Align single-image (global) localizations and tracked ones. On by default for the outdoor maps a car drives
    # in (four held-out outdoor drives: single images 9.6 -> 50 % within 0.5 m / 5 deg; the node's loop of tracking
    # and fusion 33.7 -> 87 %); turn both off indoors, where they lose (single images 13.8 -> 3.1 %, the node's
    # loop 28.6 -> 14.1 %: walls and floors differ in grey and reflectance alike wherever the camera stands).
    # models/README.md, "Session 21"
    after_retrieval: bool = True
    in_tracking: bool = True
    forward_range_m: float = 6.0  # the first search covers this much forward and back along the optical axis
    tracking_forward_range_m: float = 6.0  # ... and for a pose tracked from a prior
    forward_step_m: float = 0.5
    step_m: float = 0.2  # the coordinate ascent's first steps ...
    step_deg: float = 0.4
    min_step_m: float = 0.025  # ... halved until below these
    min_step_deg: float = 0.05
    image_scale: float = 0.5  # the image is compared at this fraction of its size (blurred, grey)
    blur_px: float = 1.0  # Gaussian blur (pixels of the scaled image): smooths the score between poses
    bins: int = 16  # histogram bins per variable (equal-count bins)
    max_points: int = 30000  # map points used (evenly thinned)
    min_points: int = 300  # fewer points in view: no alignment (the result says why)
    # forward candidates seeing fewer than this share of the start's points drop out: fewer points fit by chance
    # (real KITTI single scans, whose near field is empty: at 0.3 the search left the true pose for one 3-5 m ahead)
    min_view_ratio: float = 0.75

    def __post_init__(self) -> None:
        for name in ("forward_step_m", "step_m", "step_deg", "min_step_m", "min_step_deg", "image_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"alignment.{name} must be > 0, got {getattr(self, name)}")
        for name in ("forward_range_m", "tracking_forward_range_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"alignment.{name} must be >= 0, got {getattr(self, name)}")
        if self.bins < 2:
            raise ValueError(f"alignment.bins must be >= 2, got {self.bins}")
        if not 0 <= self.min_view_ratio <= 1:
            raise ValueError(f"alignment.min_view_ratio must be in [0, 1], got {self.min_view_ratio}")


@dataclass(frozen=True)
class AlignmentResult:
    """The aligned pose (``T_map_cam``; the start pose when ``ok`` is False), its score and the start's."""

    ok: bool
    T_map_cam: np.ndarray
    score: float
    start_score: float
    points: int  # points scored at the end
    evaluations: int  # poses scored
    message: str = ""


def mutual_information(a_bins: np.ndarray, b_bins: np.ndarray, bins: int) -> float:
    """Mutual information (nats) of two binned variables, less the Miller–Madow estimate of its bias.

    Why the correction: the plug-in estimate grows as samples get fewer (a few hundred points in 256 cells look
    dependent by chance), and candidates see different numbers of points.
    """
    n = len(a_bins)
    if n == 0:
        return -np.inf
    joint = np.bincount(a_bins * bins + b_bins, minlength=bins * bins).astype(np.float64) / n
    pa, pb = joint.reshape(bins, bins).sum(1), joint.reshape(bins, bins).sum(0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    cells = np.count_nonzero(joint) - np.count_nonzero(pa) - np.count_nonzero(pb) + 1
    return entropy(pa) + entropy(pb) - entropy(joint) - cells / (2 * n)


def _equal_count_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges (bins - 1 inner ones) that split ``values`` into equally full bins."""
    return np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])


class _Scorer:
    """Scores poses: the MI between the points' reflectance and the grey level where each pose projects them.

    Points are kept in float32 relative to ``origin`` (a point near the camera), which keeps float32 exact to
    micrometres anywhere in a large map and halves the memory each evaluation streams.
    """

    def __init__(self, grey: np.ndarray, camera: PinholeCamera, origin: np.ndarray, cfg: AlignmentConfig) -> None:
        self.grey, self.camera, self.origin, self.cfg = grey, camera, origin, cfg
        self.edges = _equal_count_bins(grey.ravel(), cfg.bins).astype(np.float32)
        self.evaluations = 0

    def project(self, T_map_cam: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (scaled image) of ``pts`` (float32, relative to ``origin``) and which are in front and inside."""
        R, t = T_map_cam[:3, :3], T_map_cam[:3, 3] - self.origin
        pc = pts @ R.astype(np.float32)  # = (R^T p^T)^T: the points in the camera frame, less R^T t
        pc -= (R.T @ t).astype(np.float32)
        h, w = self.grey.shape
        if self.camera.has_distortion:
            pr = self.camera.project(pc.astype(np.float64))
            uv, front = pr.uv.astype(np.float32), pr.in_image
        else:  # the common case (rectified images), without the general model's temporaries
            z = pc[:, 2]
            front = z > 1e-6
            inv_z = np.divide(1.0, z, out=np.zeros_like(z), where=front)
            K = self.camera.K.astype(np.float32)
            uv = np.empty((len(pc), 2), np.float32)
            uv[:, 0] = (K[0, 0] * pc[:, 0] + K[0, 1] * pc[:, 1]) * inv_z + K[0, 2]
            uv[:, 1] = K[1, 1] * pc[:, 1] * inv_z + K[1, 2]
        ok = front & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
        return uv, ok

    def score(self, T_map_cam: np.ndarray, pts: np.ndarray, refl_bins: np.ndarray) -> tuple[float, int]:
        """The MI at ``T_map_cam`` over the points ``pts`` (with their reflectance bins) in view, and how many
        they are (-inf when too few)."""
        self.evaluations += 1
        uv, ok = self.project(T_map_cam, pts)
        n = int(np.count_nonzero(ok))
        if n < self.cfg.min_points:
            return -np.inf, n
        grey = _bilinear(self.grey, uv[ok])  # the score changes smoothly with sub-pixel moves
        g_bins = np.searchsorted(self.edges, grey)
        return mutual_information(refl_bins[ok], g_bins, self.cfg.bins), n


def _bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """``img`` at pixels ``uv`` (M, 2), each inside ``[0, W-1] x [0, H-1]``, interpolated bilinearly."""
    h, w = img.shape
    x0 = np.minimum(uv[:, 0].astype(np.int64), w - 2)
    y0 = np.minimum(uv[:, 1].astype(np.int64), h - 2)
    fx, fy = uv[:, 0] - x0, uv[:, 1] - y0
    flat = img.ravel()
    i = y0 * w + x0
    top = flat[i] * (1 - fx) + flat[i + 1] * fx
    bottom = flat[i + w] * (1 - fx) + flat[i + w + 1] * fx
    return top * (1 - fy) + bottom * fy


def _moved(T_map_cam: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``T_map_cam`` moved by ``d`` = (x, y, z metres, rotation vector radians) in its own camera frame."""
    return T_map_cam @ make_T(rotvec_to_matrix(d[3:]), d[:3])


def align_to_reflectance(
    rgb: np.ndarray,
    camera: PinholeCamera,
    points: np.ndarray,
    reflectance: np.ndarray,
    T_map_cam: np.ndarray,
    config: AlignmentConfig | None = None,
    ipr: IPRConfig | None = None,
) -> AlignmentResult:
    """Refine ``T_map_cam`` so that the map points' ``reflectance`` best predicts the image's grey level.

    ``points`` (N, 3) map frame, near the camera (a submap); ``rgb`` (H, W, 3) or grey (H, W) as taken by
    ``camera``. The start pose is kept (``ok`` False, with a message) when too few points are in view.
    """
    cfg = config or AlignmentConfig()
    ipr = ipr or IPRConfig()
    start = np.asarray(T_map_cam, dtype=np.float64)
    img = np.asarray(rgb)
    if img.dtype not in (np.uint8, np.float32):
        img = img.astype(np.float32)
    w, h = max(round(camera.width * cfg.image_scale), 8), max(round(camera.height * cfg.image_scale), 8)
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)  # before the grey: 4x fewer
    grey = small.mean(axis=2) if small.ndim == 3 else small
    if cfg.blur_px > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), cfg.blur_px)
    cam = resize_camera(camera, w, h)
    pts = np.asarray(points, dtype=np.float64)
    refl = np.asarray(reflectance, dtype=np.float64)
    finite = np.isfinite(pts).all(1) & np.isfinite(refl)
    pts, refl = pts[finite], refl[finite]
    if len(pts) > cfg.max_points:
        keep = np.linspace(0, len(pts) - 1, cfg.max_points).astype(np.int64)
        pts, refl = pts[keep], refl[keep]
    if len(pts) < cfg.min_points:
        return AlignmentResult(False, start, -np.inf, -np.inf, len(pts), 0, f"{len(pts)} map points near the pose")
    refl_bins = np.searchsorted(_equal_count_bins(refl, cfg.bins), refl)
    scorer = _Scorer(grey.astype(np.float32), cam, start[:3, 3], cfg)
    local = (pts - start[:3, 3]).astype(np.float32)

    # 1. Along the optical axis, each candidate scored on what it sees (IPR for all candidates in one batch).
    n_fwd = int(np.floor(cfg.forward_range_m / cfg.forward_step_m + 1e-9))
    offsets = np.arange(-n_fwd, n_fwd + 1) * cfg.forward_step_m
    cands = np.stack([_moved(start, np.r_[0.0, 0.0, d, 0.0, 0.0, 0.0]) for d in offsets])
    shift = make_T(np.eye(3), -start[:3, 3])  # map -> the frame of ``local``
    seen = visible_mask(local, np.stack([invert(shift @ T) for T in cands]), cam, ipr)  # float32, like the map's
    counts = seen.sum(1)
    base = int(counts[n_fwd])
    if base < cfg.min_points:
        return AlignmentResult(False, start, -np.inf, -np.inf, base, 0, f"{base} map points in view")
    start_score, n_pts = scorer.score(start, local[seen[n_fwd]], refl_bins[seen[n_fwd]])
    k_best, best_score = n_fwd, start_score
    for k, (T, vis, n) in enumerate(zip(cands, seen, counts, strict=True)):
        # a camera inside or just in front of a wall sees few points, which a chance alignment fits best
        if k == n_fwd or n < cfg.min_view_ratio * base:
            continue
        s, n_seen = scorer.score(T, local[vis], refl_bins[vis])
        if s > best_score:
            k_best, best_score, n_pts = k, s, n_seen
    if not np.isfinite(best_score):
        return AlignmentResult(False, start, -np.inf, start_score, n_pts, scorer.evaluations, "too few points in view")

    # 2. Coordinate ascent over x, y, z, and the rotations, on what the camera sees from there (the same points
    # the winning candidate was scored on).
    best, view = cands[k_best], (local[seen[k_best]], refl_bins[seen[k_best]])
    step_t, step_r = cfg.step_m, np.radians(cfg.step_deg)
    while step_t >= cfg.min_step_m or step_r >= np.radians(cfg.min_step_deg):
        improved = False
        for axis in range(6):
            size = step_t if axis < 3 else step_r
            for sign in (1.0, -1.0):
                d = np.zeros(6)
                d[axis] = sign * size
                T = _moved(best, d)
                s, n = scorer.score(T, *view)
                if s > best_score:
                    best, best_score, n_pts, improved = T, s, n, True
                    break
        if not improved:
            step_t, step_r = step_t / 2, step_r / 2
    return AlignmentResult(True, best, float(best_score), float(start_score), n_pts, scorer.evaluations)
