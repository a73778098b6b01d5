"""The robot node's episode logic as a pure, single-threaded controller.

``EpisodeController.handle(event)`` takes one event and returns a list of effects. Time comes in with
every event (``now``, seconds on a monotonic clock); ``wake_at`` says when the shell should feed the next
``Tick``. The controller never touches the backend: it asks for ``Step``, ``Hold``, ``Reset`` or
``Recover`` and the shell feeds back the outcome (``StepDone``, ``HoldDone``, ``ResetDone``,
``ResetAborted``, ``RecoverDone`` or ``BackendFault``) before anything else. With ``follow_bindings`` the robot
works only while a scheduler binds it (``Bound``); ``BindingLost`` cuts the running episode. Observations are opaque
here: the shell builds them and hands them in with the outcome. The whole story: docs/robot_node.md.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

from .cell import ACTION_NAMES, ActionError, check_action
from .chunks import ENSEMBLE_MODES, ChunkQueue, PendingChunk, check_chunk
from user_common.topics import ESTOP_MESSAGE, ESTOP_RELEASE_SERVICE

# The values of user_msgs' constants (Action.SOURCE_*, Transition.REWARD_*, RobotStatus.STATE_*); a test
# checks that they agree with the messages.
SOURCE_POLICY, SOURCE_HUMAN, SOURCE_SCRIPTED, SOURCE_HOLD = 0, 1, 2, 3
REWARD_RULE, REWARD_HUMAN, REWARD_CLASSIFIER = 0, 1, 2
STATE_IDLE, STATE_RUNNING, STATE_ERROR, STATE_RESETTING = 0, 1, 2, 4


# -- configuration --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeConfig:
    """What the controller needs from the robot profile and the node's parameters."""

    robot_id: str
    period: float                       # control period in robot time, 1 / robot.control_hz (s)
    realtime_factor: float = 1.0        # 0: step as soon as an action arrives (simulation only)
    watchdog_periods: float = 2.0
    inference_budget_s: float = 0.03
    intervention_hold_s: float = 0.5
    max_recoveries: int = 3
    chunk_ensemble: str = "none"
    chunk_ensemble_rate: float = 0.01
    reward_source: str = "rule"         # or "classifier"
    reward_when: str = "step"           # or "end"
    reward_timeout_s: float = 2.0
    max_episodes: int = 0               # 0: run until stopped
    wait_for_reset: bool = False
    follow_bindings: bool = False       # work only while bound (Bound / BindingLost)
    action_dim: int = len(ACTION_NAMES)

    def __post_init__(self) -> None:
        checks = [
            ("period", self.period > 0, "must be > 0"),
            ("realtime_factor", self.realtime_factor >= 0, "must be >= 0"),
            ("watchdog_periods", self.watchdog_periods > 0, "must be > 0"),
            ("max_recoveries", self.max_recoveries >= 0, "must be >= 0"),
            ("chunk_ensemble", self.chunk_ensemble in ENSEMBLE_MODES, f"must be one of {ENSEMBLE_MODES}"),
            ("reward_source", self.reward_source in ("rule", "classifier"), "must be 'rule' or 'classifier'"),
            ("reward_when", self.reward_when in ("step", "end"), "must be 'step' or 'end'"),
            ("reward_timeout_s", self.reward_timeout_s > 0, "must be > 0"),
            ("max_episodes", self.max_episodes >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"EpisodeConfig.{name}: {why}, got {getattr(self, name)!r}")

    @classmethod
    def from_profile(cls, profile: Any, robot_id: str, max_episodes: int = 0,
                     wait_for_reset: bool = False, follow_bindings: bool = False) -> "EpisodeConfig":
        rc, tc = profile.robot, profile.task
        return cls(robot_id=robot_id, period=1.0 / rc.control_hz, realtime_factor=rc.realtime_factor,
                   watchdog_periods=rc.watchdog_periods, inference_budget_s=rc.inference_budget_s,
                   intervention_hold_s=rc.intervention_hold_s, max_recoveries=rc.max_recoveries,
                   chunk_ensemble=rc.chunk_ensemble, chunk_ensemble_rate=rc.chunk_ensemble_rate,
                   reward_source=tc.reward_source, reward_when=tc.reward_when,
                   reward_timeout_s=tc.reward_timeout_s, max_episodes=max_episodes, wait_for_reset=wait_for_reset,
                   follow_bindings=follow_bindings)

    @property
    def tick_period(self) -> float:
        """Wall-clock seconds between ticks (at realtime_factor 0: the idle period)."""
        return self.period / self.realtime_factor if self.realtime_factor > 0 else self.period

    @property
    def watchdog(self) -> float:
        """Wall-clock seconds an action may run after its step was due."""
        return self.watchdog_periods * self.tick_period


# -- events (in) ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class ActionArrived:
    """An Action message as received (raw values; validated here)."""
    now: float
    robot_id: str
    episode_id: int
    step: int
    values: Sequence[float]
    chunk_length: int = 1
    policy_version: int = 0
    source: int = SOURCE_POLICY


@dataclass(frozen=True)
class ResetRequested:
    now: float
    request: Hashable                   # answered by a Reply with the same request
    robot_id: str = ""
    seed: int = -1
    evaluation: bool = False


@dataclass(frozen=True)
class LabelRequested:
    now: float
    request: Hashable
    success: bool


@dataclass(frozen=True)
class RewardVerdict:
    """A learned reward's verdict on the observation of (episode_id, step)."""
    now: float
    robot_id: str
    episode_id: int
    step: int
    success: bool
    source: int = REWARD_CLASSIFIER


@dataclass(frozen=True)
class EstopChanged:
    now: float
    engaged: bool
    by: str = ""


@dataclass(frozen=True)
class BindingLost:
    """The scheduler no longer binds the robot to a job (follow_bindings): the running episode is cut."""
    now: float
    why: str = ""


@dataclass(frozen=True)
class Bound:
    """The scheduler binds the robot to a job (follow_bindings): a fresh episode starts after a reset."""
    now: float
    job: str = ""


@dataclass(frozen=True)
class StepDone:
    """Outcome of a ``Step``: the observation after it and the task's rule verdict."""
    now: float
    obs: Any
    reward: float
    success: bool
    terminated: bool
    truncated: bool
    commanded: Sequence[float]          # the action as given (validated, in [-1, 1])


@dataclass(frozen=True)
class HoldDone:
    now: float
    obs: Any = None                     # None when the hold asked for no observation


@dataclass(frozen=True)
class ResetDone:
    now: float
    episode_id: int                     # chosen by the shell (unique across restarts)
    obs: Any


@dataclass(frozen=True)
class ResetAborted:
    """The reset motion stopped half-way (e-stop or shutdown); it is redone later."""
    now: float


@dataclass(frozen=True)
class RecoverDone:
    now: float


@dataclass(frozen=True)
class BackendFault:
    """A step, hold, reset or recovery raised BackendError."""
    now: float
    error: str


# -- effects (out) --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """Run one action (``values`` None: the hold action) and observe step ``step`` of ``episode_id``."""
    values: np.ndarray | None
    episode_id: int
    step: int                           # the step the observation after this action carries
    evaluation: bool
    observe_at: float                   # a real-time robot reads its state at this time (monotonic)


@dataclass(frozen=True)
class Hold:
    """Hold the target one period; ``observe``: publish the observation of ``step`` after it."""
    observe: bool
    episode_id: int
    step: int
    evaluation: bool
    observe_at: float | None            # None: no settling (an idle hold)


@dataclass(frozen=True)
class Reset:
    seed: int
    evaluation: bool


@dataclass(frozen=True)
class Recover:
    pass


@dataclass(frozen=True)
class TransitionRecord:
    episode_id: int
    step: int
    obs: Any
    next_obs: Any
    action: np.ndarray
    action_source: int
    intervened: bool
    policy_version: int
    reward: float
    success: bool
    terminated: bool
    truncated: bool
    reward_source: int


@dataclass(frozen=True)
class PublishTransition:
    record: TransitionRecord


@dataclass(frozen=True)
class EpisodeSummary:
    episode_id: int
    index: int
    steps: int
    ret: float
    success: bool
    evaluation: bool
    duration_s: float
    interventions: int
    held: int
    policy_version: int
    cut: bool = False                   # ended by a lost binding (its last step truncated), not an outcome


@dataclass(frozen=True)
class FinishEpisode:
    summary: EpisodeSummary


@dataclass(frozen=True)
class Reply:
    """The answer to a ``ResetRequested`` or ``LabelRequested``."""
    request: Hashable
    ok: bool
    message: str
    episode_id: int = 0


@dataclass(frozen=True)
class Log:
    level: str                          # "info", "warning" or "error"
    message: str


@dataclass(frozen=True)
class Heartbeat:
    """Publish the status now (it changed in a way watchers must see at once)."""


@dataclass(frozen=True)
class Shutdown:
    """max_episodes reached: the node stops."""


@dataclass(frozen=True)
class Status:
    """What the heartbeat reports."""
    state: int
    message: str
    episode_id: int
    step: int
    episodes_done: int
    steps_done: int
    held_steps: int
    rejected: int
    policy_version: int
    tick_times: tuple[float, ...]
    stopped_by_fault: str = ""


def achieved_hz(tick_times: Sequence[float], now: float, nominal_gap: float | None) -> float:
    """Control ticks per second over recent ticks, not counting pauses (resets, holds while idle)."""
    if len(tick_times) < 2 or now - tick_times[-1] > 2.0:
        return 0.0
    gaps = np.diff(np.asarray(tick_times, dtype=np.float64))
    nominal = nominal_gap if nominal_gap else float(np.median(gaps))
    steady = gaps[gaps < 2.5 * nominal]
    return float(1.0 / steady.mean()) if steady.size else 0.0


# -- internal state -------------------------------------------------------------------------------------
@dataclass
class _Tally:
    episode_id: int
    index: int
    started: float
    evaluation: bool = False
    ret: float = 0.0
    steps: int = 0
    held: int = 0
    interventions: int = 0
    policy_version: int = 0
    success: bool = False
    labelled: bool = False
    rule_success: bool = False   # the rule's verdict, logged when a classifier decides the reward
    recoveries: int = 0
    finished: bool = False
    cut: bool = False


@dataclass
class _Label:
    request: Hashable | None     # None: a classifier's success verdict (nobody waits for an answer)
    success: bool
    episode_id: int
    source: int = REWARD_HUMAN


@dataclass
class _ResetDue:
    seed: int
    evaluation: bool
    request: Hashable | None = None


@dataclass
class _Final:
    """task.reward_when end: the last transition, held back until the classifier judges its next_obs."""
    record: TransitionRecord
    deadline: float
    verdict: bool | None = None


@dataclass
class _Pending:
    """The step being executed."""
    chunk: PendingChunk | None
    label: _Label | None
    cut: bool = False            # the last step of an episode whose binding was lost


def _what(success: bool) -> str:
    return "success" if success else "failure"


class EpisodeController:
    """Episodes of one robot: arbitration, watchdog, chunks, resets, labels, rewards, e-stop, recovery."""

    def __init__(self, cfg: EpisodeConfig) -> None:
        self.cfg = cfg
        self.classifier = cfg.reward_source == "classifier"
        self.judge_end = self.classifier and cfg.reward_when == "end"
        self._queue = ChunkQueue(cfg.tick_period, cfg.watchdog, cfg.chunk_ensemble, cfg.chunk_ensemble_rate)
        # When each recent (episode, step) was last observed: a chunk's freshness counts from there.
        self._observed: collections.OrderedDict[tuple[int, int], float] = collections.OrderedDict()
        self._ticks: collections.deque[float] = collections.deque(maxlen=50)
        self._throttle: dict[str, float] = {}
        self.state = STATE_IDLE
        self.status_message = ""
        self.stopped_by_fault = ""      # non-empty: recoveries exhausted, the robot is stopped
        self.estop = False
        self.done = False               # max_episodes reached
        self.episode_id = 0
        self.step_index = 0
        self.episodes_done = self.successes = self.steps_done = self.held_steps = 0
        self.rejected = 0
        self.refused = 0                # actions refused during an e-stop or after a fatal fault
        self.human_steps = 0
        self.recoveries = 0             # in the current episode
        self.recoveries_total = 0
        self.late_verdicts = 0          # classifier verdicts that missed task.reward_timeout_s
        self.last_policy_version = 0
        self._human_until = -math.inf   # policy and scripted actions are dropped until then
        self._last_source: int | None = None
        self._last_obs: Any = None
        self._evaluation = False
        self._tally: _Tally | None = None
        self._awaiting_reset = False
        self._reset_due: _ResetDue | None = _ResetDue(-1, False)   # the first tick resets
        self._reset_req: ResetRequested | None = None
        self._label: _Label | None = None
        self._final: _Final | None = None
        self._last_verdict: RewardVerdict | None = None
        self._pending: _Pending | None = None
        self._busy: str | None = None   # the effect whose outcome is awaited: step, hold, idle, reset, recover
        self._fault = ""
        self._tick_at = -math.inf       # when the current tick was due
        self._next_tick = -math.inf     # when the next one is due
        self.wake_at: float | None = -math.inf
        self.bound = not cfg.follow_bindings
        self.job = ""
        self._unbound_why = "waiting for the scheduler to bind it"
        self._cut: int | None = None    # episode whose binding was lost: its next step is its last
        self._handlers = {
            Tick: self._on_tick, ActionArrived: self._on_action, ResetRequested: self._on_reset_request,
            LabelRequested: self._on_label, RewardVerdict: self._on_verdict, EstopChanged: self._on_estop,
            StepDone: self._on_step_done, HoldDone: self._on_hold_done, ResetDone: self._on_reset_done,
            ResetAborted: self._on_reset_aborted, RecoverDone: self._on_recover_done,
            BackendFault: self._on_fault, BindingLost: self._on_binding_lost, Bound: self._on_bound,
        }

    # -- the one entry point ------------------------------------------------------------------------------
    def handle(self, event: Any) -> list[Any]:
        """Apply one event; returns the effects to carry out, in order."""
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"EpisodeController.handle: unknown event {event!r}")
        out: list[Any] = []
        handler(event, out)
        self._update_wake(event.now)
        return out

    def status(self) -> Status:
        state, message = self.state, self.status_message
        if self.stopped_by_fault:
            state, message = STATE_ERROR, self.stopped_by_fault
        elif self.estop:
            state, message = STATE_ERROR, ESTOP_MESSAGE
        elif not self.bound:
            state = self.state if self._cut is not None or self._busy == "reset" else STATE_IDLE
            message = f"no binding: {self._unbound_why}"
        return Status(state, message, self.episode_id, self.step_index, self.episodes_done, self.steps_done,
                      self.held_steps, self.rejected, self.last_policy_version, tuple(self._ticks),
                      self.stopped_by_fault)

    def summary(self) -> str:
        n, s = self.episodes_done, self.steps_done
        return (f"done: {n} episodes, {self.successes} successes ({100.0 * self.successes / max(n, 1):.0f}%), "
                f"{s} steps, {self.held_steps} held, {self.rejected} rejected actions, "
                f"intervention {self.human_steps}/{s} steps ({100.0 * self.human_steps / max(s, 1):.0f}%), "
                f"{self.recoveries_total} backend recoveries")

    # -- timing ---------------------------------------------------------------------------------------------
    def _running(self) -> bool:
        """An episode is under way and waits for actions."""
        return (self._tally is not None and self._reset_due is None and not self._awaiting_reset
                and self._final is None and not self.estop and self.bound and self._cut is None)

    def _update_wake(self, now: float) -> None:
        if self._busy is not None or self.stopped_by_fault or self.done:
            self.wake_at = None
            return
        t = self._next_tick
        if self._reset_req is not None:
            t = min(t, now)
        if self.cfg.realtime_factor == 0 and self._running() and (
                self._label is not None or self._queue.covers(self.episode_id, self.step_index, now)):
            t = min(t, now)   # as fast as possible: step as soon as the step's action (or a label) is there
        if self.cfg.realtime_factor == 0 and self._cut is not None and not self.estop:
            t = min(t, now)   # the cut step does not wait for an action
        self.wake_at = t

    def _after_step(self, now: float) -> None:
        """Schedule the tick after a step or hold that published an observation."""
        if self.cfg.realtime_factor > 0:
            self._next_tick = self._tick_at + self.cfg.tick_period
            if self._next_tick - now < -self.cfg.period:
                self._next_tick = now + self.cfg.tick_period   # fell behind: restart the clock, no catch-up burst
        else:
            self._next_tick = now + self.cfg.watchdog

    def _idle(self, now: float) -> None:
        self._next_tick = now + self.cfg.tick_period

    # -- ticks ----------------------------------------------------------------------------------------------
    def _on_tick(self, ev: Tick, out: list) -> None:
        if self._busy is not None:
            raise ValueError(f"Tick at {ev.now} while a {self._busy} is running: feed its outcome first")
        if self.done or self.stopped_by_fault or self.wake_at is None or ev.now < self.wake_at:
            return
        now = ev.now
        # The tick's nominal time: when it was due (a late tick keeps the schedule), or now if woken early.
        self._tick_at = min(self._next_tick, now) if math.isfinite(self._next_tick) else now
        if self.estop:
            return self._ask(out, "idle", Hold(False, self.episode_id, self.step_index, self._evaluation, None))
        if self._final is not None:
            if now < self._final.deadline:
                self._next_tick = self._final.deadline
                return
            return self._settle_final(now, out)
        if self._cut is not None:   # the binding was lost: a hold step ends the episode (truncated)
            self._ticks.append(now)
            self._pending = _Pending(None, None, cut=True)
            observe_at = self._tick_at + self.cfg.tick_period - self.cfg.inference_budget_s
            return self._ask(out, "step", Step(None, self.episode_id, self.step_index + 1, self._evaluation,
                                               observe_at))
        if not self.bound:          # hold without observing until the scheduler binds the robot again
            return self._ask(out, "idle", Hold(False, self.episode_id, self.step_index, self._evaluation, None))
        if self._reset_req is not None:
            req, self._reset_req = self._reset_req, None
            self._finish_episode(now, out, interrupted=True)
            self._drop_label(self.episode_id, out)
            self._reset_due = _ResetDue(req.seed, req.evaluation, req.request)
        if self._reset_due is not None:
            self.state = STATE_RESETTING
            return self._ask(out, "reset", Reset(self._reset_due.seed, self._reset_due.evaluation))
        if self._awaiting_reset:
            return self._ask(out, "idle", Hold(False, self.episode_id, self.step_index, self._evaluation, None))
        label, self._label = self._label, None
        chunk = self._queue.take(self.episode_id, self.step_index, now)
        if chunk is not None and not (chunk.source == SOURCE_HUMAN or now >= self._human_until):
            chunk = None
        self._ticks.append(now)
        observe_at = self._tick_at + self.cfg.tick_period - self.cfg.inference_budget_s
        if chunk is None and label is None:
            return self._ask(out, "hold", Hold(True, self.episode_id, self.step_index, self._evaluation, observe_at))
        self._pending = _Pending(chunk, label)
        values = None if chunk is None else chunk.values[0]
        self._ask(out, "step", Step(values, self.episode_id, self.step_index + 1, self._evaluation, observe_at))

    def _ask(self, out: list, busy: str, effect: Any) -> None:
        self._busy = busy
        out.append(effect)

    def _expect(self, ev: Any, *busy: str) -> None:
        if self._busy not in busy:
            raise ValueError(f"{type(ev).__name__} while {'a ' + self._busy if self._busy else 'nothing'} "
                             f"was running (expected the outcome of: {', '.join(busy)})")
        self._busy = None

    # -- outcomes of the backend ----------------------------------------------------------------------------
    def _on_hold_done(self, ev: HoldDone, out: list) -> None:
        self._expect(ev, "hold", "idle")
        if ev.obs is None:
            return self._idle(ev.now)
        self.held_steps += 1
        if self._tally is not None:
            self._tally.held += 1
        self._observe(ev.obs, ev.now)
        self._after_step(ev.now)

    def _on_step_done(self, ev: StepDone, out: list) -> None:
        self._expect(ev, "step")
        now, pending, self._pending = ev.now, self._pending, None
        chunk, label = pending.chunk, pending.label
        tally = self._tally
        step = self.step_index
        self.step_index += 1
        self.steps_done += 1
        source = chunk.source if chunk is not None else SOURCE_HOLD
        version = chunk.policy_version if chunk is not None else 0
        if source == SOURCE_POLICY:
            self.last_policy_version = version
        human = source == SOURCE_HUMAN
        self._log_handover(source, tally, out)
        reward, success = float(ev.reward), bool(ev.success)
        terminated, truncated = bool(ev.terminated), bool(ev.truncated)
        reward_source = REWARD_RULE
        if self.classifier:   # the rule's verdict is only logged (per episode); the classifier's labels decide
            tally.rule_success = tally.rule_success or success
            reward, success, reward_source = 0.0, False, REWARD_CLASSIFIER
        if label is not None:  # a human's (or the classifier's) word on success wins over the rule
            reward += float(label.success) - float(success)
            success, terminated, truncated = label.success, label.success, not label.success
            reward_source = label.source
        if pending.cut and not terminated:   # the binding was lost: this step is the episode's last
            truncated = tally.cut = True
        record = TransitionRecord(self.episode_id, step, self._last_obs, ev.obs,
                                  np.asarray(ev.commanded, dtype=np.float64), source, human, version, reward,
                                  success, terminated, truncated, reward_source)
        self._observe(ev.obs, now)
        final = self.judge_end and truncated and label is None and not pending.cut
        if not final:
            out.append(PublishTransition(record))
        tally.ret += reward
        tally.steps += 1
        tally.interventions += int(human)
        self.human_steps += int(human)
        tally.policy_version = max(tally.policy_version, version)
        tally.success = tally.success or success
        if label is not None:
            tally.success, tally.labelled = label.success, label.source == REWARD_HUMAN
            if label.request is not None:
                out.append(Reply(label.request, True, f"{self.cfg.robot_id}: episode {self.episode_id} ended at "
                                                      f"step {step} as a {_what(label.success)}", self.episode_id))
        if final:
            self._final = _Final(record, now + self.cfg.reward_timeout_s)
            self._next_tick = self._final.deadline
            v = self._last_verdict
            if v is not None and (v.episode_id, v.step) == (record.episode_id, record.step + 1):
                self._final.verdict = v.success
                self._settle_final(now, out)
        elif terminated or truncated:
            self._end_episode(now, out)
        else:
            self._after_step(now)

    def _on_reset_done(self, ev: ResetDone, out: list) -> None:
        self._expect(ev, "reset")
        due, self._reset_due = self._reset_due, None
        index = self._tally.index + 1 if self._tally is not None else 0
        self.episode_id, self.step_index = int(ev.episode_id), 0
        self._queue.clear()
        self._tally = _Tally(self.episode_id, index, ev.now, evaluation=due.evaluation)
        self._evaluation = due.evaluation
        self._awaiting_reset = False
        self._last_source = None
        self.state = STATE_RUNNING
        self._observe(ev.obs, ev.now)
        if due.request is not None:
            out.append(Reply(due.request, True, "ok", self.episode_id))
        self._tick_at = ev.now
        self._after_step(ev.now)

    def _on_reset_aborted(self, ev: ResetAborted, out: list) -> None:
        self._expect(ev, "reset")
        self.state = STATE_RUNNING
        due = self._reset_due
        if due.request is not None:   # the caller learns it; the reset itself is redone after the e-stop
            out.append(Reply(due.request, False, "reset aborted by the e-stop"))
            due.request = None
        self._idle(ev.now)

    def _observe(self, obs: Any, now: float) -> None:
        self._last_obs = obs
        key = (self.episode_id, self.step_index)
        self._observed[key] = now
        self._observed.move_to_end(key)
        while len(self._observed) > 256:
            self._observed.popitem(last=False)

    # -- faults and recovery --------------------------------------------------------------------------------
    def _on_fault(self, ev: BackendFault, out: list) -> None:
        if self.stopped_by_fault or self.done:
            return
        was, self._busy = self._busy, None
        if was == "step":   # the label was not applied: it applies to the step after the recovery
            label, self._pending = self._pending.label, None
            if label is not None and self._label is None:
                self._label = label
        self._queue.clear()   # the target is re-anchored: queued plans no longer apply
        if self.recoveries >= self.cfg.max_recoveries:
            return self._stop_after_fault(ev.error, ev.now, out)
        self.recoveries += 1
        self.recoveries_total += 1
        if self._tally is not None:
            self._tally.recoveries += 1
        self._fault = ev.error
        out.append(Log("warning", f"backend fault at step {self.step_index}: {ev.error}; recovering "
                                  f"({self.recoveries}/{self.cfg.max_recoveries} in this episode)"))
        self._ask(out, "recover", Recover())

    def _on_recover_done(self, ev: RecoverDone, out: list) -> None:
        self._expect(ev, "recover")
        self.status_message = f"recovered from backend fault: {self._fault}"
        out.append(Log("info", f"recovered from the backend fault; the episode continues at step {self.step_index}"))
        out.append(Heartbeat())
        self._idle(ev.now)

    def _stop_after_fault(self, error: str, now: float, out: list) -> None:
        n = self.cfg.max_recoveries
        self.stopped_by_fault = f"backend fault: {error} (stopped after {n} recover{'y' if n == 1 else 'ies'} " \
                                f"in this episode)"
        self.state = STATE_ERROR
        self.status_message = self.stopped_by_fault
        out.append(Log("error", f"robot stopped: {self.stopped_by_fault}; it holds and refuses actions and resets "
                                f"until the robot node is restarted"))
        self._drop_requests(out, self.stopped_by_fault)
        self._finish_episode(now, out, interrupted=True)
        out.append(Heartbeat())

    def _drop_requests(self, out: list, why: str) -> None:
        """Answer every waiting reset and label request with ``why``."""
        if self._reset_req is not None:
            out.append(Reply(self._reset_req.request, False, why))
        if self._reset_due is not None and self._reset_due.request is not None:
            out.append(Reply(self._reset_due.request, False, why))
            self._reset_due.request = None
        if self._label is not None and self._label.request is not None:
            out.append(Reply(self._label.request, False, f"label {_what(self._label.success)} not applied: {why}"))
        self._reset_req = self._label = None

    # -- requests -------------------------------------------------------------------------------------------
    def _blocked_reason(self) -> str:
        """Why the robot refuses commands right now (empty: it does not)."""
        if self.stopped_by_fault:
            return f"robot stopped after a backend fault ({self.stopped_by_fault}); restart the robot node"
        if self.estop:
            return f"e-stop engaged (release with {ESTOP_RELEASE_SERVICE})"
        return ""

    def _on_action(self, ev: ActionArrived, out: list) -> None:
        now = ev.now
        if ev.robot_id != self.cfg.robot_id:
            return self._reject(f"action for unknown robot {ev.robot_id!r} on {self.cfg.robot_id}'s topic", now, out)
        n = max(int(ev.chunk_length), 1)
        try:
            if n == 1:
                values = check_action(np.asarray(ev.values, dtype=np.float64), self.cfg.action_dim)[None]
            else:
                values = check_chunk(ev.values, n, self.cfg.action_dim, ACTION_NAMES)
        except ActionError as exc:
            return self._reject(f"{exc} (episode {ev.episode_id} step {ev.step})", now, out)
        blocked = self._blocked_reason()
        if blocked:
            self.refused += 1
            if self._due("refused", now, 2.0):
                out.append(Log("warning", f"refused action: {blocked}"))
            return
        if ev.source == SOURCE_HUMAN:
            # Any valid human action (even one answering an older step) means a human is in control and
            # wins over every queued policy entry.
            self._human_until = now + self.cfg.intervention_hold_s
            self._queue.clear()
        elif now < self._human_until:
            return   # a human has control: policy and scripted actions are dropped
        if not self.bound or self._cut is not None:
            return   # no binding (or its episode is being cut): nothing runs until a fresh episode
        if ev.episode_id != self.episode_id or not ev.step <= self.step_index < ev.step + n:
            return   # answers an older observation (or its chunk ended already): late, not wrong
        observed = self._observed.get((ev.episode_id, ev.step), now)
        self._queue.add(PendingChunk(values, ev.episode_id, ev.step, ev.policy_version, ev.source, now,
                                     min(observed, now)))

    def _reject(self, why: str, now: float, out: list) -> None:
        self.rejected += 1
        if self._due("rejected", now, 1.0):
            out.append(Log("error", f"rejected action: {why}; holding pose"))

    def _due(self, key: str, now: float, every: float) -> bool:
        """Throttle: True at most once per ``every`` seconds for ``key``."""
        if now - self._throttle.get(key, -math.inf) < every:
            return False
        self._throttle[key] = now
        return True

    def _on_reset_request(self, ev: ResetRequested, out: list) -> None:
        if ev.robot_id and ev.robot_id != self.cfg.robot_id:
            out.append(Reply(ev.request, False, f"this is robot {self.cfg.robot_id!r}, not {ev.robot_id!r}"))
            return
        blocked = self._blocked_reason() or ("the robot node is shutting down" if self.done else "")
        if not blocked and not self.bound:
            blocked = f"the robot has no binding ({self._unbound_why}); it resets when the scheduler binds it"
        if blocked:
            out.append(Reply(ev.request, False, f"reset refused: {blocked}"))
            return
        if self._reset_req is not None:
            out.append(Reply(self._reset_req.request, False, "superseded by a newer reset request"))
        self._reset_req = ev

    def _on_label(self, ev: LabelRequested, out: list) -> None:
        what = _what(ev.success)
        blocked = self._blocked_reason()
        if not blocked and (not self.bound or self._cut is not None):
            blocked = "the robot lost its binding"
        if blocked or self._tally is None or self._awaiting_reset or self._reset_due is not None or self.done:
            out.append(Reply(ev.request, False, f"label {what} refused: {blocked or 'no episode is running'}"))
            return
        if self._final is not None:
            out.append(Reply(ev.request, False, f"label {what} not applied: episode {self.episode_id} already "
                                                f"ended (its reward verdict is awaited)"))
            return
        if self._label is not None and self._label.request is not None:
            out.append(Reply(self._label.request, False,
                             f"label {_what(self._label.success)} not applied: superseded by a newer label"))
        self._label = _Label(ev.request, bool(ev.success), self.episode_id)

    def _on_verdict(self, ev: RewardVerdict, out: list) -> None:
        """A learned reward's verdict; never waited for except for a held-back last step (reward_when end)."""
        if ev.robot_id != self.cfg.robot_id or not self.classifier:
            return
        if self.judge_end:
            self._last_verdict = ev   # the verdict may arrive before the last step is held back
            f = self._final
            if f is not None and (ev.episode_id, ev.step) == (f.record.episode_id, f.record.step + 1):
                f.verdict = bool(ev.success)
                self._settle_final(ev.now, out)
            return
        if (not ev.success or ev.episode_id != self.episode_id or self._label is not None
                or not self._running() or self._blocked_reason()):
            return
        self._label = _Label(None, True, ev.episode_id, ev.source)   # ends the episode like a success label

    def _on_estop(self, ev: EstopChanged, out: list) -> None:
        if ev.engaged:
            first = not self.estop
            self.estop = True
            self._queue.clear()
            self._human_until = -math.inf
            self._drop_requests(out, "e-stop engaged")
            if first:
                out.append(Log("error", f"E-STOP engaged by {ev.by}: holding pose; actions and resets refused"))
        else:
            was, self.estop = self.estop, False
            if was:
                then = "the interrupted reset is redone" if self._reset_due is not None else "the episode continues"
                out.append(Log("warning", f"e-stop released by {ev.by}: {then}"))
                self._next_tick = ev.now
        out.append(Heartbeat())

    # -- bindings (follow_bindings) ---------------------------------------------------------------------------
    def _on_binding_lost(self, ev: BindingLost, out: list) -> None:
        if not self.bound:
            return
        self.bound = False
        self._unbound_why = ev.why or "released by the scheduler"
        if self.done or self.stopped_by_fault:
            return
        self._queue.clear()
        self._drop_requests(out, "the robot lost its binding")
        t = self._tally
        running = (t is not None and not t.finished and (t.steps > 0 or self._busy == "step")
                   and self._reset_due is None and not self._awaiting_reset and self._final is None
                   and self._busy != "reset")
        if running:
            self._cut = self.episode_id
            self._next_tick = min(self._next_tick, ev.now + self.cfg.tick_period)
            then = f"episode {t.index} is cut: its next step is its last (truncated)"
        else:
            then = "no episode to cut"
        out.append(Log("warning", f"binding lost ({self._unbound_why}): {then}; holding until bound again"))
        out.append(Heartbeat())

    def _on_bound(self, ev: Bound, out: list) -> None:
        self.job = ev.job
        if self.bound:
            return
        self.bound = True
        if self.done or self.stopped_by_fault:
            return
        if self._cut is None and self._busy != "reset":
            self._reset_due = self._reset_due or _ResetDue(-1, False)
            self._awaiting_reset = False
        first = "its cut episode ends first, then " if self._cut is not None else ""
        out.append(Log("info", f"bound to job {ev.job or '?'}: {first}a fresh episode starts after a reset"))
        self._next_tick = ev.now
        out.append(Heartbeat())

    # -- episode ends ---------------------------------------------------------------------------------------
    def _settle_final(self, now: float, out: list) -> None:
        """Publish the held-back last transition with the classifier's verdict (none in time: a failure)."""
        f, self._final = self._final, None
        rec = f.record
        if f.verdict is None:
            self.late_verdicts += 1
            out.append(Log("warning", f"no reward verdict on episode {rec.episode_id} step {rec.step + 1} within "
                                      f"task.reward_timeout_s {self.cfg.reward_timeout_s:g} s (is the reward node "
                                      f"running?): counted a failure ({self.late_verdicts} so far)"))
        success = bool(f.verdict)
        rec = dataclasses.replace(rec, reward=rec.reward + float(success), success=success, terminated=success,
                                  truncated=not success)
        out.append(PublishTransition(rec))
        self._tally.ret += float(success)
        self._tally.success = success
        self._end_episode(now, out)

    def _end_episode(self, now: float, out: list) -> None:
        self._finish_episode(now, out, interrupted=False)
        self._drop_label(self.episode_id, out)
        if self.cfg.max_episodes and self.episodes_done >= self.cfg.max_episodes:
            out.append(Log("info", self.summary()))
            self.done = True
            self._drop_requests(out, "the robot node is shutting down")
            out.append(Shutdown())
            return
        if not self.cfg.wait_for_reset:
            self._reset_due = _ResetDue(-1, False)
        else:   # sync training: hold until somebody calls the reset service
            self._awaiting_reset = True
            self.state = STATE_IDLE
        self._next_tick = now

    def _drop_label(self, ended: int, out: list) -> None:
        """A label still pending when its episode ends is not carried into the next one."""
        if self._label is not None and self._label.request is not None:
            out.append(Reply(self._label.request, False,
                             f"label {_what(self._label.success)} not applied: episode {ended} already ended"))
        self._label = None

    def _finish_episode(self, now: float, out: list, interrupted: bool) -> None:
        t = self._tally
        if t is None or t.steps == 0 or t.finished:
            return
        t.finished = True
        self._cut = None
        self.recoveries = 0
        self.episodes_done += 1
        self.successes += int(t.success)
        duration = now - t.started
        out.append(FinishEpisode(EpisodeSummary(t.episode_id, t.index, t.steps, t.ret, t.success, t.evaluation,
                                                duration, t.interventions, t.held, t.policy_version, t.cut)))
        how = " (labelled by a human)" if t.labelled else ""
        if self.classifier:
            how += f" (reward classifier; the rule says {'success' if t.rule_success else 'failure'})"
        extra = f", {t.recoveries} backend recoveries" if t.recoveries else ""
        out.append(Log("info", f"episode {t.index}: {'SUCCESS' if t.success else 'failure'}{how} in {t.steps} "
                               f"steps, return {t.ret:.2f}, {duration:.1f} s, intervention {t.interventions}/"
                               f"{t.steps} steps ({100.0 * t.interventions / t.steps:.0f}%){extra}"
                               f"{' (interrupted)' if interrupted else ''}"
                               f"{' (cut: the binding was lost)' if t.cut else ''}"))
        if not self.stopped_by_fault and self.status_message.startswith("recovered"):
            self.status_message = ""

    def _log_handover(self, source: int, tally: _Tally, out: list) -> None:
        human = source == SOURCE_HUMAN
        was = self._last_source
        if was is not None and human != (was == SOURCE_HUMAN) and source != SOURCE_HOLD:
            who = "a human took over" if human else "control back to the policy"
            out.append(Log("info", f"{who} at step {self.step_index - 1} of episode {tally.index}"))
        if source != SOURCE_HOLD:
            self._last_source = source
