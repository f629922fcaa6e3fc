"""Pose refinement by aligning the map's LiDAR reflectance with the image (mutual information).

Why: the learned matcher places a single image's camera near the retrieved submap viewpoint along its optical
axis (models/README.md, "Session 20"): its matches are too often in the wrong patch to say how far forward the
camera is. The map already holds a second, independent cue: each point's LiDAR reflectance, which follows the
surface's albedo (paint, signs, grass against asphalt) as the camera's grey level does. Projected from the right
pose, bright points land on bright pixels; from a pose a metre off they land on other surfaces, and the two stop
predicting each other. Their mutual information, over a few thousand points, peaks at the true pose (the idea
of Wolcott & Eustice, IROS 2014, and Pandey et al., AAAI 2012, for camera-LiDAR calibration).

The search: first along the camera's optical axis (where the matcher's pose is most wrong), each candidate on the
points it sees (IPR), then a coordinate ascent with shrinking steps, on the points the camera sees from where the
first search ended: along the six pose parameters and along pivots (a turn about a point ahead, which moves the
camera sideways as it turns, :func:`_ascent_directions`). Indoors the score has a broad ridge rather than a peak (walls
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
    # in (four held-out outdoor drives: single images 9.6 -> 53.7 % within 0.5 m / 5 deg; the node's loop of
    # tracking and fusion 33.7 -> 87.9 %); turn both off indoors, where they lose (single images 15 -> 7.5 %, the
    # node's loop 28.6 -> 14.1 % in session 21: walls and floors differ in grey and reflectance alike wherever the
    # camera stands). models/README.md, "Session 21" and "Session 22"
    after_retrieval: bool = True
    in_tracking: bool = True
    forward_range_m: float = 6.0  # the first search covers this much forward and back along the optical axis
    tracking_forward_range_m: float = 6.0  # ... and for a pose tracked from a prior
    forward_step_m: float = 0.5
    step_m: float = 0.2  # the coordinate ascent's first steps ...
    step_deg: float = 0.4
    min_step_m: float = 0.025  # ... halved until below these
    min_step_deg: float = 0.05
    # the ascent also turns about points this far ahead (yaw with a sideways move, pitch with a vertical one):
    # four outdoor drives' single images, from the same poses: 45.8 -> 53.7 % within 0.5 m / 5 deg, 20.8 -> 40.0 %
    # within 0.25 m / 2 deg
    # (models/README.md, "Session 22")
    pivot_depths_m: tuple[float, ...] = (10.0, 30.0)
    image_scale: float = 0.5  # the image is compared at this fraction of its size (blurred, grey)
    blur_px: float = 1.0  # Gaussian blur (pixels of the scaled image): smooths the score between poses
    bins: int = 16  # histogram bins per variable (equal-count bins)
    max_points: int = 30000  # map points used (evenly thinned)
    min_points: int = 300  # fewer points in view: no alignment (the result says why)
    # forward candidates seeing fewer than this share of the start's points drop out: fewer points fit by chance
    # (real KITTI single scans, whose near field is empty: at 0.3 the search left the true pose for one 3-5 m ahead)
    min_view_ratio: float = 0.75

    def __post_init__(self) -> None:
        depths = tuple(float(d) for d in self.pivot_depths_m)  # a list from YAML or ROS parameters
        if not all(np.isfinite(d) and d > 0 for d in depths):
            raise ValueError(f"alignment.pivot_depths_m must be positive, got {list(depths)}")
        object.__setattr__(self, "pivot_depths_m", depths)
        for name in ("forward_step_m", "step_m", "step_deg", "min_step_m", "min_step_deg", "image_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"alignment.{name} must be > 0, got {getattr(self, name)}")
        for name in ("forward_range_m", "tracking_forward_range_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"alignment.{name} must be >= 0, got {getattr(self, name)}")
        if not 2 <= self.bins <= 256:
            raise ValueError(f"alignment.bins must be in [2, 256], got {self.bins}")
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
    micrometres anywhere in a large map and halves the memory each evaluation streams. The grey level's bins are
    looked up, not computed: the blurred image is upsampled twice (bilinear) and binned once, so a pose costs one
    projection and one gather per point (the nearest lookup on the finer grid is within a quarter of a compared
    pixel of bilinear interpolation at the point).
    """

    UPSAMPLE = 2

    def __init__(self, grey: np.ndarray, camera: PinholeCamera, origin: np.ndarray, cfg: AlignmentConfig) -> None:
        self.origin, self.cfg = origin, cfg
        h, w = grey.shape
        fine = cv2.resize(grey, (w * self.UPSAMPLE, h * self.UPSAMPLE), interpolation=cv2.INTER_LINEAR)
        self.bins = np.zeros(fine.size, np.uint8)  # bins <= 256 (AlignmentConfig); counting beats searchsorted
        for edge in _equal_count_bins(grey.ravel(), cfg.bins):
            self.bins += fine.ravel() > edge
        self.camera = resize_camera(camera, w * self.UPSAMPLE, h * self.UPSAMPLE)
        self.evaluations = 0

    def pixels(self, T_map_cam: np.ndarray, pts_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of ``pts_t`` (3, N float32, relative to ``origin``) are in front of the camera and inside the
        image, and the flat indices of those into the fine bin image."""
        R, t = T_map_cam[:3, :3], T_map_cam[:3, 3] - self.origin
        cam = self.camera
        w, h = cam.width, cam.height
        if cam.has_distortion:
            pr = cam.project((R.T @ (pts_t.astype(np.float64) - t[:, None])).T)
            u, v = pr.uv[:, 0] + 0.5, pr.uv[:, 1] + 0.5  # + 0.5: the nearest pixel centre is the floor
            ok = pr.in_image & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            return ok, v[ok].astype(np.int32) * w + u[ok].astype(np.int32)
        # The common case (rectified images): homogeneous pixels from one 3x3 product, the image bounds tested
        # before the division (u < W w), and only the points in view divided.
        K = cam.K.copy()
        K[:2, 2] += 0.5
        M = K @ R.T
        uvw = M.astype(np.float32) @ pts_t
        uvw -= (M @ t).astype(np.float32)[:, None]
        u, v, z = uvw
        ok = z > 1e-6
        ok &= u >= 0
        ok &= v >= 0
        ok &= u < w * z
        ok &= v < h * z
        z = z[ok]
        iu = np.minimum((u[ok] / z).astype(np.int32), w - 1)  # u / z may round up to W at the edge
        iv = np.minimum((v[ok] / z).astype(np.int32), h - 1)
        return ok, iv * w + iu

    def score(self, T_map_cam: np.ndarray, pts_t: np.ndarray, refl_bins: np.ndarray) -> tuple[float, int]:
        """The MI at ``T_map_cam`` over the points ``pts_t`` (3, N; with their reflectance bins) in view, and how
        many they are (-inf when too few)."""
        self.evaluations += 1
        ok, idx = self.pixels(T_map_cam, pts_t)
        n = len(idx)
        if n < self.cfg.min_points:
            return -np.inf, n
        return mutual_information(refl_bins[ok], self.bins[idx], self.cfg.bins), n


def _ascent_directions(step_m: float, step_rad: float, pivot_depths_m: tuple[float, ...]) -> list[np.ndarray]:
    """The coordinate ascent's first moves (x, y, z metres, rotation vector radians; each tried both ways).

    The six axes, then for each pivot depth D a yaw and a pitch about the point D metres ahead on the optical axis:
    turning by a while moving sideways by -D a (yaw) or down by D a (pitch) keeps that point where it was in the
    image. Why: a pose off in yaw is also off sideways (PnP fits the near points), and the score rises only along
    the diagonal that keeps the scene in place; one axis at a time, every single step loses.
    """
    directions = [np.eye(6)[axis] * (step_m if axis < 3 else step_rad) for axis in range(6)]
    for depth in pivot_depths_m:
        directions.append(np.r_[-depth, 0.0, 0.0, 0.0, 1.0, 0.0] * step_rad)
        directions.append(np.r_[0.0, depth, 0.0, 1.0, 0.0, 0.0] * step_rad)
    return directions


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
    local_t = np.ascontiguousarray(local.T)  # (3, N): each coordinate contiguous for the scorer

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
    start_score, n_pts = scorer.score(start, local_t[:, seen[n_fwd]], refl_bins[seen[n_fwd]])
    k_best, best_score = n_fwd, start_score
    for k, (T, vis, n) in enumerate(zip(cands, seen, counts, strict=True)):
        # a camera inside or just in front of a wall sees few points, which a chance alignment fits best
        if k == n_fwd or n < cfg.min_view_ratio * base:
            continue
        s, n_seen = scorer.score(T, local_t[:, vis], refl_bins[vis])
        if s > best_score:
            k_best, best_score, n_pts = k, s, n_seen
    if not np.isfinite(best_score):
        return AlignmentResult(False, start, -np.inf, start_score, n_pts, scorer.evaluations, "too few points in view")

    # 2. Coordinate ascent over x, y, z, the rotations, and the pivots (module docstring), on what the camera sees
    # from there (the same points the winning candidate was scored on).
    best, view = cands[k_best], (local_t[:, seen[k_best]], refl_bins[seen[k_best]])
    directions = _ascent_directions(cfg.step_m, np.radians(cfg.step_deg), cfg.pivot_depths_m)
    scale = 1.0  # of the first moves: halved when none of them helps, until both steps are below their minimum
    while scale * cfg.step_m >= cfg.min_step_m or scale * cfg.step_deg >= cfg.min_step_deg:
        improved = False
        for direction in directions:
            for sign in (scale, -scale):
                T = _moved(best, sign * direction)
                s, n = scorer.score(T, *view)
                if s > best_score:
                    best, best_score, n_pts, improved = T, s, n, True
                    break
        if not improved:
            scale /= 2
    return AlignmentResult(True, best, float(best_score), float(start_score), n_pts, scorer.evaluations)
