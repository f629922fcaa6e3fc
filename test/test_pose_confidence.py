"""The pose confidence: the fit recovers a known logistic relation, the file is checked, the localizer and the
commands carry it end to end (the demo drive with the shipped model)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.pose_confidence import (
    CONFIDENCE_FILE,
    SIGNALS,
    ConfidenceModel,
    confidence_summary,
    fit_logistic,
    signal_vector,
)

W_TRUE, B_TRUE = np.array([2.0, -1.0, 0.5]), -0.3


def _draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signals on their own scales (as the real ones: scores ~0.3, logs ~-2.5), and right/wrong drawn from a known
    logistic model of the standardised signals; with the true probabilities."""
    z = rng.normal(size=(n, len(SIGNALS)))
    X = z * np.array([0.1, 0.8, 0.5]) + np.array([0.3, -2.5, -2.3])
    p = 1 / (1 + np.exp(-(z @ W_TRUE + B_TRUE)))
    return X, rng.random(n) < p, p


def test_fit_recovers_a_known_logistic_relation_and_ranks_like_it():
    X, good, p_true = _draw(6000, np.random.default_rng(0))
    fit = fit_logistic(X, good)
    p = fit.probability(X)
    assert np.abs(p - p_true).mean() < 0.02
    # the weights of the standardised signals are the drawn ones (the sample's own mean and std standardise)
    np.testing.assert_allclose(fit.weights, W_TRUE, atol=0.15)
    assert fit.frames == 6000 and fit.right == int(good.sum())
    assert fit.auc > 0.8 and fit.brier < 0.2
    # a single vector gives the same as a row of the batch
    assert fit.probability(X[7]) == pytest.approx(p[7])


def test_fit_stays_finite_on_separable_data_and_leaves_non_finite_rows_out():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3))
    good = X[:, 0] > 0  # perfectly separable: without the ridge, the weights would run off to infinity
    X[3] = np.nan
    fit = fit_logistic(X, good)
    assert np.isfinite(fit.weights).all() and fit.frames == 59
    assert fit.auc == 1.0


def test_fit_refuses_too_few_frames_or_one_class():
    rng = np.random.default_rng(2)
    with pytest.raises(DataError, match="at least 20 frames"):
        fit_logistic(rng.normal(size=(10, 3)), np.arange(10) % 2 == 0)
    with pytest.raises(DataError, match="3 right"):
        fit_logistic(rng.normal(size=(50, 3)), np.arange(50) < 3)


def test_signal_vector_takes_logs_of_the_shares_with_a_floor():
    x = signal_vector(0.4, 0.1, 0.0)
    assert x[0] == 0.4 and x[1] == pytest.approx(math.log(0.101)) and x[2] == pytest.approx(math.log(1e-3))


def test_confidence_summary_says_how_well_the_confidence_ranks_and_what_a_threshold_keeps():
    conf = np.array([0.9, 0.8, 0.7, 0.2, 0.1, np.nan])
    good = np.array([True, True, False, False, False, True])
    s = confidence_summary(conf, good)
    assert s["frames"] == 5 and s["auc"] == 1.0
    assert s["kept"] == pytest.approx(0.6) and s["right_of_kept"] == pytest.approx(2 / 3) and s["right_of_rest"] == 0
    assert confidence_summary(np.array([0.9, 0.1]), np.array([False, True]))["auc"] == 0.0


def _model(sha: str = "ab" * 32) -> ConfidenceModel:
    X, good, _ = _draw(500, np.random.default_rng(3))
    return ConfidenceModel(sha, {"indoor": {"global": fit_logistic(X, good)}}, {"drives": []})


def test_the_model_answers_only_for_its_environments_and_modes(tmp_path):
    model = _model()
    x = np.array([0.35, -2.0, -2.0])
    c = model.confidence("global", "indoor", x)
    assert 0 < c < 1
    assert math.isnan(model.confidence("tracking", "indoor", x))
    assert math.isnan(model.confidence("global", "outdoor", x))
    assert math.isnan(model.confidence("global", "indoor", np.array([np.nan, -2.0, -2.0])))


def test_the_file_round_trips_atomically_and_bad_files_are_refused(tmp_path):
    model = _model()
    path = model.save(tmp_path / CONFIDENCE_FILE)
    assert [p.name for p in tmp_path.iterdir()] == [CONFIDENCE_FILE]  # no temporary left beside it
    back = ConfidenceModel.load(path, "ab" * 32)
    x = np.array([0.3, -2.5, -2.3])
    assert back.confidence("global", "indoor", x) == pytest.approx(model.confidence("global", "indoor", x))

    with pytest.raises(DataError, match="fitted for weights ababababab"):
        ConfidenceModel.load(path, "cd" * 32)
    data = json.loads(path.read_text())
    bad_cases = {
        "format_version": (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
        "environment": (lambda d: d["environments"].update(cave=d["environments"]["indoor"]), "unknown environment"),
        "mode": (lambda d: d["environments"]["indoor"].update(sideways={}), "non-empty object of modes"),
        "signals": (lambda d: d["environments"]["indoor"]["global"].update(signals=["x"]), "this version reads"),
        "weights": (lambda d: d["environments"]["indoor"]["global"].update(weights=[1.0, "a", 2.0]), "malformed"),
        "nan": (lambda d: d["environments"]["indoor"]["global"].update(bias=float("nan")), "finite"),
        "scale": (lambda d: d["environments"]["indoor"]["global"].update(scale=[1.0, 0.0, 1.0]), "scale must be"),
        "limits": (lambda d: d.update(good_limits_m_deg=[1.0, 5.0]), "good_limits_m_deg"),
    }
    for name, (edit, message) in bad_cases.items():
        broken = json.loads(json.dumps(data))
        edit(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(DataError, match=message):
            ConfidenceModel.load(path)
        assert name
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read the confidence model"):
        ConfidenceModel.load(path)


def test_calibrate_confidence_on_the_demo_drive_gives_every_aligned_pose_a_confidence(demo_data, tmp_path, capsys):
    """End to end: the command fits the demo drive's environment from its single images and tracked frames, the
    localizer loads the file (and refuses it for other weights), each aligned result carries its signals and a
    confidence that ranks right poses above wrong ones, and evaluate reports how well it did."""
    from ep2p_loc_ros.cli import main
    from ep2p_loc_ros.demo_data import DEFAULT_MODEL_DIR
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig
    from ep2p_loc_ros.map.store import load_map

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns(CONFIDENCE_FILE, "README.md"))
    drive = ["--drive", str(demo_data.map_dir), str(demo_data.sequence_dir)]
    # tracking from priors 3 m / 6 deg off, so that both modes have wrong poses to fit against
    args = ["calibrate-confidence", *drive, "--model", str(model), "--prior-noise", "3", "6", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    env = str(load_map(demo_data.map_dir).params.get("environment", "unknown"))
    fitted = data["environments"][env]
    # single images: 24 of 40 right here; tracking from such priors: ~5 of 37, fitted or named as skipped
    assert "global" in fitted
    assert "tracking" in fitted or f"{env}.tracking" in data["info"]["skipped"]
    for fit in fitted.values():
        assert fit["frames"] >= 20 and 5 <= fit["right"] <= fit["frames"] - 5
        assert fit["auc"] > 0.6, fit

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence

    seq = KittiOdometrySequence(demo_data.sequence_dir)
    loc = Localizer.from_paths(demo_data.map_dir, model)
    plain = Localizer.from_paths(demo_data.map_dir, model, LocalizerConfig(confidence=False))
    assert loc.confidence_model is not None and plain.confidence_model is None
    a, b = loc.localize(seq.image(0), seq.calib.camera), plain.localize(seq.image(0), seq.calib.camera)
    assert a.ok and a.aligned and b.ok
    np.testing.assert_allclose(a.T_map_cam, b.T_map_cam)  # the confidence changes no pose
    assert 0 < a.support < 1 and np.isfinite(a.alignment_score)
    assert a.support == b.support and a.alignment_score == b.alignment_score and math.isnan(b.confidence)
    signals = signal_vector(a.alignment_score, a.support, a.inlier_ratio)
    assert a.confidence == pytest.approx(loc.confidence_model.confidence("global", env, signals))
    assert 0 < a.confidence < 1

    # localize --json prints it; evaluate says how well it ranked the drive's poses (those it was fitted on here)
    where = ["--map", str(demo_data.map_dir), "--model", str(model)]
    image = sorted((demo_data.sequence_dir / "image_2").glob("*.png"))[0]
    calib = demo_data.sequence_dir / "calib.txt"
    assert main(["localize", *where, "--image", str(image), "--calib", str(calib), "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["confidence"] == pytest.approx(a.confidence) and one["support"] == pytest.approx(a.support)
    assert main(["localize", *where, "--image", str(image), "--calib", str(calib)]) == 0
    assert f"confidence (P within 0.5 m / 5°): {a.confidence:.2f}" in capsys.readouterr().out
    assert main(["evaluate", *where, "--sequence", str(demo_data.sequence_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["confidence"]["frames"] == summary["frames"]
    assert summary["confidence"]["auc"] > 0.6

    data["weights_sha256"] = "0" * 64
    (model / CONFIDENCE_FILE).write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"confidence\.json: fitted for weights 000000000000"):
        Localizer.from_paths(demo_data.map_dir, model)
