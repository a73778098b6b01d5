"""Shared by the benchmark scripts: run the node graph as a subprocess and watch its episodes."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def isolate_ros() -> None:
    """A private ROS domain on localhost for this benchmark and its children."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


def config_copy(dest: Path, learner: dict[str, dict] | None = None) -> Path:
    """Copy config/ to ``dest/config`` with ``{config_name: {learner_key: value}}`` changes."""
    d = dest / "config"
    shutil.copytree(ROOT / "config", d)
    for name, changes in (learner or {}).items():
        p = d / f"{name}.yaml"
        cfg = yaml.safe_load(p.read_text())
        cfg["learner"].update(changes)
        p.write_text(yaml.safe_dump(cfg))
    return d


class Listener:
    """An rclpy node in this process on its own context, spun by a background thread; ``close()`` ends it."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.ctx.try_shutdown()


class EpisodeClock(Listener):
    """Receives /user/episodes in this process and stamps each on arrival (time.monotonic())."""

    def __init__(self) -> None:
        from user_msgs.msg import EpisodeStats

        super().__init__("bench_episodes")
        self.events: list[tuple[float, object]] = []
        self.node.create_subscription(EpisodeStats, "/user/episodes",
                                      lambda m: self.events.append((time.monotonic(), m)), 100)


def run_graph(graph: Path, args: list[str], cwd: Path, log: Path, timeout_s: float,
              stop_when=None) -> int:
    """Run ``userctl launch <graph> <args>``; Ctrl-C it when ``stop_when()`` turns true or on timeout."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(["userctl", "launch", str(graph), *args], cwd=cwd, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                if time.monotonic() > end or (stop_when is not None and stop_when()):
                    os.killpg(proc.pid, signal.SIGINT)
                    proc.wait(timeout=60)
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc.returncode


PROGRESS = re.compile(r"env steps (\d+) \([\d.]+/s\) \| updates (\d+)")


def updates_per_env_step(log: Path) -> float:
    """Updates per environment step in the learner's last progress line of a run's log (NaN if none)."""
    found = PROGRESS.findall(log.read_text(errors="replace"))
    if not found:
        return float("nan")
    steps, updates = map(int, found[-1])
    return updates / max(steps, 1)
