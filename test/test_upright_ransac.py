"""The upright two-point RANSAC around a guess pose (upright_ransac.py) and its use by solve_pnp."""

from __future__ import annotations

import numpy as np
import pytest

from ep2p_loc_ros.geometry import PinholeCamera, invert, make_T, rotvec_to_matrix
from ep2p_loc_ros.pnp import PnPConfig, PnPStatus, solve_pnp
from ep2p_loc_ros.upright_ransac import (
    UprightBounds,
    _finalist_ranks,
    _inliers,
    occupied_cells,
    rot_y,
    search_rank,
    upright_candidates,
    upright_ransac,
    yaw_about_camera_y,
)

CAM = PinholeCamera.from_params(1241, 376, 718.856, 718.856, 607.19, 185.22)
K = CAM.K


def _guess_and_truth(phi_deg: float, move: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A tilted guess camera (T_world_cam) and the truth: turned about the guess's y axis and moved."""
    R_g = rotvec_to_matrix(np.array([0.4, 1.1, -0.2]))
    C_g = np.array([12.0, -3.0, 1.5])
    R_q = R_g @ rot_y(np.radians(phi_deg))
    return make_T(R_g, C_g), make_T(R_q, C_g + R_g @ np.asarray(move))


def _scene(T_world_cam: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` world points in front of the camera and their exact pixels."""
    Xc = np.c_[rng.uniform(-15, 15, n), rng.uniform(-4, 3, n), rng.uniform(4, 45, n)]
    uv = Xc[:, :2] / Xc[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    X = Xc @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    return X, uv


def test_upright_candidates_agree_with_poselib_up2p() -> None:
    """Both solutions of each pair equal PoseLib's upright 2-point solver's (guess = identity)."""
    poselib = pytest.importorskip("poselib")
    rng = np.random.default_rng(3)
    for _ in range(20):
        phi, c = rng.uniform(-np.pi, np.pi), rng.normal(0, 3, 3)
        X = rng.uniform(-8, 8, (2, 3)) + np.array([0, 0, 15])
        Xq = (X - c) @ rot_y(phi)  # rows of Ry(phi)^T (X - c)
        f = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
        mine_phi, mine_c, valid = upright_candidates(X[:1], X[1:], f[:1], f[1:])
        assert valid[0].any()
        mine = [np.r_[rot_y(p).T.ravel(), cc] for p, cc in zip(mine_phi[0], mine_c[0], strict=True)]
        theirs = [np.r_[p.R.ravel(), -p.R.T @ p.t] for p in poselib.up2p(f, X)]
        assert len(theirs) == 2
        for t in theirs:  # every PoseLib solution is one of ours
            assert min(np.abs(m - t).max() for m in mine) < 1e-8
        # and the true pose is among them
        assert np.min(np.abs(np.angle(np.exp(1j * (mine_phi[0] - phi))))) < 1e-9


def test_upright_ransac_finds_the_pose_among_90_percent_outliers() -> None:
    rng = np.random.default_rng(1)
    T_guess, T_true = _guess_and_truth(20.0, (3.0, 0.5, -4.0))
    X, uv = _scene(T_true, 2000, rng)
    uv = uv + rng.normal(0, 1.0, uv.shape)
    outlier = rng.random(len(X)) < 0.9
    uv[outlier] = rng.uniform([0, 0], [CAM.width, CAM.height], (outlier.sum(), 2))
    T_cw, mask = upright_ransac(X, uv, K, T_guess, UprightBounds(), 8.0, samples=2000)
    T_wc = invert(T_cw)
    assert np.linalg.norm(T_wc[:3, 3] - T_true[:3, 3]) < 0.3
    assert np.degrees(abs(yaw_about_camera_y(T_true[:3, :3], T_wc[:3, :3]))) < 0.3
    assert (mask & ~outlier).sum() > 0.95 * (~outlier).sum() and (mask & outlier).sum() < 0.01 * outlier.sum()
    again = upright_ransac(X, uv, K, T_guess, UprightBounds(), 8.0, samples=2000)
    assert np.array_equal(again[0], T_cw) and np.array_equal(again[1], mask)  # deterministic


def test_upright_ransac_stays_inside_its_bounds() -> None:
    """A bigger, consistent set of matches that a camera 40 m away explains (a pile of look-alikes) wins a 6-DoF
    RANSAC; the upright search around the guess does not look there and returns the true pose."""
    rng = np.random.default_rng(2)
    T_guess, T_true = _guess_and_truth(-10.0, (-2.0, 0.2, 3.0))
    _, T_far = _guess_and_truth(35.0, (30.0, -1.0, 25.0))
    X_true, uv_true = _scene(T_true, 150, rng)
    X_far, uv_far = _scene(T_far, 400, rng)
    X, uv = np.r_[X_true, X_far], np.r_[uv_true, uv_far]
    six_dof = solve_pnp(X, uv, CAM, PnPConfig(upright_search=False))
    assert six_dof.ok and np.linalg.norm(six_dof.T_world_cam[:3, 3] - T_far[:3, 3]) < 0.1
    est = solve_pnp(X, uv, CAM, PnPConfig(), guess=T_guess)
    assert est.ok, est.message
    assert np.linalg.norm(est.T_world_cam[:3, 3] - T_true[:3, 3]) < 0.01
    assert est.inlier_mask[:150].all() and not est.inlier_mask[150:].any()
    # with the truth outside the bounds there is nothing to find
    tight = PnPConfig(search_max_distance_m=1.0)
    miss = solve_pnp(X_true, uv_true, CAM, tight, guess=T_guess)
    assert miss.status is PnPStatus.RANSAC_FAILED and "within the search bounds" in miss.message


def test_solve_pnp_refines_a_tilt_the_upright_search_cannot_see() -> None:
    """The truth is pitched 0.5 degrees off the guess: the search finds it roughly, LM restores the tilt."""
    rng = np.random.default_rng(4)
    T_guess, T_true = _guess_and_truth(5.0, (1.0, 0.0, 2.0))
    T_true[:3, :3] = T_true[:3, :3] @ rotvec_to_matrix(np.array([np.radians(0.5), 0.0, 0.0]))
    X, uv = _scene(T_true, 500, rng)
    est = solve_pnp(X, uv + rng.normal(0, 0.5, uv.shape), CAM, PnPConfig(), guess=T_guess)
    assert est.ok, est.message
    dR = est.T_world_cam[:3, :3] @ T_true[:3, :3].T
    assert np.linalg.norm(est.T_world_cam[:3, 3] - T_true[:3, 3]) < 0.05
    assert np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1))) < 0.05


def test_solve_pnp_searches_around_several_guesses_and_says_which_won() -> None:
    """Guesses 60 m away (outside the 20 m bounds) find nothing; the one near the truth wins, whatever its place
    in the stack, and the pose is exact."""
    rng = np.random.default_rng(8)
    T_guess, T_true = _guess_and_truth(12.0, (3.0, 0.5, -6.0))
    X, uv = _scene(T_true, 300, rng)
    outlier = rng.random(300) < 0.6
    uv[outlier] = rng.uniform([0, 0], [CAM.width, CAM.height], (int(outlier.sum()), 2))
    far = [T_guess.copy(), T_guess.copy()]
    far[0][:3, 3] += [60.0, 0.0, 0.0]
    far[1][:3, 3] += [0.0, 0.0, -60.0]
    for where in (0, 2):
        guesses = np.stack([*far[:where], T_guess, *far[where:]])
        est = solve_pnp(X, uv, CAM, PnPConfig(), guess=guesses)
        assert est.ok, est.message
        assert est.guess_index == where
        assert np.abs(est.T_world_cam - T_true).max() < 1e-6
    assert solve_pnp(X, uv, CAM, PnPConfig(), guess=np.stack(far)).status is PnPStatus.RANSAC_FAILED


def test_solve_pnp_refuses_a_bad_guess_and_bad_bounds() -> None:
    rng = np.random.default_rng(5)
    T_guess, T_true = _guess_and_truth(0.0, (0.0, 0.0, 1.0))
    X, uv = _scene(T_true, 50, rng)
    bad = T_guess.copy()
    bad[0, 0] = np.nan
    assert solve_pnp(X, uv, CAM, PnPConfig(), guess=bad).status is PnPStatus.INVALID_INPUT
    assert solve_pnp(X, uv, CAM, PnPConfig(), guess=np.eye(3)).status is PnPStatus.INVALID_INPUT
    assert solve_pnp(X, uv, CAM, PnPConfig(upright_search=False), guess=bad).ok  # the guess is not used
    for kw in ({"search_max_distance_m": 0.0}, {"search_max_yaw_deg": 200.0}, {"search_samples": 0}):
        with pytest.raises(ValueError):
            PnPConfig(**kw)


def test_occupied_cells_counts_distinct_cells_per_mask() -> None:
    uv = np.array([[1.0, 1.0], [30.0, 5.0], [33.0, 1.0], [100.0, 100.0]])
    masks = np.array([[True, True, False, False], [True, False, True, True], [False] * 4])
    assert occupied_cells(masks, uv).tolist() == [1, 3, 0]
    # pixels far apart (cells numbered densely, not by position) count the same way
    far = np.array([[0.0, 0.0], [1e6, 3e5], [5.0, 5.0], [-2e5, 40.0]])
    masks = np.array([[True, True, True, True], [True, False, True, False], [False, True, False, True]])
    assert occupied_cells(masks, far).tolist() == [3, 1, 2]


def test_occupied_cells_equals_counting_each_masks_set_of_cells() -> None:
    """The compiled count against its definition, on random masks over an image's worth of pixels: for each mask,
    the number of distinct 32 px cells its selected pixels fall in."""
    rng = np.random.default_rng(4)
    uv = rng.random((700, 2)) * [1241.0, 376.0]
    masks = rng.random((90, 700)) < rng.random((90, 1))
    cells = [{(int(u // 32), int(v // 32)) for (u, v), on in zip(uv, row, strict=True) if on} for row in masks]
    assert occupied_cells(masks, uv).tolist() == [len(c) for c in cells]


@pytest.mark.parametrize("finalists", [1, 8, 64])
def test_finalist_ranks_pick_the_finalists_of_ranking_every_hypothesis(finalists: int) -> None:
    """Only hypotheses with enough inliers get their cells counted; the finalists, in order, must be those of
    ranking all of them. Many ties (few cells, counts repeated) and hypotheses with many inliers crowded into one
    cell (ranked high by inliers, low by cells) are what a wrong bound would get wrong."""
    rng = np.random.default_rng(9)
    uv = rng.uniform(0, 1241, (300, 2)) * [1, 0.3]
    uv[:40] = rng.uniform(0, 30, (40, 2))  # one crowded cell
    rates = rng.choice([0.002, 0.01, 0.03, 0.1], 700)
    masks = rng.random((700, 300)) < rates[:, None]
    masks[::50, :40] = True  # many inliers, all in that cell
    for score in ("cells", "inliers"):
        full = search_rank(masks, uv, score)
        fast = _finalist_ranks(masks, uv, score, finalists)
        want = np.argsort(-full, kind="stable")[:finalists]
        got = np.argsort(-fast, kind="stable")[:finalists]
        assert got.tolist() == want.tolist(), score
        np.testing.assert_array_equal(fast[got], full[want])
    # fewer hypotheses than finalists: every rank is exact
    np.testing.assert_array_equal(_finalist_ranks(masks[:5], uv, "cells", 8), search_rank(masks[:5], uv, "cells"))


def test_upright_ransac_cells_score_prefers_spread_inliers() -> None:
    """A decoy pose inside the bounds explains more matches, all crowded in one corner of the image; the true pose
    explains fewer, spread over the image. "inliers" picks the decoy, "cells" the truth."""
    rng = np.random.default_rng(6)
    T_guess, T_true = _guess_and_truth(0.0, (0.0, 0.0, 0.0))
    _, T_decoy = _guess_and_truth(8.0, (3.0, 0.0, 6.0))
    X_true, uv_true = _scene(T_true, 100, rng)
    Xc = np.c_[rng.uniform(-1, 1, 160), rng.uniform(-1, 1, 160), rng.uniform(20, 40, 160)]  # one small region
    uv_decoy = Xc[:, :2] / Xc[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    X_decoy = Xc @ T_decoy[:3, :3].T + T_decoy[:3, 3]
    X, uv = np.r_[X_true, X_decoy], np.r_[uv_true, uv_decoy]
    for score, want in (("inliers", T_decoy), ("cells", T_true)):
        T_cw, _ = upright_ransac(X, uv, K, T_guess, UprightBounds(), 2.0, samples=3000, score=score)
        assert np.linalg.norm(invert(T_cw)[:3, 3] - want[:3, 3]) < 0.1, score
    with pytest.raises(ValueError):
        upright_ransac(X, uv, K, T_guess, UprightBounds(), 2.0, score="best")


def test_inlier_flags_are_where_each_hypothesis_projects_each_point() -> None:
    """The compiled inlier test against the camera model itself (float64): a match is an inlier of hypothesis
    (phi, c) iff the camera turned by phi about the guess's y axis and moved by c sees the point in front, within
    the threshold of its pixel. Float32 may disagree only within a hair of the threshold."""
    rng = np.random.default_rng(7)
    Y = np.c_[rng.uniform(-15, 15, 700), rng.uniform(-4, 3, 700), rng.uniform(-5, 45, 700)]  # some behind
    uv = rng.uniform([0, 0], [1241, 376], (700, 2))
    phi = rng.uniform(-0.5, 0.5, 300)
    c = rng.normal(0, 2.0, (300, 3))
    flags = _inliers(phi, c, Y, uv, K, 40.0)
    assert flags.shape == (300, 700) and 0.001 < flags.mean() < 0.2, "some inliers, most not"
    for h in range(300):
        Yq = (Y - c[h]) @ rot_y(phi[h])  # Ry(phi)^T (Y - c), row-wise
        pr = CAM.project(Yq)
        err2 = np.sum((pr.uv - uv) ** 2, axis=1)
        truth = (pr.depth > 1e-6) & (err2 <= 40.0**2)
        hair = np.abs(err2 - 40.0**2) < 1e-2 * 40.0**2
        assert np.array_equal(flags[h][~hair], truth[~hair])
