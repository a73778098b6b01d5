"""The robot node's episode controller on a fake clock: events in, effects out, no ROS, no threads.

``Rig`` plays the node's shell: it feeds ticks when the controller asks for them, carries out Step, Hold,
Reset and Recover like a tiny scripted cell (observations are tuples), and feeds the outcome straight back.
"""
import math

import numpy as np
import pytest

from user_hal.core.episode import (
    REWARD_CLASSIFIER, REWARD_HUMAN, REWARD_RULE, SOURCE_HOLD, SOURCE_HUMAN, SOURCE_POLICY, STATE_ERROR, STATE_IDLE,
    STATE_RESETTING, STATE_RUNNING, ActionArrived, BackendFault, BindingLost, Bound, EpisodeConfig, EpisodeController,
    EstopChanged,
    FinishEpisode, Heartbeat, Hold, HoldDone, LabelRequested, Log, PublishTransition, Recover, RecoverDone, Reply,
    Reset, ResetAborted, ResetDone, ResetRequested, RewardVerdict, Shutdown, Step, StepDone, Tick, achieved_hz)

HOLD_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0])


def act(x=0.0, y=0.0):
    return [x, y, 0, 0, 0, 0, -1.0]


class Rig:
    """A fake clock, a scripted cell and the shell's feeding rule (an outcome goes back before anything else)."""

    def __init__(self, max_steps=100, success_at=(), **cfg):
        cfg.setdefault("robot_id", "r0")
        cfg.setdefault("period", 0.1)
        self.ctrl = EpisodeController(EpisodeConfig(**cfg))
        self.t = 100.0
        self.max_steps = max_steps
        self.success_at = set(success_at)  # steps of an episode (1-based) after which the rule sees success
        self.fail: list[str] = []          # the next backend calls of these kinds raise: step, hold, reset, recover
        self.abort_reset = False
        self.effects: list = []
        self.obs: list[tuple[float, int, int]] = []
        self.episode = 1000
        self.episode_steps = 0
        self.policy = None                 # called as policy(episode_id, step) on every new observation

    # -- driving --------------------------------------------------------------------------------------------
    def feed(self, ev):
        pending, n_obs = [ev], len(self.obs)
        while pending:
            for eff in self.ctrl.handle(pending.pop(0)):
                self.effects.append(eff)
                out = self._backend(eff)
                if out is not None:
                    pending.append(out)
            if self.policy is not None and len(self.obs) > n_obs and not pending:
                n_obs = len(self.obs)   # the policy answers the newest observation once its outcome is in
                _, e, s = self.obs[-1]
                pending.append(self.policy(e, s))

    def run(self, seconds):
        """Let the clock run; tick whenever the controller asks to be woken."""
        end = self.t + seconds
        for _ in range(100_000):
            w = self.ctrl.wake_at
            if w is None or w > end + 1e-6:   # (ticks add up periods: allow rounding)
                break
            self.t = max(self.t, w)
            self.feed(Tick(self.t))
        else:
            pytest.fail("the controller kept asking for ticks without time passing")
        self.t = end

    def send(self, values=None, step=None, episode=None, source=SOURCE_POLICY, chunk=1, version=1, robot="r0"):
        values = np.asarray(act() if values is None else values, dtype=np.float64).ravel()
        self.feed(ActionArrived(self.t, robot, self.ctrl.episode_id if episode is None else episode,
                                self.ctrl.step_index if step is None else step, values, chunk, version, source))

    def answer_every_observation(self, values=None, source=SOURCE_POLICY, version=1):
        self.policy = lambda e, s: ActionArrived(self.t, "r0", e, s, np.asarray(values or act(0.5)), 1, version,
                                                 source)
        if self.obs:   # the current observation too
            _, e, s = self.obs[-1]
            self.feed(self.policy(e, s))

    # -- the scripted cell --------------------------------------------------------------------------------
    def _backend(self, e):
        kind = type(e).__name__.lower()
        if self.fail and self.fail[0] == kind:
            self.fail.pop(0)
            return BackendFault(self.t, f"injected {kind} fault")
        if isinstance(e, Step):
            self.episode_steps += 1
            success = self.episode_steps in self.success_at
            terminated = success and self.ctrl.cfg.reward_source == "rule"
            truncated = not terminated and self.episode_steps >= self.max_steps
            values = HOLD_ACTION if e.values is None else e.values
            return StepDone(self.t, self._observe(e.episode_id, e.step), float(success), success, terminated,
                            truncated, values)
        if isinstance(e, Hold):
            return HoldDone(self.t, self._observe(e.episode_id, e.step) if e.observe else None)
        if isinstance(e, Reset):
            if self.abort_reset:
                return ResetAborted(self.t)
            self.episode += 1
            self.episode_steps = 0
            return ResetDone(self.t, self.episode, self._observe(self.episode, 0))
        if isinstance(e, Recover):
            return RecoverDone(self.t)
        return None

    def _observe(self, episode_id, step):
        self.obs.append((self.t, episode_id, step))
        return ("obs", episode_id, step, len(self.obs))

    # -- what came out ------------------------------------------------------------------------------------
    def of(self, kind, since=0):
        return [e for e in self.effects[since:] if isinstance(e, kind)]

    @property
    def transitions(self):
        return [e.record for e in self.of(PublishTransition)]

    @property
    def episodes(self):
        return [e.summary for e in self.of(FinishEpisode)]

    def logs(self, level=None, since=0):
        return [e.message for e in self.of(Log, since) if level is None or e.level == level]

    def replies(self, request):
        return [e for e in self.of(Reply) if e.request == request]

    def started(self):
        """Run until the first episode has started."""
        self.run(0.0)
        assert self.ctrl.status().state == STATE_RUNNING and self.obs[-1][2] == 0
        return self


# -- configuration and plumbing -------------------------------------------------------------------------
def test_constants_agree_with_the_messages():
    msgs = pytest.importorskip("user_msgs.msg", reason="user_msgs is not built (bash scripts/setup.sh)")
    a, t, s = msgs.Action, msgs.Transition, msgs.RobotStatus
    assert (SOURCE_POLICY, SOURCE_HUMAN, SOURCE_HOLD) == (a.SOURCE_POLICY, a.SOURCE_HUMAN, a.SOURCE_HOLD)
    assert (REWARD_RULE, REWARD_HUMAN, REWARD_CLASSIFIER) == (t.REWARD_RULE, t.REWARD_HUMAN, t.REWARD_CLASSIFIER)
    assert (STATE_IDLE, STATE_RUNNING, STATE_ERROR, STATE_RESETTING) == (
        s.STATE_IDLE, s.STATE_RUNNING, s.STATE_ERROR, s.STATE_RESETTING)


@pytest.mark.parametrize("key, value, words", [
    ("period", 0.0, "EpisodeConfig.period: must be > 0"),
    ("chunk_ensemble", "avg", "EpisodeConfig.chunk_ensemble: must be one of"),
    ("reward_when", "later", "EpisodeConfig.reward_when: must be 'step' or 'end', got 'later'"),
])
def test_a_bad_config_names_the_field(key, value, words):
    with pytest.raises(ValueError, match=words):
        EpisodeConfig(**{"robot_id": "r0", "period": 0.1, key: value})


def test_an_outcome_nobody_asked_for_is_a_clear_error():
    r = Rig().started()
    with pytest.raises(ValueError, match="StepDone while nothing was running"):
        r.ctrl.handle(StepDone(r.t, None, 0.0, False, False, False, HOLD_ACTION))
    with pytest.raises(TypeError, match="unknown event"):
        r.ctrl.handle("tick")
    r.ctrl.handle(Tick(r.t + 0.1))      # asks for a hold ...
    with pytest.raises(ValueError, match="Tick at .* while a hold is running"):
        r.ctrl.handle(Tick(r.t + 0.2))  # ... whose outcome must come first


def test_a_tick_before_the_wake_time_does_nothing():
    r = Rig().started()
    assert r.ctrl.handle(Tick(r.t + 0.05)) == [] and r.ctrl.wake_at == pytest.approx(r.t + 0.1)


# -- steps, watchdog, scheduling ------------------------------------------------------------------------
def test_the_first_tick_resets_and_an_answer_runs_at_the_next_tick():
    r = Rig()
    assert r.ctrl.status().state == STATE_IDLE
    r.run(0.0)
    assert r.of(Reset) == [Reset(-1, False)] and r.obs == [(100.0, 1001, 0)]
    r.send(act(0.3), version=4)
    r.run(0.1)
    (step,) = r.of(Step)
    assert np.allclose(step.values, act(0.3)) and (step.episode_id, step.step) == (1001, 1)
    (t,) = r.transitions
    assert (t.episode_id, t.step, t.action_source, t.policy_version, t.intervened) == (1001, 0, SOURCE_POLICY, 4, False)
    assert t.obs[1:3] == (1001, 0) and t.next_obs[1:3] == (1001, 1) and np.allclose(t.action, act(0.3))
    assert (t.reward, t.success, t.terminated, t.truncated, t.reward_source) == (0.0, False, False, False, REWARD_RULE)
    st = r.ctrl.status()
    assert (st.step, st.steps_done, st.policy_version) == (1, 1, 4)


def test_the_watchdog_holds_pose_and_keeps_the_step_when_actions_stop():
    r = Rig().started()
    r.answer_every_observation()
    r.run(0.5)
    r.policy = None
    r.run(0.1)                                    # the last answer runs
    moving = r.ctrl.step_index
    assert moving == 6
    n = len(r.obs)
    r.run(1.0)
    holds = r.of(Hold)
    assert len(holds) == 10 and all(h.observe for h in holds), "one observed hold per period"
    assert {s for _, _, s in r.obs[n:]} == {moving}, "held observations keep the step index"
    assert r.ctrl.status().held_steps == 10 and len(r.transitions) == 6


def test_ticks_keep_the_period_and_do_not_burst_after_falling_behind():
    r = Rig().started()
    r.run(0.35)
    assert [round(t - 100.0, 3) for t, _, _ in r.obs] == [0.0, 0.1, 0.2, 0.3]
    r.t += 1.0                                    # the control thread was held up for a second
    r.feed(Tick(r.t))
    r.run(0.25)
    late = [round(t - 100.0, 3) for t, _, _ in r.obs[4:]]
    assert late == [1.35, 1.45, 1.55], f"one tick, then the period again (no burst of catch-up ticks): {late}"


def test_at_realtime_factor_0_the_robot_steps_when_the_answer_arrives_and_holds_after_the_watchdog():
    r = Rig(realtime_factor=0.0).started()
    assert r.ctrl.wake_at == pytest.approx(100.2), "waits a watchdog for the answer"
    r.t += 0.01
    r.send()
    assert r.ctrl.wake_at == r.t, "the answer wakes the loop at once"
    r.run(0.0)
    assert len(r.transitions) == 1 and r.obs[-1] == (100.01, 1001, 1)
    r.run(0.5)
    assert [round(t - 100.0, 3) for t, _, _ in r.obs[2:]] == [0.21, 0.41], "no answer: a hold every watchdog"


def test_the_robot_falls_behind_a_chunk_and_drops_its_stale_entries():
    r = Rig().started()
    r.send(np.array([act(0.1)] * 30), chunk=30)
    r.run(0.3)
    assert len(r.transitions) == 3
    r.t += 0.5                                    # ticks came late: the next entries are overdue
    r.run(1.0)
    assert len(r.transitions) == 3, "entries are not run later than a watchdog after their step was due"
    assert r.of(Hold), "the robot holds instead"


def test_a_late_answer_to_a_step_the_robot_holds_still_runs():
    r = Rig().started()
    r.run(0.55)                                   # holding at step 0, re-observing it every period
    r.send(np.array([act(0.3)] * 3), step=0, chunk=3)
    r.run(0.3)
    assert [t.step for t in r.transitions] == [0, 1, 2], "freshness counts from the newest observation of a step"


def test_an_answer_is_fresh_for_a_watchdog_after_the_observation_it_answers_not_after_its_arrival():
    r = Rig().started()                           # step 0 observed at 100.0; watchdog 0.2 s
    r.t += 0.05
    r.send()                                      # a slow answer ...
    r.feed(Tick(100.22))                          # ... and a late tick: 0.22 s after the observation
    assert not r.of(Step) and r.of(Hold)


# -- bad, late, duplicate and out-of-order actions --------------------------------------------------------
@pytest.mark.parametrize("kw, words", [
    ({"values": [0.0, 0.0, 1.0]}, "action has 3 values, expected 7"),
    ({"values": [1.0, 0, float("nan"), 0, 0, 0, 0]}, "NaN or inf in dz"),
    ({"values": [1.0, 0, 0, float("inf"), 0, 0, 0]}, "NaN or inf in droll"),
    ({"robot": "r9"}, "action for unknown robot 'r9' on r0's topic"),
    ({"values": np.array([act(0.5), act(0.5), [0.5, 0, 0, 0, math.inf, 0, -1]]), "chunk": 3},
     "chunk entry 2: action contains NaN or inf in dpitch"),
])
def test_a_bad_action_is_rejected_with_one_throttled_line_and_the_robot_holds(kw, words):
    r = Rig().started()
    for _ in range(30):                           # a bad answer to every observation for 3 s
        r.send(**kw)
        r.run(0.1)
    assert not r.of(Step) and r.ctrl.step_index == 0, "a rejected action must not run"
    lines = r.logs("error")
    assert lines and all(words in ln and "rejected action" in ln for ln in lines), lines
    assert 2 <= len(lines) <= 4, f"one line per second at most, got {len(lines)}"
    assert r.ctrl.status().rejected == 30


def test_late_and_future_answers_never_crowd_out_a_queued_chunk():
    r = Rig().started()
    r.send(np.array([act(0.2)] * 10), chunk=10)
    for i in range(70):                           # more than the queue holds
        r.send(act(0.9), step=5 + i)
        r.send(act(0.9), episode=999)
    r.run(0.3)
    assert [round(t.action[0], 1) for t in r.transitions] == [0.2] * 3


def test_late_future_and_duplicate_actions_are_dropped_without_complaint():
    r = Rig().started()
    r.send(act(0.1), episode=999)                 # an older episode
    r.send(act(0.2), step=3)                      # a step not observed yet
    r.run(0.1)
    assert not r.of(Step)
    r.send(act(0.3))
    r.send(act(0.4))                              # a second answer to the same step: the newest wins
    r.run(0.1)
    r.send(act(0.5), step=0)                      # answers step 0 once more, after it ran
    r.run(0.1)
    assert [t.action[0] for t in r.transitions] == [0.4], "each step runs once, with the newest answer"
    assert r.ctrl.status().rejected == 0 and not r.logs("error")


# -- action chunks ----------------------------------------------------------------------------------------
def test_a_chunk_runs_step_by_step_then_the_robot_holds():
    r = Rig().started()
    xs = [0.1, 0.2, 0.3, 0.4, 0.5]
    r.send(np.array([act(x) for x in xs]), chunk=5, version=9)
    r.run(0.9)
    assert [round(t.action[0], 3) for t in r.transitions] == xs
    assert all(t.policy_version == 9 and t.action_source == SOURCE_POLICY for t in r.transitions)
    assert r.ctrl.step_index == 5 and len(r.of(Hold)) == 4


@pytest.mark.parametrize("mode", ["none", "exp"])
def test_overlapping_chunks_newest_wins_or_are_ensembled(mode):
    rate = 0.5
    r = Rig(chunk_ensemble=mode, chunk_ensemble_rate=rate).started()
    r.send(np.array([act(0.2)] * 4), chunk=4, version=3)
    r.send(np.array([act(0.6)] * 6), chunk=6, version=4)
    r.run(0.6)
    mixed = (0.2 + math.exp(-rate) * 0.6) / (1 + math.exp(-rate))
    want = [mixed if mode == "exp" else 0.6] * 4 + [0.6, 0.6]
    assert [t.action[0] for t in r.transitions] == pytest.approx(want)
    assert [t.policy_version for t in r.transitions] == [4] * 6


# -- human intervention -----------------------------------------------------------------------------------
def test_a_human_takes_over_and_hands_back_after_the_hold():
    r = Rig(intervention_hold_s=0.5).started()
    r.answer_every_observation(act(0.4), version=7)
    r.run(0.3)                                    # steps 0-2: the policy
    r.send(act(-0.7), source=SOURCE_HUMAN)
    r.run(0.1)                                    # step 3: the human
    r.run(0.65)                                   # the policy's answers are dropped for 0.5 s: holds
    rows = [(t.step, t.action_source, t.intervened, round(t.action[0], 2)) for t in r.transitions]
    assert rows[:4] == [(0, 0, False, 0.4), (1, 0, False, 0.4), (2, 0, False, 0.4), (3, SOURCE_HUMAN, True, -0.7)]
    assert all(src == SOURCE_POLICY for _, src, _, _ in rows[4:]) and len(rows) >= 5, "the policy is back"
    back = next(t for t in r.transitions if t.step == 4)
    assert back.obs[1:3] == (r.episode, 4)
    assert r.logs("info")[:2] == ["a human took over at step 3 of episode 0", "control back to the policy at step 4 "
                                                                              "of episode 0"]
    assert r.ctrl.human_steps == 1


def test_a_human_action_clears_queued_chunks_and_policy_chunks_sent_during_the_hold_never_run():
    r = Rig(intervention_hold_s=0.5, watchdog_periods=40).started()   # entries stay fresh for 4 s
    r.send(np.array([act(0.4)] * 30), chunk=30)
    r.run(0.3)
    r.send(act(-0.7), source=SOURCE_HUMAN)
    r.run(0.2)
    r.send(np.array([act(0.3)] * 30), chunk=30, step=r.ctrl.step_index)   # during the human's hold: dropped
    r.run(1.5)                                    # longer than the hold: nothing may come back
    rows = [(t.step, t.action_source, round(t.action[0], 2)) for t in r.transitions]
    assert rows == [(0, 0, 0.4), (1, 0, 0.4), (2, 0, 0.4), (3, SOURCE_HUMAN, -0.7)], rows


def test_a_human_answering_an_older_step_still_takes_control():
    r = Rig(intervention_hold_s=0.5).started()
    r.send(act(0.1))
    r.run(0.1)                                      # step 0: the policy
    r.send(act(0.9), step=0, source=SOURCE_HUMAN)   # answers an observation that is gone: never runs, but ...
    r.send(act(0.1))                                # ... the policy's answer to step 1 is dropped
    r.run(0.1)
    assert [t.action_source for t in r.transitions] == [SOURCE_POLICY] and len(r.of(Hold)) == 1


# -- labels -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("success", [True, False])
def test_a_success_label_terminates_and_a_failure_label_truncates(success):
    r = Rig().started()
    r.answer_every_observation()
    r.run(0.3)
    r.feed(LabelRequested(r.t, "L", success))
    r.run(0.1)
    last = r.transitions[-1]
    assert (last.success, last.terminated, last.truncated) == (success, success, not success)
    assert last.reward == float(success) and last.reward_source == REWARD_HUMAN
    (reply,) = r.replies("L")
    what = "success" if success else "failure"
    assert reply.ok and reply.message == f"r0: episode 1001 ended at step {last.step} as a {what}"
    (ep,) = r.episodes
    assert ep.success == success and ep.steps == 4
    assert [ln for ln in r.logs("info") if ln.startswith("episode 0:")][0].startswith(
        f"episode 0: {'SUCCESS' if success else 'failure'} (labelled by a human) in 4 steps")
    assert r.of(Reset)[-1] == Reset(-1, False) and r.ctrl.episode_id == 1002, "the next episode starts"


def test_a_label_without_an_action_records_a_hold_step():
    r = Rig().started()
    r.feed(LabelRequested(r.t, "L", True))
    r.run(0.1)
    (step,) = r.of(Step)
    assert step.values is None, "the shell runs the hold action"
    (t,) = r.transitions
    assert (t.action_source, t.policy_version, t.terminated, t.success) == (SOURCE_HOLD, 0, True, True)


def test_labels_are_refused_without_a_running_episode_and_answered_when_it_ended_first():
    r = Rig()
    r.feed(LabelRequested(r.t, "early", True))
    assert r.replies("early")[0].message == "label success refused: no episode is running"
    r.run(0.0)
    r.feed(LabelRequested(r.t, "a", True))
    r.feed(LabelRequested(r.t, "b", False))     # a newer label replaces it
    assert r.replies("a")[0].message == "label success not applied: superseded by a newer label"
    r.feed(ResetRequested(r.t, "reset"))        # the reset ends the episode before the label applies
    r.run(0.0)
    assert r.replies("b")[0].message == "label failure not applied: episode 1001 already ended"
    assert r.ctrl.episode_id == 1002 and not r.episodes, "an episode without steps is not counted"
    r.send()
    r.run(0.1)
    assert not r.transitions[-1].truncated, "the label is not carried into the next episode"


# -- resets -----------------------------------------------------------------------------------------------
def test_a_reset_request_mid_episode_ends_it_and_starts_a_new_one():
    r = Rig().started()
    r.answer_every_observation()
    r.run(0.3)
    r.feed(ResetRequested(r.t, "R", "r0", seed=5, evaluation=True))
    assert r.ctrl.wake_at == r.t, "served at once"
    r.run(0.0)
    (ep,) = r.episodes
    assert ep.steps == 3 and any("(interrupted)" in ln for ln in r.logs("info"))
    assert r.of(Reset)[-1] == Reset(5, True)
    (reply,) = r.replies("R")
    assert reply.ok and reply.message == "ok" and reply.episode_id == r.ctrl.episode_id == 1002
    assert r.of(Step)[-1].evaluation is False
    r.run(0.1)
    assert r.of(Step)[-1].evaluation is True, "the new episode is an evaluation episode"
    r.feed(ResetRequested(r.t, "other", "r7"))
    assert r.replies("other")[0].message == "this is robot 'r0', not 'r7'"


def test_with_wait_for_reset_the_robot_idles_after_an_episode_until_asked():
    r = Rig(max_steps=3, wait_for_reset=True).started()
    r.answer_every_observation()
    r.run(0.5)
    assert len(r.episodes) == 1 and r.ctrl.status().state == STATE_IDLE
    n_obs, n_resets = len(r.obs), len(r.of(Reset))
    r.run(2.0)
    assert len(r.obs) == n_obs and len(r.of(Reset)) == n_resets, "idle: no episode, no observation"
    assert all(not h.observe for h in r.of(Hold)[-5:]), "it holds without observing"
    r.feed(LabelRequested(r.t, "L", True))
    assert r.replies("L")[0].message == "label success refused: no episode is running"
    r.feed(ResetRequested(r.t, "R"))
    r.run(0.0)
    assert r.replies("R")[0].ok and r.ctrl.status().state == STATE_RUNNING and r.ctrl.episode_id == 1002


def test_after_max_episodes_the_controller_shuts_down_with_a_summary():
    r = Rig(max_steps=2, max_episodes=2).started()
    r.answer_every_observation()
    r.run(1.0)
    assert len(r.episodes) == 2 and [e.index for e in r.episodes] == [0, 1]
    assert len({e.episode_id for e in r.episodes}) == 2
    assert r.of(Shutdown) and r.ctrl.wake_at is None
    assert r.logs("info")[-1].startswith("done: 2 episodes, 0 successes (0%), 4 steps")
    r.feed(ResetRequested(r.t, "R"))
    assert not r.replies("R")[0].ok


def test_episode_statistics():
    r = Rig(success_at={4}, intervention_hold_s=0.0).started()
    r.send(act(0.1), version=3)
    r.run(0.1)
    r.run(0.1)                                    # held
    r.send(act(0.2), source=SOURCE_HUMAN)
    r.run(0.1)
    r.send(act(0.1), version=5)
    r.run(0.1)
    r.send(act(0.1), version=4)
    r.run(0.1)                                    # the rule's success ends it
    (ep,) = r.episodes
    assert (ep.index, ep.steps, ep.held, ep.interventions, ep.policy_version) == (0, 4, 1, 1, 5)
    assert ep.success and ep.ret == 1.0 and ep.duration_s == pytest.approx(0.5) and not ep.evaluation
    assert r.transitions[-1].terminated and r.logs("info")[-1].startswith(
        "episode 0: SUCCESS in 4 steps, return 1.00, 0.5 s, intervention 1/4 steps (25%)")
    st = r.ctrl.status()
    assert (st.episodes_done, st.steps_done, st.held_steps) == (1, 4, 1)


# -- e-stop -----------------------------------------------------------------------------------------------
def test_the_estop_holds_refuses_and_the_episode_continues_after_the_release():
    r = Rig().started()
    r.answer_every_observation()
    r.run(0.3)
    r.feed(LabelRequested(r.t, "L", True))
    r.feed(ResetRequested(r.t, "R"))
    n = len(r.effects)
    r.feed(EstopChanged(r.t, True, "service /user/estop"))
    assert r.replies("L")[0].message == "label success not applied: e-stop engaged"
    assert r.replies("R")[0].message == "e-stop engaged"
    assert r.of(Heartbeat, n) and r.logs("error", n) == ["E-STOP engaged by service /user/estop: holding pose; "
                                                         "actions and resets refused"]
    st = r.ctrl.status()
    assert (st.state, st.message) == (STATE_ERROR, "e-stop")
    n_obs, step = len(r.obs), r.ctrl.step_index
    for _ in range(20):
        r.send(act(1.0), source=SOURCE_HUMAN)
        r.run(0.1)
    assert len(r.obs) == n_obs and r.ctrl.step_index == step, "nothing steps, nothing is observed"
    assert all(not h.observe and h.observe_at is None for h in r.of(Hold, n))
    assert r.ctrl.refused == 20 and 1 <= len([ln for ln in r.logs("warning") if "refused action: e-stop" in ln]) <= 2
    r.feed(ResetRequested(r.t, "R2"))
    r.feed(LabelRequested(r.t, "L2", False))
    assert r.replies("R2")[0].message.startswith("reset refused: e-stop engaged")
    assert r.replies("L2")[0].message.startswith("label failure refused: e-stop engaged")
    r.feed(EstopChanged(r.t, True, "topic"))    # engaged twice: logged once
    assert len([ln for ln in r.logs("error") if "E-STOP" in ln]) == 1
    r.feed(EstopChanged(r.t, False, "service /user/estop_release"))
    assert r.logs("warning")[-1] == "e-stop released by service /user/estop_release: the episode continues"
    assert r.ctrl.status().state == STATE_RUNNING and r.ctrl.status().message == ""
    assert r.ctrl.wake_at == r.t
    r.run(0.3)
    assert r.ctrl.step_index >= step + 2 and r.ctrl.episode_id == 1001, "the same episode goes on"


def test_an_estop_ends_a_human_hold():
    r = Rig(intervention_hold_s=5.0).started()
    r.send(source=SOURCE_HUMAN)
    r.run(0.1)
    r.feed(EstopChanged(r.t, True, "svc"))
    r.feed(EstopChanged(r.t, False, "svc"))
    r.send(act(0.6))                              # the policy's answer after the release
    r.run(0.1)
    assert [t.action_source for t in r.transitions] == [SOURCE_HUMAN, SOURCE_POLICY]


def test_an_estop_during_a_reset_aborts_it_and_the_reset_is_redone_after_the_release():
    r = Rig().started()
    r.feed(ResetRequested(r.t, "R"))
    r.abort_reset = True                        # the shell's pace saw the e-stop half-way
    r.run(0.0)
    assert r.replies("R")[0].message == "reset aborted by the e-stop" and not r.replies("R")[0].ok
    r.feed(EstopChanged(r.t, True, "svc"))
    r.abort_reset = False
    r.run(1.0)
    assert r.ctrl.episode_id == 1001 and len(r.of(Reset)) == 2
    r.feed(EstopChanged(r.t, False, "svc"))
    assert r.logs("warning")[-1] == "e-stop released by svc: the interrupted reset is redone"
    r.run(0.0)
    assert len(r.of(Reset)) == 3 and r.ctrl.episode_id == 1002


def test_an_estop_during_a_step_applies_after_the_step_is_recorded():
    r = Rig().started()
    r.send()
    (step,) = r.ctrl.handle(Tick(r.t + 0.1))
    assert isinstance(step, Step)
    r.ctrl.handle(EstopChanged(r.t + 0.12, True, "svc"))   # the e-stop lands while the arm settles
    out = r.ctrl.handle(StepDone(r.t + 0.17, ("obs", 1001, 1), 0.0, False, False, False, act()))
    assert [type(e) for e in out] == [PublishTransition], "the step in flight is still recorded"
    assert isinstance(r.ctrl.handle(Tick(r.ctrl.wake_at))[0], Hold)


# -- bounded recovery -------------------------------------------------------------------------------------
def test_a_backend_fault_is_recovered_and_the_episode_continues_at_the_same_step():
    r = Rig(max_steps=6).started()
    r.answer_every_observation()
    r.fail = ["step"]
    r.run(0.2)
    assert r.of(Recover) and r.logs("warning")[0] == ("backend fault at step 0: injected step fault; recovering "
                                                      "(1/3 in this episode)")
    assert r.logs("info")[0] == "recovered from the backend fault; the episode continues at step 0"
    assert r.ctrl.status().message == "recovered from backend fault: injected step fault"
    r.fail = ["step", "recover"]                # one more step fault; its recovery fails once
    r.run(2.0)
    ep = r.episodes[0]
    steps = [t.step for t in r.transitions if t.episode_id == ep.episode_id]
    assert steps == list(range(6)), "every step of the episode exactly once"
    (line,) = [ln for ln in r.logs("info") if ln.startswith("episode 0:")]
    assert line.endswith("in 6 steps, return 0.00, 1.0 s, intervention 0/6 steps (0%), 3 backend recoveries"), line
    assert r.ctrl.recoveries_total == 3 and r.ctrl.recoveries == 0, "the budget is per episode"
    assert r.ctrl.status().message == "", "the recovery note is cleared with the episode"


def test_a_label_interrupted_by_a_fault_applies_after_the_recovery():
    r = Rig().started()
    r.feed(LabelRequested(r.t, "L", True))
    r.fail = ["step"]
    r.run(0.3)
    assert r.replies("L")[0].ok and r.transitions[-1].terminated and r.transitions[-1].step == 0


def test_after_max_recoveries_the_robot_stops_in_error_and_refuses_everything():
    r = Rig(max_recoveries=2).started()
    r.answer_every_observation()
    r.run(0.3)
    r.fail = ["step", "step", "step"]
    r.run(1.0)
    st = r.ctrl.status()
    want = "backend fault: injected step fault (stopped after 2 recoveries in this episode)"
    assert (st.state, st.message, st.stopped_by_fault, st.step) == (STATE_ERROR, want, want, 3)
    assert r.logs("error")[-1].startswith(f"robot stopped: {want}")
    assert r.episodes and r.logs("info")[-1].endswith("(interrupted)")
    assert r.ctrl.wake_at is None
    n = len(r.effects)
    r.run(2.0)
    r.send()
    r.feed(ResetRequested(r.t, "R"))
    assert not r.of(Step, n) and not r.of(Hold, n) and not r.of(Reset, n), "a stopped robot commands nothing"
    assert not r.replies("R")[0].ok and "backend fault" in r.replies("R")[0].message
    assert r.ctrl.refused == 1


def test_a_fault_during_a_reset_is_recovered_and_the_reset_redone():
    r = Rig()
    r.feed(ResetRequested(r.t, "R", seed=3))
    r.fail = ["reset"]
    r.run(0.5)
    assert [e for e in r.of(Reset)] == [Reset(3, False), Reset(3, False)]
    assert r.replies("R")[0].ok and r.ctrl.status().state == STATE_RUNNING


def test_pending_requests_are_answered_when_the_robot_stops():
    r = Rig(max_recoveries=0).started()
    r.feed(LabelRequested(r.t, "L", True))
    r.fail = ["step"]
    r.run(0.1)
    assert not r.replies("L")[0].ok and "stopped after 0 recoveries" in r.replies("L")[0].message


# -- learned reward ---------------------------------------------------------------------------------------
def test_classifier_step_mode_the_rule_decides_nothing_and_a_success_verdict_ends_the_episode():
    r = Rig(reward_source="classifier", success_at={2, 3}).started()
    r.answer_every_observation()
    r.run(0.3)
    assert all(t.reward == 0.0 and not t.success and t.reward_source == REWARD_CLASSIFIER for t in r.transitions)
    assert not r.episodes, "the rule's success ends nothing"
    r.feed(RewardVerdict(r.t, "r9", r.ctrl.episode_id, 3, True))     # another robot's
    r.feed(RewardVerdict(r.t, "r0", 999, 3, True))                   # another episode's
    r.feed(RewardVerdict(r.t, "r0", r.ctrl.episode_id, 3, False))    # not a success
    r.run(0.1)
    assert not r.episodes
    r.feed(RewardVerdict(r.t, "r0", r.ctrl.episode_id, 4, True))
    r.run(0.1)
    last = r.transitions[-1]
    assert (last.success, last.terminated, last.truncated, last.reward, last.reward_source) == (
        True, True, False, 1.0, REWARD_CLASSIFIER)
    assert "(reward classifier; the rule says success)" in [ln for ln in r.logs("info") if "episode 0" in ln][0]
    assert r.episodes[0].success


@pytest.mark.parametrize("when", ["step", "end"])
def test_classifier_a_human_label_wins_over_a_verdict_and_ends_the_episode_at_once(when):
    r = Rig(reward_source="classifier", reward_when=when).started()
    r.feed(LabelRequested(r.t, "L", False))
    r.feed(RewardVerdict(r.t, "r0", r.ctrl.episode_id, 1, True))
    r.run(0.1)
    (t,) = r.transitions
    assert (t.success, t.truncated, t.reward_source) == (False, True, REWARD_HUMAN)
    assert r.ctrl.episode_id == 1002, "no verdict is awaited after a human label"


@pytest.mark.parametrize("when", ["before", "after", "never"])
def test_classifier_end_mode_holds_the_last_transition_for_its_verdict(when):
    r = Rig(reward_source="classifier", reward_when="end", reward_timeout_s=1.0, max_steps=3).started()
    r.answer_every_observation()
    ep = r.ctrl.episode_id
    if when == "before":   # the verdict on the last observation beats the held-back transition
        r.run(0.25)
        r.policy = None
        r.send()
        r.ctrl.handle(Tick(r.t + 0.05))
        r.feed(RewardVerdict(r.t + 0.06, "r0", ep, 3, True))
        r.feed(StepDone(r.t + 0.07, ("obs", ep, 3), 0.0, False, False, True, act()))
    else:
        r.run(0.3)
        assert [t.step for t in r.transitions] == [0, 1], "the last transition is held back"
        assert r.ctrl.wake_at == pytest.approx(r.t + 1.0, abs=0.11)
        n_obs = len(r.obs)
        if when == "after":
            r.run(0.4)
            r.feed(RewardVerdict(r.t, "r0", ep, 3, True))
            r.run(0.1)
        else:
            r.run(1.2)
        assert r.obs[n_obs][1] != ep, "nothing runs while the verdict is awaited"
    last = [t for t in r.transitions if t.episode_id == ep][-1]
    success = when != "never"
    assert (last.step, last.success, last.terminated, last.truncated, last.reward) == (
        2, success, success, not success, float(success))
    assert r.episodes[0].success == success
    assert any("no reward verdict on episode" in ln for ln in r.logs("warning")) == (when == "never")


# -- bindings (follow_bindings) -------------------------------------------------------------------------
def cut_rows(r, episode_id):
    """(step, source, truncated, terminated) of an episode's transitions."""
    return [(t.step, t.action_source, t.truncated, t.terminated) for t in r.transitions if t.episode_id == episode_id]


def test_following_bindings_the_robot_waits_unbound_then_a_binding_starts_an_episode():
    r = Rig(follow_bindings=True)
    r.run(2.0)
    assert not r.of(Reset) and not r.obs and all(not h.observe for h in r.of(Hold)), "unbound: no episode"
    st = r.ctrl.status()
    assert (st.state, st.message) == (STATE_IDLE, "no binding: waiting for the scheduler to bind it")
    r.feed(ResetRequested(r.t, "R"))
    r.feed(LabelRequested(r.t, "L", True))
    assert r.replies("R")[0].message.startswith("reset refused: the robot has no binding (waiting for the scheduler")
    assert r.replies("L")[0].message == "label success refused: the robot lost its binding"
    r.send(act(0.5), episode=0, step=0)         # an action for nothing: dropped, no complaint
    r.feed(Bound(r.t, "peg"))
    assert r.ctrl.wake_at == r.t
    r.run(0.0)
    assert r.of(Reset) == [Reset(-1, False)] and r.ctrl.status().state == STATE_RUNNING and r.ctrl.job == "peg"
    assert r.logs("info")[-1] == "bound to job peg: a fresh episode starts after a reset"
    r.answer_every_observation()
    r.run(0.3)
    assert [t.step for t in r.transitions] == [0, 1, 2] and r.ctrl.status().rejected == 0


@pytest.mark.parametrize("rf", [1.0, 0.0])
def test_a_lost_binding_ends_the_running_episode_with_a_truncated_hold_step_and_a_cut_summary(rf):
    r = Rig(realtime_factor=rf, follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.started()
    for _ in range(3):
        r.send(act(0.4), version=3)
        r.run(0.1)
    ep, n = r.ctrl.episode_id, r.ctrl.step_index
    assert n == 3
    r.feed(BindingLost(r.t, "job peg is gone"))
    r.send(act(0.4), version=3)                 # the old server's late answer: dropped
    assert r.logs("warning")[-1] == ("binding lost (job peg is gone): episode 0 is cut: its next step is its last "
                                     "(truncated); holding until bound again")
    if not rf:
        assert r.ctrl.wake_at == r.t, "the cut step does not wait for the watchdog"
    r.run(0.1)
    rows = cut_rows(r, ep)
    assert len(rows) == n + 1 and rows[-1] == (n, SOURCE_HOLD, True, False), rows
    assert all(row[1:] == (SOURCE_POLICY, False, False) for row in rows[:-1]), "the policy's actions after the loss " \
        "are dropped"
    assert r.of(Step)[-1].values is None, "the cut step runs the hold action"
    (summary,) = r.episodes
    assert summary.cut and summary.steps == n + 1 and not summary.success and summary.episode_id == ep
    assert [ln for ln in r.logs("info") if ln.startswith("episode 0:")][0].endswith("(cut: the binding was lost)")
    n_obs, n_resets = len(r.obs), len(r.of(Reset))
    r.run(3.0)
    assert len(r.obs) == n_obs and len(r.of(Reset)) == n_resets, "unbound: it holds, nothing observed, no reset"
    st = r.ctrl.status()
    assert (st.state, st.message) == (STATE_IDLE, "no binding: job peg is gone")
    r.feed(Bound(r.t, "peg"))
    r.run(0.0)
    assert len(r.of(Reset)) == n_resets + 1 and r.ctrl.episode_id != ep and r.ctrl.status().state == STATE_RUNNING
    r.send()
    r.run(0.1)
    assert r.ctrl.step_index == 1 and not any(t.truncated for t in r.transitions if t.episode_id != ep)
    r.feed(BindingLost(r.t, "again"))
    r.run(0.2)
    assert [e.index for e in r.episodes] == [0, 1] and r.episodes[1].cut


def test_a_binding_lost_while_a_reset_runs_discards_that_episode_and_a_new_binding_resets_again():
    r = Rig(follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    (reset,) = r.ctrl.handle(Tick(r.t))          # the reset motion is under way ...
    assert isinstance(reset, Reset)
    r.feed(BindingLost(r.t, "released"))         # ... when the binding goes
    assert r.logs("warning")[-1] == "binding lost (released): no episode to cut; holding until bound again"
    r.feed(ResetDone(r.t + 0.5, 2000, ("obs", 2000, 0, 0)))
    r.t += 0.5
    r.run(2.0)
    assert not r.of(Step) and not r.episodes, "nothing steps in the episode that began unbound"
    assert r.ctrl.status().state == STATE_IDLE
    r.feed(Bound(r.t, "other"))
    r.run(0.0)
    assert len(r.of(Reset)) == 1 and r.ctrl.episode_id == 1001, "a fresh episode after a reset"
    r.send()
    r.run(0.1)
    assert [(t.episode_id, t.step, t.truncated) for t in r.transitions] == [(1001, 0, False)]


def test_a_binding_lost_and_regained_during_a_reset_keeps_the_fresh_episode():
    r = Rig(follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.ctrl.handle(Tick(r.t))
    r.feed(BindingLost(r.t, "released"))
    r.feed(Bound(r.t, "peg"))
    r.feed(ResetDone(r.t + 0.5, 2000, ("obs", 2000, 0, 0)))
    r.t += 0.5
    r.send()
    r.run(0.1)
    assert not r.of(Reset) and [(t.episode_id, t.step) for t in r.transitions] == [(2000, 0)]


def test_a_binding_lost_during_an_estop_cuts_the_episode_after_the_release():
    r = Rig(follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.started()
    r.answer_every_observation()
    r.run(0.3)
    ep, n = r.ctrl.episode_id, r.ctrl.step_index
    r.feed(EstopChanged(r.t, True, "svc"))
    r.feed(BindingLost(r.t, "job gone"))
    n_eff = len(r.effects)
    r.run(1.0)
    assert not r.of(Step, n_eff) and not r.episodes, "nothing steps during the e-stop"
    assert r.ctrl.status().message == "e-stop", "the e-stop shows first"
    r.feed(EstopChanged(r.t, False, "svc"))
    r.run(0.1)
    assert cut_rows(r, ep)[-1] == (n, SOURCE_HOLD, True, False) and r.episodes[0].cut
    n_resets = len(r.of(Reset))
    r.run(1.0)
    assert len(r.of(Reset)) == n_resets and r.ctrl.status().message == "no binding: job gone"


def test_a_binding_lost_and_regained_at_once_still_cuts_the_episode_then_resets():
    r = Rig(follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.started()
    r.answer_every_observation()
    r.run(0.3)
    ep = r.ctrl.episode_id
    r.feed(BindingLost(r.t, "scheduler moved it"))
    r.feed(Bound(r.t, "peg"))
    assert r.logs("info")[-1] == ("bound to job peg: its cut episode ends first, then a fresh episode starts after "
                                  "a reset")
    r.run(0.1)
    assert cut_rows(r, ep)[-1][1:] == (SOURCE_HOLD, True, False) and r.episodes[0].cut
    assert len(r.of(Reset)) == 2 and r.ctrl.episode_id == ep + 1 and r.ctrl.status().state == STATE_RUNNING
    r.run(0.3)
    rows = cut_rows(r, ep + 1)
    assert len(rows) >= 2 and all(row[1:] == (SOURCE_POLICY, False, False) for row in rows)


def test_a_binding_lost_with_no_episode_running_cuts_nothing():
    r = Rig(max_steps=3, wait_for_reset=True, follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.started()
    r.feed(BindingLost(r.t, "x"))               # right after the reset: no step yet, nothing to cut
    r.run(1.0)
    assert not r.of(Step) and not r.episodes
    r.feed(Bound(r.t, "peg"))
    r.answer_every_observation()
    r.run(0.5)                                   # a fresh episode (after a reset) runs to its step limit
    assert len(r.of(Reset)) == 2 and len(r.episodes) == 1 and not r.episodes[0].cut
    assert r.ctrl.status().state == STATE_IDLE, "wait_for_reset: idle after the episode"
    n = len(r.effects)
    r.feed(BindingLost(r.t, "y"))
    r.run(1.0)
    assert not r.of(Step, n) and not r.of(FinishEpisode, n) and not r.of(Reset, n)
    assert r.logs("warning")[-1] == "binding lost (y): no episode to cut; holding until bound again"
    r.feed(Bound(r.t, "peg"))
    r.run(0.0)
    assert r.of(Reset, n), "bound again: a fresh episode after a reset"


def test_requests_pending_when_the_binding_goes_are_answered_and_repeats_are_ignored():
    r = Rig(follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.started()
    r.send()
    r.run(0.1)
    r.feed(LabelRequested(r.t, "L", True))
    r.feed(ResetRequested(r.t, "R"))
    r.feed(BindingLost(r.t, "gone"))
    r.feed(BindingLost(r.t, "gone"))
    assert r.replies("L")[0].message == "label success not applied: the robot lost its binding"
    assert r.replies("R")[0].message == "the robot lost its binding"
    assert len([ln for ln in r.logs("warning") if ln.startswith("binding lost")]) == 1
    r.run(0.1)
    assert r.transitions[-1].truncated and not r.transitions[-1].success, "the label did not apply; the cut did"
    r.feed(Bound(r.t, "peg"))
    r.feed(Bound(r.t, "peg"))
    r.run(0.0)
    assert len(r.of(Reset)) == 2


def test_a_binding_lost_during_the_first_step_cuts_after_that_step_is_recorded():
    r = Rig(follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.started()
    r.send()
    (step,) = r.ctrl.handle(Tick(r.t + 0.1))
    assert isinstance(step, Step)
    r.ctrl.handle(BindingLost(r.t + 0.12, "gone"))
    out = r.ctrl.handle(StepDone(r.t + 0.15, ("obs", 1001, 1), 0.0, False, False, False, act()))
    assert [type(e) for e in out] == [PublishTransition] and not out[0].record.truncated
    r.t += 0.15
    r.run(0.2)
    assert [(t.step, t.action_source, t.truncated) for t in r.transitions] == [(1, SOURCE_HOLD, True)]
    assert r.episodes[0].cut and r.episodes[0].steps == 2


def test_a_fault_in_the_cut_step_is_recovered_and_the_cut_step_redone():
    r = Rig(follow_bindings=True)
    r.feed(Bound(r.t, "peg"))
    r.started()
    r.send()
    r.run(0.1)
    r.fail = ["step"]
    r.feed(BindingLost(r.t, "gone"))
    r.run(0.5)
    assert r.of(Recover) and [(t.step, t.truncated) for t in r.transitions] == [(0, False), (1, True)]
    assert r.episodes[0].cut


def test_without_follow_bindings_a_robot_is_bound_from_the_start():
    r = Rig().started()
    assert r.ctrl.bound and r.ctrl.status().message == ""


# -- heartbeat rate --------------------------------------------------------------------------------------
def test_achieved_hz_counts_steady_ticks_only():
    ticks = [0.0, 0.1, 0.2, 0.3, 2.0, 2.1]
    assert achieved_hz(ticks, 2.15, 0.1) == pytest.approx(10.0)
    assert achieved_hz(ticks, 5.0, 0.1) == 0.0, "stale: no recent tick"
    assert achieved_hz([1.0], 1.0, 0.1) == 0.0


# -- the controller with a real cell (MuJoCo), as the node runs it, without ROS --------------------------
def test_the_controller_drives_a_real_simulated_cell_through_the_cell_runner():
    """The scripted expert answers every observation; the third step call faults and is recovered."""
    import threading
    from pathlib import Path

    from user_hal.backends.base import make_backend
    from user_hal.core.cell import RobotCell
    from user_hal.cell_runner import CellRunner
    from user_hal.profile import load_profile
    from user_hal.tasks.experts import make_expert
    from user_testing.faults import inject_step_faults

    prof = load_profile(Path(__file__).resolve().parents[3] / "config" / "robot_sim.yaml",
                        {"robot.cameras": [], "robot.realtime_factor": 0.0})
    cell = RobotCell(prof, make_backend("sim", **dict(prof.backend_options, cameras=(), render_images=False)), seed=0)
    inject_step_faults(cell, {3})
    expert = make_expert(prof)
    ctrl = EpisodeController(EpisodeConfig.from_profile(prof, "r0", max_episodes=1))
    clock = [0.0]
    ids = iter(range(7, 100))
    runner = CellRunner(cell, lambda state, e, s, ev: (e, s, cell.proprio(state)), threading.Event(), 0.0,
                        clock=lambda: clock[0], new_episode_id=lambda: next(ids))
    effects, pending = [], [Tick(0.0)]
    cell.start()
    try:
        for _ in range(5000):
            if any(isinstance(e, Shutdown) for e in effects):
                break
            if not pending:
                assert ctrl.wake_at is not None, [e for e in effects if isinstance(e, Log)]
                clock[0] = max(clock[0], ctrl.wake_at)
                pending.append(Tick(clock[0]))
            for eff in ctrl.handle(pending.pop(0)):
                effects.append(eff)
                if isinstance(eff, CellRunner.EFFECTS):
                    out = runner.run(eff)
                    pending.append(out)
                    if getattr(out, "obs", None) is not None:   # the expert answers each observation
                        e, s, proprio = out.obs
                        pending.append(ActionArrived(clock[0], "r0", e, s, expert.act(proprio)))
        else:
            pytest.fail("the episode did not end within 5000 events")
    finally:
        cell.close()
    trans = [e.record for e in effects if isinstance(e, PublishTransition)]
    (summary,) = [e.summary for e in effects if isinstance(e, FinishEpisode)]
    assert summary.success and summary.episode_id == 7 and summary.steps == len(trans) < 100
    assert [t.step for t in trans] == list(range(len(trans))), "every step once, the faulted one redone"
    assert all(t.obs[1] + 1 == t.next_obs[1] == t.step + 1 for t in trans)
    assert trans[-1].terminated and trans[-1].reward_source == REWARD_RULE
    assert ctrl.recoveries_total == 1 and "injected fault at step call 3" in [
        e.message for e in effects if isinstance(e, Log) and e.level == "warning"][0]
