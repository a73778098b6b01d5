"""The ``main()`` every USER node shares: init, build, spin, clean shutdown, clear config errors."""
from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from .config_schema import ConfigError


def run_node(make_node: Callable[[], Node], label: str, spin: Callable[[Node], int] | None = None,
             args: list[str] | None = None) -> int:
    """Run one node until it finishes, Ctrl-C or SIGTERM; returns the process exit code.

    ``spin(node)`` defaults to ``rclpy.spin`` and returns the exit code. A ``ConfigError`` while
    building the node prints one line naming the file and key and returns 2. A node's optional
    ``close()`` runs before it is destroyed.
    """
    rclpy.init(args=args)
    node: Node | None = None
    code = 0
    try:
        node = make_node()
        if spin is None:
            rclpy.spin(node)
        else:
            code = spin(node)
    except ConfigError as exc:
        print(f"[{label}] config error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # the normal ways to stop
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
