"""The learner's training schedule, driven by a fake clock: modes, min_buffer, the update-to-data cap,
publish and checkpoint cadence, budgets, and the sync loop's robot resets."""
from __future__ import annotations

import dataclasses

from user_learner.learner_config import LearnerOptions
from user_learner.schedule import CHECKPOINT_EVERY_S, IDLE_GRACE_S, Do, Step, TrainingSchedule


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def schedule(clock: Clock, **opts) -> TrainingSchedule:
    base = dict(min_buffer=10, max_utd=0.0, publish_every_updates=5, publish_every_s=2.0,
                checkpoint_every_updates=20)
    return TrainingSchedule(dataclasses.replace(LearnerOptions(), **{**base, **opts}), clock)


def run(s: TrainingSchedule, buffer: int, n: int) -> list[Do]:
    """Ask and carry out ``n`` steps; what was done."""
    out = []
    for _ in range(n):
        step = s.next(buffer)
        out.append(step.do)
        s.done(step)
    return out


def test_async_publishes_first_then_waits_for_min_buffer_then_updates():
    c = Clock()
    s = schedule(c)
    assert run(s, buffer=3, n=3) == [Do.PUBLISH, Do.WAIT, Do.WAIT], "inference must get the learner's weights at once"
    s.add_env_steps(10)
    assert run(s, buffer=10, n=3) == [Do.UPDATE] * 3 and s.updates == 3


def test_async_update_to_data_cap():
    c = Clock()
    s = schedule(c, max_utd=2.0, publish_every_updates=1000, checkpoint_every_updates=1000)
    s.add_env_steps(15)                       # 5 past min_buffer: at most 10 updates
    done = run(s, buffer=15, n=14)
    assert done[0] is Do.PUBLISH and done[1:].count(Do.UPDATE) == 10 and done[-1] is Do.WAIT, done
    s.add_env_steps(1)
    assert run(s, buffer=16, n=3) == [Do.UPDATE, Do.UPDATE, Do.WAIT]


def test_async_publish_cadence_by_updates_and_by_time_but_never_without_new_updates():
    c = Clock()
    s = schedule(c, publish_every_updates=5, publish_every_s=2.0)
    s.add_env_steps(100)
    assert run(s, 100, 7) == [Do.PUBLISH] + [Do.UPDATE] * 5 + [Do.PUBLISH]
    run(s, 100, 1)                            # one new update ...
    c.t += 2.0                                # ... and the time is up
    assert s.next(100).do is Do.PUBLISH
    s.done(Step(Do.PUBLISH))
    c.t += 10.0                               # time, but nothing new to publish
    assert s.next(0).do is Do.WAIT


def test_checkpoint_cadence_by_updates_and_every_30_s_when_anything_changed():
    c = Clock()
    s = schedule(c, publish_every_updates=1000, publish_every_s=1e9, checkpoint_every_updates=20)
    s.add_env_steps(100)
    done = run(s, 100, 22)
    assert done.count(Do.CHECKPOINT) == 1 and done.index(Do.CHECKPOINT) == 21, done   # after 20 updates
    c.t += CHECKPOINT_EVERY_S
    assert s.next(0).do is Do.WAIT, "nothing changed since the last checkpoint"
    s.add_env_steps(1)                        # a transition arrived: worth a checkpoint (acks may wait on it)
    assert s.next(0).do is Do.CHECKPOINT


def test_budgets_stop_the_schedule():
    c = Clock()
    s = schedule(c, max_env_steps=50)
    s.add_env_steps(49)
    assert s.next(49).do is not Do.STOP and abs(s.budget_fraction() - 0.98) < 1e-9
    s.add_env_steps(1)
    assert s.next(50).do is Do.STOP
    t = schedule(c, max_minutes=1.0)
    c.t += 59.0
    assert t.next(0).do is not Do.STOP
    c.t += 1.0
    assert t.next(0).do is Do.STOP
    assert schedule(c).budget_fraction() != schedule(c).budget_fraction(), "no budget: NaN"


def test_sync_trains_k_updates_publishes_waits_and_resets_after_each_episode():
    c = Clock()
    s = schedule(c, mode="sync", sync_updates_per_episode=3)
    assert run(s, 100, 2) == [Do.WAIT, Do.WAIT], "sync publishes nothing before the first episode ends"
    s.episode_ended("franka_0")
    s.episode_ended("franka_1")
    s.episode_ended("franka_0")               # the same end reported twice counts once
    steps = []
    for _ in range(12):
        step = s.next(100)
        steps.append(step)
        s.done(step)
    assert [(x.do, x.robot_id) for x in steps[:5]] == [
        (Do.UPDATE, ""), (Do.UPDATE, ""), (Do.UPDATE, ""), (Do.PUBLISH, "franka_0"), (Do.RESET, "franka_0")]
    assert steps[3].wait_for_inference
    assert [(x.do, x.robot_id) for x in steps[5:10]] == [
        (Do.UPDATE, ""), (Do.UPDATE, ""), (Do.UPDATE, ""), (Do.PUBLISH, "franka_1"), (Do.RESET, "franka_1")]
    assert [x.do for x in steps[10:]] == [Do.WAIT, Do.WAIT]


def test_sync_resets_without_training_below_min_buffer_and_ignores_async_inputs_in_async():
    c = Clock()
    s = schedule(c, mode="sync")
    s.episode_ended("franka_0")
    assert [(x.do, x.robot_id) for x in (s.next(3),)] == [(Do.RESET, "franka_0")]
    a = schedule(c)
    a.episode_ended("franka_0")
    a.robot_status("franka_0", waiting_for_reset=True)
    c.t += 100
    assert run(a, 0, 2) == [Do.PUBLISH, Do.WAIT]


def test_sync_queues_a_robot_that_waits_for_a_reset_nobody_queued():
    """After a learner restart the episode end that made the robot wait is gone: its heartbeat tells."""
    c = Clock()
    s = schedule(c, mode="sync", sync_updates_per_episode=1)
    s.robot_status("franka_0", waiting_for_reset=True)
    c.t += IDLE_GRACE_S - 0.1
    s.robot_status("franka_0", waiting_for_reset=True)
    assert s.next(100).do is Do.WAIT, "a heartbeat may be stale: wait for the grace time"
    c.t += 0.2
    s.robot_status("franka_0", waiting_for_reset=True)
    assert [(x.do, x.robot_id) for x in (s.next(100),)] == [(Do.UPDATE, "")]
    s.done(Step(Do.UPDATE))
    c.t += IDLE_GRACE_S * 2                   # still waiting while it is being handled: not queued twice
    s.robot_status("franka_0", waiting_for_reset=True)
    assert run(s, 100, 3) == [Do.PUBLISH, Do.RESET, Do.WAIT]
    s.robot_status("franka_1", waiting_for_reset=True)
    c.t += IDLE_GRACE_S
    s.robot_status("franka_1", waiting_for_reset=False)   # it was reset meanwhile: forget it
    c.t += IDLE_GRACE_S
    s.robot_status("franka_1", waiting_for_reset=True)
    assert s.next(100).do is Do.WAIT
