"""ROS node around the scripted expert of the profile's task (``make_expert``): observation in, action
out, for one robot.

Two modes:
- policy (default): answers every observation of ``robot_id`` with the expert's action on
  ``/<id>/action`` (``source = SOURCE_SCRIPTED``);
- ``as_human:=true``: plays a human at a SpaceMouse instead. It publishes ``sensor_msgs/Joy`` on
  ``joy_topic`` (``/spacenav/joy``), as ``spacenav_node`` would, and the teleop node (``input:=joy``)
  turns that into human actions: the whole intervention path runs as on a real cell. The
  "human" moves the puck (the expert's action, through the inverse of the teleop mapping:
  ``scale``, ``rotation_scale``, ``deadband`` must match the teleop node's) only at the steps of
  ``human_steps`` of every ``human_every_n``-th episode (optionally only once the policy is stuck,
  ``human_when_stuck``), and rests (zero axes) otherwise. With
  ``label_success`` it presses ``success_button`` when, while active, it sees the task succeed.

Parameters: ``robot_id``, ``profile`` (required), ``seed``, ``noise``, ``as_human``, ``joy_topic``,
``human_steps`` (step ranges of an episode, e.g. ``"10-29,50-"``; default ``"0-"``: all),
``human_every_n`` (1: every episode, 3: episodes 0, 3, 6, ... as this node counts them),
``human_when_stuck`` (N > 0: take over only once the policy is failing -- the task's tracked point
(peg tip, cube) came no 5 mm closer to its target in N steps -- and keep control for the rest of that
episode; 0: off), ``human_corridor`` (C > 0, instead: take over whenever a policy action on
``/<id>/action`` is more than C action units from the expert's action for the same observation, motion
entries only, for the next ``human_hold_steps`` steps, then hand back -- the rule under which
HG-DAgger improved in ``bench/hitl.py``; it replaces ``human_when_stuck``; 0: off),
``label_success``, ``success_button`` (index in ``buttons``), ``num_buttons`` (2, as a SpaceMouse),
``human_gain`` (0.5: the human moves the puck this fraction of the expert's action -- a human's
gentler, delay-tolerant hand), ``scale``, ``rotation_scale``, ``deadband``.
"""
from __future__ import annotations

import sys

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Joy
from user_msgs.msg import Action, Observation

from user_common import qos
from user_common.config_schema import ConfigError
from user_common.node_main import run_node
from .profile import load_profile
from .tasks.experts import HumanSchedule, make_expert, parse_step_ranges
from .devices.teleop import TeleopConfig, device_axes_for_action


class ScriptedPolicyNode(Node):
    """Answers every observation of ``robot_id`` with the scripted expert's action (or plays a human)."""

    def __init__(self) -> None:
        super().__init__("scripted_policy")
        self.declare_parameter("robot_id", "franka_0")
        self.declare_parameter("profile", "")
        self.declare_parameter("seed", 0)
        self.declare_parameter("noise", 0.0)
        self.declare_parameter("as_human", False)
        self.declare_parameter("joy_topic", "/spacenav/joy")
        self.declare_parameter("human_steps", "0-")
        self.declare_parameter("human_every_n", 1)
        self.declare_parameter("human_when_stuck", 0)
        self.declare_parameter("human_corridor", 0.0)
        self.declare_parameter("human_hold_steps", 3)
        self.declare_parameter("label_success", True)
        self.declare_parameter("success_button", 1)
        self.declare_parameter("num_buttons", 2)
        self.declare_parameter("human_gain", 0.5)
        d = TeleopConfig()
        self.declare_parameter("scale", d.scale)
        self.declare_parameter("rotation_scale", d.rotation_scale)
        self.declare_parameter("deadband", d.deadband)
        p = self.get_parameter
        self.robot_id = p("robot_id").value
        path = p("profile").value
        if not path:
            raise ConfigError("<parameters>", "profile", "no robot profile given (parameter 'profile')")
        profile = load_profile(path)
        self.policy = make_expert(profile, noise=float(p("noise").value), seed=int(p("seed").value))
        self.as_human = bool(p("as_human").value)
        if self.as_human:
            try:
                ranges = parse_step_ranges(p("human_steps").value)
            except ValueError as exc:
                raise ConfigError("<parameters>", "human_steps", str(exc)) from None
            every_n, stuck = int(p("human_every_n").value), int(p("human_when_stuck").value)
            if every_n < 1:
                raise ConfigError("<parameters>", "human_every_n", f"must be >= 1, got {every_n}")
            if stuck < 0:
                raise ConfigError("<parameters>", "human_when_stuck", f"must be >= 0, got {stuck}")
            self.corridor = float(p("human_corridor").value)
            self.hold_steps = int(p("human_hold_steps").value)
            if self.corridor < 0:
                raise ConfigError("<parameters>", "human_corridor", f"must be >= 0, got {self.corridor}")
            if self.corridor > 0:
                stuck = 0   # the corridor rule replaces the stuck rule
            if self.hold_steps < 1:
                raise ConfigError("<parameters>", "human_hold_steps", f"must be >= 1, got {self.hold_steps}")
            self.schedule = HumanSchedule(ranges, every_n, stuck)
            self._expert_said: dict[tuple[int, int], np.ndarray] = {}   # (episode, step) -> expert action
            self._until = (-1, -1)   # (episode, first step after the human's hold)
            self.num_buttons = int(p("num_buttons").value)
            self.gain = float(p("human_gain").value)
            if not 0.0 < self.gain <= 1.0:
                raise ConfigError("<parameters>", "human_gain", f"must be in (0, 1], got {self.gain}")
            self.success_button = int(p("success_button").value)
            self.label_success = bool(p("label_success").value)
            if self.label_success and not 0 <= self.success_button < self.num_buttons:
                raise ConfigError("<parameters>", "success_button",
                                  f"must be in [0, num_buttons={self.num_buttons}), got {self.success_button}")
            self.mapping = TeleopConfig(scale=float(p("scale").value), rotation_scale=float(p("rotation_scale").value),
                                        deadband=float(p("deadband").value))
            self.joy_pub = self.create_publisher(Joy, p("joy_topic").value, 10)
            self._labelled: set[int] = set()
        else:
            self.pub = self.create_publisher(Action, qos.robot_topic(self.robot_id, "action"), qos.CONTROL)
        self.create_subscription(Observation, qos.robot_topic(self.robot_id, "observation"), self._on_obs,
                                 qos.CONTROL)
        if self.as_human and self.corridor > 0:
            self.create_subscription(Action, qos.robot_topic(self.robot_id, "action"), self._on_action,
                                     qos.CONTROL)
        if self.as_human:
            self.get_logger().info(
                f"scripted human for {self.robot_id}: Joy on {p('joy_topic').value} at steps "
                f"{p('human_steps').value!r} of every {every_n}. episode"
                f"{f' once the policy is stuck for {stuck} steps' if stuck else ''}"
                f"{f' whenever the policy leaves a corridor of {self.corridor:g} ({self.hold_steps} steps)' if self.corridor else ''}")

    def _on_obs(self, obs: Observation) -> None:
        proprio = np.asarray(obs.proprio, dtype=np.float64)
        if self.as_human:
            return self._play_human(obs, proprio)
        a = Action()
        a.header.stamp = obs.header.stamp
        a.robot_id, a.episode_id, a.step = obs.robot_id, obs.episode_id, obs.step
        a.action = self.policy.act(proprio).astype(np.float32).tolist()
        a.source = Action.SOURCE_SCRIPTED
        self.pub.publish(a)

    def _on_action(self, msg: Action) -> None:
        """Corridor rule: a policy action far from the expert's for the same observation starts a hold."""
        expert = self._expert_said.get((msg.episode_id, msg.step))
        if msg.source != Action.SOURCE_POLICY or expert is None or len(msg.action) < 6:
            return
        if np.linalg.norm(np.asarray(msg.action[:6]) - expert[:6]) > self.corridor:
            self._until = (msg.episode_id, max(self._until[1] if self._until[0] == msg.episode_id else -1,
                                               msg.step + 1 + self.hold_steps))

    def _play_human(self, obs: Observation, proprio: np.ndarray) -> None:
        outcome = self.policy.judge(proprio)
        active = self.schedule.active(obs.episode_id, obs.step, outcome.distance)
        expert = self.policy.act(proprio)
        if self.corridor > 0:
            self._expert_said[(obs.episode_id, obs.step)] = expert
            while len(self._expert_said) > 64:
                self._expert_said.pop(next(iter(self._expert_said)))
            active = active and self._until[0] == obs.episode_id and obs.step < self._until[1]
        joy = Joy()
        joy.header.stamp = self.get_clock().now().to_msg()
        joy.header.frame_id = "spacenav"
        joy.buttons = [0] * self.num_buttons
        axes = np.zeros(6)
        if active:
            axes = device_axes_for_action(self.gain * expert, self.mapping)
            if self.label_success and obs.episode_id not in self._labelled and outcome.success:
                joy.buttons[self.success_button] = 1
                self._labelled.add(obs.episode_id)
                axes[:] = 0.0
                self.get_logger().info(f"scripted human: task done at step {obs.step}: pressing success")
        joy.axes = axes.astype(np.float32).tolist()
        self.joy_pub.publish(joy)


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(ScriptedPolicyNode, "scripted_policy", args=args))


if __name__ == "__main__":
    main()
