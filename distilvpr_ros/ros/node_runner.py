"""The nodes' ``main()``: init, spin, shut down cleanly (the node's own ``shutdown()`` first, e.g. save the map)."""

from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from .params import ParamError


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """The standard main(): ``rclpy.init`` → spin → on Ctrl-C / SIGTERM / external shutdown leave the spin,
    call the node's ``shutdown()`` (if it has one: e.g. save the map) → ``destroy_node`` →
    ``rclpy.try_shutdown``. rclpy's own SIGINT and SIGTERM handlers are installed by ``rclpy.init``.
    Returns the process exit code (2 for invalid parameters)."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParamError as e:
        print(f"[ERROR] {e}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            finish = getattr(node, "shutdown", None)
            if finish is not None:
                finish()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
