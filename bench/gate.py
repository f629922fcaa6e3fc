"""The node without odometry: each frame's pose goes through the quality gate (``pose_gate.py``) or is not published.

Why: without ``odom -> base_link`` the node publishes no fused pose, only each frame's localization that passes the
gate (inliers, inlier ratio, covariance, jump test); once one has passed, the next frame is tracked from it
(``tracking.enabled``), and after ``tracking.max_failures`` frames in a row that pass nothing it searches globally
again (``tracking_policy.py``). This replays that loop on the held-out drives of ``bench/eval_model.py`` (made if
missing), without DDS, for several values of one gate setting in the same run, and prints per drive: the share of
frames with a published pose, the recall of all frames at 0.5 m / 5° and 5 m / 10° (a frame without a pose is a
miss), and how many published poses are more than 5 m off.

    python bench/gate.py [--kinds outdoor indoor] [--seed outdoor=902 ...] [--ratios 0.25 0.1 0.05]
        [--first-confirmations 1 3] [--max-jump-sigma 5 3] [--max-speed 40 20] [--min-confidence 0 0.5]
        [--max-failures 3] [--model models]
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace

import numpy as np


def replay(loc, seq, gate_config, max_failures: int) -> list[np.ndarray | None]:
    """The published camera pose of each frame (None: none), as the node without odometry makes them."""
    from ep2p_loc_ros.pose_gate import PoseGate
    from ep2p_loc_ros.tracking_policy import TrackingPolicy

    gate, policy = PoseGate(gate_config), TrackingPolicy(max_failures)
    camera, times = seq.calib.camera, seq.times
    last: np.ndarray | None = None
    published: list[np.ndarray | None] = []
    for i in range(len(seq)):
        prior = None if last is None or policy.lost else last
        res = loc.localize(seq.image(i), camera, prior)
        args = (res.T_map_cam, res.covariance, res.num_inliers, times[i], res.num_matches, res.confidence)
        ok = res.ok and gate.check(*args).accepted
        if ok:
            last = res.T_map_cam
        policy.record(bool(ok))
        published.append(res.T_map_cam if ok else None)
    return published


def main() -> None:
    from eval_model import add_drive_arguments, parse_seeds, prepare_drive

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.evaluation.metrics import pose_errors
    from ep2p_loc_ros.localizer import Localizer
    from ep2p_loc_ros.pose_gate import GateConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_drive_arguments(ap)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.1, 0.05], help="gate.min_inlier_ratio values")
    ap.add_argument("--first-confirmations", type=int, nargs="+", default=[1], help="gate.first_confirmations values")
    ap.add_argument("--max-jump-sigma", type=float, nargs="+", default=[5.0], help="gate.max_jump_sigma values")
    ap.add_argument("--max-speed", type=float, nargs="+", default=[40.0], help="gate.max_speed_mps values")
    ap.add_argument("--min-confidence", type=float, nargs="+", default=[0.0], help="gate.min_confidence values")
    ap.add_argument("--max-failures", type=int, default=3, help="tracking.max_failures")
    args = ap.parse_args()
    seeds = parse_seeds(ap, args.seed)
    print(
        "| drive | gate.min_inlier_ratio | gate.first_confirmations | gate.max_jump_sigma | gate.max_speed_mps "
        "| gate.min_confidence | published | R@0.5m,5° | R@5m,10° | published > 5 m off |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, None, seeds[kind])
        seq = KittiOdometrySequence(seq_dir)
        loc = Localizer.from_paths(map_dir, args.model)
        T_gt = np.stack([seq.T_world_cam(i) for i in range(len(seq))])
        settings = itertools.product(
            args.ratios, args.first_confirmations, args.max_jump_sigma, args.max_speed, args.min_confidence
        )
        for ratio, first, sigma, speed, conf in settings:
            cfg = replace(
                GateConfig(),
                min_inlier_ratio=ratio,
                first_confirmations=first,
                max_jump_sigma=sigma,
                max_speed_mps=speed,
                min_confidence=conf,
            )
            out = replay(loc, seq, cfg, args.max_failures)
            T = np.stack([np.full((4, 4), np.nan) if p is None else p for p in out])
            t, r = pose_errors(T, T_gt)
            pub = np.array([p is not None for p in out])
            print(
                f"| {seq_dir.name} | {ratio} | {first} | {sigma:g} | {speed:g} | {conf:g} | {pub.mean():.0%} "
                f"| {np.mean((t <= 0.5) & (r <= 5)):.1%} "
                f"| {np.mean((t <= 5) & (r <= 10)):.1%} | {int(np.sum(pub & (t > 5)))} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
