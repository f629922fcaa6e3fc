"""When to track from the published pose and when to search the whole map again.

Why a policy of its own: tracking from the published pose only ever looks where that pose says the camera is. With
fusion, every frame has a published pose (the filter's), so a filter that locked onto a wrong place early (a few
global localizations of a look-alike place that agree; held-out outdoor drive 906 in session 22, 35 m off) is fed
only localizations tracked from that wrong place: they agree with it until they fail, and never give the filter
the rival that its hypotheses need to switch. So a frame counts as a failure when its localization did not join
the published pose (none, too few inliers, refused by the gate, or fitting another hypothesis), and after
``max_failures`` of them in a row the node searches globally, frame after frame, until a localization joins the
published pose again (then that pose is right, or the filter has switched to the place the searches found).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrackingPolicy"]


@dataclass
class TrackingPolicy:
    """Counts the frames in a row whose localization did not join the published pose (see the module docstring)."""

    max_failures: int
    failures: int = 0

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError(f"tracking.max_failures must be >= 1, got {self.max_failures}")

    @property
    def lost(self) -> bool:
        """True: the next frame should search the whole map instead of tracking."""
        return self.failures >= self.max_failures

    def record(self, joined: bool) -> None:
        """One frame's outcome: its localization joined the published pose (``joined``) or not."""
        self.failures = 0 if joined else self.failures + 1

    def reset(self) -> None:
        self.failures = 0
