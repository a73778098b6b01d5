"""The robot cell: actions in, safe impedance targets out, episodes, resets and rule rewards.

Plain Python around a ``RobotBackend``; the robot node wraps it in ROS and a test drives it
directly. An action is ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` in ``[-1, 1]``; the first six
are scaled by ``robot.action_scale`` and added to the current *target* (so holding = zero action),
the position is clipped to the safety box and the orientation to ``robot.orientation_limits``
around ``task.tcp_quat``.

Velocity limits: the target never moves faster than ``robot.max_tcp_speed`` (m/s) and never turns
faster than ``robot.max_tcp_angular_speed`` (rad/s), per control period, for actions (policy,
human, scripted) and resets alike. An action asking for more is scaled down as a whole (direction
kept), and the transition records the scaled action (``StepResult.executed``).

Resets: a task that hands the gripper to the policy may also ask a reset to open it (pick-and-place:
the cube drops); at the end of the motion the backend rearranges the task's loose objects
(``RobotBackend.reset_scene``), from the same seeded generator as the start pose.

Fault injection for tests wraps ``step`` from outside (``user_testing.faults``); nothing here knows of it.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, Sequence

import numpy as np

from ..backends.base import BackendError, RobotBackend, RobotState
from user_common.config_schema import ConfigError
from .geometry import (quat_conj, quat_from_euler, quat_from_rotvec, quat_mul, quat_normalize, quat_to_euler,
                       quat_to_rotvec)
from ..profile import ProprioGroup, RobotProfile
from ..tasks.rules import Task, TaskOutcome, make_task

ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
#: proprio values by group (``robot.proprio`` of the profile picks and orders the groups)
PROPRIO_GROUPS: dict[str, tuple[str, ...]] = {
    "tcp_pose": ("tcp_x", "tcp_y", "tcp_z", "tcp_qx", "tcp_qy", "tcp_qz", "tcp_qw"),
    "tcp_twist": ("tcp_vx", "tcp_vy", "tcp_vz", "tcp_wx", "tcp_wy", "tcp_wz"),
    "gripper_width": ("gripper_width",),
    "wrench": ("force_x", "force_y", "force_z", "torque_x", "torque_y", "torque_z"),
}
assert set(PROPRIO_GROUPS) == set(typing.get_args(ProprioGroup)), "cell.PROPRIO_GROUPS and profile.ProprioGroup differ"
#: the Franka's layout (every group, 20 values), the default of ``robot.proprio``
DEFAULT_PROPRIO = ("tcp_pose", "tcp_twist", "gripper_width", "wrench")
PROPRIO_NAMES = [n for g in DEFAULT_PROPRIO for n in PROPRIO_GROUPS[g]]
#: per tracked object (``Task.objects``), appended to the proprioception as ``<object>_<name>``
POSE_NAMES = ("x", "y", "z", "qx", "qy", "qz", "qw")


#: during a reset the target runs at most this many speed-limited steps ahead of the measured TCP ...
FOLLOW_PERIODS = 4
#: ... waiting at most this many control periods for a lagging arm (then it goes on, as it would without)
FOLLOW_TIMEOUT_PERIODS = 50


class ActionError(ValueError):
    """An action that must not be executed; the message says why."""


@dataclasses.dataclass
class StepResult:
    state: RobotState
    outcome: TaskOutcome
    terminated: bool
    truncated: bool
    executed: np.ndarray        # the action actually applied (after the speed limits)
    commanded: np.ndarray       # the action as given (validated, in [-1, 1]): what transitions record


def proprio_names(objects: Sequence[str] = (), groups: Sequence[str] = DEFAULT_PROPRIO) -> list[str]:
    """Names of the observation's proprio values: the ``groups`` in order, then each object's pose."""
    return [n for g in groups for n in PROPRIO_GROUPS[g]] + [f"{obj}_{n}" for obj in objects for n in POSE_NAMES]


def _group_values(state: RobotState, group: str) -> np.ndarray:
    if group == "tcp_pose":
        return np.concatenate([state.tcp_pos, state.tcp_quat])
    if group == "tcp_twist":
        return np.concatenate([state.tcp_linvel, state.tcp_angvel])
    if group == "gripper_width":
        return np.array([state.gripper_width])
    return np.asarray(state.wrench)


def proprio_vector(state: RobotState, objects: Sequence[str] = (),
                   groups: Sequence[str] = DEFAULT_PROPRIO) -> np.ndarray:
    """The proprioception published in observations, laid out as ``proprio_names(objects, groups)``."""
    return np.concatenate([*(_group_values(state, g) for g in groups),
                           *(state.objects[obj] for obj in objects)]).astype(np.float32)


def state_from_proprio(proprio: np.ndarray, objects: Sequence[str] = (),
                       groups: Sequence[str] = DEFAULT_PROPRIO) -> RobotState:
    """The ``RobotState`` an observation's proprio describes, for code that only sees observations (scripted
    policies). Groups the layout leaves out read as zeros; joints are unknown (empty)."""
    v = np.asarray(proprio, dtype=np.float64)
    names = proprio_names(objects, groups)
    if v.shape != (len(names),):
        raise ValueError(f"proprio has {v.size} values, expected {len(names)} ({', '.join(groups)}, "
                         f"then 7 per object of {list(objects)})")
    at: dict[str, np.ndarray] = {}
    i = 0
    for g in groups:
        n = len(PROPRIO_GROUPS[g])
        at[g] = v[i:i + n]
        i += n
    poses = {obj: v[i + 7 * k:i + 7 * (k + 1)].copy() for k, obj in enumerate(objects)}
    pose = at.get("tcp_pose", np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
    twist = at.get("tcp_twist", np.zeros(6))
    return RobotState(tcp_pos=pose[0:3], tcp_quat=pose[3:7], tcp_linvel=twist[0:3], tcp_angvel=twist[3:6],
                      gripper_width=float(at.get("gripper_width", np.zeros(1))[0]),
                      wrench=at.get("wrench", np.zeros(6)), joint_pos=np.zeros(0), joint_vel=np.zeros(0),
                      time=0.0, objects=poses)


def check_action(values: np.ndarray, expected_len: int) -> np.ndarray:
    """Validate a raw action; returns it clipped to [-1, 1] as float64 or raises ActionError."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] != expected_len:
        raise ActionError(f"action has {a.size} values, expected {expected_len} ({', '.join(ACTION_NAMES)})")
    bad = ~np.isfinite(a)
    if bad.any():
        names = [ACTION_NAMES[i] for i in np.flatnonzero(bad)]
        raise ActionError(f"action contains NaN or inf in {', '.join(names)}")
    return np.clip(a, -1.0, 1.0)


class RobotCell:
    """One robot doing one task: the control-step semantics shared by every backend."""

    def __init__(self, profile: RobotProfile, backend: RobotBackend, seed: int | None = None) -> None:
        self.profile = profile
        self.cfg = profile.robot
        self.backend = backend
        self.task: Task = make_task(profile.task)
        #: proprio layout of this cell's observations (``robot.proprio`` groups, then the task's objects)
        self.proprio_groups = tuple(self.cfg.proprio)
        self.proprio_names = proprio_names(self.task.objects, self.proprio_groups)
        self.period = 1.0 / self.cfg.control_hz
        self.scale = np.asarray(self.cfg.action_scale, dtype=np.float64)
        self.box_lo = np.asarray(self.cfg.safety_box.lower, dtype=np.float64)
        self.box_hi = np.asarray(self.cfg.safety_box.upper, dtype=np.float64)
        self.rpy_lo = np.asarray(self.cfg.orientation_limits.lower, dtype=np.float64)
        self.rpy_hi = np.asarray(self.cfg.orientation_limits.upper, dtype=np.float64)
        self.nominal_quat = quat_normalize(np.asarray(profile.task.tcp_quat, dtype=np.float64))
        self.rng = np.random.default_rng(seed)
        self.target_pos = np.zeros(3)
        self.target_quat = self.nominal_quat.copy()
        self.gripper = 0.0
        self.step_count = 0
        self.started = False
        self.max_step = self.cfg.max_tcp_speed * self.period            # metres per period
        self.max_turn = self.cfg.max_tcp_angular_speed * self.period    # radians per period

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> RobotState:
        self.backend.start()
        self.started = True
        state = self.backend.state()
        self._check_scene(state)
        # Start from where the arm is (it may be outside the box: the first reset moves it in).
        self.target_pos = state.tcp_pos.copy()
        self.target_quat = quat_normalize(state.tcp_quat)
        self.gripper = self._gripper_command(0.0)
        return state

    def close(self) -> None:
        if self.started:
            self.backend.close()
            self.started = False

    # -- episodes --------------------------------------------------------------------------------
    def proprio(self, state: RobotState) -> np.ndarray:
        """The observation's proprio for ``state``, laid out as ``self.proprio_names``."""
        return proprio_vector(state, self.task.objects, self.proprio_groups)

    def _episode_rng(self, seed: int | None) -> np.random.Generator:
        return self.rng if seed is None or seed < 0 else np.random.default_rng(seed)

    def sample_start(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw a randomized start pose (position, quaternion) from the task's ranges."""
        return self._sample_start(self._episode_rng(seed))

    def _sample_start(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.profile.task.start
        pos = np.asarray(s.pos, dtype=np.float64).copy()
        pos[:2] += rng.uniform(-1.0, 1.0, 2) * np.asarray(s.xy_range)
        yaw = s.yaw + rng.uniform(-1.0, 1.0) * s.yaw_range
        quat = quat_mul(quat_from_rotvec(np.array([0.0, 0.0, yaw])), self.nominal_quat)
        return np.clip(pos, self.box_lo, self.box_hi), self._clip_orientation(quat)

    def reset(self, seed: int | None = None, pace: Callable[[], None] | None = None) -> RobotState:
        """Lift, then move to a randomized start pose, then rearrange the scene (``backend.reset_scene``);
        returns the state at the start. The same ``seed`` gives the same start and the same scene.

        ``pace`` is called once per control period of motion (the node uses it to keep wall-clock
        rate on a real-time robot, and to abort a reset on an e-stop by raising); moves are bounded
        by ``robot.max_tcp_speed`` and ``robot.max_tcp_angular_speed``.
        """
        rng = self._episode_rng(seed)
        start_pos, start_quat = self._sample_start(rng)
        if self.task.reset_gripper is not None:
            self.gripper = self.task.reset_gripper
        state = self.backend.state()
        # Start from where the arm is (maybe outside the box: the motion brings it in), not where the
        # last target pushed it (into a surface, say).
        self.target_pos = state.tcp_pos.copy()
        lift = self.profile.task.lift
        lifted = np.clip(state.tcp_pos + np.array([0.0, 0.0, lift]), self.box_lo, self.box_hi)
        self._move_to(lifted, self.target_quat, pace)
        above = np.array([start_pos[0], start_pos[1], max(start_pos[2], lifted[2])])
        self._move_to(above, start_quat, pace)
        self._move_to(start_pos, start_quat, pace)
        self._follow(start_pos, self.max_step, pace)   # the episode starts at the start pose ...
        self.backend.reset_scene(rng)                   # ... with the objects rearranged ...
        # ... and at rest.
        for _ in range(3):
            self.backend.advance(self.period)
            if pace:
                pace()
        self.step_count = 0
        return self.backend.state()

    def _move_to(self, pos: np.ndarray, quat: np.ndarray, pace: Callable[[], None] | None) -> None:
        """Move the target in steps bounded by the speed limits, at most ``FOLLOW_PERIODS`` steps ahead
        of the measured TCP (a lagging arm, or a late state stream, is waited for: ``_follow``)."""
        start_pos, start_quat = self.target_pos.copy(), self.target_quat.copy()
        dist = float(np.linalg.norm(pos - start_pos))
        rot = quat_to_rotvec_between(start_quat, quat)
        n = max(1, math.ceil(dist / self.max_step - 1e-9), math.ceil(np.linalg.norm(rot) / self.max_turn - 1e-9))
        for i in range(1, n + 1):
            f = i / n
            nxt = start_pos + f * (pos - start_pos)
            self._follow(nxt, FOLLOW_PERIODS * self.max_step, pace)
            self.target_pos = nxt
            self.target_quat = quat_mul(quat_from_rotvec(f * rot), start_quat)
            self.backend.set_target(self.target_pos, self.target_quat, self.gripper)
            self.backend.advance(self.period)
            if pace:
                pace()

    def _follow(self, point: np.ndarray, within: float, pace: Callable[[], None] | None) -> int:
        """Hold the current target until the measured TCP is ``within`` metres of ``point``, for at most
        ``FOLLOW_TIMEOUT_PERIODS`` control periods (an arm held up by contact goes on from there; a
        backend that refuses far targets says so itself). Returns the periods waited."""
        for waited in range(FOLLOW_TIMEOUT_PERIODS):
            if np.linalg.norm(point - self.backend.state().tcp_pos) <= within:
                return waited
            self.backend.set_target(self.target_pos, self.target_quat, self.gripper)
            self.backend.advance(self.period)
            if pace:
                pace()
        return FOLLOW_TIMEOUT_PERIODS

    # -- control steps -----------------------------------------------------------------------------
    def step(self, action: np.ndarray, settle: Callable[[], None] | None = None) -> StepResult:
        """Apply one validated action in [-1, 1]^7 for one control period.

        ``settle`` (optional) runs between commanding the target and reading the state: on a
        real-time robot the node waits there until shortly before the next control tick, so the
        observation shows the arm after it followed this action (see ``robot.inference_budget_s``).
        """
        commanded = check_action(action, len(ACTION_NAMES))
        a = commanded.copy()
        delta = a[:6] * self.scale[:6]
        # Velocity limit, translation: scale the whole translation down, keeping its direction.
        dist = float(np.linalg.norm(delta[:3]))
        if dist > self.max_step:
            k = self.max_step / dist
            delta[:3] *= k
            a[:3] *= k
        goal = np.clip(self.target_pos + delta[:3], self.box_lo, self.box_hi)
        move = goal - self.target_pos
        dist = float(np.linalg.norm(move))
        if dist > self.max_step:  # only when the target starts outside the box: come back slowly
            move *= self.max_step / dist
        self.target_pos = self.target_pos + move
        # Velocity limit, rotation: the same for the rotation angle of the step.
        dq = quat_from_euler(*delta[3:6])
        rv = quat_to_rotvec(dq)
        angle = float(np.linalg.norm(rv))
        if angle > self.max_turn:
            k = self.max_turn / angle
            dq = quat_from_rotvec(rv * k)
            a[3:6] *= k
        self.target_quat = self._clip_orientation(quat_mul(dq, self.target_quat))
        self.gripper = self._gripper_command(a[6])
        self.backend.set_target(self.target_pos, self.target_quat, self.gripper)
        self.backend.advance(self.period)
        if settle is not None:
            settle()
        self.step_count += 1
        state = self.backend.state()
        outcome = self.task.evaluate(state)
        # With a learned reward the rule's success ends nothing (the robot node applies the classifier's verdict).
        terminated = (outcome.success and self.profile.task.terminate_on_success
                      and self.profile.task.reward_source == "rule")
        truncated = not terminated and self.step_count >= self.cfg.max_episode_steps
        return StepResult(state, outcome, terminated, truncated, a, commanded)

    def hold(self, settle: Callable[[], None] | None = None) -> RobotState:
        """Hold the current target for one control period (no fresh valid action); ``settle`` as in step."""
        self.backend.set_target(self.target_pos, self.target_quat, self.gripper)
        self.backend.advance(self.period)
        if settle is not None:
            settle()
        return self.backend.state()

    def recover(self) -> RobotState:
        """Clear a backend fault and hold where the arm is now (raises BackendError if it cannot).

        After a fault (e.g. a reflex) the arm may not be where the target was: the target is
        re-anchored to the measured pose so that nothing jumps when control resumes.
        """
        self.backend.recover()
        state = self.backend.state()
        self.target_pos = np.asarray(state.tcp_pos, dtype=np.float64).copy()
        self.target_quat = quat_normalize(np.asarray(state.tcp_quat, dtype=np.float64))
        self.backend.set_target(self.target_pos, self.target_quat, self.gripper)
        return state

    def hold_action(self) -> np.ndarray:
        """The action that keeps the target and the gripper command as they are."""
        a = np.zeros(len(ACTION_NAMES))
        a[6] = 2.0 * self.gripper - 1.0
        return a

    def evaluate(self, state: RobotState) -> TaskOutcome:
        return self.task.evaluate(state)

    # -- helpers -----------------------------------------------------------------------------------
    def _check_scene(self, state: RobotState) -> None:
        """A simulator knows its own task geometry and objects: the profile must agree with them."""
        source, task = self.profile.source, self.profile.task
        drives = self.backend.embodiment
        if drives and drives != self.cfg.embodiment:
            raise ConfigError(source, "robot.embodiment",
                              f"{self.cfg.embodiment!r}, but the {self.cfg.backend!r} backend drives {drives!r}")
        fixed = self.backend.task_geometry()
        if "name" in fixed and fixed["name"] != task.name:
            raise ConfigError(source, "task.name", f"{task.name!r}, but the simulated scene is {fixed['name']!r} "
                                                   f"(backend_options.scene)")
        for key, value in fixed.items():
            if key == "name":
                continue
            mine: Any = task
            for part in key.split("."):
                mine = getattr(mine, part)
            if np.linalg.norm(np.asarray(mine, dtype=np.float64) - np.asarray(value, dtype=np.float64)) > 1e-3:
                raise ConfigError(source, f"task.{key}", f"{_show(mine)} does not match the simulated scene "
                                                          f"({_show(value)}, from backend_options)")
        missing = [obj for obj in self.task.objects if obj not in state.objects]
        if missing:
            raise ConfigError(source, "task.name", f"the {task.name} task needs the pose of {', '.join(missing)}, "
                                                   f"which the {self.cfg.backend!r} backend does not report")

    def _gripper_command(self, a: float) -> float:
        mode = self.profile.task.gripper
        if mode == "closed":
            return 0.0
        if mode == "open":
            return 1.0
        return float((np.clip(a, -1.0, 1.0) + 1.0) / 2.0)

    def _clip_orientation(self, quat: np.ndarray) -> np.ndarray:
        rel = quat_mul(quat_normalize(quat), quat_conj(self.nominal_quat))
        rpy = np.clip(quat_to_euler(rel), self.rpy_lo, self.rpy_hi)
        return quat_normalize(quat_mul(quat_from_euler(*rpy), self.nominal_quat))


def _show(value: Any) -> str:
    a = np.round(np.asarray(value, dtype=np.float64), 4)
    return str(a.tolist()) if a.ndim else f"{float(a):g}"


def quat_to_rotvec_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation vector (base frame) taking orientation a to b."""
    return quat_to_rotvec(quat_mul(b, quat_conj(a)))
