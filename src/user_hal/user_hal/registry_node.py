"""ROS 2 shell around :class:`user_common.registry.RobotRegistry`.

Listens to robot descriptions and heartbeats and serves ``/user/list_robots``. A robot whose
heartbeat is older than the ``heartbeat_timeout_s`` parameter is reported with state LOST; a robot
that never sent a heartbeat has ``seconds_since_heartbeat = inf``.
"""

from __future__ import annotations

import math
import time

import rclpy
from rclpy.node import Node
from user_msgs.msg import RobotDescription, RobotStatus
from user_msgs.srv import ListRobots

from user_common.node_main import run_node
from user_common.registry import Change, RobotRegistry

from user_common.qos import ANNOUNCEMENTS_IN, DESCRIPTION_TOPIC, HEARTBEAT_TOPIC, LIST_ROBOTS_SERVICE


class RegistryNode(Node):
    """Keep the list of robots and answer ``/user/list_robots``."""

    def __init__(self, node_name: str = "registry") -> None:
        """Declare parameters, subscribe to the robot topics and start the service."""
        super().__init__(node_name)
        timeout = float(self.declare_parameter("heartbeat_timeout_s", 3.0).value)
        self.registry = RobotRegistry(heartbeat_timeout_s=timeout)
        self.create_subscription(
            RobotDescription, DESCRIPTION_TOPIC, self._on_description, ANNOUNCEMENTS_IN
        )
        self.create_subscription(RobotStatus, HEARTBEAT_TOPIC, self._on_heartbeat, ANNOUNCEMENTS_IN)
        self.create_service(ListRobots, LIST_ROBOTS_SERVICE, self._on_list_robots)
        # Check liveness several times per timeout so LOST is logged promptly.
        self.create_timer(min(0.5, timeout / 4.0), self._report_changes)
        self.get_logger().info(
            f"robot registry up: serving {LIST_ROBOTS_SERVICE}, heartbeat timeout {timeout:g} s"
        )

    def _on_description(self, msg: RobotDescription) -> None:
        if not msg.robot_id:
            self.get_logger().warning("ignoring a RobotDescription with an empty robot_id")
            return
        now = time.monotonic()
        known = self.registry.entry(msg.robot_id, now)
        if known is None or known.description != msg:
            self.get_logger().info(
                f"robot {msg.robot_id}: {msg.embodiment or '?'} on backend {msg.backend or '?'}, "
                f"{msg.control_hz:g} Hz, task {msg.task or '-'}"
            )
        self.registry.update_description(msg, now)
        self._report_changes()

    def _on_heartbeat(self, msg: RobotStatus) -> None:
        if not msg.robot_id:
            self.get_logger().warning("ignoring a RobotStatus with an empty robot_id")
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        sent_age = (time.time_ns() - stamp_ns) / 1e9 if stamp_ns > 0 else None
        self.registry.update_heartbeat(msg, time.monotonic(), sent_age_s=sent_age)
        self._report_changes()

    def _report_changes(self) -> None:
        log = self.get_logger()
        for change, entry in self.registry.changes(time.monotonic()):
            if change is Change.LOST:
                if math.isinf(entry.seconds_since_heartbeat):
                    why = "no heartbeat received"
                else:
                    why = f"last heartbeat {entry.seconds_since_heartbeat:.1f} s ago"
                log.warning(f"robot {entry.robot_id} LOST: {why}")
            else:
                log.info(f"robot {entry.robot_id} {change.value}, state {entry.state_name}")

    def _on_list_robots(
        self, request: ListRobots.Request, response: ListRobots.Response
    ) -> ListRobots.Response:
        for entry in self.registry.entries(time.monotonic()):
            description = entry.description or RobotDescription(robot_id=entry.robot_id)
            status = RobotStatus()
            if entry.status is not None:
                status = _copy_status(entry.status)
            status.robot_id = entry.robot_id
            status.state = entry.state
            response.robots.append(description)
            response.status.append(status)
            response.seconds_since_heartbeat.append(float(entry.seconds_since_heartbeat))
        return response


def _copy_status(msg: RobotStatus) -> RobotStatus:
    """Return a field-by-field copy so the stored heartbeat keeps its own state."""
    out = RobotStatus()
    for field in msg.get_fields_and_field_types():
        setattr(out, field, getattr(msg, field))
    return out


def main(args: list[str] | None = None) -> int:
    """Run the registry node until Ctrl-C or SIGTERM."""
    return run_node(RegistryNode, "registry_node", args=args)


if __name__ == "__main__":
    raise SystemExit(main())
