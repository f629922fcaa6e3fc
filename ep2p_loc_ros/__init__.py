"""ep2p_loc_ros: EP2P-Loc camera localization in a LiDAR map, with a ROS 2 lifecycle node.

The core (geometry, calibration, IPR, PnP, map, model, pipeline) never imports rclpy; ``ep2p_loc_ros.ros`` is the
thin layer that converts messages and calls the core.
"""

__version__ = "0.1.0"
