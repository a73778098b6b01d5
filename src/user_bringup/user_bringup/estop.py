"""``userctl estop [--release]``: stop (or release) every robot, and confirm it from their heartbeats.

Every robot node serves ``/user/estop`` and ``/user/estop_release`` (``std_srvs/srv/Trigger``).
A call reaches every server of the name, but a server that DDS has not matched yet misses it, and
the caller only sees the first answer. So this command does not trust the answer: it reads the
live robots from the latched heartbeat topic and repeats the call until every live robot's
heartbeat says ``ERROR`` / ``e-stop`` (or, for ``--release``, no longer says ``e-stop``), or the
timeout passes. A robot already stopped by a backend fault counts as stopped. Where a registry
runs (the launcher starts one), every robot it lists as live must confirm too, so a robot this
short-lived node has not discovered yet is waited for (and named if it never confirms) rather
than forgotten.

Exit codes: 0 every live robot confirmed; 1 a robot did not confirm in time, or no robot node
serves the e-stop (the message names which).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import IO

from user_common.registry import STATE_ERROR, STATE_LOST, STATE_NAMES
from user_common.topics import (ESTOP_MESSAGE, ESTOP_RELEASE_SERVICE, ESTOP_SERVICE, HEARTBEAT_TOPIC,
                             LIST_ROBOTS_SERVICE)

#: a heartbeat older than this (by its stamp) means the robot node is gone: it is not waited for
LIVE_S = 3.0
#: without a registry's list, confirmation waits this long for robots discovered late
DISCOVERY_MAX_S = 4.0
#: the call is repeated this often while a live robot has not confirmed
RETRY_S = 0.5


@dataclass
class RobotView:
    """The newest heartbeat of one robot."""

    robot_id: str
    state: int
    message: str
    stamp_s: float

    def confirmed(self, release: bool) -> bool:
        """The robot shows the requested e-stop state (a fault-stopped robot counts as stopped)."""
        if self.state < 0:  # listed by the registry, but its heartbeat never reached us
            return False
        if release:
            return self.message != ESTOP_MESSAGE
        return self.state == STATE_ERROR


def verdict(view: RobotView, release: bool) -> str:
    """One word for the table."""
    if not view.confirmed(release):
        return "NOT CONFIRMED"
    if not release and view.message != ESTOP_MESSAGE:
        return "stopped (fault)"
    return "released" if release else "stopped"


class _EstopClient:
    """A short-lived rclpy node: heartbeat subscriber and Trigger client, spun in a thread."""

    def __init__(self, service: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from std_srvs.srv import Trigger
        from user_common.qos import ANNOUNCEMENTS_IN
        from user_msgs.msg import RobotStatus
        from user_msgs.srv import ListRobots

        self._trigger = Trigger
        self._context = rclpy.Context()
        rclpy.init(args=[], context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node(f"userctl_estop_{os.getpid()}", context=self._context)
        self._lock = threading.Lock()
        self.robots: dict[str, RobotView] = {}
        self._node.create_subscription(RobotStatus, HEARTBEAT_TOPIC, self._on_beat, ANNOUNCEMENTS_IN)
        self.client = self._node.create_client(Trigger, service)
        self._list_type = ListRobots
        self.registry = self._node.create_client(ListRobots, LIST_ROBOTS_SERVICE)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - the context shuts down under the executor on close()
            pass

    def _on_beat(self, msg) -> None:
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        with self._lock:
            old = self.robots.get(msg.robot_id)
            if old is None or stamp >= old.stamp_s:
                self.robots[msg.robot_id] = RobotView(msg.robot_id, msg.state, msg.message, stamp)

    def live(self) -> list[RobotView]:
        """Robots whose newest heartbeat is recent, by id."""
        now = time.time()
        with self._lock:
            return sorted((v for v in self.robots.values() if now - v.stamp_s < LIVE_S), key=lambda v: v.robot_id)

    @staticmethod
    def live_in_registry(response) -> set[str]:
        """Robots the registry counts as live: they must confirm too, even if this short-lived node
        has not discovered them yet."""
        if response is None:
            return set()
        return {st.robot_id for st in response.status if st.state != STATE_LOST}

    def ask_registry(self):
        """Call ``/user/list_robots`` (the caller checked that a registry is matched); a future."""
        return self.registry.call_async(self._list_type.Request())

    def writers(self) -> int:
        """Heartbeat publishers DDS has discovered (one per robot node)."""
        return self._node.count_publishers(HEARTBEAT_TOPIC)

    def heard_ids(self) -> set[str]:
        with self._lock:
            return set(self.robots)

    def call_async(self):
        return self.client.call_async(self._trigger.Request())

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        self._context.try_shutdown()
        self._thread.join(timeout=2.0)


def run_estop(release: bool, timeout: float, out: IO[str], err: IO[str]) -> int:
    """Engage (or release) the e-stop of every robot and print a confirmation table."""
    service = ESTOP_RELEASE_SERVICE if release else ESTOP_SERVICE
    what = "release" if release else "e-stop"
    deadline = time.monotonic() + timeout
    c = _EstopClient(service)
    try:
        if not c.client.wait_for_service(timeout_sec=timeout):
            domain = os.environ.get("ROS_DOMAIN_ID", "0")
            print(f"userctl estop: no robot node serves {service} within {timeout:g} s "
                  f"(are robot nodes running, on ROS_DOMAIN_ID={domain}?)", file=err)
            return 1
        # Stop first, confirm after: the first call goes out as soon as a server is matched. The
        # robots to confirm are those whose heartbeats we hear, plus those the registry lists as
        # live. A fresh process may take seconds to discover every other process, so, unless a
        # registry answered and every robot it lists (and every heartbeat writer discovered) was
        # heard, confirmation waits DISCOVERY_MAX_S for late robots. Unconfirmed robots get the
        # call again every RETRY_S.
        t0 = time.monotonic()
        answers: list[str] = []
        calls, last_call = [c.call_async()], t0  # a call may never be answered (a server matched late)
        registry = None
        expected: set[str] = set()
        while True:
            now = time.monotonic()
            for f in [f for f in calls if f.done()]:
                calls.remove(f)
                if f.result() is not None:
                    answers.append(f.result().message)
            if registry is None and c.registry.service_is_ready():
                registry = c.ask_registry()
            if registry is not None and registry.done():
                expected = c.live_in_registry(registry.result())
            heard = c.heard_ids()
            settled = ((registry is not None and registry.done() and expected <= heard
                        and len(heard) >= c.writers()) or now - t0 >= DISCOVERY_MAX_S)
            live = c.live()
            waiting = [v.robot_id for v in live if not v.confirmed(release)]
            waiting += sorted(expected - {v.robot_id for v in live})
            if answers and settled and not waiting:
                break
            if now >= deadline:
                break
            if (waiting or not answers) and now - last_call >= RETRY_S:
                calls.append(c.call_async())
                last_call = now
            time.sleep(0.05)
        live = c.live()
        unheard = sorted(expected - {v.robot_id for v in live})
        live += [RobotView(r, -1, "no heartbeat heard", 0.0) for r in unheard]
        for a in dict.fromkeys(answers):  # each distinct answer once
            print(f"answer: {a}", file=out)
        if not live:
            print(f"userctl estop: {what} sent, but no live robot heartbeat on {HEARTBEAT_TOPIC} to confirm it",
                  file=err)
            return 1
        print(format_table(live, release), file=out)
        missing = [v.robot_id for v in live if not v.confirmed(release)]
        if missing or not answers:
            print(f"userctl estop: {what} not confirmed within {timeout:g} s by: "
                  f"{', '.join(missing) or 'no robot answered the call'}", file=err)
            return 1
        done = "released" if release else "stopped: holding pose, refusing actions and resets"
        print(f"{len(live)} robot{'s' if len(live) != 1 else ''} {done}"
              + ("" if release else " (release with: userctl estop --release)"), file=out)
        return 0
    finally:
        c.close()


def format_table(views: list[RobotView], release: bool) -> str:
    rows = [("ROBOT", "STATE", "MESSAGE", "E-STOP")]
    rows += [(v.robot_id, STATE_NAMES.get(v.state, "?"), v.message or "-", verdict(v, release))
             for v in views]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
