"""A stand-in for franka_ros2, for tests and dry runs without a robot. Not a simulator.

It speaks franka_ros2's topic names, message types and QoS, so the ``franka_ros2`` backend cannot
tell the difference on the wire:

- subscribes ``/cartesian_impedance_example_controller/equilibrium_pose`` (PoseStamped, reliable,
  as the controller does; malformed poses are discarded with a warning, as the controller does);
- publishes best-effort, at ``rate_hz``: ``/franka_robot_state_broadcaster/current_pose``
  (PoseStamped, end-effector frame in ``fr3_link0``), ``.../measured_joint_states`` (the 7 arm
  joints) and ``.../external_wrench_in_base_frame`` (WrenchStamped); and the finger joints on
  ``gripper_joint_states_topic`` (reliable, like franka_gripper) at up to 50 Hz;
- where ``franka_msgs`` imports, serves the gripper ``move`` / ``grasp`` actions and
  ``/action_server/error_recovery``.

"Dynamics": the end-effector pose follows the equilibrium pose as a first-order lag with time
constant ``time_constant`` (position exponentially, orientation by slerp), which is roughly how a
well-damped Cartesian impedance controller in free space behaves. There are no contacts, no
joint limits and no kinematics: the arm joints are published as a fixed home configuration, the
wrench is the constant parameter ``external_wrench``.

Parameters: ``rate_hz``, ``time_constant``, ``initial_pose`` ([x, y, z, qx, qy, qz, qw] of the
end effector), ``gripper_width``, ``external_wrench``, the topic and action names, ``frame_id``,
``arm_joint_names``, ``finger_joint_names``. Fault injection: ``publish_state`` (settable at run
time with ``ros2 param set``: false stops all state topics, like a dead driver) and
``stall_after_s`` (> 0: stop publishing state that many seconds after start).
"""
from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from user_common.executors import ThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState

from user_common.config_schema import ConfigError
from user_hal.backends.franka_ros2 import DEFAULT_ARM_JOINTS, DEFAULT_FINGER_JOINTS, load_franka_actions
from user_hal.core.geometry import quat_normalize
from user_common.node_main import run_node

#: franka_robot_state_broadcaster's convenience topics: QoS(1).best_effort()
BROADCASTER_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)
#: the controller's equilibrium subscription and franka_gripper's joint states: system defaults
RELIABLE_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
#: a Franka "ready" pose (rad); published as is, not consistent with the simulated end-effector pose
HOME_Q = [0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398]


def slerp(a: np.ndarray, b: np.ndarray, f: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (x, y, z, w), shortest way."""
    d = float(np.dot(a, b))
    if d < 0.0:
        b, d = -b, -d
    if d > 0.9995:
        return quat_normalize(a + f * (b - a))
    theta = math.acos(min(1.0, d))
    s = math.sin(theta)
    return (math.sin((1.0 - f) * theta) * a + math.sin(f * theta) * b) / s


class FrankaRos2Standin(Node):
    """Plays franka_ros2's cartesian impedance controller + state broadcaster (+ gripper)."""

    def __init__(self) -> None:
        super().__init__("franka_ros2_standin")
        d = self.declare_parameter
        d("rate_hz", 250.0)
        d("time_constant", 0.05)
        d("initial_pose", [0.45, 0.0, 0.40, 1.0, 0.0, 0.0, 0.0])
        d("gripper_width", 0.02)
        d("external_wrench", [0.0] * 6)
        d("frame_id", "fr3_link0")
        d("equilibrium_pose_topic", "/cartesian_impedance_example_controller/equilibrium_pose")
        d("current_pose_topic", "/franka_robot_state_broadcaster/current_pose")
        d("joint_states_topic", "/franka_robot_state_broadcaster/measured_joint_states")
        d("wrench_topic", "/franka_robot_state_broadcaster/external_wrench_in_base_frame")
        d("gripper_joint_states_topic", "/fr3_gripper/joint_states")
        d("gripper_move_action", "/fr3_gripper/move")
        d("gripper_grasp_action", "/fr3_gripper/grasp")
        d("error_recovery_action", "/action_server/error_recovery")
        d("arm_joint_names", list(DEFAULT_ARM_JOINTS))
        d("finger_joint_names", list(DEFAULT_FINGER_JOINTS))
        d("publish_state", True)
        d("stall_after_s", 0.0)
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        self.rate = float(p("rate_hz"))
        self.tau = float(p("time_constant"))
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError("<parameters>", "rate_hz", f"must be > 0, got {self.rate}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ConfigError("<parameters>", "time_constant", f"must be >= 0, got {self.tau}")
        pose = np.asarray(p("initial_pose"), dtype=float)
        if pose.shape != (7,) or not np.all(np.isfinite(pose)) or np.linalg.norm(pose[3:]) < 1e-6:
            raise ConfigError("<parameters>", "initial_pose",
                              f"must be [x, y, z, qx, qy, qz, qw], got {pose.tolist()}")
        wrench = np.asarray(p("external_wrench"), dtype=float)
        if wrench.shape != (6,) or not np.all(np.isfinite(wrench)):
            raise ConfigError("<parameters>", "external_wrench", f"must be 6 numbers, got {wrench.tolist()}")
        self.frame_id = p("frame_id")
        self.arm_joints = list(p("arm_joint_names"))
        self.finger_joints = list(p("finger_joint_names"))
        self.wrench = wrench

        self._lock = threading.Lock()
        self.pos = pose[:3].copy()
        self.quat = quat_normalize(pose[3:])
        self.eq_pos, self.eq_quat = self.pos.copy(), self.quat.copy()
        self.width = float(p("gripper_width"))
        self.width_goal = self.width
        self.gripper_speed = 0.1
        self.received = 0
        self.discarded = 0
        self.publishing = bool(p("publish_state"))
        stall = float(p("stall_after_s"))
        self.stall_at = time.monotonic() + stall if stall > 0 else math.inf
        self.add_on_set_parameters_callback(self._on_params)

        cb = ReentrantCallbackGroup()
        self.create_subscription(PoseStamped, p("equilibrium_pose_topic"), self._on_equilibrium, RELIABLE_QOS)
        self.pub_pose = self.create_publisher(PoseStamped, p("current_pose_topic"), BROADCASTER_QOS)
        self.pub_joints = self.create_publisher(JointState, p("joint_states_topic"), BROADCASTER_QOS)
        self.pub_wrench = self.create_publisher(WrenchStamped, p("wrench_topic"), BROADCASTER_QOS)
        self.pub_fingers = self.create_publisher(JointState, p("gripper_joint_states_topic"), RELIABLE_QOS)
        self._finger_every = max(1, round(self.rate / 50.0))
        self._ticks = 0
        self._last = time.monotonic()
        self.create_timer(1.0 / self.rate, self._tick, callback_group=cb)

        actions, why = load_franka_actions()
        self._franka = actions
        self.recoveries = 0
        if actions is not None:
            from rclpy.action import ActionServer

            self._actions = [
                ActionServer(self, actions.Move, p("gripper_move_action"), self._move, callback_group=cb),
                ActionServer(self, actions.Grasp, p("gripper_grasp_action"), self._grasp, callback_group=cb),
                ActionServer(self, actions.ErrorRecovery, p("error_recovery_action"), self._error_recovery,
                             callback_group=cb),
            ]
            served = "gripper and error recovery actions served"
        else:
            served = f"no gripper/error recovery actions (franka_msgs not importable: {why})"
        self.get_logger().info(
            f"franka_ros2 stand-in (not a simulator): {p('current_pose_topic')} at {self.rate:g} Hz best-effort, "
            f"following {p('equilibrium_pose_topic')} with time constant {self.tau:g} s; {served}")

    # -- parameters ----------------------------------------------------------------------------
    def _on_params(self, params) -> SetParametersResult:
        for prm in params:
            if prm.name == "publish_state":
                self.publishing = bool(prm.value)
                self.get_logger().warning(f"fault injection: state publishing {'on' if prm.value else 'OFF'}")
            elif prm.name == "external_wrench":
                w = np.asarray(prm.value, dtype=float)
                if w.shape != (6,) or not np.all(np.isfinite(w)):
                    return SetParametersResult(successful=False, reason="external_wrench must be 6 numbers")
                self.wrench = w
        return SetParametersResult(successful=True)

    # -- the controller's side ---------------------------------------------------------------------
    def _on_equilibrium(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        pos = np.array([p.x, p.y, p.z])
        q = np.array([o.x, o.y, o.z, o.w])
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(q))) or np.linalg.norm(q) < 1e-6:
            self.discarded += 1
            self.get_logger().warning("discarding equilibrium pose with non-finite values or a degenerate "
                                      "quaternion", throttle_duration_sec=1.0)
            return
        with self._lock:
            self.eq_pos, self.eq_quat = pos, quat_normalize(q)
            self.received += 1

    def _tick(self) -> None:
        now = time.monotonic()
        dt, self._last = now - self._last, now
        f = 1.0 if self.tau <= 0 else 1.0 - math.exp(-max(dt, 0.0) / self.tau)
        with self._lock:
            self.pos = self.pos + f * (self.eq_pos - self.pos)
            self.quat = quat_normalize(slerp(self.quat, self.eq_quat, f))
            step = self.gripper_speed * dt
            self.width += float(np.clip(self.width_goal - self.width, -step, step))
            pos, quat, width = self.pos.copy(), self.quat.copy(), self.width
        if not self.publishing or now >= self.stall_at or not self.context.ok():
            return
        try:
            self._publish(pos, quat, width)
        except Exception:  # noqa: BLE001 - Ctrl-C shuts the context down under a running timer
            if self.context.ok():
                raise

    def _publish(self, pos: np.ndarray, quat: np.ndarray, width: float) -> None:
        stamp = self.get_clock().now().to_msg()
        m = PoseStamped()
        m.header.stamp, m.header.frame_id = stamp, self.frame_id
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in pos)
        o = m.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        self.pub_pose.publish(m)
        js = JointState()
        js.header.stamp = stamp
        js.name = self.arm_joints
        js.position = list(HOME_Q[: len(self.arm_joints)]) + [0.0] * max(0, len(self.arm_joints) - 7)
        js.velocity = [0.0] * len(self.arm_joints)
        js.effort = [0.0] * len(self.arm_joints)
        self.pub_joints.publish(js)
        w = WrenchStamped()
        w.header.stamp, w.header.frame_id = stamp, self.frame_id
        (w.wrench.force.x, w.wrench.force.y, w.wrench.force.z,
         w.wrench.torque.x, w.wrench.torque.y, w.wrench.torque.z) = (float(v) for v in self.wrench)
        self.pub_wrench.publish(w)
        self._ticks += 1
        if self._ticks % self._finger_every == 0:
            fj = JointState()
            fj.header.stamp = stamp
            fj.name = self.finger_joints
            fj.position = [width / 2.0] * len(self.finger_joints)
            fj.velocity = [0.0] * len(self.finger_joints)
            self.pub_fingers.publish(fj)

    # -- franka_gripper / error recovery (only where franka_msgs imports) ----------------------------
    def _run_gripper(self, width: float, speed: float, timeout: float = 10.0) -> float:
        with self._lock:
            self.width_goal = float(np.clip(width, 0.0, 0.08))
            self.gripper_speed = max(1e-3, float(speed) if speed > 0 else 0.1)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if abs(self.width - self.width_goal) < 1e-4:
                    break
            time.sleep(0.01)
        return self.width

    def _move(self, handle):
        g = handle.request
        width = self._run_gripper(g.width, g.speed)
        handle.succeed()
        result = self._franka.Move.Result()
        result.success = abs(width - g.width) < 1e-3
        result.error = "" if result.success else f"reached {width:.4f} m"
        return result

    def _grasp(self, handle):
        g = handle.request
        width = self._run_gripper(g.width, g.speed)
        handle.succeed()
        result = self._franka.Grasp.Result()
        result.success = g.width - g.epsilon.inner <= width <= g.width + g.epsilon.outer
        result.error = "" if result.success else f"grasp width {width:.4f} m outside epsilon"
        return result

    def _error_recovery(self, handle):
        handle.succeed()
        self.recoveries += 1
        self.get_logger().info("error recovery requested: nothing to recover in the stand-in")
        return self._franka.ErrorRecovery.Result()


def _spin(node: FrankaRos2Standin) -> int:
    executor = ThreadedExecutor(num_threads=2)
    executor.add_node(node)
    executor.spin()
    return 0


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(FrankaRos2Standin, "franka_ros2_standin", _spin, args))


if __name__ == "__main__":
    main()
