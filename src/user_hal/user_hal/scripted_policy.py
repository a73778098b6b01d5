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

    def tip_distance(self, proprio: np.ndarray) -> float:
        """Peg tip to the hole bottom, metres (what the task's success is judged on)."""
        pos = np.asarray(proprio[0:3], dtype=np.float64)
        quat = np.asarray(proprio[3:7], dtype=np.float64)
        tip = pos + rotate(quat, np.array([0.0, 0.0, self.tip_offset]))
        return float(np.linalg.norm(tip - self.target))

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
