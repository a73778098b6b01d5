"""What the learner and inference nodes rely on from an algorithm, and nothing more."""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import torch


@dataclasses.dataclass
class AlgoConfig:
    """Fields every algorithm's config has (its own dataclass extends this one)."""

    batch_size: int = 256                 # transitions per update, sampled by the learner
    seed: int = 0                         # network initialisation and the agent's random draws

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size: must be > 0, got {self.batch_size!r}")


class Agent(Protocol):
    """The learner side: networks, optimisers and the update."""

    num_updates: int

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One training step on a batch (``batch.py`` lists the keys); returns scalar metrics."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors and plain values only)."""

    def load_state_dict(self, d: dict[str, Any]) -> None: ...

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the tensors the policy loads (what weight sync ships to inference)."""


class Policy(Protocol):
    """The inference side: acts on one observation."""

    #: actions returned per call: 1 -> ``act`` returns ``[A]``; H -> ``[H, A]`` (an action chunk)
    chunk_size: int

    # Optional: ``uses_instruction = True`` (absent or False for most policies) makes the inference node
    # call ``act(state, pixels, deterministic, generator, instruction=text)`` with the robot's
    # ``RobotDescription.instruction``.

    def load_policy_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        """Load the agent's ``policy_state_dict()``; raises on missing or unexpected keys."""

    def act(self, state: np.ndarray, pixels: np.ndarray | None, deterministic: bool,
            generator: torch.Generator | None = None) -> np.ndarray:
        """Action(s) in ``[-1, 1]`` for one observation; random draws come from ``generator`` (the
        caller's, so exploration continues across weight swaps); ``deterministic`` for evaluation."""
