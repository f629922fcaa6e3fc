"""``ep2p-loc node``: run the lifecycle node without ``ros2 launch`` (what works with the PyPI wheels).

    ep2p-loc node [--autostart] [--params-file FILE] [--ros-args -p map_path:=... -r image:=/camera/image_raw ...]

``--params-file`` defaults to the package's ``config/ep2p_loc.yaml``; anything after ``--ros-args`` goes to
rclpy unchanged and overrides it (``-p``, ``-r``, ``--params-file``, ``__ns:=``, ``--log-level``...).
"""

from __future__ import annotations

import argparse


def _cmd_node(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .params import DEFAULT_PARAMS_FILE

    params_file = Path(args.params_file) if args.params_file else DEFAULT_PARAMS_FILE
    if not params_file.is_file():
        raise FileNotFoundError(f"--params-file {params_file}: no such file")
    from .node import main

    argv = ["ep2p-loc-node", "--ros-args", "--params-file", str(params_file), *args.ros_args]
    return main(argv, autostart=args.autostart)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "node",
        help="run the ep2p_loc lifecycle node (ROS 2)",
        description="Run the ep2p_loc lifecycle node: it localizes every camera frame in the LiDAR map and "
        "publishes ~/pose, TF, ~/visible_points and /diagnostics. Without --autostart it waits to be "
        "configured and activated through its lifecycle services (/ep2p_loc/change_state).",
    )
    p.add_argument("--autostart", action="store_true", help="configure and activate at once")
    p.add_argument(
        "--params-file", default=None, help="node parameters (YAML); default: the package's config/ep2p_loc.yaml"
    )
    p.add_argument(
        "--ros-args",
        dest="ros_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="everything after it goes to rclpy (-p name:=value, -r from:=to, --params-file, ...)",
    )
    p.set_defaults(func=_cmd_node)
