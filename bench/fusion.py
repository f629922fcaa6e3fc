"""Single images against fusion over time: the map->odom filter (``map_odom_filter.py``) on held-out drives.

For each drive (``bench/eval_model.py``'s, made if missing) every image is localized globally (no prior), as the
node does before it has a pose. Odometry is the true motion corrupted per step in proportion to its length
(``--drift``: position fraction and degrees per metre, each axis, ``sim/odometry.py``; 0 0 is drift-free). The
filter fuses each localization with its calibrated covariance; its pose of a frame is ``T_map_odom · T_odom_cam``
from the localizations up to that frame (nothing later: what the node can publish at that moment). A frame with no
published pose counts as a miss. Prints one table: recall at 0.25 m / 2°, 0.5 m / 5°, 5 m / 10°, median errors,
the share of frames with a pose, and the share of fused poses inside their covariance's 99 % bound (χ²₆).

    python bench/fusion.py [--model models] [--seed outdoor=902 indoor=903] [--drift 0 0 --drift 0.01 0.02 ...]
        [--gate-chi2 16.81 22.46 ...]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHI2_99_6DOF = 16.81


def main() -> None:
    # bench/ is the script's directory, so first on sys.path
    from eval_model import add_drive_arguments, parse_seeds, prepare_drive

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.evaluation.metrics import nees, pose_errors
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig
    from ep2p_loc_ros.map_odom_filter import FusionConfig, MapOdomFilter
    from ep2p_loc_ros.sim.odometry import drifting_odometry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_drive_arguments(ap)
    ap.add_argument(
        "--drift", nargs=2, type=float, action="append", metavar=("FRAC", "DEG_PER_M"), help="odometry drift"
    )
    ap.add_argument(
        "--gate-chi2", nargs="+", type=float, default=[FusionConfig().gate_chi2], help="fusion.gate_chi2 values to try"
    )
    args = ap.parse_args()
    seeds = parse_seeds(ap, args.seed)
    drifts = args.drift or [[0.0, 0.0], [0.01, 0.02], [0.03, 0.1]]

    def score(est: list, cov: list, T_gt: np.ndarray) -> str:
        n = len(T_gt)
        have = [i for i, e in enumerate(est) if e is not None]
        if not have:
            return "| 0.0 % | 0.0 % | 0.0 % | – | – | 0 % | – |"
        t, r = pose_errors(np.stack([est[i] for i in have]), T_gt[have])
        rec = [100 * np.sum((t < a) & (r < b)) / n for a, b in ((0.25, 2), (0.5, 5), (5, 10))]
        inside = "–"
        if cov is not None:
            m2 = nees(np.stack([est[i] for i in have]), T_gt[have], np.stack([cov[i] for i in have]))
            inside = f"{100 * np.mean(m2 < CHI2_99_6DOF):.0f} %"
        return (
            f"| {rec[0]:.1f} % | {rec[1]:.1f} % | {rec[2]:.1f} % | {np.median(t):.2f} m | {np.median(r):.2f}° "
            f"| {100 * len(have) / n:.0f} % | {inside} |"
        )

    print(f"# Fusion over time (map->odom filter, defaults {FusionConfig()}), model {args.model}\n")
    print(
        "| drive | odometry drift | poses | R@0.25m,2° | R@0.5m,5° | R@5m,10° | median t | median R | with a pose "
        "| in 99 % bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, None, seeds[kind])
        seq = KittiOdometrySequence(seq_dir)
        T_gt = np.stack([seq.T_world_cam(i) for i in range(len(seq))])
        loc = Localizer.from_paths(map_dir, args.model, LocalizerConfig())
        results = [loc.localize(seq.image(i), seq.calib.camera) for i in range(len(seq))]
        raw = [r.T_map_cam if r.ok else None for r in results]
        name = f"{kind} ({seeds[kind]})"
        print(f"| {name} | – | single images {score(raw, None, T_gt)}")
        for (k, (frac, deg)), gate in itertools.product(enumerate(drifts), args.gate_chi2):
            odo = drifting_odometry(T_gt, frac, deg, np.random.default_rng(k))
            filt = MapOdomFilter(FusionConfig(gate_chi2=gate))
            fused, cov = [], []
            for i, r in enumerate(results):
                if r.ok:
                    filt.update(r.T_map_cam, r.covariance, odo[i])
                else:
                    filt.predict(odo[i])
                p = filt.pose(odo[i])
                fused.append(None if p is None else p[0])
                cov.append(None if p is None else p[1])
            drift = f"{100 * frac:g} %, {deg:g}°/m"
            label = "fused" if len(args.gate_chi2) == 1 else f"fused, gate {gate:g}"
            print(f"| {name} | {drift} | {label} {score(fused, cov, T_gt)}")


if __name__ == "__main__":
    main()
