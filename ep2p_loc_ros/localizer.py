"""The localization pipeline (ROS-free): image + intrinsics (+ optional prior) -> pose with covariance.

retrieval top-k (or the submaps around a prior pose) -> IPR at the submap's viewpoint (or the prior) ->
patch classification -> PnP on the patch centres -> pixel refinement of the matches near that pose -> LM on the
refined pixels. Each stage is timed; failures are statuses in
the result, never exceptions, so a node can publish "no pose" and say why.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from .covariance_calibration import CALIBRATION_FILE, CovarianceCalibration
from .errors import DataError
from .geometry import PinholeCamera, best_distinct, invert, moved_in_view, symmetric_offsets, transform_points
from .gravity import GravityPrior
from .ipr import IPRConfig, visible_mask
from .ipr import compile_kernel as compile_ipr
from .likelihood_search import LikelihoodSearch, search_by_likelihood
from .manhattan_headings import image_line_yaw, manhattan_turns, wall_yaw
from .map import LidarMap, load_map, nearest_submaps, top_k_by_descriptor
from .memory_reuse import keep_freed_memory
from .model.config import ModelConfig
from .model.heads import MatchingHead, patch_centers, patch_index, top_per_group
from .model.preprocess import prepare_image
from .pnp import PnPConfig, PoseEstimate, solve_pnp
from .pnp import compile_kernel as compile_lm
from .pose_confidence import CONFIDENCE_FILE, ConfidenceModel, signal_vector
from .pose_hypotheses import (
    PatchLikelihood,
    match_support,
    pose_agreement,
    rank_hypotheses,
    turned_by,
    turned_poses,
)
from .pose_hypotheses import compile_kernel as compile_likelihood
from .reflectance_alignment import (
    AlignmentConfig,
    AlignmentImage,
    AlignmentPoints,
    AlignmentResult,
    align_to_reflectance,
    best_alignment,
    compile_kernels,
    part_scores,
    prepare_alignment_image,
    prepare_alignment_points,
    reflectance_contrast,
    scores_at,
)
from .upright_ransac import compile_kernel as compile_upright
from .upright_ransac import occupied_cells, rot_y, yaw_about_camera_y

__all__ = ["LocalizationResult", "LocalizationStatus", "Localizer", "LocalizerConfig", "result_from_pnp"]

logger = logging.getLogger(__name__)

T_ = TypeVar("T_")


def _kept(cache: OrderedDict, key: Any, size: int, make: Callable[[], T_]) -> T_:
    """``cache[key]``, made by ``make`` when it is not there; the ``size`` most recently used entries are kept
    (0: none). The localizer's caches of per-submap work that frames repeat."""
    value = cache.get(key)
    if value is None:
        value = make()
        if size <= 0:
            return value
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return value


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, then restore the caller's count.

    Torch's thread count is process-wide: a Localizer inside a bigger program must not change it for the rest.
    Setting it is free when the count is already ``n`` (the usual case: one Localizer per process).
    """
    before = torch.get_num_threads()
    if n > 0 and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class LocalizerConfig:
    """Run-time parameters (one home: CLI, evaluation and the node all read this, e.g. from YAML)."""

    top_k: int = 3  # submaps tried from descriptor retrieval (best PnP wins)
    prior_top_k: int = 1  # submaps tried around a prior pose (tracking)
    max_prior_distance: float = 40.0  # m; a prior farther than this from every submap viewpoint is off the map
    min_confidence: float = 0.0  # patch probability below which a match is dropped (the per-patch cap thins instead)
    max_points: int = 4000  # visible points classified: one view, or the union of the top_k (evenly thinned: speed)
    max_matches: int = 4000  # most confident matches kept for PnP
    max_matches_per_patch: int = 10  # the most confident matches kept per image patch (0: no cap)
    prior_max_matches_per_patch: int = 3  # the same with a prior (tracking) and in guided rounds
    min_inlier_cells: int = 8  # PnP inliers must fall in at least this many 32x32 px image cells (else degenerate)
    use_ipr: bool = True  # ablation switch: match every submap point, visible or not
    encode_points_at_runtime: bool = False  # True: encode the guess view now, as in training (4x slower, as good)
    refine_pixels: bool = True  # ablation switch: patch centres instead of the pixel MLP
    # Refine only the pixels of the matches that reproject within refine_radius_px of the pose PnP finds on the
    # patch centres, then polish that pose on them (false: refine every match before PnP, ~5x the MLP work).
    refine_after_pnp: bool = True
    refine_radius_px: float = 16.0  # original-image pixels: twice the PnP threshold (a centre is <= 11 px off)
    # ... also after retrieval when the reflectance alignment follows. False: the alignment starts from the pose PnP
    # found on patch centres, which makes single images better (nine held-out outdoor drives 56.9 -> 61.3 % within
    # 0.5 m / 5 deg, 40.9 -> 47.6 % within 0.25 m / 2 deg, ~8 ms less) but the node's loop of fusion and tracking
    # worse (drive 906 locked onto a wrong pose: 88.3 -> 43.3 % within 0.5 m / 5 deg), so only for single images
    # (models/README.md, "Session 25")
    refine_before_global_alignment: bool = True
    prior_radius_px: float = 96.0  # with a prior, match within this radius of each point's prior pixel (0: off)
    # ... and within that window, favour patches near the prior pixel: a Gaussian prior whose spread is what a
    # prior this far off (metres, degrees: the odometry's uncertainty) moves a point at its depth (0 and 0: off;
    # with 1 m / 3 degrees, tracking from such priors went from 7 to 17-30 % within 0.5 m / 5 deg outdoors)
    prior_sigma_m: float = 1.0
    prior_sigma_deg: float = 3.0
    # After retrieval (pooled matching), a soft prior around the viewpoint of the submap each point comes from,
    # over the whole image (no window), shaped by how the camera may sit relative to that viewpoint, in the
    # viewpoint camera's axes: mostly forward or back along its optical axis (a viewpoint is up to half the submap
    # spacing along the path from the camera), a little sideways, up or down, or turned about the vertical. Such
    # an offset moves a point along its ray from the image centre, so the prior is long along that ray and narrow
    # across it (prior_cov_px). All five 0: off. Measured in models/README.md, "Soft geometric priors".
    viewpoint_sigma_forward_m: float = 3.0
    # ... and forward or back by this many of the map's submap spacings more (the median distance between
    # neighbouring viewpoints), in quadrature: a point's prior is centred on the first retrieved viewpoint that sees
    # it, and retrieval ranks the nearest viewpoint first only about a third of the time. 1.0 improves single
    # images (eight held-out drives: 45 -> 61 of 400 frames within 0.5 m / 5 deg, lower median error on 7), but
    # their errors then run one submap spacing along the path for many frames, and the node's fusion locked onto
    # such a pose on outdoor drive 900 (0 % within 0.5 m / 5 deg against 90 %): off by default (models/README.md,
    # "Session 19")
    viewpoint_sigma_forward_spacings: float = 0.0
    viewpoint_sigma_lateral_m: float = 0.5
    viewpoint_sigma_vertical_m: float = 0.2
    viewpoint_sigma_yaw_deg: float = 2.0
    guided_rounds: int = 0  # tracking: re-match around the pose found, each point near where it projects (0: off;
    # with PnP's search bounded around the prior they no longer pay: models/README.md)
    guided_radius_px: float = 48.0  # window radius (network-image pixels) of the first guided round; halved after
    global_guided_rounds: int = 0  # the same guided rounds after a global search (no prior); 0: off
    # After retrieval with the map's stored features: match the union of the top_k views once and run PnP from
    # each viewpoint on those matches (false: match and solve each submap on its own, top_k times the matching).
    pool_submaps: bool = True
    # ... what each retrieved submap's viewpoint sees (IPR there) and its points' viewpoint prior do not depend on
    # the image, so the views of this many submaps are kept for the next frames that retrieve them (0: none)
    viewpoint_cache: int = 64
    # PnP's upright search region around a prior or a pose being refined (tracking, guided rounds); after
    # retrieval it is pnp.search_max_distance_m / search_max_yaw_deg around the submap viewpoint instead.
    prior_search_distance_m: float = 3.0
    prior_search_yaw_deg: float = 10.0
    prior_search_score: str = "inliers"  # ... and how its winner is chosen there (pnp.search_score after retrieval)
    ipr: IPRConfig = field(default_factory=IPRConfig)
    pnp: PnPConfig = field(default_factory=PnPConfig)
    # the pose refined by aligning the map's LiDAR reflectance with the image (reflectance_alignment.py): after
    # retrieval it finds how far along its optical axis the camera is, which the matches leave open
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    threads: int = 2  # torch/onnxruntime intra-op threads
    # fix glibc's malloc thresholds so that each frame's temporaries reuse the last frame's memory instead of
    # faulting in fresh pages (process-wide; memory_reuse.py; tracking p50 78 -> 73 ms outdoors, session 24)
    keep_freed_memory: bool = True
    # Add the model's own error, measured on held-out drives (MODEL/covariance.json, `ep2p-loc
    # calibrate-covariance`), to PnP's covariance; false: PnP's alone, which is far too small for a weak matcher
    calibrated_covariance: bool = True
    # Give each aligned result the probability that it is right (MODEL/confidence.json, `ep2p-loc
    # calibrate-confidence`; pose_confidence.py); false: NaN
    confidence: bool = True

    def __post_init__(self) -> None:
        if not self.refine_radius_px > 0:
            raise ValueError(f"refine_radius_px must be > 0, got {self.refine_radius_px}")
        if self.viewpoint_cache < 0:
            raise ValueError(f"viewpoint_cache must be >= 0, got {self.viewpoint_cache}")
        for name in ("prior_sigma_m", "prior_sigma_deg", *self.viewpoint_sigmas()):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        # The tracking search is a PnPConfig with these bounds: build it once so a bad value fails at load.
        self.prior_pnp()

    def viewpoint_sigmas(self) -> dict[str, float]:
        """The viewpoint prior's spreads by field name (translation in the viewpoint camera's x, y, z; the forward
        spread in submap spacings; yaw)."""
        names = ("lateral_m", "vertical_m", "forward_m", "forward_spacings", "yaw_deg")
        return {f"viewpoint_sigma_{n}": getattr(self, f"viewpoint_sigma_{n}") for n in names}

    def prior_pnp(self) -> PnPConfig:
        """The PnP config used around a prior or a pose being refined (``prior_search_*`` replace the bounds)."""
        return replace(
            self.pnp,
            search_max_distance_m=self.prior_search_distance_m,
            search_max_yaw_deg=self.prior_search_yaw_deg,
            search_score=self.prior_search_score,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> LocalizerConfig:
        """Nested dict (YAML) -> config; unknown keys and wrong types are errors that name the key."""
        return _from_dict(cls, data or {}, source)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


def _to_dict(obj: Any) -> dict[str, Any]:
    return {f.name: (_to_dict(v) if is_dataclass(v := getattr(obj, f.name)) else v) for f in fields(obj)}


def _from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise DataError(f"{source}: unknown parameter(s) {unknown} (known: {sorted(known)})")
    defaults = cls()
    kwargs = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        key = f"{source}.{name}"
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, key)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise DataError(f"{key}: expected true/false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, (int, float, str)):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise DataError(f"{key}: expected {type(default).__name__}, got {value!r}")
            try:
                kwargs[name] = type(default)(value)
            except ValueError as exc:
                raise DataError(f"{key}: expected {type(default).__name__}, got {value!r}") from exc
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: {exc}") from exc


class LocalizationStatus(str, Enum):
    OK = "ok"
    BAD_INPUT = "bad_input"  # image/intrinsics unusable
    NO_SUBMAP = "no_submap"  # the map has nothing near the prior / no descriptors to retrieve with
    NO_MATCHES = "no_matches"  # no visible points, or none matched confidently
    PNP_FAILED = "pnp_failed"  # PnP found no reliable pose (see message)


@dataclass(frozen=True)
class LocalizationResult:
    status: LocalizationStatus
    message: str
    T_map_cam: np.ndarray  # (4, 4); NaN unless ok
    covariance: np.ndarray  # (6, 6) ROS order x, y, z, roll, pitch, yaw (see pnp.py); NaN unless ok
    num_matches: int = 0
    num_inliers: int = 0
    submap_id: int = -1
    retrieved: tuple[int, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    matched_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (K, 3) map frame
    matched_pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (K, 2) image pixels
    inlier_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (K,)
    # the pose was refined by the reflectance alignment (the matches' inliers are then PnP's, at its own pose)
    aligned: bool = False
    alignment_score: float = math.nan  # ... the alignment's score where it ended (mutual information, nats)
    support: float = math.nan  # share of the matches the final pose reprojects within alignment.support_radius_px
    # probability that the pose is within 0.5 m / 5 deg of the truth (pose_confidence.py; MODEL/confidence.json);
    # NaN without an alignment or a fit for this map's environment
    confidence: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status is LocalizationStatus.OK

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0


def _failure(status: LocalizationStatus, message: str, **kw: Any) -> LocalizationResult:
    return LocalizationResult(status, message, np.full((4, 4), np.nan), np.full((6, 6), np.nan), **kw)


def _at_alignment(res: LocalizationResult, al: AlignmentResult, **changes: Any) -> LocalizationResult:
    """``res`` at the pose the alignment ``al`` ended at, with its score (and ``changes``)."""
    return replace(res, T_map_cam=al.T_map_cam, aligned=True, alignment_score=al.score, **changes)


def result_from_pnp(
    est: PoseEstimate,
    points: np.ndarray,
    pixels: np.ndarray,
    timings_ms: dict[str, float],
    min_inlier_cells: int = 0,
    **kw: Any,
) -> LocalizationResult:
    """The result of a PnP on matched ``points`` / ``pixels``: OK, or PNP_FAILED (PnP's status, or inliers so
    concentrated in the image that the pose is degenerate: fewer than ``min_inlier_cells`` 32x32 px cells)."""
    common = dict(
        num_matches=len(points),
        num_inliers=est.num_inliers,
        timings_ms=timings_ms,
        matched_points=points,
        matched_pixels=pixels,
        inlier_mask=est.inlier_mask,
        **kw,
    )
    if not est.ok:
        return _failure(LocalizationStatus.PNP_FAILED, f"PnP: {est.status.value}: {est.message}", **common)
    cells = int(occupied_cells(est.inlier_mask[None], pixels)[0])
    if cells < min_inlier_cells:
        # Matches collapsed onto a few look-alike patches: PnP then "explains" them with a camera far away.
        return _failure(
            LocalizationStatus.PNP_FAILED,
            f"PnP inliers fall in {cells} image cells (< {min_inlier_cells}): degenerate",
            **common,
        )
    return LocalizationResult(LocalizationStatus.OK, "ok", est.T_world_cam, est.covariance, **common)


def _cap_per_patch(px_net: torch.Tensor, conf: torch.Tensor, mc: ModelConfig, cap: int) -> torch.Tensor:
    """Indices of the ``cap`` most confident matches in each patch, most confident first.

    Why: a weak matcher sends many points to the same few look-alike patches; those piles dominate RANSAC's
    consensus (a camera far away "explains" them all). One or a few matches per patch keeps the spread ones.
    The model's head already caps before refining; this applies the same rule to any head's pixels.
    """
    return top_per_group(patch_index(px_net, mc), conf, cap)


def _better(est: PoseEstimate, best: tuple[PoseEstimate, ...] | None) -> bool:
    """Whether ``est`` beats the best so far: a pose over a failure, then more inliers."""
    return best is None or (est.ok, est.num_inliers) > (best[0].ok, best[0].num_inliers)


def _to_image_pixels(px_net: torch.Tensor, camera: PinholeCamera, cam_net: PinholeCamera) -> np.ndarray:
    """Network-image pixels -> original-image pixels (the inverse of the per-axis resize)."""
    sx, sy = cam_net.width / camera.width, cam_net.height / camera.height
    return (px_net.numpy().astype(np.float64) + 0.5) / [sx, sy] - 0.5


def prior_sigma_px(depth: np.ndarray, focal_px: float, sigma_m: float, sigma_deg: float) -> np.ndarray:
    """How far (pixels, one standard deviation) a prior ``sigma_m`` / ``sigma_deg`` off moves points at ``depth``.

    Why depth: a translation error moves near points by many pixels and far ones hardly at all, a rotation error
    moves all alike; a fixed window is either too tight for the near points or too loose for the far ones.
    """
    z = np.clip(np.asarray(depth, dtype=np.float64), 0.5, None)
    return np.hypot(focal_px * sigma_m / z, focal_px * np.tan(np.radians(sigma_deg))).astype(np.float32)


def prior_cov_px(
    in_guess: np.ndarray, camera: PinholeCamera, sigma_xyz_m: np.ndarray, sigma_rot_deg: np.ndarray
) -> np.ndarray:
    """(M, 2, 2) covariance (pixels²) of where points ``in_guess`` (M, 3; guess camera frame) land when the camera
    sits off the guess by independent errors ``sigma_xyz_m`` (x right, y down, z forward) and ``sigma_rot_deg``
    (about x, y, z: pitch, yaw, roll), to first order.

    Why not one radius per point (:func:`prior_sigma_px`): a camera forward or back along its optical axis moves
    every point along its ray from the image centre, by r / z per metre (r its distance from the centre, z its
    depth), and hardly across it. After retrieval that is most of the uncertainty (the viewpoint lies on the path,
    metres ahead or behind), so a round prior wide enough for it is far too loose sideways.
    """
    p = np.asarray(in_guess, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    z = np.clip(p[:, 2], 0.5, None)
    zero = np.zeros_like(z)
    # d(u, v) / d(point), and d(point) / d(camera rotation): a point p moves by p x w when the camera turns by w
    jp = np.stack(
        [
            np.stack([camera.fx / z, zero, -camera.fx * x / z**2], 1),
            np.stack([zero, camera.fy / z, -camera.fy * y / z**2], 1),
        ],
        1,
    )  # (M, 2, 3)
    turn = np.stack([np.stack([zero, -z, y], 1), np.stack([z, zero, -x], 1), np.stack([-y, x, zero], 1)], 1)
    jr = np.matmul(jp, turn)  # d(u, v) / d(camera rotation)
    var_t = np.asarray(sigma_xyz_m, np.float64) ** 2
    var_r = np.radians(np.asarray(sigma_rot_deg, np.float64)) ** 2
    cov = np.matmul(jp * var_t, jp.transpose(0, 2, 1)) + np.matmul(jr * var_r, jr.transpose(0, 2, 1))
    return cov.astype(np.float32)


def _guide(
    pts: np.ndarray, T_guess_map: np.ndarray, cam_net: PinholeCamera, sigma_m: float, sigma_deg: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Where the guess camera projects each point (network pixels) and, when a sigma is set, the soft prior's
    spread there (:func:`prior_sigma_px`; None when both sigmas are 0)."""
    in_guess = transform_points(T_guess_map, pts)
    expected = cam_net.project(in_guess).uv.astype(np.float32)
    if not (sigma_m > 0 or sigma_deg > 0):
        return expected, None
    return expected, prior_sigma_px(in_guess[:, 2], cam_net.fx, sigma_m, sigma_deg)


def _search_guess(guess: np.ndarray, T_map_viewpoint: np.ndarray) -> np.ndarray:
    """Where PnP's upright search starts: the guess's position and heading, the submap viewpoint's pitch and roll.

    Why: the search keeps the guess camera's tilt and only turns it about its vertical axis. A tracking prior (or
    a pose from odometry) may be tilted by a few degrees, which moves every pixel by tens of pixels; the viewpoint
    is a camera of the same rig on the same ground a few metres away, tilted like the camera being localized.
    """
    R_vp = np.asarray(T_map_viewpoint, dtype=np.float64)[:3, :3]
    out = np.array(guess, dtype=np.float64)
    out[:3, :3] = R_vp @ rot_y(yaw_about_camera_y(R_vp, out[:3, :3]))
    return out


@dataclass(frozen=True)
class _ViewpointView:
    """What a submap's viewpoint sees (IPR at the viewpoint, thinned to ``max_points``) and, when the viewpoint
    prior is on, where the viewpoint projects each of those points and the prior's spread there. None of it
    depends on the image, only on the submap, the camera and the config, so it is kept for later frames."""

    pts: np.ndarray  # (V, 3) map frame, float64
    rows: np.ndarray  # (V,) map rows (sorted)
    expected: np.ndarray | None  # (V, 2) network pixels
    cov: np.ndarray | None  # (V, 2, 2) network pixels²


def viewpoint_spacing(T_map_viewpoint: np.ndarray) -> float:
    """The map's submap spacing: the median distance (m) from each viewpoint to its nearest neighbour; 0 for a map
    of one submap. Measured from the viewpoints, so it holds for a map from any builder."""
    from scipy.spatial import cKDTree

    centres = np.asarray(T_map_viewpoint, dtype=np.float64).reshape(-1, 4, 4)[:, :3, 3]
    if len(centres) < 2:
        return 0.0
    dist, _ = cKDTree(centres).query(centres, k=2)
    return float(np.median(dist[:, 1]))


@dataclass(frozen=True)
class _Matches:
    """2D-3D matches of one matching pass: map points, their original-image pixels and confidences; with the
    matched points' features and network-image pixels, for refining the pixels later (``refined``: done)."""

    X: np.ndarray  # (K, 3) map frame, float64
    px: np.ndarray  # (K, 2) original-image pixels
    conf: np.ndarray  # (K,)
    feats: torch.Tensor  # (K, D) point features
    px_net: torch.Tensor  # (K, 2) network-image pixels
    refined: bool
    classified: tuple[np.ndarray, torch.Tensor] | None = None  # every point classified (map frame) and its features


class _HypothesisChoice:
    """The choice between one single image's coarse hypotheses (:meth:`Localizer._align_hypotheses`): rank them
    (:func:`rank_hypotheses`), finish the best ``hypothesis_finish`` and keep the best of those. Each hypothesis's
    part scores and finished pose are kept by its place in the list, so a second choice over the same list grown
    by more starts (the turned ones) redoes none of them; so are its matches' support and patch likelihood."""

    def __init__(
        self,
        loc: Localizer,
        cfg: AlignmentConfig,
        contrast: bool,
        rgb: np.ndarray,
        image: AlignmentImage,
        m: _Matches,
        camera: PinholeCamera,
        cam_net: PinholeCamera,
        table: PatchLikelihood | None,
        first: AlignmentResult | None,
        first_support: int,
    ) -> None:
        self.loc, self.cfg, self.contrast, self.rgb, self.image = loc, cfg, contrast, rgb, image
        self.m, self.camera, self.cam_net, self.table = m, camera, cam_net, table
        self.first, self.first_support = first, first_support  # PnP's pose aligned in full (finished already)
        self.radius = loc._support_radius(camera, cam_net)
        coarse = cfg.hypothesis_coarse
        self.finish = replace(
            cfg,
            forward_range_m=0.0,
            step_m=min(cfg.step_m, coarse / 2 * cfg.min_step_m),
            step_deg=min(cfg.step_deg, coarse / 2 * cfg.min_step_deg),
        )
        self.support: list[int] = []  # each hypothesis's matches' support, in the order of the list given ...
        self.likelihood: list[float] = []  # ... its patch likelihood, where weighed ...
        self.parts: list[np.ndarray] = []  # ... and its part scores
        self.finished: dict[int, AlignmentResult] = {}  # ... and its finished pose, once it was among the best

    def _votes(self, poses: list[AlignmentResult]) -> tuple[list[int], list[float] | None]:
        """Each pose's matches' support and, where it is weighed, its patch likelihood (else None)."""
        m, table = self.m, self.table
        support = [
            self.first_support if al is self.first else match_support(m.X, m.px, al.T_map_cam, self.camera, self.radius)
            for al in poses
        ]
        if table is None or self.cfg.likelihood_weight <= 0:
            return support, None
        return support, table.mean_log_ratios(np.array([al.T_map_cam for al in poses]), self.cam_net).tolist()

    def _ranked(
        self,
        poses: list[AlignmentResult],
        votes: tuple[list[int], list[float] | None],
        agree: np.ndarray,
        parts: np.ndarray | None,
        rescue: bool,
    ) -> np.ndarray:
        """The hypotheses' order, best first, given their :meth:`_votes`; ``rescue``: with the rescue's weights of
        the matches' support and the hypotheses' agreement (``AlignmentConfig.rescue_support_weight``)."""
        cfg = self.cfg
        support, likelihood = votes
        likelihood = likelihood if len(poses) > 1 else None
        scores, points = [al.score for al in poses], [al.points for al in poses]
        support_weight = cfg.rescue_support_weight if rescue else cfg.support_weight
        agreement_weight = cfg.rescue_agreement_weight if rescue else cfg.agreement_weight
        weights = support_weight, likelihood, cfg.likelihood_weight, points, cfg.points_weight
        near = halves = None
        if parts is not None:  # (the near depths' scores, then the two halves')
            near, halves = parts[:, : len(cfg.near_m)], parts[:, len(cfg.near_m) :]
        weights += (agree, agreement_weight, near, cfg.near_weight, halves, cfg.halves_weight)
        return rank_hypotheses(scores, support, *weights)  # (best first)

    def best(self, ok: list[AlignmentResult], rescue: bool = False) -> AlignmentResult:
        """The finished pose chosen among the coarse hypotheses ``ok`` (those whose alignment ran); ``rescue``: the
        choice made again with the rescue's starts among them (:meth:`_ranked`)."""
        cfg, loc = self.cfg, self.loc
        # how many other starts' alignments ended at each coarse pose, and its scores over parts of what it sees
        # (the points within each near depth, left and right of its axis) on the submap nearest it, prepared as
        # its finish takes it (a finished pose keeps its coarse ones)
        agree = pose_agreement([al.T_map_cam for al in ok], cfg.agreement_radius_m, cfg.agreement_deg)
        parts = None
        if (cfg.near_weight > 0 or cfg.halves_weight > 0) and len(ok) > 1:
            jobs = [  # (side by side, the points prepared here, in one thread)
                functools.partial(
                    part_scores,
                    self.image,
                    loc._alignment_points(al.T_map_cam, None, self.contrast, self.finish),
                    al.T_map_cam,
                    self.finish,
                    loc.config.ipr,
                    cfg.near_m,
                )
                for al in ok[len(self.parts) :]
            ]
            self.parts += loc._side_by_side(cfg.threads, jobs)
            parts = np.array(self.parts[: len(ok)])
        # the best hypothesis_finish coarse ones get the fine steps and the refine round(s) from where they ended
        support, likelihood = self._votes(ok[len(self.support) :])
        self.support += support
        self.likelihood += likelihood or []
        votes = self.support[: len(ok)], None if likelihood is None else self.likelihood[: len(ok)]
        order = self._ranked(ok, votes, agree, parts, rescue)[: cfg.hypothesis_finish]
        todo = [int(i) for i in order if int(i) not in self.finished and ok[i] is not self.first]
        jobs = [  # (the points prepared here, in one thread)
            functools.partial(
                loc._align_on,
                ok[i].T_map_cam,
                self.rgb,
                self.camera,
                self.finish,
                self.contrast,
                loc._alignment_points(ok[i].T_map_cam, None, self.contrast, self.finish),
                self.image,
            )
            for i in todo
        ]
        for i, fin in zip(todo, loc._side_by_side(cfg.threads, jobs), strict=True):
            self.finished[i] = fin if fin.ok else ok[i]
        finished = [ok[i] if ok[i] is self.first else self.finished[int(i)] for i in order]
        if len(finished) > 1:
            parts_of = None if parts is None else parts[order]
            ranked = self._ranked(finished, self._votes(finished), agree[order], parts_of, rescue)
            finished = [finished[int(ranked[0])]]
        return finished[0]


class Localizer:
    """Localizes images in one map with one model. Not thread-safe: one call at a time."""

    def __init__(
        self,
        lidar_map: LidarMap,
        image_session: Any,
        head: MatchingHead,
        model_config: ModelConfig,
        config: LocalizerConfig | None = None,
        point_encoder: torch.nn.Module | None = None,
        calibration: CovarianceCalibration | None = None,
        confidence_model: ConfidenceModel | None = None,
    ) -> None:
        self.map = lidar_map
        self.point_encoder = point_encoder.eval() if point_encoder is not None else None
        self.session = image_session
        self.head = head.eval()
        self.model_config = model_config
        self.config = config or LocalizerConfig()
        # used only when config.calibrated_covariance is on (from_paths loads it from the model directory)
        self.calibration = calibration
        self.confidence_model = confidence_model  # each aligned result's confidence (from_paths: MODEL/confidence.json)
        self.confidence_source = "on" if confidence_model is not None else "off"  # (from_paths names the file)
        # what the published covariance is, for logs and diagnostics (from_paths names the file)
        on = calibration is not None and self.config.calibrated_covariance
        self.covariance_source = "PnP + calibrated model error" if on else "PnP alone"
        self.last_descriptor: np.ndarray | None = None  # global descriptor of the last image (for evaluation)
        # submap views at their viewpoints, most recently used last (config.viewpoint_cache of them)
        self._views: OrderedDict[tuple[Any, ...], _ViewpointView] = OrderedDict()
        self.viewpoint_spacing = viewpoint_spacing(lidar_map.T_map_viewpoint)
        if self.config.keep_freed_memory and not keep_freed_memory():
            logger.info("keep_freed_memory: not glibc, malloc left as it is")
        compiled = (compile_ipr, compile_upright, compile_lm, compile_likelihood)
        for compile_kernel in compiled:  # at configure, not on the first frame
            compile_kernel()
        # the reflectance alignment runs on maps of the environments it is configured for (all by default)
        align = self.config.alignment
        self.map_environment = str(lidar_map.params.get("environment", "unknown"))
        self.align_here = self.map_environment in align.environments
        contrast = self.map_environment in align.contrast_environments
        # single images (no prior) aligned from several hypotheses here (AlignmentConfig.retrieved_starts)
        self.single_image_hypotheses = align.hypotheses_on(self.map_environment)
        # an IMU's gravity, given to localize, reaches the alignment here (indoors it loses: gravity_environments)
        self.takes_gravity = self.map_environment in align.gravity_environments
        # how poses are refined to the map's reflectance here (the node says it at configure)
        self.alignment_mode = "off"
        # (submap, neighbours) -> its reflectance contrast, most recently used last
        self._contrast: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._walls: OrderedDict[int, float] = OrderedDict()  # each submap's wall direction from its viewpoint
        # (submap, contrast, max_points, bins) -> its points prepared for the alignment, most recently used last
        self._prepared_points: OrderedDict[tuple[int, bool, int, int], AlignmentPoints] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None  # a single image's hypotheses aligned side by side
        self._pool_size = 0
        if align.after_retrieval or align.in_tracking:
            if self.align_here:
                compile_kernels()
                self.alignment_mode = "local contrast" if contrast else "levels"
                if contrast:
                    logger.info(
                        "reflectance alignment by local contrast: the map is %s, in localizer.alignment."
                        "contrast_environments",
                        self.map_environment,
                    )
            else:
                logger.info(
                    "reflectance alignment off: the map is %s, localizer.alignment.environments is %s",
                    self.map_environment,
                    list(align.environments),
                )
        if lidar_map.feature_dim != model_config.feature_dim:
            where = lidar_map.path or "map"
            raise DataError(
                f"{where}: point features have {lidar_map.feature_dim} dims, the model needs "
                f"{model_config.feature_dim}; build the map with this model (ep2p-loc build-map --model)"
            )

    @classmethod
    def from_paths(
        cls, map_dir: str | Path, model_dir: str | Path, config: LocalizerConfig | None = None, providers: str = "auto"
    ) -> Localizer:
        """Load and validate the map and the model; errors name the file and the fault."""
        from .model.network import ONNX_FILE, WEIGHTS_FILE, load_network, sha256_file, verify_model_file
        from .runtime import ImageEncoderSession

        config = config or LocalizerConfig()
        net, _ = load_network(model_dir)
        # No spinning: onnxruntime's threads would busy-wait on the cores that IPR and matching (torch) use next;
        # on 2 cores that doubled those stages (bench/eval_model.py: p50 90 -> 65 ms without it).
        session = ImageEncoderSession(
            verify_model_file(model_dir, ONNX_FILE),
            net.config,
            providers=providers,
            intra_op_threads=config.threads,
            allow_spinning=False,
        )
        calibration = None
        cal_path = Path(model_dir) / CALIBRATION_FILE
        if config.calibrated_covariance and cal_path.exists():
            weights_sha = sha256_file(verify_model_file(model_dir, WEIGHTS_FILE))
            calibration = CovarianceCalibration.load(cal_path, weights_sha)
        elif config.calibrated_covariance:
            logger.warning(
                "%s: no %s, so poses carry PnP's covariance alone, which a weak matcher makes far too small; "
                "run `ep2p-loc calibrate-covariance` on held-out drives",
                model_dir,
                CALIBRATION_FILE,
            )
        confidence = None
        conf_path = Path(model_dir) / CONFIDENCE_FILE
        if config.confidence and conf_path.exists():
            confidence = ConfidenceModel.load(conf_path, sha256_file(verify_model_file(model_dir, WEIGHTS_FILE)))
        elif config.confidence:
            logger.info(
                "%s: no %s, so results carry no confidence (ep2p-loc calibrate-confidence)", model_dir, CONFIDENCE_FILE
            )
        loc = cls(
            load_map(map_dir),
            session,
            net.head,
            net.config,
            config,
            point_encoder=net.point_encoder,
            calibration=calibration,
            confidence_model=confidence,
        )
        if confidence is not None:
            fitted = sorted(confidence.fits.get(loc.map_environment, {}))
            what = ", ".join(fitted) if fitted else "nothing"
            loc.confidence_source = f"{conf_path} ({what} fitted for {loc.map_environment} maps)"
        elif config.confidence:
            loc.confidence_source = f"off (no {conf_path})"
        if calibration is not None:
            own = sorted(calibration.environments.get(loc.map_environment, {}))
            mine = f"; {', '.join(own)} calibrated for {loc.map_environment} maps" if own else ""
            loc.covariance_source += f" ({cal_path}{mine})"
        elif config.calibrated_covariance:
            loc.covariance_source += f" (no {cal_path})"
        return loc

    def localize(
        self,
        rgb: np.ndarray,
        camera: PinholeCamera,
        T_map_cam_prior: np.ndarray | None = None,
        source: str = "image",
        gravity: GravityPrior | None = None,
    ) -> LocalizationResult:
        """Localize one RGB image (H, W, 3) taken by ``camera``; with ``T_map_cam_prior``, track from that pose;
        with ``gravity`` (an IMU's, at the image's time; the map's z up), the alignment keeps near that tilt."""
        with torch_threads(self.config.threads):
            return self._localize(rgb, camera, T_map_cam_prior, source, gravity)

    def _localize(
        self,
        rgb: np.ndarray,
        camera: PinholeCamera,
        T_map_cam_prior: np.ndarray | None,
        source: str,
        gravity: GravityPrior | None = None,
    ) -> LocalizationResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            image, cam_net = prepare_image(rgb, camera, self.model_config, source)
        except DataError as exc:
            return _failure(LocalizationStatus.BAD_INPUT, str(exc))
        t1 = time.perf_counter()
        timings["preprocess"] = (t1 - t0) * 1e3
        patch_np, desc = self.session.run(image)
        patch = torch.from_numpy(np.ascontiguousarray(patch_np[0]))
        self.last_descriptor = np.asarray(desc[0], dtype=np.float32)
        t2 = time.perf_counter()
        timings["image_encoder"] = (t2 - t1) * 1e3

        cfg = self.config
        if T_map_cam_prior is not None:
            prior = np.asarray(T_map_cam_prior, dtype=np.float64)
            if prior.shape != (4, 4) or not np.isfinite(prior).all():
                return _failure(LocalizationStatus.BAD_INPUT, "prior pose must be a finite 4x4 matrix")
            ids, dist = nearest_submaps(self.map, prior, cfg.prior_top_k)
            if len(dist) and dist[0] > cfg.max_prior_distance:
                return _failure(
                    LocalizationStatus.NO_SUBMAP,
                    f"prior pose is outside the map: nearest submap viewpoint {dist[0]:.1f} m away "
                    f"(> max_prior_distance {cfg.max_prior_distance} m)",
                    timings_ms=timings,
                )
            guesses = [prior] * len(ids)
        else:
            if self.map.descriptor_dim == 0:
                return _failure(LocalizationStatus.NO_SUBMAP, "map has no global descriptors and no prior was given")
            ids, _ = top_k_by_descriptor(self.map, desc[0], cfg.top_k)
            guesses = [np.asarray(self.map.T_map_viewpoint[i], dtype=np.float64) for i in ids]
        t3 = time.perf_counter()
        timings["retrieval"] = (t3 - t2) * 1e3
        if len(ids) == 0:
            return _failure(LocalizationStatus.NO_SUBMAP, "map has no submaps", timings_ms=timings)

        best: tuple[PoseEstimate, int, _Matches] | None = None
        stage = {"ipr": 0.0, "matching": 0.0, "pnp": 0.0}
        first_radius = cfg.prior_radius_px if T_map_cam_prior is not None and cfg.prior_radius_px > 0 else None
        encoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # run-time point features, once per submap
        pooled = cfg.pool_submaps and T_map_cam_prior is None and not cfg.encode_points_at_runtime
        near = T_map_cam_prior is not None
        if pooled:
            best = self._solve_pooled([int(sid) for sid in ids], guesses, camera, cam_net, patch, stage)
        else:
            for sid, guess in zip(ids, guesses, strict=True):
                sub = self.map.submap(int(sid), features=False)
                view = self._solve_view(
                    sub, guess, camera, cam_net, patch, stage, first_radius, encoded, near, soft_prior=near
                )
                if view is not None and _better(view[0], best):
                    best = (view[0], int(sid), view[1])
        # Guided rounds (tracking): match again from the pose just found, each point only against the patches
        # near where that pose projects it. Look-alike patches elsewhere in the image can no longer win; each
        # round can only move the pose locally. After a global search they run only if ``global_guided_rounds``
        # says so (models/README.md has what they measured there).
        for r in range(cfg.guided_rounds if near else cfg.global_guided_rounds):
            if best is None or not best[0].ok:
                break
            radius = cfg.guided_radius_px / 2**r
            sub = self.map.submap(best[1], features=False)
            view = self._solve_view(sub, best[0].T_world_cam, camera, cam_net, patch, stage, radius, encoded)
            if view is None or not view[0].ok:
                break
            best = (view[0], best[1], view[1])
        align = self.align_here and (cfg.alignment.in_tracking if near else cfg.alignment.after_retrieval)
        if best is not None and (near or not align or cfg.refine_before_global_alignment):
            est, m = self._polish(best[0], best[2], patch, camera, cam_net, stage, near)
            best = (est, best[1], m)
        timings.update(stage)
        timings["total"] = (time.perf_counter() - t0) * 1e3
        retrieved = tuple(int(i) for i in ids)
        if best is None or len(best[2].X) == 0:
            return _failure(
                LocalizationStatus.NO_MATCHES,
                "no visible map point was matched",
                timings_ms=timings,
                retrieved=retrieved,
            )
        est, sid, m = best
        res = result_from_pnp(est, m.X, m.px, timings, cfg.min_inlier_cells, submap_id=sid, retrieved=retrieved)
        if not self.takes_gravity:
            gravity = None
        if res.ok and align and not near and self.single_image_hypotheses:
            res = self._align_hypotheses(res, m, patch, rgb, camera, cam_net, timings, t0, gravity)
        elif res.ok and align:
            res = self._align(res, rgb, camera, timings, t0, T_map_cam_prior, gravity)
        mode = "global" if T_map_cam_prior is None else "tracking"
        if res.ok and res.aligned and math.isnan(res.support):  # (a single image's may be rated already)
            res = self._with_confidence(res, m, camera, cam_net, mode)
            timings["total"] = (time.perf_counter() - t0) * 1e3
        if res.ok and cfg.calibrated_covariance and self.calibration is not None:
            cov = self.calibration.apply(mode, res.T_map_cam, res.covariance, self.map_environment)
            res = replace(res, covariance=cov)
        return res

    def _support_radius(self, camera: PinholeCamera, cam_net: PinholeCamera) -> float:
        """``alignment.support_radius_px`` (network-image pixels) in ``camera``'s pixels: the radius within which a
        match supports a pose, for the hypotheses' choice and the confidence alike."""
        return self.config.alignment.support_radius_px * camera.K[0, 0] / cam_net.K[0, 0]

    def _with_confidence(
        self, res: LocalizationResult, m: _Matches, camera: PinholeCamera, cam_net: PinholeCamera, mode: str
    ) -> LocalizationResult:
        """``res`` (aligned) with its matches' support at its final pose and, where ``MODEL/confidence.json`` has a
        fit for this map's environment and ``mode``, the probability that it is right (:mod:`.pose_confidence`)."""
        support = match_support(m.X, m.px, res.T_map_cam, camera, self._support_radius(camera, cam_net))
        support /= max(len(m.X), 1)
        confidence = math.nan
        if self.confidence_model is not None:
            signals = signal_vector(res.alignment_score, support, res.inlier_ratio)
            confidence = self.confidence_model.confidence(mode, self.map_environment, signals)
        return replace(res, support=support, confidence=confidence)

    def _align(
        self,
        res: LocalizationResult,
        rgb: np.ndarray,
        camera: PinholeCamera,
        timings: dict[str, float],
        t0: float,
        prior: np.ndarray | None,
        gravity: GravityPrior | None = None,
    ) -> LocalizationResult:
        """``res`` with its pose aligned to the map's reflectance (:func:`align_to_reflectance`), on the submap
        nearest that pose; unchanged (and logged) when the alignment cannot run. A tracked pose is searched for
        as :meth:`AlignmentConfig.for_frame` says (tracking's range and rounds; indoors, local contrast), and with
        ``tracking_from_prior`` from ``prior`` too, the better score kept."""
        ta = time.perf_counter()
        cfg, contrast = self.config.alignment.for_frame(self.map_environment, prior is not None)
        starts = [res.T_map_cam] + ([prior] if prior is not None and cfg.tracking_from_prior else [])
        image = prepare_alignment_image(rgb, camera, cfg, contrast, gravity)
        if len(starts) == 1:
            al = self._aligned(res.T_map_cam, rgb, camera, cfg, contrast, image=image)
        else:  # both on the submap nearest PnP's pose, side by side; the better score wins
            prepared = self._alignment_points(res.T_map_cam, None, contrast, cfg)
            jobs = [functools.partial(self._align_on, T, rgb, camera, cfg, contrast, prepared, image) for T in starts]
            al = best_alignment(self._side_by_side(cfg.threads, jobs))
        timings["alignment"] = (time.perf_counter() - ta) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        if not al.ok:
            logger.debug("reflectance alignment skipped: %s", al.message)
            return replace(res, timings_ms=timings)
        return _at_alignment(res, al, timings_ms=timings)

    def _aligned(
        self,
        T_map_cam: np.ndarray,
        rgb: np.ndarray,
        camera: PinholeCamera,
        cfg: AlignmentConfig,
        contrast: bool,
        sid: int | None = None,
        image: AlignmentImage | None = None,
    ) -> AlignmentResult:
        """:func:`align_to_reflectance` from ``T_map_cam`` on submap ``sid`` (default: the one nearest it);
        ``image``: ``rgb`` prepared already (:func:`prepare_alignment_image`)."""
        prepared = self._alignment_points(T_map_cam, sid, contrast, cfg)
        return self._align_on(T_map_cam, rgb, camera, cfg, contrast, prepared, image)

    # IPR for the Manhattan grid's 243 poses a viewpoint: 4x4-pixel depth cells, a 3-cell window (12 px against the
    # alignment's 10: 2x2 cells, 5 of them), 11.5 against 12.5 ms a viewpoint; with three headings instead of all
    # four, sixteen indoor drives 64.8 -> 67.3 % within 0.5 m / 5 deg at 2.5 m (each alone not measured;
    # models/README.md "Session 47")
    GRID_IPR = IPRConfig(kernel_size=3, downsample=4)
    POINTS_CACHE = 16  # submaps prepared for the alignment (a frame's hypotheses use up to six, tracking one or two)

    def _alignment_points(
        self, T_map_cam: np.ndarray, sid: int | None, contrast: bool, cfg: AlignmentConfig
    ) -> AlignmentPoints:
        """Submap ``sid``'s points (default: the submap nearest ``T_map_cam``) and their reflectance (or its
        contrast) as an alignment with ``cfg`` compares them with the image, prepared once and kept (the gather
        from the map and the binning were ~10 ms of a single image's hypotheses). Called from one thread only."""
        if sid is None:
            sid = int(nearest_submaps(self.map, T_map_cam, 1)[0][0])

        def prepare() -> AlignmentPoints:
            sub = self.map.submap(sid, features=False)
            refl = self._reflectance_contrast(sid, sub) if contrast else sub.reflectance
            return prepare_alignment_points(sub.points, refl, cfg)

        key = (sid, contrast, cfg.max_points, cfg.bins)
        return _kept(self._prepared_points, key, self.POINTS_CACHE, prepare)

    def _align_on(
        self,
        T_map_cam: np.ndarray,
        rgb: np.ndarray,
        camera: PinholeCamera,
        cfg: AlignmentConfig,
        contrast: bool,
        prepared: AlignmentPoints,
        image: AlignmentImage | None = None,
    ) -> AlignmentResult:
        """:func:`align_to_reflectance` from ``T_map_cam`` on ``prepared`` points (:meth:`_alignment_points`)."""
        ipr = self.config.ipr
        return align_to_reflectance(
            rgb, camera, None, None, T_map_cam, cfg, ipr, local_contrast=contrast, image=image, prepared=prepared
        )

    def close(self) -> None:
        """Stop the threads that align a single image's hypotheses (they are made again if it localizes again).
        The node calls it when it releases the localizer (cleanup, shutdown, error), so that no thread outlives it."""
        pool, self._pool, self._pool_size = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=True)

    def _side_by_side(self, threads: int, jobs: list[Callable[[], T_]]) -> list[T_]:
        """Each of ``jobs``' results, in order, run in up to ``threads`` threads (a pool kept for the localizer's
        life). Why threads: the alignment's searches are compiled and release the GIL, and a single image's
        hypotheses are independent of each other, so two cores align two at once."""
        if threads <= 1 or len(jobs) <= 1:
            return [job() for job in jobs]
        if self._pool is None or self._pool_size != threads:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool, self._pool_size = ThreadPoolExecutor(threads, thread_name_prefix="ep2p-align"), threads
        return list(self._pool.map(lambda job: job(), jobs))

    def _align_hypotheses(
        self,
        res: LocalizationResult,
        m: _Matches,
        patch: torch.Tensor,
        rgb: np.ndarray,
        camera: PinholeCamera,
        cam_net: PinholeCamera,
        timings: dict[str, float],
        t0: float,
        gravity: GravityPrior | None = None,
    ) -> LocalizationResult:
        """A single image's pose aligned from PnP's pose and from the viewpoints of the ``hypothesis_views`` best
        retrieved submaps whose patch likelihood is within ``hypothesis_margin`` of the best start's (each on its
        own submap); the aligned pose that best combines the alignment's score with the matcher's votes (the
        matches' support and the patch likelihood, :mod:`.pose_hypotheses`), the points it sees, how many other
        starts ended at it and its score over the near points wins (:func:`rank_hypotheses`; the best
        ``hypothesis_finish`` coarse ones are finished first). Why:
        the alignment only climbs the basin it starts in, and PnP's pose is often at the wrong viewpoint; the
        reflectance score compares poses in one place, not between places, where the matcher tells them apart
        (``AlignmentConfig.retrieved_starts``). When the chosen pose is unlikely right (its confidence), PnP's pose
        and the best retrieved viewpoints turned about the vertical are starts too, and the choice is made again
        (``AlignmentConfig.turned_starts_deg``: a camera at a corner faces away from every viewpoint), with the
        matches' support and the hypotheses' agreement weighed as ``rescue_support_weight`` and
        ``rescue_agreement_weight`` say; a pose that choice changes to is rated no higher than the doubted one."""
        ta = time.perf_counter()
        cfg, contrast = self.config.alignment.for_frame(self.map_environment, tracking=False)
        radius = self._support_radius(camera, cam_net)
        image = prepare_alignment_image(rgb, camera, cfg, contrast, gravity)  # once for all the frame's alignments
        first: AlignmentResult | None = None  # PnP's pose aligned in full, as without hypotheses
        first_support = 0  # ... its matches' support (counted once: it is a hypothesis too)
        if cfg.hypotheses_below_support < 1:  # ... and kept if well supported
            first = self._aligned(res.T_map_cam, rgb, camera, cfg, contrast, image=image)
            if first.ok:
                first_support = match_support(m.X, m.px, first.T_map_cam, camera, radius)
            if first.ok and first_support >= cfg.hypotheses_below_support * len(m.X):
                timings["alignment"] = (time.perf_counter() - ta) * 1e3
                timings["total"] = (time.perf_counter() - t0) * 1e3
                return _at_alignment(res, first, timings_ms=timings)
        table = None  # the patch likelihood, to prune the starts and to weigh in the choice
        if (cfg.likelihood_weight > 0 or math.isfinite(cfg.hypothesis_margin)) and m.classified is not None:
            table = PatchLikelihood.from_features(self.head, *m.classified, patch, cfg.likelihood_points)
        views = res.retrieved
        if cfg.hypothesis_views > 0 and self.last_descriptor is not None:
            views = tuple(int(s) for s in top_k_by_descriptor(self.map, self.last_descriptor, cfg.hypothesis_views)[0])
        viewpoints = [(np.asarray(self.map.T_map_viewpoint[s], dtype=np.float64), s) for s in views]
        retrieved = list(viewpoints)  # (best first)
        if table is not None and math.isfinite(cfg.hypothesis_margin) and viewpoints:
            # a viewpoint whose likelihood is far below the best start's is another place: not worth an alignment
            # (but the best hypothesis_keep_views retrieved are aligned whatever theirs)
            at = table.mean_log_ratios(np.array([res.T_map_cam] + [T for T, _ in viewpoints]), cam_net)  # PnP's first
            floor = float(at.max()) - cfg.hypothesis_margin
            kept = enumerate(zip(viewpoints, at[1:], strict=True))
            viewpoints = [v for k, (v, value) in kept if value >= floor or k < cfg.hypothesis_keep_views]
        starts: list[tuple[np.ndarray, int | None]] = [] if first is not None else [(res.T_map_cam, None)]
        starts += viewpoints
        coarse = cfg.hypothesis_coarse
        quick = replace(
            cfg,
            refine_rounds=0,
            max_points=cfg.hypothesis_points,
            min_step_m=coarse * cfg.min_step_m,
            min_step_deg=coarse * cfg.min_step_deg,
        )

        def align_coarse(poses: list[tuple[np.ndarray, int | None]]) -> list[AlignmentResult]:
            """Each start's coarse alignment, side by side (the points prepared here, in one thread)."""
            prep = [self._alignment_points(T, sid, contrast, quick) for T, sid in poses]
            jobs = [
                functools.partial(self._align_on, T, rgb, camera, quick, contrast, p, image)
                for (T, _), p in zip(poses, prep, strict=True)
            ]
            return self._side_by_side(cfg.threads, jobs)

        found = [first] if first is not None else []  # (then PnP's hypothesis: it is finished already)
        found += align_coarse(starts)
        ok = [al for al in found if al.ok]
        rated: LocalizationResult | None = None  # the chosen pose with its support and confidence, where rated
        if ok:
            choice = _HypothesisChoice(self, cfg, contrast, rgb, image, m, camera, cam_net, table, first, first_support)
            best = choice.best(ok)
            rescues = cfg.turned_starts_deg or cfg.likelihood_starts or cfg.manhattan_starts_m or cfg.manhattan_grid_m
            if rescues and self.confidence_model is not None:
                # the chosen pose unlikely right (NaN: no fit to tell, so left as it is): starts off the viewpoints
                rated = self._with_confidence(_at_alignment(res, best), m, camera, cam_net, "global")
                if rated.confidence < cfg.turned_below_confidence:
                    rescue = self._rescue_starts(res, retrieved, table, cam_net, cfg)
                    rescue += self._manhattan_starts(rgb, camera, retrieved, cfg, image, contrast)
                    more = [al for al in align_coarse(rescue) if al.ok]
                    again = choice.best(ok + more, rescue=True) if more else best
                    if again is not best:
                        # rated no higher than the pose the gate doubted: the fit (MODEL/confidence.json) saw first
                        # choices only, and the rescue's choice leans on the alignment's score, which the fit trusts
                        # (uncapped, eight indoor drives' poses at >= 0.5 were right 92 -> 73 %: models/README.md
                        # "Session 44")
                        doubted = rated.confidence
                        rated = self._with_confidence(_at_alignment(res, again), m, camera, cam_net, "global")
                        rated, best = replace(rated, confidence=min(rated.confidence, doubted)), again
            ok = [best]
        timings["alignment"] = (time.perf_counter() - ta) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        if not ok:
            logger.debug("reflectance alignment skipped: %s", found[0].message)
            return replace(res, timings_ms=timings)
        if rated is not None:  # the rescue's gate ran: the pose it rated (or the rescue's choice, capped) with its
            return replace(rated, timings_ms=timings)  # support and confidence, not computed again
        return _at_alignment(res, ok[0], timings_ms=timings)

    def _rescue_starts(
        self,
        res: LocalizationResult,
        retrieved: list[tuple[np.ndarray, int]],
        table: PatchLikelihood | None,
        cam_net: PinholeCamera,
        cfg: AlignmentConfig,
    ) -> list[tuple[np.ndarray, int | None]]:
        """Starts for a single image whose chosen pose is unlikely right (:meth:`_align_hypotheses`): PnP's pose and
        the best ``turned_views`` retrieved viewpoints turned by ``turned_starts_deg``, and the ``likelihood_starts``
        found by the patch likelihood around PnP's pose and the best ``likelihood_views`` viewpoints
        (:func:`.likelihood_search.search_by_likelihood`), each with its submap (None: the nearest)."""
        bases = [(res.T_map_cam, None)] + [(T, sid) for T, sid in retrieved[: cfg.turned_views]]
        turns = [(T, sid) for base, sid in bases for T in turned_poses(base, cfg.turned_starts_deg)]
        if table is None:
            return turns
        if math.isfinite(cfg.hypothesis_margin) and len(turns) > 1:
            # as with the viewpoints: a turn whose patch likelihood is far below the best turn's faces what the
            # matcher does not see (8 -> ~2.3 alignments a frame, the same poses but one of 1,080)
            at_turn = table.mean_log_ratios(np.array([T for T, _ in turns]), cam_net)
            floor = float(at_turn.max()) - cfg.hypothesis_margin
            turns = [turn for turn, value in zip(turns, at_turn, strict=True) if value >= floor]
        if cfg.likelihood_starts > 0:
            around = [res.T_map_cam] + [T for T, _ in retrieved[: cfg.likelihood_views]]
            grid = LikelihoodSearch(
                along_m=cfg.likelihood_along_m, lateral_m=cfg.likelihood_lateral_m, turn_deg=cfg.likelihood_turn_deg
            )
            chunks = max(cfg.threads, 1)

            def score_grid(T: np.ndarray) -> np.ndarray:  # (compiled, the GIL released: a chunk a thread)
                parts = np.array_split(T, chunks)
                return np.concatenate(
                    self._side_by_side(
                        chunks, [functools.partial(table.mean_log_ratios, part, cam_net) for part in parts]
                    )
                )

            found = search_by_likelihood(table, cam_net, around, cfg.likelihood_starts, grid, score_grid)
            turns += [(T, None) for T in found]
        return turns

    def _manhattan_starts(
        self,
        rgb: np.ndarray,
        camera: PinholeCamera,
        retrieved: list[tuple[np.ndarray, int]],
        cfg: AlignmentConfig,
        image: AlignmentImage,
        contrast: bool,
    ) -> list[tuple[np.ndarray, int | None]]:
        """Starts for a single image whose chosen pose is unlikely right, where walls meet at right angles: the
        best ``manhattan_views`` retrieved viewpoints turned so that the walls each sees run along the image's
        horizontal lines (:mod:`.manhattan_headings`), each moved ``manhattan_starts_m`` along its turned axis (a
        camera that turned into a room walks the way it faces), each on its own submap; then the best
        ``manhattan_grid_starts`` distinct poses of a grid around those viewpoints at such headings
        (:meth:`_manhattan_grid`). None where the image's lines or a viewpoint's walls agree on no direction, and no
        turn within 3 deg of the viewpoint's heading (its own start and search have been there). Until session 47 no
        moved start was made where the chosen pose already faced along the walls (within 3 deg modulo 90): with the
        grid, sixteen indoor drives gain 5 frames without that rule (models/README.md "Session 47")."""
        if not (cfg.manhattan_starts_m or cfg.manhattan_grid_m > 0) or not retrieved:
            return []
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        half = cv2.resize(grey, (round(grey.shape[1] / 2), round(grey.shape[0] / 2)), interpolation=cv2.INTER_AREA)
        line = image_line_yaw(half, camera.scaled(0.5), min_length_px=12.5)  # half the pixels: ~4x faster
        if line is None:
            return []
        starts: list[tuple[np.ndarray, int | None]] = []
        grid: list[tuple[np.ndarray, int]] = []  # (poses, their submap) per viewpoint ...
        jobs: list[Callable[[], tuple[np.ndarray, np.ndarray]]] = []  # ... and their scoring (the points prepared here)
        for T, sid in retrieved[: cfg.manhattan_views]:
            wall = self._wall_yaw(sid)
            if math.isnan(wall):
                continue
            if cfg.manhattan_grid_m > 0:
                poses = self._manhattan_grid(T, line, wall, cfg)
                prepared = self._alignment_points(T, sid, contrast, cfg)
                grid.append((poses, sid))
                jobs.append(functools.partial(scores_at, image, prepared, poses, cfg, self.GRID_IPR))
            turns = [a for a in manhattan_turns(line, wall, cfg.manhattan_max_turn_deg) if abs(a) >= 3.0]
            for turned in turned_by(T, turns):
                starts += [(start, sid) for start in moved_in_view(turned, cfg.manhattan_starts_m)]
        if grid:  # each viewpoint's grid scored in its own thread (~12 ms each, compiled: the GIL released)
            scores = np.concatenate([s for s, _ in self._side_by_side(cfg.threads, jobs)])
            poses = np.concatenate([g[0] for g in grid])
            sids = np.concatenate([np.full(len(g[0]), g[1]) for g in grid])
            picked = best_distinct(poses, scores, cfg.manhattan_grid_starts, 0.75, 10.0)
            starts += [(poses[k], int(sids[k])) for k in picked]
        return starts

    @staticmethod
    def _manhattan_grid(T: np.ndarray, line: float, wall: float, cfg: AlignmentConfig) -> np.ndarray:
        """Viewpoint ``T`` turned to each of the three headings nearest its own that put the walls it sees (at
        ``wall`` deg) along the image's lines (at ``line`` deg; the fourth faces back along the mapped path), each
        moved on a square grid along and across its turned axis (``manhattan_grid_m`` either way in
        ``manhattan_grid_step_m`` steps). :meth:`_manhattan_starts` scores each pose on the viewpoint's submap less
        its chance level (:func:`scores_at`, with IPR on a coarser depth image, ``GRID_IPR``; -inf where it sees too
        few points). Why: indoors a camera that turned into a room stands 1-2.5 m off the line through the
        viewpoints, where no start reaches, and the alignment ends right from within about 0.6 m and a few degrees
        (models/README.md "Session 47"); the chance level keeps a pose facing a wall up close, which fits its few
        points by chance, from outscoring it."""
        offsets = symmetric_offsets(cfg.manhattan_grid_m, cfg.manhattan_grid_step_m)
        along, across = (g.ravel() for g in np.meshgrid(offsets, offsets, indexing="ij"))
        headings = turned_by(T, manhattan_turns(line, wall, 180.0)[:3])
        return np.concatenate([moved_in_view(turned, along, across) for turned in headings])

    def _wall_yaw(self, sid: int) -> float:
        """Submap ``sid``'s :func:`wall_yaw` from its viewpoint (NaN: none), computed once (~20 ms indoors) and kept."""

        def make() -> float:
            sub = self.map.submap(sid, features=False)  # (its points only: the features are most of its bytes)
            found = wall_yaw(sub.points, sub.T_map_viewpoint)
            return math.nan if found is None else found

        return _kept(self._walls, sid, self.WALLS_CACHE, make)

    WALLS_CACHE = 256  # submaps whose wall direction is kept (a float each: a large map's walls are found once)
    CONTRAST_CACHE = 8  # submaps whose reflectance contrast is kept (a tracked camera stays near one or two)

    def _reflectance_contrast(self, sid: int, sub: Any) -> np.ndarray:
        """Submap ``sid``'s :func:`reflectance_contrast`, computed once (~25 ms for an indoor submap) and kept."""
        neighbours = self.config.alignment.contrast_neighbours
        make = functools.partial(reflectance_contrast, sub.points, sub.reflectance, neighbours)
        return _kept(self._contrast, (sid, neighbours), self.CONTRAST_CACHE, make)

    def _solve_view(
        self,
        sub: Any,
        guess: np.ndarray,
        camera: PinholeCamera,
        cam_net: PinholeCamera,
        patch: torch.Tensor,
        stage: dict[str, float],
        radius: float | None = None,
        encoded: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
        near_guess: bool = True,
        soft_prior: bool = False,
    ) -> tuple[PoseEstimate, _Matches] | None:
        """One submap seen from ``guess``: IPR, matching (within ``radius`` network pixels of where ``guess``
        projects each point, when given), PnP. Returns (estimate, matches), or None when no point is visible.
        Adds each stage's milliseconds to ``stage``. With run-time point encoding, ``encoded`` keeps each
        submap's encoding for the frame's later rounds (the features of a point do not depend on the crop, so
        the first guess's crop serves the refined pose too). ``near_guess``: the guess is a prior or a pose found
        before (PnP searches ``prior_search_*`` around it), not a submap viewpoint. ``soft_prior``: the guess is
        the tracking prior, whose uncertainty ``prior_sigma_*`` gives (see :func:`prior_sigma_px`)."""
        pts, feats, _ = self._visible(sub, guess, camera, stage, encoded)
        if len(pts) == 0:
            return None
        cfg = self.config
        cap = cfg.prior_max_matches_per_patch if near_guess else cfg.max_matches_per_patch
        expected = sigma = None
        if radius is not None:
            sigmas = (cfg.prior_sigma_m, cfg.prior_sigma_deg) if soft_prior else (0.0, 0.0)
            expected, sigma = _guide(pts, invert(guess), cam_net, *sigmas)
        m = self._matches(pts, feats, patch, camera, cam_net, stage, cap, expected, radius, sigma)
        return self._pnp(m, camera, _search_guess(guess, sub.T_map_viewpoint), stage, near_guess), m

    def _solve_pooled(
        self,
        ids: list[int],
        T_map_viewpoints: list[np.ndarray],
        camera: PinholeCamera,
        cam_net: PinholeCamera,
        patch: torch.Tensor,
        stage: dict[str, float],
    ) -> tuple[PoseEstimate, int, _Matches] | None:
        """Retrieved submaps with the map's stored features: the union of what each viewpoint sees (IPR) is
        matched once, then PnP searches around each viewpoint on all of those matches and refines the best
        search result (the submap is the one whose viewpoint, of ``T_map_viewpoints``, that search started from).
        Only the stored-features global case comes here (``pool_submaps``); tracking and run-time encoding solve
        each view on its own.

        Why: a point's stored features and its match do not depend on the submap it was gathered with, and the
        top-k submaps overlap, so matching each separately repeats most of the work (matching is the costliest
        stage), while PnP's upright search is cheap enough to run from every viewpoint (its LM runs once).
        """
        ta = time.perf_counter()
        views = [self._viewpoint_view(sid, camera, cam_net) for sid in ids]
        gidx = np.concatenate([v.rows for v in views])
        if len(gidx) == 0:
            stage["ipr"] += (time.perf_counter() - ta) * 1e3
            return None
        gidx, first = np.unique(gidx, return_index=True)  # each map point once, in map-row order
        if len(gidx) > self.config.max_points:  # the union of several views: thin it like one view
            keep = np.linspace(0, len(gidx) - 1, self.config.max_points).astype(np.int64)
            gidx, first = gidx[keep], first[keep]
        pts = np.concatenate([v.pts for v in views])[first]
        feats = self.map.point_features(gidx)  # only the rows matched: a submap's features are ~10 MB
        expected = sigma = None
        if views[0].expected is not None:  # each point's prior: where its submap's viewpoint projects it
            expected = np.concatenate([v.expected for v in views])[first]
            sigma = np.concatenate([v.cov for v in views])[first]
        stage["ipr"] += (time.perf_counter() - ta) * 1e3
        cfg = self.config
        m = self._matches(
            pts, feats, patch, camera, cam_net, stage, cfg.max_matches_per_patch, expected, math.inf, sigma
        )
        guesses = np.stack([_search_guess(T, T) for T in T_map_viewpoints])  # each viewpoint, from its own tilt
        est = self._pnp(m, camera, guesses, stage, near_guess=False)
        return est, ids[max(est.guess_index, 0)], m

    def _viewpoint_view(self, sid: int, camera: PinholeCamera, cam_net: PinholeCamera) -> _ViewpointView:
        """Submap ``sid`` seen from its viewpoint (see :class:`_ViewpointView`), from the cache when it is there.

        Why keep them: consecutive frames retrieve mostly the same submaps, and gathering a submap's points from
        the memory-mapped map and running IPR on them was 4-6 ms a submap outdoors (90k points).
        """

        def make() -> _ViewpointView:
            sub = self.map.submap(sid, features=False)
            pts, _, rows = self._visible(sub, sub.T_map_viewpoint, camera, {"ipr": 0.0}, features=False)
            expected = cov = None
            if any(v > 0 for v in self.config.viewpoint_sigmas().values()):
                expected, cov = self._viewpoint_prior(sub.T_map_viewpoint, pts, cam_net)
            return _ViewpointView(pts, sub.point_indices[rows], expected, cov)

        key = (sid, camera.key)  # a camera_info that changes makes new views
        return _kept(self._views, key, self.config.viewpoint_cache, make)

    def _viewpoint_prior(
        self, T_map_viewpoint: np.ndarray, pts: np.ndarray, cam_net: PinholeCamera
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a camera at ``T_map_viewpoint`` projects ``pts`` (network pixels; NaN behind it) and the spread the
        ``viewpoint_sigma_*`` offsets give each of them there (:func:`prior_cov_px`)."""
        cfg = self.config
        in_vp = transform_points(invert(T_map_viewpoint), pts)
        forward = math.hypot(
            cfg.viewpoint_sigma_forward_m, cfg.viewpoint_sigma_forward_spacings * self.viewpoint_spacing
        )
        s_xyz = (cfg.viewpoint_sigma_lateral_m, cfg.viewpoint_sigma_vertical_m, forward)
        s_rot = (0.0, cfg.viewpoint_sigma_yaw_deg, 0.0)
        expected = cam_net.project(in_vp).uv.astype(np.float32)
        return expected, prior_cov_px(in_vp, cam_net, s_xyz, s_rot)

    def _visible(
        self,
        sub: Any,
        guess: np.ndarray,
        camera: PinholeCamera,
        stage: dict[str, float],
        encoded: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
        features: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The submap's points that ``guess`` sees (IPR, float64), thinned evenly to ``max_points``; their
        features (None when ``features`` is False: the caller reads the stored ones for fewer rows); and their
        rows in the submap (stored features) or in the run-time encoding."""
        cfg = self.config
        ta = time.perf_counter()
        all_feats = None
        if cfg.encode_points_at_runtime:
            cache = {} if encoded is None else encoded
            if sub.id not in cache:
                cache[sub.id] = self._encode_view(sub, guess, camera)
            pts, all_feats = cache[sub.id]
            stage["point_encoder"] = stage.get("point_encoder", 0.0) + (time.perf_counter() - ta) * 1e3
            ta = time.perf_counter()
        else:
            pts = sub.points  # float32: IPR runs in float32, plenty for a visibility test and faster
        keep = np.ones(len(pts), bool)
        if cfg.use_ipr and len(pts):
            keep = visible_mask(pts, invert(guess), camera, cfg.ipr)
        rows = np.flatnonzero(keep)
        if len(rows) > cfg.max_points:  # deterministic, spatially even thinning (rows are voxel-ordered)
            rows = rows[np.linspace(0, len(rows) - 1, cfg.max_points).astype(np.int64)]
        feats = None
        if features:
            feats = (
                np.asarray(all_feats[rows], dtype=np.float32)
                if all_feats is not None
                else self.map.point_features(sub.point_indices[rows])
            )
        stage["ipr"] += (time.perf_counter() - ta) * 1e3
        return pts[rows].astype(np.float64), feats, rows

    def _matches(
        self,
        pts: np.ndarray,
        feats: np.ndarray,
        patch: torch.Tensor,
        camera: PinholeCamera,
        cam_net: PinholeCamera,
        stage: dict[str, float],
        cap: int,
        expected: np.ndarray | None = None,
        radius: float | None = None,
        sigma: np.ndarray | None = None,
    ) -> _Matches:
        """Match points to pixels (guided within ``radius`` of their ``expected`` network pixels, if given, with
        the soft prior ``sigma``, if given: see :func:`_guide`), at most ``cap`` per image patch (0: no cap). The
        pixels are refined now, or (``refine_after_pnp``) only for the matches near the pose found, in
        :meth:`_polish`."""
        cfg = self.config
        tb = time.perf_counter()
        expected_t = None if expected is None else torch.from_numpy(expected)
        sigma_t = None if sigma is None else torch.from_numpy(sigma)
        lazy = cfg.refine_pixels and cfg.refine_after_pnp
        feats_t = torch.from_numpy(feats)
        refine_now = cfg.refine_pixels and not cfg.refine_after_pnp
        idx, px_net, conf = self._match(feats_t, patch, cap, expected_t, radius, refine=refine_now, sigma=sigma_t)
        if cap > 0 and len(idx):
            keep_m = _cap_per_patch(px_net, conf, self.model_config, cap)
            idx, px_net, conf = idx[keep_m], px_net[keep_m], conf[keep_m]
        if len(idx) > cfg.max_matches:
            top = torch.argsort(conf, descending=True)[: cfg.max_matches]
            idx, px_net, conf = idx[top], px_net[top], conf[top]
        px = _to_image_pixels(px_net, camera, cam_net)
        stage["matching"] += (time.perf_counter() - tb) * 1e3
        kept = (pts[idx.numpy()], px, conf.numpy().astype(np.float64), feats_t[idx], px_net)
        return _Matches(*kept, refined=not lazy, classified=(pts, feats_t))

    def _pnp(
        self, m: _Matches, camera: PinholeCamera, guesses: np.ndarray, stage: dict[str, float], near_guess: bool
    ) -> PoseEstimate:
        """PnP on the matches, its upright search around each of ``guesses`` (see :func:`_search_guess`):
        ``prior_search_*`` bounds when ``near_guess``, the PnP config's around submap viewpoints otherwise."""
        tc = time.perf_counter()
        est = solve_pnp(m.X, m.px, camera, self._pnp_config(near_guess), weights=m.conf, guess=guesses)
        stage["pnp"] += (time.perf_counter() - tc) * 1e3
        return est

    def _pnp_config(self, near_guess: bool) -> PnPConfig:
        """Around a prior or a pose found before: the ``prior_search_*`` bounds; around viewpoints: ``pnp``'s."""
        return self.config.prior_pnp() if near_guess else self.config.pnp

    def _polish(
        self,
        est: PoseEstimate,
        m: _Matches,
        patch: torch.Tensor,
        camera: PinholeCamera,
        cam_net: PinholeCamera,
        stage: dict[str, float],
        near_guess: bool,
    ) -> tuple[PoseEstimate, _Matches]:
        """Refine the pixels of the matches that ``est`` (found on patch centres) reprojects within
        ``refine_radius_px``, then polish the pose on them (LM from ``est``, no new search).

        Why: the refinement MLP runs over stride² positions per match; PnP keeps a few hundred of the
        thousand-odd matches, and a patch centre is close enough to its true pixel for the search to find them.
        Unchanged when the pixels are refined already or the pose failed; the coarse result stands when the
        polished one fails.
        """
        if m.refined or not est.ok or len(m.X) == 0:
            return est, m
        tb = time.perf_counter()
        proj = camera.project(transform_points(est.T_cam_world, m.X))
        err = np.linalg.norm(proj.uv - m.px, axis=1)
        sel = torch.from_numpy(np.flatnonzero(proj.in_image & (err <= self.config.refine_radius_px)))
        px_net = m.px_net.clone()
        if len(sel):
            px_net[sel] = self.head.refine_pixels(m.feats[sel], patch, m.px_net[sel])
        refined = replace(m, px=_to_image_pixels(px_net, camera, cam_net), px_net=px_net, refined=True)
        tc = time.perf_counter()
        stage["matching"] += (tc - tb) * 1e3
        pnp_cfg = self._pnp_config(near_guess)
        polished = solve_pnp(refined.X, refined.px, camera, pnp_cfg, weights=refined.conf, start=est.T_world_cam)
        stage["pnp"] += (time.perf_counter() - tc) * 1e3
        return (polished, refined) if polished.ok else (est, m)

    @torch.no_grad()
    def _encode_view(self, sub: Any, guess: np.ndarray, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
        """Point features of the guess camera's view of a submap, computed now, exactly as in training.

        Training encodes each frame's frustum crop (voxelised to the encoder's density, relative to a point near
        the camera). Away from the crop's border the map's stored features agree with these; with the shipped
        model they localize about as well at a quarter of the time (models/README.md), so this is an option.
        """
        from .model.dataset import frustum_mask

        if self.point_encoder is None:
            raise DataError("encode_points_at_runtime needs the point encoder (use Localizer.from_paths)")
        crop = frustum_mask(sub.points, invert(guess), camera)
        if crop.sum() < 16:
            return np.zeros((0, 3)), np.zeros((0, self.model_config.feature_dim), np.float32)
        pv, _, out = self.point_encoder.encode_voxels(sub.points[crop], sub.reflectance[crop], guess[:3, 3])
        return pv.astype(np.float64), out.features.numpy()

    def _match(
        self,
        feats: torch.Tensor,
        patch: torch.Tensor,
        cap: int,
        expected: torch.Tensor | None = None,
        radius: float | None = None,
        refine: bool = True,
        sigma: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        limits = (cfg.min_confidence, cap, cfg.max_matches)
        idx, px, conf = self.head.match(
            feats, patch, *limits, expected=expected, radius=radius, refine=refine, sigma=sigma
        )
        if not cfg.refine_pixels:  # ablation: the centre of the chosen patch, whatever pixels the head gave
            px = patch_centers(self.model_config)[patch_index(px, self.model_config)]
        return idx, px, conf
