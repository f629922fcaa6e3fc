"""Starts for a single image's alignment found by the matcher's patch likelihood alone, off the map's viewpoints.

Where a drive turns a corner or runs past its map's last viewpoint, the camera is metres and degrees away from every
viewpoint and from PnP's pose, which keeps a viewpoint's heading (the matcher's viewpoint prior). The reflectance
alignment only climbs the basin it starts in, and turning a start in place (``turned_starts_deg``) leaves its
position. The patch likelihood (:class:`.pose_hypotheses.PatchLikelihood`) needs no prior and costs microseconds a
pose, so a grid of poses around the starts, moved along and across their axes and turned, is scored on it, and the
best few distinct ones are climbed on it (small moves and turns while it rises) before they are aligned. On drives
where that happens, the likelihood's peak lies within a metre or two and a few degrees of the truth on most such
frames, while the starts the alignment had were 3-7 m and 10-30 deg off (models/README.md, "Session 41").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .geometry import PinholeCamera, best_distinct, moved_in_view, symmetric_offsets
from .pose_hypotheses import PatchLikelihood, turned_by

__all__ = ["LikelihoodSearch", "search_by_likelihood"]


@dataclass(frozen=True)
class LikelihoodSearch:
    """The grid around each base pose and the climb (:func:`search_by_likelihood`)."""

    along_m: float = 10.0  # moves along the optical axis up to this far each way ...
    along_step_m: float = 2.0  # ... in these steps
    lateral_m: float = 3.0  # moves across it: -this, 0 and +this (0: none)
    turn_deg: float = 30.0  # turns about the camera's vertical up to this far each way ...
    turn_step_deg: float = 10.0  # ... in these steps
    distinct_m: float = 1.5  # two kept poses differ by more than this distance or more than distinct_deg
    distinct_deg: float = 5.0
    climb_steps: tuple[tuple[float, float], ...] = ((1.0, 2.0), (0.5, 1.0), (0.25, 0.5))  # (m, deg) each stage
    climb_moves: int = 12  # at most this many moves a stage


def _grid(bases: list[np.ndarray], search: LikelihoodSearch) -> np.ndarray:
    """(N, 4, 4): each base turned by each angle, then moved along and across its (turned) axis by each offset."""
    along = symmetric_offsets(search.along_m, search.along_step_m)
    lateral = np.array([0.0]) if search.lateral_m <= 0 else np.array([-search.lateral_m, 0.0, search.lateral_m])
    a, s = (g.ravel() for g in np.meshgrid(along, lateral, indexing="ij"))
    turns = symmetric_offsets(search.turn_deg, search.turn_step_deg)
    out = []
    for base in bases:
        for T in turned_by(np.asarray(base, dtype=np.float64), turns):
            out.append(moved_in_view(T, a, s))
    return np.concatenate(out) if out else np.zeros((0, 4, 4))


def _climb(score: Callable[[np.ndarray], np.ndarray], T: np.ndarray, search: LikelihoodSearch) -> np.ndarray:
    """``T`` moved across and along its axis and turned about its vertical while the likelihood rises, the best
    of the six moves at a time, in ever smaller steps."""
    value = float(score(T[None])[0])
    for step_m, step_deg in search.climb_steps:
        for _ in range(search.climb_moves):
            moves = np.repeat(T[None], 4, axis=0)
            for k, (axis, sign) in enumerate(((0, -1.0), (0, 1.0), (2, -1.0), (2, 1.0))):
                moves[k, :3, 3] += sign * step_m * T[:3, axis]
            moves = np.concatenate([moves, turned_by(T, np.array([-step_deg, step_deg]))])
            values = score(moves)
            best = int(np.argmax(values))
            if not values[best] > value:
                break
            T, value = moves[best], float(values[best])
    return T


def search_by_likelihood(
    table: PatchLikelihood,
    cam_net: PinholeCamera,
    bases: list[np.ndarray],
    count: int,
    search: LikelihoodSearch | None = None,
    score_grid: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """The ``count`` best poses by patch likelihood on the grid around ``bases`` (4x4 map-from-camera), distinct
    from each other, each climbed on the likelihood (those that climb to a pose kept already are dropped): starts for
    the alignment where those it had are far off. ``score_grid``: the likelihood of (N, 4, 4) poses, the same values
    as ``table.mean_log_ratios`` (the localizer scores the grid's ~900 poses in two threads)."""
    search = search or LikelihoodSearch()
    grid = _grid(bases, search)
    if count <= 0 or len(grid) == 0:
        return []

    def score(T: np.ndarray) -> np.ndarray:
        return table.mean_log_ratios(T, cam_net)

    values = (score_grid or score)(grid)
    kept = best_distinct(grid, values, count, search.distinct_m, search.distinct_deg)
    # (two can climb to one pose: an alignment more would only vote for it again)
    climbed = np.array([_climb(score, grid[k], search) for k in kept])
    return [climbed[k] for k in best_distinct(climbed, None, len(climbed), search.distinct_m, search.distinct_deg)]
