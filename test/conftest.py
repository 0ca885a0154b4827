"""Test-wide settings: ROS 2 traffic stays on this machine, in a domain of its own per test run."""

import os
import random

# Set before rclpy is imported anywhere: discovery only on localhost, one DDS domain per run so
# concurrent test runs on the same machine never see each other's nodes.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("MPLBACKEND", "Agg")
