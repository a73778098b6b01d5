"""Action chunks: the robot-side queue and combiner (pure), then the robot node executing chunks on DDS."""
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from user_msgs.msg import Action, Observation, RobotStatus, Transition

from hal_helpers import Collect, node_cmd, profile_with
from user_hal.core.cell import ACTION_NAMES, ActionError
from user_hal.core.chunks import ChunkQueue, PendingChunk, check_chunk, ensemble

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
DATA = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
A = len(ACTION_NAMES)


def rows(*xs):
    """One action per value: dx = x, gripper closed."""
    return np.array([[x, 0, 0, 0, 0, 0, -1.0] for x in xs])


def chunk(values, step, version=1, t=0.0, episode=5, source=Action.SOURCE_POLICY):
    return PendingChunk(np.asarray(values, dtype=np.float64), episode, step, version, source, t, t)


# -- pure: combiner, queue rules, validation ------------------------------------------------------------
def test_ensemble_weights_oldest_first_with_exp_rate():
    a, b, c = np.full(A, 0.3), np.full(A, -0.6), np.full(A, 0.9)
    w = [1.0, math.exp(-0.5), math.exp(-1.0)]
    want = (w[0] * 0.3 + w[1] * -0.6 + w[2] * 0.9) / sum(w)
    assert np.allclose(ensemble([a, b, c], 0.5), want)
    assert np.allclose(ensemble([a, b, c], 0.0), 0.2), "rate 0 is the plain mean"
    with pytest.raises(ValueError, match="no actions"):
        ensemble([], 0.1)


def test_queue_newest_wins_or_ensembles_and_forgets_passed_steps():
    for mode in ("none", "exp"):
        q = ChunkQueue(period=0.1, watchdog=0.2, mode=mode, rate=0.0)
        q.add(chunk(rows(0.1, 0.2, 0.3, 0.4), step=0, version=3))
        q.add(chunk(rows(0.6, 0.7, 0.8), step=2, version=4))
        assert q.take(5, 0, 0.0).values[0][0] == pytest.approx(0.1)
        assert q.take(5, 1, 0.1).policy_version == 3
        two = q.take(5, 2, 0.2)        # both chunks cover step 2
        three = q.take(5, 3, 0.3)
        assert two.policy_version == three.policy_version == 4
        if mode == "none":
            assert (two.values[0][0], three.values[0][0]) == pytest.approx((0.6, 0.7))
        else:
            assert (two.values[0][0], three.values[0][0]) == pytest.approx(((0.3 + 0.6) / 2, (0.4 + 0.7) / 2))
        assert len(q) == 2
        assert q.take(5, 4, 0.4).values[0][0] == pytest.approx(0.8)
        assert len(q) == 1, "the first chunk ended at step 3 and must be dropped"
        assert q.take(5, 5, 0.5) is None and len(q) == 0
        assert q.take(6, 4, 0.4) is None, "entries of another episode never run"


def test_each_entry_may_run_until_a_watchdog_after_its_own_step_was_due():
    q = ChunkQueue(period=0.1, watchdog=0.2)
    q.add(chunk(rows(0.1, 0.2, 0.3, 0.4), step=10, t=100.0))
    assert q.covers(5, 10, 100.2) and not q.covers(5, 10, 100.21)
    assert q.covers(5, 13, 100.5) and not q.covers(5, 13, 100.51)
    assert q.take(5, 13, 100.6) is None, "a stale entry is not executed"
    with pytest.raises(ValueError, match="'avg'"):
        ChunkQueue(0.1, 0.2, mode="avg")


def test_check_chunk_rejects_the_whole_chunk_naming_the_bad_entry():
    good = rows(0.5, 1.5, -2.0)
    out = check_chunk(good.ravel(), 3, A, ACTION_NAMES)
    assert out.shape == (3, A) and out[1, 0] == 1.0 and out[2, 0] == -1.0, "entries are clipped like actions"
    bad = good.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ActionError, match="chunk entry 2: action contains NaN or inf in dz"):
        check_chunk(bad.ravel(), 3, A, ACTION_NAMES)
    with pytest.raises(ActionError, match="chunk has 20 values, expected chunk_length 3 x 7"):
        check_chunk(good.ravel()[:20], 3, A, ACTION_NAMES)


@pytest.mark.parametrize("key, value, words", [
    ("robot.chunk_ensemble", "avg", "robot.chunk_ensemble: must be one of 'none', 'exp', got 'avg'"),
    ("robot.chunk_ensemble_rate", -1, "robot.chunk_ensemble_rate: must be >= 0, got -1"),
    ("robot.chunk_ensemble_rate", float("inf"), "robot.chunk_ensemble_rate: must be finite, got inf"),
])
def test_bad_chunk_profile_keys_are_one_line_errors(tmp_path, key, value, words):
    from user_common.config_schema import ConfigError
    from user_hal.profile import load_profile

    with pytest.raises(ConfigError, match=re.escape(words)):
        load_profile(profile_with(tmp_path, **{key: value}))
    assert load_profile(profile_with(tmp_path, **{"robot.chunk_ensemble": "exp"})).robot.chunk_ensemble_rate == 0.01


# -- the robot node on DDS: real rclpy, real MuJoCo ---------------------------------------------------
def start_robot(procs, tmp_path, rf=1.0, **profile_changes):
    prof = profile_with(tmp_path, **{"robot.cameras": [], **profile_changes})
    return procs.start("robot", node_cmd("robot_node", {"robot_id": "franka_0", "profile": str(prof),
                                                        "realtime_factor": rf}))


def chunk_msg(o: Observation, values, version=1, source=Action.SOURCE_POLICY) -> Action:
    values = np.asarray(values, dtype=np.float32)
    a = Action(robot_id="franka_0", episode_id=o.episode_id, step=o.step, action=values.ravel().tolist(),
               policy_version=version, source=source, chunk_length=len(values))
    a.header.stamp = o.header.stamp
    return a


def answer_first(pub, plan, trans):
    """An observation callback that publishes ``plan(o)`` (a list of Actions) once, for the first observation
    seen after the ``trans`` collector is matched with the robot (so that no transition is missed)."""
    sent = []

    def on_obs(o):
        if not sent and trans.sub.get_publisher_count() > 0:
            sent.append(o)
            for a in plan(o):
                pub.publish(a)
    return on_obs, sent


def dx(t):
    return round(float(t.action[0]), 4)


def test_a_chunk_is_executed_step_by_step_then_the_robot_holds(procs, ros_node, tmp_path):
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    xs = [0.1, 0.2, 0.3, 0.4, 0.5]
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    on_obs, sent = answer_first(pub, lambda o: [chunk_msg(o, rows(*xs), version=9)], trans)
    obs = Collect(ros_node, Observation, "/franka_0/observation", on_msg=on_obs)
    start_robot(procs, tmp_path)
    trans.wait(lambda m: len(m) >= 5, 60, "5 transitions from one chunk")
    time.sleep(1.0)   # nothing covers step 5: the robot must hold there
    assert [t.step for t in trans.msgs] == [0, 1, 2, 3, 4], [t.step for t in trans.msgs]
    assert [dx(t) for t in trans.msgs] == xs, "the chunk's actions in order"
    assert all(t.action_source == Action.SOURCE_POLICY and t.policy_version == 9 for t in trans.msgs)
    held = [o for o in obs.msgs if o.step == 5]
    assert len(held) >= 5 and len({o.step for o in obs.msgs[-5:]}) == 1, "the robot holds after the chunk"


@pytest.mark.parametrize("mode", ["none", "exp"])
def test_overlapping_chunks_newest_wins_or_are_ensembled(procs, ros_node, tmp_path, mode):
    rate = 0.5
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    on_obs, _ = answer_first(pub, lambda o: [chunk_msg(o, rows(0.2, 0.2, 0.2, 0.2), version=3),
                                             chunk_msg(o, rows(0.6, 0.6, 0.6, 0.6, 0.6, 0.6), version=4)], trans)
    Collect(ros_node, Observation, "/franka_0/observation", on_msg=on_obs)
    start_robot(procs, tmp_path, **{"robot.chunk_ensemble": mode, "robot.chunk_ensemble_rate": rate})
    trans.wait(lambda m: len(m) >= 6, 60, "6 transitions")
    mixed = (0.2 + math.exp(-rate) * 0.6) / (1 + math.exp(-rate))
    want = [mixed if mode == "exp" else 0.6] * 3 + [0.6, 0.6]
    # step 0 may have run before the second chunk arrived; from step 1 on both are queued
    assert [dx(t) for t in trans.msgs[1:6]] == pytest.approx(want, abs=1e-4)
    assert [t.policy_version for t in trans.msgs[1:6]] == [4] * 5


def test_a_chunk_with_a_bad_entry_is_rejected_and_the_robot_holds(procs, ros_node, tmp_path):
    robot = start_robot(procs, tmp_path)
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    bad = rows(0.5, 0.5, 0.5, 0.5)
    bad[2, 2] = np.inf

    def answer(o):
        pub.publish(chunk_msg(o, bad))
    obs = Collect(ros_node, Observation, "/franka_0/observation", on_msg=answer)
    first = obs.wait(lambda m: len(m) > 0, 30, "an observation")
    robot.wait_for(r"rejected action: chunk entry 2: action contains NaN or inf in dz", 10)
    time.sleep(1.0)
    assert not trans.msgs, "no entry of a rejected chunk may run"
    last = obs.msgs[-1]
    assert last.step == first.step
    assert np.linalg.norm(np.array(last.proprio[:3]) - np.array(first.proprio[:3])) < 0.002
    beats.wait(lambda m: m and m[-1].rejected_actions > 0, 5, "rejected_actions in the heartbeat")


def test_entries_are_dropped_when_the_robot_falls_behind_the_chunk(procs, ros_node, tmp_path):
    """At realtime_factor 50 a tick is due every 2 ms (watchdog 4 ms), faster than the sim steps: the robot
    falls behind the chunk's schedule at once, drops its late entries and holds, never running it to the end."""
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    on_obs, sent = answer_first(pub, lambda o: [chunk_msg(o, rows(*[0.1] * 30))], trans)
    obs = Collect(ros_node, Observation, "/franka_0/observation", on_msg=on_obs)
    start_robot(procs, tmp_path, rf=50.0)
    obs.wait(lambda m: sent and len(m) > 200, 60, "200 observations after the chunk was sent")
    time.sleep(1.0)
    steps = [t.step for t in trans.msgs]
    assert len(steps) < 30 and steps == list(range(len(steps))), f"the late entries ran: steps {steps}"
    assert len({o.step for o in obs.msgs[-20:]}) == 1, "the robot must hold after dropping stale entries"


def test_a_late_answer_to_a_step_the_robot_holds_still_runs(procs, ros_node, tmp_path):
    """Freshness counts from the robot's newest observation of the answered step, as for single actions."""
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    start_robot(procs, tmp_path)   # 10 Hz, watchdog 2 periods
    first = obs.wait(lambda m: len(m) > 0, 30, "an observation")
    trans.wait_matched(30)
    time.sleep(0.5)                # the robot holds at step 0 meanwhile, re-publishing it
    assert obs.msgs[-1].step == first.step
    pub.publish(chunk_msg(first, rows(0.3, 0.3, 0.3)))   # answers the first, 0.5 s old observation
    trans.wait(lambda m: len(m) >= 3, 10, "3 transitions")
    assert [dx(t) for t in trans.msgs] == [0.3, 0.3, 0.3]


def test_a_human_action_overrides_and_clears_a_chunk(procs, ros_node, tmp_path):
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    on_obs, _ = answer_first(pub, lambda o: [chunk_msg(o, rows(*[0.4] * 30))], trans)
    human_sent = []

    def on_obs_and_human(o):
        on_obs(o)
        if o.step == 3 and not human_sent:
            human_sent.append(o.step)
            pub.publish(chunk_msg(o, rows(-0.7), source=Action.SOURCE_HUMAN))
    Collect(ros_node, Observation, "/franka_0/observation", on_msg=on_obs_and_human)
    start_robot(procs, tmp_path)
    trans.wait(lambda m: any(t.action_source == Action.SOURCE_HUMAN for t in m), 60, "the human's step")
    time.sleep(1.5)   # longer than robot.intervention_hold_s: the cleared chunk must not come back
    sources = [(t.step, t.action_source, dx(t)) for t in trans.msgs]
    assert sources[:3] == [(0, 0, 0.4), (1, 0, 0.4), (2, 0, 0.4)], sources
    assert sources[3:] == [(3, Action.SOURCE_HUMAN, -0.7)], f"the chunk ran on after the human: {sources}"
    assert trans.msgs[3].intervened


def test_at_realtime_factor_0_queued_entries_run_without_waiting(procs, ros_node, tmp_path):
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    xs = [round(0.05 * i, 2) for i in range(12)]
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    on_obs, _ = answer_first(pub, lambda o: [chunk_msg(o, rows(*xs), version=2)], trans)
    Collect(ros_node, Observation, "/franka_0/observation", on_msg=on_obs)
    start_robot(procs, tmp_path, rf=0.0)
    trans.wait(lambda m: len(m) >= 12, 60, "12 transitions")
    assert [dx(t) for t in trans.msgs] == xs
    stamps = [t.next_obs.header.stamp.sec + 1e-9 * t.next_obs.header.stamp.nanosec for t in trans.msgs]
    assert stamps[-1] - stamps[0] < 0.1 * 11, "at realtime_factor 0 a queued chunk runs faster than real time"


def test_the_inference_node_sends_one_chunk_per_h_steps_and_the_robot_runs_them(procs, ros_node, tmp_path):
    """A real inference node (in this process) serving a small chunk policy to a real robot node."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from hal_helpers import ROOT
    from user_learner.inference_node import InferenceNode
    from user_learner.serving import ChunkScheduler

    H = 4

    class ChunkPolicy:   # row i of the n-th chunk: dx = n / 100, dy = i / 10
        chunk_size = H
        uses_instruction = True

        def __init__(self):
            self.instructions = []

        def act(self, state, pixels, deterministic, generator=None, instruction=None):
            self.instructions.append(instruction)
            out = np.zeros((H, A), np.float32)
            out[:, 0], out[:, 1], out[:, 6] = len(self.instructions) / 100, np.arange(H) / 10, -1.0
            return out

    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    # InferenceNode lives in the default context, which gets its parameters from these arguments.
    rclpy.init(args=["--ros-args", "-p", f"config:={ROOT / 'config' / 'sac_peg.yaml'}"])
    node = ex = thread = None
    try:
        node = InferenceNode()
        policy = ChunkPolicy()
        node.server.policy, node.scheduler = policy, ChunkScheduler(H)
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        thread = threading.Thread(target=ex.spin, daemon=True)
        thread.start()
        start_robot(procs, tmp_path)   # 10 Hz
        trans.wait(lambda m: len(m) >= 16, 60, "16 transitions")
    finally:
        if ex is not None:
            ex.shutdown(timeout_sec=1.0)
        if thread is not None:
            thread.join(timeout=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    steps = [(t.step, round(t.action[0] * 100), round(t.action[1] * 10)) for t in trans.msgs[:16]]
    chunk_of = {}
    for step, n, i in steps:   # entry i of chunk n runs at the chunk's first step + i
        chunk_of.setdefault(n, step - i)
        assert step - i == chunk_of[n], f"chunk {n} entry {i} ran at step {step}: {steps}"
    assert len(chunk_of) <= 5, f"expected about one query per {H} steps, got chunks {sorted(chunk_of)}: {steps}"
    assert set(policy.instructions) == {"insert the peg into the hole"}, policy.instructions
    assert all(t.action_source == Action.SOURCE_POLICY for t in trans.msgs)


def test_bench_chunks_smoke(ros_env):
    """bench/chunks.py (the measured run is in docs/chunks.md): one short row of chunks prints its table."""
    import subprocess
    import sys

    from hal_helpers import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "bench" / "chunks.py"), "--latency-ms", "5", "--seconds", "2",
                          "--configs", "h10"], cwd=ROOT, env=ros_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    row = [line.split() for line in out.stdout.splitlines() if line.startswith("h10 ")]
    assert len(row) == 1, out.stdout
    steps_per_s, queries_per_step = float(row[0][2]), float(row[0][7])
    assert steps_per_s > 5 and queries_per_step <= 0.3, out.stdout


def test_a_real_inference_node_serves_hg_dagger_vla_chunks_to_the_robot(procs, ros_node, tmp_path):
    """The inference node as a process with the VLA-like chunk policy (config/vla_peg.yaml, H = 8, untrained
    weights from the seed): one query per chunk, the robot runs each chunk step by step."""
    from ament_index_python.packages import get_package_prefix

    from hal_helpers import ROOT
    from user_learner.algos import algorithm_names

    config = ROOT / "config" / "vla_peg.yaml"
    if "hg_dagger_vla" not in algorithm_names() or not config.exists():
        pytest.skip("the hg_dagger_vla algorithm (config/vla_peg.yaml) is not in this tree yet")
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    exe = Path(get_package_prefix("user_learner")) / "lib" / "user_learner" / "inference_node"
    inference = procs.start("inference", [str(exe), "--ros-args", "-p", f"config:={config}",
                                          "-p", "robot_ids:=[franka_0]"])
    inference.wait_for(r"chunks of 8 steps, replanning every 8", 120)
    start_robot(procs, tmp_path)
    trans.wait(lambda m: len(m) >= 24, 120, "24 transitions")
    inference.stop()
    out = inference.log_path.read_text(errors="replace")
    m = re.search(r"done: (\d+) actions \((\d+) policy queries in \d+ forward passes", out)
    assert m, out[-2000:]
    steps = [t.step for t in trans.msgs]
    assert steps == list(range(steps[0], steps[0] + len(steps))), steps
    assert int(m.group(2)) <= len(trans.msgs) / 8 + 3, f"{m.group(0)} for {len(trans.msgs)} steps"
    assert all(t.action_source == Action.SOURCE_POLICY and np.all(np.abs(t.action) <= 1) for t in trans.msgs)
