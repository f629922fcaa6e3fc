"""The map->odom filter: fusion cuts frame-to-frame error, gross errors never publish, a moved vehicle is found
again, and its covariances follow the poses they describe (checked by Monte Carlo)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ep2p_loc_ros.geometry import invert, make_T, matrix_to_rotvec, rotvec_to_matrix
from ep2p_loc_ros.map_odom_filter import FusionConfig, MapOdomFilter

SIGMA = np.array([0.4, 0.4, 2.0, math.radians(0.5), math.radians(0.5), math.radians(1.0)])  # depth is the weak axis


def _perturb(T: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``T`` moved by ``d`` = (position in the parent frame, rotation vector about the parent's axes)."""
    out = T.copy()
    out[:3, 3] += d[:3]
    out[:3, :3] = rotvec_to_matrix(d[3:]) @ T[:3, :3]
    return out


def _diff(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.concatenate([A[:3, 3] - B[:3, 3], matrix_to_rotvec(A[:3, :3] @ B[:3, :3].T)])


def _drive(n: int, step: float = 1.0, turn_deg: float = 2.0) -> list[np.ndarray]:
    """``T_odom_base`` along a gentle left curve (``turn_deg`` per step), ``step`` metres apart."""
    out, T = [], np.eye(4)
    for _ in range(n):
        out.append(T.copy())
        T = T @ make_T(rotvec_to_matrix([0.0, 0.0, math.radians(turn_deg)]), [step, 0.0, 0.0])
    return out


T_MAP_ODOM = make_T(rotvec_to_matrix([0.0, 0.0, 0.7]), [120.0, -40.0, 1.5])


def _measure(T_map_odom: np.ndarray, T_odom_base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A localization of the vehicle: its true pose moved by noise of std ``SIGMA`` about the vehicle."""
    return _perturb(T_map_odom @ T_odom_base, rng.normal(0.0, SIGMA))


def test_fusion_cuts_the_error_of_single_localizations_and_its_covariance_holds():
    rng = np.random.default_rng(0)
    f = MapOdomFilter()
    cov = np.diag(SIGMA**2)
    single, fused, nees = [], [], []
    for i, T_ob in enumerate(_drive(60)):
        meas = _measure(T_MAP_ODOM, T_ob, rng)
        up = f.update(meas, cov, T_ob)
        assert up.published == (i >= 2)  # three agreeing localizations before the first pose
        truth = T_MAP_ODOM @ T_ob
        single.append(np.linalg.norm(meas[:3, 3] - truth[:3, 3]))
        est = f.pose(T_ob)
        if i >= 20:
            err = _diff(est[0], truth)
            fused.append(np.linalg.norm(err[:3]))
            nees.append(err @ np.linalg.solve(est[1], err))
    assert np.median(fused) < 0.3 * np.median(single), (np.median(fused), np.median(single))
    assert np.mean(np.array(nees) < 16.81) > 0.9  # the 99 % bound holds (it may be conservative)
    assert f.hypotheses == 1


def test_gross_errors_never_publish_and_do_not_move_the_pose():
    rng = np.random.default_rng(1)
    f = MapOdomFilter()
    cov = np.diag(SIGMA**2)
    for i, T_ob in enumerate(_drive(80)):
        truth = T_MAP_ODOM @ T_ob
        if i % 4 == 3:  # a quarter of the localizations: a wrong submap, 10-60 m away, each elsewhere
            wrong = _perturb(truth, np.concatenate([rng.uniform(10, 60, 3) * rng.choice([-1, 1], 3), [0, 0, 1.0]]))
            up = f.update(wrong, cov, T_ob)
            assert not up.accepted and up.mahalanobis2 > 16.81
        else:
            f.update(_measure(T_MAP_ODOM, T_ob, rng), cov, T_ob)
        if i >= 3:
            est = f.pose(T_ob)[0]
            assert np.linalg.norm(est[:3, 3] - truth[:3, 3]) < 1.5
    assert 1 < f.hypotheses <= FusionConfig().max_hypotheses


def test_a_moved_vehicle_is_found_again_after_a_few_agreeing_localizations():
    """Kidnapped (or odometry reset): the old map->odom no longer holds; the new one takes over within four."""
    rng = np.random.default_rng(2)
    f = MapOdomFilter()
    cov = np.diag(SIGMA**2)
    drive = _drive(60)
    for T_ob in drive[:40]:
        f.update(_measure(T_MAP_ODOM, T_ob, rng), cov, T_ob)
    moved = make_T(rotvec_to_matrix([0.0, 0.0, -1.2]), [300.0, 80.0, 0.0])
    switched = None
    for k, T_ob in enumerate(drive[40:]):
        f.update(_measure(moved, T_ob, rng), cov, T_ob)
        est = f.pose(T_ob)[0]
        if np.linalg.norm(est[:3, 3] - (moved @ T_ob)[:3, 3]) < 2.0:
            switched = k if switched is None else switched
        elif switched is not None:
            pytest.fail(f"went back to the old hypothesis after switching at measurement {switched}")
    assert switched is not None and switched <= 4, switched


def test_after_a_switch_the_replaced_hypothesis_needs_a_run_of_its_own_to_take_over_again():
    """Localizations alternating between two places after a switch (tracked frames, one at a look-alike, the next at
    the right place): the hypothesis just replaced must gather ``switch_after`` in a row again. Before session 32 its
    old run still counted, and the published pose flipped between the places at every localization (drive 777)."""
    rng = np.random.default_rng(6)
    f = MapOdomFilter()
    cov = np.diag(SIGMA**2)
    drive = _drive(30)
    moved = make_T(rotvec_to_matrix([0.0, 0.0, -1.2]), [300.0, 80.0, 0.0])
    for T_ob in drive[:10]:
        f.update(_measure(T_MAP_ODOM, T_ob, rng), cov, T_ob)
    for T_ob in drive[10:15]:  # five at the other place: it takes over
        f.update(_measure(moved, T_ob, rng), cov, T_ob)
    assert np.linalg.norm(f.pose(drive[14])[0][:3, 3] - (moved @ drive[14])[:3, 3]) < 2.0
    places = []
    for k, T_ob in enumerate(drive[15:]):
        f.update(_measure(T_MAP_ODOM if k % 2 == 0 else moved, T_ob, rng), cov, T_ob)
        est = f.pose(T_ob)[0][:3, 3]
        places.append("moved" if np.linalg.norm(est - (moved @ T_ob)[:3, 3]) < 2.0 else "first")
    assert places == ["moved"] * len(places), places


def test_measurement_and_pose_covariances_match_monte_carlo():
    """``update`` moves a vehicle-pose covariance to the odom origin and ``pose`` moves it back: sampled poses,
    carried the same way, have the covariance the filter computes."""
    rng = np.random.default_rng(3)
    T_ob = _drive(30, step=2.0)[-1]  # 40 m of lever arm: rotation noise becomes position noise
    T_mb = T_MAP_ODOM @ T_ob
    cov = np.diag(SIGMA**2)
    n = 20000
    samples = [_perturb(T_mb, d) @ invert(T_ob) for d in rng.normal(0.0, SIGMA, (n, 6))]
    emp = np.cov(np.stack([_diff(z, T_MAP_ODOM) for z in samples]).T)
    f = MapOdomFilter(FusionConfig(min_updates=1, floor_m=1e-9, floor_deg=1e-9))
    f.update(T_mb, cov, T_ob)
    T_mo, P = f.map_odom()
    np.testing.assert_allclose(T_mo, T_MAP_ODOM, atol=1e-9)
    d = np.sqrt(np.diag(P))
    assert (np.abs(P - emp) <= 5 * np.outer(d, d) / math.sqrt(n)).all()  # within sampling noise, every entry
    assert np.abs(P[0, 5]) > 50 * d[0] * d[5] / math.sqrt(n)  # and the lever really couples heading and position
    T_back, cov_back = f.pose(T_ob)
    np.testing.assert_allclose(T_back, T_mb, atol=1e-9)
    np.testing.assert_allclose(cov_back, cov, rtol=1e-6, atol=1e-12)


def test_covariance_grows_with_the_distance_driven_since_the_last_fix():
    f = MapOdomFilter()
    cov = np.diag(SIGMA**2) * 0.01
    drive = _drive(225, step=1.0, turn_deg=-1.6)  # most of a full circle of 225 m: back near where it started
    for T_ob in drive[:5]:
        f.update(T_MAP_ODOM @ T_ob, cov, T_ob)
    stds = []
    for k, T_ob in enumerate(drive[4:], start=4):
        f.predict(T_ob)  # odometry keeps coming, no localization
        if k % 20 == 4:
            stds.append(math.sqrt(np.linalg.eigvalsh(f.pose(T_ob)[1][:3, :3])[-1]))
    assert all(b > a for a, b in itertools.pairwise(stds)), stds
    # 220 m at 2 cm/m: the odometry's drift over the path driven, not over the short way back to the start
    assert stds[-1] > 0.02 * 220 * 0.95 and f.hypotheses == 1


def _correlated_noise(n: int, step: float, length: float, rng: np.random.Generator) -> np.ndarray:
    """Localization errors (std ``SIGMA``) correlated over ``length`` metres of path, ``step`` metres apart."""
    a = math.exp(-step / length)
    u = [rng.normal(size=6)]
    for _ in range(n - 1):
        u.append(a * u[-1] + math.sqrt(1 - a * a) * rng.normal(size=6))
    return np.stack(u) * SIGMA


def _run(config: FusionConfig, drive: list[np.ndarray], noise: np.ndarray) -> tuple[list, list]:
    f = MapOdomFilter(config)
    poses, nees = [], []
    for T_ob, d in zip(drive, noise, strict=True):
        f.update(_perturb(T_MAP_ODOM @ T_ob, d), np.diag(SIGMA**2), T_ob)
        est = f.pose(T_ob)
        poses.append(None if est is None else est[0])
        if est is not None:
            err = _diff(est[0], T_MAP_ODOM @ T_ob)
            nees.append(err @ np.linalg.solve(est[1], err))
    return poses, nees


def test_published_covariance_holds_when_localization_errors_are_correlated_in_time():
    """Nearby frames err alike (models/README.md, "Session 18"). With errors correlated over 2 m and a frame every
    0.25 m, an EKF that takes them as independent is several times too sure; the published covariance, which
    carries the correlation, matches the errors (mean NEES about 6, the χ²₆ mean), and the poses are the same. (The
    Gaussian update: the robust weight, made for heavy tails, would make it conservative with these Gaussian errors.)"""
    rng = np.random.default_rng(5)
    drive = _drive(40, step=0.25, turn_deg=0.5)
    last = {"correlated": [], "independent": []}
    for _ in range(150):
        noise = _correlated_noise(len(drive), 0.25, 2.0, rng)
        poses, nees = _run(FusionConfig(robust_chi2=0.0), drive, noise)
        poses0, nees0 = _run(FusionConfig(correlation_length_m=0.0, robust_chi2=0.0), drive, noise)
        assert all((a is None and b is None) or np.allclose(a, b) for a, b in zip(poses, poses0, strict=True))
        last["correlated"] += nees[-10:]
        last["independent"] += nees0[-10:]
    assert 4.5 < np.mean(last["correlated"]) < 8.0, np.mean(last["correlated"])
    assert np.mean(np.array(last["correlated"]) < 16.81) > 0.97
    assert np.mean(last["independent"]) > 2 * 6.0, np.mean(last["independent"])


def test_a_vehicle_standing_still_gains_no_confidence_from_the_same_localization():
    T_ob = _drive(10)[-1]
    cov = np.diag(SIGMA**2)
    still = MapOdomFilter(FusionConfig(min_updates=1))
    naive = MapOdomFilter(FusionConfig(min_updates=1, correlation_length_m=0.0))
    for _ in range(20):
        for f in (still, naive):
            f.update(T_MAP_ODOM @ T_ob, cov, T_ob)
    std = np.sqrt(np.diag(still.pose(T_ob)[1]))
    np.testing.assert_allclose(std, SIGMA, rtol=0.05)  # as sure as one localization, not twenty
    assert (np.sqrt(np.diag(naive.pose(T_ob)[1])) < 0.35 * SIGMA).all()  # the independent model: ~1/sqrt(20)


def test_bad_input_and_bad_config_are_refused():
    f = MapOdomFilter()
    good = np.eye(4)
    with pytest.raises(ValueError, match="finite"):
        f.update(np.full((4, 4), np.nan), np.eye(6), good)
    with pytest.raises(ValueError, match="positive definite"):
        f.update(good, np.zeros((6, 6)), good)
    with pytest.raises(ValueError, match="finite"):
        f.update(good, np.eye(3), good)
    assert f.pose(good) is None and f.map_odom() is None
    with pytest.raises(ValueError, match="switch_after"):
        FusionConfig(switch_after=0)
    with pytest.raises(ValueError, match="drift_m_per_m"):
        FusionConfig(drift_m_per_m=float("nan"))
    with pytest.raises(ValueError, match="floor"):
        FusionConfig(floor_m=0.0)
    with pytest.raises(ValueError, match="correlated_share"):
        FusionConfig(correlated_share=1.5)
    with pytest.raises(ValueError, match="correlation_length_m"):
        FusionConfig(correlation_length_m=float("nan"))
    with pytest.raises(ValueError, match="robust_chi2"):
        FusionConfig(robust_chi2=-1.0)


def test_heavy_tailed_localizations_pull_the_pose_less_with_the_robust_weight():
    """Localizations within their covariance, but one in four a look-alike a little ahead: 2 sigma along the weak
    axis with 2.5 sigma of heading, inside the gate (the tracked frames of models/README.md "Session 32"). The
    Gaussian update takes each in at full weight and the fused pose leans ahead; the robust weight (``robust_chi2``)
    keeps it nearer the truth, and its covariance still holds."""
    cov = np.diag(SIGMA**2)
    out = {}
    for robust in (0.0, 4.0):
        err, nees, weights = [], [], {True: [], False: []}
        for seed in range(8):  # eight drives: one drive's mean error swings with its noise
            rng = np.random.default_rng(seed)
            f = MapOdomFilter(FusionConfig(robust_chi2=robust))
            for i, T_ob in enumerate(_drive(80)):
                d = rng.normal(0.0, SIGMA)
                if i % 4 == 3:
                    d[2] += 2.0 * SIGMA[2]
                    d[5] += 2.5 * SIGMA[5]
                up = f.update(_perturb(T_MAP_ODOM @ T_ob, d), cov, T_ob)
                weights[i % 4 == 3].append(up.weight)
                if i >= 20:
                    est, P = f.pose(T_ob)
                    e = _diff(est, T_MAP_ODOM @ T_ob)
                    err.append(np.linalg.norm(e[:3]))
                    nees.append(e @ np.linalg.solve(P, e))
        out[robust] = (float(np.mean(err)), float(np.mean(np.array(nees) < 16.81)))
        if robust:  # what each update reports: the look-alikes counted less (those the gate refused: 0)
            assert np.median(weights[True]) < 0.5 < np.median(weights[False]), weights
        else:
            assert set(weights[True] + weights[False]) <= {0.0, 1.0}
    (gauss, _), (robust, inside) = out[0.0], out[4.0]
    assert robust < 0.8 * gauss, out
    assert inside > 0.9, out


def test_localizations_from_its_own_pose_cannot_make_it_overconfident_with_intersection():
    """Tracking from the fused pose returns about that pose: a Kalman update takes each such localization as new
    evidence and the covariance collapses on whatever pose the filter holds (models/README.md "Session 20": 4.7 m off
    with NEES 195). With ``intersect_own_prior`` they are fused by covariance intersection: the covariance stays at
    what one localization says, and independent (global) localizations still shrink it."""
    cov = np.diag(SIGMA**2)
    drive = _drive(40)
    rng = np.random.default_rng(3)
    first = [_measure(T_MAP_ODOM, T_ob, rng) for T_ob in drive[:3]]

    def run(intersect: bool, own: bool) -> tuple[MapOdomFilter, list[float]]:
        # errors independent in time, so that a global localization at the same spot is new evidence
        f = MapOdomFilter(FusionConfig(intersect_own_prior=intersect, correlation_length_m=0.0))
        for meas, T_ob in zip(first, drive[:3], strict=True):
            f.update(meas, cov, T_ob)
        dets = [np.linalg.slogdet(f.pose(drive[2])[1])[1]]
        for T_ob in drive[3:]:
            own_pose = f.pose(T_ob)[0]  # what tracking from the filter's pose gives back
            up = f.update(own_pose, cov, T_ob, own_prior=own)
            assert up.accepted
            dets.append(np.linalg.slogdet(f.pose(T_ob)[1])[1])
        return f, dets

    _, kalman = run(intersect=False, own=True)
    f_ci, intersected = run(intersect=True, own=True)
    _, ignored = run(intersect=True, own=False)
    assert kalman[-1] < kalman[0] - 6.0  # det shrank > 400x on 37 echoes of its own pose
    np.testing.assert_allclose(ignored, kalman)  # own_prior=False: the Kalman update, as before
    assert min(intersected) > kalman[0] - 1.0  # intersection: det shrank < 2.7x over the same 37 echoes
    # and the pose is not moved by echoes of itself
    T_before = f_ci.pose(drive[-1])[0]
    f_ci.update(T_before, cov, drive[-1], own_prior=True)
    np.testing.assert_allclose(f_ci.pose(drive[-1])[0], T_before, atol=1e-9)
    # an independent (global) localization still counts as evidence
    f_ci.update(_measure(T_MAP_ODOM, drive[-1], rng), cov, drive[-1])
    assert np.linalg.slogdet(f_ci.pose(drive[-1])[1])[1] < intersected[-1] - 0.5


def test_intersection_moves_the_pose_toward_a_tracking_localization_that_disagrees():
    """Intersection is still an update: a tracking localization surer than the filter along one axis (0.05 against
    ~0.23 m) and 1 m off along it pulls the pose most of the way, never past it; one no surer than the filter on any
    axis (the filter holds three such) moves it by almost nothing: intersection never takes it as new evidence."""
    cov = np.diag(SIGMA**2)
    drive = _drive(5)
    f = MapOdomFilter(FusionConfig(intersect_own_prior=True))
    for T_ob in drive[:3]:
        f.update(T_MAP_ODOM @ T_ob, cov, T_ob)
    T_now = f.pose(drive[3])[0]
    side = T_now.copy()
    side[:3, 3] += T_now[:3, :3] @ np.array([0.0, 1.0, 0.0])  # 1 m along the vehicle's y
    vague = MapOdomFilter(FusionConfig(intersect_own_prior=True))
    for T_ob in drive[:3]:
        vague.update(T_MAP_ODOM @ T_ob, cov, T_ob)
    vague.update(side, cov, drive[3], own_prior=True)
    assert np.linalg.norm(vague.pose(drive[3])[0][:3, 3] - T_now[:3, 3]) < 0.05
    R = T_now[:3, :3]  # a localization tight along the vehicle's y
    sure = np.diag(SIGMA**2)
    sure[:3, :3] = R @ np.diag([0.4**2, 0.05**2, 2.0**2]) @ R.T
    up = f.update(side, sure, drive[3], own_prior=True)
    assert up.accepted
    moved = f.pose(drive[3])[0][:3, 3] - T_now[:3, 3]
    shift = float(moved @ (T_now[:3, :3] @ np.array([0.0, 1.0, 0.0])))
    assert 0.5 < shift < 1.0 + 1e-9, shift
