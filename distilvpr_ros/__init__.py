"""distilvpr_ros: camera+LiDAR teacher, camera-only student, visual place recognition for ROS 2.

The core (everything but :mod:`distilvpr_ros.ros`) imports without rclpy.
"""

__version__ = "0.1.0"
