"""Fault injection for tests: a robot cell whose ``step`` raises ``BackendError`` at chosen calls.

``faulty_robot_node`` is the robot node with one more parameter, ``fault_injection`` (``"step:N[,N...]"``:
the 1-based ``step`` calls, counted from the cell's creation, that fault before touching the backend, as a
lost connection or a reflex would). Everything else is the production node.
"""
from __future__ import annotations

import sys

from user_hal.backends.base import BackendError
from user_common.config_schema import ConfigError
from user_hal.core.cell import ACTION_NAMES, RobotCell, check_action
from user_common.node_main import run_node
from user_hal.robot_io import make_cell
from user_hal.robot_node import RobotNode, spin_until_finished


def parse_fault_injection(spec: str) -> set[int]:
    """``"step:5,6,7"`` -> {5, 6, 7}; ``""`` -> no faults. Raises ValueError saying what is expected."""
    spec = spec.strip()
    if not spec:
        return set()
    kind, sep, rest = spec.partition(":")
    expected = "expected 'step:N[,N...]' (step() calls, 1-based, at which the backend faults), e.g. 'step:5,6'"
    if not sep or kind.strip() != "step":
        raise ValueError(f"{spec!r}: {expected}")
    try:
        steps = {int(x) for x in rest.split(",") if x.strip()}
    except ValueError:
        raise ValueError(f"{spec!r}: {expected}") from None
    if not steps or min(steps) < 1:
        raise ValueError(f"{spec!r}: {expected}")
    return steps


def inject_step_faults(cell: RobotCell, steps: set[int]) -> None:
    """Make ``cell.step`` raise ``BackendError`` at the given calls (a valid action is checked first)."""
    real_step = cell.step
    pending = set(steps)
    calls = 0

    def step(action, settle=None):
        nonlocal calls
        check_action(action, len(ACTION_NAMES))    # a bad action is an ActionError, as without faults
        calls += 1
        if calls in pending:
            pending.discard(calls)
            raise BackendError(f"injected fault at step call {calls} (fault_injection test hook)")
        return real_step(action, settle)

    cell.step = step


class FaultyRobotNode(RobotNode):
    """The robot node with the ``fault_injection`` parameter."""

    def make_cell(self, profile, robot_id: str, seed: int):
        self.declare_parameter("fault_injection", "")
        try:
            steps = parse_fault_injection(str(self.get_parameter("fault_injection").value))
        except ValueError as exc:
            raise ConfigError("<parameters>", "fault_injection", str(exc)) from None
        cell, cameras = make_cell(profile, robot_id, seed)
        if steps:
            inject_step_faults(cell, steps)
            self.get_logger().warning(f"fault injection (test hook) at step calls {sorted(steps)}")
        return cell, cameras


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(FaultyRobotNode, "faulty_robot_node", spin_until_finished, args))


if __name__ == "__main__":
    main()
