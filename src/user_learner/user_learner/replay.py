"""An in-memory replay store behind the narrow interface the learner uses.

``add(transition)``, ``sample(batch_size)``, ``len()`` and ``stats()`` are all the learner needs, so
the persistent, cache-aware buffer (``user_buffer``) drops in behind the same four calls.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Protocol

import numpy as np

from .batch import ObsSpec


@dataclasses.dataclass
class TransitionArrays:
    """One transition as numpy arrays (pixels may be None for a state-only spec)."""

    state: np.ndarray            # float32 [state_dim]
    action: np.ndarray           # float32 [action_dim]
    reward: float
    terminated: bool
    next_state: np.ndarray
    pixels: np.ndarray | None = None       # uint8 [n_cams, H, W, 3]
    next_pixels: np.ndarray | None = None
    robot_id: str = ""
    episode_id: int = 0
    step: int = 0
    policy_version: int = 0
    intervened: bool = False


class ReplayBuffer(Protocol):
    """What the learner needs from a buffer."""

    def add(self, t: TransitionArrays) -> None: ...
    def sample(self, batch_size: int) -> dict[str, np.ndarray]: ...
    def __len__(self) -> int: ...
    def stats(self) -> dict[str, float]: ...


class MemoryReplay:
    """A ring buffer of preallocated arrays; uniform sampling; thread-safe add/sample."""

    def __init__(self, spec: ObsSpec, capacity: int, seed: int = 0) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.spec = spec
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        s, a = spec.state_dim, spec.action_dim
        self.state = np.zeros((capacity, s), np.float32)
        self.next_state = np.zeros((capacity, s), np.float32)
        self.action = np.zeros((capacity, a), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.policy_version = np.zeros(capacity, np.int64)
        self.intervened = np.zeros(capacity, bool)
        if spec.cameras:
            w, h = spec.image_size
            shape = (capacity, len(spec.cameras), h, w, 3)
            self.pixels = np.zeros(shape, np.uint8)
            self.next_pixels = np.zeros(shape, np.uint8)
        self._next = 0
        self._size = 0
        self.added = 0

    def add(self, t: TransitionArrays) -> None:
        with self._lock:
            i = self._next
            self.state[i] = t.state
            self.next_state[i] = t.next_state
            self.action[i] = t.action
            self.reward[i] = t.reward
            self.terminated[i] = float(t.terminated)
            self.policy_version[i] = t.policy_version
            self.intervened[i] = t.intervened
            if self.spec.cameras:
                self.pixels[i] = t.pixels
                self.next_pixels[i] = t.next_pixels
            self._next = (i + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)
            self.added += 1

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        with self._lock:
            if self._size == 0:
                raise ValueError("cannot sample from an empty replay buffer")
            idx = self.rng.integers(0, self._size, batch_size)
            batch = {
                "state": self.state[idx], "action": self.action[idx], "reward": self.reward[idx],
                "terminated": self.terminated[idx], "next_state": self.next_state[idx],
            }
            if self.spec.cameras:
                batch["pixels"] = self.pixels[idx]
                batch["next_pixels"] = self.next_pixels[idx]
            return batch

    def __len__(self) -> int:
        return self._size

    def stats(self) -> dict[str, float]:
        return {"size": float(self._size), "added": float(self.added), "capacity": float(self.capacity)}


def _tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def replay_state_dict(r: MemoryReplay) -> dict:
    """The filled part of a MemoryReplay as tensors (loads with ``torch.load(weights_only=True)``)."""
    n = r._size
    d = {"size": n, "next": r._next, "added": r.added, "capacity": r.capacity,
         "rng": r.rng.bit_generator.state}
    for name in ("state", "next_state", "action", "reward", "terminated", "policy_version", "intervened"):
        d[name] = _tensor(getattr(r, name)[:n])
    if r.spec.cameras:
        d["pixels"], d["next_pixels"] = _tensor(r.pixels[:n]), _tensor(r.next_pixels[:n])
    return d


def load_replay_state_dict(r: MemoryReplay, d: dict) -> None:
    """Restore ``replay_state_dict`` output into ``r`` (same spec; capacity may differ if large enough)."""
    n = int(d["size"])
    if n > r.capacity:
        raise ValueError(f"checkpoint holds {n} transitions, replay capacity is {r.capacity}")
    names = ["state", "next_state", "action", "reward", "terminated", "policy_version", "intervened"]
    if r.spec.cameras and "pixels" in d:
        names += ["pixels", "next_pixels"]
    with r._lock:
        for name in names:
            getattr(r, name)[:n] = d[name].numpy()
        r._size = n
        r._next = int(d["next"]) % r.capacity if n == r.capacity else n
        r.added = int(d["added"])
        r.rng.bit_generator.state = d["rng"]
