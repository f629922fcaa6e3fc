"""Reflectance alignment (``reflectance_alignment.py``) on held-out drives: single images before and after.

Every image of each drive (``bench/eval_model.py``'s, made if missing) is localized globally with alignment off;
then the alignment refines that same pose (on the submap nearest it, as ``Localizer`` does with
``alignment.after_retrieval``), so both columns come from one localization and differ only by the alignment.
Prints recall at 0.25 m / 2°, 0.5 m / 5° and 5 m / 10° and the median errors, before -> after, and the
alignment's p50 time against the localization's own (same run, same host: the ratio is what carries over).

    python bench/alignment.py [--seed outdoor=902 indoor=903] [--kinds outdoor indoor] [--stride N]
        [--set forward_range_m=8 --set max_points=20000 ...] [--per-frame]

With ``retrieved_starts`` on (the default since session 31) the "after" pose is the Localizer's own (on maps of
``hypothesis_environments``, PnP's pose and retrieved viewpoints aligned, one chosen by score, the matches' support
and the patch likelihood), and its time is the Localizer's alignment stage; ``--set retrieved_starts=false``: the
alignment of PnP's pose alone.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    # bench/ is the script's directory, so first on sys.path
    from eval_model import add_drive_arguments, parse_seeds, prepare_drive

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.evaluation.metrics import pose_errors
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig
    from ep2p_loc_ros.map import nearest_submaps
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig, align_to_reflectance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_drive_arguments(ap)
    ap.add_argument("--stride", type=int, default=1, help="every n-th frame only (quick looks)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="an AlignmentConfig field")
    ap.add_argument("--per-frame", action="store_true", help="also print each frame's errors before and after")
    args = ap.parse_args()
    seeds = parse_seeds(ap, args.seed)
    types = {f.name: type(getattr(AlignmentConfig(), f.name)) for f in fields(AlignmentConfig)}
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in types:
            ap.error(f"--set {item}: not an AlignmentConfig field ({sorted(types)})")
        changes[key] = value.lower() in ("1", "true") if types[key] is bool else types[key](value)
    cfg = replace(AlignmentConfig(), **changes)
    print(f"# Reflectance alignment of global localizations, model {args.model}, {cfg}\n")
    print(
        "| drive | frames | R@0.25m,2° | R@0.5m,5° | R@5m,10° | median t | median R | localization p50 "
        "| alignment p50 | alignment / localization |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, None, seeds[kind])
        seq = KittiOdometrySequence(seq_dir)
        off = replace(cfg, after_retrieval=False, in_tracking=False)  # the "before" pose: PnP's
        loc = Localizer.from_paths(map_dir, args.model, LocalizerConfig(alignment=off))
        # from every retrieved viewpoint too: the Localizer's own choice between hypotheses (it needs the matches)
        full = None
        if cfg.retrieved_starts:
            full = Localizer.from_paths(map_dir, args.model, LocalizerConfig(alignment=cfg))
        frames = list(range(0, len(seq), args.stride))
        cfg_here, contrast = cfg.for_frame(loc.map_environment, tracking=False)  # indoors: local contrast
        T_gt = np.stack([seq.T_world_cam(i) for i in frames])
        before, after = np.full((len(frames), 4, 4), np.nan), np.full((len(frames), 4, 4), np.nan)
        t_loc, t_align = [], []
        for k, i in enumerate(frames):
            rgb = seq.image(i)
            r = loc.localize(rgb, seq.calib.camera)
            t_loc.append(r.timings_ms.get("total", np.nan))
            if not r.ok:
                continue
            ta = time.perf_counter()
            if full is not None:
                a = full.localize(rgb, seq.calib.camera)  # the same PnP pose, then the hypotheses
                t_align.append(a.timings_ms.get("alignment", np.nan))
            else:
                sid = int(nearest_submaps(loc.map, r.T_map_cam, 1)[0][0])
                sub = loc.map.submap(sid, features=False)
                # as Localizer does: indoors the submap's contrast, computed once (its time counted the first time)
                refl = loc._reflectance_contrast(sid, sub) if contrast else sub.reflectance
                a = align_to_reflectance(
                    rgb, seq.calib.camera, sub.points, refl, r.T_map_cam, cfg_here, loc.config.ipr, contrast
                )
                t_align.append((time.perf_counter() - ta) * 1e3)
            before[k], after[k] = r.T_map_cam, a.T_map_cam
            if args.per_frame:
                e0, e1 = (pose_errors(T[None], T_gt[k][None]) for T in (r.T_map_cam, a.T_map_cam))
                how = "" if full else f", score {a.start_score:.3f} -> {a.score:.3f}, {a.evaluations} poses scored"
                print(f"<!-- frame {i}: {e0[0][0]:.2f} m {e0[1][0]:.2f}° -> {e1[0][0]:.2f} m {e1[1][0]:.2f}°{how} -->")
        cells = []
        for est in (before, after):
            t, r = pose_errors(est, T_gt)  # NaN (no pose) counts as a miss
            cells.append(
                [100 * np.mean((t < a) & (r < b)) for a, b in ((0.25, 2), (0.5, 5), (5, 10))]
                + [np.nanmedian(t), np.nanmedian(r)]
            )
        (b25, b50, b5, bt, br), (a25, a50, a5, at, ar) = cells
        p_loc, p_al = float(np.nanmedian(t_loc)), float(np.median(t_align)) if t_align else float("nan")
        print(
            f"| {kind} ({seeds[kind]}) | {len(frames)} | {b25:.1f} → {a25:.1f} % | {b50:.1f} → **{a50:.1f} %** "
            f"| {b5:.1f} → {a5:.1f} % | {bt:.2f} → {at:.2f} m | {br:.2f} → {ar:.2f}° | {p_loc:.0f} ms "
            f"| {p_al:.0f} ms | {p_al / p_loc:.2f} |"
        )


if __name__ == "__main__":
    main()
