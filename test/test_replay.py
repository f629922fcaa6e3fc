"""End to end: a short bag replayed through the node over DDS, scored, and checked against an in-process run.

Two node set-ups, each replayed once (module fixtures):

- the real node with :class:`ros_helpers.OracleLocalizer` in place of the model (matches from ground truth,
  the real PnP): it localizes, so poses, covariances and every metric are compared with the same oracle run
  in-process on the same decoded frames;
- the real node with the shipped model, played on the bag's timestamps with ``/clock``: every image is
  accounted for (answered or dropped), and each answered frame has the in-process Localizer's verdict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from ep2p_loc_ros.evaluation.trajectory import (
    RESULT_FILE,
    evaluate_result,
    evaluate_run,
    load_result,
    run_in_process,
)
from ep2p_loc_ros.ros.bags import load_bag_summary, sequence_to_bag
from ep2p_loc_ros.ros.replay import ReplayOptions, replay_and_evaluate, replay_bag

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 8
# What the comparison needs from the node: every frame localized on its own (no tracking prior, no fusion over
# time), nothing held back by the quality gate (the in-process Localizer has none); everything else is the shipped
# configuration.
COMPARABLE = {
    "tracking.enabled": False,
    "fusion.enabled": False,
    "gate.min_inliers": 0,
    "gate.max_position_std_m": 1.0e6,
    "gate.max_rotation_std_deg": 1.0e6,
    "gate.max_jump_sigma": 0.0,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from ep2p_loc_ros.demo_data import ensure_demo_data

    data = ensure_demo_data(progress=False)
    bag = tmp_path_factory.mktemp("replay") / "bag"
    sequence_to_bag(data.sequence_dir, bag, max_frames=FRAMES, stride=4)  # 8 frames over the 40-frame drive
    return data, bag


@pytest.fixture(scope="module")
def oracle_replay(demo, tmp_path_factory):
    data, bag = demo
    out = tmp_path_factory.mktemp("oracle-result")
    opts = ReplayOptions(
        lockstep=True,
        params=COMPARABLE,
        progress=False,
        node_command=[sys.executable, str(ROOT / "test" / "ros_helpers.py"), "oracle-node", str(data.sequence_dir)],
    )
    summary = replay_and_evaluate(bag, data.map_dir, data.model_dir, out, opts, report_dir=out / "report")
    return out, summary


def test_replay_matches_in_process_run(demo, oracle_replay) -> None:
    from ros_helpers import OracleLocalizer

    data, bag = demo
    out, summary = oracle_replay
    result = json.loads((out / RESULT_FILE).read_text())
    assert result["images_sent"] == FRAMES and result["no_answer"] == 0 and result["dropped"] == 0
    assert result["pose_of"] == "base_link"  # the node found the mount on /tf_static

    ref_run, ref_results = run_in_process(OracleLocalizer(data.map_dir, data.sequence_dir), bag)
    run = load_result(out, bag)
    np.testing.assert_array_equal(run.stamps_ns, ref_run.stamps_ns)
    np.testing.assert_array_equal(run.localized, ref_run.localized)  # the same frames localized
    assert run.localized.sum() >= FRAMES - 1, "the oracle should localize (nearly) every frame"
    ok = run.localized
    # same poses (camera frame, after the node's base_link rebase and back) and covariances
    np.testing.assert_allclose(run.T_est[ok], ref_run.T_est[ok], atol=1e-6)
    np.testing.assert_allclose(run.covariances[ok], ref_run.covariances[ok], rtol=1e-5, atol=1e-12)
    # nothing refused here: the poses before the gate (~/raw_pose) are the published ones
    np.testing.assert_allclose(run.T_raw[ok], run.T_est[ok], atol=1e-9)
    assert summary["before_gate"]["poses"] == int(ok.sum()) and summary["before_gate"]["refused"] == 0
    for row, ref in zip(result["frames"], ref_results, strict=True):
        assert row["localizer_status"] == ref.status.value
        assert row["inliers"] == ref.num_inliers and row["matches"] == ref.num_matches

    ref = evaluate_run(ref_run)
    for key in ("localized", "median_translation_m", "median_rotation_deg", "p90_translation_m"):
        assert summary[key] == pytest.approx(ref[key], abs=1e-6), key
    assert summary["recall"] == pytest.approx(ref["recall"], abs=1e-9)
    assert summary["ate"]["aligned_rmse_m"] == pytest.approx(ref["ate"]["aligned_rmse_m"], abs=1e-6)
    assert summary["nees"]["mean"] == pytest.approx(ref["nees"]["mean"], rel=1e-4)
    # accurate matches -> accurate poses: the whole chain (bag, DDS, frames, rebase) is right
    assert summary["recall"]["0.25m_2deg"] >= (FRAMES - 1) / FRAMES
    assert summary["latency_ms"]["count"] == int(ok.sum())


def test_replay_outputs(oracle_replay) -> None:
    out, summary = oracle_replay
    report = out / "report"
    for name in (
        "report.md",
        "summary.json",
        "trajectory_topdown.png",
        "error_over_time.png",
        "error_cdf.png",
        "latency_hist.png",
        "matches.png",
    ):
        assert (report / name).is_file(), name
    assert (out / "estimate.tum").read_text().count("\n") == summary["localized_frames"]
    # the result bag alone scores the same (it carries camera_info stamps, ground truth and the mount)
    alone = evaluate_result(out / "result_bag")
    assert alone["localized_frames"] == summary["localized_frames"]
    assert alone["recall"] == pytest.approx(summary["recall"])
    assert alone["median_translation_m"] == pytest.approx(summary["median_translation_m"], abs=1e-9)
    a, b = alone["before_gate"], summary["before_gate"]
    assert (a["poses"], a["refused"], a["recall"]) == (b["poses"], b["refused"], b["recall"])
    assert a["median_translation_m"] == pytest.approx(b["median_translation_m"], abs=1e-9)


def test_replay_on_bag_time_with_the_model(demo, tmp_path: Path) -> None:
    """The real model, on the bag's own timestamps with /clock: every image answered or counted dropped, and
    each answered frame got the in-process Localizer's verdict."""
    from ep2p_loc_ros.localizer import Localizer

    data, bag = demo
    opts = ReplayOptions(rate=1.0, params=COMPARABLE, progress=False, result_timeout_s=60.0)
    out = replay_bag(bag, data.map_dir, data.model_dir, tmp_path / "res", opts)
    result = json.loads((out / RESULT_FILE).read_text())
    rows = result["frames"]
    answered = [r for r in rows if r["result"] != "no answer"]
    assert result["images_sent"] == FRAMES
    assert len(answered) + result["dropped"] == FRAMES, result["node_counters"]
    assert int(result["node_counters"]["frames_received"]) == FRAMES
    s = load_bag_summary(bag)
    assert [r["stamp_ns"] for r in rows] == s.image_stamps_ns

    ref_run, ref_results = run_in_process(Localizer.from_paths(data.map_dir, data.model_dir), bag)
    by_stamp = dict(zip(ref_run.stamps_ns.tolist(), ref_results, strict=True))
    run = load_result(out, bag)
    found = 0
    for k, r in enumerate(rows):
        if r["result"] == "no answer":
            continue
        ref = by_stamp[r["stamp_ns"]]
        assert r["localizer_status"] == ref.status.value
        assert r["matches"] == ref.num_matches
        if ref.ok:
            assert r["inliers"] == ref.num_inliers
            # every pose found is on ~/raw_pose, published or refused by the gate (the shipped model's mostly are)
            np.testing.assert_allclose(run.T_raw[k], ref.T_map_cam, atol=1e-6)
            found += 1
        else:
            assert np.isnan(run.T_raw[k]).all()
    summary = evaluate_run(run)
    assert summary["before_gate"]["poses"] == found
    assert summary["before_gate"]["refused"] == found - summary["localized_frames"]
