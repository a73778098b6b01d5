"""Teleop node: a human intervenes on one robot with a SpaceMouse (or a Joy topic, or the keyboard).

One node per robot (parameter ``robot_id``). It subscribes ``/<id>/observation`` and, only while
the human intervenes (input above the deadband within the last ``hold_s`` seconds, see
``user_hal.devices.teleop``), answers each observation on ``/<id>/action`` with the human's action
(``source = SOURCE_HUMAN``), and answers the current observation again when newer input arrives
before the robot's tick (at most every 20 ms). The robot node lets human actions win over the policy's and flags
their transitions ``intervened``. Outside interventions it publishes nothing and the policy acts.

Labels: the success / failure button (or key) calls the robot node's ``/<id>/label_episode``
service (``std_srvs/srv/SetBool``, ``data: true`` = success), which ends the running episode with
that outcome; the answer is logged.

Parameters:
- ``robot_id`` (``franka_0``);
- ``input``: ``spacemouse`` (HID via pyspacemouse; ``device`` picks one by name, empty = first
  found), ``joy`` (``sensor_msgs/Joy`` on ``joy_topic``, default ``/spacenav/joy`` as published
  by ``spacenav_node``; also what the scripted human publishes), or ``keyboard`` (needs a TTY);
- ``poll_hz`` (50): how often the SpaceMouse / keyboard is read;
- mapping (``TeleopConfig``): ``scale``, ``rotation_scale``, ``deadband``, ``hold_s``,
  ``input_timeout_s``, ``axis_map``, ``axis_sign``, ``close_button``, ``open_button``,
  ``success_button``, ``failure_button`` (-1 = none), ``success_key``, ``failure_key``,
  ``initial_gripper``.

A device that cannot be opened, a keyboard without a terminal or a bad parameter exits with one line
(code 2). A malformed Joy message is logged (throttled) and ignored.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Joy
from std_srvs.srv import SetBool
from user_msgs.msg import Action, Observation

from user_common import qos
from user_common.config_schema import ConfigError
from user_common.node_main import run_node
from .devices.teleop import (KeyboardSource, SpaceMouseSource, Teleop, TeleopConfig, TeleopError, describe_keys,
                     joy_sample)

#: Joy input: best effort matches every publisher (spacenav_node's and reliable ones alike)
JOY_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
INPUTS = ("spacemouse", "joy", "keyboard")
#: newer input re-answers the current observation at most this often (a SpaceMouse streams fast)
REANSWER_S = 0.02


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        d = TeleopConfig()
        p = self._param
        self.robot_id: str = p("robot_id", "franka_0")
        self.input: str = p("input", "spacemouse")
        joy_topic: str = p("joy_topic", "/spacenav/joy")
        device: str = p("device", "")
        poll_hz: float = p("poll_hz", 50.0)
        cfg = TeleopConfig(
            scale=p("scale", d.scale), rotation_scale=p("rotation_scale", d.rotation_scale),
            deadband=p("deadband", d.deadband), hold_s=p("hold_s", d.hold_s),
            input_timeout_s=p("input_timeout_s", d.input_timeout_s),
            axis_map=tuple(p("axis_map", list(d.axis_map))), axis_sign=tuple(p("axis_sign", list(d.axis_sign))),
            close_button=p("close_button", d.close_button), open_button=p("open_button", d.open_button),
            success_button=p("success_button", d.success_button), failure_button=p("failure_button", d.failure_button),
            success_key=p("success_key", d.success_key), failure_key=p("failure_key", d.failure_key),
            initial_gripper=p("initial_gripper", d.initial_gripper))
        if self.input not in INPUTS:
            raise ConfigError("<parameters>", "input", f"must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if not poll_hz > 0:
            raise ConfigError("<parameters>", "poll_hz", f"must be > 0, got {poll_hz}")
        try:
            self.teleop = Teleop(cfg)
        except TeleopError as exc:
            raise ConfigError("<parameters>", "teleop", str(exc)) from None
        self.source = None
        try:
            if self.input == "spacemouse":
                self.source = SpaceMouseSource(device)
            elif self.input == "keyboard":
                self.source = KeyboardSource(cfg)
        except TeleopError as exc:
            raise ConfigError("<parameters>", "input", f"{self.input}: {exc}") from None

        rid = self.robot_id
        self.pub = self.create_publisher(Action, qos.robot_topic(rid, "action"), qos.CONTROL)
        self.create_subscription(Observation, qos.robot_topic(rid, "observation"), self._on_obs, qos.CONTROL)
        self.label_cli = self.create_client(SetBool, qos.robot_topic(rid, "label_episode"))
        if self.input == "joy":
            self.create_subscription(Joy, joy_topic, self._on_joy, JOY_QOS)
        else:
            self.create_timer(1.0 / poll_hz, self._poll)
        self.create_timer(0.1, self._watch)
        self._obs: Observation | None = None
        self._answered: tuple[int, int] | None = None
        self._answered_at = 0.0
        self._answered_with = np.zeros(7, dtype=np.float32)
        self._was_intervening = False
        self._sent_in_intervention = 0
        self.actions_sent = 0
        where = {"joy": f"Joy on {joy_topic}", "spacemouse": "SpaceMouse (HID)",
                 "keyboard": describe_keys(cfg)}[self.input]
        self.get_logger().info(
            f"teleop for {rid}: input {self.input} ({where}); human actions on {qos.robot_topic(rid, 'action')} "
            f"while intervening (hold {cfg.hold_s:g} s after the last input); labels via "
            f"{qos.robot_topic(rid, 'label_episode')}")

    def _param(self, name: str, default):
        if isinstance(default, float):  # accept 2 as well as 2.0
            value = self.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True)).value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError("<parameters>", name, f"expected a number, got {value!r}")
            return float(value)
        try:
            return self.declare_parameter(name, default).value
        except InvalidParameterTypeException:
            raise ConfigError("<parameters>", name, f"expected a value like {default!r}") from None

    # -- input ------------------------------------------------------------------------------------------
    def _on_joy(self, msg: Joy) -> None:
        try:
            sample = joy_sample(msg.axes, msg.buttons, time.monotonic())
        except TeleopError as exc:
            self.get_logger().error(f"ignored Joy message: {exc}", throttle_duration_sec=2.0)
            return
        self._take(sample)

    def _poll(self) -> None:
        try:
            sample = self.source.poll()
        except (OSError, TeleopError) as exc:
            self.get_logger().error(f"reading {self.input} failed: {exc}", throttle_duration_sec=2.0)
            return
        if sample is not None:
            self._take(sample)

    def _take(self, sample) -> None:
        for label in self.teleop.update(sample):
            self._send_label(label == "success")
        if self.teleop.intervening() and self._obs is not None:
            # React at once: answer the current observation (again) with the newest input. The robot
            # executes the newest answer it holds at its tick, so fresh input is never a step late.
            self._answer(self._obs, again=True)
        self._watch()

    # -- output -----------------------------------------------------------------------------------------
    def _on_obs(self, obs: Observation) -> None:
        self._obs = obs
        self._answer(obs)

    def _answer(self, obs: Observation, again: bool = False) -> None:
        key = (obs.episode_id, obs.step)
        now = time.monotonic()
        if key == self._answered and (not again or now - self._answered_at < REANSWER_S):
            return
        a = self.teleop.action(now)
        if a is None:
            return
        if key == self._answered and np.array_equal(a.astype(np.float32), self._answered_with):
            return
        msg = Action()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.robot_id, msg.episode_id, msg.step = self.robot_id, obs.episode_id, obs.step
        msg.action = a.astype(np.float32).tolist()
        msg.source = Action.SOURCE_HUMAN
        self.pub.publish(msg)
        if key != self._answered:
            self._sent_in_intervention += 1
        self._answered, self._answered_at, self._answered_with = key, now, a.astype(np.float32)
        self.actions_sent += 1

    def _watch(self) -> None:
        now = self.teleop.intervening()
        if now and not self._was_intervening:
            self._sent_in_intervention = 0
            self.get_logger().info(f"intervention on {self.robot_id}: the human has control")
        elif self._was_intervening and not now:
            self.get_logger().info(f"intervention on {self.robot_id} ended after {self._sent_in_intervention} "
                                   f"human actions: the policy has control")
        self._was_intervening = now

    def _send_label(self, success: bool) -> None:
        what = "success" if success else "failure"
        if not self.label_cli.service_is_ready():
            self.get_logger().error(f"label {what} not sent: {self.label_cli.srv_name} is not available "
                                    f"(is the robot node of {self.robot_id} running?)")
            return
        self.get_logger().info(f"labelling the episode of {self.robot_id}: {what}")
        fut = self.label_cli.call_async(SetBool.Request(data=success))
        fut.add_done_callback(self._label_done)

    def _label_done(self, fut) -> None:
        resp = fut.result()
        if resp is None:
            self.get_logger().error("label call failed")
        elif resp.success:
            self.get_logger().info(f"label applied: {resp.message}")
        else:
            self.get_logger().warning(f"label refused: {resp.message}")

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(TeleopNode, "teleop_node", args=args))


if __name__ == "__main__":
    main()
