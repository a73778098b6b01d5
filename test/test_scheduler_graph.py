"""Robots as compute through real processes (docs/scheduler.md): a job run by the scheduler (graph sched_sac)
binds a robot node started after the job began, its transitions reach the learner without restarting
learner or inference, a robot killed with SIGKILL is released while the job goes on, and `userctl robots`
shows each robot's job and inference server, why an idle robot is idle, and what a job waits for. Two jobs on
one ROS domain keep their data apart under their namespaces, and a job whose learner is killed cuts the running
episodes of its robots while the other job goes on."""
from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from user_msgs.msg import Action, Bindings, EpisodeStats, RobotDescription, Transition, TransitionAck

from hal_helpers import Collect, learning_config_dir, node_cmd, profile_with, userctl_cmd

pytestmark = pytest.mark.timeout(150)

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
ANNOUNCEMENTS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
SERVER = "peg/inference_0"
NS = "/user/jobs/peg"   # sched_sac's topic_ns for job peg


def binding(msgs, robot_id):
    """The newest binding of ``robot_id`` in the received Bindings, or None if it is not listed."""
    if not msgs:
        return None
    return next((b for b in msgs[-1].robots if b.robot_id == robot_id), None)


def userctl_robots(env) -> str:
    result = subprocess.run(userctl_cmd("robots", "--timeout", "5"), capture_output=True, text=True, env=env,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def settled_table(env, ready, timeout: float = 30.0) -> str:
    """`userctl robots` once ``ready(table)`` holds (a fresh userctl node may not have discovered everything
    on its first call); the last table otherwise, for the assertions to show."""
    end = time.monotonic() + timeout
    while True:
        table = userctl_robots(env)
        if ready(table) or time.monotonic() > end:
            return table
        time.sleep(0.5)


def row(table: str, ident: str) -> list[str] | None:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == ident:
            return cells
    return None


def test_a_robot_started_later_is_bound_and_trains_and_a_killed_robot_is_released(procs, ros_node, ros_env,
                                                                                  tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = learning_config_dir(tmp_path)
    bindings = Collect(ros_node, Bindings, "/user/scheduler/bindings", qos=LATCHED)
    described = {}
    Collect(ros_node, RobotDescription, "/user/robots/description", qos=ANNOUNCEMENTS,
            on_msg=lambda d: described.setdefault(d.robot_id, time.monotonic()))
    transitions = Collect(ros_node, Transition, f"{NS}/transitions")
    acks = Collect(ros_node, TransitionAck, f"{NS}/transitions/ack")
    run = procs.start("userctl", userctl_cmd("launch", str(cfg / "sched_sac.yaml"), "robots:=1", "respawn_delay:=0",
                                             "heartbeat_timeout_s:=2.0", "realtime_factor:=2"))
    bindings.wait(lambda m: getattr(binding(m, "franka_0"), "server", "") == SERVER, 60, "franka_0 bound")

    # hot-plug: a robot node the job did not start, with a new id (one long episode: it is killed mid-episode)
    profile = profile_with(tmp_path, "robot_long.yaml", base=cfg / "robot_sim.yaml",
                           **{"robot.max_episode_steps": 5000})
    late = procs.start("franka_7", node_cmd("robot_node", {
        "robot_id": "franka_7", "profile": str(profile), "backend": "sim", "realtime_factor": 2.0,
        "ack_consumers": "[learner]", "follow_bindings": True}))
    b = bindings.wait(lambda m: getattr(binding(m, "franka_7"), "server", ""), 60, "franka_7 bound")
    bound_at = time.monotonic()
    assert (binding([b], "franka_7").job, binding([b], "franka_7").server, binding([b], "franka_7").topic_ns) == (
        "peg", SERVER, NS)
    end = time.monotonic() + 10
    while "franka_7" not in described and time.monotonic() < end:   # the test's own copy may come later
        time.sleep(0.05)
    assert bound_at - described["franka_7"] <= 5.0, "bound more than 5 s after its description was announced"
    transitions.wait(lambda m: any(t.robot_id == "franka_7" and t.action_source == Action.SOURCE_POLICY
                                   for t in m), 40, "a policy transition of franka_7")
    acks.wait(lambda m: any(a.robot_id == "franka_7" and a.consumer == "learner" and a.steps for a in m), 30,
              "the learner acknowledging franka_7's transitions")

    table = settled_table(ros_env, lambda t: "job peg: running with 2 robots" in t and row(t, SERVER) is not None
                          and all((row(t, r) or [""] * 9)[7] == "peg" for r in ("franka_0", "franka_7")))
    for rid in ("franka_0", "franka_7"):
        cells = row(table, rid)
        assert cells is not None and cells[3] in ("RUNNING", "RESETTING") and cells[7:] == ["peg", SERVER], table
    server = row(table, SERVER)
    assert server is not None and server[1] == "inference server" and server[5] == "2 of 4 robots", table
    assert "job peg: running with 2 robots: franka_0, franka_7" in table, table

    # a robot killed with SIGKILL is released (heartbeat timeout) and the job goes on
    late.kill(signal.SIGKILL)
    late.popen.wait(timeout=10)
    killed_at = time.monotonic()
    bindings.wait(lambda m: binding(m, "franka_7") is None, 20, "franka_7 released")
    assert time.monotonic() - killed_at <= 2.0 + 5.0
    with transitions.lock:
        before = len(transitions.msgs)
    transitions.wait(lambda m: sum(t.robot_id == "franka_0" for t in m[before:]) >= 10, 30,
                     "franka_0 to go on after franka_7 was released")
    assert getattr(binding(bindings.msgs, "franka_0"), "server", "") == SERVER

    out = run.output()
    assert run.popen.poll() is None, out[-3000:]
    for node in ("user/learner", "user/inference_0"):
        assert out.count(f"started {node} ") == 1, f"{node} was restarted:\n{out[-3000:]}"
    assert "serving franka_7 (now 2 of 4: franka_0, franka_7)" in out, out[-3000:]
    assert "dropped franka_7: the scheduler released it; its episode" in out, out[-3000:]
    assert "released franka_7: its heartbeat stopped" in out, out[-3000:]
    assert re.search(r"\[user/learner\].*episode \d+ of franka_7 was cut at step \d+: the robot was lost", out), \
        out[-3000:]
    assert run.stop() in (0, 130)


def started_pid(out: str, node: str, nth: int) -> int:
    """The pid of the ``nth`` (0-based) start of ``node`` in the launcher's output."""
    pids = re.findall(rf"started {re.escape(node)} \(pid (\d+)\)", out)
    assert len(pids) > nth, f"{node} was started {len(pids)} times, expected more than {nth}:\n{out[-3000:]}"
    return int(pids[nth])


def test_killing_the_scheduler_or_an_inference_server_midrun_recovers_when_it_returns(procs, ros_node, tmp_path,
                                                                                     monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    cfg = learning_config_dir(tmp_path)
    bindings = Collect(ros_node, Bindings, "/user/scheduler/bindings", qos=LATCHED)
    transitions = Collect(ros_node, Transition, f"{NS}/transitions")
    acks = Collect(ros_node, TransitionAck, f"{NS}/transitions/ack")
    run = procs.start("userctl", userctl_cmd("launch", str(cfg / "sched_sac.yaml"), "robots:=1", "respawn_delay:=1",
                                             "heartbeat_timeout_s:=2.0", "realtime_factor:=2"))
    bindings.wait(lambda m: getattr(binding(m, "franka_0"), "server", "") == SERVER, 60, "franka_0 bound")

    def policy_steps_after(n: int, what: str) -> None:
        with transitions.lock:
            before = len(transitions.msgs)
        transitions.wait(lambda m: sum(t.action_source == Action.SOURCE_POLICY for t in m[before:]) >= n, 30, what)

    # the scheduler: while it is gone the robot keeps acting; back, it rebuilds the same binding
    os.kill(started_pid(run.output(), "user/scheduler", 0), signal.SIGKILL)
    policy_steps_after(10, "policy actions while the scheduler is dead")
    run.wait_for(r"started user/scheduler \(pid \d+\)[\s\S]*started user/scheduler \(pid \d+\)", 20)
    bound = r"\[user/scheduler\].*bound franka_0 \(franka_fr3\) to job peg on inference server peg/inference_0"
    run.wait_for(rf"{bound}[\s\S]*{bound}", 30)   # the first scheduler's line, then the restarted one's
    with bindings.lock:
        seen = len(bindings.msgs)
    bindings.wait(lambda m: len(m) > seen, 10, "bindings from the restarted scheduler")
    assert getattr(binding(bindings.msgs, "franka_0"), "server", "") == SERVER
    assert "dropped franka_0" not in run.output(), "the restarted scheduler released a working robot"

    # an inference server: the robot holds, the server comes back and serves it again
    os.kill(started_pid(run.output(), "user/inference_0", 0), signal.SIGKILL)
    run.wait_for(r"started user/inference_0 \(pid \d+\)[\s\S]*started user/inference_0 \(pid \d+\)", 20)
    serving = r"\[user/inference_0\].*serving franka_0"
    run.wait_for(rf"{serving}[\s\S]*{serving}", 60)
    policy_steps_after(10, "policy actions from the restarted inference server")
    acked = {s for a in acks.msgs if a.robot_id == "franka_0" for s in zip(a.episode_ids, a.steps)}
    assert acked, "the learner acknowledged nothing"
    assert run.popen.poll() is None and run.output().count("started user/learner ") == 1, run.output()[-3000:]
    assert run.stop() in (0, 130)


def test_a_robot_the_config_does_not_fit_stays_idle_and_a_job_short_of_robots_says_what_it_waits_for(
        procs, ros_env, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    cfg = learning_config_dir(tmp_path)
    wxai = yaml.safe_load((cfg / "robot_wxai.yaml").read_text())
    wxai["robot"].update({"cameras": [], "max_episode_steps": 30})
    (cfg / "robot_wxai.yaml").write_text(yaml.safe_dump(wxai))
    run = procs.start("userctl", userctl_cmd("launch", str(cfg / "sched_sac.yaml"), "robots:=0", "job_robots:=2",
                                             "respawn_delay:=0", "heartbeat_timeout_s:=2.0"))
    procs.start("wxai_0", node_cmd("robot_node", {"robot_id": "wxai_0", "profile": str(cfg / "robot_wxai.yaml"),
                                                  "backend": "wxai_sim", "ack_consumers": "[learner]"}))
    run.wait_for(r"\[user/scheduler\].*wxai_0 \(wxai\) idle: job peg refuses it", 60)
    table = settled_table(ros_env, lambda t: row(t, "wxai_0") is not None and row(t, SERVER) is not None
                          and "wxai_0 idle: job peg refuses it" in t)
    cells = row(table, "wxai_0")
    assert cells is not None and cells[7:] == ["idle", "-"], table
    assert (f"wxai_0 idle: job peg refuses it: {cfg / 'sac_peg.yaml'}: obs: the policy (state_dim 20, 7 actions, "
            f"no cameras) cannot serve robot wxai_0 (wxai): ") in table, table
    assert "job peg: waiting for 2 more robots (any embodiment); has 0 robots of 2" in table, table
    server = row(table, SERVER)
    assert server is not None and server[3:] == ["READY", "-", "0 of 4 robots", "-", "peg", "-"], table
    assert "serving wxai_0" not in run.output()
    assert run.stop() in (0, 130)


def test_two_jobs_on_one_domain_keep_their_data_apart_and_a_killed_learner_cuts_its_robots_episode(
        procs, ros_node, tmp_path, monkeypatch):
    """Job a wants 1 robot, job b 2 (started second, so the split is a: 1, b: 1); two robots follow the bindings at
    realtime_factor 0 (no training: min_buffer is never reached, so the CPU goes to the data). Job a's learner is
    killed: its robot cuts its episode there and moves to job b; its unacknowledged transitions stay on job a's
    namespace."""
    monkeypatch.chdir(tmp_path)
    cfg = learning_config_dir(tmp_path, min_buffer=10**7)
    profile = profile_with(tmp_path, "robot_long.yaml", base=cfg / "robot_sim.yaml",
                           **{"robot.max_episode_steps": 100000})
    config = str(cfg / "sac_peg.yaml")
    bindings = Collect(ros_node, Bindings, "/user/scheduler/bindings", qos=LATCHED)
    shared = Collect(ros_node, Transition, "/user/transitions")
    trans = {j: Collect(ros_node, Transition, f"/user/jobs/{j}/transitions") for j in "ab"}
    acks = {j: Collect(ros_node, TransitionAck, f"/user/jobs/{j}/transitions/ack") for j in "ab"}
    episodes = {j: Collect(ros_node, EpisodeStats, f"/user/jobs/{j}/episodes") for j in "ab"}

    def learner(j: str, robots: int):
        return procs.start(f"learner_{j}", node_cmd("learner_node", {
            "config": config, "run_name": f"job_{j}", "job": j, "job_robots": robots, "topic_ns": f"/user/jobs/{j}"},
            node_name=f"learner_{j}", pkg="user_learner"))

    procs.start("scheduler", node_cmd("scheduler_node", {"heartbeat_timeout_s": 2.0}, pkg="user_learner"))
    learner_a = learner("a", 1)
    for j in "ab":
        procs.start(f"inference_{j}", node_cmd("inference_node", {
            "config": config, "scheduled": True, "job": j, "server_id": f"{j}/inference_0", "max_robots": 2,
            "topic_ns": f"/user/jobs/{j}"}, node_name=f"inference_{j}", pkg="user_learner"))
    for rid in ("franka_0", "franka_1"):
        procs.start(rid, node_cmd("robot_node", {
            "robot_id": rid, "profile": str(profile), "backend": "sim", "realtime_factor": 0.0,
            "ack_consumers": "[learner]", "follow_bindings": True}))
    jobs_of = lambda m: {r: getattr(binding(m, r), "job", "") for r in ("franka_0", "franka_1")}  # noqa: E731
    b = bindings.wait(lambda m: sorted(jobs_of(m).values()) == ["", "a"], 60, "one robot bound to job a")
    robot = {"a": next(r for r, j in jobs_of([b]).items() if j == "a"),
             "b": next(r for r, j in jobs_of([b]).items() if j == "")}
    learner("b", 2)
    b = bindings.wait(lambda m: jobs_of(m) == {robot["a"]: "a", robot["b"]: "b"}, 30, "the other robot bound to b")
    for j in "ab":
        rb = binding([b], robot[j])
        assert (rb.topic_ns, rb.server) == (f"/user/jobs/{j}", f"{j}/inference_0")
    for j in "ab":
        trans[j].wait(lambda m: sum(t.action_source == Action.SOURCE_POLICY for t in m) >= 20, 40,
                      f"policy transitions of job {j}")
        acks[j].wait(lambda m: any(a.steps for a in m), 30, f"learner_{j} acknowledging transitions")
    for j in "ab":
        with trans[j].lock:
            assert {t.robot_id for t in trans[j].msgs} == {robot[j]}, f"job {j} saw another job's robot"
        assert {a.robot_id for a in acks[j].msgs if a.steps} == {robot[j]}, f"learner_{j} stored another job's data"
    assert not shared.msgs, "a robot following its binding published on the shared /user/transitions"

    # job a's learner dies: after the heartbeat timeout its robot's binding goes (to job b, which wants 2), and the
    # robot cuts its episode on job a's namespace first
    learner_a.kill(signal.SIGKILL)
    learner_a.popen.wait(timeout=10)
    episodes["a"].wait(lambda m: any(e.cut and e.robot_id == robot["a"] for e in m), 20,
                       f"{robot['a']} cutting its episode")
    cut = next(e for e in episodes["a"].msgs if e.cut)
    trans["a"].wait(lambda m: any(t.episode_id == cut.episode_id and t.truncated for t in m), 10,
                    "the cut step's transition")   # (another topic than the statistics: it may come second)
    with trans["a"].lock:   # (unacknowledged transitions are resent: one entry per step)
        steps = {t.step: t for t in trans["a"].msgs if t.episode_id == cut.episode_id}
    last = steps[max(steps)]
    assert (last.step + 1, last.action_source, last.truncated, last.terminated) == (
        cut.steps, Action.SOURCE_HOLD, True, False), "the cut episode ends with a truncated hold step"
    assert [t.step for t in steps.values() if t.truncated] == [last.step] and not cut.success
    moved = bindings.wait(lambda m: getattr(binding(m, robot["a"]), "job", "") == "b", 10, f"{robot['a']} in job b")
    assert binding([moved], robot["a"]).topic_ns == "/user/jobs/b"
    # in job b: a fresh episode (after a reset), acknowledged by b's learner; job b's own robot goes on
    with trans["b"].lock:
        before = len(trans["b"].msgs)
    trans["b"].wait(lambda m: sum(t.robot_id == robot["a"] for t in m[before:]) >= 10
                    and sum(t.robot_id == robot["b"] for t in m[before:]) >= 10, 30,
                    "both robots' transitions in job b")
    acks["b"].wait(lambda m: any(a.robot_id == robot["a"] and a.steps for a in m), 20,
                   f"learner_b acknowledging {robot['a']}")
    assert {t.episode_id for t in trans["b"].msgs if t.robot_id == robot["a"]}.isdisjoint({cut.episode_id})
    assert not any(e.cut for e in episodes["b"].msgs), "job b's robot was cut"
    # the unacknowledged end of the cut episode is resent on job a's namespace only (this test is a reader there)
    trans["a"].wait(lambda m: sum(t.episode_id == cut.episode_id and t.step == last.step for t in m) >= 2, 10,
                    "the cut step resent on job a's namespace")
    assert not shared.msgs
    for proc in procs.items:   # stop them all at once (the fixture stops them one after another)
        proc.kill(signal.SIGINT)


def test_a_bad_topic_ns_stops_the_learner_the_inference_server_and_the_buffer_with_one_error_naming_it(
        ros_env, tmp_path):
    cfg = str(learning_config_dir(tmp_path) / "sac_peg.yaml")
    runs = {
        "learner": node_cmd("learner_node", {"config": cfg, "job": "peg", "topic_ns": "jobs/peg",
                                             "runs_dir": str(tmp_path / "runs")}, pkg="user_learner"),
        "inference": node_cmd("inference_node", {"config": cfg, "scheduled": True, "job": "peg",
                                                 "topic_ns": "/user/jobs/2peg"}, pkg="user_learner"),
        "buffer": node_cmd("buffer_node", {"bag_dir": str(tmp_path / "bag"), "topic_ns": "/user/jobs/p-g"},
                           pkg="user_buffer"),
    }
    started = {k: subprocess.Popen(c, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for k, c in runs.items()}
    bad = {"learner": "jobs/peg", "inference": "/user/jobs/2peg", "buffer": "/user/jobs/p-g"}
    for name, p in started.items():
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 2, out[-2000:]
        lines = [ln for ln in out.splitlines() if "config error" in ln]
        assert len(lines) == 1 and lines[0].endswith(
            f"config error: <parameters>: topic_ns: '{bad[name]}' is not a ROS namespace: expected '' (the shared "
            f"/user topics) or an absolute namespace of names made of letters, digits and '_' (not starting with a "
            f"digit), e.g. /user/jobs/peg"), out[-2000:]
