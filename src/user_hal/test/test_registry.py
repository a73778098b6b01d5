"""Unit tests of the pure-Python robot registry core (no ROS needed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from user_common import registry as reg
from user_common.registry import Change, RobotRegistry


def description(robot_id: str, embodiment: str = "franka_fr3") -> SimpleNamespace:
    """Return a stand-in for a RobotDescription message."""
    return SimpleNamespace(robot_id=robot_id, embodiment=embodiment, backend="sim")


def heartbeat(robot_id: str, state: int = reg.STATE_RUNNING, step: int = 0) -> SimpleNamespace:
    """Return a stand-in for a RobotStatus message."""
    return SimpleNamespace(robot_id=robot_id, state=state, step=step)


def test_state_constants_match_robot_status() -> None:
    """The core's state numbers are those of user_msgs/RobotStatus."""
    msg = pytest.importorskip("user_msgs.msg", reason="user_msgs not built: run scripts/setup.sh")
    status = msg.RobotStatus
    assert (status.STATE_IDLE, status.STATE_RUNNING, status.STATE_ERROR) == (
        reg.STATE_IDLE, reg.STATE_RUNNING, reg.STATE_ERROR,
    )
    assert (status.STATE_LOST, status.STATE_RESETTING) == (reg.STATE_LOST, reg.STATE_RESETTING)


def test_robot_appears_with_its_heartbeat_state() -> None:
    """A described robot with a fresh heartbeat is listed with the heartbeat's state."""
    r = RobotRegistry(heartbeat_timeout_s=3.0)
    r.update_description(description("franka_0"), now=10.0)
    r.update_heartbeat(heartbeat("franka_0", reg.STATE_IDLE), now=10.1)
    (entry,) = r.entries(now=10.5)
    assert entry.robot_id == "franka_0"
    assert entry.description.embodiment == "franka_fr3"
    assert entry.state == reg.STATE_IDLE and entry.state_name == "IDLE" and not entry.lost
    assert entry.seconds_since_heartbeat == pytest.approx(0.4)
    assert [(c, e.robot_id) for c, e in r.changes(now=10.5)] == [(Change.APPEARED, "franka_0")]
    assert r.changes(now=10.6) == []  # each change is reported once


def test_latest_heartbeat_wins_and_entries_are_sorted() -> None:
    """Entries follow the newest heartbeat and are listed by robot id."""
    r = RobotRegistry(heartbeat_timeout_s=3.0)
    for rid in ("franka_1", "franka_0"):
        r.update_description(description(rid), now=0.0)
        r.update_heartbeat(heartbeat(rid, reg.STATE_RESETTING), now=0.1)
    r.update_heartbeat(heartbeat("franka_1", reg.STATE_RUNNING, step=7), now=0.6)
    entries = r.entries(now=0.7)
    assert [e.robot_id for e in entries] == ["franka_0", "franka_1"]
    assert entries[0].state == reg.STATE_RESETTING
    assert entries[1].state == reg.STATE_RUNNING and entries[1].status.step == 7


def test_robot_is_lost_after_timeout_and_stays_listed() -> None:
    """A stale heartbeat turns the robot LOST, but it is still listed."""
    r = RobotRegistry(heartbeat_timeout_s=2.0)
    r.update_description(description("franka_0"), now=0.0)
    r.update_heartbeat(heartbeat("franka_0"), now=0.0)
    r.changes(now=0.0)
    assert not r.entries(now=2.0)[0].lost  # exactly at the timeout still counts as fresh
    (entry,) = r.entries(now=2.5)
    assert entry.lost and entry.state == reg.STATE_LOST and entry.state_name == "LOST"
    assert entry.seconds_since_heartbeat == pytest.approx(2.5)
    assert entry.status.state == reg.STATE_RUNNING  # the last heartbeat is kept for display
    assert [c for c, _ in r.changes(now=2.5)] == [Change.LOST]
    assert r.changes(now=10.0) == []
    assert [e.robot_id for e in r.entries(now=100.0)] == ["franka_0"]


def test_lost_robot_returns() -> None:
    """A fresh heartbeat after LOST makes the robot live again and reports RETURNED."""
    r = RobotRegistry(heartbeat_timeout_s=1.0)
    r.update_description(description("franka_0"), now=0.0)
    r.update_heartbeat(heartbeat("franka_0"), now=0.0)
    r.changes(now=0.0)
    assert [c for c, _ in r.changes(now=5.0)] == [Change.LOST]
    r.update_heartbeat(heartbeat("franka_0", reg.STATE_IDLE), now=6.0)
    (entry,) = r.entries(now=6.2)
    assert not entry.lost and entry.state == reg.STATE_IDLE
    assert [c for c, _ in r.changes(now=6.2)] == [Change.RETURNED]


def test_description_without_heartbeat_is_lost() -> None:
    """A robot that never sent a heartbeat is LOST; the change is announced after the timeout."""
    r = RobotRegistry(heartbeat_timeout_s=1.0)
    r.update_description(description("franka_0"), now=0.0)
    (entry,) = r.entries(now=0.1)
    assert entry.lost and math.isinf(entry.seconds_since_heartbeat) and entry.status is None
    assert r.changes(now=0.5) == []  # its first heartbeat may still be on the way
    assert [c for c, _ in r.changes(now=1.5)] == [Change.LOST]
    r.update_heartbeat(heartbeat("franka_0"), now=2.0)
    assert [c for c, _ in r.changes(now=2.0)] == [Change.APPEARED]  # never seen alive before


def test_heartbeat_before_description_is_listed() -> None:
    """A heartbeat alone lists the robot (without a description) until one arrives."""
    r = RobotRegistry()
    r.update_heartbeat(heartbeat("arx_0"), now=1.0)
    (entry,) = r.entries(now=1.0)
    assert entry.description is None and not entry.lost
    r.update_description(description("arx_0", embodiment="arx_6dof"), now=1.2)
    assert r.entries(now=1.3)[0].description.embodiment == "arx_6dof"


def test_replayed_stale_first_heartbeat_is_not_fresh() -> None:
    """A first heartbeat stamped long ago (transient-local replay) does not make a robot live."""
    r = RobotRegistry(heartbeat_timeout_s=3.0)
    r.update_description(description("franka_0"), now=100.0)
    r.update_heartbeat(heartbeat("franka_0"), now=100.0, sent_age_s=60.0)
    (entry,) = r.entries(now=100.0)
    assert entry.lost and entry.seconds_since_heartbeat == pytest.approx(60.0)
    # Later heartbeats use arrival time, so a skewed sender clock cannot keep the robot lost.
    r.update_heartbeat(heartbeat("franka_0"), now=100.5, sent_age_s=60.0)
    assert not r.entries(now=100.6)[0].lost


def test_invalid_input_is_rejected() -> None:
    """An empty robot id or a non-positive timeout is an error."""
    with pytest.raises(ValueError):
        RobotRegistry(heartbeat_timeout_s=0.0)
    with pytest.raises(ValueError):
        RobotRegistry().update_description(description(""), now=0.0)
