"""The embedded launcher runs the franka_sac graph; `userctl robots` lists the robot; a robot node
killed with SIGKILL shows as LOST, is respawned, and runs again; nothing outlives the launcher."""
import os
import re
import signal
import subprocess
import time

import pytest

from hal_helpers import userctl_cmd

pytestmark = pytest.mark.timeout(180)


def robots_table(env) -> str:
    r = subprocess.run(userctl_cmd("robots", "--timeout", "3"), env=env,
                       capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def wait_table(env, pattern: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    table = ""
    while time.monotonic() < end:
        table = robots_table(env)
        if re.search(pattern, table):
            return table
        time.sleep(0.5)
    pytest.fail(f"`userctl robots` never matched {pattern!r} within {timeout} s; last table:\n{table}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_launcher_lists_robot_detects_kill_and_respawns(procs, ros_env):
    launcher = procs.start("userctl", userctl_cmd(
        "launch", "franka_sac", "policy:=scripted", "respawn_delay:=9.0", "realtime_factor:=1.0"))
    launcher.wait_for(r"started franka_0/robot \(pid \d+\)", 30)
    table = wait_table(ros_env, r"franka_0\s*\|\s*franka_fr3\s*\|\s*sim\s*\|\s*(RUNNING|RESETTING)", 60)
    assert re.search(r"\d+\.\d / 10\.0", table), f"achieved / nominal control rate missing:\n{table}"
    launcher.wait_for(r"\[episode\] franka_0 episode 0: .*success yes", 60)

    robot_pid = int(re.search(r"started franka_0/robot \(pid (\d+)\)", launcher.output()).group(1))
    os.killpg(robot_pid, signal.SIGKILL)
    launcher.wait_for(r"node franka_0/robot crashed \(signal SIGKILL\); respawning in 9 s", 10)
    # the registry says so within its heartbeat timeout (3 s), and the table shows it until the robot returns
    launcher.wait_for(r"robot franka_0 LOST: last heartbeat \d+\.\d s ago", 10)
    wait_table(ros_env, r"franka_0\s*\|.*\|\s*LOST\s*\|", 5)

    launcher.wait_for(r"robot franka_0 returned", 40)
    wait_table(ros_env, r"franka_0\s*\|.*\|\s*(RUNNING|RESETTING)\s*\|", 30)

    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", launcher.output())]
    assert len(pids) == 4, f"expected registry, robot, policy and the respawned robot: {pids}"
    launcher.popen.send_signal(signal.SIGINT)
    assert launcher.popen.wait(timeout=30) == 130
    time.sleep(0.5)
    survivors = [p for p in pids if alive(p)]
    assert not survivors, f"processes outlived the launcher: {survivors}"
    assert "episode summary" in launcher.output()
