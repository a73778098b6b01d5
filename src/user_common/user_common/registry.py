"""Robot registry core: which robots exist and whether their heartbeat is fresh.

Plain Python without rclpy so it can be unit-tested without ROS. Messages are duck-typed: a
description needs ``robot_id``; a heartbeat needs ``robot_id`` and ``state`` (as in
``user_msgs/RobotDescription`` and ``user_msgs/RobotStatus``). Every ``now`` passed in must come
from the same monotonic clock.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass
from typing import Any

# Mirrors user_msgs/RobotStatus constants; test_registry.py checks they agree.
STATE_IDLE = 0
STATE_RUNNING = 1
STATE_ERROR = 2
STATE_LOST = 3
STATE_RESETTING = 4

STATE_NAMES = {
    STATE_IDLE: "IDLE",
    STATE_RUNNING: "RUNNING",
    STATE_ERROR: "ERROR",
    STATE_LOST: "LOST",
    STATE_RESETTING: "RESETTING",
}


class Change(enum.Enum):
    """A change in a robot's liveness, reported once by :meth:`RobotRegistry.changes`."""

    APPEARED = "appeared"
    LOST = "lost"
    RETURNED = "returned"


@dataclass(frozen=True)
class RobotEntry:
    """One robot as the registry sees it at a given time."""

    robot_id: str
    description: Any | None  # last RobotDescription, None if only heartbeats were heard
    status: Any | None  # last RobotStatus, None if no heartbeat yet
    state: int  # status.state, or STATE_LOST when the heartbeat is stale or missing
    seconds_since_heartbeat: float  # math.inf when no heartbeat was ever received

    @property
    def lost(self) -> bool:
        """Return True when the robot's heartbeat is stale or was never heard."""
        return self.state == STATE_LOST

    @property
    def state_name(self) -> str:
        """Return the state as an upper-case word, e.g. ``RUNNING``."""
        return STATE_NAMES.get(self.state, f"STATE_{self.state}")


@dataclass
class _Record:
    """Mutable bookkeeping for one robot."""

    robot_id: str
    first_seen: float
    description: Any | None = None
    status: Any | None = None
    last_heartbeat: float | None = None
    reported_alive: bool | None = None  # liveness last announced by changes(); None = never
    announced_alive: bool = False  # changes() has reported it alive at least once


class RobotRegistry:
    """Track robot descriptions and heartbeats; a stale or missing heartbeat means LOST.

    Lost robots stay listed so an operator can see what went away.
    """

    def __init__(self, heartbeat_timeout_s: float = 3.0) -> None:
        """Create an empty registry; heartbeats older than ``heartbeat_timeout_s`` are stale."""
        if not heartbeat_timeout_s > 0.0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {heartbeat_timeout_s}")
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self._records: dict[str, _Record] = {}

    def _record(self, robot_id: str, now: float) -> _Record:
        if not robot_id:
            raise ValueError("message has an empty robot_id")
        rec = self._records.get(robot_id)
        if rec is None:
            rec = _Record(robot_id=robot_id, first_seen=now)
            self._records[robot_id] = rec
        return rec

    def update_description(self, msg: Any, now: float | None = None) -> None:
        """Store (or replace) a robot's description."""
        now = time.monotonic() if now is None else now
        self._record(msg.robot_id, now).description = msg

    def update_heartbeat(self, msg: Any, now: float, sent_age_s: float | None = None) -> None:
        """Store a robot's heartbeat received at ``now``.

        ``sent_age_s`` (time since the sender stamped it, if known) is honoured only for a robot's
        first heartbeat: a transient-local replay of an old heartbeat must not make a dead robot
        look alive, while later heartbeats use arrival time so clock skew cannot mark a robot lost.
        """
        rec = self._record(msg.robot_id, now)
        received = now
        if rec.last_heartbeat is None and sent_age_s is not None and sent_age_s > 0.0:
            received = now - sent_age_s
        if rec.last_heartbeat is None or received >= rec.last_heartbeat:
            rec.last_heartbeat = received
            rec.status = msg

    def _is_alive(self, rec: _Record, now: float) -> bool:
        return (
            rec.last_heartbeat is not None
            and now - rec.last_heartbeat <= self.heartbeat_timeout_s
        )

    def entry(self, robot_id: str, now: float) -> RobotEntry | None:
        """Return the entry of one robot, or None if it was never heard of."""
        rec = self._records.get(robot_id)
        if rec is None:
            return None
        alive = self._is_alive(rec, now)
        if rec.last_heartbeat is None:
            age = math.inf
        else:
            age = max(0.0, now - rec.last_heartbeat)
        if alive and rec.status is not None:
            state = int(rec.status.state)
        else:
            state = STATE_LOST
        return RobotEntry(
            robot_id=rec.robot_id,
            description=rec.description,
            status=rec.status,
            state=state,
            seconds_since_heartbeat=age,
        )

    def entries(self, now: float) -> list[RobotEntry]:
        """Return every robot ever heard of, live or lost, sorted by robot id."""
        return [self.entry(rid, now) for rid in sorted(self._records)]  # type: ignore[misc]

    def changes(self, now: float) -> list[tuple[Change, RobotEntry]]:
        """Return liveness changes since the previous call, each reported once.

        A robot is APPEARED the first time it is seen alive, LOST when its heartbeat goes stale
        (or never arrives within the timeout after it was first heard of), RETURNED when a lost
        robot's heartbeat is fresh again.
        """
        out: list[tuple[Change, RobotEntry]] = []
        for rid in sorted(self._records):
            rec = self._records[rid]
            alive = self._is_alive(rec, now)
            if alive == rec.reported_alive:
                continue
            if alive:
                change = Change.RETURNED if rec.announced_alive else Change.APPEARED
                rec.announced_alive = True
            elif rec.reported_alive is None and now - rec.first_seen <= self.heartbeat_timeout_s:
                continue  # just described; its first heartbeat may still be on the way
            else:
                change = Change.LOST
            rec.reported_alive = alive
            out.append((change, self.entry(rid, now)))  # type: ignore[arg-type]
        return out
