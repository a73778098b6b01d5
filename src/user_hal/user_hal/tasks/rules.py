"""Rule rewards: per-step reward and success flag computed from the robot state.

A task is a class with ``evaluate(state) -> TaskOutcome``, registered by name in ``TASKS``;
``make_task`` builds the one a profile's ``task.name`` asks for. The rules are described in
``docs/tasks.md``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Protocol

import numpy as np

from ..backends.base import RobotState
from ..core.geometry import rotate
from ..profile import TaskConfig


@dataclasses.dataclass
class TaskOutcome:
    reward: float
    success: bool
    distance: float              # the task's tracked point to its target, metres (peg tip, cube)


class Task(Protocol):
    """What the robot cell, the markers and the scripted policies need of a task."""

    #: loose objects whose poses the task reads from ``RobotState.objects`` (and observations carry)
    objects: ClassVar[tuple[str, ...]]
    #: gripper opening (0 closed .. 1 open) a reset commands; None keeps the last command
    reset_gripper: ClassVar[float | None]
    cfg: TaskConfig
    target: np.ndarray           # (3,) where the tracked point must go
    target_radius: float         # size of the target region, metres (for markers)

    def evaluate(self, state: RobotState) -> TaskOutcome: ...

    def tracked_point(self, state: RobotState) -> np.ndarray: ...


class PegInsertion:
    """Peg insertion: success when the peg tip is within ``success_radius`` of the hole bottom.

    ``sparse`` reward is 1 on success and 0 otherwise; ``dense`` adds a shaping term
    ``-distance`` (metres) so that getting closer is rewarded.
    """

    objects: ClassVar[tuple[str, ...]] = ()
    reset_gripper: ClassVar[float | None] = None

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.target = np.asarray(cfg.target_pos, dtype=np.float64)
        self.target_radius = cfg.success_radius

    def peg_tip(self, state: RobotState) -> np.ndarray:
        return state.tcp_pos + rotate(state.tcp_quat, np.array([0.0, 0.0, self.cfg.peg_tip_offset]))

    def tracked_point(self, state: RobotState) -> np.ndarray:
        return self.peg_tip(state)

    def evaluate(self, state: RobotState) -> TaskOutcome:
        distance = float(np.linalg.norm(self.peg_tip(state) - self.target))
        success = distance <= self.cfg.success_radius
        reward = float(success) if self.cfg.reward == "sparse" else float(success) - distance
        return TaskOutcome(reward=reward, success=success, distance=distance)


class PickPlace:
    """Pick the cube, put it in the target bin, let go and lift the hand away.

    Success: the cube centre lies within the target bin's inner footprint and at most
    ``rest_tolerance`` above its resting height, the gripper is at least ``open_width`` wide and the
    TCP is at least ``clearance`` above the cube's top. ``sparse``: 1 on success. ``dense`` adds
    ``-(reach + carry + retreat)`` (metres, see ``docs/tasks.md``).
    """

    objects: ClassVar[tuple[str, ...]] = ("cube",)
    reset_gripper: ClassVar[float | None] = 1.0

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.pp = cfg.pick_place
        self.target = np.asarray(cfg.target_pos, dtype=np.float64)
        self.half = np.asarray(self.pp.bin_inner_half, dtype=np.float64)
        self.rest_z = self.target[2] + self.pp.cube_half_size     # cube centre resting on the bin floor
        self.target_radius = float(min(self.half))
        # retreat at its worst: the TCP at the cube (clearance + half a cube below the goal), gripper shut
        self.max_retreat = self.pp.clearance + self.pp.cube_half_size + self.pp.open_width

    def cube(self, state: RobotState) -> np.ndarray:
        """Pose of the cube ``[x, y, z, qx, qy, qz, qw]``; a clear error if the backend does not track it."""
        try:
            return state.objects["cube"]
        except KeyError:
            raise KeyError("the pick_place task needs the cube's pose in RobotState.objects; this backend "
                           "reports none (simulation: backend_options.scene: pick_place)") from None

    def tracked_point(self, state: RobotState) -> np.ndarray:
        return np.asarray(self.cube(state)[:3], dtype=np.float64)

    def placed(self, cube: np.ndarray) -> bool:
        """The cube rests inside the target bin (held or not)."""
        inside = np.all(np.abs(cube[:2] - self.target[:2]) <= self.half)
        return bool(inside and cube[2] <= self.rest_z + self.pp.rest_tolerance)

    def evaluate(self, state: RobotState) -> TaskOutcome:
        cube = self.tracked_point(state)
        placed = self.placed(cube)
        height = float(state.tcp_pos[2] - (cube[2] + self.pp.cube_half_size))  # TCP above the cube's top face
        released = bool(state.gripper_width >= self.pp.open_width and height >= self.pp.clearance)
        success = placed and released          # plain bools: messages refuse numpy's
        goal = np.array([self.target[0], self.target[1], self.rest_z])
        distance = float(np.linalg.norm(cube - goal))
        if self.cfg.reward == "sparse":
            return TaskOutcome(reward=float(success), success=success, distance=distance)
        # Stages: the hand reaches the cube, the cube travels to the bin, then the hand lets go and rises.
        reach = 0.0 if placed else float(np.linalg.norm(state.tcp_pos - cube))
        carry = float(np.linalg.norm(cube[:2] - self.target[:2]))
        if placed:
            retreat = (min(self.pp.clearance + self.pp.cube_half_size, max(0.0, self.pp.clearance - height))
                       + max(0.0, self.pp.open_width - state.gripper_width))
        else:
            retreat = self.max_retreat
        return TaskOutcome(reward=float(success) - (reach + carry + retreat), success=success, distance=distance)


TASKS: dict[str, Callable[[TaskConfig], Task]] = {"peg_insertion": PegInsertion, "pick_place": PickPlace}


def make_task(cfg: TaskConfig) -> Task:
    return TASKS[cfg.name](cfg)
