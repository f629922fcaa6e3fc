"""Scoring a run: metrics (evo ATE, NEES, recall), result files, TUM, and the report folder with its plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ep2p_loc_ros.evaluation.trajectory import (
    Run,
    covariance_base_to_camera,
    evaluate_result,
    evaluate_run,
    load_result,
    read_tum,
    write_result,
    write_tum,
)
from ep2p_loc_ros.geometry import make_T, rotvec_to_matrix, se3_exp

T_CAM_IN_BASE = make_T(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [0.27, 0.0, 1.65])  # optical, ahead


def _drive(n: int) -> np.ndarray:
    """Camera poses along a curve in a z-up world."""
    T = []
    for i in range(n):
        yaw = 0.04 * i
        T.append(make_T(rotvec_to_matrix([0, 0, yaw]), [3.0 * i, 0.05 * i * i, 0.0]) @ T_CAM_IN_BASE)
    return np.stack(T)


def _perturb(T: np.ndarray, cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample a pose around ``T`` with the ROS-order covariance convention of pnp.py (t + δt, exp(δr) R)."""
    e = rng.multivariate_normal(np.zeros(6), cov)
    out = T.copy()
    out[:3, 3] += e[:3]
    out[:3, :3] = rotvec_to_matrix(e[3:]) @ T[:3, :3]
    return out


def make_run(n: int = 40, fail: tuple[int, ...] = (5, 17, 30), seed: int = 0) -> Run:
    rng = np.random.default_rng(seed)
    T_gt = _drive(n)
    cov = np.diag([0.04, 0.04, 0.01, 1e-4, 1e-4, 4e-4])
    T_est = np.stack([_perturb(T, cov, rng) for T in T_gt])
    covs = np.tile(cov, (n, 1, 1))
    lat = rng.uniform(80, 200, n)
    for i in fail:
        T_est[i] = np.nan
        covs[i] = np.nan
        lat[i] = np.nan
    stamps = 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 100_000_000
    return Run(stamps, T_gt, T_est, covs, lat, T_base_cam=T_CAM_IN_BASE, dropped=1, failed=2)


def test_metrics_of_a_run() -> None:
    run = make_run(400, fail=tuple(range(0, 400, 20)))
    s = evaluate_run(run)
    assert s["frames"] == 400 and s["localized_frames"] == 380
    assert s["localized"] == pytest.approx(0.95)
    t_err = np.linalg.norm(run.T_est[:, :3, 3] - run.T_gt[:, :3, 3], axis=1)
    ok = np.isfinite(t_err)
    # rotation errors here are ~1°: the 0.5 m / 5° recall is the translation share, counted over all frames
    assert s["recall"]["0.5m_5deg"] == pytest.approx(np.sum(t_err[ok] <= 0.5) / 400)
    assert s["recall"]["5m_10deg"] == pytest.approx(0.95)
    assert s["translation_error_m"]["median"] == pytest.approx(np.median(t_err[ok]))
    # noise drawn from the published covariance: NEES averages the 6 degrees of freedom
    assert 5.0 < s["nees"]["mean"] < 7.0
    assert 0.9 < s["nees"]["within_chi2_95"] <= 1.0
    assert s["ate"]["poses"] == 380
    assert s["ate"]["aligned_rmse_m"] <= s["ate"]["rmse_m"]
    assert s["latency_ms"]["count"] == 380 and 80 <= s["latency_ms"]["median"] <= 200
    assert (s["dropped"], s["failed"], s["no_pose"]) == (1, 2, 20)


def test_ate_alignment_removes_a_rigid_offset() -> None:
    run = make_run(30, fail=())
    run.T_est = np.stack([se3_exp(np.array([2.0, -1.0, 0.5, 0.0, 0.0, 0.1])) @ T for T in run.T_gt])
    s = evaluate_run(run)
    assert s["ate"]["rmse_m"] > 1.0
    assert s["ate"]["aligned_rmse_m"] < 1e-6
    assert s["ate"]["alignment"]["rotation_deg"] == pytest.approx(np.degrees(0.1), abs=1e-6)


def test_no_pose_at_all_is_reported_not_raised() -> None:
    run = make_run(10, fail=tuple(range(10)))
    s = evaluate_run(run)
    assert s["localized"] == 0.0 and s["recall"]["5m_10deg"] == 0.0
    assert np.isnan(s["ate"]["rmse_m"]) and np.isnan(s["nees"]["mean"])


def test_covariance_base_to_camera_matches_sampling() -> None:
    rng = np.random.default_rng(1)
    T_map_base = make_T(rotvec_to_matrix([0.1, -0.2, 1.0]), [10.0, 5.0, 0.0])
    T_map_cam = T_map_base @ T_CAM_IN_BASE
    A = rng.normal(size=(6, 6)) * 0.05
    cov_base = A @ A.T + np.eye(6) * 1e-4
    samples = []
    for _ in range(20000):
        Tb = _perturb(T_map_base, cov_base, rng)
        Tc = Tb @ T_CAM_IN_BASE
        samples.append(np.concatenate([Tc[:3, 3] - T_map_cam[:3, 3], _log(Tc[:3, :3] @ T_map_cam[:3, :3].T)]))
    emp = np.cov(np.asarray(samples).T)
    pred = covariance_base_to_camera(cov_base, T_map_base, T_map_cam)
    np.testing.assert_allclose(pred, emp, atol=0.1 * np.abs(pred).max())


def _log(R: np.ndarray) -> np.ndarray:
    from ep2p_loc_ros.geometry import matrix_to_rotvec

    return matrix_to_rotvec(R)


def test_tum_round_trip(tmp_path: Path) -> None:
    run = make_run(12, fail=(1, 5, 9))
    n = write_tum(tmp_path / "est.tum", run.stamps_ns, run.T_est)
    assert n == 9  # NaN poses are left out
    stamps, T = read_tum(tmp_path / "est.tum")
    ok = run.localized
    np.testing.assert_array_equal(stamps, run.stamps_ns[ok])
    np.testing.assert_allclose(T, run.T_est[ok], atol=1e-8)
    # evo reads it too
    from evo.tools import file_interface

    traj = file_interface.read_tum_trajectory_file(str(tmp_path / "est.tum"))
    assert traj.num_poses == 9


def test_result_dir_against_bag_ground_truth(tmp_path: Path) -> None:
    """A replay result (base_link poses, as the node publishes them) scores the same as the camera run."""
    pytest.importorskip("rclpy")
    from test_bags import make_tiny_sequence

    from ep2p_loc_ros.evaluation.report import format_table
    from ep2p_loc_ros.ros.bags import load_bag_summary, sequence_to_bag

    seq = make_tiny_sequence(tmp_path / "seq", n=6)
    info = sequence_to_bag(seq, tmp_path / "bag")
    s = load_bag_summary(tmp_path / "bag")
    rng = np.random.default_rng(3)
    cov_base = np.diag([0.01, 0.02, 0.01, 1e-4, 2e-4, 1e-4])
    frames, T_est_cam, cov_cam = [], [], []
    for k, (t_ns, T_base) in enumerate(zip(info.stamps_ns, s.T_map_base_gt, strict=True)):
        if k in (2, 4):  # refused by the gate, for the same cause with different numbers
            reason = f"inlier ratio too low: 0.1{k} < gate.min_inlier_ratio 0.25"
            # ... though the localizer found the exact pose: the node's ~/raw_pose, before the gate
            frames.append(
                {"stamp_ns": t_ns, "pose": None, "covariance": None, "latency_ms": None, "reason": reason}
                | {"raw_pose": T_base, "pose_of": "base_link"}
            )
            T_est_cam.append(np.full((4, 4), np.nan))
            cov_cam.append(np.full((6, 6), np.nan))
            continue
        Tb = _perturb(T_base, cov_base, rng)
        frames.append({"stamp_ns": t_ns, "pose": Tb, "covariance": cov_base, "latency_ms": 100.0 + k, "raw_pose": Tb})
        frames[-1]["confidence"] = None if k == 5 else 0.1 * k
        T_est_cam.append(Tb @ s.T_base_cam)
        cov_cam.append(covariance_base_to_camera(cov_base, Tb, Tb @ s.T_base_cam))
    write_result(tmp_path / "res", frames, input_bag=str(tmp_path / "bag"), pose_frame="base_link", dropped=0)
    run = load_result(tmp_path / "res")
    np.testing.assert_allclose(run.T_gt, s.T_map_base_gt @ s.T_base_cam, atol=1e-9)
    np.testing.assert_allclose(run.T_est, np.stack(T_est_cam), atol=1e-9)
    np.testing.assert_allclose(run.covariances, np.stack(cov_cam), atol=1e-12)
    # raw poses (base_link) come back as camera poses: the published ones, and the two refused exact ones
    T_raw_expected = np.stack(T_est_cam)
    T_raw_expected[[2, 4]] = run.T_gt[[2, 4]]
    np.testing.assert_allclose(run.T_raw, T_raw_expected, atol=1e-9)
    np.testing.assert_allclose(run.confidence, [0.0, 0.1, np.nan, 0.3, np.nan, np.nan])  # the node's, where it said
    summary = evaluate_result(tmp_path / "res", out_dir=tmp_path / "report")
    assert summary["localized_frames"] == 4 and summary["no_pose"] == 2
    assert summary["before_gate"]["poses"] == 6 and summary["before_gate"]["refused"] == 2
    assert summary["no_pose_reasons"] == {"inlier ratio too low": 2}
    assert "| inlier ratio too low | 2 |" in Path(summary["report"]).read_text()
    assert "inlier ratio too low (2 frames)" in format_table(summary)
    # the TUM files are of base_link, what the node publishes
    _, T_gt_tum = read_tum(tmp_path / "report" / "ground_truth.tum")
    np.testing.assert_allclose(T_gt_tum, s.T_map_base_gt, atol=1e-8)
    with pytest.raises(ValueError, match="replay result"):
        load_result(tmp_path / "seq")


def test_report_folder(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ep2p_loc_ros.evaluation.report import PLOTS, format_table, write_report

    run = make_run(40)
    run.stage_latency_ms = {"total": list(np.random.default_rng(0).uniform(60, 150, 37))}
    run.T_raw = run.T_est.copy()  # (every plot is drawn: the confidence plot needs the poses before the gate)
    run.confidence = np.linspace(0.2, 0.9, 40)
    s = evaluate_run(run)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (120, 300, 3), dtype=np.uint8)
    px = rng.uniform(0, [300, 120], (80, 2))
    res = SimpleNamespace(matched_pixels=px, inlier_mask=rng.random(80) < 0.6, status=SimpleNamespace(value="ok"))
    md = write_report(run, s, tmp_path / "rep", match_frame=(rgb, res, "frame 7"))
    text = md.read_text()
    for name in PLOTS.values():
        png = tmp_path / "rep" / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in text
    assert "recall @ 0.5 m, 5°" in text
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())  # strict JSON: NaN became null
    assert summary["frames"] == 40
    table = format_table(s)
    assert "recall @ 0.25 m, 2°" in table and "ATE" in table and "NEES" in table
    assert (tmp_path / "rep" / "estimate.tum").is_file()


def test_each_localizations_confidence_is_scored_against_its_pose_and_plotted(tmp_path: Path) -> None:
    """``Run.confidence`` (the node's diagnostics): how well it told the localizer's right poses (before the gate)
    from its wrong ones; the report says it and draws it, and a run without it has neither."""
    from ep2p_loc_ros.evaluation.report import PLOTS, format_table, write_report

    run = make_run(40, fail=(5, 17, 30))
    raw = run.T_gt.copy()  # the localizer's poses: right ...
    wrong = [3, 9, 21, 22]
    raw[wrong, :3, 3] += 3.0  # ... but four, 5 m off
    raw[30] = np.nan  # and none on frame 30
    run.T_raw = raw
    run.confidence = np.full(40, 0.9)
    run.confidence[[3, 9, 21]] = 0.2  # three of the wrong ones say so; 22 does not, and neither does right 12
    run.confidence[12] = 0.3
    run.confidence[31] = np.nan  # no confidence: left out (as frame 30, without a pose)
    s = evaluate_run(run)
    c = s["before_gate"]["confidence"]
    assert c["frames"] == 38 and c["kept"] == pytest.approx(34 / 38)
    assert c["right_of_kept"] == pytest.approx(33 / 34) and c["right_of_rest"] == pytest.approx(1 / 4)
    # AUC over 34 right x 4 wrong pairs: wrong 22 (0.9) ties with 33 right ones; right 12 (0.3) beats the three at 0.2
    assert c["auc"] == pytest.approx((33 * 3 + 33 * 0.5 + 1 * 3) / (34 * 4))
    assert "confidence AUC" in format_table(s)
    text = write_report(run, s, tmp_path / "rep").read_text()
    assert f"]({PLOTS['confidence']})" in text and (tmp_path / "rep" / PLOTS["confidence"]).is_file()
    run.confidence = None
    s = evaluate_run(run)
    assert "confidence" not in s["before_gate"]
    text = write_report(run, s, tmp_path / "rep").read_text()
    assert PLOTS["confidence"] not in text and not (tmp_path / "rep" / PLOTS["confidence"]).exists()


def test_poses_refused_by_the_gate_are_scored_before_the_gate(tmp_path: Path) -> None:
    """``Run.T_raw`` (the node's ~/raw_pose): what the localizer found, published or not. Its recall counts the
    refused poses too; the report names them and the trajectory plot draws them."""
    from ep2p_loc_ros.evaluation.report import format_table, write_report

    run = make_run(40, fail=(5, 17, 30))
    raw = run.T_est.copy()
    raw[[5, 17]] = run.T_gt[[5, 17]]  # two poses the gate refused (exact), one frame with no pose at all (30)
    run.T_raw = raw
    s = evaluate_run(run)
    bg = s["before_gate"]
    assert (bg["poses"], bg["refused"]) == (39, 2)
    t_pub, t_raw = s["recall"]["0.5m_5deg"], bg["recall"]["0.5m_5deg"]
    assert t_raw == pytest.approx(t_pub + 2 / 40)  # the two refused exact poses count before the gate only
    assert "before the gate: poses found (refused)" in format_table(s) and "39 (2 refused)" in format_table(s)
    text = write_report(run, s, tmp_path / "rep").read_text()
    assert "before the gate: recall @ 0.5 m, 5° / 5 m, 10°" in text and "~/raw_pose" in text
    # without raw poses (older results, in-process runs) there is no such section, and the plots lack them
    run.T_raw = None
    assert "before_gate" not in evaluate_run(run)
    write_report(run, evaluate_run(run), tmp_path / "plain")
    for name in ("trajectory_topdown.png", "error_over_time.png", "error_cdf.png"):
        assert (tmp_path / "rep" / name).read_bytes() != (tmp_path / "plain" / name).read_bytes(), name
