"""The ROS 2 layer: message conversions, TF, and (later) the lifecycle node. Imports rclpy and messages."""
