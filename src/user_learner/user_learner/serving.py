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
        self._seed = seed
        self.generators: dict[str, torch.Generator] = {}
        for rid in robot_ids:
            self.add_robot(rid)

    def add_robot(self, robot_id: str) -> None:
        """Serve one more robot (its noise generator is kept if it was served before)."""
        if robot_id not in self.generators:
            self.generators[robot_id] = torch.Generator().manual_seed(robot_seed(self._seed, robot_id))

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

    @property
    def chunk_size(self) -> int:
        """Actions per ``act`` call of the current policy (1: a single action)."""
        return int(getattr(self.policy, "chunk_size", 1))

    @property
    def uses_instruction(self) -> bool:
        """True if the policy takes the task instruction (``act(..., instruction=text)``)."""
        return bool(getattr(self.policy, "uses_instruction", False))

    def act(self, robot_id: str, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool,
            instruction: str | None = None) -> np.ndarray:
        """The current policy's action ``[A]`` (or chunk ``[H, A]``) for one observation of ``robot_id``;
        ``instruction`` is passed only to a policy that ``uses_instruction``."""
        if self.uses_instruction:
            return self.policy.act(state, pixels, deterministic, self.generators[robot_id], instruction=instruction)
        return self.policy.act(state, pixels, deterministic, self.generators[robot_id])


    def act_batch(self, requests: list[tuple[str, np.ndarray, np.ndarray | None, bool, str | None]]
                  ) -> list[np.ndarray]:
        """Actions for several robots' observations ``(robot_id, state, pixels, deterministic, instruction)``:
        one forward pass when the policy has ``act_batch`` (and neither chunks nor instructions), else one
        ``act`` per request. Each robot draws from its own generator either way, so a robot's actions do
        not depend on which other robots share its pass."""
        batched = getattr(self.policy, "act_batch", None)
        if batched is None or len(requests) == 1 or self.uses_instruction or self.chunk_size > 1:
            return [self.act(rid, state, pixels, det, instruction) for rid, state, pixels, det, instruction in requests]
        states = np.stack([r[1] for r in requests])
        pixels = None if requests[0][2] is None else np.stack([r[2] for r in requests])
        return list(batched(states, pixels, [r[3] for r in requests], [self.generators[r[0]] for r in requests]))


class ChunkScheduler:
    """When to ask the policy for a robot's next chunk (pure bookkeeping, one entry per robot).

    A chunk answering step ``k`` covers ``k .. k+H-1``; the policy is asked at the first observation of an
    episode, then whenever ``replan_every`` steps passed since the last query (``replan_every`` = H: one
    query per chunk; smaller: overlapping chunks for temporal ensembling on the robot), and again for an
    observation of a step it already saw (the robot re-publishes a step only while it holds, i.e. when it
    could not use the last answer). With H = 1 every observation is answered, as for single actions.
    """

    def __init__(self, chunk_size: int, replan_every: int = 0) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        replan_every = replan_every or chunk_size
        if not 1 <= replan_every <= chunk_size:
            raise ValueError(f"replan_every must be in 1..{chunk_size} (the chunk size; 0 = the chunk size), "
                             f"got {replan_every} (the robot would hold between chunks)")
        self.chunk_size, self.replan_every = chunk_size, replan_every
        self._queried: dict[str, tuple[int, int]] = {}   # robot -> (episode_id, step) of the last query
        self._seen: dict[str, tuple[int, int]] = {}      # robot -> (episode_id, step) of the last observation

    def due(self, robot_id: str, episode_id: int, step: int) -> bool:
        """Whether to query the policy for this observation; records the observation (and the query)."""
        seen, self._seen[robot_id] = self._seen.get(robot_id), (episode_id, step)
        last = self._queried.get(robot_id)
        if last is None or last[0] != episode_id:
            due = True
        elif step < last[1]:
            due = False                                   # an older observation arriving late
        else:
            due = step - last[1] >= self.replan_every or seen == (episode_id, step)
        if due:
            self._queried[robot_id] = (episode_id, step)
        return due
