"""Tracking falls back to global search once its localizations stop joining the published pose, and so a filter
locked onto a look-alike place is found out and switches to the right one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ep2p_loc_ros.geometry import make_T, rotvec_to_matrix
from ep2p_loc_ros.map_odom_filter import MapOdomFilter
from ep2p_loc_ros.tracking_policy import TrackingPolicy

SIGMA = np.array([0.2, 0.2, 0.5, math.radians(0.3), math.radians(0.3), math.radians(0.5)])
COV = np.diag(SIGMA**2)


def test_lost_after_max_failures_in_a_row_and_found_on_the_first_join():
    policy = TrackingPolicy(3)
    for joined in (False, False, True, False, False):  # a join in between starts the count again
        policy.record(joined)
        assert not policy.lost
    policy.record(False)
    assert policy.lost and policy.failures == 3
    policy.record(False)
    assert policy.lost  # it stays lost, frame after frame, until a localization joins
    policy.record(True)
    assert not policy.lost
    policy.record(False)
    policy.reset()
    assert policy.failures == 0
    with pytest.raises(ValueError, match="max_failures"):
        TrackingPolicy(0)
    with pytest.raises(ValueError, match="confirm_updates"):
        TrackingPolicy(3, -1)


def _noisy(T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    d = rng.normal(0.0, SIGMA)
    return make_T(rotvec_to_matrix(d[3:]) @ T[:3, :3], T[:3, 3] + d[:3])


def _run(max_failures: int, confirm: int = 0) -> tuple[list[float], list[str]]:
    """The node's loop over 60 frames of a straight drive (odometry exact, map = odom): the first three global
    localizations find a look-alike place 35 m ahead; tracked from a pose, a localization agrees with that pose
    while the views still overlap (as the first 15 frames do) and fails after; global ones later find the truth."""
    rng = np.random.default_rng(0)
    filt, policy = MapOdomFilter(), TrackingPolicy(max_failures, confirm)
    errors, modes = [], []
    for i in range(60):
        truth = make_T(np.eye(3), [2.0 * i, 0.0, 0.0])
        filt.predict(truth)
        published = filt.pose(truth)
        prior = None if published is None or policy.global_reason(filt) is not None else published[0]
        if prior is None:
            look_alike = i < 3
            z = _noisy(make_T(np.eye(3), truth[:3, 3] + [35.0, 0.0, 0.0]) if look_alike else truth, rng)
        elif np.linalg.norm(prior[:3, 3] - truth[:3, 3]) < 5.0 or i < 15:
            z = _noisy(prior, rng) if np.linalg.norm(prior[:3, 3] - truth[:3, 3]) >= 5.0 else _noisy(truth, rng)
        else:
            z = None  # tracked from a wrong place: PnP fails
        joined = z is not None and filt.update(z, COV, truth, own_prior=prior is not None).accepted
        policy.record(joined)
        modes.append("global" if prior is None else "tracking")
        p = filt.pose(truth)
        errors.append(math.inf if p is None else float(np.linalg.norm(p[0][:3, 3] - truth[:3, 3])))
    return errors, modes


def test_a_filter_locked_onto_a_look_alike_place_is_found_out_and_tracking_resumes_at_the_right_one():
    errors, modes = _run(max_failures=3)
    assert all(e > 30 for e in errors[2:15])  # the look-alike place is published first ...
    assert all(e < 1.0 for e in errors[30:]), errors  # ... and the right one from some frames after tracking failed
    assert modes[15:18] == ["tracking"] * 3 and modes[18] == "global"  # 3 failures, then global search
    assert modes[-10:] == ["tracking"] * 10  # tracking again, from the right place
    # without the fallback (the node before session 22) the loop never leaves the look-alike place
    never, _ = _run(max_failures=10**6)
    assert all(e > 30 for e in never[2:])


def test_confirming_the_first_pose_globally_replaces_a_look_alike_before_tracking_starts():
    """With ``confirm_updates``, the loop goes on searching globally after the look-alike place is published: the
    right place's localizations take over through the filter's switch, and tracking starts there, 9 frames in
    rather than after tracking from the wrong place failed (frame 30)."""
    errors, modes = _run(max_failures=3, confirm=6)
    assert all(e > 30 for e in errors[2:7])  # published first: the look-alike place (3 localizations) ...
    assert all(e < 1.0 for e in errors[7:]), errors  # ... then the right one, the switch after 5 of its own
    first_track = modes.index("tracking")
    assert 8 <= first_track <= 10 and modes[first_track:] == ["tracking"] * (60 - first_track)
    no_odometry = TrackingPolicy(3, 6)
    assert no_odometry.global_reason(MapOdomFilter()) is None  # a filter never fed does not hold tracking back
    for _ in range(3):
        no_odometry.record(False)
    assert no_odometry.global_reason(None).startswith("lost")


def test_the_node_confirms_the_first_pose_only_where_single_images_get_hypotheses():
    """``for_localizer``: the node's and bench/fusion.py's one rule for when ``tracking.confirm_updates`` applies."""
    with_hypotheses = TrackingPolicy.for_localizer(3, 6, single_image_hypotheses=True)
    without = TrackingPolicy.for_localizer(3, 6, single_image_hypotheses=False)
    assert (with_hypotheses.max_failures, with_hypotheses.confirm_updates) == (3, 6)
    assert (without.max_failures, without.confirm_updates) == (3, 0)
    fed = MapOdomFilter()
    fed.update(np.eye(4), COV, np.eye(4))  # one localization: a hypothesis, nothing published yet
    assert with_hypotheses.global_reason(fed).startswith("confirming")
    assert without.global_reason(fed) is None
