"""Franka FR3 driven through franka_ros2 (ROS 2 Jazzy): the "franka_ros2" backend.

franka_ros2 runs on the robot's control PC (real-time kernel, libfranka, ros2_control). This
backend only talks to it over DDS, with standard message types:

- commands ``/cartesian_impedance_example_controller/equilibrium_pose``
  (``geometry_msgs/PoseStamped``, reliable, as the controller subscribes);
- reads ``/franka_robot_state_broadcaster/current_pose`` (PoseStamped),
  ``.../measured_joint_states`` (``sensor_msgs/JointState``) and
  ``.../external_wrench_in_base_frame`` (``geometry_msgs/WrenchStamped``). The broadcaster
  publishes them best-effort, so they are subscribed best-effort (a reliable subscription would
  never match);
- reads the finger joints from ``gripper_joint_states_topic`` (franka_gripper's joint states) or
  from the arm's joint states if they carry them: the gripper width is their sum;
- where ``franka_msgs`` is importable, moves the gripper with the ``Move`` / ``Grasp`` actions and
  clears reflexes with the ``ErrorRecovery`` action. Where it is not (the PyPI wheel environment),
  it says so once in the log: gripper commands are then not sent (operate the gripper from the
  control PC) and the width is still reported from the finger joint states.

Every topic and action name is an option (see ``FrankaRos2Backend.__init__``).

Frames: ``current_pose`` is franka's ``O_T_EE``, the end-effector frame configured in Desk (the
flange when no end effector is configured). USER's TCP is the point between the fingertips:
``tcp = ee + R(ee) @ tcp_offset`` with ``tcp_offset`` (default ``[0, 0, 0.1034]``, Franka Hand)
and the same orientation. Targets are converted back before they are published. If Desk already
has the Franka Hand as end effector, ``O_T_EE`` is the fingertip point: set ``tcp_offset`` to zeros.

Threading: the backend owns its own rclpy context, node and single-threaded executor, spun by a
daemon thread started in ``start``. Subscription callbacks (executor thread) only copy the newest
values into a snapshot under a lock. The caller's thread (the robot node's control thread) never
waits on ROS: ``set_target`` validates and publishes, ``state`` returns the snapshot (or raises
``BackendError`` when ``current_pose`` is older than ``state_timeout``), ``advance`` returns at
once. Gripper goals are sent by a timer in the executor thread, so the control loop never blocks
on an action server either. Only ``start`` (waiting for the robot to appear), ``recover`` and
``close`` wait, with timeouts.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState

from .base import BackendError, RobotBackend, RobotState, register_backend
from ..core.geometry import quat_conj, quat_mul, quat_normalize, quat_to_rotvec, rotate

#: franka_ros2 names (FR3 without arm prefix)
DEFAULT_ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
DEFAULT_FINGER_JOINTS = ("fr3_finger_joint1", "fr3_finger_joint2")

#: QoS of the broadcaster's convenience topics (franka_robot_state_broadcaster: QoS(1).best_effort())
STATE_QOS = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
#: QoS of the equilibrium pose: the controller subscribes with the system defaults (reliable, volatile)
COMMAND_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)

_notice_lock = threading.Lock()
_notices_given: set[str] = set()
_instances = itertools.count()


def load_franka_actions() -> tuple[SimpleNamespace | None, str]:
    """The franka_msgs action types ``Move``, ``Grasp``, ``ErrorRecovery``, or None and why not."""
    try:
        from franka_msgs.action import ErrorRecovery, Grasp, Move  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, str(exc)
    return SimpleNamespace(Move=Move, Grasp=Grasp, ErrorRecovery=ErrorRecovery), ""


def ee_to_tcp(pos: np.ndarray, quat: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """TCP position for an end-effector pose (quaternion x, y, z, w): ``pos + R(quat) @ offset``."""
    return np.asarray(pos, dtype=np.float64) + rotate(quat, offset)


def tcp_to_ee(pos: np.ndarray, quat: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """End-effector position for a TCP pose: ``pos - R(quat) @ offset``."""
    return np.asarray(pos, dtype=np.float64) - rotate(quat, offset)


class _Snapshot:
    """Latest values received from franka_ros2 (written by the executor thread, read under a lock)."""

    def __init__(self, n_arm: int, n_fingers: int) -> None:
        self.ee_pos: np.ndarray | None = None
        self.ee_quat = np.array([0.0, 0.0, 0.0, 1.0])
        self.tcp_pos = np.zeros(3)
        self.linvel = np.zeros(3)
        self.angvel = np.zeros(3)
        self.pose_rx = -math.inf          # time.monotonic() of the last current_pose
        self.pose_stamp = 0.0             # its header stamp (robot clock), seconds
        self.pose_count = 0
        self.wrench = np.zeros(6)         # as received: force, torque about the stiffness frame K
        self.wrench_count = 0
        self.arm_pos = np.zeros(n_arm)
        self.arm_vel = np.zeros(n_arm)
        self.arm_count = 0
        self.finger_pos = np.zeros(n_fingers)
        self.finger_vel = np.zeros(n_fingers)
        self.finger_count = 0


@register_backend("franka_ros2")
class FrankaRos2Backend(RobotBackend):
    """A Franka arm under franka_ros2's Cartesian impedance controller, over ROS 2 topics.

    Options (``backend_options`` of the robot profile; every one has a default):

    - topics: ``equilibrium_pose_topic``, ``current_pose_topic``, ``joint_states_topic``,
      ``wrench_topic``, ``gripper_joint_states_topic`` ("" = none);
    - actions: ``gripper_move_action``, ``gripper_grasp_action``, ``error_recovery_action``;
      ``use_franka_msgs`` (False: never use the actions even where franka_msgs imports);
    - ``frame_id`` of the published equilibrium pose (franka_ros2's base frame ``fr3_link0``);
    - ``tcp_offset``: TCP in the end-effector frame of ``current_pose``, metres;
    - ``wrench_sign``: +1 or -1, so that pushing the TCP up reads a positive force z;
    - ``state_timeout``: ``current_pose`` older than this (s) makes ``state`` raise BackendError;
    - ``connect_timeout``: how long ``start`` waits for the robot's state and the controller (s);
    - ``recover_timeout``: how long ``recover`` waits for error recovery and fresh state (s);
    - ``max_target_offset``: a target farther than this (m) from the measured TCP is refused;
    - ``velocity_filter_tau``: low-pass time constant (s) of the finite-difference TCP twist;
    - ``arm_joint_names``, ``finger_joint_names``;
    - gripper: ``gripper_max_width`` (m), ``gripper_speed`` (m/s), ``grasp_force`` (N),
      ``grasp_epsilon`` (inner, outer, m), ``gripper_deadband`` (fraction of the range);
    - ``domain_id`` (None: ``ROS_DOMAIN_ID``), ``node_name``.

    ``cameras`` must be empty (cameras are separate drivers); ``image_width``/``image_height``
    are accepted and ignored (the robot node passes them to every backend).
    """

    name = "franka_ros2"
    embodiment = "franka_fr3"
    simulated = False

    def __init__(
        self,
        *,
        equilibrium_pose_topic: str = "/cartesian_impedance_example_controller/equilibrium_pose",
        current_pose_topic: str = "/franka_robot_state_broadcaster/current_pose",
        joint_states_topic: str = "/franka_robot_state_broadcaster/measured_joint_states",
        wrench_topic: str = "/franka_robot_state_broadcaster/external_wrench_in_base_frame",
        gripper_joint_states_topic: str = "/fr3_gripper/joint_states",
        gripper_move_action: str = "/fr3_gripper/move",
        gripper_grasp_action: str = "/fr3_gripper/grasp",
        error_recovery_action: str = "/action_server/error_recovery",
        use_franka_msgs: bool = True,
        frame_id: str = "fr3_link0",
        tcp_offset: Sequence[float] = (0.0, 0.0, 0.1034),
        wrench_sign: float = 1.0,
        state_timeout: float = 0.5,
        connect_timeout: float = 15.0,
        recover_timeout: float = 5.0,
        max_target_offset: float = 0.10,
        velocity_filter_tau: float = 0.02,
        arm_joint_names: Sequence[str] = DEFAULT_ARM_JOINTS,
        finger_joint_names: Sequence[str] = DEFAULT_FINGER_JOINTS,
        gripper_max_width: float = 0.08,
        gripper_speed: float = 0.1,
        grasp_force: float = 20.0,
        grasp_epsilon: Sequence[float] = (0.08, 0.08),
        gripper_deadband: float = 0.05,
        domain_id: int | None = None,
        node_name: str = "",
        cameras: Sequence[str] = (),
        image_width: int = 0,
        image_height: int = 0,
        **unknown: Any,
    ) -> None:
        """Store and check the options; nothing touches ROS before ``start``."""
        del image_width, image_height  # no cameras of its own
        if unknown:
            raise TypeError(f"FrankaRos2Backend got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        if list(cameras):
            raise ValueError(f"the franka_ros2 backend has no cameras, got {list(cameras)}: set robot.cameras: []")
        topics = dict(equilibrium_pose_topic=equilibrium_pose_topic, current_pose_topic=current_pose_topic,
                      joint_states_topic=joint_states_topic, wrench_topic=wrench_topic)
        for key, value in topics.items():
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{key} must be a non-empty topic name, got {value!r}")
        self._topics = SimpleNamespace(
            equilibrium=equilibrium_pose_topic, pose=current_pose_topic, joints=joint_states_topic,
            wrench=wrench_topic, gripper_joints=str(gripper_joint_states_topic or ""),
            move=gripper_move_action, grasp=gripper_grasp_action, recovery=error_recovery_action)
        self._use_franka_msgs = bool(use_franka_msgs)
        self._frame_id = str(frame_id)
        self._tcp_offset = np.asarray(tcp_offset, dtype=np.float64)
        if self._tcp_offset.shape != (3,) or not np.all(np.isfinite(self._tcp_offset)):
            raise ValueError(f"tcp_offset must be 3 finite numbers (metres), got {tcp_offset!r}")
        if wrench_sign not in (1, -1, 1.0, -1.0):
            raise ValueError(f"wrench_sign must be 1 or -1, got {wrench_sign!r}")
        self._wrench_sign = float(wrench_sign)
        for key, value in dict(state_timeout=state_timeout, connect_timeout=connect_timeout,
                               recover_timeout=recover_timeout, max_target_offset=max_target_offset,
                               gripper_max_width=gripper_max_width, gripper_speed=gripper_speed,
                               grasp_force=grasp_force).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        if not (isinstance(velocity_filter_tau, (int, float)) and velocity_filter_tau >= 0):
            raise ValueError(f"velocity_filter_tau must be >= 0, got {velocity_filter_tau!r}")
        if not 0.0 <= float(gripper_deadband) < 1.0:
            raise ValueError(f"gripper_deadband must be in [0, 1), got {gripper_deadband!r}")
        self._state_timeout = float(state_timeout)
        self._connect_timeout = float(connect_timeout)
        self._recover_timeout = float(recover_timeout)
        self._max_target_offset = float(max_target_offset)
        self._vel_tau = float(velocity_filter_tau)
        self._arm_joints = [str(j) for j in arm_joint_names]
        self._finger_joints = [str(j) for j in finger_joint_names]
        if not self._arm_joints or len(set(self._arm_joints + self._finger_joints)) != \
                len(self._arm_joints) + len(self._finger_joints):
            raise ValueError("arm_joint_names must be non-empty and joint names unique")
        self._gripper_max_width = float(gripper_max_width)
        self._gripper_speed = float(gripper_speed)
        self._grasp_force = float(grasp_force)
        eps = tuple(float(e) for e in grasp_epsilon)
        if len(eps) != 2 or min(eps) < 0:
            raise ValueError(f"grasp_epsilon must be (inner, outer) >= 0 metres, got {grasp_epsilon!r}")
        self._grasp_epsilon = eps
        self._gripper_deadband = float(gripper_deadband)
        self._domain_id = None if domain_id is None else int(domain_id)
        n = next(_instances)
        self._node_name = node_name or f"user_franka_ros2_backend_{os.getpid()}{f'_{n}' if n else ''}"

        self._lock = threading.Lock()
        self._snap = _Snapshot(len(self._arm_joints), len(self._finger_joints))
        self._index_cache: dict[tuple[str, ...], list[tuple[int, int, bool]]] = {}
        self._ctx: rclpy.context.Context | None = None
        self._node: rclpy.node.Node | None = None
        self._executor: SingleThreadedExecutor | None = None
        self._thread: threading.Thread | None = None
        self._pub = None
        self._closed = False
        self._actions: SimpleNamespace | None = None
        self._gripper_desired: float | None = None  # width (m) the control thread asks for
        self._gripper_sent: float | None = None      # width of the last goal sent
        self._gripper_busy = False
        self._gripper_last_error = ""
        self._move_client = self._grasp_client = self._recovery_client = None

    # ------------------------------------------------------------------ description
    def joint_names(self) -> list[str]:
        """Arm joints, then the finger joints (franka_ros2 / fr3.urdf names)."""
        return self._arm_joints + self._finger_joints

    @property
    def dof(self) -> int:
        return len(self._arm_joints)

    def camera_names(self) -> list[str]:
        return []

    @property
    def tcp_offset(self) -> np.ndarray:
        """TCP in the end-effector frame of ``current_pose`` (metres)."""
        return self._tcp_offset.copy()

    @property
    def gripper_via_actions(self) -> bool:
        """True when gripper commands go to franka_ros2's gripper actions (franka_msgs imported)."""
        return self._actions is not None

    @property
    def topics(self) -> SimpleNamespace:
        """The topic and action names in use."""
        return SimpleNamespace(**vars(self._topics))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Join the ROS graph, then wait for the robot's state and for the controller.

        Raises BackendError naming the topic if no ``current_pose`` arrives, or nobody subscribes
        to the equilibrium pose (the controller is not active), within ``connect_timeout``.
        """
        if self._closed:
            raise BackendError("franka_ros2 backend was closed; make a new one")
        if self._node is not None:
            return
        ctx = rclpy.Context()
        # args=[]: the hosting process's --ros-args (node name remaps, -p) are not for this node.
        rclpy.init(args=[], context=ctx, domain_id=self._domain_id)
        try:
            node = rclpy.create_node(self._node_name, context=ctx)
            self._ctx, self._node = ctx, node
            t = self._topics
            self._pub = node.create_publisher(PoseStamped, t.equilibrium, COMMAND_QOS)
            node.create_subscription(PoseStamped, t.pose, self._on_pose, STATE_QOS)
            node.create_subscription(JointState, t.joints, self._on_joints, STATE_QOS)
            node.create_subscription(WrenchStamped, t.wrench, self._on_wrench, STATE_QOS)
            if t.gripper_joints and t.gripper_joints != t.joints:
                node.create_subscription(JointState, t.gripper_joints, self._on_joints, STATE_QOS)
            self._setup_actions(node)
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(node)
            self._executor = executor
            self._thread = threading.Thread(target=self._spin, name="franka_ros2_backend", daemon=True)
            self._thread.start()
            self._wait_for_robot()
        except BaseException:
            self._teardown()
            raise

    def _spin(self) -> None:
        executor, ctx = self._executor, self._ctx
        try:
            while ctx.ok() and not self._closed:
                executor.spin_once(timeout_sec=0.1)
        except Exception as exc:  # noqa: BLE001 - shutting down races are expected here
            if not self._closed and ctx.ok():
                self._log("error", f"executor thread stopped: {type(exc).__name__}: {exc}")

    def _wait_for_robot(self) -> None:
        t = self._topics
        deadline = time.monotonic() + self._connect_timeout
        while time.monotonic() < deadline:
            with self._lock:   # the joints too: the first observations must not show zeros for them
                have_pose, have_joints = self._snap.pose_count > 0, self._snap.arm_count > 0
            if have_pose and have_joints and self._pub.get_subscription_count() > 0:
                break
            time.sleep(0.02)
        with self._lock:
            have_pose, have_joints = self._snap.pose_count > 0, self._snap.arm_count > 0
        if have_pose and not have_joints:
            raise BackendError(f"no arm joints on {t.joints} within {self._connect_timeout:g} s (current_pose "
                               f"arrives): is joint_state_broadcaster running, and are the joints named "
                               f"{', '.join(self._arm_joints)}?")
        if have_pose and self._finger_joints:   # the gripper may publish apart, and an arm may have none
            end = min(deadline, time.monotonic() + 2.0)
            while time.monotonic() < end and self._snap.finger_count == 0:
                time.sleep(0.02)
            if self._snap.finger_count == 0:
                self._log("warning", f"no finger joints ({', '.join(self._finger_joints)}) on "
                                     f"{t.gripper_joints or t.joints}: the gripper width reads 0")
        if not have_pose:
            raise BackendError(
                f"no message on {t.pose} within {self._connect_timeout:g} s: is franka_ros2 running with "
                f"franka_robot_state_broadcaster, on the same ROS_DOMAIN_ID "
                f"({os.environ.get('ROS_DOMAIN_ID', '0') if self._domain_id is None else self._domain_id}) "
                f"and reachable by DDS discovery?")
        if self._pub.get_subscription_count() == 0:
            raise BackendError(
                f"nobody subscribes to {t.equilibrium} within {self._connect_timeout:g} s: is the "
                f"Cartesian impedance controller loaded and active (ros2 control list_controllers)?")
        state = self.state()
        self._log("info", f"connected to franka_ros2: TCP at {np.round(state.tcp_pos, 4).tolist()}, "
                          f"commanding {t.equilibrium}; gripper "
                          f"{'via ' + t.move + ' / ' + t.grasp if self._actions else 'not commanded'}")

    def close(self) -> None:
        """Hold where the arm is (publish the measured pose as equilibrium), then leave ROS.

        If the state is stale the controller keeps its last equilibrium (a target inside the
        safety box); nothing else is sent. Safe to call repeatedly.
        """
        if self._closed:
            return
        if self._node is not None and self._ctx is not None and self._ctx.ok():
            try:
                self._hold_measured_pose()
            except Exception as exc:  # noqa: BLE001 - closing must go on
                self._log("warning", f"could not command a hold pose on close: {exc}")
        self._closed = True
        self._teardown()

    def _hold_measured_pose(self) -> None:
        with self._lock:
            s = self._snap
            fresh = s.ee_pos is not None and time.monotonic() - s.pose_rx <= self._state_timeout
            ee_pos, ee_quat = (s.ee_pos.copy(), s.ee_quat.copy()) if fresh else (None, None)
        if ee_pos is None or self._pub.get_subscription_count() == 0:
            return
        self._pub.publish(self._pose_msg(ee_pos, ee_quat))
        self._pub.wait_for_all_acked(Duration(seconds=0.5))

    def _teardown(self) -> None:
        self._closed = True
        executor, thread, node, ctx = self._executor, self._thread, self._node, self._ctx
        self._executor = self._thread = self._node = self._ctx = None
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if thread is not None:
            thread.join(timeout=2.0)
        if node is not None:
            node.destroy_node()
        if ctx is not None:
            ctx.try_shutdown()

    # ------------------------------------------------------------------ ROS callbacks (executor thread)
    def _on_pose(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        pos = np.array([p.x, p.y, p.z])
        quat = np.array([o.x, o.y, o.z, o.w])
        n = float(np.linalg.norm(quat))
        if not (np.all(np.isfinite(pos)) and math.isfinite(n)) or n < 1e-6:
            return  # a malformed reading is dropped; the staleness check catches a dead stream
        quat /= n
        tcp = ee_to_tcp(pos, quat, self._tcp_offset)
        now = time.monotonic()
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        with self._lock:
            s = self._snap
            if s.ee_pos is not None:
                # Robot clock between readings if stamped, else our receive clock.
                dt = stamp - s.pose_stamp if stamp > 0.0 and s.pose_stamp > 0.0 else now - s.pose_rx
                if 1e-5 < dt < 0.2:
                    lin = (tcp - s.tcp_pos) / dt
                    ang = quat_to_rotvec(quat_mul(quat, quat_conj(s.ee_quat))) / dt
                    a = 1.0 if self._vel_tau <= 0 else dt / (self._vel_tau + dt)
                    s.linvel += a * (lin - s.linvel)
                    s.angvel += a * (ang - s.angvel)
                elif dt >= 0.2:  # a gap: restart the estimate
                    s.linvel[:] = 0.0
                    s.angvel[:] = 0.0
            s.ee_pos, s.ee_quat, s.tcp_pos = pos, quat, tcp
            s.pose_rx, s.pose_stamp = now, stamp
            s.pose_count += 1

    def _on_wrench(self, msg: WrenchStamped) -> None:
        f, t = msg.wrench.force, msg.wrench.torque
        w = np.array([f.x, f.y, f.z, t.x, t.y, t.z])
        if not np.all(np.isfinite(w)):
            return
        with self._lock:
            self._snap.wrench = w
            self._snap.wrench_count += 1

    def _on_joints(self, msg: JointState) -> None:
        names = tuple(msg.name)
        idx = self._index_cache.get(names)
        if idx is None:
            idx = []
            for i, name in enumerate(names):
                if name in self._arm_joints:
                    idx.append((i, self._arm_joints.index(name), True))
                elif name in self._finger_joints:
                    idx.append((i, self._finger_joints.index(name), False))
            if len(self._index_cache) < 16:
                self._index_cache[names] = idx
        if not idx:
            return
        pos, vel = msg.position, msg.velocity
        with self._lock:
            s = self._snap
            arm = fingers = False
            for i, j, is_arm in idx:
                if i < len(pos) and math.isfinite(pos[i]):
                    (s.arm_pos if is_arm else s.finger_pos)[j] = pos[i]
                if i < len(vel) and math.isfinite(vel[i]):
                    (s.arm_vel if is_arm else s.finger_vel)[j] = vel[i]
                arm, fingers = arm or is_arm, fingers or not is_arm
            s.arm_count += int(arm)
            s.finger_count += int(fingers)

    # ------------------------------------------------------------------ state
    def state(self) -> RobotState:
        """The newest reading; BackendError if ``current_pose`` is older than ``state_timeout``."""
        self._require()
        now = time.monotonic()
        with self._lock:
            s = self._snap
            age = now - s.pose_rx
            if s.ee_pos is None or age > self._state_timeout:
                raise BackendError(self._stale_message(age if s.ee_pos is not None else None))
            r = rotate(s.ee_quat, self._tcp_offset)
            wrench = self._wrench_sign * s.wrench
            # The broadcaster's torque is about the stiffness frame (default: the EE frame):
            # move it to the TCP, tau_tcp = tau_ee + (p_ee - p_tcp) x f.
            wrench[3:] += np.cross(-r, wrench[:3])
            return RobotState(
                tcp_pos=s.tcp_pos.copy(),
                tcp_quat=s.ee_quat.copy(),
                tcp_linvel=s.linvel.copy(),
                tcp_angvel=s.angvel.copy(),
                gripper_width=float(np.sum(s.finger_pos)),
                wrench=wrench,
                joint_pos=np.concatenate([s.arm_pos, s.finger_pos]),
                joint_vel=np.concatenate([s.arm_vel, s.finger_vel]),
                time=s.pose_stamp if s.pose_stamp > 0.0 else s.pose_rx,
            )

    def _stale_message(self, age: float | None) -> str:
        t = self._topics.pose
        if age is None:
            return f"no state received on {t}"
        return (f"stale robot state: nothing on {t} for {age:.2f} s (state_timeout {self._state_timeout:g} s); "
                f"franka_ros2 stopped publishing (driver down, reflex, or network)")

    # ------------------------------------------------------------------ control (caller's thread)
    def set_target(self, pos: np.ndarray, quat: np.ndarray, gripper: float) -> None:
        """Publish the TCP target as the controller's equilibrium pose; never blocks.

        ValueError for a malformed target, BackendError when the state is stale, the target is
        farther than ``max_target_offset`` from the measured TCP, or the controller is gone. In
        every error case nothing is published: the controller holds its previous equilibrium.
        """
        self._require()
        pos = np.asarray(pos, dtype=np.float64).reshape(3)
        q = np.asarray(quat, dtype=np.float64).reshape(4)
        g = float(gripper)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(q))) or np.linalg.norm(q) < 1e-9 \
                or not math.isfinite(g):
            raise ValueError(f"invalid target pose {pos.tolist()}, {q.tolist()}, gripper {gripper!r}")
        q = quat_normalize(q)
        measured = self.state().tcp_pos
        off = float(np.linalg.norm(pos - measured))
        if off > self._max_target_offset:
            raise BackendError(
                f"target {np.round(pos, 4).tolist()} is {off:.3f} m from the measured TCP "
                f"{np.round(measured, 4).tolist()} (max_target_offset {self._max_target_offset:g} m): not sent")
        if self._pub.get_subscription_count() == 0:
            raise BackendError(f"nobody subscribes to {self._topics.equilibrium} any more: "
                               f"the impedance controller stopped")
        self._pub.publish(self._pose_msg(tcp_to_ee(pos, q, self._tcp_offset), q))
        if self._actions is not None:
            with self._lock:
                self._gripper_desired = float(np.clip(g, 0.0, 1.0)) * self._gripper_max_width

    def advance(self, dt: float) -> None:
        """Real time passes by itself between control ticks: return at once."""
        del dt

    def render(self) -> dict[str, np.ndarray]:
        return {}

    def _pose_msg(self, ee_pos: np.ndarray, quat: np.ndarray) -> PoseStamped:
        m = PoseStamped()
        m.header.frame_id = self._frame_id
        m.header.stamp = self._node.get_clock().now().to_msg()
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in ee_pos)
        o = m.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        return m

    # ------------------------------------------------------------------ gripper and error recovery
    def _setup_actions(self, node) -> None:
        if not self._use_franka_msgs:
            self._notice_once("use_franka_msgs is false: gripper commands are not sent and recover() cannot "
                              "run error recovery; the gripper width is read from the finger joint states")
            return
        actions, why = load_franka_actions()
        if actions is None:
            self._notice_once(
                f"franka_msgs is not importable here ({why}): gripper commands are not sent (no "
                f"{self._topics.move} / {self._topics.grasp} actions) and recover() cannot call "
                f"{self._topics.recovery}; the gripper width is read from the finger joint states "
                f"({self._topics.gripper_joints or self._topics.joints})")
            return
        from rclpy.action import ActionClient

        self._actions = actions
        t = self._topics
        self._move_client = ActionClient(node, actions.Move, t.move)
        self._grasp_client = ActionClient(node, actions.Grasp, t.grasp)
        self._recovery_client = ActionClient(node, actions.ErrorRecovery, t.recovery)
        node.create_timer(0.05, self._gripper_tick)

    def _notice_once(self, text: str) -> None:
        with _notice_lock:
            if text in _notices_given:
                return
            _notices_given.add(text)
        self._log("warning", text)

    def _gripper_tick(self) -> None:
        """Executor thread: send the newest gripper width as a goal once the last one is done."""
        with self._lock:
            want, busy, sent = self._gripper_desired, self._gripper_busy, self._gripper_sent
        if want is None or busy:
            return
        if sent is not None and abs(want - sent) <= self._gripper_deadband * self._gripper_max_width:
            return
        a = self._actions
        closing = want <= self._gripper_deadband * self._gripper_max_width
        if closing:
            client, goal, name = self._grasp_client, a.Grasp.Goal(), self._topics.grasp
            goal.width, goal.speed, goal.force = 0.0, self._gripper_speed, self._grasp_force
            goal.epsilon.inner, goal.epsilon.outer = self._grasp_epsilon
        else:
            client, goal, name = self._move_client, a.Move.Goal(), self._topics.move
            goal.width, goal.speed = want, self._gripper_speed
        if not client.server_is_ready():
            self._log("warning", f"gripper action server {name} not available", throttle=5.0)
            return
        with self._lock:
            self._gripper_busy, self._gripper_sent = True, want
        client.send_goal_async(goal).add_done_callback(self._on_gripper_goal)

    def _on_gripper_goal(self, fut) -> None:
        handle = fut.result() if fut.exception() is None else None
        if handle is None or not handle.accepted:
            self._gripper_failed(f"gripper goal rejected{': ' + str(fut.exception()) if fut.exception() else ''}")
            return
        handle.get_result_async().add_done_callback(self._on_gripper_result)

    def _on_gripper_result(self, fut) -> None:
        res = fut.result().result if fut.exception() is None else None
        if res is not None and not getattr(res, "success", True):
            self._gripper_failed(f"gripper action failed: {getattr(res, 'error', '')}")
            return
        with self._lock:
            self._gripper_busy = False

    def _gripper_failed(self, why: str) -> None:
        # A failed grasp (nothing between the fingers) is not a robot fault: log and let the next
        # command try again.
        self._log("warning", why, throttle=5.0)
        with self._lock:
            self._gripper_busy = False
            self._gripper_sent = None

    def recover(self) -> None:
        """Clear a reflex with franka_ros2's error recovery (where franka_msgs imports), then wait
        for fresh state. Blocks up to ``recover_timeout``; BackendError if the arm does not come back.

        Without franka_msgs only the second half is possible: a lost stream that resumes (network
        hiccup, restarted driver) recovers; a reflex must be cleared on the control PC.
        """
        self._require()
        if self._recovery_client is not None:
            self._run_error_recovery()
        deadline = time.monotonic() + self._recover_timeout
        while True:
            try:
                self.state()
                return
            except BackendError as exc:
                if time.monotonic() >= deadline:
                    raise BackendError(f"recovery failed: {exc}") from None
            time.sleep(0.02)

    def _run_error_recovery(self) -> None:
        client, done, box = self._recovery_client, threading.Event(), {}
        if not client.wait_for_server(timeout_sec=min(2.0, self._recover_timeout)):
            raise BackendError(f"error recovery action {self._topics.recovery} is not available")

        def on_result(fut) -> None:
            box["result"] = fut.result() if fut.exception() is None else fut.exception()
            done.set()

        def on_goal(fut) -> None:
            handle = fut.result() if fut.exception() is None else None
            if handle is None or not handle.accepted:
                box["result"] = fut.exception() or "goal rejected"
                done.set()
                return
            handle.get_result_async().add_done_callback(on_result)

        self._executor.create_task(
            lambda: client.send_goal_async(self._actions.ErrorRecovery.Goal()).add_done_callback(on_goal))
        if not done.wait(self._recover_timeout):
            raise BackendError(f"error recovery ({self._topics.recovery}) did not finish within "
                               f"{self._recover_timeout:g} s")
        res = box.get("result")
        from action_msgs.msg import GoalStatus

        if not hasattr(res, "status") or res.status != GoalStatus.STATUS_SUCCEEDED:
            raise BackendError(f"error recovery ({self._topics.recovery}) failed: {res}")
        self._log("info", "error recovery succeeded")

    # ------------------------------------------------------------------ helpers
    def _require(self) -> None:
        if self._node is None:
            raise BackendError("franka_ros2 backend not started (call start() first) or already closed")

    def _log(self, level: str, text: str, throttle: float | None = None) -> None:
        node = self._node
        if node is None:
            print(f"[franka_ros2_backend] {level.upper()}: {text}", flush=True)
            return
        # rclpy ties severity and throttling to the calling line: one line per combination.
        logger = node.get_logger()
        if throttle:
            logger.warning(text, throttle_duration_sec=throttle)
        elif level == "info":
            logger.info(text)
        elif level == "warning":
            logger.warning(text)
        else:
            logger.error(text)
