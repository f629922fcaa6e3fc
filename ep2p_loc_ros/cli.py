"""``ep2p-loc``: one console script, one subcommand per job; each is a thin call into the modules.

Heavy imports (torch, open3d, rclpy) happen inside the subcommand that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from . import __version__

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KITTI = REPO_ROOT / "test" / "data" / "kitti_object"
# Each module has ``register(subparsers)`` adding its subcommands (imports stay light: heavy ones are lazy).
SUBCOMMAND_MODULES = (
    ".sim.cli",  # sim
    ".map.cli",  # build-map
    ".model.cli",  # train, export
    ".evaluation.cli",  # localize, evaluate
    ".ros.cli",  # node
    ".replay_cli",  # make-bag, replay, demo
)


def _cmd_check_kitti(args: argparse.Namespace) -> int:
    from .kitti_check import run_check

    checks, table = run_check(args.data, None if args.json else args.out, seed=args.seed)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(table)
        print(f"report: {Path(args.out) / 'report.md'}")
    bad = [c.frame_id for c in checks if not c.projection_ok or c.pnp_status != "ok"]
    if bad:
        print(f"check-kitti: FAILED for frames {bad}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ep2p-loc", description="EP2P-Loc: localize a camera in a LiDAR map from one image."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "check-kitti",
        help="projection, IPR and PnP checks on real KITTI frames, with a report",
        description="Project each real KITTI scan into its image (compared with the published counts), run "
        "IPR, and register the image to its own scan with RANSAC PnP + LM from noisy correspondences with 50%% "
        "outliers. Writes report.md and overlay PNGs.",
    )
    p.add_argument(
        "--data", type=Path, default=DEFAULT_KITTI, help="KITTI object-layout directory (default: %(default)s)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("reports/check-kitti"), help="report directory (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for noise and outliers")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table; no report")
    p.set_defaults(func=_cmd_check_kitti)

    import importlib

    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module, __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:  # DataError and friends: a clear message, no traceback
        print(f"ep2p-loc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
