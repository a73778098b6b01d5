"""Safety: velocity limits on every target, the e-stop of every robot, bounded recovery from backend faults."""
import re
import subprocess
import time

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from user_msgs.msg import Action, EpisodeStats, Observation, RobotStatus, Transition
from user_msgs.srv import ResetRobot

from hal_helpers import SIM_PROFILE, Collect, node_cmd, profile_with, userctl_cmd

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
DATA = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)



def latest(beats, robot_id):
    mine = [b for b in beats.msgs if b.robot_id == robot_id]
    return mine[-1] if mine else None


def call(node, srv_type, name, request, timeout=15.0):
    cli = node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=10), f"{name} not available"
    fut = cli.call_async(request)
    end = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < end:
        time.sleep(0.02)
    assert fut.done(), f"{name} did not answer within {timeout} s"
    return fut.result()


# -- velocity limits ------------------------------------------------------------------------------
def test_cell_limits_target_speed_for_actions_and_resets():
    from user_hal.backends.base import make_backend
    from user_hal.core.cell import RobotCell
    from user_hal.core.geometry import quat_conj, quat_mul, quat_to_rotvec
    from user_hal.profile import load_profile

    prof = load_profile(SIM_PROFILE, {"robot.cameras": [], "robot.max_tcp_speed": 0.1,
                                      "robot.max_tcp_angular_speed": 0.5})
    backend = make_backend("sim", **dict(prof.backend_options, cameras=(), render_images=False))
    targets = []
    set_target = backend.set_target
    backend.set_target = lambda p, q, g: (targets.append((np.array(p), np.array(q))), set_target(p, q, g))
    cell = RobotCell(prof, backend, seed=0)
    cell.start()
    try:
        max_step, max_turn = 0.1 * cell.period, 0.5 * cell.period
        cell.reset(seed=3)
        moves = [np.linalg.norm(b[0] - a[0]) for a, b in zip(targets, targets[1:])]
        turns = [np.linalg.norm(quat_to_rotvec(quat_mul(b[1], quat_conj(a[1])))) for a, b in zip(targets, targets[1:])]
        assert max(moves) <= max_step + 1e-9 and max(turns) <= max_turn + 1e-9, (max(moves), max(turns))

        before = cell.target_pos.copy()
        res = cell.step(np.array([1.0, 1.0, 1.0, 0, 0, 0, -1.0]))  # asks for 0.035 m in one 0.1 s step
        moved = cell.target_pos - before
        assert np.linalg.norm(moved) == pytest.approx(max_step, rel=1e-6), moved
        assert np.allclose(moved / np.linalg.norm(moved), np.ones(3) / np.sqrt(3)), "direction must be kept"
        assert np.allclose(res.executed[:3] * 0.02, moved), "executed is the action actually applied"
        assert np.allclose(res.commanded, [1.0, 1.0, 1.0, 0, 0, 0, -1.0]), "commanded is the action as given"

        q0 = cell.target_quat.copy()
        res = cell.step(np.array([0, 0, 0, 1.0, -1.0, 1.0, -1.0]))  # asks for about 0.17 rad
        turned = np.linalg.norm(quat_to_rotvec(quat_mul(cell.target_quat, quat_conj(q0))))
        assert turned == pytest.approx(max_turn, rel=1e-3), turned
        assert np.all(np.abs(res.executed[3:6]) < 1.0)

        before = cell.target_pos.copy()
        cell.step(np.array([0.2, 0, 0, 0, 0, 0, -1.0]))  # within the limit: untouched
        assert cell.target_pos[0] - before[0] == pytest.approx(0.004)
    finally:
        cell.close()


def test_robot_node_enforces_max_tcp_speed_on_policy_actions(procs, ros_node, tmp_path):
    prof = profile_with(tmp_path, **{"robot.cameras": [], "robot.max_tcp_speed": 0.08})
    pub = ros_node.create_publisher(Action, "/franka_0/action", RELIABLE)

    def policy(o):  # full speed diagonally down-and-sideways, every step
        pub.publish(Action(robot_id="franka_0", episode_id=o.episode_id, step=o.step,
                           action=[1.0, 1.0, -1.0, 0, 0, 0, -1.0], source=Action.SOURCE_POLICY))

    obs = Collect(ros_node, Observation, "/franka_0/observation", on_msg=policy)
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    procs.start("robot", node_cmd("robot_node", {"robot_id": "franka_0", "profile": str(prof),
                                                 "realtime_factor": 0.0}))
    trans.wait(lambda m: len(m) >= 12, 60, "12 transitions")
    for t in trans.msgs[:12]:   # the learner sees the policy's own action; the limit is the robot's doing
        assert np.allclose(t.action, [1.0, 1.0, -1.0, 0, 0, 0, -1.0]), f"step {t.step}: recorded {list(t.action)}"
    pos = [np.array(t.next_obs.proprio[:3]) for t in trans.msgs[4:12]]
    speeds = [np.linalg.norm(b - a) / 0.1 for a, b in zip(pos, pos[1:])]
    assert max(speeds) < 0.08 * 1.25, f"TCP faster than max_tcp_speed 0.08 m/s: {np.round(speeds, 3)}"
    assert obs.msgs


# -- e-stop --------------------------------------------------------------------------------------
def test_estop_stops_every_robot_until_released(procs, ros_node, tmp_path):
    # Slow resets (0.1 m/s) so that the test catches one half-way.
    prof = profile_with(tmp_path, **{"robot.cameras": [], "robot.max_tcp_speed": 0.1})
    robots = ("franka_0", "franka_1")
    pubs = {r: ros_node.create_publisher(Action, f"/{r}/action", RELIABLE) for r in robots}
    obs = {}
    for r in robots:
        def policy(o, r=r):  # keep pushing +y
            pubs[r].publish(Action(robot_id=r, episode_id=o.episode_id, step=o.step,
                                   action=[0.0, 0.3, 0, 0, 0, 0, -1.0], source=Action.SOURCE_POLICY))
        obs[r] = Collect(ros_node, Observation, f"/{r}/observation", on_msg=policy)
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", QoSProfile(
        depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    procs_ = {r: procs.start(r, node_cmd("robot_node", {"robot_id": r, "profile": str(prof), "realtime_factor": 1.0}))
              for r in robots}
    for r in robots:
        obs[r].wait(lambda m: m and m[-1].step >= 3, 60, f"{r} moving")

    resp = call(ros_node, Trigger, "/user/estop", Trigger.Request())
    assert resp.success and "e-stop engaged" in resp.message, resp
    t_stop = time.monotonic()
    for r in robots:
        beats.wait(lambda m: (b := latest(beats, r)) is not None and b.state == RobotStatus.STATE_ERROR
                   and b.message == "e-stop", 3, f"{r} reporting ERROR 'e-stop'")
    n_obs = {r: len(obs[r].msgs) for r in robots}
    stopped_at = {r: (obs[r].msgs[-1].step, np.array(obs[r].msgs[-1].proprio[:3])) for r in robots}
    # While stopped: actions are refused, resets are refused, nothing moves.
    last = obs["franka_0"].msgs[-1]
    for _ in range(5):
        pubs["franka_0"].publish(Action(robot_id="franka_0", episode_id=last.episode_id, step=last.step,
                                        action=[0.0, 1.0, 0, 0, 0, 0, -1.0], source=Action.SOURCE_HUMAN))
        time.sleep(0.05)
    r0 = call(ros_node, ResetRobot, "/franka_0/reset", ResetRobot.Request(robot_id="franka_0"))
    assert not r0.success and "e-stop" in r0.message, r0
    time.sleep(max(0.0, 1.5 - (time.monotonic() - t_stop)))
    for r in robots:
        # One observation may have been in flight when the e-stop engaged; none may come after it.
        assert len(obs[r].msgs) <= n_obs[r] + 1, f"{r} kept stepping during the e-stop"
        last_obs = obs[r].msgs[-1]
        stopped_at[r] = (last_obs.step, np.array(last_obs.proprio[:3]))
        n_obs[r] = len(obs[r].msgs)
        b = latest(beats, r)
        assert b.state == RobotStatus.STATE_ERROR and b.message == "e-stop" and b.step == last_obs.step, b
    procs_["franka_0"].wait_for("refused action: e-stop engaged", 5)

    resp = call(ros_node, Trigger, "/user/estop_release", Trigger.Request())
    assert resp.success and "released" in resp.message, resp
    for r in robots:
        b = beats.wait(lambda m: (b := latest(beats, r)) is not None and b.state == RobotStatus.STATE_RUNNING, 3,
                       f"{r} running again")
        assert b.message == ""
        o = obs[r].wait(lambda m: m[-1].step >= stopped_at[r][0] + 3, 10, f"{r} stepping again")
        first_after = next(m for m in obs[r].msgs[n_obs[r]:])
        held = np.linalg.norm(np.array(first_after.proprio[:3]) - stopped_at[r][1])
        assert held < 0.003, f"{r} moved {held:.4f} m while e-stopped"
        assert o.episode_id == obs[r].msgs[n_obs[r] - 1].episode_id, "the episode continues after a release"

    # An e-stop during a reset stops the reset motion; after the release the reset is redone.
    cli = ros_node.create_client(ResetRobot, "/franka_1/reset")
    assert cli.wait_for_service(timeout_sec=5)
    fut = cli.call_async(ResetRobot.Request(robot_id="franka_1"))
    beats.wait(lambda m: (b := latest(beats, "franka_1")) is not None and b.state == RobotStatus.STATE_RESETTING,
               5, "franka_1 resetting")
    call(ros_node, Trigger, "/user/estop", Trigger.Request())
    end = time.monotonic() + 5
    while not fut.done() and time.monotonic() < end:
        time.sleep(0.02)
    assert fut.done() and not fut.result().success and "aborted by the e-stop" in fut.result().message, fut.result()
    old_episode = obs["franka_1"].msgs[-1].episode_id
    call(ros_node, Trigger, "/user/estop_release", Trigger.Request())
    obs["franka_1"].wait(lambda m: m[-1].episode_id != old_episode and m[-1].step >= 1, 20,
                         "franka_1 in a new episode after the redone reset")

    # The latched topic does the same (a hardware e-stop bridge would publish it).
    estop_pub = ros_node.create_publisher(Bool, "/user/estop/engaged", LATCHED)
    estop_pub.publish(Bool(data=True))
    for r in robots:
        beats.wait(lambda m: (b := latest(beats, r)) is not None and b.message == "e-stop", 5,
                   f"{r} e-stopped by topic")
    estop_pub.publish(Bool(data=False))
    for r in robots:
        beats.wait(lambda m: (b := latest(beats, r)) is not None and b.state == RobotStatus.STATE_RUNNING, 5,
                   f"{r} released by topic")


# -- bounded error recovery -----------------------------------------------------------------------
def test_a_backend_fault_is_recovered_and_the_episode_continues(procs, ros_node, tmp_path):
    prof = profile_with(tmp_path, **{"robot.cameras": []})
    episodes = Collect(ros_node, EpisodeStats, "/user/episodes")
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    robot = procs.start("robot", node_cmd("faulty_robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0, "max_episodes": 1,
        "fault_injection": "step:3,6"}, pkg="user_testing"))
    obs.wait(lambda m: m, 60, "the robot holding (this test sees its topics) before the policy starts")
    episodes.wait_matched(30)
    trans.wait_matched(30)
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    episodes.wait(lambda m: len(m) >= 1, 60, "the episode to end")
    assert robot.popen.wait(timeout=20) == 0, robot.output()[-2000:]
    out = robot.output()
    assert "injected fault at step call 3" in out and "recovering (1/3 in this episode)" in out, out[-3000:]
    assert "injected fault at step call 6" in out and "recovering (2/3 in this episode)" in out, out[-3000:]
    assert out.count("the episode continues") == 2 and "robot stopped" not in out, out[-3000:]
    ep = episodes.msgs[0]
    assert ep.success and ep.steps >= 5, ep  # 6 step calls, 2 of them faulted, all in this episode
    steps = sorted(t.step for t in trans.msgs if t.episode_id == ep.episode_id)
    assert steps[-1] == ep.steps - 1 and len(set(steps)) == ep.steps, "every step of the episode exactly once"
    assert "2 backend recoveries" in out


def test_after_max_recoveries_the_robot_stops_in_error(procs, ros_node, tmp_path):
    prof = profile_with(tmp_path, **{"robot.cameras": [], "robot.max_recoveries": 2})
    beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat", LATCHED)
    obs = Collect(ros_node, Observation, "/franka_0/observation")
    robot = procs.start("robot", node_cmd("faulty_robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0, "fault_injection": "step:4,5,6"},
        pkg="user_testing"))
    obs.wait(lambda m: m, 60, "the robot holding (this test sees its topics) before the policy starts")
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    b = beats.wait(lambda m: m and m[-1].state == RobotStatus.STATE_ERROR, 60, "ERROR in the heartbeat")
    assert "backend fault: injected fault at step call 6" in b.message and "stopped after 2 recoveries" in b.message, b
    out = robot.output()
    assert "recovering (1/2" in out and "recovering (2/2" in out and "robot stopped" in out, out[-3000:]
    n, step = len(obs.msgs), obs.msgs[-1].step
    time.sleep(1.0)
    assert len(obs.msgs) == n, "a stopped robot must not step"
    assert robot.popen.poll() is None, "the node stays up to report its state"
    assert beats.msgs[-1].state == RobotStatus.STATE_ERROR and beats.msgs[-1].step == step == 3
    r = call(ros_node, ResetRobot, "/franka_0/reset", ResetRobot.Request(robot_id="franka_0"))
    assert not r.success and "backend fault" in r.message, r


def test_bad_fault_injection_parameter_is_one_clear_error(procs, tmp_path):
    prof = profile_with(tmp_path, **{"robot.cameras": []})
    robot = procs.start("robot", node_cmd("faulty_robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "fault_injection": "at 5"}, pkg="user_testing"))
    assert robot.popen.wait(timeout=30) == 2
    out = robot.output()
    assert "fault_injection" in out and "expected 'step:N[,N...]'" in out and "Traceback" not in out, out[-2000:]


def test_userctl_estop_stops_every_robot_confirms_from_heartbeats_and_releases(procs, ros_node, ros_env, tmp_path):
    prof = profile_with(tmp_path, **{"robot.cameras": []})
    robots = ("franka_0", "franka_1")
    pubs = {r: ros_node.create_publisher(Action, f"/{r}/action", RELIABLE) for r in robots}
    obs = {}
    for r in robots:
        def policy(o, r=r):
            pubs[r].publish(Action(robot_id=r, episode_id=o.episode_id, step=o.step,
                                   action=[0.0, 0.2, 0, 0, 0, 0, -1.0], source=Action.SOURCE_POLICY))
        obs[r] = Collect(ros_node, Observation, f"/{r}/observation", on_msg=policy)
    procs.start("registry", node_cmd("registry_node", {}))  # as the launcher starts one: userctl asks it too
    for r in robots:
        procs.start(r, node_cmd("robot_node", {"robot_id": r, "profile": str(prof), "realtime_factor": 1.0}))
    for r in robots:
        obs[r].wait(lambda m: m and m[-1].step >= 3, 60, f"{r} moving")

    def userctl(*args):
        return subprocess.run(userctl_cmd("estop", *args), env=ros_env, capture_output=True, text=True, timeout=60)

    res = userctl("--timeout", "10")
    assert res.returncode == 0, res.stdout + res.stderr
    for r in robots:
        assert re.search(rf"^{r}\s+ERROR\s+e-stop\s+stopped$", res.stdout, re.M), res.stdout
    assert "2 robots stopped" in res.stdout and "e-stop engaged" in res.stdout, res.stdout
    n_obs = {r: len(obs[r].msgs) for r in robots}
    time.sleep(1.0)
    for r in robots:
        assert len(obs[r].msgs) <= n_obs[r] + 1, f"{r} kept stepping after userctl estop"

    res = userctl("--release", "--timeout", "10")
    assert res.returncode == 0, res.stdout + res.stderr
    for r in robots:
        assert re.search(rf"^{r}\s+(RUNNING|RESETTING)\s+-\s+released$", res.stdout, re.M), res.stdout
        obs[r].wait(lambda m: len(m) >= n_obs[r] + 3, 10, f"{r} stepping again after the release")

    # A live heartbeat from a robot that does not serve the e-stop is never confirmed: exit 1, named.
    ghost = ros_node.create_publisher(RobotStatus, "/user/robots/heartbeat", LATCHED)

    def beat():
        s = RobotStatus(robot_id="ghost_0", state=RobotStatus.STATE_RUNNING)
        s.header.stamp = ros_node.get_clock().now().to_msg()
        ghost.publish(s)

    timer = ros_node.create_timer(0.3, beat)
    try:
        time.sleep(0.6)
        res = userctl("--timeout", "4")
    finally:
        ros_node.destroy_timer(timer)
        userctl("--release", "--timeout", "5")
    assert res.returncode == 1, res.stdout + res.stderr
    # Heard directly, or only listed by the registry (this fresh process had not discovered it yet).
    assert re.search(r"^ghost_0\s+(RUNNING\s+-|\?\s+no heartbeat heard)\s+NOT CONFIRMED$", res.stdout, re.M), res.stdout
    assert "not confirmed within 4 s by: ghost_0" in res.stderr, res.stderr
    for r in robots:
        assert re.search(rf"^{r}\s+ERROR\s+e-stop\s+stopped$", res.stdout, re.M), res.stdout


def test_userctl_estop_without_robots_fails_clearly(ros_env):
    res = subprocess.run(userctl_cmd("estop", "--timeout", "1"), env=ros_env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "no robot node serves /user/estop within 1 s" in res.stderr, res
