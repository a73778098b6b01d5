"""The learner's replay on top of a ``TransitionStore``: a bounded RAM cache, prefetching, sampling.

``PersistentReplay`` offers the four calls the learner uses (``add``, ``sample``, ``len``,
``stats``). Every transition goes to disk (the store) and into a RAM cache of decoded arrays whose
size is given in bytes. The cache keeps the newest transitions (the hot set a recent-window sampler
draws from); a separate demo store is cached on its own. ``sample`` draws the row numbers of the next
batches itself (so a seed fixes them) and hands their assembly to builder threads ``prefetch``
batches ahead: cached rows are gathered with one ``take`` per array, the rest are read from disk
(one ``pread`` + decode each) by a pool of reader threads. When the sampling window fits the cache
the learner therefore never waits on the disk.

Sampling is uniform over all eligible transitions or over the newest ``window`` of them; eligibility
filters by robot id and embodiment; ``demo_ratio`` of each batch comes from the demo store (RLPD
uses 0.5). With an ``interventions`` store (HG-DAgger's aggregated dataset) every transition a human
controlled (``intervened``) is stored there as well, and the rest of each batch is drawn from it
instead of from all online data. Given a seed and unchanging data, the sequence of batches is
deterministic.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np

from user_common.embodiments import EmbodimentMap, EmbodimentMismatch
from user_common.features import Features

from .codec import DecodeError, TransitionView, decode_transition
from .store import TransitionStore

log = logging.getLogger("user_buffer")


class LayoutMismatch(ValueError):
    """A stored transition does not fit the layout the learner asked for."""


@dataclasses.dataclass(frozen=True)
class Layout(Features):
    """The feature schema (``user_common.features.Features``) plus how a decoded transition fills a
    row of a batch. With ``embodiments`` (several bodies, one policy) a row's state is its embodiment's
    proprio placed on the common row (``EmbodimentMap.stored``; ``state_dim`` is the map's ``stored_dim``)."""

    embodiments: EmbodimentMap | None = None

    def validate(self) -> None:
        super().validate()
        if self.embodiments is not None and self.state_dim != self.embodiments.stored_dim:
            raise ValueError(f"state_dim: is {self.state_dim}, the embodiments' common row has "
                             f"{self.embodiments.stored_dim} values")

    def fill(self, out: dict[str, np.ndarray], i: int, t: TransitionView) -> None:
        """Write one decoded transition into row ``i`` of ``out``; LayoutMismatch if it does not fit."""
        for key, obs in (("state", t.obs), ("next_state", t.next_obs)):
            if self.embodiments is not None:
                try:
                    out[key][i] = self.embodiments.stored(t.embodiment, obs.proprio)
                except EmbodimentMismatch as exc:
                    raise LayoutMismatch(f"{t.robot_id}: {exc}") from None
                continue
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
        for key in self.extras:   # intervened, action_source, policy_version, robot_id, embodiment
            out[key][i] = getattr(t, key)
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


def chunk_arrays(actions: np.ndarray, found: np.ndarray, sources: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The batch keys of action chunks (for policies that output ``H`` actions per call).

    ``actions`` ``[B, H, A]`` holds steps t .. t+H-1 of each row's episode, ``found`` ``[B, H]`` which of
    them exist (a step after the episode's end, or not received yet, does not); missing steps repeat
    the last found one. Returns ``action_chunk`` (float32 ``[B, H, A]``), ``chunk_mask`` (float32
    ``[B, H]``, 1 = a real step, the first missing step and all after it are 0) and, given ``sources``
    ``[B, H]``, ``chunk_source`` (uint8, ``Action.SOURCE_*`` of each step).
    """
    mask = np.cumprod(found, axis=1).astype(np.float32)
    last = np.maximum(mask.sum(1).astype(np.int64) - 1, 0)
    for k in range(1, actions.shape[1]):   # pad with the last real step
        gone = mask[:, k] == 0
        actions[gone, k] = actions[gone, np.minimum(last[gone], k - 1)]
    out = {"action_chunk": actions.astype(np.float32, copy=False), "chunk_mask": mask}
    if sources is not None:
        out["chunk_source"] = sources.astype(np.uint8, copy=False)
    return out


class SlotCache:
    """Decoded transitions in preallocated arrays; FIFO over rows, bounded by ``max_bytes``."""

    def __init__(self, layout: Layout, max_bytes: int) -> None:
        self.layout = layout
        self.slots = max(0, int(max_bytes) // layout.bytes_per_transition())
        self.arrays = layout.empty(self.slots)
        self.slot_row = np.full(self.slots, -1, np.int64)
        self.slot_owner = np.zeros(self.slots, np.int64)   # who reserved the slot last
        self.row_slot = np.full(1024, -1, np.int64)
        self.next = 0
        self._tokens = 0
        self.lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def __len__(self) -> int:
        return int((self.slot_row >= 0).sum())

    def put(self, row: int, t: TransitionView) -> None:
        """Cache one decoded transition in the oldest slot. The copy runs outside the lock: the slot
        is marked free first, so a concurrent ``gather`` never accepts a half-written slot."""
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
            self.next = (s + 1) % self.slots
            old = self.slot_row[s]
            if old >= 0:
                self.row_slot[old] = -1
            self.slot_row[s] = -1
            self._tokens += 1
            token = self.slot_owner[s] = self._tokens
        self.layout.fill(self.arrays, s, t)
        with self.lock:
            if self.slot_owner[s] == token:   # nobody reserved the slot again meanwhile
                self.slot_row[s] = row
                self.row_slot[row] = s

    def gather(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A batch for ``rows`` (one ``take`` per array, no lock held while copying) and the mask of
        rows that were not cached; their entries are placeholders for the caller to fill."""
        with self.lock:
            slots = np.full(len(rows), -1, np.int64)
            inside = rows < len(self.row_slot)
            slots[inside] = self.row_slot[rows[inside]]
        hit = slots >= 0
        if self.slots == 0 or not hit.any():
            return self.layout.empty(len(rows)), ~hit
        src = np.where(hit, slots, slots[hit][0])
        out = {k: a.take(src, axis=0) for k, a in self.arrays.items()}
        with self.lock:   # a slot reused while we copied counts as a miss
            hit &= self.slot_row[src] == rows
        return out, ~hit


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
            if n <= lo:
                return np.zeros(0, np.int64)
            rows = self.eligible[rng.integers(lo, n, k)]
            for _ in range(10):   # rows found unusable are never sampled again
                if not self.bad:
                    break
                redo = np.isin(rows, list(self.bad))
                if not redo.any():
                    break
                rows[redo] = self.eligible[rng.integers(lo, n, int(redo.sum()))]
            return rows

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
    """Disk-backed replay with a RAM cache and background prefetching (the learner's ``bag`` replay)."""

    records = True   # the learner adds every transition it receives

    def __init__(self, store: TransitionStore, layout: Layout, *, cache_bytes: int = 2 << 30, window: int = 0,
                 robots: Iterable[str] = (), embodiments: Iterable[str] = (),
                 demos: TransitionStore | None = None, demo_ratio: float = 0.0, demo_cache_bytes: int = 512 << 20,
                 interventions: TransitionStore | None = None, seed: int = 0, batch_size: int = 256,
                 prefetch: int = 2, readers: int = 2, builders: int = 2,
                 sync_every_s: float = 1.0) -> None:
        if not 0.0 <= demo_ratio <= 1.0:
            raise ValueError(f"demo_ratio must be in [0, 1], got {demo_ratio}")
        if demo_ratio > 0 and demos is None:
            raise ValueError("demo_ratio > 0 needs a demo store")
        self.layout = layout
        self.window = int(window)
        self.online = SampleSource(store, layout, cache_bytes, robots, embodiments)
        # Demonstrations come from whichever robot (or id) recorded them: only the embodiment filter applies.
        self.demos = SampleSource(demos, layout, demo_cache_bytes, (), embodiments) if demos is not None else None
        if demo_ratio > 0 and self.demos is not None and self.demos.n == 0:
            which = f" of embodiment {', '.join(sorted(self.demos.embodiments))}" if self.demos.embodiments else ""
            raise ValueError(f"demo bag {demos.dir} holds no transitions{which}; demo_ratio {demo_ratio:g} needs some")
        self.demo_ratio = float(demo_ratio)
        # HG-DAgger's aggregated dataset: the human-controlled steps, persistent in a bag of their own.
        self.interventions = (SampleSource(interventions, layout, demo_cache_bytes, robots, embodiments)
                              if interventions is not None else None)
        self.horizon = 1
        self.rng = np.random.default_rng(seed)
        self.batch_size = int(batch_size)
        self.sync_every_s = sync_every_s
        self._scratch = layout.empty(1)
        self._last_sync = time.monotonic()
        self.added = 0
        self.duplicates = 0
        self._redo: list[tuple[str, int, int]] = []
        self.hits = 0
        self.misses = 0
        self.wait_s = 0.0
        self.batches = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="replay-read") if readers > 0 else None
        self._prefetch_n = int(prefetch)
        self._builders = (ThreadPoolExecutor(max(1, builders), thread_name_prefix="replay-build")
                          if prefetch > 0 else None)
        self._ahead: collections.deque = collections.deque()
        self._warmers = [threading.Thread(target=s.warm, args=(self._stop,), daemon=True, name="replay-warm")
                         for s in (self.online, self.demos, self.interventions) if s is not None]
        for t in self._warmers:
            t.start()

    # -- ingest ----------------------------------------------------------------------------------------
    def add(self, data: bytes, decoded: TransitionView | None = None) -> bool:
        """Store one serialized Transition (disk + cache). False if it was already stored.

        Raises LayoutMismatch (nothing stored in the cache; the bag still gets it) when it does not fit.
        """
        t = decoded if decoded is not None else decode_transition(data)
        row = self.online.store.add(data)
        if t.intervened and self.interventions is not None:
            self._add_intervention(data, t)   # also when a resend finds the replay's copy (crash in between)
        if row < 0:
            self.duplicates += 1
            if self.online.store.is_durable(t.robot_id, t.episode_id, t.step):
                self._redo.append((t.robot_id, t.episode_id, t.step))   # release the robot's resent copy
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

    def _add_intervention(self, data: bytes, t: TransitionView) -> None:
        src = self.interventions
        row = src.store.add(data)
        if row >= 0 and src.wants(t):
            src.cache.put(row, t)
            src.extend(np.array([row]))

    def maybe_sync(self) -> None:
        """Sync if the last one is older than ``sync_every_s`` (call it from a timer, too)."""
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        if self.interventions is not None:   # first: the replay's acknowledgements cover both copies
            self.interventions.store.sync()
            self.interventions.store.take_durable()
        self.online.store.sync()
        self._last_sync = time.monotonic()

    def take_durable(self) -> list[tuple[str, int, int]]:
        """Transitions fsynced since the last call (syncing first if ``sync_every_s`` is up), and resent
        ones whose stored copy was durable already."""
        self.maybe_sync()
        redo, self._redo = self._redo, []
        return self.online.store.take_durable() + redo

    @property
    def problems(self) -> list[str]:
        """Damage and repairs the stores found when they were opened (file names included)."""
        return [p for s in (self.online, self.demos, self.interventions) if s is not None for p in s.store.problems]

    def held(self) -> int:
        """Every transition in the bag (the record a restarted learner counts its env steps from)."""
        return len(self.online.store)

    def checkpoint(self) -> None:
        return None   # the bag is its own record

    def checkpoint_saved(self) -> None:
        pass

    def restore(self, state) -> None:
        pass

    def describe(self) -> str:
        text = f"replay bag {self.online.store.dir} ({len(self)} transitions)"
        if self.demos is not None:
            text += (f" + {self.demos.n} demonstrations from {self.demos.store.dir} "
                     f"({self.demo_ratio:.0%} of each batch)")
        if self.interventions is not None:
            text += (f"; human interventions ({self.interventions.n}) kept in {self.interventions.store.dir}, "
                     f"the rest of each batch drawn from them")
        return text

    # -- sampling --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.online.n

    def set_chunk(self, horizon: int) -> None:
        """Batches carry each row's next ``horizon`` actions of its episode from now on
        (``chunk_arrays``); batches prefetched before still come without."""
        if horizon < 1:
            raise ValueError(f"chunk horizon must be >= 1, got {horizon}")
        self.horizon = int(horizon)

    def _chunks(self, src: SampleSource, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Chunk keys for ``rows`` of one source: later steps found by (robot, episode, step) in its
        store's index, their actions from the cache or decoded from disk."""
        h, store = self.horizon, src.store
        v = store.snapshot()
        later = np.repeat(rows[:, None], h, 1)
        found = np.zeros((len(rows), h), bool)
        found[:, 0] = True
        with store.lock:
            for i, r in enumerate(rows.tolist()):
                key = (int(v["robot"][r]), int(v["episode"][r]), int(v["step"][r]))
                for k in range(1, h):
                    j = store.keys.get((key[0], key[1], key[2] + k))
                    if j is None:
                        break
                    later[i, k], found[i, k] = j, True
        flat = later.reshape(-1)
        arrays, missed = src.cache.gather(flat)
        actions = arrays["action"]
        sources = arrays.get("action_source")
        for i in np.flatnonzero(missed & found.reshape(-1)):
            try:
                t = decode_transition(store.read(int(flat[i])))
            except (DecodeError, OSError):
                found.reshape(-1)[i] = False   # an unreadable later step ends the chunk there
                continue
            actions[i] = t.action
            if sources is not None:
                sources[i] = t.action_source
        a = actions.reshape(len(rows), h, -1).copy()
        s = sources.reshape(len(rows), h).copy() if sources is not None else None
        return chunk_arrays(a, found, s)

    def _draw(self, batch_size: int) -> list[tuple[SampleSource, np.ndarray]]:
        k_demo = int(round(batch_size * self.demo_ratio)) if self.demos is not None and self.demos.n else 0
        own = self.online
        if self.interventions is not None:
            if self.interventions.n:
                own = self.interventions
            elif k_demo:   # no intervention yet: the whole batch from the demonstrations
                k_demo = batch_size
        window = self.window if own is self.online else 0   # the aggregated dataset is used whole
        parts = [(own, own.draw(self.rng, batch_size - k_demo, window))] if k_demo < batch_size else []
        if k_demo:
            parts.append((self.demos, self.demos.draw(self.rng, k_demo, 0)))
        return parts

    def _assemble(self, parts: list[tuple[SampleSource, np.ndarray]]) -> dict[str, np.ndarray]:
        pieces = []
        for src, rows in parts:
            arrays, missed = src.cache.gather(rows)
            missed = np.flatnonzero(missed)
            self.hits += len(rows) - len(missed)
            self.misses += len(missed)
            failed: list[int] = []

            def load(i: int, src=src, rows=rows, arrays=arrays, failed=failed) -> None:
                r = int(rows[i])
                try:
                    self.layout.fill(arrays, i, decode_transition(src.store.read(r)))
                except (DecodeError, LayoutMismatch, OSError) as exc:
                    with src.lock:
                        src.bad.add(r)
                    failed.append(i)
                    log.warning(f"{src.store.dir}: row {r} unusable ({exc}); it will not be sampled again")

            if self._pool is not None and len(missed) > 1:
                list(self._pool.map(load, missed))
            else:
                for i in missed:
                    load(i)
            if failed:   # stand in with rows of this batch that did load
                good = np.setdiff1d(np.arange(len(rows)), failed)
                if not len(good):
                    raise OSError(f"{src.store.dir}: no usable transition in a batch of {len(rows)}")
                for j, i in enumerate(sorted(failed)):
                    for a in arrays.values():
                        a[i] = a[good[j % len(good)]]
                    rows[i] = rows[good[j % len(good)]]
            if self.horizon > 1:
                arrays.update(self._chunks(src, rows))
            pieces.append(arrays)
        if len(pieces) == 1:
            return pieces[0]
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of ``batch_size`` transitions. Batches of the configured size are drawn here, in
        order (so a seed fixes them), and assembled ``prefetch`` ahead by the builder threads."""
        if self.online.n == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        t0 = time.perf_counter()
        if self._builders is not None and batch_size == self.batch_size:
            while len(self._ahead) < self._prefetch_n + 1:
                self._ahead.append(self._builders.submit(self._assemble, self._draw(batch_size)))
            batch = self._ahead.popleft().result()
            self._ahead.append(self._builders.submit(self._assemble, self._draw(batch_size)))
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
                "demos": float(self.demos.n) if self.demos is not None else 0.0,
                "interventions": float(self.interventions.n) if self.interventions is not None else 0.0}

    def close(self) -> None:
        self._stop.set()
        if self._builders is not None:
            for f in self._ahead:
                f.cancel()
            self._builders.shutdown(wait=True)
        for t in self._warmers:
            t.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.online.store.close()
        for s in (self.demos, self.interventions):
            if s is not None:
                s.store.close()
