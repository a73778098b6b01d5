"""The learner's replay on top of a ``TransitionStore``: a bounded RAM cache, prefetching, sampling.

``PersistentReplay`` offers the four calls the learner uses (``add``, ``sample``, ``len``,
``stats``). Every transition goes to disk (the store) and into a RAM cache of decoded arrays whose
size is given in bytes. The cache keeps the newest transitions (the hot set a recent-window sampler
draws from); a separate demo store is cached on its own. Batches are drawn and assembled by a
background thread ahead of time: cached rows are gathered with one fancy-index copy, the rest are
read from disk (one ``pread`` + decode each) by a small pool of reader threads. When the sampling
window fits the cache the learner therefore never waits on the disk.

Sampling is uniform over all eligible transitions or over the newest ``window`` of them; eligibility
filters by robot id and embodiment; ``demo_ratio`` of each batch comes from the demo store (RLPD
uses 0.5). Given a seed and unchanging data, the sequence of batches is deterministic.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np

from .codec import DecodeError, TransitionView, decode_transition
from .store import TransitionStore

log = logging.getLogger("user_buffer")


class LayoutMismatch(ValueError):
    """A stored transition does not fit the layout the learner asked for."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a batch holds: proprio and action sizes, and which cameras at which size."""

    state_dim: int
    action_dim: int = 7
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = (128, 128)     # width, height

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        w, h = self.image_size
        return (len(self.cameras), h, w, 3)

    def bytes_per_transition(self) -> int:
        n = 4 * (2 * self.state_dim + self.action_dim + 2)
        if self.cameras:
            n += 2 * int(np.prod(self.image_shape))
        return n

    def empty(self, n: int) -> dict[str, np.ndarray]:
        out = {"state": np.zeros((n, self.state_dim), np.float32),
               "next_state": np.zeros((n, self.state_dim), np.float32),
               "action": np.zeros((n, self.action_dim), np.float32),
               "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, np.float32)}
        if self.cameras:
            out["pixels"] = np.zeros((n, *self.image_shape), np.uint8)
            out["next_pixels"] = np.zeros((n, *self.image_shape), np.uint8)
        return out

    def fill(self, out: dict[str, np.ndarray], i: int, t: TransitionView) -> None:
        """Write one decoded transition into row ``i`` of ``out``; LayoutMismatch if it does not fit."""
        for key, obs in (("state", t.obs), ("next_state", t.next_obs)):
            if obs.proprio.shape[0] != self.state_dim:
                raise LayoutMismatch(f"{t.robot_id}: proprio has {obs.proprio.shape[0]} values, "
                                     f"layout expects {self.state_dim}")
            out[key][i] = obs.proprio
        if t.action.shape[0] != self.action_dim:
            raise LayoutMismatch(f"{t.robot_id}: action has {t.action.shape[0]} values, layout expects "
                                 f"{self.action_dim}")
        out["action"][i] = t.action
        out["reward"][i] = t.reward
        out["terminated"][i] = float(t.terminated)
        if self.cameras:
            for key, obs in (("pixels", t.obs), ("next_pixels", t.next_obs)):
                for c, cam in enumerate(self.cameras):
                    try:
                        img = obs.images[obs.camera_names.index(cam)]
                    except ValueError:
                        raise LayoutMismatch(f"{t.robot_id}: no camera {cam!r} (has {obs.camera_names})") from None
                    if img.shape != self.image_shape[1:]:
                        raise LayoutMismatch(f"{t.robot_id}: camera {cam!r} is {img.shape[1]}x{img.shape[0]}, "
                                             f"layout expects {self.image_size[0]}x{self.image_size[1]}")
                    out[key][i, c] = img


class SlotCache:
    """Decoded transitions in preallocated arrays; FIFO over rows, bounded by ``max_bytes``."""

    def __init__(self, layout: Layout, max_bytes: int) -> None:
        self.layout = layout
        self.slots = max(0, int(max_bytes) // layout.bytes_per_transition())
        self.arrays = layout.empty(self.slots)
        self.slot_row = np.full(self.slots, -1, np.int64)
        self.row_slot = np.full(1024, -1, np.int64)
        self.next = 0
        self.lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def __len__(self) -> int:
        return int((self.slot_row >= 0).sum())

    def put(self, row: int, t: TransitionView) -> None:
        if self.slots == 0:
            return
        with self.lock:
            if row < len(self.row_slot) and self.row_slot[row] >= 0:
                return
            if row >= len(self.row_slot):
                grown = np.full(max(row + 1, 2 * len(self.row_slot)), -1, np.int64)
                grown[: len(self.row_slot)] = self.row_slot
                self.row_slot = grown
            s = self.next
            old = self.slot_row[s]
            if old >= 0:
                self.row_slot[old] = -1
            self.layout.fill(self.arrays, s, t)
            self.slot_row[s] = row
            self.row_slot[row] = s
            self.next = (s + 1) % self.slots

    def gather(self, rows: np.ndarray, out: dict[str, np.ndarray]) -> np.ndarray:
        """Copy cached rows into ``out`` (same positions); returns the mask of rows that were missed."""
        with self.lock:
            slots = np.full(len(rows), -1, np.int64)
            inside = rows < len(self.row_slot)
            slots[inside] = self.row_slot[rows[inside]]
            hit = slots >= 0
            if hit.any():
                pos, src = np.flatnonzero(hit), slots[hit]
                for k, a in self.arrays.items():
                    out[k][pos] = a[src]
        return ~hit


class SampleSource:
    """One store with its cache and the list of rows eligible for sampling.

    With ``layout=None`` there is no decoded cache (callers read raw bytes with ``store.read``).
    """

    def __init__(self, store: TransitionStore, layout: Layout | None, cache_bytes: int,
                 robots: Iterable[str], embodiments: Iterable[str]) -> None:
        self.store = store
        self.cache = SlotCache(layout or Layout(state_dim=1), cache_bytes if layout is not None else 0)
        self.robots = set(robots)
        self.embodiments = set(embodiments)
        self.eligible = np.zeros(1024, np.int64)
        self.n = 0
        self.lock = threading.Lock()
        self.bad: set[int] = set()
        v = store.snapshot()
        ok = np.ones(len(v["file"]), bool)
        if self.robots:
            ok &= np.isin(v["robot"], [i for i, r in enumerate(store.robots) if r in self.robots])
        if self.embodiments:
            ok &= np.isin(v["embodiment"], [i for i, e in enumerate(store.embodiments) if e in self.embodiments])
        self.extend(np.flatnonzero(ok))

    def wants(self, t: TransitionView) -> bool:
        return (not self.robots or t.robot_id in self.robots) and (
            not self.embodiments or t.embodiment in self.embodiments)

    def extend(self, rows: np.ndarray) -> None:
        """Make more rows of the store eligible (they must pass the filters)."""
        with self.lock:
            need = self.n + len(rows)
            if need > len(self.eligible):
                grown = np.zeros(max(need, 2 * len(self.eligible)), np.int64)
                grown[: self.n] = self.eligible[: self.n]
                self.eligible = grown
            self.eligible[self.n:need] = rows
            self.n = need

    def draw(self, rng: np.random.Generator, k: int, window: int) -> np.ndarray:
        """``k`` eligible rows drawn uniformly (from the newest ``window`` when it is > 0)."""
        with self.lock:
            n = self.n
            lo = max(0, n - window) if window > 0 else 0
            return self.eligible[rng.integers(lo, n, k)] if n > lo else np.zeros(0, np.int64)

    def warm(self, stop: threading.Event) -> None:
        """Fill the cache with the newest eligible rows (after a restart), newest last."""
        with self.lock:
            rows = self.eligible[max(0, self.n - self.cache.slots): self.n].copy()
        for r in rows:
            if stop.is_set():
                return
            try:
                self.cache.put(int(r), decode_transition(self.store.read(int(r))))
            except (DecodeError, LayoutMismatch, OSError) as exc:
                self.bad.add(int(r))
                log.warning(f"{self.store.dir}: row {r} unusable ({exc}); it will not be sampled")


class PersistentReplay:
    """Disk-backed replay with a RAM cache and background prefetching (the learner's buffer)."""

    def __init__(self, store: TransitionStore, layout: Layout, *, cache_bytes: int = 2 << 30, window: int = 0,
                 robots: Iterable[str] = (), embodiments: Iterable[str] = (),
                 demos: TransitionStore | None = None, demo_ratio: float = 0.0, demo_cache_bytes: int = 512 << 20,
                 seed: int = 0, batch_size: int = 256, prefetch: int = 2, readers: int = 2,
                 sync_every_s: float = 1.0) -> None:
        if not 0.0 <= demo_ratio <= 1.0:
            raise ValueError(f"demo_ratio must be in [0, 1], got {demo_ratio}")
        if demo_ratio > 0 and demos is None:
            raise ValueError("demo_ratio > 0 needs a demo store")
        self.layout = layout
        self.window = int(window)
        self.online = SampleSource(store, layout, cache_bytes, robots, embodiments)
        self.demos = SampleSource(demos, layout, demo_cache_bytes, robots, embodiments) if demos is not None else None
        self.demo_ratio = float(demo_ratio)
        self.rng = np.random.default_rng(seed)
        self.batch_size = int(batch_size)
        self.sync_every_s = sync_every_s
        self._scratch = layout.empty(1)
        self._last_sync = time.monotonic()
        self.added = 0
        self.duplicates = 0
        self.hits = 0
        self.misses = 0
        self.wait_s = 0.0
        self.batches = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="replay-read") if readers > 0 else None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._prefetch = prefetch > 0
        self._warmers = [threading.Thread(target=s.warm, args=(self._stop,), daemon=True, name="replay-warm")
                         for s in (self.online, self.demos) if s is not None]
        for t in self._warmers:
            t.start()
        self._thread = None
        if self._prefetch:
            self._thread = threading.Thread(target=self._prefetch_loop, daemon=True, name="replay-prefetch")
            self._thread.start()

    # -- ingest ----------------------------------------------------------------------------------------
    def add(self, data: bytes, decoded: TransitionView | None = None) -> bool:
        """Store one serialized Transition (disk + cache). False if it was already stored.

        Raises LayoutMismatch (nothing stored in the cache; the bag still gets it) when it does not fit.
        """
        t = decoded if decoded is not None else decode_transition(data)
        row = self.online.store.add(data)
        if row < 0:
            self.duplicates += 1
            return False
        self.added += 1
        if t.terminated or t.truncated:
            self.sync()   # an episode's end is durable before the buffer acknowledges it
        else:
            self.maybe_sync()
        if self.online.wants(t):
            self.layout.fill(self._scratch, 0, t)   # LayoutMismatch: stored on disk, never sampled
            self.online.cache.put(row, t)
            self.online.extend(np.array([row]))
        return True

    def maybe_sync(self) -> None:
        """Sync if the last one is older than ``sync_every_s`` (call it from a timer, too)."""
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        self.online.store.sync()
        self._last_sync = time.monotonic()

    def take_durable(self) -> list[tuple[str, int, int]]:
        return self.online.store.take_durable()

    # -- sampling --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.online.n

    def _draw(self, batch_size: int) -> list[tuple[SampleSource, np.ndarray]]:
        k_demo = int(round(batch_size * self.demo_ratio)) if self.demos is not None and self.demos.n else 0
        parts = [(self.online, self.online.draw(self.rng, batch_size - k_demo, self.window))]
        if k_demo:
            parts.append((self.demos, self.demos.draw(self.rng, k_demo, 0)))
        return parts

    def _assemble(self, parts: list[tuple[SampleSource, np.ndarray]]) -> dict[str, np.ndarray]:
        total = sum(len(r) for _, r in parts)
        out = self.layout.empty(total)
        base = 0
        for src, rows in parts:
            view = {k: v[base:base + len(rows)] for k, v in out.items()}
            missed = np.flatnonzero(src.cache.gather(rows, view))
            self.hits += len(rows) - len(missed)
            self.misses += len(missed)
            if len(missed):
                def load(i: int, src=src, rows=rows, view=view) -> None:
                    r = int(rows[i])
                    try:
                        self.layout.fill(view, i, decode_transition(src.store.read(r)))
                    except (DecodeError, LayoutMismatch, OSError) as exc:
                        src.bad.add(r)
                        log.warning(f"{src.store.dir}: row {r} unusable ({exc}); it will not be sampled")
                        alt = src.draw(self.rng, 1, 0)
                        if len(alt) and int(alt[0]) not in src.bad:
                            self.layout.fill(view, i, decode_transition(src.store.read(int(alt[0]))))
                if self._pool is not None and len(missed) > 1:
                    list(self._pool.map(load, missed))
                else:
                    for i in missed:
                        load(i)
            base += len(rows)
        return out

    def _prefetch_loop(self) -> None:
        while not self._stop.is_set():
            if self.online.n == 0:
                self._stop.wait(0.05)
                continue
            try:
                batch = self._assemble(self._draw(self.batch_size))
            except Exception as exc:  # noqa: BLE001 - report and keep serving
                log.error(f"replay prefetch failed: {exc}")
                self._stop.wait(0.5)
                continue
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        if self.online.n == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        t0 = time.perf_counter()
        if self._prefetch and batch_size == self.batch_size:
            batch = self._queue.get()
        else:
            batch = self._assemble(self._draw(batch_size))
        self.wait_s += time.perf_counter() - t0
        self.batches += 1
        return batch

    def stats(self) -> dict[str, float]:
        looked = self.hits + self.misses
        return {"size": float(self.online.n), "added": float(self.added), "duplicates": float(self.duplicates),
                "stored": float(len(self.online.store)), "cache_rows": float(len(self.online.cache)),
                "cache_mb": self.online.cache.nbytes / 2**20,
                "cache_hit_rate": self.hits / looked if looked else 0.0,
                "sample_wait_ms": 1e3 * self.wait_s / self.batches if self.batches else 0.0,
                "demos": float(self.demos.n) if self.demos is not None else 0.0}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for t in self._warmers:
            t.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.online.store.close()
        if self.demos is not None:
            self.demos.store.close()
