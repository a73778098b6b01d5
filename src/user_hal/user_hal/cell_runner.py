"""Carries out the episode controller's backend effects on a robot cell and returns their outcomes (no ROS).

``observe(state, episode_id, step, evaluation)`` publishes an observation and returns it (the robot node
passes its publisher). ``interrupt`` is set by an e-stop or a shutdown: it wakes a real-time step that is
settling and aborts a reset half-way (``ResetAborted``); the robot node owns it.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .backends.base import BackendError
from .core.cell import RobotCell
from .core import episode as ep


class _Aborted(Exception):
    pass


class CellRunner:
    """Runs ``Step``, ``Hold``, ``Reset`` and ``Recover`` on ``cell``; ``run`` returns the outcome event."""

    EFFECTS = (ep.Step, ep.Hold, ep.Reset, ep.Recover)

    def __init__(self, cell: RobotCell, observe: Callable[[Any, int, int, bool], Any], interrupt: threading.Event,
                 realtime_factor: float, clock: Callable[[], float] = time.monotonic,
                 new_episode_id: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.cell, self.observe, self.interrupt = cell, observe, interrupt
        self.rf = realtime_factor
        self.clock = clock
        self.new_episode_id = new_episode_id   # default: microseconds, unique and ordered across restarts
        self.realtime_robot = not cell.backend.simulated   # a real arm moves on the wall clock

    def run(self, e: Any) -> Any:
        try:
            return self._run(e)
        except BackendError as exc:
            return ep.BackendFault(self.clock(), str(exc))

    def _run(self, e: Any) -> Any:
        cell = self.cell
        if isinstance(e, ep.Step):
            res = cell.step(cell.hold_action() if e.values is None else e.values,
                            settle=lambda: self._settle(e.observe_at))
            now = self.clock()
            return ep.StepDone(now, self.observe(res.state, e.episode_id, e.step, e.evaluation), res.outcome.reward,
                               res.outcome.success, res.terminated, res.truncated, res.commanded)
        if isinstance(e, ep.Hold):
            if not e.observe:
                cell.hold()
                return ep.HoldDone(self.clock())
            state = cell.hold(settle=lambda: self._settle(e.observe_at))
            now = self.clock()
            return ep.HoldDone(now, self.observe(state, e.episode_id, e.step, e.evaluation))
        if isinstance(e, ep.Reset):
            try:
                state = cell.reset(seed=e.seed, pace=self._pace)
            except _Aborted:
                return ep.ResetAborted(self.clock())
            now, episode_id = self.clock(), self.new_episode_id()
            return ep.ResetDone(now, episode_id, self.observe(state, episode_id, 0, e.evaluation))
        if isinstance(e, ep.Recover):
            cell.recover()
            return ep.RecoverDone(self.clock())
        raise TypeError(f"CellRunner.run: {e!r} is not a backend effect")

    def _settle(self, observe_at: float | None) -> None:
        """A real-time robot follows the new target until ``observe_at`` (``robot.inference_budget_s`` before the
        next tick), so the state read next shows the step's result; a simulator integrated the period already."""
        if self.realtime_robot and observe_at is not None:
            left = observe_at - self.clock()
            if left > 0:
                self.interrupt.wait(left)

    def _pace(self) -> None:
        """Once per control period of a reset motion: keeps wall-clock pace, stops on an interrupt."""
        if self.rf > 0:
            self.interrupt.wait(self.cell.period / self.rf)
        if self.interrupt.is_set():
            raise _Aborted()
