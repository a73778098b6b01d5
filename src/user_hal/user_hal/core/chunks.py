"""Action chunks on the robot side: which queued action runs at a control step (pure, no ROS).

A chunk answering the observation of step ``k`` holds actions for steps ``k .. k+H-1`` (a single
action is a chunk of one). ``ChunkQueue`` keeps the chunks of the running episode and gives, for the
current step, the action to execute:

- only entries for exactly that step count; a chunk is dropped once its last step has passed;
- freshness (the watchdog, per step): the entry for step ``s`` of a chunk answering step ``k`` may run
  until ``observed + (s - k) * period + watchdog``, where ``observed`` is when the robot last published
  an observation of step ``k`` (while it holds it re-publishes the step, so a late answer to a held step
  still counts from the newest one, as single actions always did) and ``period`` the wall-clock control
  period: an entry runs at most a watchdog later than its own step was due, so a robot that fell behind
  the chunk's schedule (slow ticks) holds instead of replaying the plan late;
- ``mode="none"``: the newest fresh chunk covering the step wins; ``mode="exp"``: temporal
  ensembling (ACT): all fresh covering entries are averaged with weights ``exp(-rate * i)``,
  ``i = 0`` for the oldest chunk (``rate`` 0: plain mean; larger: older chunks count more).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ENSEMBLE_MODES = ("none", "exp")


@dataclass
class PendingChunk:
    values: np.ndarray       # [H, A], validated, in [-1, 1]
    episode_id: int
    step: int                # first step covered (the step of the observation it answers)
    policy_version: int
    source: int
    received: float          # time.monotonic()
    observed: float          # time.monotonic() the robot last published step ``step`` (or ``received``)

    @property
    def end(self) -> int:
        """One past the last step covered."""
        return self.step + len(self.values)

    def deadline(self, step: int, period: float, watchdog: float) -> float:
        """Latest time.monotonic() at which the entry for ``step`` may run."""
        return self.observed + (step - self.step) * period + watchdog


def ensemble(rows: list[np.ndarray], rate: float) -> np.ndarray:
    """ACT temporal ensembling of the actions several chunks (oldest first) give for one step."""
    if not rows:
        raise ValueError("ensemble: no actions to combine")
    w = np.exp(-rate * np.arange(len(rows), dtype=np.float64))
    return (w[:, None] * np.stack(rows)).sum(axis=0) / w.sum()


class ChunkQueue:
    """The queued chunks of one robot (callers hold the robot's lock)."""

    def __init__(self, period: float, watchdog: float, mode: str = "none", rate: float = 0.01,
                 max_chunks: int = 64) -> None:
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"chunk ensemble mode must be one of {', '.join(ENSEMBLE_MODES)}, got {mode!r}")
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"chunk ensemble rate must be finite and >= 0, got {rate!r}")
        self.period, self.watchdog, self.mode, self.rate = period, watchdog, mode, rate
        self.max_chunks = max_chunks
        self.chunks: list[PendingChunk] = []   # in arrival order (oldest first)

    def __len__(self) -> int:
        return len(self.chunks)

    def clear(self) -> None:
        self.chunks.clear()

    def add(self, chunk: PendingChunk) -> None:
        self.chunks.append(chunk)
        if len(self.chunks) > self.max_chunks:
            del self.chunks[0]

    def drop_passed(self, step: int) -> None:
        """Forget chunks whose every step is before ``step``."""
        self.chunks = [c for c in self.chunks if c.end > step]

    def fresh(self, episode_id: int, step: int, now: float) -> list[PendingChunk]:
        """Chunks (oldest first) with an entry for ``step`` of ``episode_id`` that may still run at ``now``."""
        return [c for c in self.chunks if c.episode_id == episode_id and c.step <= step < c.end
                and now <= c.deadline(step, self.period, self.watchdog)]

    def covers(self, episode_id: int, step: int, now: float) -> bool:
        return bool(self.fresh(episode_id, step, now))

    def take(self, episode_id: int, step: int, now: float) -> PendingChunk | None:
        """The action to run at ``step`` as a one-step chunk (None: hold). Drops chunks that ended."""
        self.drop_passed(step)
        cover = self.fresh(episode_id, step, now)
        if not cover:
            return None
        newest = cover[-1]
        if self.mode == "exp" and len(cover) > 1:
            values = ensemble([c.values[step - c.step] for c in cover], self.rate)
            version = max(c.policy_version for c in cover)
        else:
            values, version = newest.values[step - newest.step], newest.policy_version
        return PendingChunk(np.asarray(values, dtype=np.float64)[None], episode_id, step, version, newest.source,
                            newest.received, newest.observed)


def check_chunk(values, chunk_length: int, action_dim: int, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Validate ``chunk_length`` row-major actions; returns ``[H, A]`` clipped to [-1, 1] or raises
    ``ActionError`` naming the bad entry (one bad entry rejects the whole chunk)."""
    from .cell import ActionError, check_action

    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size != chunk_length * action_dim:
        raise ActionError(f"chunk has {a.size} values, expected chunk_length {chunk_length} x {action_dim} "
                          f"({', '.join(names)})")
    rows = a.reshape(chunk_length, action_dim)
    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        try:
            out[i] = check_action(row, action_dim)
        except ActionError as exc:
            raise ActionError(f"chunk entry {i}: {exc}") from None
    return out
