"""The buffer node as a real process on DDS: records a robot into a bag (acknowledging only what is on
disk), serves batches to a RemoteReplay, and survives kill -9 without losing or duplicating data."""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from user_msgs.msg import RobotStatus, Transition, TransitionAck
from user_msgs.srv import SampleBatch

from hal_helpers import ROOT, Collect, node_cmd, profile_with

sys.path.insert(0, str(ROOT / "src" / "user_buffer" / "test"))
from bag_readers import assert_every_reader_sees_the_store, mcap_keys  # noqa: E402
from buffer_helpers import STATE_DIM, transition_bytes, transition_msg  # noqa: E402

from user_buffer.remote import RemoteReplay, RemoteSampleError  # noqa: E402
from user_buffer.replay import Layout, LayoutMismatch  # noqa: E402
from user_buffer.store import TransitionStore  # noqa: E402

pytestmark = pytest.mark.timeout(120)
RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
ROBOT = "franka_0"



def stop(proc) -> tuple[int | None, str]:
    """Stop a process cleanly (SIGINT first); its exit code and whole output."""
    code = proc.stop()
    return code, proc.log_path.read_text(errors="replace")


def buffer_cmd(**params) -> list[str]:
    from ament_index_python.packages import get_package_prefix

    cmd = [str(Path(get_package_prefix("user_buffer")) / "lib" / "user_buffer" / "buffer_node"), "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    return cmd


def start_buffer(procs, name: str, bag: Path, **params):
    p = procs.start(name, buffer_cmd(bag_dir=str(bag), status_every_s=1.0, **params))
    p.wait_for(r"serving /user/buffer/sample", 30)
    return p


def start_robot(procs, tmp_path: Path):
    prof = profile_with(tmp_path, **{"robot.cameras": [], "robot.max_episode_steps": 30})
    robot = procs.start("robot", node_cmd("robot_node", {
        "robot_id": ROBOT, "profile": str(prof), "realtime_factor": 0.0, "ack_consumers": "[buffer]"}))
    policy = procs.start("policy", node_cmd("scripted_policy", {"robot_id": ROBOT, "profile": str(prof)}))
    return robot, policy


def drain(policy, beats: Collect) -> RobotStatus:
    """Stop the policy (the robot holds, producing nothing) and wait until the buffer holds everything."""
    policy.stop()
    time.sleep(0.5)  # the last action in flight is executed or dropped by the watchdog
    return beats.wait(lambda m: m and m[-1].unacked_transitions == 0 and m[-1].steps_done == m[-2].steps_done
                      if len(m) > 1 else False, 30, "every transition acknowledged by the buffer")


def check_episodes(store: TransitionStore) -> list[dict]:
    """Every ended episode holds steps 0..n-1 exactly once; returns the ended episodes."""
    v = store.snapshot()
    ended = [e for e in store.episodes() if e["ended"]]
    for e in ended:
        steps = sorted(int(s) for s in v["step"][e["rows"]])
        assert steps == list(range(len(steps))), f"episode {e['episode_id']} has steps {steps}"
    return ended


def test_robot_records_into_a_bag_and_is_acknowledged(procs, ros_node, tmp_path):
    bag = tmp_path / "bag"
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", QoSProfile(
        depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    acks = Collect(ros_node, TransitionAck, "/user/transitions/ack")
    buffer = start_buffer(procs, "buffer", bag)
    end = time.monotonic() + 10
    while ros_node.count_publishers("/user/transitions/ack") == 0 and time.monotonic() < end:
        time.sleep(0.05)   # see every ack: discover the buffer's ack publisher before any data flows
    _robot, policy = start_robot(procs, tmp_path)
    beats.wait(lambda m: m and m[-1].episodes_done >= 3, 60, "3 episodes")
    final = drain(policy, beats)
    assert final.unacked_transitions == 0 and final.dropped_transitions == 0 and final.steps_done >= 3
    code, out = stop(buffer)
    assert code == 0, out[-2000:]
    assert "closed bag" in out and "Traceback" not in out, out[-2000:]
    assert "buffer: stored" in out, "no status line"

    store = TransitionStore(bag, writable=False)
    try:
        assert not store.problems, store.problems
        assert len(store) == final.steps_done, "every executed step must be in the bag"
        ended = check_episodes(store)
        assert len(ended) == final.episodes_done >= 3
        stored = set(zip((store.robots[r] for r in store.snapshot()["robot"].tolist()),
                         store.snapshot()["episode"].tolist(), store.snapshot()["step"].tolist()))
    finally:
        store.close()
    keys = mcap_keys(bag)
    assert len(keys) == len(set(keys)) == final.steps_done, "the MCAP files must hold each transition once"
    assert set(keys) == stored == assert_every_reader_sees_the_store(bag)
    acked = {(a.robot_id, e, s) for a in acks.msgs if a.consumer == "buffer" for e, s in zip(a.episode_ids, a.steps)}
    assert acked == stored, "the buffer acknowledges exactly what it stored"


def test_remote_replay_samples_from_a_running_buffer_node(procs, ros_node, tmp_path):
    demos = TransitionStore(tmp_path / "demos")
    for s in range(12):
        demos.add(transition_bytes("teacher", 7, s, reward=5.0, last=s == 11))
    demos.close()
    start_buffer(procs, "buffer", tmp_path / "bag", demo_dir=str(tmp_path / "demos"), sync_every_s=0.2)
    pub = ros_node.create_publisher(Transition, "/user/transitions", RELIABLE)
    acks = Collect(ros_node, TransitionAck, "/user/transitions/ack")
    end = time.monotonic() + 20
    while (pub.get_subscription_count() == 0 or ros_node.count_publishers("/user/transitions/ack") == 0) \
            and time.monotonic() < end:
        time.sleep(0.05)
    sent: dict[str, list[Transition]] = {"robot_a": [], "robot_b": []}

    def publish(robot, episode, steps, **kw):
        for s in steps:
            t = transition_msg(robot, episode, s, **kw)
            sent[robot].append(t)
            pub.publish(t)

    publish("robot_a", 1, range(20), reward=1.0)
    publish("robot_b", 2, range(10), reward=2.0, embodiment="ur5e")
    layout = Layout(state_dim=STATE_DIM)
    a = RemoteReplay(ros_node, layout, batch_size=16, robot_ids=["robot_a"])
    b = RemoteReplay(ros_node, layout, batch_size=8, embodiments=["ur5e"], prefetch=0)
    both = RemoteReplay(ros_node, layout, batch_size=32, window=5, prefetch=0, refresh_s=0.1)
    try:
        deadline = time.monotonic() + 20
        while len(a) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(a) == 20, a.stats()
        batch = a.sample(16)
        assert {k: v.shape for k, v in batch.items()} == {
            "state": (16, STATE_DIM), "next_state": (16, STATE_DIM), "action": (16, 7), "reward": (16,),
            "terminated": (16,)}
        assert batch["state"].dtype == np.float32
        assert np.all(batch["reward"] == 1.0), "robot_ids=['robot_a'] must only return robot_a's transitions"
        originals = {tuple(np.float32(t.obs.proprio)) for t in sent["robot_a"]}
        assert all(tuple(row) in originals for row in batch["state"]), "pixels/state must come back exactly"
        assert a.sample(5)["state"].shape == (5, STATE_DIM)   # another size: a direct call
        bb = b.sample(8)
        assert np.all(bb["reward"] == 2.0) and len(b) == 10
        assert len(both.sample(32)["reward"]) == 32 and len(both) == 30

        # A robot resending what the node holds already: acknowledged again, not stored again.
        acks.wait(lambda m: sum(len(x.steps) for x in m if x.robot_id == "robot_b") >= 10, 10, "robot_b's acks")
        for t in sent["robot_b"][:10]:
            pub.publish(t)
        acks.wait(lambda m: sum(len(x.steps) for x in m if x.robot_id == "robot_b") >= 20, 10,
                  "the resent transitions acknowledged")
        b.sample(8)
        assert len(b) == 10

        publish("robot_a", 3, range(15), reward=1.0)   # the node keeps its sources up to date
        deadline = time.monotonic() + 20
        while len(a) < 35 and time.monotonic() < deadline:
            a.sample(16)
        assert len(a) == 35, a.stats()
        # window=5 over everything: only the newest transitions (robot_a, published last).
        assert both.sample(32)["reward"].tolist() == [1.0] * 32
        assert len(both) == 45

        with RemoteReplay(ros_node, layout, batch_size=10, demo_ratio=0.5, prefetch=0) as mixed:
            rewards = mixed.sample(10)["reward"]
            assert sorted(rewards.tolist()).count(5.0) == 5, rewards
            assert mixed.stats()["demo_size"] == 12
        with RemoteReplay(ros_node, layout, batch_size=4, robot_ids=["nobody"]) as empty:
            with pytest.raises(RemoteSampleError, match="no transitions stored yet for robot_ids"):
                empty.sample(4)
        with RemoteReplay(ros_node, Layout(state_dim=3), batch_size=4) as wrong:
            with pytest.raises(LayoutMismatch, match="proprio has 20 values, layout expects 3"):
                wrong.sample(4)
        with pytest.raises(PermissionError, match="read-only"):
            a.add(transition_bytes("robot_a", 9, 0))
        with pytest.raises(ValueError, match="batch_size"):
            a.sample(0)
    finally:
        for r in (a, b, both):
            r.close()

    cli = ros_node.create_client(SampleBatch, "/user/buffer/sample")
    assert cli.wait_for_service(timeout_sec=10)
    for req, words in [
        (SampleBatch.Request(batch_size=0), "batch_size must be between 1 and 4096, got 0"),
        (SampleBatch.Request(batch_size=5000), "got 5000"),
        (SampleBatch.Request(batch_size=4, demo_ratio=1.5), "demo_ratio must be in [0, 1], got 1.5"),
    ]:
        fut = cli.call_async(req)
        end = time.monotonic() + 10
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.02)
        resp = fut.result()
        assert resp is not None and not resp.success and words in resp.message, (req, resp and resp.message)


def test_acknowledges_only_durable_transitions_and_durable_duplicates_at_once(procs, ros_node, tmp_path):
    start_buffer(procs, "buffer", tmp_path / "bag", sync_every_s=30.0)   # syncs only at episode ends here
    pub = ros_node.create_publisher(Transition, "/user/transitions", RELIABLE)
    acks = Collect(ros_node, TransitionAck, "/user/transitions/ack")
    end = time.monotonic() + 20
    while (pub.get_subscription_count() == 0 or ros_node.count_publishers("/user/transitions/ack") == 0) \
            and time.monotonic() < end:
        time.sleep(0.05)

    def steps(msgs) -> list[int]:
        return sorted(s for a in msgs for s in a.steps)

    def acked() -> list[int]:
        with acks.lock:
            return steps(acks.msgs)

    first = transition_msg("robot_a", 4, 0)
    pub.publish(first)
    pub.publish(first)               # resent before the first copy is durable: no ack yet either
    time.sleep(1.5)
    assert acked() == [], "nothing may be acknowledged before it is fsynced"
    pub.publish(transition_msg("robot_a", 4, 1, last=True))    # episode end: sync, then acks
    acks.wait(lambda m: len(steps(m)) >= 2, 10, "acks after the episode end")
    time.sleep(0.5)
    assert acked() == [0, 1], "each durable transition is acknowledged once"
    pub.publish(first)               # durable already: acknowledged at once
    acks.wait(lambda m: steps(m) == [0, 0, 1], 5, "the durable duplicate acknowledged")


def test_kill_9_recovers_the_bag_loses_nothing_acknowledged_and_stores_resends_once(procs, ros_node, tmp_path):
    bag = tmp_path / "bag"
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", QoSProfile(
        depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    acks = Collect(ros_node, TransitionAck, "/user/transitions/ack")
    first = start_buffer(procs, "buffer", bag)
    _robot, policy = start_robot(procs, tmp_path)
    beats.wait(lambda m: m and m[-1].episodes_done >= 2, 60, "2 episodes")
    acks.wait(lambda m: len(m) >= 2, 10, "acknowledgements")
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 1.5)
    print(f"kill -9 of the buffer node {delay:.3f} s after its first acknowledgements (seed {seed})")
    time.sleep(delay)   # a random moment: mid-chunk, between a chunk and its index, mid-fsync ...
    first.kill()   # SIGKILL, mid-run
    first.popen.wait(timeout=5)
    with acks.lock:
        acked_before = {(a.robot_id, e, s) for a in acks.msgs for e, s in zip(a.episode_ids, a.steps)}
    assert acked_before, "the first buffer acknowledged nothing before it was killed"
    # The robot keeps going and holds what nobody acknowledges.
    beats.wait(lambda m: m and m[-1].unacked_transitions >= 20, 20, "unacknowledged transitions piling up")
    episodes_at_restart = beats.msgs[-1].episodes_done

    second = start_buffer(procs, "buffer2", bag)
    assert "not closed by its writer" in second.output(), second.output()[-2000:]
    beats.wait(lambda m: m and m[-1].episodes_done >= episodes_at_restart + 2, 60, "2 more episodes")
    final = drain(policy, beats)
    code, out = stop(second)
    assert code == 0 and "closed bag" in out, out[-2000:]
    assert final.dropped_transitions == 0

    with acks.lock:
        acked = {(a.robot_id, e, s) for a in acks.msgs for e, s in zip(a.episode_ids, a.steps)}
        sessions = {a.session for a in acks.msgs}
    assert len(sessions) == 2, "each buffer process acknowledges under its own session"
    store = TransitionStore(bag, writable=False)
    try:
        assert not store.problems, store.problems
        v = store.snapshot()
        stored = set(zip((store.robots[r] for r in v["robot"].tolist()), v["episode"].tolist(), v["step"].tolist()))
        missing = acked_before - stored
        assert not missing, f"{len(missing)} acknowledged transitions are missing after kill -9: {sorted(missing)[:5]}"
        # (Acks sent before this process matched the new buffer's publisher are not seen here.)
        assert acked <= stored, "everything acknowledged must be in the bag"
        assert len(store) == final.steps_done, "every executed step must be in the bag"
        assert len(check_episodes(store)) == final.episodes_done
    finally:
        store.close()
    keys = mcap_keys(bag)
    assert len(keys) == len(set(keys)) == final.steps_done, "resent transitions must be stored once"
    stored = assert_every_reader_sees_the_store(bag)   # the repaired file too: rosbags and Foxglove's reader
    assert acked <= stored, f"kill after {delay:.3f} s (seed {seed}): a reader misses acknowledged transitions"


@pytest.mark.parametrize("params, words", [
    ({}, "bag_dir: no bag directory given"),
    ({"bag_dir": "BAG", "chunk_mb": -1}, "chunk_mb: must be > 0, got -1"),
    ({"bag_dir": "BAG", "compression": "gzip"}, "compression: must be zstd, lz4 or none, got 'gzip'"),
    ({"bag_dir": "BAG", "demo_dir": "NOWHERE"}, "demo_dir: no bag directory"),
    ({"bag_dir": "LOCKED"}, "another process is writing this bag"),
])
def test_bad_parameters_exit_2_with_one_clear_line(procs, tmp_path, params, words):
    locked = None
    if params.get("bag_dir") == "LOCKED":
        locked = TransitionStore(tmp_path / "locked")   # this process holds the bag's write lock
    params = {k: {"BAG": tmp_path / "bag", "NOWHERE": tmp_path / "nowhere", "LOCKED": tmp_path / "locked"}.get(v, v)
              for k, v in params.items()}
    try:
        p = procs.start("buffer", buffer_cmd(**params))
        code = p.popen.wait(timeout=30)
    finally:
        if locked is not None:
            locked.close()
    out = p.output()
    assert code == 2 and words in out, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
