"""Single images against fusion over time: the map->odom filter (``map_odom_filter.py``) on held-out drives.

For each drive (``bench/eval_model.py``'s, made if missing) every image is localized globally (no prior), as the
node does before it has a pose. Odometry is the true motion corrupted per step in proportion to its length
(``--drift``: position fraction and degrees per metre, each axis, ``sim/odometry.py``; 0 0 is drift-free). The
filter fuses each localization with its calibrated covariance; its pose of a frame is ``T_map_odom · T_odom_cam``
from the localizations up to that frame (nothing later: what the node can publish at that moment). A frame with no
published pose counts as a miss. Prints one table: recall at 0.25 m / 2°, 0.5 m / 5°, 5 m / 10°, median errors,
the share of frames with a pose, the share of fused poses inside their covariance's 99 % bound (χ²₆) and their mean
NEES (6 when the covariance is right); then a second one: how alike the single localizations' errors are in frames a
given path length apart (correlation of the error along each camera axis, frames within 5 m of the truth), which is
what ``fusion.correlation_length_m`` models.

    python bench/fusion.py [--model models] [--seed outdoor=902 indoor=903] [--drift 0 0 --drift 0.01 0.02 ...]
        [--gate-chi2 16.81 22.46 ...] [--correlation-length 0 2 ...]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHI2_99_6DOF = 16.81
LAGS = (1, 2, 3, 5, 8, 12)  # frames apart, for the error correlation


def error_correlation(est: list, T_gt: np.ndarray) -> list[float]:
    """Per lag of ``LAGS``: the correlation of the single localizations' errors (camera x, y, z of the true camera,
    pooled over the axes after each is standardised) between frames that many apart; gross errors (> 5 m) left out."""
    err = np.full((len(T_gt), 3), np.nan)
    for i, T in enumerate(est):
        if T is not None and np.linalg.norm(T[:3, 3] - T_gt[i, :3, 3]) < 5.0:
            err[i] = T_gt[i, :3, :3].T @ (T[:3, 3] - T_gt[i, :3, 3])
    z = (err - np.nanmean(err, axis=0)) / np.nanstd(err, axis=0)
    out = []
    for lag in LAGS:
        a, b = z[:-lag].ravel(), z[lag:].ravel()
        m = np.isfinite(a) & np.isfinite(b)
        out.append(float(np.corrcoef(a[m], b[m])[0, 1]) if m.sum() > 10 else float("nan"))
    return out


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
    ap.add_argument(
        "--correlation-length",
        nargs="+",
        type=float,
        default=[FusionConfig().correlation_length_m],
        help="fusion.correlation_length_m values to try (0: localization errors independent)",
    )
    args = ap.parse_args()
    seeds = parse_seeds(ap, args.seed)
    drifts = args.drift or [[0.0, 0.0], [0.01, 0.02], [0.03, 0.1]]

    def score(est: list, cov: list, T_gt: np.ndarray) -> str:
        n = len(T_gt)
        have = [i for i, e in enumerate(est) if e is not None]
        if not have:
            return "| 0.0 % | 0.0 % | 0.0 % | – | – | 0 % | – | – |"
        t, r = pose_errors(np.stack([est[i] for i in have]), T_gt[have])
        rec = [100 * np.sum((t < a) & (r < b)) / n for a, b in ((0.25, 2), (0.5, 5), (5, 10))]
        inside = mean = "–"
        if cov is not None:
            m2 = nees(np.stack([est[i] for i in have]), T_gt[have], np.stack([cov[i] for i in have]))
            inside, mean = f"{100 * np.mean(m2 < CHI2_99_6DOF):.0f} %", f"{np.mean(m2):.1f}"
        return (
            f"| {rec[0]:.1f} % | {rec[1]:.1f} % | {rec[2]:.1f} % | {np.median(t):.2f} m | {np.median(r):.2f}° "
            f"| {100 * len(have) / n:.0f} % | {inside} | {mean} |"
        )

    print(f"# Fusion over time (map->odom filter, defaults {FusionConfig()}), model {args.model}\n")
    print(
        "| drive | odometry drift | poses | R@0.25m,2° | R@0.5m,5° | R@5m,10° | median t | median R | with a pose "
        "| in 99 % bound | mean NEES |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    correlations = []
    for kind in args.kinds:
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, None, seeds[kind])
        seq = KittiOdometrySequence(seq_dir)
        T_gt = np.stack([seq.T_world_cam(i) for i in range(len(seq))])
        loc = Localizer.from_paths(map_dir, args.model, LocalizerConfig())
        results = [loc.localize(seq.image(i), seq.calib.camera) for i in range(len(seq))]
        raw = [r.T_map_cam if r.ok else None for r in results]
        name = f"{kind} ({seeds[kind]})"
        step = float(np.median(np.linalg.norm(np.diff(T_gt[:, :3, 3], axis=0), axis=1)))
        correlations.append((name, step, error_correlation(raw, T_gt)))
        print(f"| {name} | – | single images {score(raw, None, T_gt)}")
        sweep = itertools.product(enumerate(drifts), args.gate_chi2, args.correlation_length)
        for (k, (frac, deg)), gate, length in sweep:
            odo = drifting_odometry(T_gt, frac, deg, np.random.default_rng(k))
            filt = MapOdomFilter(FusionConfig(gate_chi2=gate, correlation_length_m=length))
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
            label = "fused"
            if len(args.gate_chi2) > 1:
                label += f", gate {gate:g}"
            if len(args.correlation_length) > 1:
                label += f", correlated over {length:g} m"
            print(f"| {name} | {drift} | {label} {score(fused, cov, T_gt)}")

    print("\n| drive | " + " | ".join(f"{k} frames apart" for k in LAGS) + " |")
    print("|---|" + "---|" * len(LAGS))
    for name, step, corr in correlations:
        cells = " | ".join(f"{k * step:.1f} m: {c:+.2f}" for k, c in zip(LAGS, corr, strict=True))
        print(f"| {name}, single-image error correlation | {cells} |")


if __name__ == "__main__":
    main()
