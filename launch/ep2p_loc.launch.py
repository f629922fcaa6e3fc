"""Launch the ep2p_loc lifecycle node (and optionally RViz).

    ros2 launch ep2p_loc_ros ep2p_loc.launch.py map_path:=/data/map image:=/camera/image_rect \
        camera_info:=/camera/camera_info [params_file:=my.yaml] [namespace:=car1] [use_sim_time:=true] [rviz:=true]
        [imu:=/vehicle/imu (read with imu.enabled: true in params_file)]

With ``autostart:=true`` (the default) the node is configured once it starts and activated once it is inactive,
through lifecycle events (as nav2's lifecycle manager would do with services). Without launch (PyPI wheels):
``ep2p-loc node --autostart --ros-args -p map_path:=... -r image:=...``.
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription

PACKAGE = "ep2p_loc_ros"


def _share_dir() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    except Exception:  # running from the source tree
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _setup(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {"use_sim_time": _truthy(get("use_sim_time"))}
    if get("map_path"):
        overrides["map_path"] = get("map_path")
    if get("model_path"):
        overrides["model_path"] = get("model_path")
    node = LifecycleNode(
        package=PACKAGE,
        executable="ep2p-loc",
        arguments=["node"],
        name="ep2p_loc",
        namespace=get("namespace"),
        output="screen",
        parameters=[get("params_file"), overrides],
        remappings=[("image", get("image")), ("camera_info", get("camera_info")), ("imu", get("imu"))],
    )
    actions = [node]
    if _truthy(get("autostart")):
        actions.append(
            RegisterEventHandler(
                OnStateTransition(
                    target_lifecycle_node=node,
                    goal_state="inactive",
                    entities=[
                        EmitEvent(
                            event=ChangeState(
                                lifecycle_node_matcher=matches_action(node),
                                transition_id=Transition.TRANSITION_ACTIVATE,
                            )
                        )
                    ],
                )
            )
        )
        actions.append(
            EmitEvent(
                event=ChangeState(
                    lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE
                )
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    share = _share_dir()
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(share, "config", "ep2p_loc.yaml"),
                description="node parameters (YAML)",
            ),
            DeclareLaunchArgument("map_path", default_value="", description="map directory (overrides params_file)"),
            DeclareLaunchArgument(
                "model_path", default_value="", description="model directory (overrides params_file)"
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
            DeclareLaunchArgument("image", default_value="image", description="image topic (remaps `image`)"),
            DeclareLaunchArgument(
                "camera_info", default_value="camera_info", description="camera_info topic (remaps `camera_info`)"
            ),
            DeclareLaunchArgument(
                "imu", default_value="imu", description="IMU topic (remaps `imu`; read with imu.enabled: true)"
            ),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
            DeclareLaunchArgument("autostart", default_value="true", description="configure and activate at start"),
            DeclareLaunchArgument("rviz", default_value="false", description="start RViz with rviz/ep2p_loc.rviz"),
            DeclareLaunchArgument(
                "rviz_config", default_value=os.path.join(share, "rviz", "ep2p_loc.rviz"), description="RViz config"
            ),
            OpaqueFunction(function=_setup),
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", LaunchConfiguration("rviz_config")],
                parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
                condition=IfCondition(LaunchConfiguration("rviz")),
                output="log",
            ),
        ]
    )
