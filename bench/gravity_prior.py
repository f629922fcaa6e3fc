"""An IMU's gravity as a prior of the alignment (``gravity.py``): single images with and without it, frame by frame.

Every image of each held-out drive (``bench/eval_model.py``'s worlds, made if missing) is localized globally twice
with the localizer's defaults: without gravity, and with gravity as a simulated IMU measures it (the true camera's
roll and pitch, each turned by Gaussian noise of ``--noise-deg``, seeded per frame), given to the localizer with a
std of ``--sigma-deg`` (default: the noise). Prints per drive and in all the recall within 0.5 m / 5 deg (and
0.25 m / 2 deg, 5 m / 10 deg), the frames gained and lost, and the median tilt error of the poses.

    python bench/gravity_prior.py [--kind outdoor] [--seeds 900 902 ...] [--noise-deg 0.05] [--sigma-deg S]
        [--weight W] [--jobs 2]

The drives run in ``--jobs`` processes (each aligns its hypotheses in two threads, as the localizer does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUTDOOR_SEEDS = [*range(900, 917, 2), *range(920, 937, 2), *range(940, 957, 2)]  # the 27 drives of models/README.md
FRAMES = {"outdoor": 60, "indoor": 40}


def _drive(
    kind: str, seed: int, noise_deg: float, sigma_deg: float, weight: float | None, model: Path, cache: Path
) -> dict:
    """One drive's frames, each without and with gravity: position and rotation errors and tilt errors."""
    sys.path.insert(0, str(ROOT / "bench"))
    from eval_model import prepare_drive

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.evaluation.metrics import pose_errors
    from ep2p_loc_ros.geometry import make_T, rotvec_to_matrix
    from ep2p_loc_ros.gravity import GravityPrior, down_in_camera
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig

    frames = FRAMES[kind]
    seq_dir, map_dir = cache / f"{kind}-seed{seed}-{frames}f", cache / f"map-{kind}-seed{seed}-{frames}f"
    if not (map_dir.exists() and (seq_dir / "sim.json").exists()):
        seq_dir, map_dir = prepare_drive(kind, cache, model, seed=seed, frames=frames)
    seq = KittiOdometrySequence(seq_dir)
    config = LocalizerConfig.from_dict({"alignment": {} if weight is None else {"gravity_weight": weight}})
    loc = Localizer.from_paths(map_dir, model, config)
    rows = []
    try:
        for i in range(len(seq)):
            truth = seq.T_world_cam(i)
            tilt = np.radians(np.random.default_rng([seed, i]).normal(0.0, noise_deg, 2))
            measured = truth @ make_T(rotvec_to_matrix(np.array([tilt[0], 0.0, tilt[1]])), np.zeros(3))  # pitch, roll
            gravity = GravityPrior(down_in_camera(measured), np.radians(sigma_deg))
            true_g = GravityPrior(down_in_camera(truth), 1.0)
            row = []
            for g in (None, gravity):
                res = loc.localize(seq.image(i), seq.calib.camera, gravity=g)
                if res.ok:
                    t, r = pose_errors(res.T_map_cam, truth)
                    row.append((float(t[0]), float(r[0]), float(np.degrees(true_g.tilt_error(res.T_map_cam)))))
                else:
                    row.append((np.inf, np.inf, np.inf))
            rows.append(row)
    finally:
        loc.close()
    return {"seed": seed, "errors": np.array(rows)}  # (frames, 2 variants, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="outdoor", choices=list(FRAMES))
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="world seeds (default: the 27 outdoor drives)")
    ap.add_argument("--noise-deg", type=float, default=0.05, help="the simulated IMU's roll and pitch noise (std)")
    ap.add_argument("--sigma-deg", type=float, default=None, help="the std the localizer is told (default: the noise)")
    ap.add_argument("--weight", type=float, default=None, help="alignment.gravity_weight (default: the localizer's)")
    ap.add_argument("--jobs", type=int, default=2, help="processes, one drive each at a time")
    ap.add_argument("--model", type=Path, default=ROOT / "models")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "eval")
    args = ap.parse_args()
    seeds = args.seeds or (OUTDOOR_SEEDS if args.kind == "outdoor" else list(range(901, 916, 2)))
    sigma = args.sigma_deg if args.sigma_deg is not None else max(args.noise_deg, 1e-3)
    if not (args.noise_deg >= 0 and sigma > 0):
        ap.error("--noise-deg must be >= 0 and --sigma-deg > 0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    weight = "default" if args.weight is None else args.weight
    print(f"{args.kind}: {len(seeds)} drives, IMU tilt noise {args.noise_deg} deg, told {sigma} deg, weight {weight}")
    header = "| drive | frames | 0.5 m / 5 deg: without -> with | gained · lost | tilt p50 (deg): without -> with |"
    lines = [header, "|---|---|---|---|---|"]
    every = []
    with ProcessPoolExecutor(args.jobs) as pool:
        run = (args.noise_deg, sigma, args.weight, args.model, args.cache)
        jobs = [pool.submit(_drive, args.kind, s, *run) for s in seeds]
        for k, job in enumerate(jobs):
            out = job.result()
            e = out["errors"]
            every.append(e)
            lines.append(_line(str(out["seed"]), e))
            print(f"[{k + 1}/{len(seeds)}] drive {out['seed']} done, {time.perf_counter() - t0:.0f} s", flush=True)
    e = np.concatenate(every)
    lines.append(_line("**all**", e))
    print("\n".join(lines))
    for t, r in ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0)):
        a, b = (np.mean((e[:, v, 0] < t) & (e[:, v, 1] < r)) for v in (0, 1))
        print(f"within {t} m / {r} deg: {a:.1%} -> {b:.1%}")


def _line(name: str, e: np.ndarray) -> str:
    """A table row: recall within 0.5 m / 5 deg without -> with, frames gained and lost, median tilt errors."""
    ok = (e[:, :, 0] < 0.5) & (e[:, :, 1] < 5.0)
    gained, lost = int(np.sum(~ok[:, 0] & ok[:, 1])), int(np.sum(ok[:, 0] & ~ok[:, 1]))
    tilt = np.median(e[:, :, 2], axis=0)
    return (
        f"| {name} | {len(e)} | {ok[:, 0].mean():.1%} -> {ok[:, 1].mean():.1%} | +{gained} −{lost} "
        f"| {tilt[0]:.3f} -> {tilt[1]:.3f} |"
    )


if __name__ == "__main__":
    main()
