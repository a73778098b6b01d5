"""A scripted peg-insertion expert: move above the hole, align, descend.

It reads only what a policy sees (the proprioception of an observation) plus the task geometry of
the robot profile, and answers with an action in ``[-1, 1]^7``. It proves the control loop end to
end and later plays the human for demonstrations and interventions.
"""
from __future__ import annotations

import numpy as np

from .geometry import quat_conj, quat_mul, quat_normalize, quat_to_rotvec, rotate
from .profile import RobotProfile

HOVER = 0.02        # peg tip height above the hole opening while aligning, metres
XY_TOL = 0.003      # aligned when the tip is this close to the hole axis...
YAW_TOL = 0.03      # ...and the peg this close to the hole's orientation (rad)


class ScriptedInsertion:
    """Proportional controller through three phases, chosen from the current state alone."""

    def __init__(self, profile: RobotProfile, noise: float = 0.0, seed: int | None = None) -> None:
        task = profile.task
        self.target = np.asarray(task.target_pos, dtype=np.float64)
        self.tip_offset = task.peg_tip_offset
        self.hole_top = self.target[2] + task.hole_top_height
        self.aligned_quat = quat_normalize(np.asarray(task.tcp_quat, dtype=np.float64))
        self.scale = np.asarray(profile.robot.action_scale, dtype=np.float64)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.phase = "approach"

    def act(self, proprio: np.ndarray) -> np.ndarray:
        pos = np.asarray(proprio[0:3], dtype=np.float64)
        quat = np.asarray(proprio[3:7], dtype=np.float64)
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
        action = np.zeros(7)
        with np.errstate(divide="ignore", invalid="ignore"):
            action[:6] = np.where(self.scale[:6] > 0, delta / self.scale[:6], 0.0)
        action[6] = -1.0  # keep the gripper closed on the peg
        if self.noise > 0:
            action[:6] += self.rng.normal(0.0, self.noise, 6)
        return np.clip(action, -1.0, 1.0)
