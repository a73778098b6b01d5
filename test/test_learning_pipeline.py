"""The learning graph as real processes: async and sync runs, and the two fault drills of the
asynchronous design (kill -9 of the learner, kill -9 of the inference node)."""
from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from user_msgs.msg import EpisodeStats, Observation, RobotStatus, Transition, TransitionAck

from user_buffer.store import TransitionStore

from hal_helpers import ROOT, Collect, learning_config_dir as config_dir, userctl_cmd

sys.path.insert(0, str(ROOT / "src" / "user_buffer" / "test"))
from bag_readers import assert_every_reader_sees_the_store  # noqa: E402

pytestmark = pytest.mark.timeout(300)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def launch(procs, tmp_path: Path, cfg_dir: Path, *args: str):
    return procs.start("userctl", userctl_cmd("launch", str(cfg_dir / "franka_sac.yaml"), "run_name:=test", *args))



def started_pid(proc, label: str) -> int:
    found = re.findall(rf"started {re.escape(label)} \(pid (\d+)\)", proc.output())
    assert found, f"{label} was not started:\n{proc.output()[-2000:]}"
    return int(found[-1])


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the learner writes runs/ and logs/ relative to the working directory
    return tmp_path


def test_async_run_trains_publishes_and_checkpoints(procs, ros_node, in_tmp):
    cfg = config_dir(in_tmp)
    transitions = Collect(ros_node, Transition, "/user/transitions")
    run = launch(procs, in_tmp, cfg, "realtime_factor:=0", "max_env_steps:=400")
    assert run.popen.wait(timeout=240) == 0, run.output()[-3000:]
    out = run.output()
    assert "node user/learner finished (code 0); stopping the run" in out
    summary = re.search(r"summary: (\d+) env steps, (\d+) updates", out)
    assert summary and int(summary.group(1)) >= 400 and int(summary.group(2)) > 0, out[-3000:]
    versions = {t.policy_version for t in transitions.msgs}
    assert max(versions) > 1, f"robots never acted with learned weights: versions {sorted(versions)}"
    ckpts = sorted((in_tmp / "runs/test/checkpoints").glob("ckpt_*.pt"))
    assert ckpts, "no checkpoint written"
    assert list((in_tmp / "logs/test").glob("events.out.tfevents.*")), "no TensorBoard log"
    assert re.search(r"episodes \d+, success \d+% \(last \d+\).*updates \d+ \([\d.]+/s\).*weights v\d+", out)
    # The run's replay bag opens with independent readers and holds what the robots produced.
    from mcap.reader import make_reader
    from rosbags.rosbag2 import Reader

    bag = in_tmp / "runs/test/replay"
    with Reader(bag) as r:
        assert r.message_count >= 400 and [c.topic for c in r.connections] == ["/user/transitions"]
    stored = set()
    for f in sorted(bag.glob("*.mcap")):
        with open(f, "rb") as fh:
            for _, _, m in make_reader(fh).iter_messages():
                t = deserialize_message(m.data, Transition)
                stored.add((t.robot_id, t.episode_id, t.step))
    produced = {(t.robot_id, t.episode_id, t.step) for t in transitions.msgs}
    # At realtime_factor 0 the robot may publish before this test's subscription is matched: compare
    # the episodes the test saw from their first step.
    whole = {(r, e) for r, e, step in produced if step == 0}
    assert len(whole) >= 2, f"the test saw no whole episodes: {sorted(whole)}"
    assert len(stored) >= 400 and {k for k in stored if k[:2] in whole} <= produced


@pytest.mark.parametrize("kind", ["memory", "remote"])
def test_the_other_replay_kinds_train_through_the_graph(procs, ros_node, in_tmp, kind):
    """replay.kind memory (a RAM ring, acknowledged once checkpointed) and remote (buffer:=true: a buffer
    node records and acknowledges, the learner samples batches from it and receives no transitions)."""
    import yaml

    cfg = config_dir(in_tmp)
    args = ["realtime_factor:=0", "max_env_steps:=250"]
    if kind == "memory":
        path = cfg / "sac_peg.yaml"
        data = yaml.safe_load(path.read_text())
        data["replay"] = {"kind": "memory"}
        path.write_text(yaml.safe_dump(data))
    else:
        args.append("buffer:=true")
    transitions = Collect(ros_node, Transition, "/user/transitions")
    run = launch(procs, in_tmp, cfg, *args)
    assert run.popen.wait(timeout=240) == 0, run.output()[-3000:]
    out = run.output()
    summary = re.search(r"summary: (\d+) env steps, (\d+) updates", out)
    assert summary and int(summary.group(1)) >= 250 and int(summary.group(2)) > 0, out[-3000:]
    where = {"memory": "replay in memory", "remote": "replay of a buffer node"}[kind]
    assert where in out, out[-3000:]
    assert max(t.policy_version for t in transitions.msgs) > 1, "the robot never acted with learned weights"
    if kind == "remote":   # the buffer node's bag holds what the robot produced
        stored = assert_every_reader_sees_the_store(in_tmp / "runs/test/replay")
        assert len(stored) >= 250


def test_a_config_that_does_not_fit_the_robot_is_refused_naming_both_sides(procs, in_tmp):
    import yaml

    cfg = config_dir(in_tmp)
    path = cfg / "sac_peg.yaml"
    data = yaml.safe_load(path.read_text())
    data["obs"].update(state_dim=19, state_offset=[], state_scale=[])
    path.write_text(yaml.safe_dump(data))
    run = launch(procs, in_tmp, cfg, "realtime_factor:=0")
    assert run.popen.wait(timeout=120) == 2, run.output()[-3000:]
    out = run.output()
    assert "node franka_0/inference refused its configuration (code 2); stopping the run" in out, out[-3000:]
    assert (f"{path}: obs: the policy (state_dim 19, 7 actions, no cameras) cannot serve robot franka_0 "
            f"(franka_fr3): it publishes 20 proprio values (tcp_x") in out, out[-3000:]
    assert "the policy takes state_dim 19" in out


def test_sync_run_alternates_and_goes_on_after_the_learner_dies_while_a_robot_waits_for_its_reset(
        procs, ros_node, in_tmp):
    """Sync mode: every episode runs with one policy version, newer than the previous one's once training
    started. The episode end the dead learner had queued is gone; the new learner sees the waiting robot."""
    cfg = config_dir(in_tmp, sync_updates_per_episode=400, min_buffer=30)   # a second or more of training per episode
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    episodes = Collect(ros_node, EpisodeStats, "/user/episodes")
    transitions = Collect(ros_node, Transition, "/user/transitions")
    run = launch(procs, in_tmp, cfg, "realtime_factor:=0", "sync:=true", "max_env_steps:=120", "respawn_delay:=1.0")
    episodes.wait(lambda m: len(m) >= 2, 120, "2 episodes")
    # Killed once everything is acknowledged: no resent episode end can tell the new learner.
    beats.wait(lambda m: m and m[-1].state == RobotStatus.STATE_IDLE and m[-1].unacked_transitions == 0, 60,
               "the robot waiting for its reset, every transition acknowledged")
    os.killpg(started_pid(run, "user/learner"), signal.SIGKILL)
    killed = time.time()
    beats.wait(lambda m: m[-1].header.stamp.sec + m[-1].header.stamp.nanosec * 1e-9 > killed + 0.5, 5,
               "a heartbeat after the kill")
    assert beats.msgs[-1].state == RobotStatus.STATE_IDLE, "the kill must catch the robot waiting for its reset"
    n = len(episodes.msgs)
    by_episode: dict[int, set[int]] = {}
    for t in transitions.msgs:
        by_episode.setdefault(t.episode_id, set()).add(t.policy_version)
    assert all(len(v) == 1 for v in by_episode.values()), f"versions changed within an episode: {by_episode}"
    seq = [next(iter(by_episode[e.episode_id])) for e in episodes.msgs[:n]]
    assert seq == sorted(seq) and seq[-1] > seq[0], f"versions per episode: {seq}"
    run.wait_for(r"node user/learner crashed \(signal SIGKILL\); respawning", 10)
    episodes.wait(lambda m: len(m) >= n + 1, 90, "an episode after the learner's restart")
    assert run.popen.wait(timeout=240) == 0, run.output()[-3000:]
    assert "learner (sync)" in run.output()


def test_kill_learner_robots_keep_going_no_transition_lost_and_resume(procs, ros_node, in_tmp):
    cfg = config_dir(in_tmp, checkpoint_every_updates=50)
    transitions = Collect(ros_node, Transition, "/user/transitions")
    episodes = Collect(ros_node, EpisodeStats, "/user/episodes")
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    acks = Collect(ros_node, TransitionAck, "/user/transitions/ack")
    run = launch(procs, in_tmp, cfg, "realtime_factor:=0", "max_env_steps:=600", "respawn_delay:=3.0")
    ckpt_dir = in_tmp / "runs/test/checkpoints"
    end = time.monotonic() + 120
    while not list(ckpt_dir.glob("ckpt_*.pt")) and time.monotonic() < end:
        time.sleep(0.2)
    assert list(ckpt_dir.glob("ckpt_*.pt")), "learner wrote no checkpoint"
    learner_pid = started_pid(run, "user/learner")
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 2.0)
    print(f"kill -9 of the learner {delay:.3f} s after its first checkpoint (seed {seed})")
    time.sleep(delay)   # a random moment of recording: mid-chunk, between a chunk and its index, mid-fsync ...
    with acks.lock:
        acked_before = {(a.robot_id, e, s) for a in acks.msgs for e, s in zip(a.episode_ids, a.steps)}
    os.killpg(learner_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    n_episodes = len(episodes.msgs)
    run.wait_for(r"node user/learner crashed \(signal SIGKILL\); respawning", 10)
    # Robots keep running on the last weights while the learner is gone.
    episodes.wait(lambda m: len(m) >= n_episodes + 2, 30, "episodes while the learner is down")
    with beats.lock:
        held = max(b.unacked_transitions for b in beats.msgs if b.header.stamp.sec >= 0)
    assert held > 0, "robots must hold the transitions the dead learner did not acknowledge"
    run.wait_for(r"resumed from .*ckpt_\d+\.pt", 60)
    assert time.monotonic() - killed_at >= 3.0
    assert run.popen.wait(timeout=240) == 0, run.output()[-3000:]
    # The learner's replay bag (runs/<run>/replay) holds every transition the robot produced up to the
    # newest one stored: the ones in flight at the kill were resent and stored after the restart.
    bag = TransitionStore(in_tmp / "runs/test/replay", writable=False)
    assert not bag.problems, bag.problems   # closed cleanly at the end; the kill's partial file repaired
    v = bag.snapshot()
    stored_by_robot: dict[str, set] = {}
    for r, e, st in zip(v["robot"].tolist(), v["episode"].tolist(), v["step"].tolist()):
        stored_by_robot.setdefault(bag.robots[r], set()).add((e, st))
    bag.close()
    assert stored_by_robot, "nothing stored in the replay bag"
    for rid, stored in stored_by_robot.items():
        last = max(stored)
        produced = {(t.episode_id, t.step) for t in transitions.msgs if t.robot_id == rid}
        missing = sorted(k for k in produced if k <= last and k not in stored)
        assert not missing, f"{len(missing)} transitions of {rid} lost: {missing[:5]}"
    total = sum(len(s) for s in stored_by_robot.values())
    assert total >= 600, f"the run's budget was 600 new transitions, the bag holds {total}"
    # Every file, the one the kill cut and the learner repaired included, reads in full with rosbags and
    # Foxglove's indexed reader, and holds what was acknowledged before the kill.
    read = assert_every_reader_sees_the_store(in_tmp / "runs/test/replay")
    assert acked_before and acked_before <= read, (
        f"kill after {delay:.3f} s (seed {seed}): acknowledged transitions missing {sorted(acked_before - read)[:5]}")
    with beats.lock:
        assert all(b.dropped_transitions == 0 for b in beats.msgs)


def test_kill_inference_robot_holds_then_resumes(procs, ros_node, in_tmp):
    cfg = config_dir(in_tmp)
    obs = Collect(ros_node, Observation, "/franka_0/observation", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    # respawn after 8 s: a reset right at the kill can take seconds on a loaded machine, and the held
    # observations judged below must come before the new inference node is up
    run = launch(procs, in_tmp, cfg, "realtime_factor:=1.0", "respawn_delay:=8.0")
    obs.wait(lambda m: len(m) > 30 and m[-1].step > 5, 90, "the robot acting")
    os.killpg(started_pid(run, "franka_0/inference"), signal.SIGKILL)
    killed = time.monotonic()
    grace_end = time.time() + 0.2  # two control periods

    def stamp(m) -> float:
        return m.header.stamp.sec + m.header.stamp.nanosec * 1e-9

    # Judge by the robot's own stamps, not by when this process got around to reading them.
    obs.wait(lambda m: sum(stamp(x) > grace_end for x in m) >= 8, 10, "observations after the kill")
    with obs.lock:
        tail = [m for m in obs.msgs if stamp(m) > grace_end][:8]
    assert len({(m.episode_id, m.step) for m in tail}) == 1, "the robot kept stepping without inference"
    pos = np.array([m.proprio[:3] for m in tail])
    assert np.ptp(pos, axis=0).max() < 0.002, f"the robot moved while holding: {np.ptp(pos, axis=0)}"
    run.wait_for(r"started franka_0/inference \(pid \d+\).*\n(.*\n)*.*inference for franka_0", 30)
    held_key = (tail[-1].episode_id, tail[-1].step)
    obs.wait(lambda m: m[-1].episode_id != held_key[0] or m[-1].step > held_key[1] + 3, 30,
             "the robot acting again after inference returned")
    assert time.monotonic() - killed > 3.0


def test_one_graph_split_over_two_launchers_trains(procs, ros_node, in_tmp):
    """The robot PC runs the robots (--skip), the GPU box the learner and inference (--only), on one
    ROS domain: together they train as the whole graph does."""
    cfg = config_dir(in_tmp)
    transitions = Collect(ros_node, Transition, "/user/transitions")
    graph = str(cfg / "franka_sac.yaml")
    edge = procs.start("edge", userctl_cmd("launch", graph, "run_name:=test", "realtime_factor:=0",
                                           "--skip", "user/learner,*/inference"))
    gpu = procs.start("gpu", userctl_cmd("launch", graph, "run_name:=test", "realtime_factor:=0", "max_env_steps:=300",
                                         "--only", "user/learner,*/inference"))
    assert gpu.popen.wait(timeout=240) == 0, gpu.output()[-3000:]
    assert "node user/learner finished (code 0); stopping the run" in gpu.output()
    started = lambda proc: set(re.findall(r"started (\S+) \(pid", proc.output()))  # noqa: E731
    assert started(gpu) == {"user/learner", "franka_0/inference"}, started(gpu)
    assert started(edge) == {"user/registry", "franka_0/robot"}, started(edge)
    summary = re.search(r"summary: (\d+) env steps, (\d+) updates", gpu.output())
    assert summary and int(summary.group(1)) >= 300 and int(summary.group(2)) > 0, gpu.output()[-3000:]
    assert max(t.policy_version for t in transitions.msgs) > 1, "the robots never acted with learned weights"
    assert edge.popen.poll() is None, "the robot side keeps running (holding) without the learner"
    edge.popen.send_signal(signal.SIGINT)
    assert edge.popen.wait(timeout=30) == 130
