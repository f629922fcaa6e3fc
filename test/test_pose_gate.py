"""Quality gate, covariance re-basing to the vehicle frame, and transform interpolation (ROS-free)."""

import numpy as np
import pytest

from ep2p_loc_ros.geometry import invert, make_T, matrix_to_rotvec, rotvec_to_matrix
from ep2p_loc_ros.pose_gate import GateConfig, PoseGate, interpolate_transform, rebase_pose

COV = np.diag([0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4])  # 0.1 m, 0.57 deg


def _pose(x=0.0, yaw=0.0):
    return make_T(rotvec_to_matrix([0, 0, yaw]), [x, 0, 0])


def test_pose_gate_accepts_good_and_names_each_refusal():
    gate = PoseGate(GateConfig(min_inliers=30, max_position_std_m=1.0, max_rotation_std_deg=2.0))
    assert gate.check(_pose(), COV, 100, 0.0).accepted
    d = gate.check(_pose(), COV, 12, 0.1)
    assert not d.accepted and "too few inliers: 12" in d.reason
    d = gate.check(_pose(), np.diag([4.0, 0.01, 0.01, 1e-4, 1e-4, 1e-4]), 100, 0.1)
    assert not d.accepted and "position std 2.000 m" in d.reason
    d = gate.check(_pose(), np.diag([0.01] * 3 + [0.01] * 3), 100, 0.1)  # 5.7 deg
    assert not d.accepted and "rotation std" in d.reason
    d = gate.check(_pose(), np.full((6, 6), np.nan), 100, 0.1)
    assert not d.accepted and "covariance is not a finite" in d.reason
    assert not gate.check(np.full((4, 4), np.nan), COV, 100, 0.1).accepted


def test_pose_gate_jump_allows_motion_and_covariance_and_reanchors():
    cfg = GateConfig(max_jump_sigma=3.0, max_speed_mps=10.0, max_angular_speed_dps=30.0, jump_reset_after=3)
    gate = PoseGate(cfg)
    assert gate.check(_pose(0.0), COV, 100, 0.0).accepted
    # 0.1 s at 10 m/s = 1 m, plus 3 * sqrt(0.1^2 + 0.1^2) = 0.42 m
    assert gate.check(_pose(1.3), COV, 100, 0.1).accepted
    d = gate.check(_pose(3.0), COV, 100, 0.2)
    assert not d.accepted and d.held and d.reason.startswith("held: jump: moved 1.70 m")
    d = gate.check(_pose(1.3, yaw=np.radians(20)), COV, 100, 0.2)
    assert not d.accepted and "turned 20.0 deg" in d.reason
    # a far pose is held back; it is published once three poses in a row agree with it (a kidnapped vehicle)
    d = gate.check(_pose(50.0), COV, 100, 0.3)
    assert not d.accepted and d.held and d.reason.startswith("held: jump") and "1/3 agreeing" in d.reason
    assert not gate.check(_pose(50.5), COV, 100, 0.4).accepted
    d = gate.check(_pose(51.0), COV, 100, 0.5)
    assert d.accepted and "re-anchored: 3 poses in a row agree" in d.reason
    assert gate.check(_pose(51.5), COV, 100, 0.6).accepted
    # beyond the timeout there is no jump test; reset() forgets the reference
    assert gate.check(_pose(500.0), COV, 100, 0.6 + cfg.jump_timeout_s + 0.1).accepted
    gate.reset()
    assert gate.check(_pose(-500.0), COV, 100, 6.0).accepted


def test_pose_gate_config_is_validated():
    with pytest.raises(ValueError, match="max_position_std_m"):
        GateConfig(max_position_std_m=0.0)
    with pytest.raises(ValueError, match="jump_reset_after"):
        GateConfig(jump_reset_after=0)
    with pytest.raises(ValueError, match="first_confirmations"):
        GateConfig(first_confirmations=0)


def test_rebase_pose_matches_monte_carlo():
    rng = np.random.default_rng(0)
    T_map_cam = make_T(rotvec_to_matrix([0.1, -0.3, 1.2]), [10.0, -2.0, 1.5])
    T_base_cam = make_T(rotvec_to_matrix([-np.pi / 2, 0, -np.pi / 2]), [1.5, 0.2, 1.7])
    A = rng.normal(size=(6, 6)) * [0.05, 0.05, 0.05, 0.01, 0.01, 0.01]
    cov = A @ A.T
    T_map_base, cov_base = rebase_pose(T_map_cam, cov, T_base_cam)
    np.testing.assert_allclose(T_map_base, T_map_cam @ invert(T_base_cam), atol=1e-12)
    # sample camera poses with the covariance's model, re-base each, measure the spread of the base pose
    xi = rng.multivariate_normal(np.zeros(6), cov, size=20000)
    errs = []
    for d in xi:
        Tc = make_T(rotvec_to_matrix(d[3:]) @ T_map_cam[:3, :3], T_map_cam[:3, 3] + d[:3])
        Tb = Tc @ invert(T_base_cam)
        errs.append(np.r_[Tb[:3, 3] - T_map_base[:3, 3], matrix_to_rotvec(Tb[:3, :3] @ T_map_base[:3, :3].T)])
    emp = np.cov(np.array(errs).T)
    np.testing.assert_allclose(emp, cov_base, atol=0.05 * np.abs(cov_base).max())


def test_interpolate_transform_endpoints_and_midpoint():
    T0 = make_T(rotvec_to_matrix([0, 0, 0.2]), [0, 0, 0])
    T1 = make_T(rotvec_to_matrix([0, 0, 0.6]), [2, 4, 0])
    np.testing.assert_allclose(interpolate_transform(T0, T1, 0.0), T0, atol=1e-12)
    np.testing.assert_allclose(interpolate_transform(T0, T1, 1.0), T1, atol=1e-12)
    mid = interpolate_transform(T0, T1, 0.5)
    np.testing.assert_allclose(mid, make_T(rotvec_to_matrix([0, 0, 0.4]), [1, 2, 0]), atol=1e-12)


def test_pose_gate_holds_a_jump_until_confirmed_and_outliers_never_confirm():
    cfg = GateConfig(max_jump_sigma=3.0, max_speed_mps=10.0, jump_reset_after=3)
    gate = PoseGate(cfg)
    t, x = 0.0, 0.0
    assert gate.check(_pose(x), COV, 100, t).accepted
    rng = np.random.default_rng(0)
    # wild outliers in a row for 4 s (< jump_timeout_s), far from the track and from each other: none published
    for _ in range(40):
        t += 0.1
        d = gate.check(_pose(float(rng.uniform(100, 1000)) * rng.choice([-1, 1])), COV, 100, t)
        assert not d.accepted and d.held and "1/3" in d.reason, d.reason
    # the true track resumes (within the jump test of the last published pose, as time passed): accepted
    t += 0.1
    assert gate.check(_pose(x + 1.0), COV, 100, t).accepted
    # an isolated outlier inside a good track is held, and does not disturb the track
    t += 0.1
    assert not gate.check(_pose(300.0), COV, 100, t).accepted
    t += 0.1
    d = gate.check(_pose(x + 1.5), COV, 100, t)
    assert d.accepted and d.reason == "ok"
    # two agreeing far poses then one that disagrees: the count starts again
    for k, expect in ((1, "1/3"), (2, "2/3")):
        t += 0.1
        assert expect in gate.check(_pose(400.0 + 0.5 * k), COV, 100, t).reason
    t += 0.1
    assert "1/3" in gate.check(_pose(-400.0), COV, 100, t).reason


def test_pose_gate_holds_a_first_pose_until_confirmed():
    """With nothing recent to test a pose against, a wrong first pose is not published: it must be confirmed."""
    cfg = GateConfig(max_jump_sigma=3.0, max_speed_mps=10.0, jump_reset_after=3, first_confirmations=3)
    gate = PoseGate(cfg)
    t = 0.0
    # gross first poses that disagree with each other (a global search's usual failure): none published
    for x in (80.0, -60.0, 200.0):
        d = gate.check(_pose(x), COV, 100, t)
        assert not d.accepted and d.held and "no recent pose to test it against; 1/3" in d.reason, d.reason
        t += 0.1
    # three in a row that agree (the vehicle moving 1 m per 0.1 s): the third is published
    for k, expect in ((0, "1/3"), (1, "2/3")):
        d = gate.check(_pose(10.0 + k), COV, 100, t)
        assert not d.accepted and expect in d.reason, d.reason
        t += 0.1
    d = gate.check(_pose(12.0), COV, 100, t)
    assert d.accepted and "confirmed: 3 poses in a row agree" in d.reason
    # from then on the jump test applies as before: the next pose is published at once
    t += 0.1
    assert gate.check(_pose(13.0), COV, 100, t).reason == "ok"
    # after jump_timeout_s without a published pose the reference is too old: confirm again
    t += cfg.jump_timeout_s + 1.0
    d = gate.check(_pose(40.0), COV, 100, t)
    assert not d.accepted and "1/3" in d.reason
    # and reset() (a new initial pose) asks for it too
    gate.reset()
    assert "1/3" in gate.check(_pose(40.0), COV, 100, t + 0.1).reason
    # a time going backwards is no reference either
    gate = PoseGate(cfg)
    for k in range(3):
        gate.check(_pose(float(k)), COV, 100, 10.0 + 0.1 * k)
    assert "1/3" in gate.check(_pose(0.0), COV, 100, 5.0).reason


def test_pose_gate_confirmation_of_one_accepts_immediately():
    gate = PoseGate(GateConfig(jump_reset_after=1))
    assert gate.check(_pose(0.0), COV, 100, 0.0).accepted
    d = gate.check(_pose(500.0), COV, 100, 0.1)
    assert d.accepted and "re-anchored" in d.reason


def test_pose_gate_refuses_a_low_inlier_ratio():
    from ep2p_loc_ros.pose_gate import GateConfig, PoseGate

    gate = PoseGate(GateConfig(min_inlier_ratio=0.25))
    T, cov = np.eye(4), np.eye(6) * 1e-4
    d = gate.check(T, cov, 100, 0.0, num_matches=1000)
    assert not d.accepted and "inlier ratio too low: 0.10" in d.reason
    assert gate.check(T, cov, 300, 0.1, num_matches=1000).accepted
    assert gate.check(T, cov, 100, 0.2).accepted  # no match count: no ratio test
    with pytest.raises(ValueError, match="min_inlier_ratio"):
        GateConfig(min_inlier_ratio=1.5)


def test_pose_gate_refuses_a_pose_unlikely_right_when_it_knows_how_likely():
    from ep2p_loc_ros.pose_gate import GateConfig, PoseGate

    gate = PoseGate(GateConfig(min_confidence=0.5))
    T, cov = np.eye(4), np.eye(6) * 1e-4
    d = gate.check(T, cov, 100, 0.0, confidence=0.2)
    assert not d.accepted and d.reason == "confidence too low: 0.20 < gate.min_confidence 0.5"
    assert gate.check(T, cov, 100, 0.1, confidence=0.5).accepted
    assert gate.check(T, cov, 100, 0.2).accepted  # no confidence (no fit for the map): not tested
    assert PoseGate(GateConfig(min_confidence=0.0)).check(T, cov, 100, 0.0, confidence=0.01).accepted  # 0: off
    with pytest.raises(ValueError, match="min_confidence"):
        GateConfig(min_confidence=-0.1)


def test_fusion_refuses_a_localization_with_too_few_inliers_or_unlikely_right_and_says_why():
    """``fusion_refusal``: the node (and ``bench/fusion.py``) fuse a localization unless it has fewer inliers than
    ``gate.min_inliers`` or a confidence below ``gate.min_confidence``; an unknown confidence (NaN) is not tested,
    and the gate's covariance and jump tests do not apply (the filter has its own)."""
    from ep2p_loc_ros.pose_gate import fusion_refusal

    cfg = GateConfig(min_inliers=30, min_confidence=0.3)
    assert fusion_refusal(cfg, 30, 0.3) is None
    assert fusion_refusal(cfg, 500) is None  # (no confidence fit for the map)
    assert fusion_refusal(cfg, 29, 0.9) == "29 inliers < gate.min_inliers 30"
    assert fusion_refusal(cfg, 100, 0.12) == "confidence too low: 0.12 < gate.min_confidence 0.3"
    assert fusion_refusal(GateConfig(min_inliers=30, min_confidence=0.0), 100, 0.01) is None  # 0: off
