"""Fusing single-image localizations over time through odometry: a filter on the ``map -> odom`` transform.

Why: one image fixes the camera well across its optical axis and poorly along it (models/README.md: the error is
mostly depth), and after retrieval each estimate leans toward the submap viewpoint it started from, so along a
drive the errors change from frame to frame. Odometry (``odom -> base_link``) is smooth and locally accurate. So the
quantity to estimate is the one that REP-105 publishes anyway, ``T_map_odom``: every localization gives one
measurement of it (``T_map_base · T_odom_base⁻¹``), which is constant while odometry does not drift, and averaging
them cancels what varies between frames.

- State: ``T_map_odom`` and its 6×6 covariance in ``pnp.py``'s convention (ROS order ``x, y, z, roll, pitch, yaw``;
  the position moves in the map frame, the rotation is a small rotation about the map's fixed axes).
- Prediction: odometry drifts in proportion to the distance driven (``drift_m_per_m``, ``drift_deg_per_m``, about
  the vehicle), which moves the best ``T_map_odom``; the lever from the odom origin to the vehicle turns a heading
  drift into a position one. A small per-update floor keeps the filter from believing itself exactly.
- Update: an extended Kalman update with the measurement's covariance, when its Mahalanobis distance passes the
  χ² gate (``gate_chi2``, 6 degrees of freedom).
- Heavy tails (``robust_chi2``): a localization is mostly within its covariance, but now and then metres off along
  the optical axis with a degree or two of heading, still inside the gate (a tracked frame's alignment that found a
  look-alike a little ahead; models/README.md "Session 32"). A Gaussian update takes each such one in at full weight,
  and a run of them drags the pose 0.2-1 m off, which the good localizations after them, each weighted as little as
  the calibrated covariance says, pull back only slowly. So the update weights a localization by ``robust_chi2 /
  d²`` where its Mahalanobis distance d² exceeds ``robust_chi2`` (a Cauchy-like weight): its covariance is
  inflated by ``d² / robust_chi2``. The node's loop within 0.25 m / 2°: nine outdoor drives 86.5 -> 90.7 %, eight
  indoor 89.1 -> 91.2 %, within 0.5 m / 5° the same (``bench/fusion.py --robust-chi2``).
- Errors correlated in time: the localizations of nearby frames err alike (the same submap viewpoint, the same
  look-alike patches; measured on the held-out drives, models/README.md "Session 18": correlation 0.4-0.75 between
  frames 0.2-1 m apart, about 0.7 along the optical axis, gone after 2-3 m). The update treats each one as
  independent, which is what the gain and the gate were tuned with; the covariance the filter publishes does not:
  it also carries the correlated part (``correlated_share`` of each localization's covariance, decaying as
  ``exp(-path / correlation_length_m)``), tracked as the cross-covariance between the estimate's error and that
  process (a "consider" covariance, the exact covariance of this estimator's error under that model). A vehicle
  standing still gains no confidence from the same image seen again.
- Localizations made from the filter's own pose (the node tracks from it): correlated with the estimate by an unknown
  amount, so with ``intersect_own_prior`` they are fused by covariance intersection, which stays consistent for any
  correlation; the Kalman update would take each as new evidence and the covariance would collapse on whatever pose
  the filter holds (models/README.md "Session 20": better worst cases and indoors, worse where the lock is right).
- Outliers and re-localization: several hypotheses. Each localization goes to the hypothesis it fits best (the
  smallest Mahalanobis distance within the gate); one that fits none starts a new hypothesis. The first hypothesis
  that ``min_updates`` localizations went to is published. Another takes over once ``switch_after`` localizations
  have gone to it since one last went to the published hypothesis: a vehicle that was moved (kidnapped) is found
  again after that many, while gross errors (a wrong submap), which do not agree with each other, never take over.
  A rival near the published hypothesis can take over too when later localizations fit it better, which is how an
  early hypothesis that was off gets replaced (``bench/fusion.py``; preferring the published one whenever it fits
  was tried: outdoor 900 fell from 68 % to 15 % within 0.5 m / 5°, the first hypothesis staying 1-1.5 m off).

ROS-free; the node feeds it results and odometry (:mod:`ep2p_loc_ros.ros.node`) and ``bench/fusion.py`` measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .geometry import invert, lever_jacobian, pose_add, pose_difference

__all__ = ["FusionConfig", "FusionUpdate", "MapOdomFilter"]


@dataclass(frozen=True)
class FusionConfig:
    """Parameters of :class:`MapOdomFilter` (node parameters ``fusion.<field>``)."""

    drift_m_per_m: float = 0.02  # odometry position drift: standard deviation per metre driven (each axis)
    drift_deg_per_m: float = 0.05  # odometry rotation drift: degrees per metre driven (each axis)
    floor_m: float = 0.02  # added to the position std at every update: measurements of one scene are not independent
    floor_deg: float = 0.05  # ... and to the rotation std
    gate_chi2: float = 22.46  # a measurement farther than this (Mahalanobis², 6 dof; 99.9 %) is not of this hypothesis
    min_updates: int = 3  # localizations that must agree before the first pose is published
    switch_after: int = 5  # localizations going to a rival (none to the published one meanwhile) before it takes over
    max_hypotheses: int = 5  # the published one and rivals; the rival with the least recent support goes
    correlation_length_m: float = 2.0  # localization errors decorrelate over this much path (0: independent)
    correlated_share: float = 1.0  # share of each localization's covariance that is correlated in time (0..1)
    intersect_own_prior: bool = False  # fuse localizations made from the filter's own pose by covariance intersection
    # > 0: a localization that fits a hypothesis at a Mahalanobis² d² above this counts d²/robust_chi2 times less
    # (its covariance inflated so): the localizations' errors have heavy tails (module docstring)
    robust_chi2: float = 4.0

    def __post_init__(self) -> None:
        for name in ("drift_m_per_m", "drift_deg_per_m", "floor_m", "floor_deg"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"fusion.{name} must be >= 0, got {getattr(self, name)}")
        if not self.floor_m > 0 or not self.floor_deg > 0:
            raise ValueError("fusion.floor_m and fusion.floor_deg must be > 0 (else the covariance can collapse)")
        if not self.gate_chi2 > 0:
            raise ValueError(f"fusion.gate_chi2 must be > 0, got {self.gate_chi2}")
        for name in ("min_updates", "switch_after"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"fusion.{name} must be >= 1, got {getattr(self, name)}")
        if not self.correlation_length_m >= 0:
            raise ValueError(f"fusion.correlation_length_m must be >= 0, got {self.correlation_length_m}")
        if not self.robust_chi2 >= 0:
            raise ValueError(f"fusion.robust_chi2 must be >= 0 (0: off), got {self.robust_chi2}")
        if not 0 <= self.correlated_share <= 1:
            raise ValueError(f"fusion.correlated_share must be in [0, 1], got {self.correlated_share}")
        if int(self.max_hypotheses) < 1:
            raise ValueError(f"fusion.max_hypotheses must be >= 1, got {self.max_hypotheses}")


@dataclass(eq=False)  # compared by identity
class _Hypothesis:
    T: np.ndarray  # T_map_odom
    P: np.ndarray  # its covariance at its last update
    T_odom_base: np.ndarray  # the odometry when it was last brought up to date
    P_pub: np.ndarray  # the covariance it publishes: P with the localizations' errors correlated in time
    Y: np.ndarray  # cross-covariance of its error with the (unit) correlated error process at its last update
    path_m: float = 0.0  # metres driven since its last update (the odometry's drift grows with them)
    updates: int = 1  # localizations it holds
    recent: int = 1  # ... of which since the published hypothesis last took one


@dataclass(frozen=True)
class FusionUpdate:
    """What one measurement did (for logs and diagnostics)."""

    accepted: bool  # it joined the published hypothesis
    mahalanobis2: float  # its distance² to the hypothesis published before it (inf: none yet)
    hypotheses: int
    published: bool  # the filter has a hypothesis to publish after this measurement
    reason: str = field(default="ok")
    weight: float = 0.0  # how much it counted: 1 in full, robust_chi2 / d² when down-weighted, 0 when not taken in


def _finite_pose(T: np.ndarray, what: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"fusion needs a finite 4x4 {what}")
    return T


class MapOdomFilter:
    """Multi-hypothesis EKF on ``T_map_odom`` (see the module docstring). Feed it with :meth:`update` (and
    :meth:`predict` for odometry without a localization); read it with :meth:`pose` or :meth:`map_odom`."""

    def __init__(self, config: FusionConfig | None = None) -> None:
        self.config = config or FusionConfig()
        self._hyps: list[_Hypothesis] = []
        self._published: _Hypothesis | None = None

    def reset(self) -> None:
        self._hyps = []
        self._published = None

    @property
    def hypotheses(self) -> int:
        return len(self._hyps)

    @property
    def published_updates(self) -> int:
        """Localizations the published hypothesis holds (0 before one is published)."""
        return 0 if self._published is None else self._published.updates

    def predict(self, T_odom_base: np.ndarray) -> None:
        """Bring every hypothesis up to the odometry ``T_odom_base``: add the path driven since the last call.

        Call it with each odometry reading, localized or not (the node does, per image): the drift grows with the
        path, which the straight line between two far-apart readings would underestimate.
        """
        T_odom_base = _finite_pose(T_odom_base, "odometry pose")
        for h in self._hyps:
            h.path_m += float(np.linalg.norm(T_odom_base[:3, 3] - h.T_odom_base[:3, 3]))
            h.T_odom_base = T_odom_base

    def _drift(self, h: _Hypothesis, T_odom_base: np.ndarray, path_m: float) -> np.ndarray:
        """The covariance ``path_m`` metres of odometry drift add to ``h``, with the vehicle at ``T_odom_base``.

        The drift is about the vehicle, with a standard deviation proportional to the path (odometry errors are
        mostly scale and heading biases, so they add up rather than average out); the lever from the odom origin
        to the vehicle turns a heading drift into a move of ``T_map_odom``'s origin.
        """
        cfg = self.config
        std_m = cfg.drift_m_per_m * path_m
        std_r = math.radians(cfg.drift_deg_per_m * path_m)
        Q = np.diag([std_m**2] * 3 + [std_r**2] * 3)
        J = lever_jacobian(-(h.T[:3, :3] @ T_odom_base[:3, 3]))
        return J @ Q @ J.T

    def _correlated(self, Cz: np.ndarray) -> np.ndarray:
        """``S`` with ``S Sᵀ`` the correlated part of a measurement covariance ``Cz`` (symmetric square root)."""
        w, V = np.linalg.eigh(self.config.correlated_share * Cz)
        return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T

    def _decay(self, path_m: float) -> float:
        """Correlation left between localization errors ``path_m`` apart."""
        L = self.config.correlation_length_m
        return math.exp(-path_m / L) if L > 0 else 0.0

    def update(
        self, T_map_base: np.ndarray, cov_base: np.ndarray, T_odom_base: np.ndarray, own_prior: bool = False
    ) -> FusionUpdate:
        """One localization (the vehicle's pose in the map and its 6×6 covariance) with the odometry at its stamp.

        ``own_prior``: it was made from this filter's pose (tracking), so its error is correlated with the filter's by
        an unknown amount; with ``intersect_own_prior`` it is fused by covariance intersection, which stays
        consistent whatever that correlation is (the covariance never shrinks below what either side says).
        """
        T_map_base = _finite_pose(T_map_base, "pose")
        T_odom_base = _finite_pose(T_odom_base, "odometry pose")
        cov = np.asarray(cov_base, dtype=np.float64)
        if cov.shape != (6, 6) or not np.isfinite(cov).all():
            raise ValueError("fusion needs a finite 6x6 covariance")
        cov = 0.5 * (cov + cov.T)
        if np.linalg.eigvalsh(cov)[0] <= 0:
            raise ValueError("fusion needs a positive definite covariance")
        cfg = self.config
        z = T_map_base @ invert(T_odom_base)  # the measured T_map_odom ...
        J = lever_jacobian(z[:3, 3] - T_map_base[:3, 3])  # ... and its covariance, moved to the odom origin
        Cz = J @ cov @ J.T
        floor = np.diag([cfg.floor_m**2] * 3 + [math.radians(cfg.floor_deg) ** 2] * 3)
        self.predict(T_odom_base)
        before = self._published
        d2_published, best_d2, chosen, added = math.inf, math.inf, None, floor
        for h in self._hyps:
            grown = self._drift(h, T_odom_base, h.path_m) + floor
            y = pose_difference(z, h.T)
            d2 = float(y @ np.linalg.solve(h.P + grown + Cz, y))
            if h is before:
                d2_published = d2
            if d2 < cfg.gate_chi2 and d2 < best_d2:
                best_d2, chosen, added = d2, h, grown
        weight = 0.0 if chosen is None else 1.0
        if chosen is not None and best_d2 > cfg.robust_chi2 > 0:
            weight = cfg.robust_chi2 / best_d2  # heavy tails: the farther within the gate, the less it counts
            Cz = Cz / weight
        if chosen is None:
            # room for a new hypothesis: the rival with the least recent support goes (never the published one)
            rivals = [h for h in self._hyps if h is not self._published]
            if len(self._hyps) >= int(cfg.max_hypotheses) and rivals:
                self._hyps.remove(min(rivals, key=lambda h: (h.recent, h.updates)))
            if len(self._hyps) < int(cfg.max_hypotheses):
                self._hyps.append(_Hypothesis(z, Cz + floor, T_odom_base, Cz + floor, self._correlated(Cz)))
                reason = "new hypothesis"
            else:
                reason = "fits no hypothesis"
        elif own_prior and cfg.intersect_own_prior:
            self._intersect(chosen, z, Cz, added)
            reason = "ok"
        else:
            prior = chosen.P + added
            K = np.linalg.solve(prior + Cz, prior).T  # P S⁻¹ (both symmetric)
            chosen.T = pose_add(chosen.T, K @ pose_difference(z, chosen.T))
            IK = np.eye(6) - K
            chosen.P = IK @ prior @ IK.T + K @ Cz @ K.T  # Joseph form: stays symmetric positive definite
            # The same estimate's error when the localizations' errors are correlated: e = (I-K) e⁻ + K (S u + n),
            # u the unit correlated process, whose correlation with the estimate's error decays with the path.
            S = self._correlated(Cz)
            Y = self._decay(chosen.path_m) * chosen.Y
            cross = IK @ Y @ S @ K.T
            P_pub = IK @ (chosen.P_pub + added) @ IK.T + K @ Cz @ K.T + cross + cross.T
            chosen.P_pub = 0.5 * (P_pub + P_pub.T)
            chosen.Y = IK @ Y + K @ S
            reason = "ok"
        if chosen is not None:
            chosen.path_m = 0.0
            chosen.updates += 1
            chosen.recent += 1
        self._choose_published()
        # The rivals' runs of support end when the published hypothesis takes a localization, also one that just took
        # over (else the one it replaced, its run still counted, takes over again at its next localization: the pose
        # flips between two places); not at the first publication, which interrupted no run.
        if chosen is not None and chosen is self._published and before is not None:
            for h in self._hyps:
                if h is not chosen:
                    h.recent = 0
        if chosen is not None and chosen is not self._published:
            reason = "supports another hypothesis"
        return FusionUpdate(
            accepted=chosen is not None and chosen is self._published,
            mahalanobis2=d2_published,
            hypotheses=len(self._hyps),
            published=self._published is not None,
            reason=reason,
            weight=weight,
        )

    def _intersect(self, h: _Hypothesis, z: np.ndarray, Cz: np.ndarray, added: np.ndarray) -> None:
        """Covariance intersection of ``h`` (grown by ``added``) with the measurement ``z`` (covariance ``Cz``):
        ``P⁻¹ = ω A⁻¹ + (1 - ω) Cz⁻¹`` with ω minimising det P, applied to the published covariance (which the gate
        and the node use) and the filter's own alike, and the state moved by that weighting."""
        A = h.P_pub + added
        Ai, Ri = np.linalg.inv(A), np.linalg.inv(Cz)
        best = None
        for w in np.linspace(0.02, 0.98, 49):
            P = np.linalg.inv(w * Ai + (1 - w) * Ri)
            d = np.linalg.slogdet(P)[1]
            if best is None or d < best[0]:
                best = (d, w, P)
        _, w, P = best
        K = (1 - w) * P @ Ri
        h.T = pose_add(h.T, K @ pose_difference(z, h.T))
        h.P_pub = 0.5 * (P + P.T)
        own = np.linalg.inv(w * np.linalg.inv(h.P + added) + (1 - w) * Ri)
        h.P = 0.5 * (own + own.T)
        h.Y = (np.eye(6) - K) @ (self._decay(h.path_m) * h.Y) + K @ self._correlated(Cz)

    def _choose_published(self) -> None:
        """The first hypothesis with ``min_updates``; later, a rival with ``switch_after`` since the published
        one last agreed with a localization (the most recently supported rival, if several)."""
        cfg = self.config
        if self._published is None:
            ready = [h for h in self._hyps if h.updates >= int(cfg.min_updates)]
            self._published = max(ready, key=lambda h: h.updates, default=None)
            return
        rivals = [h for h in self._hyps if h is not self._published and h.recent >= int(cfg.switch_after)]
        if rivals:
            self._published = max(rivals, key=lambda h: h.recent)

    def map_odom(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The published ``T_map_odom`` and its covariance now, or None before ``min_updates`` agree."""
        h = self._published
        return None if h is None else (h.T.copy(), h.P_pub + self._drift(h, h.T_odom_base, h.path_m))

    def pose(self, T_odom_base: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The vehicle's pose in the map from the published ``T_map_odom`` and the odometry ``T_odom_base`` now, with
        its covariance (the filter's and the drift since its last update, moved to the vehicle); None before one.
        Reading it changes nothing."""
        h = self._published
        if h is None:
            return None
        T_odom_base = _finite_pose(T_odom_base, "odometry pose")
        path = h.path_m + float(np.linalg.norm(T_odom_base[:3, 3] - h.T_odom_base[:3, 3]))
        P = h.P_pub + self._drift(h, T_odom_base, path)
        T = h.T @ T_odom_base
        J = lever_jacobian(T[:3, 3] - h.T[:3, 3])
        return T, J @ P @ J.T
