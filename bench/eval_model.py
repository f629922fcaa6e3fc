"""Accuracy of a model on held-out synthetic drives (world seeds training never used), with ablations.

For each drive (outdoor seed 900, indoor seed 901 by default) it generates the sequence if missing, builds its map
with the model's features, and localizes every image globally (retrieval -> IPR -> matching -> PnP) in process,
then again for each variant in ``ABLATIONS`` (PnP without the upright search or won by inlier count, other caps,
each submap matched on its own, no IPR, no pixel refinement, every match refined before PnP, 6,000 points,
run-time point encoding, no soft prior after retrieval or a tighter one, guided rounds after the global search,
PnP's covariance without the model's calibrated error, and tracking from a prior 1 m / 3 degrees off, guided or
not, with or without the soft prior). Prints one markdown table (recall at the three thresholds, median errors,
inlier ratio, retrieval recall@1/5, NEES of the published covariance, p50 latency per stage).

    python bench/eval_model.py [--model models] [--cache .cache/eval] [--kinds outdoor indoor] [--variants ...]
        [--stride N] [--seed KIND=SEED ...] [--json]

``--seed outdoor=902 indoor=903`` evaluates on other never-trained worlds: the default drives have been used to
choose between models for several sessions, so a fresh pair confirms a choice made on them.

``--viewpoint-offset LAT_M YAW_DEG`` moves every submap viewpoint LAT_M metres to its right and turns it YAW_DEG
about its vertical axis (in memory, after loading the map). Why: each drive's map is built from that drive, so its
viewpoints lie exactly on the path the images were taken on; a car re-driving a mapped road is a lane off and
turned a little. This is how the viewpoint prior behaves then (the stored features and points do not change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ep2p_loc_ros.demo_data import MAP_SPACING_M
from ep2p_loc_ros.pnp import PnPConfig
from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

ROOT = Path(__file__).resolve().parents[1]

DRIVES = {"outdoor": (900, 60), "indoor": (901, 40)}  # kind -> (world seed, frames)
SUBMAP_SPACING = MAP_SPACING_M  # metres of path between submap viewpoints: the demo drives' maps have the same
ABLATIONS = {
    "full": {},
    "6-DoF RANSAC, no upright search": {"pnp": PnPConfig(upright_search=False)},
    "upright search won by most inliers": {"pnp": PnPConfig(search_score="inliers")},
    "3 matches per patch": {"max_matches_per_patch": 3},
    "each submap matched on its own": {"pool_submaps": False},
    "no IPR": {"use_ipr": False},
    "no pixel refinement": {"refine_pixels": False},
    "no reflectance alignment": {"alignment": AlignmentConfig(after_retrieval=False, in_tracking=False)},
    "alignment without its refine round": {"alignment": AlignmentConfig(refine_rounds=0, tracking_refine_rounds=0)},
    "alignment with a spread refine round": {"alignment": AlignmentConfig(refine_spread_m=0.6)},  # (off: its time)
    "alignment from every retrieved viewpoint": {"alignment": AlignmentConfig(retrieved_starts=True)},  # (off: ditto)
    "alignment from patch centres' pose": {"refine_before_global_alignment": False},
    "alignment by levels indoors": {"alignment": AlignmentConfig(contrast_environments=())},  # (before session 26)
    "alignment's 6 m first search indoors": {"alignment": AlignmentConfig(contrast_forward_range_m=6.0)},
    "every match refined before PnP": {"refine_after_pnp": False},
    "6,000 points (previous default)": {"max_points": 6000},
    "run-time point encoding": {"encode_points_at_runtime": True},  # full uses the map's stored point features
    "no soft prior after retrieval": {
        "viewpoint_sigma_forward_m": 0.0,
        "viewpoint_sigma_forward_spacings": 0.0,
        "viewpoint_sigma_lateral_m": 0.0,
        "viewpoint_sigma_vertical_m": 0.0,
        "viewpoint_sigma_yaw_deg": 0.0,
    },
    "tight viewpoint prior (0.3 m / 1°)": {
        "viewpoint_sigma_lateral_m": 0.3,
        "viewpoint_sigma_vertical_m": 0.1,
        "viewpoint_sigma_yaw_deg": 1.0,
    },
    "global + 2 guided rounds": {"global_guided_rounds": 2},
    "PnP covariance alone": {"calibrated_covariance": False},  # without MODEL/covariance.json's model error
    # tracking: the prior is the true pose moved 1 m and turned 3 degrees in random directions
    "tracking, prior 1 m / 3°": {"prior_noise": (1.0, 3.0)},
    "tracking, prior 1 m / 3°, 2 guided rounds": {"prior_noise": (1.0, 3.0), "guided_rounds": 2},
    "tracking, prior 1 m / 3°, no soft prior": {
        "prior_noise": (1.0, 3.0),
        "prior_sigma_m": 0.0,
        "prior_sigma_deg": 0.0,
    },
    "tracking, prior 1 m / 3°, unguided": {"prior_noise": (1.0, 3.0), "prior_radius_px": 0.0},
    "tracking, prior 1 m / 3°, run-time encoding": {"prior_noise": (1.0, 3.0), "encode_points_at_runtime": True},
    "tracking, prior 1 m / 3°, 6-DoF RANSAC": {"prior_noise": (1.0, 3.0), "pnp": PnPConfig(upright_search=False)},
    "tracking, prior 1 m / 3°, PnP covariance alone": {"prior_noise": (1.0, 3.0), "calibrated_covariance": False},
}


def offset_viewpoints(T_map_viewpoint: np.ndarray, lateral_m: float, yaw_deg: float) -> np.ndarray:
    """(S, 4, 4) viewpoints each moved ``lateral_m`` along its camera x (right) and turned ``yaw_deg`` about its
    camera y (down: positive turns it to the right)."""
    from ep2p_loc_ros.upright_ransac import rot_y

    step = np.eye(4)
    step[:3, :3] = rot_y(np.radians(yaw_deg))
    step[0, 3] = lateral_m
    return np.asarray(T_map_viewpoint, dtype=np.float64) @ step


def prepare_drive(
    kind: str,
    cache: Path,
    model: Path,
    map_cache: Path | None = None,
    seed: int | None = None,
    frames: int | None = None,
) -> tuple[Path, Path]:
    """The held-out drive of ``kind`` (world ``seed`` and ``frames``, default ``DRIVES``'; generated into ``cache``
    if missing) and its map built with ``model``'s features (into ``map_cache``, default ``cache``; rebuilt every
    time, since it depends on the model). A world's drive with more frames starts with the same frames."""
    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.map import MapBuildParams, build_map, save_map
    from ep2p_loc_ros.model.features import submap_feature_fn
    from ep2p_loc_ros.sim.writer import SimConfig, generate_sequence

    default_seed, default_frames = DRIVES[kind]
    seed = default_seed if seed is None else seed
    frames = default_frames if frames is None else frames
    seq_dir = cache / f"{kind}-seed{seed}-{frames}f"
    if not (seq_dir / "sim.json").exists():
        generate_sequence(seq_dir, SimConfig(kind=kind, frames=frames, seed=seed))
    map_dir = (map_cache or cache) / f"map-{seq_dir.name}"
    camera = KittiOdometrySequence(seq_dir).calib.camera
    params = MapBuildParams(spacing=SUBMAP_SPACING[kind])
    save_map(build_map(seq_dir, params, submap_feature_fn(model, camera)), map_dir)
    return seq_dir, map_dir


def add_drive_arguments(ap: argparse.ArgumentParser) -> None:
    """``--model``, ``--cache``, ``--kinds`` and ``--seed``: which model on which held-out drives (the scripts that
    use :func:`prepare_drive` share them)."""
    ap.add_argument("--model", type=Path, default=ROOT / "models")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "eval")
    ap.add_argument("--kinds", nargs="+", default=list(DRIVES), choices=list(DRIVES))
    ap.add_argument("--seed", nargs="+", default=[], metavar="KIND=SEED", help="another world seed for a drive")


def parse_seeds(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, int]:
    """The world seed of each drive kind: ``DRIVES``', replaced by ``--seed KIND=SEED`` items."""
    seeds = {kind: DRIVES[kind][0] for kind in DRIVES}
    for item in items:
        kind, _, value = item.partition("=")
        if kind not in DRIVES or not value.isdigit():
            ap.error(f"--seed takes KIND=SEED with KIND one of {', '.join(DRIVES)}, got {item!r}")
        seeds[kind] = int(value)
    return seeds


def main() -> None:
    from ep2p_loc_ros.evaluation.evaluate import evaluate_sequence
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "eval")
    ap.add_argument("--kinds", nargs="+", default=list(DRIVES), choices=list(DRIVES))
    ap.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    ap.add_argument("--stride", type=int, default=1, help="localize every n-th frame only (quick looks)")
    ap.add_argument("--map-cache", type=Path, default=None, help="where maps go (default: --cache; one per model)")
    ap.add_argument("--seed", nargs="+", default=[], metavar="KIND=SEED", help="another world seed for a drive")
    ap.add_argument(
        "--viewpoint-offset", nargs=2, type=float, default=None, metavar=("LAT_M", "YAW_DEG"), help="see above"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    seeds = parse_seeds(ap, args.seed)

    rows = []
    for kind in args.kinds:
        seed = seeds[kind]
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, args.map_cache, seed)
        for name in args.variants:
            overrides = dict(ABLATIONS[name])
            noise = overrides.pop("prior_noise", None)
            loc = Localizer.from_paths(map_dir, args.model, LocalizerConfig(**overrides))
            if args.viewpoint_offset is not None:
                loc.map.T_map_viewpoint = offset_viewpoints(loc.map.T_map_viewpoint, *args.viewpoint_offset)
            summary = evaluate_sequence(
                loc,
                seq_dir,
                stride=args.stride,
                use_prior=noise is not None,
                prior_noise=noise or (0.0, 0.0),
                progress=not args.json,
            ).summary()
            rows.append({"drive": f"{kind} (seed {seed})", "variant": name, **summary})
    if args.json:
        print(json.dumps(rows, indent=2, default=float))
        return
    print(f"# Held-out drives, model {args.model}\n")
    print(
        "| drive | variant | frames | localized | R@0.25m,2° | R@0.5m,5° | R@5m,10° | median t (m) | median R (°) "
        "| inlier ratio | retrieval R@1 / R@5 | NEES median / within χ²₆ 95 % | p50 total (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rec, rr = r["recall"], r["retrieval_recall"]
        print(
            f"| {r['drive']} | {r['variant']} | {r['frames']} | {r['localized']:.0%} | {rec['0.25m_2deg']:.1%} | "
            f"{rec['0.5m_5deg']:.1%} | {rec['5m_10deg']:.1%} | {r['median_translation_m']:.2f} | "
            f"{r['median_rotation_deg']:.2f} | {r['inlier_ratio']:.2f} | {rr.get('1', float('nan')):.0%} / "
            f"{rr.get('5', float('nan')):.0%} | {r['nees_median']:.3g} / {r['nees_within_95']:.0%} | "
            f"{r['latency_ms'].get('total', float('nan')):.0f} |"
        )
    main_rows = [r for r in rows if r["variant"] in ("full", "tracking, prior 1 m / 3°")]
    if main_rows:
        print("\np50 latency per stage (ms), global (full) and tracking:\n")
        stages = ["preprocess", "image_encoder", "retrieval", "point_encoder", "ipr", "matching", "pnp", "total"]
        print("| drive | variant | " + " | ".join(stages) + " |")
        print("|---|---|" + "---|" * len(stages))
        for r in main_rows:
            ms = [r["latency_ms"].get(s, float("nan")) for s in stages]
            cells = " | ".join(f"{v:.1f}" if v == v else "–" for v in ms)  # – : the stage did not run
            print(f"| {r['drive']} | {r['variant']} | {cells} |")


if __name__ == "__main__":
    main()
