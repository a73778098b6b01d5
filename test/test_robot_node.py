"""The robot node as a real process on DDS: end-to-end loop, bad input, watchdog, bad config."""
import time

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from user_msgs.msg import Action, EpisodeStats, Observation, RobotDescription, RobotStatus
from user_msgs.srv import ResetRobot

from hal_helpers import ROOT, Collect, node_cmd, profile_with, wait_subscribed
from hal_helpers import drive as drive_robot

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)



def start_robot(procs, tmp_path, rf=1.0, episodes=0, **profile_changes):
    prof = profile_with(tmp_path, **{"robot.cameras": [], **profile_changes})
    return procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": rf, "max_episodes": episodes}))


def test_scripted_policy_drives_the_robot_node_end_to_end(procs, ros_node, tmp_path):
    episodes = Collect(ros_node, EpisodeStats, "/user/episodes")
    prof = profile_with(tmp_path, **{"robot.cameras": ["wrist"]})
    robot = procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0, "max_episodes": 3}))
    # Episodes take a fraction of a second at realtime_factor 0: the first must not beat discovery.
    episodes.wait_matched(60)
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    episodes.wait(lambda m: len(m) >= 3, 120, "3 episodes")
    assert robot.popen.wait(timeout=20) == 0, robot.output()[-2000:]
    assert all(e.robot_id == "franka_0" and e.steps > 0 for e in episodes.msgs)
    assert sum(e.success for e in episodes.msgs) >= 2, [(e.success, e.steps) for e in episodes.msgs]
    assert len({e.episode_id for e in episodes.msgs}) == 3, "episode ids must be unique"
    out = robot.output()
    assert "episode 0:" in out and "done: 3 episodes" in out


def test_scripted_policy_does_pick_and_place_through_the_robot_node(procs, ros_node, tmp_path):
    """The pick-and-place profile: observations carry the cube's pose and the scripted expert uses it."""
    episodes = Collect(ros_node, EpisodeStats, "/user/episodes")
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    desc = Collect(ros_node, RobotDescription, "/user/robots/description", LATCHED)
    prof = profile_with(tmp_path, base=ROOT / "config" / "robot_sim_pick.yaml", **{"robot.cameras": []})
    robot = procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0, "max_episodes": 1}))
    episodes.wait_matched(60)
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    episodes.wait(lambda m: len(m) >= 1, 120, "an episode")
    assert robot.popen.wait(timeout=20) == 0, robot.output()[-2000:]
    assert all(e.success for e in episodes.msgs), [(e.success, e.steps) for e in episodes.msgs]
    assert len(obs.msgs[-1].proprio) == 27, "20 proprio values + the cube's pose (x, y, z, qx, qy, qz, qw)"
    d = desc.wait(lambda m: len(m) > 0, 10, "the robot description")
    assert (d.task, d.instruction) == ("pick_place", "put the cube in the right bin")
    assert list(d.proprio_names[-7:]) == ["cube_x", "cube_y", "cube_z", "cube_qx", "cube_qy", "cube_qz", "cube_qw"]


def _current_obs(obs_watch, timeout=10.0) -> Observation:
    return obs_watch.wait(lambda m: len(m) > 0, timeout, "an observation")


@pytest.mark.parametrize("bad, words", [
    ({"action": [0.0, 0.0, 1.0]}, "action has 3 values, expected 7"),
    ({"action": [1.0, 0, float("nan"), 0, 0, 0, 0]}, "NaN or inf in dz"),
    ({"action": [1.0, 0, 0, float("inf"), 0, 0, 0]}, "NaN or inf in droll"),
    ({"robot_id": "franka_9", "action": [1.0, 0, 0, 0, 0, 0, 0]}, "unknown robot 'franka_9'"),
])
def test_bad_action_is_rejected_with_one_line_and_the_robot_holds(procs, ros_node, tmp_path, bad, words):
    robot = start_robot(procs, tmp_path)
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    first = _current_obs(obs, 30)
    start_pos = np.array(first.proprio[:3])
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # answer every observation with the bad action for 3 s
        o = obs.msgs[-1]
        a = Action(robot_id="franka_0", episode_id=o.episode_id, step=o.step, source=Action.SOURCE_POLICY)
        for k, v in bad.items():
            setattr(a, k, v)
        pub.publish(a)
        time.sleep(0.05)
    robot.wait_for(words, 5)
    last = obs.msgs[-1]
    assert last.step == first.step, "a rejected action must not advance the episode"
    assert np.linalg.norm(np.array(last.proprio[:3]) - start_pos) < 0.002, "robot moved on a rejected action"
    beats.wait(lambda m: m and m[-1].rejected_actions > 0, 5, "rejected_actions in the heartbeat")
    lines = [ln for ln in robot.output().splitlines() if "rejected action" in ln]
    assert 1 <= len(lines) <= 4, f"rejections must be logged one clear line at a time (throttled), got {lines}"


def test_watchdog_holds_pose_when_actions_stop(procs, ros_node, tmp_path):
    start_robot(procs, tmp_path)
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    _current_obs(obs, 30)
    wait_subscribed(pub)
    o = drive_robot(obs, pub, lambda o: Action(robot_id="franka_0", episode_id=o.episode_id, step=o.step,
                                               action=[0.0, 0.5, 0, 0, 0, 0, -1.0], source=Action.SOURCE_POLICY),
                    5, 20.0)   # push +y for 5 steps, answering every observation
    assert o.step >= 5
    n_at_stop = len(obs.msgs)
    time.sleep(1.5)
    held = list(obs.msgs)[n_at_stop + 2:]  # two control periods of grace, then the robot must hold
    assert len(held) >= 8, f"only {len(held)} observations while holding for 1.5 s at 10 Hz"
    ys = [m.proprio[1] for m in held]
    assert max(ys) - min(ys) < 0.002, f"TCP kept moving after the actions stopped: y={ys}"
    assert all(m.step == held[0].step for m in held), "held observations must keep the step index"


def test_reset_service_starts_a_new_episode(procs, ros_node, tmp_path):
    start_robot(procs, tmp_path, rf=0.0)
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    first = _current_obs(obs, 30)
    cli = ros_node.create_client(ResetRobot, "/franka_0/reset")
    assert cli.wait_for_service(timeout_sec=10), "reset service not available"
    fut = cli.call_async(ResetRobot.Request(robot_id="franka_0", seed=5))
    end = time.monotonic() + 30
    while not fut.done() and time.monotonic() < end:
        time.sleep(0.05)
    resp = fut.result()
    assert resp is not None and resp.success, resp
    assert resp.episode_id != first.episode_id
    obs.wait(lambda m: m[-1].episode_id == resp.episode_id and m[-1].step == 0, 10, "an observation of the new episode")


def test_malformed_profile_exits_nonzero_naming_file_and_key(procs, tmp_path):
    robot = start_robot(procs, tmp_path, **{"robot.control_hz": -5})
    code = robot.popen.wait(timeout=30)
    assert code != 0
    out = robot.output()
    assert "robot_test.yaml" in out and "robot.control_hz" in out and "must be > 0" in out, out[-2000:]
    assert "Traceback" not in out, "a config error must be one clear line, not a traceback"


def test_unknown_backend_exits_nonzero_naming_the_key(procs, tmp_path):
    robot = start_robot(procs, tmp_path, **{"robot.backend": "warp_drive"})
    assert robot.popen.wait(timeout=30) != 0
    out = robot.output()
    assert "robot.backend" in out and "warp_drive" in out, out[-2000:]


def test_transitions_are_held_until_acknowledged_and_resent_to_a_late_consumer(procs, ros_node, tmp_path):
    """With ack_consumers, nothing produced while no consumer listens is lost: it is resent."""
    prof = profile_with(tmp_path, **{"robot.cameras": []})
    procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0,
        "ack_consumers": "[learner]"}))
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    beats.wait(lambda m: m and m[-1].unacked_transitions >= 20, 60, "20 unacknowledged transitions")
    episodes_before = beats.msgs[-1].episodes_done
    assert episodes_before >= 1

    from user_msgs.msg import Transition, TransitionAck

    ack_pub = ros_node.create_publisher(TransitionAck, "/user/transitions/ack", RELIABLE)
    got = Collect(ros_node, Transition, "/user/transitions", QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
    end = time.monotonic() + 30
    acked = 0
    while time.monotonic() < end:
        with got.lock:
            new = got.msgs[acked:]
        if new:
            ack_pub.publish(TransitionAck(consumer="learner", session=1, robot_id="franka_0",
                                          episode_ids=[t.episode_id for t in new], steps=[t.step for t in new]))
            acked += len(new)
        if beats.msgs[-1].unacked_transitions < 5 and beats.msgs[-1].episodes_done > episodes_before + 1:
            break
        time.sleep(0.2)
    keys = {(t.episode_id, t.step) for t in got.msgs}
    by_episode = {}
    for ep, step in keys:
        by_episode.setdefault(ep, set()).add(step)
    complete = [ep for ep, steps in by_episode.items() if steps == set(range(max(steps) + 1))]
    assert len(complete) >= episodes_before + 1, (
        f"episodes from before the consumer appeared must arrive whole; got steps per episode "
        f"{ {ep: sorted(s) for ep, s in by_episode.items()} }")
    assert beats.msgs[-1].unacked_transitions < 20, "acknowledged transitions must be released"
    assert beats.msgs[-1].dropped_transitions == 0


def test_with_wait_for_reset_the_robot_waits_for_the_reset_service(procs, ros_node, tmp_path):
    # Episode stats are volatile: a fast lockstep episode can end before this process's subscription
    # is matched, so count episodes with the latched heartbeat and use the stats topic only after it.
    episodes = Collect(ros_node, EpisodeStats, "/user/episodes")
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    prof = profile_with(tmp_path, **{"robot.cameras": []})
    procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0, "wait_for_reset": True}))
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    beats.wait(lambda m: m and m[-1].state == RobotStatus.STATE_IDLE and m[-1].episodes_done == 1, 90,
               "the robot idle after its first episode")
    seen = len(episodes.msgs)
    time.sleep(1.5)
    assert beats.msgs[-1].episodes_done == 1 and beats.msgs[-1].state == RobotStatus.STATE_IDLE, (
        "the robot must not start another episode on its own")
    assert len(episodes.msgs) == seen
    cli = ros_node.create_client(ResetRobot, "/franka_0/reset")
    assert cli.wait_for_service(timeout_sec=10)
    fut = cli.call_async(ResetRobot.Request(robot_id="franka_0"))
    end = time.monotonic() + 30
    while not fut.done() and time.monotonic() < end:
        time.sleep(0.05)
    assert fut.result() is not None and fut.result().success
    episodes.wait(lambda m: len(m) >= seen + 1, 60, "a second episode after the reset")
    beats.wait(lambda m: m[-1].episodes_done == 2 and m[-1].state == RobotStatus.STATE_IDLE, 10,
               "the robot idle again after the second episode")


def test_ctrl_c_stops_the_robot_node_cleanly(procs, ros_node, tmp_path):
    import signal

    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    robot = start_robot(procs, tmp_path, **{"robot.cameras": ["wrist", "side"]})
    beats.wait(lambda m: any(b.state == RobotStatus.STATE_RUNNING for b in m), 60, "the robot running")
    robot.wait_for("realtime_factor", timeout=30)   # the control loop runs
    time.sleep(2.0)
    robot.popen.send_signal(signal.SIGINT)
    assert robot.popen.wait(timeout=20) == 0
    out = robot.output()
    assert "Traceback" not in out, out[-2000:]


@pytest.mark.parametrize("success", [True, False])
def test_a_success_label_terminates_and_a_failure_label_truncates(procs, ros_node, tmp_path, success):
    """Where a human gives up is no end state: the critic must bootstrap there (truncated, not terminated)."""
    from std_srvs.srv import SetBool
    from user_msgs.msg import Transition

    start_robot(procs, tmp_path, rf=1.0, **{"task.terminate_on_success": False})
    trans = Collect(ros_node, Transition, "/user/transitions", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)
    first = _current_obs(obs, 30)

    def act() -> None:
        o = obs.msgs[-1]
        pub.publish(Action(robot_id="franka_0", episode_id=o.episode_id, step=o.step, source=Action.SOURCE_POLICY,
                           action=[0.0] * 6 + [-1.0]))

    trans.wait_matched(30)
    end = time.monotonic() + 30
    while len(trans.msgs) < 3 and time.monotonic() < end:
        act()
        time.sleep(0.05)
    cli = ros_node.create_client(SetBool, "/franka_0/label_episode")
    assert cli.wait_for_service(timeout_sec=10)
    fut = cli.call_async(SetBool.Request(data=success))
    end = time.monotonic() + 15
    while not fut.done() and time.monotonic() < end:
        act()
        time.sleep(0.05)
    assert fut.done() and fut.result().success, fut.result() and fut.result().message
    trans.wait(lambda m: any(t.episode_id == first.episode_id and (t.terminated or t.truncated) for t in m),
               10, "the labelled episode's last transition")
    with trans.lock:
        (t,) = [t for t in trans.msgs if t.episode_id == first.episode_id and (t.terminated or t.truncated)]
    assert (t.success, t.terminated, t.truncated) == (success, success, not success), (
        f"label {success}: success {t.success}, terminated {t.terminated}, truncated {t.truncated}")


def test_an_outbox_past_its_ram_budget_spools_to_disk_and_resends_from_there(procs, ros_node, tmp_path):
    """outbox_max_mb 0 and nobody acknowledging: every transition but the newest goes to the spool file,
    none is dropped; once acknowledged, the robot releases them and empties the file."""
    from user_msgs.msg import Transition, TransitionAck

    prof = profile_with(tmp_path, **{"robot.cameras": []})
    spool_dir = tmp_path / "spool"
    transitions = Collect(ros_node, Transition, "/user/transitions")
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat")
    robot = procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0, "ack_consumers": "[learner]",
        "outbox_max_mb": 0, "outbox_spool_dir": str(spool_dir)}))
    transitions.wait_matched(60)
    policy = procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    beats.wait(lambda m: m and m[-1].unacked_transitions >= 60, 60, "60 unacknowledged transitions")
    files = list(spool_dir.glob("franka_0-*.bin"))
    assert len(files) == 1 and files[0].stat().st_size > 0, files
    # resends come back (from the file) while a reader is on the topic
    with transitions.lock:
        first = {(t.episode_id, t.step) for t in transitions.msgs[:30]}
    n = len(transitions.msgs)
    transitions.wait(lambda m: first & {(t.episode_id, t.step) for t in m[n:]}, 20, "resent transitions")
    policy.popen.terminate()   # the robot holds: nothing new
    policy.popen.wait(timeout=10)
    time.sleep(0.5)
    acks = ros_node.create_publisher(TransitionAck, "/user/transitions/ack", RELIABLE)
    end = time.monotonic() + 60
    while time.monotonic() < end:   # acknowledge everything seen so far, again and again, as a learner would
        with transitions.lock:
            keys = sorted({(t.episode_id, t.step) for t in transitions.msgs})
        acks.publish(TransitionAck(consumer="learner", robot_id="franka_0", episode_ids=[k[0] for k in keys],
                                   steps=[k[1] for k in keys]))
        time.sleep(0.3)
        if beats.msgs[-1].unacked_transitions == 0 and files[0].stat().st_size == 0:
            break
    b = beats.msgs[-1]
    assert all(x.dropped_transitions == 0 for x in beats.msgs), "nothing may be dropped with a spool"
    assert b.unacked_transitions == 0, f"{b.unacked_transitions} still unacknowledged"
    assert files[0].stat().st_size == 0, "an emptied spool truncates its file"
    robot.popen.send_signal(2)
    robot.popen.wait(timeout=20)
    assert not files[0].exists(), "the spool file goes with its robot node"
