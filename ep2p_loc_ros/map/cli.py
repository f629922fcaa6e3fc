"""``ep2p-loc build-map``: build a map directory from a KITTI odometry-layout sequence.

``register(subparsers)`` adds the subcommand to the main ``ep2p-loc`` parser (ep2p_loc_ros/cli.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .builder import FeatureFn

__all__ = ["register"]


def _load_feature_fn(model_dir: Path, seq_dir: Path) -> FeatureFn:
    """The trained point encoder as the builder's feature function (descriptor region: the sequence's camera)."""
    from ..datasets.kitti_odometry import KittiOdometrySequence
    from ..model.features import submap_feature_fn

    return submap_feature_fn(model_dir, KittiOdometrySequence(seq_dir).calib.camera)


def _cmd_build_map(args: argparse.Namespace) -> int:
    from .builder import MapBuildParams, build_map
    from .store import save_map

    params = MapBuildParams(
        voxel=args.voxel,
        spacing=args.spacing,
        radius=args.radius,
        min_range=args.min_range,
        max_range=args.max_range,
        scan_stride=args.scan_stride,
        environment=args.environment,
    )
    feature_fn = _load_feature_fn(args.model, args.seq_dir) if args.model is not None else None
    lidar_map = build_map(
        args.seq_dir,
        params,
        feature_fn,
        feature_model=str(args.model.resolve()) if args.model else None,
        progress=not args.quiet,
    )
    out = save_map(lidar_map, args.out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"map: {out}  points {lidar_map.num_points}  submaps {lidar_map.num_submaps}  "
        f"features D={lidar_map.feature_dim}  descriptors Dg={lidar_map.descriptor_dim}  {size / 2**20:.1f} MiB"
    )
    print(f"environment: {lidar_map.params['environment']} ({lidar_map.params['environment_source']})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``build-map`` to the ``ep2p-loc`` subcommands; returns its parser."""
    from .store import ENVIRONMENTS

    p = subparsers.add_parser(
        "build-map",
        help="build a LiDAR map (voxelised, cut into submaps) from a KITTI odometry-layout sequence",
        description="Fuse the sequence's scans by their poses in the world ('map') frame, voxel down-sample "
        "(centroid and mean reflectance per voxel), cut into submaps: one viewpoint every SPACING metres of "
        "path, submap = map points within RADIUS of it. Writes a versioned, memory-mappable map directory "
        "(manifest.json + .npy files), atomically; an existing map at --out is replaced.",
    )
    p.add_argument("seq_dir", type=Path, metavar="SEQ_DIR", help="sequence: velodyne/, image_2/, calib.txt, poses.txt")
    p.add_argument("--out", type=Path, required=True, metavar="MAP_DIR", help="map directory to write")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help="model to compute per-point features and submap descriptors",
    )
    p.add_argument("--voxel", type=float, default=0.2, help="voxel edge in metres (default: %(default)s)")
    p.add_argument("--spacing", type=float, default=10.0, help="metres of path between viewpoints (default: 10)")
    p.add_argument("--radius", type=float, default=40.0, help="submap radius in metres (default: %(default)s)")
    p.add_argument("--min-range", type=float, default=0.0, help="drop scan points nearer than this, m (default: 0)")
    p.add_argument("--max-range", type=float, default=0.0, help="drop scan points farther than this, m; 0 keeps all")
    p.add_argument("--scan-stride", type=int, default=1, help="fuse every n-th scan (default: %(default)s)")
    p.add_argument(
        "--environment",
        choices=["auto", *ENVIRONMENTS],
        default="auto",
        help="where the map is, stored in it: the localizer aligns to the map's reflectance only on the environments "
        "of localizer.alignment.environments (default all), on indoor maps by local contrast. auto: a synthetic "
        "sequence's sim.json says, else how far the scans see (indoor up to 15 m, outdoor from 40 m, unknown between) "
        "(default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_build_map)
    return p
