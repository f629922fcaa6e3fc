"""``ep2p-loc make-bag``, ``replay`` and ``demo``: record a drive, replay it through the node, score the poses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cmd_make_bag(args: argparse.Namespace) -> int:
    from .ros.bags import sequence_to_bag

    info = sequence_to_bag(
        args.sequence,
        args.out,
        storage=args.storage,
        stride=args.stride,
        max_frames=args.max_frames,
        odometry=not args.no_odometry,
        start_time_s=args.start_time,
        progress=not args.no_progress,
        lidar=args.lidar,
        odometry_drift=tuple(args.odometry_drift),
    )
    topics = ", ".join(f"{t} ×{n}" for t, n in info.topics.items())
    print(
        f"make-bag: {len(info.frames)} frames -> {info.path} ({info.storage}, {info.size_bytes / 1e6:.1f} MB): {topics}"
    )
    return 0


def _cmd_bag_to_sequence(args: argparse.Namespace) -> int:
    from .ros.bag_to_sequence import bag_to_sequence

    s = bag_to_sequence(
        args.bag,
        args.out,
        image_topic=args.image_topic,
        camera_info_topic=args.camera_info_topic,
        lidar_topic=args.lidar_topic,
        pose_topic=args.pose_topic,
        base_frame=args.base_frame,
        max_dt_s=args.max_dt,
        intensity_scale=args.intensity_scale,
        progress=not args.no_progress,
    )
    left = ", ".join(f"{n} {why}" for why, n in s.skipped.items() if n) or "none"
    print(
        f"bag-to-sequence: {s.frames} frames -> {s.out} (of {s.images} images and {s.scans} scans; left out: {left}; "
        f"largest image-scan offset {s.max_pair_dt_ms:.1f} ms)"
    )
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from .evaluation.report import format_table, write_summary_json
    from .ros.replay import ReplayOptions, replay_and_evaluate

    opts = ReplayOptions(
        rate=args.rate,
        use_sim_time=not args.no_sim_time,
        params_file=args.params_file,
        params=_parse_params(args.param),
        lockstep=args.lockstep,
        startup_timeout_s=args.startup_timeout,
        result_timeout_s=args.result_timeout,
        progress=not (args.json or args.no_progress),
    )
    summary = replay_and_evaluate(args.bag, args.map, args.model, args.out, opts, report_dir=args.report)
    if args.json:
        from .evaluation.report import _clean

        print(json.dumps(_clean(summary), indent=2))
    else:
        print(format_table(summary))
        print(f"result: {args.out}")
        if args.report:
            print(f"report: {summary['report']}")
    if args.report:
        write_summary_json(summary, Path(args.report) / "summary.json")
    return 0


def _parse_params(items: list[str] | None) -> dict:
    """``name:=value`` (YAML-typed value) -> {name: value}."""
    import yaml

    out = {}
    for item in items or []:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"--param {item!r}: expected name:=value")
        out[name] = yaml.safe_load(value)
    return out


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_ODOMETRY_DRIFT, run_demo

    return run_demo(
        args.out or Path("reports/demo" if args.kind == "outdoor" else f"reports/demo-{args.kind}"),
        frames=args.frames,
        rate=args.rate,
        json_out=args.json,
        storage=args.storage,
        odometry_drift=DEMO_ODOMETRY_DRIFT if args.odometry_drift is None else tuple(args.odometry_drift),
        kind=args.kind,
    )


def _add_replay_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="playback speed factor on the bag's own timestamps (default: %(default)s)",
    )
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="send the next image only once the node has answered the previous one (every frame processed; "
        "for comparing with an in-process run), instead of on the bag's timestamps",
    )
    p.add_argument("--no-sim-time", action="store_true", help="do not publish /clock; the node runs on wall time")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-bag",
        help="KITTI-layout sequence -> ROS 2 bag (camera, camera_info, tf, ground truth)",
        description="Write a KITTI odometry-layout sequence (synthetic or real KITTI odometry) as a ROS 2 bag: "
        "/camera/image_raw, /camera/camera_info, /tf_static (base_link -> camera), /tf (odom -> base_link, from "
        "the ground truth) and /ground_truth/pose (base_link in the map). MCAP by default; readable by ros2 bag "
        "and Foxglove.",
    )
    p.add_argument("sequence", type=Path, help="KITTI odometry-layout sequence directory")
    p.add_argument("out", type=Path, help="bag directory to create (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="default: %(default)s")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N (selected) frames")
    p.add_argument("--stride", type=int, default=1, help="every S-th frame (default: %(default)s)")
    p.add_argument("--no-odometry", action="store_true", help="leave out /tf odom -> base_link")
    p.add_argument(
        "--odometry-drift",
        nargs=2,
        type=float,
        default=[0.0, 0.0],
        metavar=("FRACTION", "DEG_PER_M"),
        help="odometry error per step: this fraction of its length (m) and degrees per metre (default 0 0: none)",
    )
    p.add_argument("--start-time", type=float, default=None, help="bag time (s) of times.txt's 0 (default: fixed)")
    p.add_argument(
        "--lidar",
        action="store_true",
        help="also the scans on /velodyne_points and base_link -> velodyne on /tf_static",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_make_bag)

    from .ros.bags import FRAMES, TOPICS

    p = sub.add_parser(
        "bag-to-sequence",
        help="ROS 2 bag (rectified images, camera_info, LiDAR scans, poses, tf_static) -> KITTI-layout sequence",
        description="Pair each rectified image with the nearest LiDAR scan, take the base pose at the image stamp "
        "from the pose topic (interpolated), move the scan to the image stamp, and write the pairs in the KITTI "
        "odometry layout (image_2, velodyne, calib.txt, poses.txt, times.txt) that build-map, train and evaluate "
        "read. Mounts (base -> camera, base -> LiDAR) come from /tf_static. The output appears complete or not "
        "at all.",
    )
    p.add_argument("bag", type=Path, help="input bag directory")
    p.add_argument("out", type=Path, help="sequence directory to create (must not exist)")
    p.add_argument("--image-topic", default=TOPICS["image"], help="rectified images (default: %(default)s)")
    p.add_argument("--camera-info-topic", default=TOPICS["camera_info"], help="default: %(default)s")
    p.add_argument("--lidar-topic", default=TOPICS["lidar"], help="PointCloud2 scans (default: %(default)s)")
    p.add_argument(
        "--pose-topic",
        default=TOPICS["ground_truth"],
        help="base pose in the map: PoseStamped, PoseWithCovarianceStamped or Odometry (default: %(default)s)",
    )
    p.add_argument("--base-frame", default=FRAMES["base"], help="parent of the mounts on /tf_static")
    p.add_argument(
        "--max-dt", type=float, default=0.05, help="largest image-scan stamp difference (s) of a pair (default: 0.05)"
    )
    p.add_argument(
        "--intensity-scale",
        type=float,
        default=None,
        help="reflectance = intensity x this (default: 1/255 for scans with intensities above 1, else 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bag_to_sequence)

    p = sub.add_parser(
        "replay",
        help="play a bag through the node over DDS, record its poses, evaluate",
        description="Start the ep2p_loc node as a child process, play the bag into it over DDS on the bag's "
        "timestamps (with /clock and use_sim_time), record what it publishes into OUT (result bag, "
        "replay_result.json, TUM trajectories) and print the metrics against the bag's /ground_truth/pose.",
    )
    p.add_argument("--bag", type=Path, required=True, help="input bag (from make-bag)")
    p.add_argument("--map", type=Path, required=True, help="map directory")
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--out", type=Path, default=Path("results/replay"), help="result directory (default: %(default)s)")
    p.add_argument("--report", type=Path, default=None, help="also write the report (markdown + PNGs) here")
    p.add_argument("--params-file", type=Path, default=None, help="node parameters YAML, passed to the node")
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME:=VALUE",
        help="node parameter override (repeatable), e.g. tracking.enabled:=false",
    )
    _add_replay_options(p)
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds for the node to become active")
    p.add_argument("--result-timeout", type=float, default=30.0, help="seconds to wait for the last pose")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "demo",
        help="the whole loop on the shipped demo drive: make-bag, replay through the node, evaluate, report",
        description="On the demo drive, map and model (generated and cached on first use): make the bag, replay "
        "it through the node over DDS, evaluate, write the report and print its table.",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default: reports/demo, indoors reports/demo-indoor)"
    )
    p.add_argument(
        "--kind",
        choices=("outdoor", "indoor"),
        default="outdoor",
        help="the outdoor drive, or an indoor one (a corridor and a turn on the spot) (default: %(default)s)",
    )
    p.add_argument("--frames", type=int, default=None, help="only the first N frames of the drive (default: all)")
    p.add_argument(
        "--rate", type=float, default=None, help="playback speed factor (default: paced to what 2 cores keep up with)"
    )
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    p.add_argument(
        "--odometry-drift",
        nargs=2,
        type=float,
        default=None,
        metavar=("FRACTION", "DEG_PER_M"),
        help="the bag's odometry error per step (default 0.01 0.02: 1 %% of the distance, 0.02 degrees per metre)",
    )
    p.set_defaults(func=_cmd_demo)
