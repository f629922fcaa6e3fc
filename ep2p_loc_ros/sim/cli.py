"""``ep2p-loc sim``: render a synthetic sequence (outdoor streets or indoor rooms) in the KITTI odometry layout.

``register(subparsers)`` adds the subcommand to the main ``ep2p-loc`` parser (ep2p_loc_ros/cli.py). Bad values
raise ``ValueError`` (from :class:`SimConfig` or here), which the main CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _cmd_sim(args: argparse.Namespace) -> int:
    from .writer import SimConfig, generate_sequence

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: all cores), got {args.threads}")
    extra = {}
    if args.azimuth_step is not None:
        extra["azimuth_step_deg"] = args.azimuth_step
    if args.range_noise is not None:
        extra["range_noise"] = args.range_noise
    if args.image_noise is not None:
        extra["image_noise"] = args.image_noise
    config = SimConfig(
        kind=args.kind,
        frames=args.frames,
        seed=args.seed,
        blocks=args.blocks,
        speed=args.speed,
        rate_hz=args.rate,
        shadows=not args.no_shadows,
        **extra,
    )
    result = generate_sequence(args.out, config, progress=not args.quiet, nthreads=args.threads)
    print(
        f"sim: {config.kind} seed {config.seed}: {result.frames} frames in {result.seconds:.1f} s "
        f"({result.frames_per_s:.2f} frames/s), {result.triangles} triangles -> {result.path}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sim`` to the ``ep2p-loc`` subcommands; returns its parser."""
    p = subparsers.add_parser(
        "sim",
        help="render a synthetic sequence (camera + 64-beam LiDAR + exact ground truth) in the KITTI layout",
        description="Build a procedural world (outdoor: a street grid with buildings, cars, trees, signs; "
        "indoor: a corridor with rooms and furniture), drive a KITTI-like rig (colour camera cam2, 1241x376, "
        "and an HDL-64-like LiDAR) along a smooth route and write image_2/, velodyne/, calib.txt, poses.txt, "
        "times.txt, world_mesh.npz and sim.json. Output is a pure function of the options (same seed -> "
        "byte-identical files); it is written next to OUT and swapped in at the end, so an interrupted run "
        "leaves a previous sequence at OUT untouched. OUT must be empty, absent or a previous sequence.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="sequence directory to write")
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of frames (>= 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="world, route and noise seed (default: 0)")
    p.add_argument(
        "--kind", choices=("outdoor", "indoor"), default="outdoor", help="kind of world (default: %(default)s)"
    )
    p.add_argument("--blocks", type=int, default=4, help="outdoor: junctions per side of the street grid (default: 4)")
    p.add_argument("--speed", type=float, default=None, help="m/s (default: outdoor 10, indoor 1.2)")
    p.add_argument("--rate", type=float, default=None, help="frames per second (default: outdoor 10, indoor 5)")
    p.add_argument("--azimuth-step", type=float, default=None, help="LiDAR azimuth step in degrees (default: 0.2)")
    p.add_argument("--range-noise", type=float, default=None, help="LiDAR range noise sigma, m (default: 0.02)")
    p.add_argument("--image-noise", type=float, default=None, help="image noise sigma, 8-bit DN (default: 2)")
    p.add_argument("--no-shadows", action="store_true", help="outdoor: no sun shadows (faster)")
    p.add_argument("--threads", type=int, default=0, help="ray-casting threads; 0: all cores (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sim)
    return p
