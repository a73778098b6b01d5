"""When the learner updates, publishes weights, checkpoints, resets a robot or stops.

A pure schedule driven by counters and a clock (no threads, no ROS), so every rule is tested with a
fake clock; the learner node asks ``next()`` what to do, does it, and reports it with ``done()``.

- async: update whenever ``min_buffer`` transitions are in and the update-to-data cap
  (``max_utd`` updates per environment step past ``min_buffer``) allows; publish after
  ``publish_every_updates`` new updates or ``publish_every_s`` seconds with new updates (and once at
  the start, so inference acts with the learner's weights at once);
- sync (the traditional loop, for comparison): after each episode end, ``sync_updates_per_episode``
  updates, publish and wait until inference uses the weights, then reset that robot; a robot found
  waiting for its reset that nobody queued (its episode ended while the learner was down) is queued;
- both: checkpoint after ``checkpoint_every_updates`` new updates and every 30 s when anything changed;
  stop once ``max_env_steps`` or ``max_minutes`` is used up.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import math
import threading
import time
from typing import Callable

from .learner_config import LearnerOptions

CHECKPOINT_EVERY_S = 30.0
#: a robot must report waiting for its reset this long before the schedule queues it by itself
IDLE_GRACE_S = 3.0


class Do(enum.Enum):
    UPDATE = "update"
    PUBLISH = "publish"
    CHECKPOINT = "checkpoint"
    RESET = "reset"
    WAIT = "wait"
    STOP = "stop"


@dataclasses.dataclass(frozen=True)
class Step:
    do: Do
    robot_id: str = ""                  # RESET: which robot
    wait_for_inference: bool = False    # PUBLISH in sync mode: hold until inference uses the weights


class TrainingSchedule:
    """Decides the learner's next step. Inputs may come from any thread; ``next``/``done`` from one."""

    def __init__(self, opts: LearnerOptions, clock: Callable[[], float] = time.monotonic,
                 updates: int = 0, env_steps: int = 0) -> None:
        self.opts = opts
        self.clock = clock
        self.sync = opts.mode == "sync"
        self.updates = updates
        self.env_steps = env_steps
        self.start = clock()
        self._lock = threading.Lock()
        self._published_at = -1 if not self.sync else updates   # async: publish once at the start
        self._last_publish = self.start
        self._ckpt_updates, self._ckpt_env_steps = updates, env_steps
        self._last_ckpt = self.start
        self._ends: collections.deque[str] = collections.deque()   # sync: robots whose episode ended
        self._current: str | None = None        # sync: the robot being trained for, published, reset
        self._train_left = 0
        self._publish_due = False
        self._idle_since: dict[str, float] = {}

    # -- inputs (any thread) ------------------------------------------------------------------------
    def add_env_steps(self, n: int = 1) -> None:
        with self._lock:
            self.env_steps += n

    def episode_ended(self, robot_id: str) -> None:
        """Sync mode: ``robot_id`` finished an episode and waits for its reset."""
        if not self.sync:
            return
        with self._lock:
            if robot_id != self._current and robot_id not in self._ends:
                self._ends.append(robot_id)

    def robot_status(self, robot_id: str, waiting_for_reset: bool) -> None:
        """Sync mode: a heartbeat; a robot waiting for a reset nobody queued is queued after a grace time."""
        if not self.sync:
            return
        now = self.clock()
        with self._lock:
            if not waiting_for_reset or robot_id == self._current or robot_id in self._ends:
                self._idle_since.pop(robot_id, None)
                return
            since = self._idle_since.setdefault(robot_id, now)
            if now - since >= IDLE_GRACE_S:
                del self._idle_since[robot_id]
                self._ends.append(robot_id)

    # -- the training thread --------------------------------------------------------------------------
    def budget_fraction(self) -> float:
        """Share of the budget used (the larger of steps and time), NaN without a budget."""
        o = self.opts
        parts = []
        if o.max_env_steps:
            parts.append(self.env_steps / o.max_env_steps)
        if o.max_minutes:
            parts.append((self.clock() - self.start) / (60.0 * o.max_minutes))
        return max(parts) if parts else math.nan

    def _checkpoint_due(self) -> bool:
        if self.updates - self._ckpt_updates >= self.opts.checkpoint_every_updates:
            return True
        changed = self.updates != self._ckpt_updates or self.env_steps != self._ckpt_env_steps
        return changed and self.clock() - self._last_ckpt >= CHECKPOINT_EVERY_S

    def next(self, buffer_size: int) -> Step:
        """What to do now, given how many transitions the replay holds."""
        if self.budget_fraction() >= 1.0:
            return Step(Do.STOP)
        return self._next_sync(buffer_size) if self.sync else self._next_async(buffer_size)

    def _next_async(self, buffer_size: int) -> Step:
        o = self.opts
        if self._checkpoint_due():
            return Step(Do.CHECKPOINT)
        new = self.updates - self._published_at
        if self._published_at < 0 or new >= o.publish_every_updates or \
                (new > 0 and self.clock() - self._last_publish >= o.publish_every_s):
            return Step(Do.PUBLISH)
        ready = buffer_size >= max(o.min_buffer, 1)
        capped = o.max_utd > 0 and self.updates >= o.max_utd * max(self.env_steps - o.min_buffer, 0)
        return Step(Do.UPDATE) if ready and not capped else Step(Do.WAIT)

    def _next_sync(self, buffer_size: int) -> Step:
        if self._train_left > 0:
            return Step(Do.UPDATE)
        if self._publish_due:
            return Step(Do.PUBLISH, self._current or "", wait_for_inference=True)
        if self._checkpoint_due():
            return Step(Do.CHECKPOINT)
        if self._current is not None:
            return Step(Do.RESET, self._current)
        with self._lock:
            if not self._ends:
                return Step(Do.WAIT)
            self._current = self._ends.popleft()
        if buffer_size >= max(self.opts.min_buffer, 1):
            self._train_left = self.opts.sync_updates_per_episode
            self._publish_due = True
            return Step(Do.UPDATE)
        return Step(Do.RESET, self._current)

    def done(self, step: Step) -> None:
        """Report that ``step`` was carried out."""
        now = self.clock()
        if step.do is Do.UPDATE:
            self.updates += 1
            self._train_left = max(0, self._train_left - 1)
        elif step.do is Do.PUBLISH:
            self._published_at, self._last_publish, self._publish_due = self.updates, now, False
        elif step.do is Do.CHECKPOINT:
            self._ckpt_updates, self._ckpt_env_steps, self._last_ckpt = self.updates, self.env_steps, now
        elif step.do is Do.RESET:
            with self._lock:
                self._current = None
                self._idle_since.pop(step.robot_id, None)
