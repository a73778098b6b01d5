"""Human intervention end to end on DDS: robot node + a policy + teleop node (Joy topic mode) + the
scripted expert playing a human at a SpaceMouse on /spacenav/joy.

The "policy" is this test process: it answers every observation with a constant, failing action
(slowly up, SOURCE_POLICY, policy_version 7). The scripted human moves the puck at steps 5-12,
rests, and takes over again from step 40 until it sees the peg inserted, then presses the success
button. The profile does not end episodes on success: only the label can.
"""
import time
from pathlib import Path

import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Joy
from user_msgs.msg import Action, EpisodeStats, Observation, RobotStatus, Transition

from hal_helpers import Collect, node_cmd, profile_with

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
DATA = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
HOLD_S = 1.0                 # teleop hold_s
ROBOT_HOLD_S = 0.5           # robot.intervention_hold_s (config/robot_sim.yaml)
POLICY_VERSION = 7
POLICY_ACTION = [0.0, 0.0, 0.25, 0.0, 0.0, 0.0, -1.0]   # up 5 mm per step: away from the hole


def teleop_cmd(params: dict) -> list[str]:
    """The installed ``teleop_node`` executable; ``python -m`` while the workspace is not rebuilt yet."""
    cmd = node_cmd("teleop_node", params)
    if not Path(cmd[0]).exists():
        import sys

        cmd = [sys.executable, "-m", "user_hal.teleop_node", *cmd[1:]]
    return cmd


def stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def run_with_human(procs, ros_node, tmp_path, max_steps: int, act, human: dict):
    """One episode (success does not end it) of a robot node whose policy is ``act(observation) -> action``
    (SOURCE_POLICY, POLICY_VERSION), with the teleop node on /spacenav/joy and the scripted expert as the
    human (``scripted_policy`` with ``as_human`` and the parameters ``human``).

    Returns ``(episode stats, its transitions by step, "H."-table, collectors, robot and teleop processes)``."""
    prof = profile_with(tmp_path, **{"robot.cameras": [], "task.terminate_on_success": False,
                                     "robot.max_episode_steps": max_steps})
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)

    def policy(o: Observation) -> None:   # the inference node: answers every observation
        pub.publish(Action(robot_id="franka_0", episode_id=o.episode_id, step=o.step, action=list(act(o)),
                           policy_version=POLICY_VERSION, source=Action.SOURCE_POLICY))

    Collect(ros_node, Observation, "/franka_0/observation", QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE),
            on_msg=policy)
    got = {"trans": Collect(ros_node, Transition, "/user/transitions", DATA),
           "episodes": Collect(ros_node, EpisodeStats, "/user/episodes", DATA),
           "joys": Collect(ros_node, Joy, "/spacenav/joy", RELIABLE),
           "actions": Collect(ros_node, Action, "/franka_0/action", RELIABLE),
           "beats": Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)}
    robot = procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 1.0}))
    teleop = procs.start("teleop", teleop_cmd({
        "robot_id": "franka_0", "input": "joy", "hold_s": HOLD_S, "success_button": 1, "open_button": -1}))
    procs.start("human", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof), "as_human": True,
                                                       **human}))
    got["episodes"].wait(lambda m: len(m) >= 1, 80, "the first episode to end")
    ep = got["episodes"].msgs[0]
    time.sleep(0.3)  # the last transitions
    with got["trans"].lock:
        steps = sorted([m for m in got["trans"].msgs if m.episode_id == ep.episode_id], key=lambda m: m.step)
    table = "".join("H" if m.intervened else "." for m in steps)
    return ep, steps, table, got, robot, teleop


def test_human_intervention_overrides_the_policy_and_labels_the_episode(procs, ros_node, tmp_path):
    ep, steps, table, got, robot, teleop = run_with_human(
        procs, ros_node, tmp_path, 150, lambda o: POLICY_ACTION,   # fails: lifts the peg
        {"human_steps": "5-12,40-", "success_button": 1})
    joys, actions, beats = got["joys"], got["actions"], got["beats"]
    info = f"steps (H = intervened) {table}, held {ep.held_steps}"

    # The label ended the episode as a success (the rule reward alone never ends it here).
    assert ep.success, f"episode not labelled a success: {ep}; {info}"
    assert ep.steps < 150 and steps[-1].terminated and steps[-1].success and not steps[-1].truncated, (
        ep.steps, steps[-1].terminated, steps[-1].success)
    assert [m.step for m in steps] == list(range(len(steps))), "every executed step must be published once"

    # Human steps, and only they, are flagged intervened with SOURCE_HUMAN; the rest are the policy's.
    for m in steps:
        assert m.intervened == (m.action_source == Action.SOURCE_HUMAN), (m.step, m.intervened, m.action_source)
        if not m.intervened:
            assert m.action_source == Action.SOURCE_POLICY and m.policy_version == POLICY_VERSION, (
                m.step, m.action_source, m.policy_version)
            assert np.allclose(m.action, POLICY_ACTION)
    assert ep.intervention_steps == sum(m.intervened for m in steps) > 0, (ep.intervention_steps, info)

    # Two interventions: from about step 5, and from about step 40 to the end; the policy in between.
    blocks = [(i, j) for i, j in _runs(table, "H")]
    assert len(blocks) == 2, f"expected two interventions, got {blocks}: {info}"
    (a0, a1), (b0, b1) = blocks
    assert table[:5] == ".....", f"the policy must act before the human touches the puck: {info}"
    assert 5 <= a0 <= 7 and 39 <= b0 <= 43 and b1 == len(steps) - 1, (blocks, info)
    moved = [m for m in steps[a0:a0 + 10] if np.abs(np.array(m.action[:3]) - POLICY_ACTION[:3]).max() > 0.05]
    assert moved, "the human's actions must come from the SpaceMouse (Joy) input, not the policy"
    z = [m.next_obs.proprio[2] - m.obs.proprio[2] for m in steps[a1 + 1:b0]]
    assert sum(z) > 0.03, f"the policy's actions must run between the interventions (z rose {sum(z):.3f} m)"

    # The teleop node publishes human actions only while the human intervenes.
    human_steps = {m.step for m in actions.msgs
                   if m.source == Action.SOURCE_HUMAN and m.episode_id == ep.episode_id}
    outside = sorted(s for s in human_steps if not (a0 - 1 <= s <= a1 + 1 or s >= b0 - 1))
    assert human_steps and not outside, f"human actions outside the interventions at steps {outside}: {info}"

    # Control returns to the policy hold_s after the last input (plus the robot's short hold).
    block_end = stamp_s(steps[a1].obs.header.stamp) + 0.05
    last_input = max(stamp_s(j.header.stamp) for j in joys.msgs
                     if np.abs(np.array(j.axes)).max() > 0.1 and stamp_s(j.header.stamp) < block_end)
    back = stamp_s(steps[a1 + 1].obs.header.stamp) - last_input
    print(f"policy back {back:.2f} s after the last input")
    assert HOLD_S + ROBOT_HOLD_S - 0.3 <= back <= HOLD_S + ROBOT_HOLD_S + 0.5, (
        f"policy back {back:.2f} s after the last input; expected about hold_s={HOLD_S} s: {table}")

    out = robot.output()
    assert "a human took over" in out and "control back to the policy" in out, out[-3000:]
    assert "labelled by a human" in out and f"intervention {ep.intervention_steps}/{ep.steps} steps" in out, out[-3000:]
    teleop.wait_for(r"label applied: franka_0: episode \d+ ended at step \d+ as a success", 5)
    assert all(b.state != RobotStatus.STATE_ERROR for b in beats.msgs)


def test_the_simulated_human_with_a_corridor_steps_in_as_soon_as_the_policy_leaves_it(procs, ros_node, tmp_path):
    """human_corridor: the scripted human leaves a policy that acts like the expert alone, and takes over
    within a few steps once the policy's actions leave the corridor around the expert's (HG-DAgger's
    early correction), instead of waiting for 20 steps without progress."""
    from user_hal.profile import load_profile
    from user_hal.tasks.experts import make_expert

    expert = make_expert(load_profile(profile_with(tmp_path, "expert.yaml", **{"robot.cameras": []})))
    LEAVE = 15

    def act(o: Observation):   # the expert's own action, then one that lifts the peg away
        return expert.act(np.asarray(o.proprio)).tolist() if o.step < LEAVE else POLICY_ACTION

    ep, steps, table, *_ = run_with_human(procs, ros_node, tmp_path, 40, act, {
        "human_corridor": 0.2, "human_hold_steps": 3, "label_success": False})
    human = [m.step for m in steps if m.intervened]
    assert human, f"the human never stepped in: {table}"
    assert not [s for s in human if s < LEAVE], f"the human took over while the policy acted like the expert: {table}"
    assert human[0] <= LEAVE + 4, f"the human stepped in at step {human[0]}, the policy left the corridor at {LEAVE}: {table}"


def _runs(s: str, ch: str):
    i = 0
    while i < len(s):
        if s[i] == ch:
            j = i
            while j + 1 < len(s) and s[j + 1] == ch:
                j += 1
            yield i, j
            i = j + 1
        else:
            i += 1


def test_launch_with_teleop_and_a_simulated_human_intervenes_on_a_stuck_policy(procs, tmp_path):
    """`userctl launch franka_sac teleop:=joy sim_human:=true`: the graph adds a teleop node and the
    scripted human; an untrained SAC policy gets stuck and the human takes over through /spacenav/joy
    and the teleop node."""
    from hal_helpers import learning_config_dir, userctl_cmd

    cfg = learning_config_dir(tmp_path, profile={"robot.max_episode_steps": 150})
    launcher = procs.start("userctl", userctl_cmd(
        "launch", str(cfg / "franka_sac.yaml"), "run_name:=teleop", "teleop:=joy", "sim_human:=true",
        "episodes:=1", "respawn_delay:=0"))
    launcher.wait_for(r"started franka_0/teleop \(pid \d+\)", 30)
    launcher.wait_for(r"started franka_0/sim_human \(pid \d+\)", 30)
    took = int(launcher.wait_for(r"a human took over at step (\d+)", 90).group(1))
    # The episode ends by the rule (inserted), by the human's label, or at 150 steps: the human's
    # success is not the point here (a random policy may leave the peg jammed), the hand-over is.
    m = launcher.wait_for(r"episode 0: \w+.* in (\d+) steps.*intervention (\d+)/\d+ steps", 90)
    assert launcher.popen.wait(timeout=60) == 0, launcher.output()[-3000:]
    steps, human = int(m.group(1)), int(m.group(2))
    assert took >= 20, f"the simulated human waits until the policy is stuck for 20 steps, took over at {took}"
    assert 0 < human <= steps - took, (m.group(0), took)
