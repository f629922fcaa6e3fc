"""Choosing between pose hypotheses of one image: which place, of several a single image was aligned at, it shows.

The reflectance alignment's score compares poses within one place, not between places (models/README.md,
"Session 29"). Two votes of the matcher tell places apart: the matches a pose reprojects near their pixels
(:func:`match_support`), and how likely the matcher's per-point patch distributions find the patches a pose
projects the points into (:class:`PatchLikelihood`). The second uses every classified point's whole distribution,
not only its most likely patch, which a weak matcher gets right for one point in ten. A third vote is the
hypotheses' own agreement (:func:`pose_agreement`): alignments from different starts that end at one pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .geometry import PinholeCamera, invert, rotvec_to_matrix, transform_points
from .model.config import ModelConfig
from .model.heads import MatchingHead, patch_index

__all__ = ["PatchLikelihood", "match_support", "pose_agreement", "rank_hypotheses", "turned_by", "turned_poses"]


def match_support(X: np.ndarray, px: np.ndarray, T_map_cam: np.ndarray, camera: PinholeCamera, radius: float) -> int:
    """How many 2D-3D matches (map points ``X``, image pixels ``px``) ``T_map_cam`` reprojects within ``radius``
    pixels: the matcher's vote for a pose, which tells places apart where the reflectance score cannot."""
    if len(X) == 0:
        return 0
    proj = camera.project(transform_points(invert(T_map_cam), X))
    err = np.linalg.norm(proj.uv - px, axis=1)
    return int(np.count_nonzero((proj.depth > 0) & (err <= radius)))


def pose_agreement(poses: list[np.ndarray], radius_m: float, max_deg: float) -> np.ndarray:
    """For each pose (4x4), how many of the others lie within ``radius_m`` and ``max_deg`` of it. Why: alignments
    from different starts (PnP's pose, retrieved viewpoints) that end at one place are independent votes for it; a
    look-alike place that wins on score is usually reached from one start only."""
    T = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    if len(T) == 0:
        return np.zeros(0, dtype=np.int64)
    near = np.linalg.norm(T[:, None, :3, 3] - T[None, :, :3, 3], axis=-1) <= radius_m
    # the angle between two rotations from the trace of R_a^T R_b: sum of the elementwise product
    cos = (np.einsum("aij,bij->ab", T[:, :3, :3], T[:, :3, :3]) - 1.0) / 2.0
    near &= cos >= math.cos(math.radians(max_deg))
    return near.sum(axis=1) - 1


def turned_by(T_map_cam: np.ndarray, angles_deg: np.ndarray | list[float]) -> np.ndarray:
    """(N, 4, 4): ``T_map_cam`` turned about its camera's own vertical (the optical frame's y axis, through the
    camera) by each signed angle (degrees). About the camera's axis, not the map's z: a KITTI-layout map's frame is a
    camera's, y down."""
    T = np.asarray(T_map_cam, dtype=np.float64)
    out = np.repeat(T[None], len(angles_deg), axis=0)
    for k, angle in enumerate(angles_deg):
        out[k, :3, :3] = T[:3, :3] @ rotvec_to_matrix(np.array([0.0, math.radians(float(angle)), 0.0]))
    return out


def turned_poses(T_map_cam: np.ndarray, angles_deg: tuple[float, ...]) -> list[np.ndarray]:
    """``T_map_cam`` turned (:func:`turned_by`) by minus then plus each angle (degrees): starts for a camera that
    turned away from every map viewpoint."""
    return list(turned_by(T_map_cam, [sign * angle for angle in angles_deg for sign in (-1.0, 1.0)]))


def rank_hypotheses(
    scores: list[float],
    support: list[int],
    weight: float,
    likelihood: list[float] | None = None,
    likelihood_weight: float = 0.0,
    points: list[int] | None = None,
    points_weight: float = 0.0,
    agreement: list[int] | np.ndarray | None = None,
    agreement_weight: float = 0.0,
    near: list[float] | np.ndarray | None = None,
    near_weight: float = 0.0,
    halves: np.ndarray | None = None,
    halves_weight: float = 0.0,
) -> np.ndarray:
    """The pose hypotheses' indices, best first by ``score + weight * log(1 + support) + likelihood_weight *
    likelihood + points_weight * log(points) + agreement_weight * agreement + near_weight * near + halves_weight *
    halves``: the alignment's score (mutual information, nats) decides between poses the matcher votes for alike,
    and a few times more matches, or a patch likelihood higher by a fraction of a nat a point, outweigh a small score
    lead. ``points``: the map points each aligned pose scored on; a pose that sees few (facing a wall, or off the map)
    fits them by chance as well as the right one fits many. ``agreement``: how many other hypotheses ended at the
    same pose (:func:`pose_agreement`). ``near``: the scores over the near points alone, one per pose or a row of
    them (one per depth, summed); ``halves``: a row of the scores over the points left and right of each pose's
    optical axis, summed (both: :func:`.reflectance_alignment.part_scores`). Where a pose sees too few points of a
    part (-inf) it counts as the lowest of the others' there (0 when none has one). Ties go to the first (PnP's own
    pose comes first)."""
    value = np.asarray(scores, dtype=np.float64) + weight * np.log1p(np.asarray(support, dtype=np.float64))
    if likelihood is not None:
        value = value + likelihood_weight * np.asarray(likelihood, dtype=np.float64)
    if points is not None and points_weight:
        value = value + points_weight * np.log(np.maximum(np.asarray(points, dtype=np.float64), 1.0))
    if agreement is not None and agreement_weight:
        value = value + agreement_weight * np.asarray(agreement, dtype=np.float64)
    for parts, part_weight in ((near, near_weight), (halves, halves_weight)):
        if parts is not None and part_weight:
            value = value + part_weight * _parts_sum(parts, len(value))
    return np.argsort(-value, kind="stable")


def _parts_sum(parts: list[float] | np.ndarray, n: int) -> np.ndarray:
    """Each of ``n`` poses' scores over parts of its view (a row each, or one per pose) summed, a pose's -inf at a
    part (too few points there) taken as the lowest of the others' there, 0 when none has one."""
    parts_ = np.asarray(parts, dtype=np.float64).reshape(n, -1)  # (poses, parts)
    known = np.isfinite(parts_)
    lowest = np.where(known, parts_, np.inf).min(axis=0)
    return np.where(known, parts_, np.where(np.isfinite(lowest), lowest, 0.0)).sum(axis=1)


@dataclass(frozen=True)
class PatchLikelihood:
    """The matcher's per-point patch distributions of one image, to score poses by.

    :meth:`mean_log_ratio` averages, over the points a pose projects into the image, the log of the probability
    mass each point's distribution (softmax over the image's patches, no prior) puts on the patch it lands in and
    that patch's eight neighbours, relative to a uniform distribution's: 0 where the matcher knows nothing,
    positive where it agrees. The 3x3 window forgives a patch of error (a pose a little off, a point near a patch
    border). The probabilities are computed once a frame (one matrix product); a pose then sums nine a point.
    """

    points: np.ndarray  # (L, 3) map frame
    prob: torch.Tensor  # (L, P) each point's probability of each patch (float32)
    config: ModelConfig

    @classmethod
    @torch.no_grad()
    def from_features(
        cls,
        head: MatchingHead,
        points: np.ndarray,
        features: torch.Tensor,
        patch_features: torch.Tensor,
        max_points: int,
    ) -> PatchLikelihood:
        """For ``points`` (with their ``features``) against the image's ``patch_features`` (D, rows, cols),
        evenly thinned to ``max_points``: a mean over a thousand points is as telling as over all of them, and
        the table costs (points x patches)."""
        if len(points) > max_points:
            kept = np.linspace(0, len(points) - 1, max_points).astype(np.int64)
            points, features = points[kept], features[torch.from_numpy(kept)]
        prob = torch.softmax(head.in_image_logits(features, patch_features), 1)
        return cls(np.asarray(points, dtype=np.float64), prob, head.config)

    def mean_log_ratio(self, T_map_cam: np.ndarray, cam_net: PinholeCamera) -> float:
        """The mean log ratio (nats a point) over the points ``T_map_cam`` projects into the network image
        (``cam_net``); 0 when it sees none of them (no evidence either way)."""
        if not cam_net.has_distortion:
            return float(self.mean_log_ratios(np.asarray(T_map_cam, dtype=np.float64)[None], cam_net)[0])
        # the distortion model lives in PinholeCamera.project
        grid_rows, grid_cols = self.config.grid_size
        proj = cam_net.project(transform_points(invert(np.asarray(T_map_cam, dtype=np.float64)), self.points))
        rows = np.flatnonzero(proj.in_image)
        if len(rows) == 0:
            return 0.0
        patches = patch_index(torch.from_numpy(proj.uv[rows].astype(np.float32)), self.config).numpy()
        mean = _mean_window_mass(self.prob.numpy(), rows, patches, grid_rows, grid_cols)
        return mean + math.log(grid_rows * grid_cols / 9)

    def mean_log_ratios(self, T_map_cams: np.ndarray, cam_net: PinholeCamera) -> np.ndarray:
        """:meth:`mean_log_ratio` of each of the (N, 4, 4) poses in one compiled pass: a search over the likelihood
        scores hundreds of poses, and each call from Python cost ~0.15 ms."""
        T = np.asarray(T_map_cams, dtype=np.float64).reshape(-1, 4, 4)
        if cam_net.has_distortion or len(T) == 0:
            return np.array([self.mean_log_ratio(pose, cam_net) for pose in T], dtype=np.float64)
        grid_rows, grid_cols = self.config.grid_size
        R = np.ascontiguousarray(np.transpose(T[:, :3, :3], (0, 2, 1)))  # camera from map: R^T, -R^T t
        t = np.ascontiguousarray(-np.einsum("nij,nj->ni", R, T[:, :3, 3]))
        sums = _mean_window_mass_many(
            self.points,
            R,
            t,
            np.asarray(cam_net.K, dtype=np.float64),
            float(cam_net.width),
            float(cam_net.height),
            float(self.config.patch_stride),
            grid_rows,
            grid_cols,
            self.prob.numpy(),
        )
        return np.where(np.isnan(sums), 0.0, sums + math.log(grid_rows * grid_cols / 9))


def compile_kernel() -> None:
    """Compile the patch likelihood's kernels now (numba; a second or two the first time on a host, far less from its
    on-disk cache), so that a node's first single image does not pay."""
    rows, cols, stride = 2, 3, 8.0
    K = np.array([[8.0, 0.0, 11.5], [0.0, 8.0, 7.5], [0.0, 0.0, 1.0]])
    R, t = np.eye(3)[None].copy(), np.zeros((1, 3))
    prob = np.full((1, rows * cols), 1.0 / (rows * cols), np.float32)
    _mean_window_mass_many(np.array([[0.0, 0.0, 5.0]]), R, t, K, 24.0, 16.0, stride, rows, cols, prob)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pinhole_patches(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    width: float,
    height: float,
    stride: float,
    grid_rows: int,
    grid_cols: int,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover (compiled)
    """The rows of ``points`` (map frame) that the pinhole camera at ``R``, ``t`` (camera from map) sees in its
    image, and the patch each lands in: ``PinholeCamera.project`` and ``patch_index``'s arithmetic (pixels rounded
    to float32 first), in one pass. Why: in numpy and torch it cost ~0.5 ms a pose, and a frame's hypotheses score
    about a dozen poses (one-off profile, session 35)."""
    n = points.shape[0]
    rows = np.empty(n, np.int64)
    patches = np.empty(n, np.int64)
    half, s = np.float32(0.5), np.float32(stride)
    k = 0
    for i in range(n):
        x, y, z = points[i, 0], points[i, 1], points[i, 2]
        zc = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2]
        if not zc > 1e-9:
            continue
        xn = (R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]) / zc
        yn = (R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]) / zc
        u = xn * K[0, 0] + K[0, 2] + K[0, 1] * yn
        v = yn * K[1, 1] + K[1, 2]
        if not (u >= -0.5 and u < width - 0.5 and v >= -0.5 and v < height - 0.5):
            continue
        col = min(max(np.floor((np.float32(u) + half) / s), 0), grid_cols - 1)
        row = min(max(np.floor((np.float32(v) + half) / s), 0), grid_rows - 1)
        rows[k] = i
        patches[k] = int(row) * grid_cols + int(col)
        k += 1
    return rows[:k], patches[:k]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mean_window_mass(
    prob: np.ndarray, rows: np.ndarray, patches: np.ndarray, grid_rows: int, grid_cols: int
) -> float:  # pragma: no cover (compiled)
    """The mean over ``rows`` of log(the probability mass of the 3x3 patches around each row's patch), from the
    (L, P) probabilities: :meth:`PatchLikelihood.mean_log_ratio`'s sum. Compiled: as ten torch operations on
    (n, 9) arrays it cost ~0.8 ms a pose, and a frame's hypotheses score ten poses (one-off profile, session 34).
    Probabilities rather than log-probabilities: nine sums and one log a point instead of nine exp() (0.2 ms a
    pose, session 35). A window whose mass underflows float32 counts as float32's smallest normal (log -87.3),
    which the model's unit-norm features (log-probabilities >= -48) never reach."""
    total = 0.0
    tiny = np.float64(np.finfo(np.float32).tiny)
    for k in range(rows.shape[0]):
        row = prob[rows[k]]
        r0, c0 = patches[k] // grid_cols, patches[k] % grid_cols
        mass = 0.0
        for r in range(max(r0 - 1, 0), min(r0 + 2, grid_rows)):
            for c in range(max(c0 - 1, 0), min(c0 + 2, grid_cols)):
                mass += np.float64(row[r * grid_cols + c])
        total += np.log(max(mass, tiny))
    return total / rows.shape[0]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mean_window_mass_many(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    width: float,
    height: float,
    stride: float,
    grid_rows: int,
    grid_cols: int,
    prob: np.ndarray,
) -> np.ndarray:  # pragma: no cover (compiled)
    """:func:`_mean_window_mass` at each pose (camera from map ``R[k]``, ``t[k]``) of the points
    :func:`_pinhole_patches` finds in its image; NaN where a pose sees none of them."""
    out = np.empty(R.shape[0], np.float64)
    for k in range(R.shape[0]):
        rows, patches = _pinhole_patches(points, R[k], t[k], K, width, height, stride, grid_rows, grid_cols)
        out[k] = np.nan if rows.shape[0] == 0 else _mean_window_mass(prob, rows, patches, grid_rows, grid_cols)
    return out
