"""Single images against the map's extent: recall by how far each frame is from the end of its drive, with the
drive's own map and with a map of the same world built from a longer drive.

Why: each held-out drive's map is built from that drive alone (about 50 m of road outdoors), so its last frames
look at road the LiDAR saw only from behind, past the last submap viewpoint, and the map holds few places that look
alike. Both differ from a car on a long mapped road. This localizes the drive's frames (global, as
``ep2p-loc evaluate``) against the drive's own map and against the map of a longer drive of the same world (the same
first frames: ``--map-frames``), and prints per drive the recall within 0.5 m / 5° with each map, then over all drives
the recall by path length to the end of the drive.

    python bench/map_extent.py [--kind outdoor] [--seeds 900 902 904] [--map-frames 90] [--model models]
        [--cache .cache/eval]

Each map is rebuilt with the model's features (``bench/eval_model.prepare_drive``); a drive that is missing is
generated (about a minute and a half for 90 outdoor frames).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

BANDS_M = (0.0, 5.0, 10.0, 15.0, 25.0, np.inf)  # path length to the end of the drive


def right_frames(loc, seq) -> np.ndarray:
    """Whether each frame of ``seq`` localized alone (no prior) lands within 0.5 m / 5° of the truth."""
    from ep2p_loc_ros.evaluation.evaluate import evaluate_sequence
    from ep2p_loc_ros.evaluation.metrics import pose_errors
    from ep2p_loc_ros.pose_confidence import right_poses

    ev = evaluate_sequence(loc, seq)
    return right_poses(*pose_errors(ev.T_est, ev.T_gt))


def to_end_m(seq) -> np.ndarray:
    """Each frame's path length (m) to the drive's last frame."""
    P = np.stack([seq.T_world_cam(i)[:3, 3] for i in range(len(seq))])
    steps = np.r_[np.linalg.norm(np.diff(P, axis=0), axis=1), 0.0]
    return np.cumsum(steps[::-1])[::-1]


def main() -> None:
    from eval_model import DRIVES, prepare_drive

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.localizer import Localizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="outdoor", choices=list(DRIVES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[900, 902, 904], help="world seeds (never trained on)")
    ap.add_argument("--map-frames", type=int, default=90, help="frames of the longer drive whose map is the other")
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parents[1] / ".cache" / "eval")
    args = ap.parse_args()
    frames = DRIVES[args.kind][1]
    if args.map_frames <= frames:
        ap.error(f"--map-frames must exceed the drive's {frames} frames")

    rows, hits_own, hits_long, ends = [], [], [], []
    for seed in args.seeds:
        seq_dir, own_map = prepare_drive(args.kind, args.cache, args.model, None, seed)
        _, long_map = prepare_drive(args.kind, args.cache, args.model, None, seed, frames=args.map_frames)
        seq = KittiOdometrySequence(seq_dir)
        result = []
        for map_dir in (own_map, long_map):
            loc = Localizer.from_paths(map_dir, args.model)
            try:
                result.append((len(loc.map.T_map_viewpoint), right_frames(loc, seq)))
            finally:
                loc.close()
        (n_own, own), (n_long, long) = result
        rows.append(f"| {seed} | {n_own} / {n_long} | {100 * own.mean():.1f} | {100 * long.mean():.1f} |")
        hits_own.append(own)
        hits_long.append(long)
        ends.append(to_end_m(seq))

    own, long, end = np.concatenate(hits_own), np.concatenate(hits_long), np.concatenate(ends)
    print(f"\n{args.kind} drives of {frames} frames; the longer map from {args.map_frames} frames of the same world")
    print("\n| drive | submaps (own / longer) | own map | longer map |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"| all | | **{100 * own.mean():.1f}** | **{100 * long.mean():.1f}** |")
    print("\n| path to the end of the drive | frames | own map | longer map |\n|---|---|---|---|")
    for lo, hi in itertools.pairwise(BANDS_M):
        band = (end >= lo) & (end < hi)
        if band.any():
            label = f"{lo:.0f}–{hi:.0f} m" if np.isfinite(hi) else f"≥ {lo:.0f} m"
            print(f"| {label} | {band.sum()} | {100 * own[band].mean():.1f} | {100 * long[band].mean():.1f} |")


if __name__ == "__main__":
    main()
