"""The robot profile: one YAML file describing a robot cell (arm, limits, cameras, task).

``config/robot_sim.yaml`` is the simulated Franka doing peg insertion, ``config/robot_sim_pick.yaml`` the
same arm doing pick-and-place, ``config/robot_wxai.yaml`` the simulated WidowX AI doing peg insertion; a
real cell copies one and changes ``robot.backend`` and the task geometry. ``load_profile`` validates
everything at load time: a bad value raises ``ConfigError`` naming the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

from user_common.config_schema import load_config_file, non_negative, positive

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]
#: groups of values an observation's proprio can carry (``robot.proprio``; names in ``cell.PROPRIO_GROUPS``)
ProprioGroup = Literal["tcp_pose", "tcp_twist", "gripper_width", "wrench"]

#: what a task asks for in words, when the profile does not say (``task.instruction``)
DEFAULT_INSTRUCTIONS = {
    "peg_insertion": "insert the peg into the hole",
    "pick_place": "put the cube in the right bin",
}


@dataclasses.dataclass
class Box:
    """Axis-aligned bounds, ``lower[i] <= upper[i]``."""

    lower: Vec3
    upper: Vec3

    def validate(self) -> None:
        for i, (lo, hi) in enumerate(zip(self.lower, self.upper)):
            if lo > hi:
                raise ValueError(f"lower[{i}]: {lo} is above upper[{i}] {hi}")


@dataclasses.dataclass
class StartPose:
    """Where an episode starts: nominal TCP position and yaw, randomized uniformly within ranges."""

    pos: Vec3 = (0.5, 0.0, 0.15)
    yaw: float = 0.0                          # rad, about the base z axis, relative to task.tcp_quat
    xy_range: tuple[float, float] = (0.04, 0.04)  # +- metres
    yaw_range: float = dataclasses.field(default=0.25, metadata=non_negative())  # +- rad

    def validate(self) -> None:
        if min(self.xy_range) < 0:
            raise ValueError(f"xy_range: must be >= 0, got {list(self.xy_range)}")


@dataclasses.dataclass
class PickPlaceConfig:
    """Geometry and success margins of the pick-and-place task (``task.name: pick_place``)."""

    bin_inner_half: Vec2 = (0.09, 0.09)       # half the inner width of the target bin, x y (metres)
    cube_half_size: float = dataclasses.field(default=0.02, metadata=positive())
    # Success: the cube centre at most this far above its resting height on the bin floor ...
    rest_tolerance: float = dataclasses.field(default=0.01, metadata=positive())
    # ... the gripper at least this wide (metres between the fingers) ...
    open_width: float = dataclasses.field(default=0.05, metadata=positive())
    # ... and the TCP at least this far above the cube's top face.
    clearance: float = dataclasses.field(default=0.04, metadata=non_negative())

    def validate(self) -> None:
        if min(self.bin_inner_half) <= 0:
            raise ValueError(f"bin_inner_half: must be > 0, got {list(self.bin_inner_half)}")
        if self.open_width <= 2 * self.cube_half_size:
            raise ValueError(f"open_width: must exceed the cube's width {2 * self.cube_half_size:g} (an open "
                             f"gripper is wider than a held cube), got {self.open_width:g}")


@dataclasses.dataclass
class TaskConfig:
    """Task geometry and the rule reward."""

    name: Literal["peg_insertion", "pick_place"] = "peg_insertion"
    # What the task asks for in words (for language-conditioned policies); "" = DEFAULT_INSTRUCTIONS[name].
    instruction: str = ""
    # Where the task's object must go: peg_insertion: the hole bottom centre (the peg tip's goal);
    # pick_place: the centre of the target bin's floor (its top face).
    target_pos: Vec3 = (0.5, 0.0, 0.0)
    tcp_quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # aligned TCP orientation, xyzw
    peg_tip_offset: float = 0.1               # peg tip = TCP + offset along the TCP z axis
    hole_top_height: float = 0.04             # height of the hole's opening above target_pos
    success_radius: float = dataclasses.field(default=0.01, metadata=positive())
    reward: Literal["sparse", "dense"] = "sparse"
    # Who decides reward and success: the rule above, or a learned success classifier (the reward node of
    # user_learner sends its verdicts on /<robot_id>/reward_label; the reward is then 1 on success, else 0,
    # and the rule only logs its own verdict per episode). No rule is needed on a real robot with it.
    reward_source: Literal["rule", "classifier"] = "rule"
    # classifier: step = a success verdict on any observation ends the episode; end = only the episode's
    # last observation is judged (the robot holds up to reward_timeout_s for that verdict, then counts a failure).
    reward_when: Literal["step", "end"] = "step"
    reward_timeout_s: float = dataclasses.field(default=2.0, metadata=positive())
    terminate_on_success: bool = True
    gripper: Literal["closed", "open", "policy"] = "closed"  # closed: the peg stays in the hand
    lift: float = dataclasses.field(default=0.06, metadata=non_negative())  # reset: lift first
    start: StartPose = dataclasses.field(default_factory=StartPose)
    pick_place: PickPlaceConfig = dataclasses.field(default_factory=PickPlaceConfig)

    def validate(self) -> None:
        if self.name == "pick_place" and self.gripper != "policy":
            raise ValueError(f"gripper: the pick_place task needs 'policy' (the 7th action value opens and "
                             f"closes the gripper), got {self.gripper!r}")
        if not self.instruction:
            self.instruction = DEFAULT_INSTRUCTIONS[self.name]
        elif not self.instruction.strip() or "\n" in self.instruction or len(self.instruction) > 200:
            raise ValueError(f"instruction: must be one line of 1 to 200 characters, got {self.instruction!r}")


@dataclasses.dataclass
class RobotSection:
    """The arm and its control loop."""

    embodiment: str = "franka_fr3"
    backend: str = "sim"
    control_hz: float = dataclasses.field(default=10.0, metadata=positive())
    realtime_factor: float = dataclasses.field(default=1.0, metadata=non_negative())
    action_scale: tuple[float, float, float, float, float, float, float] = (
        0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 1.0)
    safety_box: Box = dataclasses.field(default_factory=lambda: Box((0.3, -0.25, 0.02), (0.75, 0.25, 0.4)))
    # Orientation bounds (roll, pitch, yaw in rad) of the target relative to task.tcp_quat.
    orientation_limits: Box = dataclasses.field(
        default_factory=lambda: Box((-0.3, -0.3, -0.8), (0.3, 0.3, 0.8)))
    # Speed limits of the impedance *target*, for policy/human actions and resets alike.
    max_tcp_speed: float = dataclasses.field(default=0.25, metadata=positive())  # m/s
    max_tcp_angular_speed: float = dataclasses.field(default=1.0, metadata=positive())  # rad/s
    watchdog_periods: float = dataclasses.field(default=2.0, metadata=positive())
    # Real-time backends: the state is read (and the observation published) this long before the
    # next control tick, so the observation shows the arm after it followed the last action and the
    # policy has this long to answer. Simulated backends read the state after the simulated period.
    inference_budget_s: float = dataclasses.field(default=0.03, metadata=non_negative())
    heartbeat_hz: float = dataclasses.field(default=2.0, metadata=positive())
    max_episode_steps: int = dataclasses.field(default=100, metadata=positive())
    cameras: list[str] = dataclasses.field(default_factory=lambda: ["wrist", "side"])
    # What the observation's proprio carries, in this order (then each task object's pose). An arm without
    # a force/torque sensor leaves out "wrench".
    proprio: list[ProprioGroup] = dataclasses.field(
        default_factory=lambda: ["tcp_pose", "tcp_twist", "gripper_width", "wrench"])
    image_size: tuple[int, int] = (128, 128)  # width, height
    # Human intervention: policy actions are ignored for this long after the last human action.
    intervention_hold_s: float = dataclasses.field(default=0.5, metadata=non_negative())
    # Backend faults (BackendError) recovered with backend.recover() per episode before the robot stops.
    max_recoveries: int = dataclasses.field(default=3, metadata=non_negative())
    # Action chunks (Action.chunk_length > 1, see user_hal.core.chunks): the step's action comes from the newest
    # chunk covering it ("none") or from all of them, weighted exp(-rate * i), i = 0 the oldest ("exp").
    chunk_ensemble: Literal["none", "exp"] = "none"
    chunk_ensemble_rate: float = dataclasses.field(default=0.01, metadata=non_negative())

    def validate(self) -> None:
        if min(self.action_scale) < 0:
            raise ValueError(f"action_scale: must be >= 0, got {list(self.action_scale)}")
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size: must be > 0, got {list(self.image_size)}")
        if self.inference_budget_s >= 1.0 / self.control_hz:
            raise ValueError(f"inference_budget_s: must be shorter than the control period 1/control_hz = "
                             f"{1.0 / self.control_hz:g} s, got {self.inference_budget_s:g}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: duplicate names in {self.cameras}")
        if len(set(self.proprio)) != len(self.proprio):
            raise ValueError(f"proprio: duplicate groups in {self.proprio}")
        if "tcp_pose" not in self.proprio:
            raise ValueError(f"proprio: must include tcp_pose (the task rules and experts read it), got {self.proprio}")
        if not math.isfinite(self.chunk_ensemble_rate):
            raise ValueError(f"chunk_ensemble_rate: must be finite, got {self.chunk_ensemble_rate!r}")


@dataclasses.dataclass
class RobotProfile:
    """A whole robot profile file."""

    robot: RobotSection = dataclasses.field(default_factory=RobotSection)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    backend_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Cameras that are separate devices (RealSense by serial, or an image topic), by camera name;
    # see user_hal.devices.cameras.make_camera_sources. The backend renders the others (simulation).
    camera_sources: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "<defaults>"

    def validate(self) -> None:
        box = self.robot.safety_box
        for i, (s, lo, hi) in enumerate(zip(self.task.start.pos, box.lower, box.upper)):
            if not lo <= s <= hi:
                raise ValueError(f"task.start.pos: [{i}]={s} is outside robot.safety_box [{lo}, {hi}]")
        if self.task.name == "pick_place":  # the TCP must reach the cube on the target bin's floor
            for i, (s, lo, hi) in enumerate(zip(self.task.target_pos[:2], box.lower, box.upper)):
                if not lo <= s <= hi:
                    raise ValueError(f"task.target_pos: [{i}]={s} (the target bin) is outside robot.safety_box "
                                     f"[{lo}, {hi}]")


def load_profile(path: str | Path, overrides: dict[str, Any] | None = None) -> RobotProfile:
    """Load and validate a robot profile; ``overrides`` are dotted keys, e.g. ``robot.backend``."""
    prof = load_config_file(RobotProfile, path, overrides)
    if prof.camera_sources:   # checked now (nothing is opened), so a bad key fails at load time
        from .devices.cameras import make_camera_sources

        make_camera_sources(prof.camera_sources, tuple(prof.robot.image_size), prof.source)
    return prof
