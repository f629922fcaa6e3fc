"""Single images against fusion over time: the map->odom filter (``map_odom_filter.py``) on held-out drives.

For each drive (``bench/eval_model.py``'s, made if missing) every image is localized globally (no prior), as the
node does before it has a pose. Odometry is the true motion corrupted per step in proportion to its length
(``--drift``: position fraction and degrees per metre, each axis, ``sim/odometry.py``; 0 0 is drift-free). The
filter fuses each localization with its calibrated covariance; its pose of a frame is ``T_map_odom · T_odom_cam``
from the localizations up to that frame (nothing later: what the node can publish at that moment). A frame with no
published pose counts as a miss. Prints one table: recall at 0.25 m / 2°, 0.5 m / 5°, 5 m / 10°, median errors,
the share of frames with a pose, the share of fused poses inside their covariance's 99 % bound (χ²₆) and their mean
NEES (6 when the covariance is right), and the worst draw's recall at 0.5 m / 5° (``--draws N`` pools N draws of
the odometry's noise); then a second one: how alike the single localizations' errors are in frames a
given path length apart (correlation of the error along each camera axis, frames within 5 m of the truth), which is
what ``fusion.correlation_length_m`` models.

``--track`` closes the node's loop instead: once the filter has a pose, each frame is localized from it (tracking,
the node's ``tracking.enabled``) and that localization is fused. It is what the node does over DDS
(``ep2p-loc replay``), without DDS, reproducibly and a few times faster. ``--filter-drift`` sets the filter's model
of the odometry (``fusion.drift_*``) apart from the simulated drift; ``--intersect-own-prior`` fuses the tracking
localizations by covariance intersection (``fusion.intersect_own_prior``). As in the node, after
``--max-failures`` frames in a row whose localization did not join the filter's pose, the loop searches globally
until one does (``tracking_policy.py``). ``--robust-chi2`` sets how the filter weights localizations far within its
gate (``fusion.robust_chi2``; 0: as a Gaussian update, at full weight). As in the node, a localization with fewer
inliers than ``--min-inliers`` or less likely right than ``--min-confidence`` (``gate.min_confidence``) is not fused
(``pose_gate.fusion_refusal``).

    python bench/fusion.py [--model models] [--seed outdoor=902 indoor=903] [--drift 0 0 --drift 0.01 0.02 ...]
        [--gate-chi2 16.81 22.46 ...] [--robust-chi2 0 4 ...] [--correlation-length 0 2 ...]
        [--filter-drift 0.02 0.05 ...] [--track]
        [--intersect-own-prior] [--draws N] [--config LOCALIZER.yaml] [--max-failures N] [--min-confidence 0 0.3]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import yaml

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
    from ep2p_loc_ros.pose_gate import GateConfig, fusion_refusal
    from ep2p_loc_ros.sim.odometry import drifting_odometry
    from ep2p_loc_ros.tracking_policy import TrackingPolicy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_drive_arguments(ap)
    ap.add_argument(
        "--drift", nargs=2, type=float, action="append", metavar=("FRAC", "DEG_PER_M"), help="odometry drift"
    )
    defaults = FusionConfig()
    for flag, default, what in (
        ("--gate-chi2", defaults.gate_chi2, "fusion.gate_chi2"),
        ("--robust-chi2", defaults.robust_chi2, "fusion.robust_chi2 (0: the Gaussian update)"),
        ("--correlation-length", defaults.correlation_length_m, "fusion.correlation_length_m (0: independent errors)"),
        (
            "--min-confidence",
            GateConfig().min_confidence,
            "gate.min_confidence: localizations less likely right than this are not fused (0: all are)",
        ),
    ):
        ap.add_argument(flag, nargs="+", type=float, default=[default], help=f"{what}: values to try")
    ap.add_argument(
        "--filter-drift",
        nargs=2,
        type=float,
        action="append",
        metavar=("M_PER_M", "DEG_PER_M"),
        help="fusion.drift_m_per_m and fusion.drift_deg_per_m to try (default: FusionConfig's)",
    )
    ap.add_argument(
        "--track",
        action="store_true",
        help="localize as the node does: from the filter's pose once it has one (tracking), globally before",
    )
    ap.add_argument(
        "--intersect-own-prior",
        action="store_true",
        help="fusion.intersect_own_prior: fuse the tracking localizations by covariance intersection",
    )
    ap.add_argument("--draws", type=int, default=1, help="odometry noise draws per drift (pooled; worst one shown)")
    ap.add_argument("--min-inliers", type=int, default=30, help="gate.min_inliers: fewer inliers are not fused")
    ap.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="tracking.max_failures: with --track, frames in a row not joining the filter's pose before the loop "
        "searches globally again (a large number: never, as before session 22)",
    )
    ap.add_argument(
        "--config", type=Path, default=None, help="YAML with LocalizerConfig fields (the node's localizer.*)"
    )
    ap.add_argument(
        "--confirm",
        type=int,
        default=6,
        help="with --track, on maps where single images are aligned from hypotheses, search globally until the "
        "published hypothesis holds this many localizations (tracking.confirm_updates; 0: track at once)",
    )
    args = ap.parse_args()
    loc_cfg = (
        LocalizerConfig.from_dict(yaml.safe_load(args.config.read_text()) or {}, str(args.config))
        if args.config
        else LocalizerConfig()
    )
    seeds = parse_seeds(ap, args.seed)
    drifts = args.drift or [[0.0, 0.0], [0.01, 0.02], [0.03, 0.1]]
    filter_drifts = args.filter_drift or [[defaults.drift_m_per_m, defaults.drift_deg_per_m]]

    def score(runs: list[tuple[list, list | None]], T_gt: np.ndarray) -> str:
        """Table cells for one or more runs over the drive (pooled), each a list of poses (None: no pose) and of
        their covariances; the last cell is the worst run's recall at 0.5 m / 5°."""
        n = len(T_gt) * len(runs)
        t_all, r_all, m2_all, worst = [], [], [], 100.0
        for est, cov in runs:
            have = [i for i, e in enumerate(est) if e is not None]
            if not have:
                worst = 0.0
                continue
            t, r = pose_errors(np.stack([est[i] for i in have]), T_gt[have])
            worst = min(worst, 100 * np.sum((t < 0.5) & (r < 5)) / len(T_gt))
            t_all.append(t)
            r_all.append(r)
            if cov is not None:
                m2_all.append(nees(np.stack([est[i] for i in have]), T_gt[have], np.stack([cov[i] for i in have])))
        if not t_all:
            return "| 0.0 % | 0.0 % | 0.0 % | – | – | 0 % | – | – | 0.0 % |"
        t, r = np.concatenate(t_all), np.concatenate(r_all)
        rec = [100 * np.sum((t < a) & (r < b)) / n for a, b in ((0.25, 2), (0.5, 5), (5, 10))]
        inside = mean = "–"
        if m2_all:
            m2 = np.concatenate(m2_all)
            inside, mean = f"{100 * np.mean(m2 < CHI2_99_6DOF):.0f} %", f"{np.mean(m2):.1f}"
        return (
            f"| {rec[0]:.1f} % | {rec[1]:.1f} % | {rec[2]:.1f} % | {np.median(t):.2f} m | {np.median(r):.2f}° "
            f"| {100 * len(t) / n:.0f} % | {inside} | {mean} | {worst:.1f} % |"
        )

    def fuse(loc, seq, results: list, odo: np.ndarray, cfg: FusionConfig, min_conf: float) -> tuple[list, list]:
        """The filter's pose of every frame from the localizations up to it (``results``: each frame's global
        localization; with ``--track`` each frame is localized now from the filter's pose, as the node does)."""
        filt = MapOdomFilter(cfg)
        gate_cfg = GateConfig(min_inliers=args.min_inliers, min_confidence=min_conf)
        # the node's: when to search globally
        policy = TrackingPolicy.for_localizer(args.max_failures, args.confirm, loc.single_image_hypotheses)
        fused, cov = [], []
        for i in range(len(odo)):
            filt.predict(odo[i])
            prior = filt.pose(odo[i]) if args.track and policy.global_reason(filt) is None else None
            r = results[i] if prior is None else loc.localize(seq.image(i), seq.calib.camera, prior[0])
            joined = False
            if r.ok and fusion_refusal(gate_cfg, r.num_inliers, r.confidence) is None:  # (the node's rule)
                joined = filt.update(r.T_map_cam, r.covariance, odo[i], own_prior=prior is not None).accepted
            policy.record(joined)
            p = filt.pose(odo[i])
            fused.append(None if p is None else p[0])
            cov.append(None if p is None else p[1])
        return fused, cov

    loop = "tracking from the filter's pose (the node's loop)" if args.track else "global localizations"
    print(f"# Fusion over time of {loop} (map->odom filter, defaults {defaults}), model {args.model}\n")
    print(
        "| drive | odometry drift | poses | R@0.25m,2° | R@0.5m,5° | R@5m,10° | median t | median R | with a pose "
        "| in 99 % bound | mean NEES | worst draw R@0.5m,5° |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    correlations = []
    for kind in args.kinds:
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, None, seeds[kind])
        seq = KittiOdometrySequence(seq_dir)
        T_gt = np.stack([seq.T_world_cam(i) for i in range(len(seq))])
        loc = Localizer.from_paths(map_dir, args.model, loc_cfg)
        results = [loc.localize(seq.image(i), seq.calib.camera) for i in range(len(seq))]
        raw = [r.T_map_cam if r.ok else None for r in results]
        name = f"{kind} ({seeds[kind]})"
        step = float(np.median(np.linalg.norm(np.diff(T_gt[:, :3, 3], axis=0), axis=1)))
        correlations.append((name, step, error_correlation(raw, T_gt)))
        print(f"| {name} | – | single images {score([(raw, None)], T_gt)}")
        sweep = itertools.product(
            enumerate(drifts),
            args.gate_chi2,
            args.robust_chi2,
            args.correlation_length,
            filter_drifts,
            args.min_confidence,
        )
        for (k, (frac, deg)), gate, robust, length, (f_m, f_deg), min_conf in sweep:
            cfg = FusionConfig(
                gate_chi2=gate,
                correlation_length_m=length,
                drift_m_per_m=f_m,
                drift_deg_per_m=f_deg,
                intersect_own_prior=args.intersect_own_prior,
                robust_chi2=robust,
            )
            runs = [
                fuse(
                    loc,
                    seq,
                    results,
                    drifting_odometry(T_gt, frac, deg, np.random.default_rng(k if d == 0 else [k, d])),
                    cfg,
                    min_conf,
                )
                for d in range(args.draws)
            ]
            drift = f"{100 * frac:g} %, {deg:g}°/m"
            label = "fused" + (f" ({args.draws} draws)" if args.draws > 1 else "")
            if len(args.gate_chi2) > 1:
                label += f", gate {gate:g}"
            if len(args.robust_chi2) > 1:
                label += f", robust {robust:g}"
            if len(args.correlation_length) > 1:
                label += f", correlated over {length:g} m"
            if len(args.min_confidence) > 1:
                label += f", min confidence {min_conf:g}"
            if len(filter_drifts) > 1:
                label += f", filter drift {f_m:g} m/m, {f_deg:g}°/m"
            print(f"| {name} | {drift} | {label} {score(runs, T_gt)}")

    print("\n| drive | " + " | ".join(f"{k} frames apart" for k in LAGS) + " |")
    print("|---|" + "---|" * len(LAGS))
    for name, step, corr in correlations:
        cells = " | ".join(f"{k * step:.1f} m: {c:+.2f}" for k, c in zip(LAGS, corr, strict=True))
        print(f"| {name}, single-image error correlation | {cells} |")


if __name__ == "__main__":
    main()
