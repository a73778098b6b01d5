"""Fixtures for system tests: an isolated ROS 2 domain per test and processes that never leak."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))

from ros_isolation import isolated_ros_env  # noqa: E402


class Proc:
    """A child process in its own process group, its output captured to a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Wait until the output matches ``pattern``; fail with the output if it does not."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = rx.search(self.output())
            if m:
                return m
            if self.popen.poll() is not None:
                m = rx.search(self.output())
                if m:
                    return m
                pytest.fail(f"{self.name} exited with {self.popen.returncode} before printing "
                            f"{pattern!r}; output:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"{self.name} did not print {pattern!r} within {timeout} s; output:\n{self.output()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL the whole group; returns the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is not None:
                break
            self.kill(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
        self.kill(signal.SIGKILL)  # grandchildren, if any
        self._log.close()
        return self.popen.returncode


@pytest.fixture
def ros_env(tmp_path):
    """Environment (dict) for child processes: its own ROS domain, discovery on localhost only.

    The test process itself joins the same domain, so rclpy in the test talks to its children.
    """
    with isolated_ros_env() as env:
        yield env


@pytest.fixture
def procs(ros_env, tmp_path):
    """Start processes with ``procs.start(name, cmd)``; all are killed at teardown, pass or fail."""

    class Procs:
        def __init__(self) -> None:
            self.items: list[Proc] = []

        def start(self, name: str, cmd: list[str], **extra_env: str) -> Proc:
            env = dict(ros_env, **extra_env)
            p = Proc(name, cmd, env, tmp_path)
            self.items.append(p)
            return p

    ps = Procs()
    yield ps
    for p in ps.items:
        p.stop(timeout=3.0)


@pytest.fixture
def ros_node(ros_env):
    """An rclpy node in the test process, on the test's domain, spun by a background executor."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node(f"test_probe_{os.getpid()}", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    t = threading.Thread(target=ex.spin, daemon=True)
    t.start()
    yield node
    ex.shutdown(timeout_sec=1.0)
    node.destroy_node()
    ctx.try_shutdown()
    t.join(timeout=2.0)
