"""Calibrated pose covariance: the fit recovers a known error model, the file is checked, the command works.

The fit is checked on poses whose errors are drawn from a known camera-axes covariance; the command end to end
on the demo drive with the shipped model, whose PnP covariance alone is far too small (NEES in the thousands).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from ep2p_loc_ros.covariance_calibration import (
    CALIBRATION_FILE,
    CovarianceCalibration,
    camera_frame_errors,
    fit_model_error,
    inflate,
)
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.evaluation.metrics import CHI2_6_MEDIAN, nees
from ep2p_loc_ros.geometry import make_T, rotvec_to_matrix

# A camera-axes error model like the shipped model's: long along the optical axis (z), rotations small.
STD_TRUE = np.array([0.5, 0.2, 2.0, 0.004, 0.02, 0.008])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return rotvec_to_matrix(v / np.linalg.norm(v) * rng.uniform(0, np.pi))


def _poses_with_errors(n: int, rng: np.random.Generator, std: np.ndarray = STD_TRUE):
    """(T_est, T_gt, e_cam): estimates at random poses, truths placed so that each estimate's camera-axes error
    is e_cam ~ N(0, diag(std²))."""
    T_est, T_gt, errs = [], [], []
    for _ in range(n):
        R, t = _random_rotation(rng), rng.uniform(-100, 100, 3)
        e = rng.normal(size=6) * std
        R_gt = rotvec_to_matrix(-R @ e[3:]) @ R  # R_est R_gtᵀ = Exp(R e_rot)
        T_est.append(make_T(R, t))
        T_gt.append(make_T(R_gt, t - R @ e[:3]))
        errs.append(e)
    return np.stack(T_est), np.stack(T_gt), np.stack(errs)


def test_camera_frame_errors_are_the_drawn_errors():
    T_est, T_gt, e = _poses_with_errors(20, np.random.default_rng(0))
    got = camera_frame_errors(T_est, T_gt)
    np.testing.assert_allclose(got, e, atol=1e-9)
    T_est[3] = np.nan
    assert np.isnan(camera_frame_errors(T_est, T_gt)[3]).all()


def test_inflate_rotates_the_camera_axes_error_into_the_map_frame():
    # Camera looking along map +x (camera z -> map x, camera x -> map -y, camera y -> map -z).
    R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    model = np.diag([0.0, 0.0, 4.0, 0.0, 0.0, 0.01])  # 2 m along the optical axis, rotation about it
    out = inflate(make_T(R, np.zeros(3)), np.eye(6) * 1e-4, model)
    np.testing.assert_allclose(np.diag(out), [4.0001, 1e-4, 1e-4, 0.0101, 1e-4, 1e-4], atol=1e-12)


def test_fit_recovers_a_known_error_model_and_leaves_gross_failures_out():
    rng = np.random.default_rng(1)
    T_est, T_gt, _ = _poses_with_errors(600, rng)
    pnp_cov = np.tile(np.eye(6) * 1e-6, (600, 1, 1))  # overconfident, like LM on look-alike inliers
    # 60 gross failures: 20 m off along a random direction; they must not widen the fit
    for i in range(60):
        d = rng.normal(size=3)
        T_est[i, :3, 3] = T_gt[i, :3, 3] + 20.0 * d / np.linalg.norm(d)
    T_est[60:65] = np.nan  # frames without a pose
    m = fit_model_error(T_est, T_gt, pnp_cov)
    # the 60 planted ones, and the few drawn errors beyond 5 m (the 2.5-sigma tail of the 2 m optical-axis std)
    assert m.missing == 5 and m.frames + m.gross == 595 and 60 <= m.gross <= 72
    std = np.sqrt(np.diag(m.covariance))
    np.testing.assert_allclose(std, STD_TRUE, rtol=0.15)
    assert m.nees_median_before > 1e4
    assert abs(m.nees_median_after - CHI2_6_MEDIAN) < 0.01
    assert m.within_95_before < 0.01 and 0.9 < m.within_95_after < 0.99
    # ... and the calibrated covariances are consistent on new poses drawn the same way
    T_est2, T_gt2, _ = _poses_with_errors(400, np.random.default_rng(2))
    cal = CovarianceCalibration({"global": m}, "0" * 64)
    covs = np.stack([cal.apply("global", T, C) for T, C in zip(T_est2, np.tile(pnp_cov[:1], (400, 1, 1)), strict=True)])
    assert 0.9 < np.mean(nees(T_est2, T_gt2, covs) <= 12.5916) < 0.99
    np.testing.assert_array_equal(cal.apply("tracking", T_est2[0], pnp_cov[0]), pnp_cov[0])  # not calibrated
    with pytest.raises(ValueError, match="mode must be one of"):
        cal.apply("slam", T_est2[0], pnp_cov[0])


def test_fit_needs_enough_usable_frames():
    T_est, T_gt, _ = _poses_with_errors(7, np.random.default_rng(3))
    with pytest.raises(DataError, match="at least 8 estimates"):
        fit_model_error(T_est, T_gt, np.tile(np.eye(6), (7, 1, 1)))
    with pytest.raises(ValueError, match="as many"):
        fit_model_error(T_est, T_gt[:3], np.tile(np.eye(6), (7, 1, 1)))


def _calibration() -> CovarianceCalibration:
    T_est, T_gt, _ = _poses_with_errors(50, np.random.default_rng(4))
    m = fit_model_error(T_est, T_gt, np.tile(np.eye(6) * 1e-6, (50, 1, 1)))
    return CovarianceCalibration({"global": m, "tracking": m}, "ab" * 32, {"drives": []})


def test_calibration_file_round_trip_is_atomic_and_checked(tmp_path):
    cal = _calibration()
    path = cal.save(tmp_path / CALIBRATION_FILE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CALIBRATION_FILE]  # no temporary left behind
    back = CovarianceCalibration.load(path, "ab" * 32)
    np.testing.assert_allclose(back.modes["tracking"].covariance, cal.modes["tracking"].covariance)
    assert back.modes["global"].frames == cal.modes["global"].frames

    with pytest.raises(DataError, match="calibrated for weights abababababab"):
        CovarianceCalibration.load(path, "cd" * 32)
    good = json.loads(path.read_text())
    bad_cases = {
        "truncated": path.read_text()[:100],
        "format": json.dumps({**good, "format_version": 99}),
        "mode": json.dumps({**good, "modes": {"slam": good["modes"]["global"]}}),
        "matrix": json.dumps({**good, "modes": {"global": {**good["modes"]["global"], "covariance": [[1.0]]}}}),
        "not PSD": json.dumps(
            {**good, "modes": {"global": {**good["modes"]["global"], "covariance": (-np.eye(6)).tolist()}}}
        ),
        "nan": json.dumps(
            {**good, "modes": {"global": {**good["modes"]["global"], "covariance": [[float("nan")] * 6] * 6}}}
        ),
        "field": json.dumps({**good, "modes": {"global": {"covariance": good["modes"]["global"]["covariance"]}}}),
    }
    messages = {
        "truncated": "cannot read covariance calibration",
        "format": "format_version 99 is not supported",
        "mode": "unknown modes",
        "matrix": "expected a finite 6x6 matrix",
        "not PSD": "not positive semi-definite",
        "nan": "expected a finite 6x6 matrix",
        "field": "missing or malformed field",
    }
    for name, text in bad_cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        with pytest.raises(DataError, match=messages[name]):
            CovarianceCalibration.load(p)


def test_calibrate_covariance_command_on_the_demo_drive(demo_data, tmp_path, capsys):
    """The shipped model on the demo drive: PnP's covariance alone is far too small; the calibrated one is
    consistent on the frames it was fitted on, the localizer applies it, and other weights refuse it."""
    from ep2p_loc_ros.cli import main
    from ep2p_loc_ros.demo_data import DEFAULT_MODEL_DIR
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns(CALIBRATION_FILE, "README.md"))
    args = ["calibrate-covariance", "--drive", str(demo_data.map_dir), str(demo_data.sequence_dir)]
    assert main([*args, "--model", str(model), "--stride", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["modes"]) == {"global", "tracking"}
    for mode, m in data["modes"].items():
        assert m["frames"] >= 8
        # PnP alone: overconfident (global ~37 with the pose hypotheses since session 31, > 100 before; tracking > 100)
        assert m["nees_median_before"] > 5 * CHI2_6_MEDIAN
        assert abs(m["nees_median_after"] - CHI2_6_MEDIAN) < 0.01
        assert m["within_95_after"] > 0.5 > m["within_95_before"]
        std = m["std_camera_axes"]
        assert std[2] > std[1]  # the optical axis is where the error lies ...
        # ... metres of it when tracking; single images with the pose hypotheses are within ~8 cm on each axis here
        assert std[2] > 0.1 if mode == "tracking" else max(std[:3]) < 0.5, (mode, std)
    cal = CovarianceCalibration.load(model / CALIBRATION_FILE)

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence

    seq = KittiOdometrySequence(demo_data.sequence_dir)
    calibrated = Localizer.from_paths(demo_data.map_dir, model)
    plain = Localizer.from_paths(demo_data.map_dir, model, LocalizerConfig(calibrated_covariance=False))
    assert calibrated.calibration is not None and plain.calibration is None
    a = calibrated.localize(seq.image(0), seq.calib.camera)
    b = plain.localize(seq.image(0), seq.calib.camera)
    assert a.ok and b.ok
    np.testing.assert_allclose(a.T_map_cam, b.T_map_cam)
    np.testing.assert_allclose(a.covariance, cal.apply("global", b.T_map_cam, b.covariance))
    # the model's error on top of PnP's (frame 0 of the demo drive: 8.9 against 4.3 cm with the pose hypotheses)
    assert np.sqrt(np.linalg.eigvalsh(a.covariance[:3, :3]).max()) > 1.5 * np.sqrt(
        np.linalg.eigvalsh(b.covariance[:3, :3]).max()
    )

    # The calibration belongs to these weights: with others it is refused, naming the file.
    data["weights_sha256"] = "0" * 64
    (model / CALIBRATION_FILE).write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"covariance\.json: calibrated for weights 000000000000"):
        Localizer.from_paths(demo_data.map_dir, model)


def test_calibration_per_environment_replaces_the_pooled_modes_on_its_maps(tmp_path):
    """An environment's own modes win on its maps; other maps (and other modes) keep the pooled ones; the file
    round-trips them and refuses unknown environments."""
    pooled = _calibration()
    T_est, T_gt, _ = _poses_with_errors(50, np.random.default_rng(5), STD_TRUE / 4)  # indoors: a quarter of it
    own = fit_model_error(T_est, T_gt, np.tile(np.eye(6) * 1e-6, (50, 1, 1)))
    cal = pooled.with_environment("indoor", {"tracking": own}, {"drives": ["indoor one"]})
    assert cal.model_error("tracking", "indoor") is own
    assert cal.model_error("global", "indoor") is pooled.modes["global"]  # not calibrated there: the pooled one
    assert cal.model_error("tracking", "outdoor") is pooled.modes["tracking"]
    assert cal.model_error("tracking") is pooled.modes["tracking"]
    T, C = T_est[0], np.eye(6) * 1e-6
    np.testing.assert_allclose(cal.apply("tracking", T, C, "indoor"), inflate(T, C, own.covariance))
    np.testing.assert_allclose(cal.apply("tracking", T, C, "outdoor"), pooled.apply("tracking", T, C))
    assert cal.info["environments"]["indoor"] == {"drives": ["indoor one"]} and "drives" in cal.info
    with pytest.raises(ValueError, match="environment must be one of"):
        pooled.with_environment("underwater", {"tracking": own}, {})

    path = cal.save(tmp_path / CALIBRATION_FILE)
    back = CovarianceCalibration.load(path, "ab" * 32)
    np.testing.assert_allclose(back.model_error("tracking", "indoor").covariance, own.covariance)
    np.testing.assert_allclose(back.model_error("tracking", "outdoor").covariance, pooled.modes["tracking"].covariance)
    assert "environments" not in pooled.to_json()  # files without it are written as before
    good = json.loads(path.read_text())
    for envs, message in (
        ({"underwater": good["environments"]["indoor"]}, "unknown environments"),
        ({"indoor": {}}, "environments.indoor must be a non-empty object"),
        ({"indoor": {"slam": good["modes"]["global"]}}, "environments.indoor: unknown modes"),
        ([1, 2], "'environments' must be an object"),
    ):
        p = tmp_path / "bad.json"
        p.write_text(json.dumps({**good, "environments": envs}))
        with pytest.raises(DataError, match=message):
            CovarianceCalibration.load(p)


def test_calibrate_covariance_for_one_environment_adds_to_the_calibration(demo_data, tmp_path, capsys):
    """`calibrate-covariance --environment E`: fits on E's maps only, adds the fit to the existing file (the pooled
    modes stay), and the localizer uses it on E's maps; a map of another environment is refused."""
    from ep2p_loc_ros.cli import main
    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.demo_data import DEFAULT_MODEL_DIR
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig
    from ep2p_loc_ros.map import load_map
    from ep2p_loc_ros.model.network import WEIGHTS_FILE, sha256_file

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns(CALIBRATION_FILE, "README.md"))
    args = [
        "calibrate-covariance",
        "--model",
        str(model),
        "--drive",
        str(demo_data.map_dir),
        str(demo_data.sequence_dir),
    ]
    args += ["--modes", "tracking", "--stride", "4", "--prior-noise", "0.5", "1.5"]
    # the environment the demo map says it is (maps built before session 26 say none: "unknown"), and another one
    env = str(load_map(demo_data.map_dir).params.get("environment", "unknown"))
    other = "indoor" if env != "indoor" else "outdoor"
    # nothing to add to yet
    assert main([*args, "--environment", env]) == 2
    assert "cannot read covariance calibration" in capsys.readouterr().err
    pooled = replace(_calibration(), weights_sha256=sha256_file(model / WEIGHTS_FILE))
    pooled.save(model / CALIBRATION_FILE)
    assert main([*args, "--environment", other]) == 2
    assert f"is an {env!r} map, not {other!r}" in capsys.readouterr().err
    assert main([*args, "--environment", env]) == 0
    assert f"(environments.{env})" in capsys.readouterr().out
    cal = CovarianceCalibration.load(model / CALIBRATION_FILE)
    np.testing.assert_allclose(cal.modes["tracking"].covariance, pooled.modes["tracking"].covariance)
    assert set(cal.environments) == {env} and set(cal.environments[env]) == {"tracking"}
    assert cal.info["environments"][env]["prior_noise_m_deg"] == [0.5, 1.5]
    own = cal.environments[env]["tracking"]
    assert own.frames >= 8 and abs(own.nees_median_after - CHI2_6_MEDIAN) < 0.01

    seq = KittiOdometrySequence(demo_data.sequence_dir)
    calibrated = Localizer.from_paths(demo_data.map_dir, model)
    plain = Localizer.from_paths(demo_data.map_dir, model, LocalizerConfig(calibrated_covariance=False))
    assert f"tracking calibrated for {env} maps" in calibrated.covariance_source
    prior = seq.T_world_cam(8)
    a = calibrated.localize(seq.image(8), seq.calib.camera, prior)
    b = plain.localize(seq.image(8), seq.calib.camera, prior)
    assert a.ok and b.ok
    np.testing.assert_allclose(a.covariance, inflate(b.T_map_cam, b.covariance, own.covariance))
    g = calibrated.localize(seq.image(8), seq.calib.camera)  # global: the pooled mode (not calibrated apart)
    g_plain = plain.localize(seq.image(8), seq.calib.camera)
    np.testing.assert_allclose(g.covariance, pooled.apply("global", g_plain.T_map_cam, g_plain.covariance))
