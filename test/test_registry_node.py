"""ROS test: the registry node as a real process, a fake robot in-test, and `userctl robots`.

The fake robot publishes a RobotDescription and heartbeats; `userctl robots` must list it as
RUNNING, and as LOST once the heartbeats stop for longer than the registry's timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Iterator

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from user_msgs.msg import RobotDescription, RobotStatus

from hal_helpers import node_cmd, userctl_cmd

pytestmark = pytest.mark.timeout(60)

HEARTBEAT_TIMEOUT_S = 1.5
ROBOT_ID = "fake_7"
ANNOUNCE_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


@pytest.fixture
def registry(procs):
    """registry_node as a real process in this test's domain (stopped by the procs fixture)."""
    return procs.start("registry", node_cmd("registry_node", {"heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S}))


class FakeRobot:
    """An in-test robot: one description, then heartbeats every 0.2 s until stopped."""

    def __init__(self) -> None:
        """Create the node and start publishing."""
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("fake_robot", namespace=f"/{ROBOT_ID}", context=self.context)
        self.description_pub = self.node.create_publisher(
            RobotDescription, "/user/robots/description", ANNOUNCE_QOS
        )
        self.heartbeat_pub = self.node.create_publisher(
            RobotStatus, "/user/robots/heartbeat", ANNOUNCE_QOS
        )
        self.description_pub.publish(
            RobotDescription(
                robot_id=ROBOT_ID, embodiment="franka_fr3", backend="sim", control_hz=10.0
            )
        )
        self.timer = self.node.create_timer(0.2, self._beat)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _beat(self) -> None:
        msg = RobotStatus(
            robot_id=ROBOT_ID, state=RobotStatus.STATE_RUNNING, achieved_control_hz=9.9,
            episodes_done=4, step=12,
        )
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.heartbeat_pub.publish(msg)

    def stop_heartbeats(self) -> None:
        """Stop sending heartbeats (the robot goes silent)."""
        self.timer.cancel()

    def close(self) -> None:
        """Stop the spin thread and release the context."""
        self._stop.set()
        self.thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def fake_robot(ros_env: dict[str, str]) -> Iterator[FakeRobot]:
    """A fake robot publishing in this test's domain; always closed."""
    robot = FakeRobot()
    try:
        yield robot
    finally:
        robot.close()


def _robots(env: dict[str, str], timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        userctl_cmd("robots", "--timeout", str(timeout)),
        capture_output=True, text=True, env=env, timeout=timeout + 20,
    )


def _row(table: str, robot_id: str) -> list[str] | None:
    """Return the cells of a robot's row in the `userctl robots` table."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == robot_id:
            return cells
    return None


def test_userctl_robots_shows_running_then_lost(
    registry, fake_robot: FakeRobot, ros_env: dict[str, str]
) -> None:
    """The robot is RUNNING while it beats and LOST after the heartbeat timeout."""
    proc = registry.popen
    row = None
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:  # discovery may take a moment on a loaded machine
        result = _robots(ros_env)
        row = _row(result.stdout, ROBOT_ID)
        # The description and the heartbeats are separate latched topics: wait for both.
        if result.returncode == 0 and row is not None and row[3] == "RUNNING" and row[1] != "?":
            break
        time.sleep(0.3)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row is not None, result.stdout
    header = _row(result.stdout, "ID")
    assert header == ["ID", "EMBODIMENT", "BACKEND", "STATE", "CONTROL HZ", "EPISODE", "LAST HEARTBEAT", "JOB", "INFERENCE"]
    assert row[1:5] == ["franka_fr3", "sim", "RUNNING", "9.9 / 10.0"], result.stdout
    assert row[5] == "4 (step 12)" and row[6].endswith(" s ago")

    fake_robot.stop_heartbeats()
    time.sleep(HEARTBEAT_TIMEOUT_S + 1.0)
    result = _robots(ros_env)
    row = _row(result.stdout, ROBOT_ID)
    assert result.returncode == 0 and row is not None, result.stdout + result.stderr
    assert row[3] == "LOST", result.stdout
    assert float(row[6].split()[0]) > HEARTBEAT_TIMEOUT_S

    assert proc.poll() is None, "registry_node died"
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=10) == 0  # Ctrl-C is a clean exit
    text = registry.output()
    assert f"robot {ROBOT_ID} appeared" in text and f"robot {ROBOT_ID} LOST" in text, text


def test_userctl_robots_without_registry_fails_clearly(ros_env: dict[str, str]) -> None:
    """With no registry in the domain, `userctl robots` says so and exits 1."""
    result = _robots(ros_env, timeout=1.0)
    assert result.returncode == 1
    assert "no robot registry answered" in result.stderr and "Traceback" not in result.stderr
