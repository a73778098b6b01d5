"""The learner's replay: one interface, three kinds, chosen by ``replay.kind``.

- ``memory``: ``MemoryReplay``, a RAM ring buffer. With ``learner.checkpoint_replay`` its contents go
  into every checkpoint and a transition is acknowledged once a saved checkpoint holds it; otherwise
  on receipt (a crash then loses what the robots were told was stored).
- ``bag``: ``user_buffer.replay.PersistentReplay``, the persistent MCAP buffer; a transition is
  acknowledged once fsynced.
- ``remote``: ``user_buffer.remote.RemoteReplay``, batches from a buffer node, which records and
  acknowledges; the learner receives no transitions itself.

Every kind stores transitions as they came (raw proprio) and returns batches as a dict of numpy
arrays keyed as ``batch.py`` says; the learner normalizes states itself. ``open_replay`` builds the
configured kind, so the learner never asks which one it has.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from user_buffer.codec import TransitionView
from user_buffer.replay import Layout, LayoutMismatch, chunk_arrays

Key = tuple[str, int, int]   # robot_id, episode_id, step


class Replay(Protocol):
    """What the learner needs from a replay, whatever its kind."""

    #: True: the learner feeds it every transition it receives (``add``); False: it is fed elsewhere
    records: bool
    #: what opening it found (damaged or repaired files), one line each
    problems: list[str]

    def add(self, data: bytes, t: TransitionView) -> bool:
        """Store one serialized transition (``t`` is its decoded view); False if already held."""

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch; after ``set_chunk(H)`` (memory and bag kinds only) with action chunks
        (``user_buffer.replay.chunk_arrays``)."""

    def __len__(self) -> int:
        """Transitions it samples from."""

    def stats(self) -> dict[str, float]: ...

    def take_durable(self) -> list[Key]:
        """Transitions stored for good since the last call (to acknowledge to their robots)."""

    def held(self) -> int | None:
        """How many transitions it holds for good (the record a restart counts from), or None when
        the checkpoint's count is the record."""

    def checkpoint(self) -> dict[str, Any] | None:
        """What a checkpoint must carry to restore this replay (None: it keeps itself)."""

    def checkpoint_saved(self) -> None:
        """The checkpoint holding the last ``checkpoint()`` is on disk."""

    def restore(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class MemoryReplay:
    """A ring buffer of preallocated arrays; uniform sampling; thread-safe ``add``/``sample``.

    After ``set_chunk(H)`` a batch also carries each row's next ``H`` actions of its episode
    (``user_buffer.replay.chunk_arrays``), found by (robot, episode, step) among the transitions held.
    """

    records = True
    problems: list[str] = []

    def __init__(self, layout: Layout, capacity: int, seed: int = 0, checkpointed: bool = True) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.layout = layout
        self.capacity = capacity
        self.checkpointed = checkpointed
        self.rng = np.random.default_rng(seed)
        self.arrays = {k: np.zeros_like(a) for k, a in layout.empty(capacity).items()}
        self._scratch = layout.empty(1)
        self.slot_keys: list[Key | None] = [None] * capacity
        self._slots: dict[Key, int] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._size = 0
        self.added = 0
        self.duplicates = 0
        self._pending: list[Key] = []      # held, not yet in a saved checkpoint
        self._in_flight: list[Key] = []    # in the checkpoint being written
        self._durable: list[Key] = []
        self.horizon = 1

    def set_chunk(self, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"chunk horizon must be >= 1, got {horizon}")
        self.horizon = int(horizon)

    def add(self, data: bytes, t: TransitionView) -> bool:
        key = (t.robot_id, int(t.episode_id), int(t.step))
        self.layout.fill(self._scratch, 0, t)   # LayoutMismatch before anything changes
        with self._lock:
            if key in self._slots:
                self.duplicates += 1
                if key not in self._pending and key not in self._in_flight:
                    self._durable.append(key)   # our copy is safe: release the robot's resent one
                return False
            i = self._next
            old = self.slot_keys[i]
            if old is not None:
                del self._slots[old]
            for k, a in self.arrays.items():
                a[i] = self._scratch[k][0]
            self.slot_keys[i] = key
            self._slots[key] = i
            self._next = (i + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)
            self.added += 1
            (self._pending if self.checkpointed else self._durable).append(key)
        return True

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        with self._lock:
            if self._size == 0:
                raise ValueError("cannot sample from an empty replay buffer")
            idx = self.rng.integers(0, self._size, batch_size)
            out = {k: a[idx] for k, a in self.arrays.items()}
            if self.horizon > 1:
                out.update(self._chunks(idx))
            return out

    def _chunks(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Chunk keys for slots ``idx`` (lock held)."""
        h = self.horizon
        slots = np.zeros((len(idx), h), np.int64)
        found = np.zeros((len(idx), h), bool)
        for i, s in enumerate(idx.tolist()):
            robot, episode, step = self.slot_keys[s]
            for k in range(h):
                j = self._slots.get((robot, episode, step + k))
                if j is None:
                    break
                slots[i, k], found[i, k] = j, True
        slots[~found] = np.repeat(idx[:, None], h, 1)[~found]
        sources = self.arrays["action_source"][slots] if "action_source" in self.arrays else None
        return chunk_arrays(self.arrays["action"][slots], found, sources)

    def __len__(self) -> int:
        return self._size

    def stats(self) -> dict[str, float]:
        return {"size": float(self._size), "added": float(self.added), "capacity": float(self.capacity),
                "duplicates": float(self.duplicates)}

    def take_durable(self) -> list[Key]:
        with self._lock:
            out, self._durable = self._durable, []
        return out

    def held(self) -> int | None:
        return None

    def checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpointed:
            return None
        import torch

        with self._lock:
            n = self._size
            state = {k: a[:n].tolist() if a.dtype == object else torch.from_numpy(np.ascontiguousarray(a[:n]))
                     for k, a in self.arrays.items()}   # names (robot_id, embodiment) as lists of str
            keys = self.slot_keys[:n]
            state.update(size=n, next=self._next, added=self.added, rng=self.rng.bit_generator.state,
                         robots=[k[0] for k in keys],
                         episodes=torch.tensor([k[1] for k in keys], dtype=torch.int64),
                         steps=torch.tensor([k[2] for k in keys], dtype=torch.int64))
            self._in_flight += self._pending
            self._pending = []
        return state

    def checkpoint_saved(self) -> None:
        with self._lock:
            self._durable += self._in_flight
            self._in_flight = []

    def restore(self, state: dict[str, Any]) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"the checkpoint holds {n} transitions, replay capacity is {self.capacity}")
        with self._lock:
            for k, a in self.arrays.items():
                if k not in state:
                    raise ValueError(f"the checkpoint's replay has no {k!r} (it was saved for other observations)")
                a[:n] = np.array(state[k], dtype=object) if a.dtype == object else state[k].numpy()
            keys = list(zip(state["robots"], state["episodes"].tolist(), state["steps"].tolist()))
            self.slot_keys = keys + [None] * (self.capacity - n)
            self._slots = {k: i for i, k in enumerate(keys)}
            self._size = n
            self._next = int(state["next"]) % self.capacity if n == self.capacity else n
            self.added = int(state["added"])
            self.rng.bit_generator.state = state["rng"]

    def describe(self) -> str:
        how = "acknowledged once checkpointed" if self.checkpointed else "acknowledged on receipt"
        return f"replay in memory ({self._size} of {self.capacity} transitions, {how})"

    def close(self) -> None:
        pass


def open_replay(kind: str, **context) -> Replay:
    """The replay of ``kind`` (``memory``, ``bag`` or ``remote``), built from the learner's context."""
    try:
        make = _KINDS[kind]
    except KeyError:
        raise ValueError(f"replay.kind: must be one of {', '.join(_KINDS)}, got {kind!r}") from None
    horizon = int(getattr(context["cfg"].algo, "chunk_size", 1)) if "cfg" in context else 1
    if horizon > 1 and kind not in _CHUNKED:
        raise ValueError(f"replay.kind: {kind} cannot sample action chunks (algo.chunk_size {horizon}); "
                         f"use {' or '.join(_CHUNKED)}")
    replay = make(**context)
    if horizon > 1:   # a policy acting in chunks learns from chunks
        replay.set_chunk(horizon)
    return replay


def _memory(cfg, layout: Layout, seed: int, **_) -> Replay:
    return MemoryReplay(layout, cfg.learner.replay_capacity, seed=seed, checkpointed=cfg.learner.checkpoint_replay)


def _bag(cfg, layout: Layout, seed: int, default_dir: Path, **_) -> Replay:
    from user_buffer.replay import PersistentReplay
    from user_buffer.store import StoreOptions, TransitionStore

    R = cfg.replay
    store = TransitionStore(Path(R.dir) if R.dir else default_dir, options=StoreOptions(
        split_bytes=int(R.split_mb * 2**20), chunk_bytes=max(1, int(R.chunk_mb * 2**20)), compression=R.compression))
    demos = interventions = None
    try:
        demos = TransitionStore(R.demo_dir, writable=False) if R.demo_dir else None
        if R.interventions:
            interventions = TransitionStore(Path(R.interventions_dir) if R.interventions_dir
                                            else default_dir.parent / "interventions", options=store.opts)
        return PersistentReplay(store, layout, cache_bytes=int(R.cache_mb * 2**20), window=R.window,
                                robots=R.robots, embodiments=R.embodiments, demos=demos, demo_ratio=R.demo_ratio,
                                interventions=interventions, seed=seed, batch_size=cfg.algo.batch_size,
                                prefetch=R.prefetch, readers=R.readers, sync_every_s=R.sync_every_s)
    except BaseException:
        for s in (store, demos, interventions):
            if s is not None:
                s.close()
        raise


def _remote(cfg, layout: Layout, node, topic_ns: str = "", **_) -> Replay:
    from user_buffer.buffer_node import SAMPLE_SERVICE
    from user_buffer.remote import RemoteReplay
    from user_common.topics import job_topic

    R = cfg.replay
    return RemoteReplay(node, layout, batch_size=cfg.algo.batch_size, window=R.window, robot_ids=R.robots,
                        embodiments=R.embodiments, demo_ratio=R.demo_ratio, prefetch=max(1, R.prefetch),
                        service=job_topic(SAMPLE_SERVICE, topic_ns))


_KINDS: dict[str, Callable[..., Replay]] = {"memory": _memory, "bag": _bag, "remote": _remote}
_CHUNKED = ("memory", "bag")   # kinds whose batches can carry action chunks (set_chunk)
