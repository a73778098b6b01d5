"""Helpers for system tests: profiles with changes, node command lines, a topic collector."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SIM_PROFILE = ROOT / "config" / "robot_sim.yaml"


def set_dotted(data: dict, dotted: dict) -> dict:
    """Set ``{"robot.cameras": []}``-style keys in a nested dict (in place); returns it."""
    for key, value in dotted.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def profile_with(tmp_path: Path, name: str = "robot_test.yaml", base: Path = SIM_PROFILE, **dotted) -> Path:
    """Copy of the sim profile (or ``base``) with dotted-key changes, e.g. ``**{"robot.cameras": []}``."""
    data = set_dotted(yaml.safe_load(base.read_text()), dotted)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def learning_config_dir(tmp_path: Path, profile: dict | None = None, **learner) -> Path:
    """A copy of config/ whose sac_peg.yaml has small, fast learner settings for tests."""
    d = tmp_path / "config"
    shutil.copytree(ROOT / "config", d)
    cfg = yaml.safe_load((d / "sac_peg.yaml").read_text())
    cfg["learner"].update({"min_buffer": 100, "publish_every_updates": 20, "checkpoint_every_updates": 100,
                           "sync_updates_per_episode": 20, "log_every_s": 2.0, **learner})
    cfg["algo"].update({"batch_size": 64, "hidden_dims": [64, 64]})
    (d / "sac_peg.yaml").write_text(yaml.safe_dump(cfg))
    prof = yaml.safe_load((d / "robot_sim.yaml").read_text())
    prof["robot"]["cameras"] = []
    prof["robot"]["max_episode_steps"] = 30
    set_dotted(prof, profile or {})  # e.g. {"robot.max_episode_steps": 100}
    (d / "robot_sim.yaml").write_text(yaml.safe_dump(prof))
    return d


def node_cmd(executable: str, params: dict, node_name: str | None = None, pkg: str = "user_hal") -> list[str]:
    """Command line of an installed node executable of ``pkg`` with ``-p name:=value`` parameters."""
    from ament_index_python.packages import get_package_prefix

    exe = Path(get_package_prefix(pkg)) / "lib" / pkg / executable
    cmd = [str(exe), "--ros-args"]
    if node_name:
        cmd += ["-r", f"__node:={node_name}"]
    for k, v in params.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        cmd += ["-p", f"{k}:={v}"]
    return cmd


def userctl_cmd(*args: str) -> list[str]:
    """Command line of the installed ``userctl`` CLI."""
    from ament_index_python.packages import get_package_prefix

    return [str(Path(get_package_prefix("user_bringup")) / "lib" / "user_bringup" / "userctl"), *args]


class Collect:
    """Every message of one topic received by the test's node, in arrival order.

    ``on_msg(m)`` (optional) runs first for each message, e.g. to answer it. ``lock`` guards ``msgs``
    when a test reads them while messages still arrive. The default QoS is reliable, depth 1000.
    """

    def __init__(self, node, msg_type, topic, qos=None, on_msg=None):
        if qos is None:
            from rclpy.qos import QoSProfile, ReliabilityPolicy

            qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.msgs: list = []
        self.lock = threading.Condition()
        self.on_msg = on_msg
        self.topic = topic
        self.sub = node.create_subscription(msg_type, topic, self._cb, qos)

    def wait_matched(self, timeout: float, publishers: int = 1) -> None:
        """Wait until this subscription is matched with ``publishers`` publishers (DDS discovery done)."""
        end = time.monotonic() + timeout
        while self.sub.get_publisher_count() < publishers:
            if time.monotonic() > end:
                pytest.fail(f"the test's subscription to {self.topic} matched {self.sub.get_publisher_count()} "
                            f"publishers within {timeout} s, expected {publishers}")
            time.sleep(0.02)

    def _cb(self, m):
        if self.on_msg is not None:
            self.on_msg(m)
        with self.lock:
            self.msgs.append(m)
            self.lock.notify_all()

    def wait(self, pred, timeout: float, what: str):
        """Wait until ``pred(msgs)`` holds and return the newest message; fail after ``timeout`` s."""
        end = time.monotonic() + timeout
        with self.lock:
            while not pred(self.msgs):
                left = end - time.monotonic()
                if left <= 0:
                    last = self.msgs[-1] if self.msgs else None
                    pytest.fail(f"timed out after {timeout} s waiting for {what}; got {len(self.msgs)} "
                                f"messages, last {last}")
                self.lock.wait(left)
            return self.msgs[-1] if self.msgs else None


def wait_subscribed(pub, timeout: float = 10.0, subscribers: int = 1) -> None:
    """Wait until ``pub`` is matched with ``subscribers`` subscriptions (a volatile sample sent before that
    is lost)."""
    end = time.monotonic() + timeout
    while pub.get_subscription_count() < subscribers:
        if time.monotonic() > end:
            pytest.fail(f"the test's publisher on {pub.topic_name} matched {pub.get_subscription_count()} "
                        f"subscriptions within {timeout} s, expected {subscribers}")
        time.sleep(0.02)


def drive(obs: Collect, pub, make_action, steps: int, timeout: float):
    """Answer every new observation (a held one too, as the inference node does) with ``make_action(o)``
    until the episode advanced ``steps`` steps or ended; returns the newest observation. Fails after
    ``timeout`` s naming how far the robot got."""
    with obs.lock:
        first, seen = obs.msgs[-1], len(obs.msgs) - 1
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with obs.lock:
            if len(obs.msgs) == seen:
                obs.lock.wait(0.05)
            o, n = obs.msgs[-1], len(obs.msgs)
        if o.episode_id != first.episode_id or o.step >= first.step + steps:
            return o
        if n != seen:
            seen = n
            pub.publish(make_action(o))
    pytest.fail(f"the robot executed {o.step - first.step} of {steps} actions in {timeout} s")
