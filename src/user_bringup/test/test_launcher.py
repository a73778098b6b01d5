"""Tests of the embedded launcher with small graphs of tiny real processes.

Each graph lives in a temporary config folder; its helper executable is installed into a temporary
ament prefix as package ``fakepkg`` so the launcher finds it exactly as it finds real nodes.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from user_bringup.graph import load_graph
from user_bringup.launcher import EpisodeTally, Launcher

pytestmark = pytest.mark.timeout(60)

_DOMAINS = itertools.count()

TOOL = """\
#!{python}
\"\"\"Tiny stand-in node; what it does is chosen by its first argument.\"\"\"
import os, signal, subprocess, sys, time
import yaml

argv = sys.argv[1:]
cut = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
args, ros = argv[:cut], argv[cut + 1:]
if "--params-file" in ros:
    with open(ros[ros.index("--params-file") + 1]) as fh:
        doc = yaml.safe_load(fh)
    (fqn, body), = doc.items()
    print(f"params {{fqn}} {{body['ros__parameters']}}", flush=True)
mode = args[0]
if mode == "talk":  # talk N PERIOD: print N lines, then exit 0
    for i in range(int(args[1])):
        print(f"tick {{i}}", flush=True)
        time.sleep(float(args[2]))
elif mode == "crash":  # crash DELAY CODE
    time.sleep(float(args[1]))
    print("about to crash", flush=True)
    sys.exit(int(args[2]))
elif mode == "crash_once":  # crash_once FLAGFILE: exit 3 the first time, then talk and exit 0
    if not os.path.exists(args[1]):
        open(args[1], "w").close()
        print("crashing once", flush=True)
        sys.exit(3)
    print("second life", flush=True)
elif mode == "hold":  # hold PIDFILE [stubborn]: run forever with a child in the same group
    if args[2:] == ["stubborn"]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child: only SIGKILL works
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "300"])
    with open(args[1], "a") as fh:
        fh.write(f"{{os.getpid()}}\\n{{child.pid}}\\n")
    print("holding", flush=True)
    while True:
        time.sleep(1.0)
elif mode == "episodes":  # episodes ROBOT N: publish N EpisodeStats, then exit 0
    import rclpy
    from user_msgs.msg import EpisodeStats
    rclpy.init()
    node = rclpy.create_node("episodes")
    pub = node.create_publisher(EpisodeStats, "/user/episodes", 100)
    deadline = time.monotonic() + 15.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(int(args[2])):
        pub.publish(EpisodeStats(robot_id=args[1], episode_id=100 + i, episode_index=i,
                                 steps=10 * (i + 1), episode_return=0.5 * i, success=i % 3 != 1))
    time.sleep(1.0)  # let reliable delivery finish before the process goes away
    node.destroy_node()
    rclpy.shutdown()
"""


def _pid_alive(pid: int) -> bool:
    """Return True if ``pid`` runs (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float = 3.0) -> list[int]:
    """Wait for every pid to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _pid_alive(p)]


def _kill_all(pids: list[int]) -> None:
    """Last-resort cleanup so a failing test leaves nothing behind."""
    for pid in pids:
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _started_pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"^\[userctl\] started \S+ \(pid (\d+)\)", output, re.M)]


def _file_pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Isolate ROS traffic and install the helper tool as ament package ``fakepkg``."""
    domain = 100 + (os.getpid() * 7 + next(_DOMAINS)) % 131
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    prefix = tmp_path / "prefix"
    (prefix / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (prefix / "share/ament_index/resource_index/packages/fakepkg").write_text("")
    tool = prefix / "lib/fakepkg/tool"
    tool.parent.mkdir(parents=True)
    tool.write_text(TOOL.format(python=sys.executable))
    tool.chmod(0o755)
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{prefix}{os.pathsep}{os.environ.get('AMENT_PREFIX_PATH', '')}")
    config = tmp_path / "config"
    config.mkdir()
    yield config


def _graph(config: Path, text: str, name: str = "g.yaml") -> Path:
    path = config / name
    path.write_text(textwrap.dedent(text))
    return path


def _run(graph_path: Path, **kwargs: object) -> tuple[int, str, float]:
    out = io.StringIO()
    launcher = Launcher(load_graph(graph_path, {}), out=out, sigint_timeout=1.0, sigterm_timeout=1.0, **kwargs)
    t0 = time.monotonic()
    code = launcher.run()
    return code, out.getvalue(), time.monotonic() - t0


def test_ends_run_prefixing_and_clean_teardown(ros_env: Path) -> None:
    """Output is prefixed; the run ends once every ends_run node exited; nothing survives."""
    path = _graph(
        ros_env,
        """\
        nodes:
          - {name: registry, package: user_hal, executable: registry_node, namespace: /user}
          - name: fast
            package: fakepkg
            executable: tool
            namespace: /ns
            arguments: [talk, "1", "0.1"]
            parameters: {greeting: hi, count: 3}
            ends_run: true
          - {name: slow, package: fakepkg, executable: tool, arguments: [talk, "8", "0.25"], ends_run: true}
          - {name: holder, package: fakepkg, executable: tool, arguments: [hold, "${config_dir}/pids"]}
        """,
    )
    code, out, _ = _run(path)
    pids = sorted(set(_started_pids(out) + _file_pids(ros_env / "pids")))
    try:
        assert code == 0, out
        assert "[ns/fast] params /ns/fast {'greeting': 'hi', 'count': 3}" in out
        assert "[ns/fast] tick 0" in out
        assert "[holder] holding" in out
        assert "[user/registry] [INFO]" in out and "robot registry up" in out
        # The run waits for the slower ends_run node before stopping the rest.
        assert out.index("[slow] tick 7") < out.index("all ends_run nodes have exited")
        assert "[userctl] stopped user/registry (code 0)" in out  # SIGINT is a clean stop
        assert len(pids) == 5  # 4 nodes + the holder's child
        assert _wait_gone(pids) == []
    finally:
        _kill_all(pids)


def test_crash_is_reported_and_everything_is_torn_down(ros_env: Path) -> None:
    """A crashing node ends the run with its code; a stubborn node is killed; no child survives."""
    path = _graph(
        ros_env,
        """\
        nodes:
          - {name: long_job, package: fakepkg, executable: tool, arguments: [talk, "100", "0.2"], ends_run: true}
          - {name: stubborn, package: fakepkg, executable: tool, arguments: [hold, "${config_dir}/pids", stubborn]}
          - {name: crasher, executable: "${config_dir}/../prefix/lib/fakepkg/tool", arguments: [crash, "0.7", "3"]}
        """,
    )
    code, out, elapsed = _run(path)
    pids = sorted(set(_started_pids(out) + _file_pids(ros_env / "pids")))
    try:
        assert code == 3, out
        assert "[crasher] about to crash" in out
        assert "[userctl] node crasher crashed (code 3); stopping the run" in out
        assert "sending SIGTERM" in out and "sending SIGKILL" in out  # the stubborn group escalated
        assert "stopped stubborn (signal SIGKILL)" in out
        assert elapsed < 15.0
        assert len(pids) == 4
        assert _wait_gone(pids) == []
    finally:
        _kill_all(pids)


def test_crashed_node_with_respawn_delay_is_restarted(ros_env: Path) -> None:
    """respawn_delay restarts a node after a crash (only): the run goes on and ends normally."""
    path = _graph(
        ros_env,
        """\
        nodes:
          - name: flaky
            package: fakepkg
            executable: tool
            arguments: [crash_once, "${config_dir}/flag"]
            ends_run: true
            respawn_delay: 0.5
          - {name: holder, package: fakepkg, executable: tool, arguments: [hold, "${config_dir}/pids"]}
        """,
    )
    code, out, _ = _run(path, monitor_episodes=False)
    pids = sorted(set(_started_pids(out) + _file_pids(ros_env / "pids")))
    try:
        assert code == 0, out
        assert "[userctl] node flaky crashed (code 3); respawning in 0.5 s" in out
        assert out.index("[flaky] crashing once") < out.index("[flaky] second life")
        assert len(re.findall(r"started flaky \(pid", out)) == 2, "a clean exit must not be respawned"
        assert out.index("second life") < out.index("all ends_run nodes have exited")
        assert _wait_gone(pids) == []
    finally:
        _kill_all(pids)


def test_a_crash_seen_between_two_polls_is_still_respawned(ros_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that dies just after the launcher's exit check is respawned, not taken as the run's end.

    The first poll after the process has exited reports it still running, as if the crash came a moment
    after that check; the launcher must then handle the crash on its next round, not end the run.
    """
    from user_bringup import launcher as launcher_mod

    real_poll = launcher_mod._Child.poll
    hidden: set[int] = set()

    def late_poll(child: launcher_mod._Child) -> int | None:
        if child.returncode is None and child.proc is not None and child.proc.poll() is not None \
                and child.proc.pid not in hidden:
            hidden.add(child.proc.pid)
            return None
        return real_poll(child)

    monkeypatch.setattr(launcher_mod._Child, "poll", late_poll)
    path = _graph(
        ros_env,
        """\
        nodes:
          - name: flaky
            package: fakepkg
            executable: tool
            arguments: [crash_once, "${config_dir}/flag"]
            ends_run: true
            respawn_delay: 0.2
        """,
    )
    code, out, _ = _run(path, monitor_episodes=False)
    pids = _started_pids(out)
    try:
        assert code == 0, out
        assert "[userctl] node flaky crashed (code 3); respawning in 0.2 s" in out, out
        assert len(re.findall(r"started flaky \(pid", out)) == 2, out
        assert out.index("second life") < out.index("all ends_run nodes have exited"), out
    finally:
        _kill_all(pids)


def test_a_node_refusing_its_configuration_is_not_respawned(ros_env: Path) -> None:
    """Exit code 2 (bad configuration) stops the run at once instead of respawning forever."""
    path = _graph(
        ros_env,
        """\
        nodes:
          - {name: misconfigured, package: fakepkg, executable: tool, arguments: [crash, "0.2", "2"],
             respawn_delay: 0.3}
          - {name: long_job, package: fakepkg, executable: tool, arguments: [talk, "100", "0.2"], ends_run: true}
        """,
    )
    code, out, elapsed = _run(path, monitor_episodes=False)
    pids = _started_pids(out)
    try:
        assert code == 2, out
        assert "[userctl] node misconfigured refused its configuration (code 2); stopping the run" in out
        assert len(re.findall(r"started misconfigured \(pid", out)) == 1
        assert elapsed < 15.0
        assert _wait_gone(pids) == []
    finally:
        _kill_all(pids)


def test_unexpected_clean_exit_ends_the_run(ros_env: Path) -> None:
    """A node that is not ends_run exiting, even with code 0, stops the run with status 1."""
    path = _graph(
        ros_env,
        """\
        nodes:
          - {name: forever, package: fakepkg, executable: tool, arguments: [talk, "100", "0.2"], ends_run: true}
          - {name: quitter, package: fakepkg, executable: tool, arguments: [talk, "1", "0.3"]}
        """,
    )
    code, out, _ = _run(path, monitor_episodes=False)
    pids = _started_pids(out)
    try:
        assert code == 1, out
        assert "node quitter exited unexpectedly (code 0)" in out
        assert _wait_gone(pids) == []
    finally:
        _kill_all(pids)


def test_episode_lines_and_summary(ros_env: Path) -> None:
    """Finished episodes from /user/episodes are printed, then a per-robot summary."""
    path = _graph(
        ros_env,
        """\
        nodes:
          - {name: episodes, package: fakepkg, executable: tool, arguments: [episodes, fake_0, "3"], ends_run: true}
        """,
    )
    code, out, _ = _run(path)
    assert code == 0, out
    assert "[episode] fake_0 episode 0: steps 10, return 0.000, success yes, success rate 100% (last 1)" in out
    assert "[episode] fake_0 episode 1: steps 20, return 0.500, success no, success rate 50% (last 2)" in out
    assert re.search(r"^\[userctl\]\s+fake_0\s+3\s+2\s+66\.7%\s+20\.0$", out, re.M), out


def test_cli_launch_forwards_ctrl_c_and_writes_logs(ros_env: Path, tmp_path: Path) -> None:
    """`userctl launch --quiet --log-dir` stops every node on SIGINT and keeps per-node logs."""
    path = _graph(
        ros_env,
        """\
        args:
          ticks: {default: 3}
        nodes:
          - {name: talker, package: fakepkg, executable: tool, arguments: [talk, "${ticks}", "0.1"], ends_run: true}
          - {name: holder, package: fakepkg, executable: tool, arguments: [hold, "${config_dir}/pids"]}
        """,
    )
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "user_bringup.cli", "launch", str(path), "ticks:=1000",
           "--quiet", "--log-dir", str(logs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 20.0
        while len(_file_pids(ros_env / "pids")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let the talker print a few lines
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        pids = sorted(set(_started_pids(out) + _file_pids(ros_env / "pids")))
        assert proc.returncode == 128 + signal.SIGINT, out
        assert "received SIGINT; stopping all nodes" in out
        assert "[talker]" not in out  # --quiet: node output goes to the log files only
        assert len(pids) == 3 and _wait_gone(pids) == []
        assert "[talker] tick 0" in (logs / "talker.log").read_text()
        assert "[holder] holding" in (logs / "holder.log").read_text()
        assert "received SIGINT" in (logs / "userctl.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_all(pids + _file_pids(ros_env / "pids"))


def test_missing_executable_starts_nothing(ros_env: Path) -> None:
    """A graph naming an unknown package is refused before any process starts."""
    path = _graph(ros_env, "nodes: [{name: x, package: no_such_pkg, executable: y}]\n")
    from user_bringup.launcher import LaunchError

    with pytest.raises(LaunchError, match="no_such_pkg"):
        Launcher(load_graph(path, {}), out=io.StringIO()).run()


def test_episode_tally_window() -> None:
    """The running success rate covers the last 20 episodes; duplicates are ignored."""
    tally = EpisodeTally()
    for i in range(25):
        tally.add("r", i, i, 10, 1.0, success=i >= 5)
    assert tally.add("r", 24, 24, 10, 1.0, success=True) is None
    line = tally.add("r", 25, 25, 30, 1.0, success=False)
    assert line is not None and "success rate 95% (last 20)" in line
    row = tally.summary().splitlines()[1].split()
    assert row == ["r", "26", "20", "76.9%", "10.8"]


def test_episode_tally_per_embodiment() -> None:
    """With robots of two embodiments, progress lines add the embodiment's rate and the summary a table."""
    tally = EpisodeTally()
    tally.set_embodiment("franka_0", "franka_fr3")
    tally.set_embodiment("wxai_0", "wxai")
    tally.set_embodiment("wxai_1", "wxai")
    assert tally.add("franka_0", 1, 0, 10, 1.0, success=True).endswith("; franka_fr3 100% (last 1)")
    tally.add("wxai_0", 1, 0, 30, 0.0, success=False)
    assert tally.add("wxai_1", 1, 0, 20, 1.0, success=True).endswith("; wxai 50% (last 2)")
    lines = tally.summary().splitlines()
    assert lines[0].split()[0] == "ROBOT" and len(lines) == 4 + 3
    assert lines[4].split()[0] == "EMBODIMENT"
    assert lines[5].split() == ["franka_fr3", "1", "1", "100.0%", "10.0"]
    assert lines[6].split() == ["wxai", "2", "1", "50.0%", "25.0"]
