"""Latency of this checkout against another (e.g. the previous commit), in the same run: ratios per stage.

Why: a shared 2-core host's speed drifts by 10-40 % from minute to minute, so two runs made apart cannot tell a
10 % change from noise. This script localizes the held-out drives with both checkouts in turn, several rounds
interleaved (other, this, other, this, ...), each in a fresh process, same model and same maps, and reports each
stage's p50 per checkout and the ratio this / other per round (median, and the range over the rounds).

    git worktree add ../prev HEAD~1            # the checkout to compare against
    python bench/latency_ab.py --other ../prev [--rounds 3] [--modes global tracking] [--stride 2]
        [--kinds outdoor indoor] [--seed KIND=SEED ...] [--model models] [--config LOCALIZER.yaml]

``--config``: LocalizerConfig fields (the node's ``localizer.*``, as ``ep2p-loc evaluate --config``), read by each
checkout's own LocalizerConfig, e.g. ``alignment: {retrieved_starts: true}``.

Tracking starts every frame from its true pose (the timing does not depend on the prior's error). The drives and
their maps are those of ``bench/eval_model.py`` (made if missing, built with ``--model``'s features).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "image_encoder", "ipr", "matching", "pnp", "alignment", "total")


def worker(
    tree: Path, map_dir: Path, sequence: Path, model: Path, mode: str, stride: int, config: Path | None = None
) -> dict[str, float]:
    """p50 (ms) of each stage over every ``stride``-th frame, with the package of checkout ``tree`` (and the
    localizer settings of the YAML ``config``)."""
    sys.path.insert(0, str(tree))
    import numpy as np
    import yaml

    import ep2p_loc_ros
    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig

    if not Path(ep2p_loc_ros.__file__).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"imported {ep2p_loc_ros.__file__}, not the package of {tree}")
    cfg = LocalizerConfig.from_dict(yaml.safe_load(config.read_text()) or {}, str(config)) if config else None
    loc = Localizer.from_paths(map_dir, model, cfg)
    seq = KittiOdometrySequence(sequence)
    camera = seq.calib.camera
    frames = range(0, len(seq), stride)
    images = [seq.image(i) for i in frames]
    priors = [seq.T_world_cam(i) if mode == "tracking" else None for i in frames]
    loc.localize(images[0], camera, priors[0])  # warm-up: first-call allocations, onnxruntime's arena
    timings = [loc.localize(im, camera, prior).timings_ms for im, prior in zip(images, priors, strict=True)]
    return {s: float(np.median([t[s] for t in timings if s in t])) for s in STAGES if any(s in t for t in timings)}


def run_worker(
    tree: Path, map_dir: Path, sequence: Path, model: Path, mode: str, stride: int, config: Path | None
) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", str(tree), "--map", str(map_dir), "--sequence", str(sequence)]
    cmd += ["--model", str(model), "--mode", mode, "--stride", str(stride)]
    cmd += ["--config", str(config.resolve())] if config else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_main() -> None:
    """One checkout's run (a subprocess of :func:`main`): nothing of this project is imported before the
    worker puts that checkout first on the path."""
    ap = argparse.ArgumentParser()
    for name in ("--worker", "--map", "--sequence", "--model"):
        ap.add_argument(name, type=Path, required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--stride", type=int, required=True)
    ap.add_argument("--config", type=Path, default=None)
    a = ap.parse_args()
    print(json.dumps(worker(a.worker, a.map, a.sequence, a.model, a.mode, a.stride, a.config)))


def main() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from eval_model import DRIVES, add_drive_arguments, parse_seeds, prepare_drive

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_drive_arguments(ap)
    ap.add_argument("--other", type=Path, help="the checkout to compare against (a git worktree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["global", "tracking"], choices=["global", "tracking"])
    ap.add_argument("--stride", type=int, default=2, help="localize every n-th frame")
    ap.add_argument("--config", type=Path, default=None, help="YAML with LocalizerConfig fields, for both checkouts")
    args = ap.parse_args()
    if args.other is None or not (args.other / "ep2p_loc_ros" / "__init__.py").exists():
        ap.error("--other must be a checkout of this project (git worktree add ../prev HEAD~1)")
    seeds = parse_seeds(ap, args.seed)
    drives = {}
    for kind in args.kinds:
        seq = args.cache / f"{kind}-seed{seeds[kind]}-{DRIVES[kind][1]}f"  # prepare_drive's names
        map_dir = args.cache / f"map-{seq.name}"
        if not (seq / "sim.json").exists() or not (map_dir / "manifest.json").exists():
            seq, map_dir = prepare_drive(kind, args.cache, args.model, seed=seeds[kind])
        drives[seq.name] = (seq, map_dir)
    trees = {"other": args.other, "this": ROOT}
    p50: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for name, tree in trees.items():
            for mode in args.modes:
                for drive, (seq, map_dir) in drives.items():
                    p50.setdefault((name, mode, drive), []).append(
                        run_worker(tree, map_dir, seq, args.model, mode, args.stride, args.config)
                    )
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    settings = f", localizer settings {args.config}" if args.config else ""
    print(
        f"# p50 per stage (ms), {args.other} (other) against {ROOT} (this), {args.rounds} interleaved rounds"
        f"{settings}\n"
    )
    print("| drive | mode | stage | other | this | this / other: median (range) |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        for drive in drives:
            old, new = p50[("other", mode, drive)], p50[("this", mode, drive)]
            for stage in STAGES:
                if stage not in old[0] or stage not in new[0]:
                    continue
                a, b = [x[stage] for x in old], [x[stage] for x in new]
                ratios = [y / x for x, y in zip(a, b, strict=True)]
                print(
                    f"| {drive} | {mode} | {stage} | {statistics.median(a):.1f} | {statistics.median(b):.1f} | "
                    f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
                )


if __name__ == "__main__":
    worker_main() if "--worker" in sys.argv else main()
