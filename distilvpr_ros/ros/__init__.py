"""The ROS 2 layer: rclpy nodes, message conversions, bag replay (the only package that imports rclpy)."""

import os

# Idle OpenMP threads (torch, faiss) sleep instead of spinning; set before either loads (pipeline.embedder
# .configure_threads says why). A value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
