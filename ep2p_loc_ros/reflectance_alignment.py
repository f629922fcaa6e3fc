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
camera sideways as it turns, :func:`_ascent_directions`), then, ``refine_rounds`` times, the search along the axis
again around where the ascent ended and the ascent again from the best there.

Indoors the levels' score has a broad ridge rather than a peak (walls, floor and ceiling differ in grey level and
reflectance alike wherever the camera stands): there the alignment compares local contrast instead, the grey level
less its blur and each point's reflectance less the mean of its nearest map points (:func:`reflectance_contrast`),
whose detail (doors, frames, books, planks) is where it is only from the right pose.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numba
import numpy as np
from scipy.spatial import cKDTree

from .geometry import PinholeCamera, make_T, moved_in_view, rotvec_to_matrix, symmetric_offsets
from .gravity import GravityPrior
from .ipr import IPRConfig, visible_mask_t
from .map.store import ENVIRONMENTS
from .model.preprocess import resize_camera

__all__ = [
    "AlignmentConfig",
    "AlignmentImage",
    "AlignmentPoints",
    "AlignmentResult",
    "align_to_reflectance",
    "best_alignment",
    "chance_mi",
    "compile_kernels",
    "mutual_information",
    "part_scores",
    "prepare_alignment_image",
    "prepare_alignment_points",
    "reflectance_contrast",
    "scores_at",
]


def _numbers(value: Any) -> tuple[float, ...]:
    """A list of numbers from YAML or ROS parameters, or one number, as a tuple of floats."""
    return tuple(float(x) for x in (value if isinstance(value, list | tuple) else (value,)))


@dataclass(frozen=True)
class AlignmentConfig:
    """How the alignment searches (module docstring). Distances in metres, angles in degrees."""

    # Align single-image (global) localizations and tracked ones. Outdoors (four held-out outdoor drives: single
    # images 9.6 -> 53.7 % within 0.5 m / 5 deg; the node's loop of tracking and fusion 33.7 -> 87.9 %) and, with
    # local contrast, indoors (eight held-out indoor drives: single images 11.6 -> 33.4 %, the node's loop 50.5 ->
    # 89.4 %; levels lost there). models/README.md, "Session 21", "Session 22", "Session 24" and "Session 26"
    after_retrieval: bool = True
    in_tracking: bool = True
    # ... on maps built for these environments (the map's own, from `ep2p-loc build-map --environment`; "unknown"
    # for maps that do not say)
    environments: tuple[str, ...] = ("outdoor", "indoor", "unknown")
    forward_range_m: float = 6.0  # the first search covers this much forward and back along the optical axis
    tracking_forward_range_m: float = 6.0  # ... and for a pose tracked from a prior
    forward_step_m: float = 0.5
    step_m: float = 0.2  # the coordinate ascent's first steps ...
    step_deg: float = 0.4
    min_step_m: float = 0.05  # ... halved until below these
    min_step_deg: float = 0.1
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
    # then the search along the axis again, this far either way in these steps, from the pose the ascent found, and
    # the ascent again from the best there; this many rounds (0: none). Nine held-out outdoor drives' single images:
    # 52.2 -> 56.9 % within 0.5 m / 5 deg, 37.2 -> 40.9 % within 0.25 m / 2 deg, +8-10 ms (models/README.md,
    # "Session 25")
    refine_rounds: int = 1
    tracking_refine_rounds: int = 1  # ... and for a pose tracked from a prior
    refine_range_m: float = 1.5
    refine_step_m: float = 0.25
    # > 0: the refine round's ascent starts not only from the best candidate along the axis but from every one at
    # least this far (along the axis) from where an earlier ascent ended, best-scored first, each with steps no
    # finer than refine_spread_coarse times the minimum; the end that scores best on the points it sees then gets
    # the fine steps. The score at the true pose is often higher than where one ascent ends, but another basin
    # (rotation and sideways offset slightly off) wins along the axis. At 0.6, single images within 0.5 m / 5 deg:
    # nine outdoor drives 56.9 -> 61.5 %, eight indoor 33.4 -> 36.6 %, each the same or better. Off by default: it
    # costs 35-80 ms a frame (global p50 on drives 900 / 902 / 901: 82 -> 163, 85 -> 125, 73 -> 108 ms) and the
    # node's loop gains nothing from it; for single images without fusion (models/README.md, "Session 28").
    refine_spread_m: float = 0.0
    tracking_refine_spread_m: float = 0.0  # ... and for a pose tracked from a prior
    refine_spread_coarse: float = 2.0
    # a single image's pose is aligned from PnP's pose and from retrieved submaps' viewpoints too, and the aligned
    # pose with the best score + support_weight * log(1 + its support) + likelihood_weight * its patch likelihood wins,
    # its support being the matches it reprojects within support_radius_px (network-image pixels), its likelihood the
    # matcher's per-point patch distributions' (pose_hypotheses.py; Localizer._align_hypotheses). On maps of
    # hypothesis_environments only, on every frame (hypotheses_below_support: 1): single images within 0.5 m / 5 deg on
    # nine outdoor drives 56.9 -> 78.3 % (78.9 % with points_weight), at 1.1-1.3x the global p50 of the 0.06 gate of
    # sessions 31-35 (72.6 %; models/README.md "Session 36"). Indoors too (contrast_hypotheses_below_support). Where
    # they run, the node confirms its first pose (tracking.confirm_updates), as a drive's first images can agree on a
    # look-alike place (models/README.md, "Sessions 29-31", "Session 34").
    retrieved_starts: bool = True
    hypothesis_environments: tuple[str, ...] = ("outdoor", "indoor")
    support_weight: float = 0.3
    support_radius_px: float = 5.0
    # ... + likelihood_weight * the patch likelihood (nats a point, pose_hypotheses.PatchLikelihood, on at most
    # likelihood_points of the classified points): the matcher's whole per-point distributions, not only its matches
    likelihood_weight: float = 0.3
    likelihood_points: int = 2000
    # ... + this weight * log(the map points the aligned pose scored on): outdoor single images within 0.5 m / 5 deg
    # +0.6 / +2.0 / +1.9 points on three sets of nine drives (models/README.md "Session 36") ...
    points_weight: float = 0.3
    contrast_points_weight: float = 0.0  # ... and on the contrast environments (indoors: 44.1 -> 42.8 % with 0.3)
    # ... + this weight * how many of the other coarse hypotheses ended within agreement_radius_m and agreement_deg
    # of it (pose_hypotheses.pose_agreement): alignments from different starts that end at one pose vote for it.
    # Outdoor single images within 0.5 m / 5 deg on three sets of nine drives +0.5 / +0.9 / 0.0 points, indoors the
    # same; with a radius of 1 m it loses (-0.2 / -0.7 / +0.1, indoors -0.7: ends 1 m apart are other basins along
    # the axis) (models/README.md "Session 37")
    agreement_weight: float = 0.2
    agreement_radius_m: float = 0.5
    agreement_deg: float = 5.0
    # ... + this weight * the sum of the scores over the points the coarse pose sees less than each of near_m
    # ahead (part_scores, on the submap nearest it): poses metres along the axis or at a look-alike place fit the
    # far facades as well as the right one, not the near points (models/README.md "Session 37"). The points within
    # 20 m as well as within 10 m: outdoor single images within 0.5 m / 5 deg on three sets of nine drives
    # +0.6 / +1.3 / +1.7 points (models/README.md "Session 38") ...
    near_weight: float = 2.0
    contrast_near_weight: float = 0.0  # ... and on the contrast environments (indoors)
    near_m: tuple[float, ...] = (10.0, 20.0)
    # ... + this weight * (the score over the points it sees left of its optical axis + that over those right of it):
    # a pose turned or moved toward one side of the street can fit that side's facade as well as the right pose, not
    # both sides at once. Single images within 0.5 m / 5 deg on three sets of nine outdoor drives +0.7 / +1.7 / -0.2
    # points, on eight indoor drives +0.6 (models/README.md "Session 38") ...
    halves_weight: float = 1.0
    # ... each of those part scores being the MI over the entropy of the part's reflectance bins, times log(bins) (the
    # share of the reflectance's uncertainty the image explains, in nats at a uniform marginal): points alike in
    # reflectance (the road of a crossing, a plain wall) cannot reach a facade's MI however right the pose, so parts
    # of different places compare only so. Single images within 0.5 m / 5 deg on three sets of nine outdoor drives
    # +0.6 / +0.9 / +0.4 points, on eight indoor drives the same poses' figures (models/README.md "Session 39")
    parts_per_entropy: bool = True
    # When the pose chosen from those hypotheses is unlikely right (its confidence below turned_below_confidence;
    # needs a fit in MODEL/confidence.json), PnP's pose and the viewpoints of the best turned_views retrieved
    # submaps, each turned about the camera's vertical by minus and plus each of these angles, are starts too (those
    # whose patch likelihood is within hypothesis_margin of the best turn's), and the choice is made again. Why: where
    # a drive turns a corner the camera faces 10-30 deg away from every viewpoint, PnP keeps a viewpoint's heading
    # (the matcher's prior) and the ascent's small turns do not reach the truth. Outdoor single images within 0.5 m /
    # 5 deg on three sets of nine drives +1.6 / +0.2 / +2.2 points, no frame lost; 8-12 % of the frames run them
    # (models/README.md "Session 40"). Indoors the same poses, so off there
    turned_starts_deg: tuple[float, ...] = (10.0, 20.0)
    contrast_turned_starts_deg: tuple[float, ...] = ()  # ... on the contrast environments (indoors)
    # ... the level: 0.5 since session 41 (with the likelihood starts below: three sets of nine outdoor drives +0.0 /
    # +0.2 / +0.9 points against 0.4, no frame lost; session 40's turned starts alone had gained one frame of 540)
    turned_below_confidence: float = 0.5
    turned_views: int = 1
    # ... and, below the same confidence, the likelihood_starts best distinct poses by the matcher's patch likelihood
    # alone (.likelihood_search) on a grid around PnP's pose and the viewpoints of the best likelihood_views retrieved
    # submaps, moved up to likelihood_along_m along their axis (2 m steps) and likelihood_lateral_m across it, turned
    # up to likelihood_turn_deg (10 deg steps), each climbed on the likelihood: where a drive turns a corner or runs
    # past the map's last viewpoint the camera is metres and degrees from every start, and a turn in place does not
    # reach it (outdoor single images within 0.5 m / 5 deg on three sets of nine drives +2.1 / +0.9 / +1.3 points;
    # models/README.md "Session 41"); 0: off
    likelihood_starts: int = 2
    contrast_likelihood_starts: int = 0  # ... on the contrast environments (indoors)
    likelihood_views: int = 3
    likelihood_along_m: float = 10.0
    likelihood_lateral_m: float = 3.0
    likelihood_turn_deg: float = 30.0
    # ... and, below the same confidence, the viewpoints of the best manhattan_views retrieved submaps turned so that
    # the walls each sees run along the image's horizontal lines (.manhattan_headings: both give the heading modulo
    # 90 deg, so each turn within manhattan_max_turn_deg either way), each moved these many metres along its turned
    # axis, are starts too. Why: indoors a camera that turns into a room off the mapped corridor faces 10-90 deg away
    # from every viewpoint, the matcher does not recognise what it sees and no start is near it, while the
    # alignment holds the right pose from within about a metre and a few degrees; outdoors at a corner, where the
    # facades meet at right angles, the same in place. Single images within 0.5 m / 5 deg: eight indoor drives
    # 44.7 -> 56.2 %, three sets of nine outdoor drives +5 / +1 / +9 frames of 540, none lost (models/README.md
    # "Session 43"); (): off
    manhattan_starts_m: tuple[float, ...] = (0.0,)
    contrast_manhattan_starts_m: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)  # ... on the contrast environments
    manhattan_views: int = 2
    manhattan_max_turn_deg: float = 95.0
    # ... and the best manhattan_grid_starts distinct poses of a square grid around each of those viewpoints (this far
    # either way along and across its axis, in manhattan_grid_step_m steps) at the three headings nearest its own that
    # put its walls along the image's lines, scored by the MI less its chance level (scores_at) on the points each
    # sees. Why: indoors a camera that turned into a room stands 1-2.5 m off the line through the viewpoints, where
    # none of those starts reaches, and the alignment ends right from within about 0.6 m and a few degrees. Indoor
    # single images within 0.5 m / 5 deg: 62.5 -> 69.4 %, on eight fresh drives 56.9 -> 66.2 %, at ~2x the indoor
    # global p50 (models/README.md "Session 47"); 0: off
    manhattan_grid_m: float = 0.0
    contrast_manhattan_grid_m: float = 2.0  # ... on the contrast environments (indoors)
    manhattan_grid_step_m: float = 0.5
    manhattan_grid_starts: int = 6
    # When those starts run, the choice made again over all the hypotheses weighs the matches' support and the
    # hypotheses' agreement by these instead of support_weight and agreement_weight. Why: the rescue runs because
    # the matches' favourite pose is unlikely right, and a camera turned off every viewpoint sees points the matcher
    # never classified (IPR ran at the viewpoints), so the right pose has almost no support (indoors ~130x less than
    # the chosen one on the hypotheses the choice missed) however well the patch likelihood and the alignment rate it;
    # and the rescue's starts come in families (one viewpoint moved 0-3 m, turned both ways) that end together
    # wherever they end, so agreeing says little there (models/README.md "Session 44")
    rescue_support_weight: float = 0.1
    rescue_agreement_weight: float = 0.0
    # ... and on the contrast environments (indoors), where the grid's starts (manhattan_grid_m) are independent of
    # each other and those that end together vote for a place (models/README.md "Session 47")
    contrast_rescue_agreement_weight: float = 0.05
    hypothesis_views: int = 5  # the viewpoints of this many retrieved submaps are starts (0: the localizer's top_k) ...
    # ... each aligned only if its patch likelihood is within this many nats a point of the best start's (inf: all).
    # 1.5 (0.75 until session 45): outdoor single images within 0.5 m / 5 deg 85.9 -> 87.2 % over 27 drives (+26 -4
    # frames; inf: +35 -14), indoors the same poses. Where the matcher mistakes the place (past the map's last
    # viewpoint) the right viewpoint's likelihood can be far below a look-alike's (models/README.md "Session 45")
    hypothesis_margin: float = 1.5
    # ... but the viewpoints of the best this many retrieved submaps are starts whatever their likelihood: the
    # likelihood at a viewpoint is a noisy gate, and the best retrieved one is often the place (1: outdoor single
    # images 77.7 -> 78.9 % over 27 drives, ~0.3 alignments more a frame; models/README.md "Session 37")
    hypothesis_keep_views: int = 1
    hypotheses_below_support: float = 1.0  # < 1: first PnP's pose alone, kept if this share of the matches support it
    # ... and on the contrast environments (indoors), where every frame gets them (1.0): eight indoor drives' single
    # images 33.4 -> 44.1 % within 0.5 m / 5 deg, the node's loop 94.1 -> 95.0 % (91.2 -> 94.4 % within 0.25 m / 2 deg),
    # for ~1.25x the global p50 (models/README.md, "Session 34")
    contrast_hypotheses_below_support: float = 1.0
    hypothesis_points: int = 30000  # each hypothesis is aligned on at most this many points ...
    hypothesis_coarse: float = 4.0  # ... with ascents that stop at this many times the minimum steps, no refine round
    # ... then the best this many get the fine steps and the refine round(s), and the best of them wins
    hypothesis_finish: int = 1
    # ... side by side in this many threads (the searches are compiled and release the GIL; 1: one after another).
    # The same poses either way (models/README.md, "Session 34")
    threads: int = 2
    # on maps of these environments it compares local contrast, not levels (module docstring): the grey level less
    # its Gaussian blur of this sigma (pixels of the scaled image), each point's reflectance less the mean of its
    # this many nearest map points (itself included). Four held-out indoor drives' single images, from the same
    # PnP poses: levels 13.8 -> 6.9 %, contrast 13.8 -> 34.4 % within 0.5 m / 5 deg (models/README.md "Session 26")
    contrast_environments: tuple[str, ...] = ("indoor",)
    contrast_blur_px: float = 8.0
    contrast_neighbours: int = 8
    # ... and there searches at most this far along the axis first: a corridor repeats itself (doors, lamps,
    # shelves), and a longer search finds a look-alike (eight indoor drives' single images: 6 m 28.4 %, 4 m 31.9 %,
    # 3 m 33.4 %, 2 m 32.2 % within 0.5 m / 5 deg) ...
    contrast_forward_range_m: float = 3.0
    # ... and for a pose tracked from a prior (the node's loop with odometry on those drives: 3 m 71.9 %, 1.5 m 80.9 %)
    contrast_tracking_forward_range_m: float = 1.5
    # align a tracked pose from the prior too, not only from the pose PnP found from it, and keep the better score
    # (PnP can move a good prior metres along the axis). Outdoors better within 0.25 m / 2 deg (906: 72.5 -> 85.8 %)
    # but ~40 ms more a tracked frame, so off ...
    tracking_from_prior: bool = False
    # ... and on the contrast environments (the node's loop on eight indoor drives 80.9 -> 89.4 % within 0.5 m / 5 deg,
    # 65.6 -> 73.9 % within 0.25 m / 2 deg; from the prior alone 89.2 / 59.4 %)
    contrast_tracking_from_prior: bool = True
    # Given gravity as an IMU measures it (Localizer.localize's ``gravity``, gravity.py), each start is levelled to
    # it and the ascent's score is less this weight times half the squared tilt error in its standard deviations (a
    # Gaussian prior, nats). Outdoor single images within 0.5 m / 5 deg over 27 drives, the IMU simulated as the true
    # roll and pitch with 0.05 deg of noise: 87.3 -> 89.6 % (+89 -52 frames; bench/gravity_prior.py). Weights tried in
    # a first version (starts at the viewpoint's height, turned about the vertical): 0.0001 / 0.001 / 0.01: 88.8 / 89.1
    # / 88.3 %; the exact tilt held fixed, an ascent over sideways, forward and yaw only: 90.7 % (models/README.md
    # "Session 51")
    gravity_weight: float = 0.001
    # ... on maps of these environments; on others the gravity is not used. Eight indoor drives' single images with
    # it: 69.4 -> 66.6 % (+12 -21), where the local contrast's fit holds the tilt to 0.46 deg (median) and a turned
    # camera's rescue needs its freedom (models/README.md "Session 51")
    gravity_environments: tuple[str, ...] = ("outdoor", "unknown")

    def __post_init__(self) -> None:
        depths = tuple(float(d) for d in self.pivot_depths_m)  # a list from YAML or ROS parameters
        if not all(np.isfinite(d) and d > 0 for d in depths):
            raise ValueError(f"alignment.pivot_depths_m must be positive, got {list(depths)}")
        object.__setattr__(self, "pivot_depths_m", depths)
        near = _numbers(self.near_m)
        if not near or not all(np.isfinite(d) and d > 0 for d in near):
            raise ValueError(f"alignment.near_m must be one or more positive depths, got {list(near)}")
        object.__setattr__(self, "near_m", near)
        for name in ("turned_starts_deg", "contrast_turned_starts_deg"):
            turns = _numbers(getattr(self, name))
            if not all(np.isfinite(a) and 0 < a < 180 for a in turns):
                raise ValueError(f"alignment.{name} must be angles in (0, 180) deg, got {list(turns)}")
            object.__setattr__(self, name, turns)
        for name in ("manhattan_starts_m", "contrast_manhattan_starts_m"):
            moves = _numbers(getattr(self, name))
            if not all(np.isfinite(d) and d >= 0 for d in moves):
                raise ValueError(f"alignment.{name} must be distances >= 0 m, got {list(moves)}")
            object.__setattr__(self, name, moves)
        for name in ("environments", "contrast_environments", "hypothesis_environments", "gravity_environments"):
            envs = tuple(str(e) for e in getattr(self, name))  # a list from YAML or ROS parameters
            if not set(envs) <= set(ENVIRONMENTS):
                raise ValueError(f"alignment.{name} must be among {', '.join(ENVIRONMENTS)}, got {list(envs)}")
            object.__setattr__(self, name, envs)
        if self.contrast_neighbours < 2:
            raise ValueError(f"alignment.contrast_neighbours must be >= 2, got {self.contrast_neighbours}")
        positive = ("forward_step_m", "step_m", "step_deg", "min_step_m", "min_step_deg", "image_scale")
        positive += ("contrast_blur_px", "support_radius_px")
        positive += ("agreement_radius_m", "agreement_deg", "manhattan_grid_step_m")
        for name in (*positive, "refine_step_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"alignment.{name} must be > 0, got {getattr(self, name)}")
        ranges = ("forward_range_m", "tracking_forward_range_m", "refine_range_m", "refine_spread_m")
        ranges += ("tracking_refine_spread_m",)
        ranges += ("contrast_forward_range_m", "contrast_tracking_forward_range_m")
        for name in ("threads", "hypothesis_finish"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"alignment.{name} must be an integer >= 1, got {value!r}")
        counts = ("refine_rounds", "tracking_refine_rounds", "hypothesis_views", "hypothesis_keep_views")
        counts += ("turned_views", "likelihood_starts", "contrast_likelihood_starts", "likelihood_views")
        ranges += ("likelihood_along_m", "likelihood_lateral_m", "likelihood_turn_deg", "manhattan_max_turn_deg")
        ranges += ("manhattan_grid_m", "contrast_manhattan_grid_m")
        counts += ("manhattan_views", "manhattan_grid_starts")
        weights = ("support_weight", "likelihood_weight", "points_weight", "contrast_points_weight")
        weights += ("agreement_weight", "near_weight", "contrast_near_weight", "halves_weight")
        weights += ("rescue_support_weight", "rescue_agreement_weight", "contrast_rescue_agreement_weight")
        weights += ("gravity_weight",)
        for name in (*ranges, *counts, *weights):
            if not getattr(self, name) >= 0:  # NaN refused too
                raise ValueError(f"alignment.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("refine_spread_coarse", "hypothesis_coarse", "likelihood_points"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"alignment.{name} must be >= 1, got {getattr(self, name)}")
        if self.hypothesis_points < self.min_points:
            raise ValueError(
                f"alignment.hypothesis_points must be >= min_points ({self.min_points}), got {self.hypothesis_points}"
            )
        if not self.hypothesis_margin >= 0:  # inf allowed (no pruning), NaN refused
            raise ValueError(f"alignment.hypothesis_margin must be >= 0, got {self.hypothesis_margin}")
        if not 2 <= self.bins <= 256:
            raise ValueError(f"alignment.bins must be in [2, 256], got {self.bins}")
        bounded = ("min_view_ratio", "hypotheses_below_support", "contrast_hypotheses_below_support")
        for name in (*bounded, "turned_below_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"alignment.{name} must be in [0, 1], got {getattr(self, name)}")

    def hypotheses_on(self, environment: str) -> bool:
        """Whether single images on a map of ``environment`` are aligned from several hypotheses
        (``retrieved_starts`` on a map the alignment runs on and of ``hypothesis_environments``)."""
        here = environment in self.environments and environment in self.hypothesis_environments
        return self.retrieved_starts and here

    def for_frame(self, environment: str, tracking: bool) -> tuple[AlignmentConfig, bool]:
        """The search for one frame on a map of ``environment``, tracked from a prior or not, and whether it
        compares local contrast (:func:`align_to_reflectance`'s ``local_contrast``): tracking's own forward range
        and refine rounds, and the contrast environments' shorter forward ranges and their hypotheses' gate,
        points' and near points' weights and turned, likelihood and Manhattan starts."""
        cfg = self
        if tracking:
            cfg = replace(
                cfg,
                forward_range_m=cfg.tracking_forward_range_m,
                refine_rounds=cfg.tracking_refine_rounds,
                refine_spread_m=cfg.tracking_refine_spread_m,
            )
        contrast = environment in cfg.contrast_environments
        if contrast:
            reach = cfg.contrast_tracking_forward_range_m if tracking else cfg.contrast_forward_range_m
            cfg = replace(
                cfg,
                forward_range_m=min(cfg.forward_range_m, reach),
                tracking_from_prior=cfg.contrast_tracking_from_prior,
                hypotheses_below_support=cfg.contrast_hypotheses_below_support,
                points_weight=cfg.contrast_points_weight,
                near_weight=cfg.contrast_near_weight,
                turned_starts_deg=cfg.contrast_turned_starts_deg,
                likelihood_starts=cfg.contrast_likelihood_starts,
                manhattan_starts_m=cfg.contrast_manhattan_starts_m,
                manhattan_grid_m=cfg.contrast_manhattan_grid_m,
                rescue_agreement_weight=cfg.contrast_rescue_agreement_weight,
            )
        return cfg, contrast


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
    joint = np.bincount(np.asarray(a_bins, np.int64) * bins + b_bins, minlength=bins * bins)
    return _mi_from_counts(joint.reshape(bins, bins))[0]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mi_from_counts(joint: np.ndarray) -> tuple[float, int]:  # pragma: no cover (compiled)
    """:func:`mutual_information` from a joint histogram's counts (bins_a rows; of its columns only the first
    bins_a count), and how many samples that is; -inf when none.

    With p = c / n, each entropy is log n - sum(c log c) / n, so the MI needs only the nonzero counts' c log c.
    """
    nb = joint.shape[0]
    rows, cols = np.zeros(nb), np.zeros(nb)
    n, s_joint, k_joint = 0, 0.0, 0
    for a in range(nb):
        for b in range(nb):
            c = joint[a, b]
            if c > 0:
                n += c
                s_joint += c * np.log(c)
                k_joint += 1
                rows[a] += c
                cols[b] += c
    if n == 0:
        return -np.inf, 0
    s_marg, k_marg = 0.0, 0
    for c in np.concatenate((rows, cols)):
        if c > 0:
            s_marg += c * np.log(c)
            k_marg += 1
    # Miller-Madow: (occupied joint cells - occupied cells of each marginal + 1) / 2n
    return np.log(n) - (s_marg - s_joint) / n - (k_joint - k_marg + 1) / (2 * n), n


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _cells_joint(
    cells: np.ndarray, rows: np.ndarray, grey_bins: np.ndarray, joint: np.ndarray
) -> None:  # pragma: no cover (compiled)
    """The joint histogram (flat ``joint``) of the points' ``rows`` and the grey bins of the pixels they fall
    in (``cells``: each one's flat index into ``grey_bins``). Points out of view (the last cell) are not counted:
    their column is dropped anyway.

    Why four partial histograms, point after point in turn: neighbouring points often fall in the same cell, and
    one histogram's increments of a cell wait for each other. With the skip, a pose of 30,000 points of which 40 %
    are in view took 38 µs here, now 17 (12,000 in view: 17 -> 12)."""
    outside = grey_bins.shape[0] - 1
    parts = np.zeros((4, joint.shape[0]), np.int32)
    n = rows.shape[0]
    for i in range(n // 4):
        for k in range(4):
            c = cells[4 * i + k]
            if c != outside:
                parts[k, rows[4 * i + k] + grey_bins[c]] += 1
    for i in range(n - n % 4, n):
        c = cells[i]
        if c != outside:
            parts[0, rows[i] + grey_bins[c]] += 1
    for j in range(joint.shape[0]):
        joint[j] = parts[0, j] + parts[1, j] + parts[2, j] + parts[3, j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pinhole_joint(
    M: np.ndarray,
    off: np.ndarray,
    pts: np.ndarray,
    rows: np.ndarray,
    seen: np.ndarray,
    grey_bins: np.ndarray,
    w: int,
    h: int,
    cells: np.ndarray,
    joint: np.ndarray,
) -> None:  # pragma: no cover (compiled)
    """The joint histogram (flat ``joint``) of the points ``pts``' (3, N) ``rows`` and the grey bins of the
    pixels they fall in: pixel = floor of (M p - off)'s dehomogenised x, y; behind the camera, outside the
    (h, w) image or not ``seen`` (e.g. hidden, by IPR), the out-of-view entry ``grey_bins[w * h]``. Two passes
    (``cells``: scratch, N long), the pixel picked by a select, not a branch: one pass, or a branch, took 4x as
    long."""
    outside = np.int32(w * h)
    wf, hf, w32 = np.float32(w), np.float32(h), np.int32(w)
    zero, eps = np.float32(0.0), np.float32(1e-6)
    # M and off in locals: read through the arrays, each write to ``cells`` might change them (4x slower)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = (
        M[0, 0],
        M[0, 1],
        M[0, 2],
        M[1, 0],
        M[1, 1],
        M[1, 2],
        M[2, 0],
        M[2, 1],
        M[2, 2],
    )
    o0, o1, o2 = off[0], off[1], off[2]
    for i in range(pts.shape[1]):
        x, y, z0 = pts[0, i], pts[1, i], pts[2, i]
        z = m20 * x + m21 * y + m22 * z0 - o2
        inv = np.float32(1.0) / z
        u = (m00 * x + m01 * y + m02 * z0 - o0) * inv
        v = (m10 * x + m11 * y + m12 * z0 - o1) * inv
        ok = (z > eps) & (u >= zero) & (v >= zero) & (u < wf) & (v < hf) & seen[i]
        cell = np.int32(min(max(v, zero), hf - 1)) * w32 + np.int32(min(max(u, zero), wf - 1))
        cells[i] = cell if ok else outside
    _cells_joint(cells, rows, grey_bins, joint)


@numba.njit(cache=True, nogil=True)
def _bin_image(grey: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Each pixel's bin: how many ``edges`` it exceeds (a pass per edge, each vectorised: 5x faster than numpy's
    comparisons and than a loop over edges per pixel)."""
    out[:] = 0
    for e in edges:
        for i in range(grey.shape[0]):
            out[i] += grey[i] > e


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pose_score(
    T: np.ndarray,
    K_floor: np.ndarray,
    origin: np.ndarray,
    pts: np.ndarray,
    rows: np.ndarray,
    seen: np.ndarray,
    grey_bins: np.ndarray,
    w: int,
    h: int,
    cells: np.ndarray,
    joint: np.ndarray,
    bins: int,
    min_points: int,
) -> tuple[float, int]:  # pragma: no cover (compiled)
    """:meth:`_Scorer.score` of the pose ``T`` (map <- camera) for a pinhole camera whose intrinsics, with the
    nearest pixel centre's half pixel, are ``K_floor``; ``pts`` (3, N) float32 relative to ``origin``."""
    M = np.empty((3, 3))  # K_floor @ R.T, as explicit sums: the same in every caller
    for i in range(3):
        for j in range(3):
            M[i, j] = K_floor[i, 0] * T[j, 0] + K_floor[i, 1] * T[j, 1] + K_floor[i, 2] * T[j, 2]
    t0, t1, t2 = T[0, 3] - origin[0], T[1, 3] - origin[1], T[2, 3] - origin[2]
    M32 = M.astype(np.float32)
    off = np.empty(3, np.float32)
    for i in range(3):
        off[i] = M[i, 0] * t0 + M[i, 1] * t1 + M[i, 2] * t2
    _pinhole_joint(M32, off, pts, rows, seen, grey_bins, w, h, cells, joint)
    mi, n = _mi_from_counts(joint.reshape(bins, bins + 1))
    if n < min_points:
        return -np.inf, n
    return mi, n


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _matmul4(A: np.ndarray, B: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """``A @ B`` for 4x4 poses, as explicit sums."""
    out = np.empty((4, 4))
    for i in range(4):
        for j in range(4):
            out[i, j] = A[i, 0] * B[0, j] + A[i, 1] * B[1, j] + A[i, 2] * B[2, j] + A[i, 3] * B[3, j]
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _tilt_penalty(T: np.ndarray, down: np.ndarray, weight: float) -> float:  # pragma: no cover (compiled)
    """``weight`` times |the pose's down - ``down``|^2 (the squared tilt error, for small ones): a Gaussian prior
    on the camera's roll and pitch (gravity.py), ``weight`` = ``gravity_weight`` / (2 sigma^2)."""
    return weight * ((T[2, 0] + down[0]) ** 2 + (T[2, 1] + down[1]) ** 2 + (T[2, 2] + down[2]) ** 2)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _ascent_kernel(
    best: np.ndarray,
    best_score: float,
    n_pts: int,
    moves: np.ndarray,
    K_floor: np.ndarray,
    origin: np.ndarray,
    pts: np.ndarray,
    rows: np.ndarray,
    grey_bins: np.ndarray,
    w: int,
    h: int,
    cells: np.ndarray,
    joint: np.ndarray,
    bins: int,
    min_points: int,
    down: np.ndarray,
    tilt_weight: float,
) -> tuple[np.ndarray, float, int, int]:  # pragma: no cover (compiled)
    """:meth:`_Search.ascend` in one call: ``moves`` (levels, pairs, 2, 4, 4), each level's moves at half the
    last's steps; a sweep over a level's pairs takes the first of each pair that raises the score, and a sweep
    that raises nothing moves on to the next level. Returns the pose, its score, its points and the poses scored.
    With ``tilt_weight`` > 0 each score, ``best_score`` too, is less ``tilt_weight`` times the squared distance between
    the pose's down (map -z in the camera) and ``down`` (:func:`_tilt_penalty`).
    Why compiled: in Python each pose scored cost as much again in calls as in the scoring, and held the GIL, so
    a frame's hypotheses could not be aligned side by side."""
    seen = np.ones(pts.shape[1], np.bool_)
    evaluations = 0
    level = 0
    if tilt_weight > 0:
        best_score -= _tilt_penalty(best, down, tilt_weight)
    while level < moves.shape[0]:
        improved = False
        for p in range(moves.shape[1]):
            for k in range(2):
                T = _matmul4(best, moves[level, p, k])
                s, n = _pose_score(T, K_floor, origin, pts, rows, seen, grey_bins, w, h, cells, joint, bins, min_points)
                if tilt_weight > 0:
                    s -= _tilt_penalty(T, down, tilt_weight)
                evaluations += 1
                if s > best_score:
                    best, best_score, n_pts, improved = T, s, n, True
                    break
        if not improved:
            level += 1
    return best, best_score, n_pts, evaluations


def reflectance_contrast(points: np.ndarray, reflectance: np.ndarray, neighbours: int) -> np.ndarray:
    """Each point's reflectance less the mean over its ``neighbours`` nearest ``points`` (itself included): the
    map's half of :func:`align_to_reflectance`'s ``local_contrast``. Computed on a whole submap (~25 ms for 18,000
    points), before the alignment thins it, so the neighbourhood is the map's own density."""
    pts = np.asarray(points, dtype=np.float64)
    refl = np.asarray(reflectance, dtype=np.float64)
    out = np.full(len(refl), np.nan)  # non-finite points or reflectances: NaN, which the alignment drops
    finite = np.isfinite(pts).all(axis=1) & np.isfinite(refl)
    pts, refl_f = pts[finite], refl[finite]
    k = min(int(neighbours), len(pts))
    if k >= 2:
        _, idx = cKDTree(pts).query(pts, k)
        out[finite] = refl_f - refl_f[idx].mean(axis=1)
    else:
        out[finite] = 0.0
    return out


def _equal_count_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges (bins - 1 inner ones) that split ``values`` into equally full bins: ``np.quantile``'s (linear
    interpolation), to the bit. Finite float32 values take :func:`_order_statistics` (~1 ms for an image's
    116k grey levels, where ``np.quantile``'s partition took 2-4 ms of every frame, session 35); others numpy."""
    q = np.linspace(0, 1, bins + 1)[1:-1]
    values = np.asarray(values)
    if values.dtype != np.float32 or values.ndim != 1 or len(values) < 2:
        return np.quantile(values, q)
    at = (len(values) - 1) * q  # numpy's "linear" method: the virtual index, its floor and the next, and the weight
    lower = np.floor(at).astype(np.int64)
    upper = np.minimum(lower + 1, len(values) - 1)
    gamma = at - lower
    ranks = np.unique(np.r_[lower, upper])
    stats = _order_statistics(values, ranks)
    if stats is None:  # NaN or infinity: numpy's own rules
        return np.quantile(values, q)
    a, b = stats[np.searchsorted(ranks, lower)], stats[np.searchsorted(ranks, upper)]
    diff = b - a  # float32, then float64 with the weight, as numpy's _lerp
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


@numba.njit(cache=True, nogil=True)
def _order_statistics(values: np.ndarray, ranks: np.ndarray) -> np.ndarray | None:  # pragma: no cover (compiled)
    """The ``ranks``-th smallest of the float32 ``values`` (``ranks`` sorted, distinct), or None when a value is
    not finite. A radix select: each float's bits as an unsigned key that sorts like the float, a histogram of the
    keys' top 16 bits, then only the buckets holding a wanted rank are gathered and sorted. Two passes over the
    values instead of a partition around each rank."""
    n = values.shape[0]
    bits = values.view(np.uint32)
    keys = np.empty(n, np.uint32)
    counts = np.zeros(65537, np.int64)
    for i in range(n):
        b = bits[i]
        if b & np.uint32(0x7F800000) == np.uint32(0x7F800000):  # exponent all ones: inf or NaN
            return None
        k = ~b if b & np.uint32(0x80000000) else b | np.uint32(0x80000000)
        keys[i] = k
        counts[(k >> np.uint32(16)) + 1] += 1
    for j in range(65536):  # counts[j] becomes the number of keys in buckets below j
        counts[j + 1] += counts[j]
    wanted = np.zeros(65536, np.bool_)
    bucket_of = np.empty(ranks.shape[0], np.int64)
    for r in range(ranks.shape[0]):
        j = np.searchsorted(counts, ranks[r], side="right") - 1
        bucket_of[r] = j
        wanted[j] = True
    fill = counts[:-1].copy()
    gathered = np.empty(n, np.uint32)  # the wanted buckets' keys, each bucket in its own slot range
    for i in range(n):
        j = keys[i] >> np.uint32(16)
        if wanted[j]:
            gathered[fill[j]] = keys[i]
            fill[j] += 1
    for j in np.unique(bucket_of):
        gathered[counts[j] : counts[j + 1]] = np.sort(gathered[counts[j] : counts[j + 1]])
    out = np.empty(ranks.shape[0], np.uint32)
    for r in range(ranks.shape[0]):
        k = gathered[ranks[r]]
        out[r] = k & np.uint32(0x7FFFFFFF) if k & np.uint32(0x80000000) else ~k
    return out.view(np.float32)


@dataclass(frozen=True, eq=False)
class AlignmentImage:
    """An image as the alignment scores it (:func:`prepare_alignment_image`): grey (or its local contrast),
    scaled by ``image_scale``, blurred, upsampled twice and cut into equal-count bins.

    Why apart from :func:`align_to_reflectance`: a single image's hypotheses are aligned several times a frame
    (``AlignmentConfig.retrieved_starts``), and preparing the image each time was a fifth of each alignment's time
    (one-off profile, models/README.md "Session 31"); prepared once, every alignment of the frame scores the same
    bins."""

    source: PinholeCamera  # the camera the image was taken with
    camera: PinholeCamera  # ... at the compared size (the searches' IPR)
    fine: PinholeCamera  # ... upsampled twice: where the bins live
    bins: np.ndarray  # (fine pixels + 1,) uint16: each pixel's grey bin, then the out-of-view bin (``cfg.bins``)
    settings: tuple  # what it was prepared with (:func:`_image_settings`)
    gravity: GravityPrior | None = None  # gravity as an IMU measured it when the image was taken


UPSAMPLE = 2  # the grey bins are looked up on the compared image upsampled this many times (_Scorer's docstring)


def _image_settings(cfg: AlignmentConfig, local_contrast: bool) -> tuple:
    """The :class:`AlignmentConfig` fields an :class:`AlignmentImage` depends on."""
    return (cfg.image_scale, cfg.blur_px, cfg.bins, local_contrast, cfg.contrast_blur_px if local_contrast else None)


def prepare_alignment_image(
    rgb: np.ndarray,
    camera: PinholeCamera,
    config: AlignmentConfig | None = None,
    local_contrast: bool = False,
    gravity: GravityPrior | None = None,
) -> AlignmentImage:
    """``rgb`` ((H, W, 3) or grey (H, W), as taken by ``camera``) prepared for :func:`align_to_reflectance` with
    ``config``'s image settings (``local_contrast``: the grey level less its blur, ``contrast_blur_px``); with
    ``gravity``, every alignment on it levels its starts and keeps near that tilt (``gravity_weight``)."""
    cfg = config or AlignmentConfig()
    img = np.asarray(rgb)
    if img.dtype not in (np.uint8, np.float32):
        img = img.astype(np.float32)
    w, h = max(round(camera.width * cfg.image_scale), 8), max(round(camera.height * cfg.image_scale), 8)
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)  # before the grey: 4x fewer
    if small.ndim == 3:  # the channels' mean, as numpy's mean(axis=2) sums and divides, at a tenth of its time
        grey = small[..., 0] + small[..., 1]
        for ch in range(2, small.shape[2]):
            grey += small[..., ch]
        grey /= np.float32(small.shape[2])
    else:
        grey = small
    if local_contrast:
        grey = grey - cv2.GaussianBlur(grey, (0, 0), cfg.contrast_blur_px)
    if cfg.blur_px > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), cfg.blur_px)
    grey = grey.astype(np.float32)
    fine = cv2.resize(grey, (w * UPSAMPLE, h * UPSAMPLE), interpolation=cv2.INTER_LINEAR)
    # one entry more than the image's pixels: the out-of-view "bin" (cfg.bins), looked up by points not in view
    bins = np.empty(fine.size + 1, np.uint16)
    _bin_image(fine.ravel(), _equal_count_bins(grey.ravel(), cfg.bins).astype(np.float32), bins[:-1])
    bins[-1] = cfg.bins
    bins.flags.writeable = False
    cam = resize_camera(camera, w, h)
    fine = resize_camera(camera, w * UPSAMPLE, h * UPSAMPLE)
    return AlignmentImage(camera, cam, fine, bins, _image_settings(cfg, local_contrast), gravity)


@dataclass(frozen=True, eq=False)
class AlignmentPoints:
    """Map points as the alignment compares them (:func:`prepare_alignment_points`): finite, evenly thinned to
    ``max_points``, float64, with their reflectance's equal-count bins.

    Why apart from :func:`align_to_reflectance`: a submap is aligned on several times a frame and frame after
    frame, and thinning and binning it each time was ~10 ms of a single image's hypotheses (one-off profile,
    models/README.md "Session 34")."""

    points: np.ndarray  # (N, 3) float64, read only
    reflectance_bins: np.ndarray  # (N,) int64, read only
    settings: tuple  # what it was prepared with (:func:`_points_settings`)


def _points_settings(cfg: AlignmentConfig) -> tuple:
    """The :class:`AlignmentConfig` fields an :class:`AlignmentPoints` depends on."""
    return (cfg.max_points, cfg.bins)


def _check_points_settings(prepared: AlignmentPoints, cfg: AlignmentConfig) -> None:
    """Refuse points prepared with other settings than ``cfg``'s (their thinning and bins would not match)."""
    if prepared.settings != _points_settings(cfg):
        raise ValueError("the prepared points were made with other settings (max_points, bins)")


def prepare_alignment_points(
    points: np.ndarray, reflectance: np.ndarray, config: AlignmentConfig | None = None
) -> AlignmentPoints:
    """``points`` (N, 3) and their ``reflectance`` (N,) prepared for :func:`align_to_reflectance` with
    ``config``'s point settings: non-finite points dropped, the rest thinned evenly to ``max_points``."""
    cfg = config or AlignmentConfig()
    pts, refl = np.asarray(points), np.asarray(reflectance)
    if not (np.isfinite(pts).all() and np.isfinite(refl).all()):  # (a map's points are: skip the copies)
        finite = np.isfinite(pts).all(1) & np.isfinite(refl)
        pts, refl = pts[finite], refl[finite]
    if len(pts) > cfg.max_points:
        keep = np.linspace(0, len(pts) - 1, cfg.max_points).astype(np.int64)
        pts, refl = pts[keep], refl[keep]
    pts, refl = pts.astype(np.float64), refl.astype(np.float64)
    refl_bins = np.searchsorted(_equal_count_bins(refl, cfg.bins), refl) if len(refl) else np.zeros(0, np.int64)
    for a in (pts, refl_bins):
        a.flags.writeable = False
    return AlignmentPoints(pts, refl_bins, _points_settings(cfg))


class _Scorer:
    """Scores poses: the MI between the points' reflectance and the grey level where each pose projects them.

    Points are kept in float32 relative to ``origin`` (a point near the camera), which keeps float32 exact to
    micrometres anywhere in a large map and halves the memory each evaluation streams. The grey level's bins are
    looked up, not computed: the blurred image is upsampled twice (bilinear) and binned once, so a pose costs one
    projection and one lookup per point (the nearest lookup on the finer grid is within a quarter of a compared
    pixel of bilinear interpolation at the point). Points out of view look up an extra grey "bin" past the last, a
    column of the joint histogram that is dropped. Projection, histogram and MI are compiled (numba): a scoring of
    ~12,000 points takes ~0.06 ms where numpy took 0.24 ms (session 23).
    """

    def __init__(self, image: AlignmentImage, origin: np.ndarray, cfg: AlignmentConfig) -> None:
        self.origin, self.cfg = np.ascontiguousarray(origin, dtype=np.float64), cfg
        self.bins = image.bins  # read only: every scorer of the image shares them
        self.camera = image.fine
        self.pinhole = not self.camera.has_distortion
        self.K_floor = self.camera.K.copy()  # + 0.5: the nearest pixel centre is the floor of the projection
        self.K_floor[:2, 2] += 0.5
        self.joint = np.empty(cfg.bins * (cfg.bins + 1), np.int64)
        self.gravity = image.gravity
        # the ascent's tilt prior: its measured down (zeros: none) and weight per squared unit of down's error
        self.down, self.tilt_weight = np.zeros(3), 0.0
        if image.gravity is not None and cfg.gravity_weight > 0:
            self.down = np.array(image.gravity.down_cam)
            self.tilt_weight = cfg.gravity_weight / (2.0 * image.gravity.sigma_rad**2)
        self.cells = np.empty(0, np.int32)  # scratch of score(), grown to the most points scored ...
        self.all_seen = np.empty(0, bool)  # ... and as many True
        self.evaluations = 0

    def at(self, origin: np.ndarray) -> _Scorer:
        """This scorer (the same image bins and scratch) for points relative to ``origin``, its count at 0."""
        other = copy.copy(self)
        other.origin, other.evaluations = np.ascontiguousarray(origin, dtype=np.float64), 0
        return other

    def scratch(self, n: int) -> np.ndarray:
        """The first ``n`` of the per-point scratch ``cells`` (``all_seen`` grows with it), grown to ``n`` if needed."""
        if len(self.cells) < n:
            self.cells = np.empty(n, np.int32)
            self.all_seen = np.ones(n, bool)
        return self.cells[:n]

    def rows(self, refl_bins: np.ndarray) -> np.ndarray:
        """Each point's row of the joint histogram (reflectance bin times the bins-plus-one grey columns)."""
        return (refl_bins * (self.cfg.bins + 1)).astype(np.int32)

    def score(
        self, T_map_cam: np.ndarray, pts_t: np.ndarray, rows: np.ndarray, seen: np.ndarray | None = None
    ) -> tuple[float, int]:
        """The MI at ``T_map_cam`` over the points ``pts_t`` (3, N float32, relative to ``origin``; with their
        :meth:`rows`) in view (and ``seen``, (N,) bool, when given), and how many they are (-inf when too few).

        Why ``seen`` rather than the points it selects: the forward search scores 25 poses each on its own
        visible subset of the same points, and gathering each subset cost twice what scoring it did."""
        self.evaluations += 1
        cells = self.scratch(len(rows))
        seen = self.all_seen[: len(rows)] if seen is None else seen
        cam, b = self.camera, self.cfg.bins
        if self.pinhole:  # rectified images (the common case): homogeneous pixels from one 3x3 product
            args = (self.K_floor, self.origin, pts_t, rows, seen, self.bins, cam.width, cam.height)
            return _pose_score(T_map_cam, *args, cells, self.joint, b, self.cfg.min_points)
        else:
            R, t = T_map_cam[:3, :3], T_map_cam[:3, 3] - self.origin
            pr = cam.project((R.T @ (pts_t.astype(np.float64) - t[:, None])).T)
            col, row = pr.pixel_index().T  # a pixel of the image wherever in_image
            cells = np.where(pr.in_image & seen, row * cam.width + col, cam.width * cam.height).astype(np.int32)
            _cells_joint(cells, rows, self.bins, self.joint)
        mi, n = _mi_from_counts(self.joint.reshape(b, b + 1))
        if n < self.cfg.min_points:
            return -np.inf, n
        return mi, n

    def reflectance_entropy(self) -> float:
        """The entropy (nats) of the reflectance bins of the points the last :meth:`score` counted (in view), from
        its joint histogram (reflectance rows; of the columns, the in-view image bins)."""
        b = self.cfg.bins
        counts = self.joint.reshape(b, b + 1)[:, :b].sum(axis=1).astype(np.float64)
        p = counts[counts > 0] / max(counts.sum(), 1.0)
        return float(-(p * np.log(p)).sum())


def compile_kernels() -> None:
    """Compile the scoring kernels now (numba; ~2 s the first time on a host, ~0.3 s from numba's on-disk cache),
    so that the first frame a node aligns is not the one that pays."""
    cam = PinholeCamera(8, 8, np.array([[4.0, 0.0, 4.0], [0.0, 4.0, 4.0], [0.0, 0.0, 1.0]]))
    cfg = AlignmentConfig(bins=2, min_points=1)
    scorer = _Scorer(
        prepare_alignment_image(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), cam, cfg), np.zeros(3), cfg
    )
    pts, rows = np.array([[0.0], [0.0], [1.0]], np.float32), scorer.rows(np.zeros(1, np.int64))
    score, n = scorer.score(np.eye(4), pts, rows)
    search = _Search(scorer, pts, rows, cam, IPRConfig(), np.zeros(3), cfg)
    search.ascend(np.eye(4), score, n, (pts, rows), coarse=True)
    _cells_joint(np.zeros(1, np.int32), np.zeros(1, np.int32), scorer.bins, scorer.joint)
    _in_frustum(pts, np.eye(3), np.zeros(3), np.zeros(6), np.asarray(cam.K, np.float64), cam.width, cam.height, 0.0)


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
    points: np.ndarray | None,
    reflectance: np.ndarray | None,
    T_map_cam: np.ndarray,
    config: AlignmentConfig | None = None,
    ipr: IPRConfig | None = None,
    local_contrast: bool = False,
    more_starts: Sequence[np.ndarray] = (),
    image: AlignmentImage | None = None,
    prepared: AlignmentPoints | None = None,
) -> AlignmentResult:
    """Refine ``T_map_cam`` so that the map points' ``reflectance`` best predicts the image's grey level.

    ``points`` (N, 3) map frame, near the camera (a submap); ``rgb`` (H, W, 3) or grey (H, W) as taken by
    ``camera``. The start pose is kept (``ok`` False, with a message) when too few points are in view.
    ``local_contrast``: compare the grey level less its blur (``contrast_blur_px``) with ``reflectance`` given as
    :func:`reflectance_contrast`'s (indoors: module docstring). ``more_starts``: search from these poses too, on
    the same image and points (prepared once), and return the result with the best score (the first that ran
    when none beats it). ``image``: ``rgb`` already prepared (:func:`prepare_alignment_image`, with this
    ``camera``, this ``config``'s image settings and ``local_contrast``), for several alignments of one frame;
    ``prepared``: ``points`` and ``reflectance`` already prepared (:func:`prepare_alignment_points`, with this
    ``config``), for alignments on one submap (then ``points`` and ``reflectance`` are not read).
    """
    cfg = config or AlignmentConfig()
    ipr = ipr or IPRConfig()
    start = np.asarray(T_map_cam, dtype=np.float64)
    if image is None:
        image = prepare_alignment_image(rgb, camera, cfg, local_contrast)
    elif image.settings != _image_settings(cfg, local_contrast) or image.source.key != camera.key:
        raise ValueError("the prepared image was made for another camera or other image settings")
    if prepared is None:
        if points is None or reflectance is None:
            raise ValueError("align_to_reflectance needs the points and their reflectance, or them prepared")
        prepared = prepare_alignment_points(points, reflectance, cfg)
    else:
        _check_points_settings(prepared, cfg)
    cam, pts = image.camera, prepared.points
    if len(pts) < cfg.min_points:
        return AlignmentResult(False, start, -np.inf, -np.inf, len(pts), 0, f"{len(pts)} map points near the pose")
    scorer = _Scorer(image, start[:3, 3], cfg)
    rows = scorer.rows(prepared.reflectance_bins)
    poses = (start, *(np.asarray(T, dtype=np.float64) for T in more_starts))
    return best_alignment([_align_from(pose, scorer.at(pose[:3, 3]), pts, rows, cam, ipr, cfg) for pose in poses])


MIN_ENTROPY = 0.1  # nats: a part's reflectance entropy is floored here before it divides (all alike: MI ~ 0 anyway)


def part_scores(
    image: AlignmentImage,
    prepared: AlignmentPoints,
    T_map_cam: np.ndarray,
    config: AlignmentConfig,
    ipr: IPRConfig,
    near_m: Sequence[float],
) -> np.ndarray:
    """The alignment's score (MI) at ``T_map_cam`` over parts of what it sees (IPR): the points less than each
    depth of ``near_m`` ahead, then those left of its optical axis and those right of it (``len(near_m) + 2``
    scores; -inf where a part has fewer than ``min_points``). ``image`` and ``prepared`` as
    :func:`align_to_reflectance` takes them.

    Why: the score over every point averages the view, and a wrong pose can fit most of it. A pose a few metres
    along the street, or at a look-alike place, still fits the far facades that fill most of the view; the near
    points move most in the image with the camera and fit only from the right place. A pose turned or moved toward
    one side fits that side's facade, not both (models/README.md "Session 37", "Session 38"). With
    ``config.parts_per_entropy`` each is the MI over its points' reflectance entropy, times log(bins)."""
    _check_points_settings(prepared, config)
    T = np.asarray(T_map_cam, dtype=np.float64)
    scorer = _Scorer(image, T[:3, 3], config)
    rows = scorer.rows(prepared.reflectance_bins)
    search = _Search.around(scorer, prepared.points, rows, image.camera, ipr, T[:3, 3], config)
    line = search.line(T, 0.0, config.forward_step_m)  # the pose alone, with what it sees
    if isinstance(line, str):
        return np.full(len(near_m) + 2, -np.inf)
    (pts_t, pts_rows), seen = line.points, line.seen[line.start]
    cam_xz = T[:3, [0, 2]].T @ pts_t.astype(np.float64)  # sideways and along the axis (points relative to the camera)
    parts = [cam_xz[1] < d for d in near_m] + [cam_xz[0] < 0, cam_xz[0] >= 0]
    scores = np.empty(len(parts))
    for k, part in enumerate(parts):
        scores[k] = scorer.score(T, pts_t, pts_rows, seen & part)[0]
        if config.parts_per_entropy and np.isfinite(scores[k]):
            scores[k] *= np.log(config.bins) / max(scorer.reflectance_entropy(), MIN_ENTROPY)
    return scores


def chance_mi(bins: int, points: np.ndarray | int) -> np.ndarray | float:
    """The MI (nats) that ``points`` samples of two independent variables show by chance in a ``bins`` x ``bins``
    histogram (Miller-Madow: (bins - 1)^2 / 2n). Why: a pose that sees few points (a wall up close) fits them by
    chance as well as the right pose fits many; 16 bins and 300 points give 0.375 nats, 20,000 points 0.006."""
    return (bins - 1) ** 2 / (2.0 * np.maximum(points, 1))


def scores_at(
    image: AlignmentImage, prepared: AlignmentPoints, poses: np.ndarray, config: AlignmentConfig, ipr: IPRConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The alignment's score (MI) at each of ``poses`` (B, 4, 4) over the points it sees (IPR, one batch) less its
    chance level (:func:`chance_mi`; -inf where it sees fewer than ``min_points``), and how many points each sees:
    to compare poses that see very different parts of a submap, as a grid of starts does. ``image`` and
    ``prepared`` as :func:`align_to_reflectance` takes them."""
    _check_points_settings(prepared, config)
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    scores, counts = np.full(len(poses), -np.inf), np.zeros(len(poses), np.int64)
    if len(poses) == 0 or len(prepared.points) < config.min_points:
        return scores, counts
    origin = poses[:, :3, 3].mean(axis=0)
    scorer = _Scorer(image, origin, config)
    rows = scorer.rows(prepared.reflectance_bins)
    search = _Search.around(scorer, prepared.points, rows, image.camera, ipr, origin, config)
    views = search.views(poses)
    # poses that share a rotation (a grid's heading) on the points that any of them can see, as a line's candidates
    _, group_of = np.unique(np.round(views[:, :3, :3], 12).reshape(len(poses), 9), axis=0, return_inverse=True)
    for group in (np.flatnonzero(group_of.ravel() == g) for g in range(int(group_of.max()) + 1)):
        local_t, group_rows = search.box_points(views[group])
        seen = visible_mask_t(local_t, views[group], image.camera, ipr)
        for k, vis in zip(group, seen, strict=True):
            score, counts[k] = scorer.score(poses[k], local_t, group_rows, vis)
            if np.isfinite(score):
                scores[k] = score - chance_mi(config.bins, counts[k])
    return scores, counts


def best_alignment(results: Sequence[AlignmentResult]) -> AlignmentResult:
    """The result with the best score among those that ran (the first when none beats it, or none ran): how
    :func:`align_to_reflectance` chooses between its starts, and callers that align the starts apart."""
    best = results[0]
    for res in results[1:]:
        if res.ok and (not best.ok or res.score > best.score):
            best = res
    return best


def _align_from(
    start: np.ndarray,
    scorer: _Scorer,
    pts: np.ndarray,
    rows: np.ndarray,
    cam: PinholeCamera,
    ipr: IPRConfig,
    cfg: AlignmentConfig,
) -> AlignmentResult:
    """:func:`align_to_reflectance`'s search from one ``start``, with ``scorer`` relative to its position, over
    the map points ``pts`` (N, 3 float64) and their ``rows`` of the joint histogram; levelled first when the
    image comes with gravity."""
    if scorer.gravity is not None:
        start = scorer.gravity.levelled(start)
    # 1. Along the optical axis, each candidate scored on what it sees (IPR for all candidates in one batch).
    search = _Search.around(scorer, pts, rows, cam, ipr, start[:3, 3], cfg)
    found = search.forward(start, cfg.forward_range_m, cfg.forward_step_m)
    if isinstance(found, str):
        return AlignmentResult(False, start, -np.inf, -np.inf, 0, scorer.evaluations, found)
    best, best_score, n_pts, view, start_score = found
    # 2. Coordinate ascent over x, y, z, the rotations, and the pivots (module docstring), on what the camera sees
    # from there (the same points the winning candidate was scored on).
    best, best_score, n_pts = search.ascend(best, best_score, n_pts, view)
    # 3. Again along the axis, near the pose found, and the ascent again from the best there. Why: the first search
    # ran with PnP's rotation and sideways offset, which bias where along the axis the score peaks; with those
    # corrected by the ascent, the peak moves to where the camera is.
    for _ in range(cfg.refine_rounds):
        line = search.line(best, cfg.refine_range_m, cfg.refine_step_m)
        found = line if isinstance(line, str) else search.best_of(line)
        if isinstance(line, str) or isinstance(found, str):  # (it sees what the ascent's end saw: enough)
            break
        if cfg.refine_spread_m > 0:
            best, best_score, n_pts = search.spread(line, found, cfg.refine_spread_m)
        else:
            best, best_score, n_pts, view, _ = found
            best, best_score, n_pts = search.ascend(best, best_score, n_pts, view)
    return AlignmentResult(True, best, float(best_score), float(start_score), n_pts, scorer.evaluations)


_Found = tuple[np.ndarray, float, int, tuple[np.ndarray, np.ndarray], float]
"""A search's best: pose, score, points scored, its view (the points' coordinates and rows), the start's score."""


@dataclass(frozen=True)
class _Line:
    """Candidates along the optical axis (:meth:`_Search.line`): poses, their offsets (m), what each sees (masks
    over ``points``), scores (-inf: too few points seen) and points scored, the start's index, and the points any
    candidate may see (coordinates (3, N) and rows, as :func:`_view` gives them)."""

    poses: np.ndarray
    offsets: np.ndarray
    seen: np.ndarray
    scores: np.ndarray
    n_seen: np.ndarray
    start: int
    points: tuple[np.ndarray, np.ndarray]

    def view(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The coordinates and rows of the points candidate ``k`` sees."""
        return _view(*self.points, self.seen[k])


def _view(local_t: np.ndarray, rows: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coordinates ((3, N) ``local_t``) and ``rows`` of the points ``seen`` (a mask): what an ascent scores on.

    Why ``compress``: it keeps each coordinate contiguous (``local_t[:, seen]`` interleaves them, column-major), and
    the scoring kernel vectorises over contiguous rows only: a pose of 12,000 points took 70 µs, now 37."""
    return np.compress(seen, local_t, axis=1), rows[seen]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _in_frustum(
    local_t: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    box: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    margin: float,
) -> np.ndarray:  # pragma: no cover (compiled)
    """Mask of the (3, N) points that one of the cameras ``R``, ``t + o`` (camera from points, float64), ``o`` in
    ``box`` (lower x, y, z, then upper, in the camera's frame; zeros: the one camera), with intrinsics ``K`` (its
    principal point in the image) has in front of it and within ``margin`` pixels of its (``height``, ``width``)
    image (pixel centres at integers: ``PinholeCamera.project``'s convention). Each test is made at the deepest the
    point can be (``z`` + upper z), where the image's window, seen from the point, is widest; the offsets across
    and up slide that window, so a point is kept where its interval of positions meets it. Points within a
    centimetre of the camera's plane are kept whatever their pixel: float32 projections of them (IPR's) are too
    rough to rule them out."""
    X, Y, Z = local_t[0], local_t[1], local_t[2]
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    lo, hi_u, hi_v = -0.5 - margin, width - 0.5 + margin, height - 0.5 + margin
    out = np.empty(X.shape[0], np.bool_)
    for i in range(X.shape[0]):
        x, y, z = np.float64(X[i]), np.float64(Y[i]), np.float64(Z[i])
        c0 = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]
        c1 = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]
        d = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2] + box[5]
        sheared = (skew * (c1 + box[1]), skew * (c1 + box[4]))  # (u = (fx x + skew y) / d + cx)
        across_hi, across_lo = fx * (c0 + box[3]) + max(sheared), fx * (c0 + box[0]) + min(sheared)
        across = (across_hi >= d * (lo - cx)) & (across_lo < d * (hi_u - cx))
        up = (fy * (c1 + box[4]) >= d * (lo - cy)) & (fy * (c1 + box[1]) < d * (hi_v - cy))
        out[i] = (d > -0.01) & ((d < 0.01) | (across & up))
    return out


class _Search:
    """The alignment's two moves over one frame's scorer and points: a search along the optical axis and a
    coordinate ascent."""

    def __init__(
        self,
        scorer: _Scorer,
        local_t: np.ndarray,
        rows: np.ndarray,
        cam: PinholeCamera,
        ipr: IPRConfig,
        origin: np.ndarray,
        cfg: AlignmentConfig,
    ) -> None:
        self.scorer, self.cfg, self.cam, self.ipr = scorer, cfg, cam, ipr
        self.local_t, self.rows = local_t, rows  # (3, N) float32, each coordinate contiguous; the rows of each
        self.shift = make_T(np.eye(3), -origin)  # map -> the frame of ``local_t``

    @classmethod
    def around(
        cls,
        scorer: _Scorer,
        pts: np.ndarray,
        rows: np.ndarray,
        cam: PinholeCamera,
        ipr: IPRConfig,
        origin: np.ndarray,
        cfg: AlignmentConfig,
    ) -> _Search:
        """A search over the map points ``pts`` (N, 3 float64) and their ``rows``, kept in float32 relative to
        ``origin`` (the scorer's) as (3, N), each coordinate contiguous, as the scorer and IPR take them (each
        coordinate's difference in float64, then rounded, as ``(pts - origin).astype(np.float32)`` rounds it)."""
        local_t = np.empty((3, len(pts)), np.float32)
        for c in range(3):
            np.subtract(pts[:, c], origin[c], out=local_t[c], casting="same_kind")
        return cls(scorer, local_t, rows, cam, ipr, origin, cfg)

    def views(self, poses: np.ndarray) -> np.ndarray:
        """(B, 4, 4): each of ``poses`` (B, 4, 4 map from camera) as camera from the points' frame, what IPR
        takes."""
        R_t = np.ascontiguousarray(poses[:, :3, :3].transpose(0, 2, 1))
        views = np.repeat(np.eye(4)[None], len(poses), axis=0)
        views[:, :3, :3] = R_t
        views[:, :3, 3] = -np.einsum("kij,kj->ki", R_t, poses[:, :3, 3] + self.shift[:3, 3])
        return views

    def forward(self, start: np.ndarray, range_m: float, step_m: float) -> _Found | str:
        """The best of ``start`` moved along its optical axis by multiples of ``step_m`` up to ``range_m`` either
        way, each scored on the points it sees: (pose, score, points, its view's points and rows, ``start``'s
        score), or why not (too few points in view)."""
        line = self.line(start, range_m, step_m)
        return line if isinstance(line, str) else self.best_of(line)

    def line(self, start: np.ndarray, range_m: float, step_m: float) -> _Line | str:
        """``start`` moved along its optical axis by multiples of ``step_m`` up to ``range_m`` either way, each
        scored on the points it sees (-inf: it sees too few), or why not (too few points in view from ``start``)."""
        cfg, scorer = self.cfg, self.scorer
        offsets = symmetric_offsets(range_m, step_m)
        n_fwd = len(offsets) // 2  # (the start itself)
        cands = moved_in_view(start, offsets)  # start moved along its own z axis, at once
        views = self.views(cands)
        points = self._line_points(views[0])
        seen = visible_mask_t(points[0], views, self.cam, self.ipr)
        counts = seen.sum(1)
        base = int(counts[n_fwd])
        if base < cfg.min_points:
            return f"{base} map points in view"
        scores, n_seen = np.full(len(cands), -np.inf), np.zeros(len(cands), np.int64)
        for k, (T, vis, n) in enumerate(zip(cands, seen, counts, strict=True)):
            # a camera inside or just in front of a wall sees few points, which a chance alignment fits best
            if k == n_fwd or n >= cfg.min_view_ratio * base:
                scores[k], n_seen[k] = scorer.score(T, *points, vis)
        return _Line(cands, offsets, seen, scores, n_seen, n_fwd, points)

    LINE_MARGIN_PX = 4.0  # (float32 rounding in IPR moves a point by ~1e-3 px)

    def _line_points(self, rear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The points ((3, N), relative to the origin) and their rows that a line of candidates can see, given the
        view (camera from the points' frame) of the one farthest back.

        Why: the candidates differ only along their common optical axis, so a point any of them has in front and
        in its image, the one farthest back has there too (nearer the image centre, when the principal point is in
        the image). The others are in no candidate's depth image: IPR and the scores over the rest are the same, bit
        for bit, for half the points
        (profile of drive 900's single images: IPR 3.0 -> 2.1 ms a line, a candidate's score 70 -> 43 µs)."""
        return self.box_points(rear[None])

    def box_points(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_line_points` for ``views`` (B, 4, 4, camera from the points' frame) that share a rotation and
        differ in position only (a grid's poses at one heading): the points any of them has in front and in its
        image. All of them where the rotations differ (beyond 1e-12) or the test does not hold (a camera with
        distortion, or its principal point outside the image).

        Why: the 81 positions of the indoor Manhattan grid at one heading may see 35 % of the submap's points on
        average (4-84 %); the rest enter no depth image and no score, so IPR and the scores over the points kept are
        the same, bit for bit (a viewpoint's grid, 243 poses: 17.3 -> 11.5 ms, drive 901)."""
        cam, K = self.cam, self.cam.K
        R = views[:, :3, :3]
        in_image = -0.5 <= K[0, 2] < cam.width - 0.5 and -0.5 <= K[1, 2] < cam.height - 0.5
        if cam.has_distortion or not in_image or np.abs(R - R[0]).max() > 1e-12:
            return self.local_t, self.rows
        offsets = views[:, :3, 3] - views[0, :3, 3]  # each camera's frame less the first's (the same axes)
        box = np.concatenate([offsets.min(axis=0), offsets.max(axis=0)])
        R0, t0 = np.ascontiguousarray(R[0]), np.ascontiguousarray(views[0, :3, 3])
        K64 = np.asarray(K, np.float64)
        keep = _in_frustum(self.local_t, R0, t0, box, K64, cam.width, cam.height, self.LINE_MARGIN_PX)
        if keep.all():
            return self.local_t, self.rows
        return _view(self.local_t, self.rows, keep)

    def best_of(self, line: _Line) -> _Found | str:
        """:meth:`forward`'s answer from a :meth:`line` (the start wins ties)."""
        start_score = float(line.scores[line.start])
        k_best = line.start
        for k in range(len(line.poses)):
            if line.scores[k] > line.scores[k_best]:
                k_best = k
        best_score = float(line.scores[k_best])
        if not np.isfinite(best_score):
            return "too few points in view"
        return line.poses[k_best], best_score, int(line.n_seen[k_best]), line.view(k_best), start_score

    def spread(self, line: _Line, found: _Found, spread_m: float) -> tuple[np.ndarray, float, int]:
        """The ascent from several of the ``line``'s candidates (``refine_spread_m``): best-scored first, skipping
        those within ``spread_m`` along the axis of where an earlier ascent ended, each with coarse steps; the end
        that scores best on the points it sees (not those its start saw) gets the fine steps; ``found`` is the
        line's best (:meth:`best_of`), whose ascent is the answer when no end sees enough points."""
        axis, origin = line.poses[line.start][:3, 2], line.poses[line.start][:3, 3]
        ends: list[tuple[float, _Found]] = []  # (position along the axis, the end scored on what it sees)
        for k in np.argsort(-line.scores, kind="stable"):
            if not np.isfinite(line.scores[k]) or any(abs(line.offsets[k] - at) < spread_m for at, _ in ends):
                continue
            view = line.view(k)
            end, _, _ = self.ascend(line.poses[k], float(line.scores[k]), int(line.n_seen[k]), view, coarse=True)
            here = self.forward(end, 0.0, 1.0)  # scored on what it sees
            if isinstance(here, str):
                continue
            ends.append((float((end[:3, 3] - origin) @ axis), here))
        best, best_score, n_pts, view, _ = max((e[1] for e in ends), key=lambda f: f[1]) if ends else found
        return self.ascend(best, best_score, n_pts, view)

    def ascend(
        self,
        best: np.ndarray,
        best_score: float,
        n_pts: int,
        view: tuple[np.ndarray, np.ndarray],
        coarse: bool = False,
    ) -> tuple[np.ndarray, float, int]:
        """Coordinate ascent from ``best`` (scored ``best_score`` on ``n_pts`` points) on ``view``'s points (their
        coordinates and rows): the pose it ends at, its score and points. ``coarse``: stop at
        ``refine_spread_coarse`` times the minimum steps."""
        cfg, scorer = self.cfg, self.scorer
        stop = cfg.refine_spread_coarse if coarse else 1.0
        moves = _ascent_move_levels(
            cfg.step_m, cfg.step_deg, cfg.pivot_depths_m, stop * cfg.min_step_m, stop * cfg.min_step_deg
        )
        if not scorer.pinhole:  # a camera with distortion: scored in Python (_Scorer.score), the same sweeps
            return self.ascend_python(best, best_score, n_pts, view, moves)
        pts_t, rows = view
        cam = scorer.camera
        start = np.ascontiguousarray(best, dtype=np.float64)
        scoring = (scorer.K_floor, scorer.origin, pts_t, rows, scorer.bins, cam.width, cam.height)
        scratch = (scorer.scratch(len(rows)), scorer.joint, cfg.bins, cfg.min_points)
        scratch += (scorer.down, scorer.tilt_weight)  # the tilt prior (none: weight 0)
        best, best_score, n_pts, evaluations = _ascent_kernel(start, best_score, n_pts, moves, *scoring, *scratch)
        scorer.evaluations += evaluations
        return best, best_score, n_pts

    def ascend_python(
        self,
        best: np.ndarray,
        best_score: float,
        n_pts: int,
        view: tuple[np.ndarray, np.ndarray],
        moves: np.ndarray,
    ) -> tuple[np.ndarray, float, int]:
        """:func:`_ascent_kernel`'s sweeps over ``moves`` (:func:`_ascent_move_levels`) with :meth:`_Scorer.score`
        (any camera)."""
        down, weight = self.scorer.down, self.scorer.tilt_weight
        if weight > 0:
            best_score -= _tilt_penalty(best, down, weight)
        for level in moves:
            improved = True
            while improved:  # sweeps at this level until one raises nothing
                improved = False
                for pair in level:
                    for move in pair:
                        T = _matmul4(best, move)
                        s, n = self.scorer.score(T, *view)
                        if weight > 0:
                            s -= _tilt_penalty(T, down, weight)
                        if s > best_score:
                            best, best_score, n_pts, improved = T, s, n, True
                            break
        return best, best_score, n_pts


@functools.lru_cache(maxsize=64)
def _ascent_move_levels(
    step_m: float, step_deg: float, pivot_depths_m: tuple[float, ...], min_m: float, min_deg: float
) -> np.ndarray:
    """The ascent's moves (levels, pairs, 2, 4, 4), each both ways (``best @ move`` is :func:`_moved`'s), at scales
    1, 1/2, ... of its first steps while either step is at least its minimum, read only. Made once per process:
    every ascent takes the same ones, and making them (~280 small rotations a frame) was ~6 ms of a single image's
    hypotheses (one-off profile, session 31)."""
    directions = _ascent_directions(step_m, np.radians(step_deg), pivot_depths_m)
    levels, scale = [], 1.0
    while scale * step_m >= min_m or scale * step_deg >= min_deg:
        levels.append([[_moved(np.eye(4), sign * d) for sign in (scale, -scale)] for d in directions])
        scale /= 2
    out = np.array(levels) if levels else np.empty((0, len(directions), 2, 4, 4))
    out.flags.writeable = False
    return out
