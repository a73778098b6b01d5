"""Rule rewards: per-step reward and success flag computed from the arm state."""
from __future__ import annotations

import dataclasses

import numpy as np

from .backend import RobotState
from .geometry import rotate
from .profile import TaskConfig


@dataclasses.dataclass
class TaskOutcome:
    reward: float
    success: bool
    distance: float              # peg tip to target, metres


class PegInsertion:
    """Peg insertion: success when the peg tip is within ``success_radius`` of the hole bottom.

    ``sparse`` reward is 1 on success and 0 otherwise; ``dense`` adds a shaping term
    ``-distance`` (metres) so that getting closer is rewarded.
    """

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.target = np.asarray(cfg.target_pos, dtype=np.float64)

    def peg_tip(self, state: RobotState) -> np.ndarray:
        return state.tcp_pos + rotate(state.tcp_quat, np.array([0.0, 0.0, self.cfg.peg_tip_offset]))

    def evaluate(self, state: RobotState) -> TaskOutcome:
        distance = float(np.linalg.norm(self.peg_tip(state) - self.target))
        success = distance <= self.cfg.success_radius
        reward = float(success) if self.cfg.reward == "sparse" else float(success) - distance
        return TaskOutcome(reward=reward, success=success, distance=distance)


TASKS = {"peg_insertion": PegInsertion}


def make_task(cfg: TaskConfig) -> PegInsertion:
    return TASKS[cfg.name](cfg)
