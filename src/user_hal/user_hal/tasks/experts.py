"""Scripted experts, one per task: peg insertion and pick-and-place; ``make_expert`` picks one.

An expert reads only what a policy sees (the proprio of an observation, which carries the task's
object poses, see ``cell.proprio_names``) plus the task geometry of the robot profile, and answers
with an action in ``[-1, 1]^7``. It proves the control loop end to end and plays the human for
demonstrations and interventions.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ..backends.base import RobotState
from ..core.cell import ACTION_NAMES, state_from_proprio
from ..core.geometry import quat_conj, quat_from_rotvec, quat_mul, quat_normalize, quat_to_rotvec, rotate
from ..profile import RobotProfile
from .rules import TaskOutcome, make_task

HOVER = 0.02        # peg tip height above the hole opening while aligning, metres
FR3_MAX_WIDTH = 0.08  # fully open gripper, metres between the fingers
XY_TOL = 0.003      # aligned when the tip is this close to the hole axis...
YAW_TOL = 0.03      # ...and the peg this close to the hole's orientation (rad)


class Expert(Protocol):
    """What the scripted policy node and the benchmarks use of an expert."""

    phase: str

    def act(self, proprio: np.ndarray) -> np.ndarray: ...

    def judge(self, proprio: np.ndarray) -> TaskOutcome: ...


class _Expert:
    """Shared parts: the task's own judgement of an observation, and delta -> action."""

    def __init__(self, profile: RobotProfile, noise: float, seed: int | None) -> None:
        self.task = make_task(profile.task)
        self.scale = np.asarray(profile.robot.action_scale, dtype=np.float64)
        self.aligned_quat = quat_normalize(np.asarray(profile.task.tcp_quat, dtype=np.float64))
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.proprio_groups = tuple(profile.robot.proprio)

    def state(self, proprio: np.ndarray) -> RobotState:
        """The state an observation's proprio shows (laid out as the profile's ``robot.proprio``)."""
        return state_from_proprio(proprio, self.task.objects, self.proprio_groups)

    def judge(self, proprio: np.ndarray) -> TaskOutcome:
        """The task's reward, success and distance for the state an observation's proprio shows."""
        return self.task.evaluate(self.state(proprio))

    def _action(self, delta: np.ndarray, gripper: float) -> np.ndarray:
        """Action moving the target by ``delta`` (metres, radians; clipped to one step) plus ``gripper``."""
        action = np.zeros(len(ACTION_NAMES))
        with np.errstate(divide="ignore", invalid="ignore"):
            action[:6] = np.where(self.scale[:6] > 0, delta / self.scale[:6], 0.0)
        action[6] = gripper
        if self.noise > 0:
            action[:6] += self.rng.normal(0.0, self.noise, 6)
        return np.clip(action, -1.0, 1.0)


class ScriptedInsertion(_Expert):
    """Proportional controller through three phases, chosen from the current state alone."""

    def __init__(self, profile: RobotProfile, noise: float = 0.0, seed: int | None = None) -> None:
        super().__init__(profile, noise, seed)
        task = profile.task
        self.target = np.asarray(task.target_pos, dtype=np.float64)
        self.tip_offset = task.peg_tip_offset
        self.hole_top = self.target[2] + task.hole_top_height
        self.phase = "approach"

    def tip_distance(self, proprio: np.ndarray) -> float:
        """Peg tip to the hole bottom, metres (what the task's success is judged on)."""
        state = self.state(proprio)
        tip = state.tcp_pos + rotate(state.tcp_quat, np.array([0.0, 0.0, self.tip_offset]))
        return float(np.linalg.norm(tip - self.target))

    def act(self, proprio: np.ndarray) -> np.ndarray:
        state = self.state(proprio)
        pos, quat = state.tcp_pos, state.tcp_quat
        tip = pos + rotate(quat, np.array([0.0, 0.0, self.tip_offset]))
        rot_err = quat_to_rotvec(quat_mul(self.aligned_quat, quat_conj(quat)))
        # The square peg fits the hole every quarter turn: align to the nearest one.
        yaw_err = (rot_err[2] + np.pi / 4) % (np.pi / 2) - np.pi / 4
        xy_err = self.target[:2] - tip[:2]
        aligned = np.linalg.norm(xy_err) < XY_TOL and abs(yaw_err) < YAW_TOL
        inside = tip[2] < self.hole_top - 0.002
        delta = np.zeros(6)
        delta[:2] = xy_err
        delta[3:5] = rot_err[:2]
        delta[5] = yaw_err
        if aligned or inside:
            self.phase = "descend"
            delta[2] = self.target[2] - tip[2]
        else:
            self.phase = "align" if tip[2] < self.hole_top + HOVER + 0.01 else "approach"
            delta[2] = (self.hole_top + HOVER) - tip[2]
        return self._action(delta, -1.0)  # keep the gripper closed on the peg


class ScriptedPickPlace(_Expert):
    """Pick the cube, carry it over the target bin, put it down, let go, lift away.

    The phase follows from the state alone (so it picks up again after a slip or an intervention):
    placed -> open, then lift; held -> rise to carry height, move over the bin, lower; otherwise ->
    open, hover above the cube turned to one of its faces, descend, close.
    """

    HOVER = 0.06        # TCP above the cube's top while aligning over it
    CARRY = 0.10        # TCP above the cube's resting height while carrying (the cube clears the walls)
    XY_TOL = 0.004      # aligned over the cube within this distance ...
    YAW_TOL = 0.05      # ... and this yaw (rad)
    GRASP_TOL = 0.006   # close the gripper when the TCP is this close to the grasp point
    OVER_TOL = 0.01     # over the target bin: lower the cube once its centre is this close
    SLACK = 0.01        # opened this much wider than the cube on each side: the fingers clear the bin walls

    def __init__(self, profile: RobotProfile, noise: float = 0.0, seed: int | None = None) -> None:
        super().__init__(profile, noise, seed)
        pp = profile.task.pick_place
        self.half = pp.cube_half_size
        self.target = np.asarray(profile.task.target_pos, dtype=np.float64)
        self.rest_z = self.target[2] + self.half
        self.open_width = pp.open_width
        # Gripper command for an opening of a cube plus slack (the action maps [-1, 1] to 0 .. 0.08 m).
        self.open_cmd = float(np.clip((2 * self.half + 2 * self.SLACK) / FR3_MAX_WIDTH * 2 - 1, -1, 1))
        self.lift_to = pp.clearance + 0.02        # TCP above the cube's top when done
        self.phase = "approach"

    def act(self, proprio: np.ndarray) -> np.ndarray:
        state = self.state(proprio)
        tcp, quat, width = state.tcp_pos, state.tcp_quat, state.gripper_width
        cube = state.objects["cube"]
        cube_pos = cube[:3]
        held = (2 * self.half - 0.01 < width < 2 * self.half + 0.003
                and np.linalg.norm(cube_pos - tcp) < 0.03)
        delta = np.zeros(6)
        goal_quat = quat    # keep the orientation, except when turning to the cube's faces
        if self.task.placed(cube_pos):
            goal = tcp.copy()
            gripper = self.open_cmd
            if width >= self.open_width:      # let go first, then rise straight up
                self.phase = "retreat"
                goal[2] = cube_pos[2] + self.half + self.lift_to
            else:
                self.phase = "release"
        elif held:
            gripper = -1.0
            carry_z = self.rest_z + self.CARRY
            over = np.linalg.norm(self.target[:2] - cube_pos[:2]) < self.OVER_TOL
            goal = tcp.copy()
            if over:
                self.phase = "lower"
                goal[:2] += self.target[:2] - cube_pos[:2]
                goal[2] = self.rest_z + (tcp[2] - cube_pos[2]) + 0.003
            elif tcp[2] < carry_z - 0.02:
                self.phase = "lift"
                goal[2] = carry_z
            else:
                self.phase = "carry"
                goal[:2] += self.target[:2] - cube_pos[:2]
                goal[2] = carry_z
        else:
            goal_quat = self._grasp_quat(cube[3:7])
            yaw_err = abs(quat_to_rotvec(quat_mul(goal_quat, quat_conj(quat)))[2])
            xy_err = np.linalg.norm(cube_pos[:2] - tcp[:2])
            goal = np.array([cube_pos[0], cube_pos[1], cube_pos[2] + self.half + self.HOVER])
            gripper = self.open_cmd
            aligned = xy_err < self.XY_TOL and yaw_err < self.YAW_TOL
            descending = tcp[2] < goal[2] - 0.01 and xy_err < 2 * self.XY_TOL and yaw_err < 2 * self.YAW_TOL
            if aligned or descending:
                goal[2] = cube_pos[2]
                if abs(tcp[2] - goal[2]) < self.GRASP_TOL and width > 2 * self.half - 0.01:
                    self.phase = "grasp"
                    gripper = -1.0
                else:
                    self.phase = "descend"
            else:
                self.phase = "align" if width >= self.open_width else "open"
                if width < self.open_width:     # a failed grasp: open before moving on
                    goal = tcp.copy()
        delta[:3] = goal - tcp
        # Half the rotation error per step: the arm lags the target more in rotation than in translation.
        delta[3:6] = 0.5 * quat_to_rotvec(quat_mul(goal_quat, quat_conj(quat)))
        return self._action(delta, gripper)

    def _grasp_quat(self, cube_quat: np.ndarray) -> np.ndarray:
        """TCP orientation with the fingers across a pair of the cube's faces: the cube's yaw taken to the
        quarter turn nearest the nominal orientation (so it stays within the orientation limits)."""
        yaw = quat_to_rotvec(np.asarray(cube_quat, dtype=np.float64))[2]  # cube stands upright: rotation about z
        yaw = (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
        return quat_mul(quat_from_rotvec(np.array([0.0, 0.0, yaw])), self.aligned_quat)


EXPERTS: dict[str, Callable[..., Expert]] = {"peg_insertion": ScriptedInsertion, "pick_place": ScriptedPickPlace}


def make_expert(profile: RobotProfile, noise: float = 0.0, seed: int | None = None) -> Expert:
    """The scripted expert of the profile's task (``task.name``)."""
    return EXPERTS[profile.task.name](profile, noise=noise, seed=seed)


# -- the scripted human's schedule ----------------------------------------------------------------
def parse_step_ranges(spec: str) -> list[tuple[int, int | None]]:
    """``"5-19,40-"`` -> [(5, 19), (40, None)] (inclusive; open end = to the end of the episode)."""
    out: list[tuple[int, int | None]] = []
    expected = "expected comma-separated step ranges like '5-19,40-' or '7'"
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = (int(hi_s) if hi_s.strip() else None) if sep else lo
        except ValueError:
            raise ValueError(f"{spec!r}: {expected}") from None
        if lo < 0 or (hi is not None and hi < lo):
            raise ValueError(f"{spec!r}: {expected}")
        out.append((lo, hi))
    if not out:
        raise ValueError(f"{spec!r}: {expected}")
    return out


class HumanSchedule:
    """When the scripted human takes over an episode.

    Active when the episode is an ``every_n``-th one (counted as episodes are first seen), the step
    is in ``ranges``, and -- with ``stuck_steps`` > 0 -- the policy is failing: the peg tip has not
    come ``progress`` metres closer to the hole for ``stuck_steps`` steps (then the human keeps
    control for the rest of that episode).
    """

    def __init__(self, ranges: list[tuple[int, int | None]], every_n: int = 1, stuck_steps: int = 0,
                 progress: float = 0.005) -> None:
        if every_n < 1:
            raise ValueError(f"every_n must be >= 1, got {every_n}")
        if stuck_steps < 0:
            raise ValueError(f"stuck_steps must be >= 0, got {stuck_steps}")
        self.ranges, self.every_n, self.stuck_steps, self.progress = ranges, every_n, stuck_steps, progress
        self._episode: int | None = None
        self._index = -1
        self._best = np.inf
        self._best_step = 0
        self.stuck = False

    def active(self, episode_id: int, step: int, distance: float) -> bool:
        if episode_id != self._episode:
            self._episode, self._index = episode_id, self._index + 1
            self._best, self._best_step, self.stuck = np.inf, step, False
        if distance < self._best - self.progress:
            self._best, self._best_step = distance, step
        if self.stuck_steps and step - self._best_step >= self.stuck_steps:
            self.stuck = True
        in_range = any(lo <= step and (hi is None or step <= hi) for lo, hi in self.ranges)
        return self._index % self.every_n == 0 and in_range and (self.stuck_steps == 0 or self.stuck)
