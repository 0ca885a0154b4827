"""Test-wide settings: ROS 2 traffic stays on this machine, in a domain of its own per test run."""

import os
import random

import pytest

# Set before rclpy is imported anywhere: discovery only on localhost, one DDS domain per run so
# concurrent test runs on the same machine never see each other's nodes.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The ``tiny`` preset world without bags, generated once per test run; tests must not write into it
    (except the visibility cache ``run_evaluate`` keeps beside a world: written atomically, the same in every test)."""
    from distilvpr_ros.data.world.config import load_world_config
    from distilvpr_ros.data.world.generate import generate_world

    out = tmp_path_factory.mktemp("world_tiny")
    generate_world(out, load_world_config("tiny", None, None), write_bags=False, progress=False)
    return out


@pytest.fixture
def ros():
    """``(add, executor)``: rclpy initialised, ``add(node)`` puts a node on one single-threaded executor; every
    node added is destroyed and rclpy shut down afterwards."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    nodes = []
    executor = SingleThreadedExecutor()

    def add(node):
        nodes.append(node)
        executor.add_node(node)
        return node

    yield add, executor
    for node in nodes:
        executor.remove_node(node)
        node.destroy_node()
    rclpy.try_shutdown()
