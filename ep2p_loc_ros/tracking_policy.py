"""When to track from the published pose and when to search the whole map again.

Why a policy of its own: tracking from the published pose only ever looks where that pose says the camera is. With
fusion, every frame has a published pose (the filter's), so a filter that locked onto a wrong place early (a few
global localizations of a look-alike place that agree; held-out outdoor drive 906 in session 22, 35 m off) is fed
only localizations tracked from that wrong place: they agree with it until they fail, and never give the filter
the rival that its hypotheses need to switch. So a frame counts as a failure when its localization did not join
the published pose (none, too few inliers, refused by the gate, or fitting another hypothesis), and after
``max_failures`` of them in a row the node searches globally, frame after frame, until a localization joins the
published pose again (then that pose is right, or the filter has switched to the place the searches found).

Confirmation (``confirm_updates``): the fallback finds a wrong first pose out only once tracking from it fails,
which can take a while where the look-alike place goes on looking alike (drive 906 with the single-image
hypotheses: published at a look-alike place at frame 3, replaced at frame ~20; models/README.md "Session 31"). With
fusion, the node can instead go on searching globally until the published hypothesis holds ``confirm_updates``
localizations: a wrong first pose then meets the global localizations of the right place, which take over through
the filter's switch (``fusion.switch_after``) before tracking starts from either.
"""

from __future__ import annotations

from dataclasses import dataclass

from .map_odom_filter import MapOdomFilter

__all__ = ["TrackingPolicy"]


@dataclass
class TrackingPolicy:
    """When to search globally rather than track (:meth:`global_reason`): counts the frames in a row whose
    localization did not join the published pose, and holds tracking back until the fused pose is confirmed (see
    the module docstring)."""

    max_failures: int
    confirm_updates: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError(f"tracking.max_failures must be >= 1, got {self.max_failures}")
        if self.confirm_updates < 0:
            raise ValueError(f"tracking.confirm_updates must be >= 0, got {self.confirm_updates}")

    @classmethod
    def for_localizer(cls, max_failures: int, confirm_updates: int, single_image_hypotheses: bool) -> TrackingPolicy:
        """The node's policy: the first pose is confirmed only where single images are aligned from several
        hypotheses (``Localizer.single_image_hypotheses``), whose first images can agree on a look-alike place;
        elsewhere confirming costs precision (models/README.md "Session 31")."""
        return cls(max_failures, confirm_updates if single_image_hypotheses else 0)

    def global_reason(self, fusion: MapOdomFilter | None = None) -> str | None:
        """Why the next frame should search the whole map rather than track from the published pose (None: track):
        lost (:attr:`lost`), or, with a filter that has had localizations, its published hypothesis holds fewer
        than ``confirm_updates`` (a filter without any, e.g. without odometry, does not hold tracking back)."""
        if self.lost:
            return f"lost: {self.failures} frames not joining the published pose"
        if fusion is not None and fusion.hypotheses > 0 and fusion.published_updates < self.confirm_updates:
            return f"confirming the fused pose: {fusion.published_updates} of {self.confirm_updates} localizations"
        return None

    @property
    def lost(self) -> bool:
        """True: the next frame should search the whole map instead of tracking."""
        return self.failures >= self.max_failures

    def record(self, joined: bool) -> None:
        """One frame's outcome: its localization joined the published pose (``joined``) or not."""
        self.failures = 0 if joined else self.failures + 1

    def reset(self) -> None:
        self.failures = 0
