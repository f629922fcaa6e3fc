"""Where tracking's pose error comes from, and what happens when tracking feeds itself (held-out drives).

Open loop (every ``--stride``-th frame): the localizer tracks from a prior the true pose moved 1 m and turned 3 deg
(as ``bench/eval_model.py``'s tracking rows). For each frame it audits the matches PnP got:

- ``right``: matches within 8 px (the PnP threshold) of where the true pose projects their point, i.e. the
  inliers the true pose would have;
- the inliers of the estimated pose, and how many of them are right;
- how often the estimate has more inliers than the true pose (then no inlier-counting score can prefer the truth);
- the estimate's error along the camera's axes (x right, y down, z forward), and its component toward the prior's
  error (how much the prior drags the estimate);
- ``oracle LM``: the localizer's LM from the estimate on the right matches alone.

Closed loop (every frame): the first prior is 1 m / 3 deg off, each next prior is the last estimate moved by the
true motion (perfect odometry), no quality gate: does the error stay bounded?

    python bench/tracking_errors.py [--model models] [--seed outdoor=902 indoor=903] [--stride 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRIOR = (1.0, 3.0)  # metres, degrees: the tracking prior's error
RIGHT_PX = 8.0


def main() -> None:
    # bench/ is the script's directory, so first on sys.path
    from eval_model import add_drive_arguments, parse_seeds, prepare_drive

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.evaluation.evaluate import _perturb
    from ep2p_loc_ros.evaluation.metrics import pose_errors
    from ep2p_loc_ros.geometry import invert, transform_points
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig
    from ep2p_loc_ros.pnp import solve_pnp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_drive_arguments(ap)
    ap.add_argument("--stride", type=int, default=2, help="open loop: every n-th frame")
    args = ap.parse_args()
    seeds = parse_seeds(ap, args.seed)

    def errors(T_est: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
        t, r = pose_errors(T_est[None], T_gt[None])
        return float(t[0]), float(r[0])

    open_rows, closed_rows = [], []
    for kind in args.kinds:
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, None, seeds[kind])
        seq = KittiOdometrySequence(seq_dir)
        camera = seq.calib.camera
        loc = Localizer.from_paths(map_dir, args.model, LocalizerConfig())
        pnp = loc.config.prior_pnp()
        rng = np.random.default_rng(0)
        audit = []
        for i in range(0, len(seq), args.stride):
            T = seq.T_world_cam(i)
            prior = _perturb(T, *PRIOR, rng)
            res = loc.localize(seq.image(i), camera, prior)
            if not res.ok:
                continue
            X, px = res.matched_points, res.matched_pixels
            right = np.linalg.norm(camera.project(transform_points(invert(T), X)).uv - px, axis=1) <= RIGHT_PX
            inl = res.inlier_mask
            d_est = T[:3, :3].T @ (res.T_map_cam[:3, 3] - T[:3, 3])  # camera axes of the true pose
            d_prior = prior[:3, 3] - T[:3, 3]
            toward = float(np.dot(res.T_map_cam[:3, 3] - T[:3, 3], d_prior / np.linalg.norm(d_prior)))
            oracle = (np.inf, np.inf)
            if right.sum() >= pnp.min_inliers:
                est = solve_pnp(X[right], px[right], camera, pnp, start=res.T_map_cam)
                if est.ok:
                    oracle = errors(est.T_world_cam, T)
            t, r = errors(res.T_map_cam, T)
            audit.append([len(X), right.sum(), inl.sum(), (inl & right).sum(), t, r, *np.abs(d_est), toward, *oracle])
        a = np.array(audit, dtype=np.float64)
        med = np.median(a, 0)
        open_rows.append(
            (
                f"{kind} ({seeds[kind]})",
                len(a),
                *med[:4],
                100 * np.mean(a[:, 2] > a[:, 1]),
                100 * np.mean((a[:, 4] < 0.5) & (a[:, 5] < 5)),
                med[4],
                *med[6:10],
                med[10],
                100 * np.mean((a[:, 10] < 0.5) & (a[:, 11] < 5)),
            )
        )

        est, prev_gt, closed = None, None, []
        for i in range(len(seq)):
            T = seq.T_world_cam(i)
            prior = _perturb(T, *PRIOR, rng) if est is None else est @ invert(prev_gt) @ T
            res = loc.localize(seq.image(i), camera, prior)
            est, prev_gt = (res.T_map_cam if res.ok else prior), T
            closed.append(errors(est, T))
        c = np.array(closed)
        closed_rows.append(
            (
                f"{kind} ({seeds[kind]})",
                len(c),
                100 * np.mean((c[:, 0] < 0.5) & (c[:, 1] < 5)),
                100 * np.mean((c[:, 0] < 5) & (c[:, 1] < 10)),
                np.median(c[:, 0]),
                np.median(c[-10:, 0]),
                c[:, 0].max(),
            )
        )

    print(f"# Tracking from a prior {PRIOR[0]:g} m / {PRIOR[1]:g} deg off, model {args.model}\n")
    print(
        "| drive | frames | matches | right | inliers | right inliers | more inliers than the truth | R@0.5m,5° "
        "| median t (m) | median \\|x\\| / \\|y\\| / \\|z\\| (m) | toward the prior (m) "
        "| oracle LM: median t, R@0.5m,5° |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in open_rows:
        print(
            f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:.0f} % | {r[7]:.0f} % "
            f"| {r[8]:.2f} | {r[9]:.2f} / {r[10]:.2f} / {r[11]:.2f} | {r[12]:+.2f} | {r[13]:.2f} m, {r[14]:.0f} % |"
        )
    print("\nClosed loop (each prior: the last estimate moved by the true motion; no gate):\n")
    print("| drive | frames | R@0.5m,5° | R@5m,10° | median t (m) | median t, last 10 (m) | max t (m) |")
    print("|---|---|---|---|---|---|---|")
    for r in closed_rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} % | {r[3]:.0f} % | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} |")


if __name__ == "__main__":
    main()
