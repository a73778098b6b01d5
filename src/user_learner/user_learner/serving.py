"""Acting for several robots with one policy whose weights are replaced underneath: the pure part of
the inference node (no ROS), so that swaps and exploration noise are tested directly."""
from __future__ import annotations

import threading
import zlib
from typing import Callable, Iterable

import numpy as np
import torch

from .algos import Policy


def robot_seed(seed: int, robot_id: str) -> int:
    """One seed per (run seed, robot): robots of a run draw different noise, reruns draw the same."""
    return int(np.random.SeedSequence([seed, zlib.crc32(robot_id.encode())]).generate_state(1)[0])


class PolicyServer:
    """The current policy, the next one (prepared off the control path) and one noise generator per
    robot, kept across swaps so that exploration goes on where it was instead of replaying its first
    draws after every weight update."""

    def __init__(self, make_policy: Callable[[], Policy], seed: int, robot_ids: Iterable[str]) -> None:
        self._make = make_policy
        self.policy = make_policy()
        self.version = 0
        self._shadow: tuple[int, Policy] | None = None
        self._lock = threading.Lock()
        self.generators = {rid: torch.Generator().manual_seed(robot_seed(seed, rid)) for rid in robot_ids}

    def prepare(self, version: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Build the next policy from new weights (any thread); ``swap`` adopts it."""
        shadow = self._make()
        shadow.load_policy_state_dict(state_dict)
        with self._lock:
            self._shadow = (version, shadow)

    def swap(self) -> bool:
        """Adopt the newest prepared policy (call between steps, never during ``act``); True if it did."""
        if self._shadow is None:
            return False
        with self._lock:
            (self.version, self.policy), self._shadow = self._shadow, None
        return True

    def act(self, robot_id: str, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool) -> np.ndarray:
        """The current policy's action (or chunk) for one observation of ``robot_id``."""
        return self.policy.act(state, pixels, deterministic, self.generators[robot_id])
