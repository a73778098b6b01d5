"""``RemoteReplay``: the learner's replay interface on top of a buffer node somewhere on the network.

The buffer node (``buffer_node``) records the robots' transitions and serves batches on
``/user/buffer/sample``. ``RemoteReplay`` offers the learner's narrow replay interface (``sample``,
``len``, ``stats``, ``add``, ``close``) by calling that service: a background thread keeps up to
``prefetch`` batches ready, so ``sample`` rarely waits for the network (while nobody samples, it
replaces the oldest queued batch every ``refresh_s`` so that batches and ``len()`` stay current).
Batches are decoded here (``decode_transition`` + ``Layout.fill``) into the same dict of numpy arrays
``PersistentReplay`` returns. ``len()`` is the number of eligible transitions the node reported with
its latest answer.

The service client lives on the caller's node, and service answers are only delivered while that
node is spun by an executor (e.g. a ``MultiThreadedExecutor`` in the learner's main thread, or a
background ``SingleThreadedExecutor``). ``sample`` must not be called from a callback of that same
executor unless it has a free thread.

Usage::

    replay = RemoteReplay(node, Layout(state_dim=20), batch_size=256, robot_ids=["franka_0"])
    while len(replay) < 1000: time.sleep(0.5)   # the size the node reported last
    batch = replay.sample(256)                  # {"state": (256, 20) float32, ...}
    replay.close()
"""
from __future__ import annotations

import math
import queue
import threading
import time
from typing import Iterable

import numpy as np
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from user_msgs.srv import SampleBatch

from .buffer_node import MAX_BATCH, SAMPLE_SERVICE
from .codec import DecodeError, decode_transition
from .replay import Layout, LayoutMismatch


class RemoteSampleError(RuntimeError):
    """The buffer node refused a batch, did not answer, or is not there."""


class RemoteReplay:
    """Batches from a buffer node's ``/user/buffer/sample``, prefetched by a background thread."""

    records = False   # the buffer node records (and acknowledges) the transitions, not the learner

    def __init__(self, node: Node, layout: Layout, batch_size: int = 256, window: int = 0,
                 robot_ids: Iterable[str] = (), embodiments: Iterable[str] = (), demo_ratio: float = 0.0,
                 prefetch: int = 2, service: str = SAMPLE_SERVICE, timeout_s: float = 30.0,
                 refresh_s: float = 1.0) -> None:
        self.batch_size = _check_batch_size(batch_size)
        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or not 0 <= window < 2**32:
            raise ValueError(f"window must be an integer >= 0, got {window!r}")
        if not isinstance(demo_ratio, (int, float)) or not (math.isfinite(demo_ratio) and 0.0 <= demo_ratio <= 1.0):
            raise ValueError(f"demo_ratio must be in [0, 1], got {demo_ratio!r}")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not refresh_s > 0:
            raise ValueError(f"refresh_s must be > 0, got {refresh_s!r}")
        self.node = node
        self.layout = layout
        self.window = int(window)
        self.robot_ids = _names("robot_ids", robot_ids)
        self.embodiments = _names("embodiments", embodiments)
        self.demo_ratio = float(demo_ratio)
        self.service = service
        self.timeout_s = float(timeout_s)
        self.refresh_s = float(refresh_s)
        self._client = node.create_client(SampleBatch, service, callback_group=ReentrantCallbackGroup())
        self._size = 0
        self._demo_size = 0
        self._last_answer = -math.inf
        self.requests = self.batches = self.refusals = self.failures = 0
        self.request_s = 0.0
        self.wait_s = 0.0
        self.sampled = 0
        self._cv = threading.Condition()
        self._answers = 0                        # answers (batch or error) the prefetch thread has had
        self._error: Exception | None = None     # the newest answer's error, None if it was a batch
        self._stop = threading.Event()
        self._closed = False
        self._prefetch = prefetch > 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._thread: threading.Thread | None = None
        if self._prefetch:
            self._thread = threading.Thread(target=self._prefetch_loop, daemon=True, name="remote-replay")
            self._thread.start()

    # -- the learner's interface ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Transitions eligible under this replay's filters, as the buffer node reported last.

        The prefetch thread refreshes it at least every ``refresh_s``; with ``prefetch=0`` a call asks
        the node (a one-transition request) when the last answer is older than ``refresh_s``.
        """
        if not self._prefetch and not self._closed and time.monotonic() - self._last_answer >= self.refresh_s:
            try:
                self._request(1)
            except Exception:  # noqa: BLE001 - keep the last known size; sample() reports problems
                self._last_answer = time.monotonic()
        return self._size

    def add(self, *args, **kwargs) -> bool:
        raise PermissionError("RemoteReplay is read-only: the buffer node stores the transitions it receives on "
                              "/user/transitions; publish them there instead of adding them here")

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of ``batch_size`` transitions as numpy arrays (keys and shapes of ``Layout.empty``).

        Raises ``RemoteSampleError`` with the node's message if its newest answer was a refusal
        (e.g. nothing stored yet under the filters), or if no batch arrives within ``timeout_s``.
        """
        if self._closed:
            raise RemoteSampleError("this RemoteReplay is closed")
        batch_size = _check_batch_size(batch_size)
        t0 = time.perf_counter()
        try:
            if not self._prefetch or batch_size != self.batch_size:
                return self._fetch(batch_size)
            return self._take()
        finally:
            self.wait_s += time.perf_counter() - t0
            self.sampled += 1

    def stats(self) -> dict[str, float]:
        return {"size": float(self._size), "demo_size": float(self._demo_size), "batches": float(self.batches),
                "requests": float(self.requests), "refusals": float(self.refusals), "failures": float(self.failures),
                "queued": float(self._queue.qsize()),
                "request_ms": 1e3 * self.request_s / self.requests if self.requests else 0.0,
                "sample_wait_ms": 1e3 * self.wait_s / self.sampled if self.sampled else 0.0}

    def take_durable(self) -> list[tuple[str, int, int]]:
        return []   # the buffer node acknowledges what it stores

    problems: list[str] = []

    def held(self) -> None:
        return None

    def checkpoint(self) -> None:
        return None

    def checkpoint_saved(self) -> None:
        pass

    def restore(self, state) -> None:
        pass

    def describe(self) -> str:
        demo = f", {self.demo_ratio:.0%} demonstrations" if self.demo_ratio else ""
        return f"replay of a buffer node ({self.service}, {self._size} transitions{demo})"

    def close(self) -> None:
        """Stop prefetching and remove the service client from the node."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1.0)
        try:
            self.node.destroy_client(self._client)
        except Exception:  # noqa: BLE001 - the node may be gone already
            pass

    def __enter__(self) -> "RemoteReplay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------
    def _take(self) -> dict[str, np.ndarray]:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            pass
        with self._cv:
            seen = self._answers
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
            with self._cv:
                # The newest answer since this call began was an error: report it rather than wait.
                if self._answers > seen and self._error is not None:
                    err = self._error
                    raise type(err)(*err.args)
            if time.monotonic() >= deadline:
                with self._cv:
                    last = f"; last problem: {self._error}" if self._error is not None else ""
                raise RemoteSampleError(f"{self.service}: no batch within {self.timeout_s:g} s{last}")
            if self._thread is None or not self._thread.is_alive():
                raise RemoteSampleError("the prefetch thread is not running")

    def _prefetch_loop(self) -> None:
        backoff = 0.05
        last_answer = 0.0
        while not self._stop.is_set():
            stale = False
            if self._queue.full():
                # Nobody is sampling: refresh the oldest batch now and then, so that len() (the size the
                # node reports with every batch) and the queued batches do not go stale.
                if time.monotonic() - last_answer < self.refresh_s:
                    self._stop.wait(0.05)
                    continue
                stale = True
            try:
                batch = self._fetch(self.batch_size)
            except Exception as exc:  # noqa: BLE001 - kept for sample() to raise; retried
                last_answer = time.monotonic()
                with self._cv:
                    self._error = exc
                    self._answers += 1
                    self._cv.notify_all()
                self._stop.wait(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            backoff = 0.05
            last_answer = time.monotonic()
            with self._cv:
                self._error = None
                self._answers += 1
                self._cv.notify_all()
            if stale:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
            self._queue.put(batch)   # only this thread puts: there is room

    def _request(self, batch_size: int) -> SampleBatch.Response:
        if not self._client.service_is_ready() and not self._client.wait_for_service(timeout_sec=1.0):
            self.failures += 1
            raise RemoteSampleError(f"service {self.service} is not available (is the buffer node running?)")
        req = SampleBatch.Request(batch_size=batch_size, window=self.window, robot_ids=list(self.robot_ids),
                                  embodiments=list(self.embodiments), demo_ratio=self.demo_ratio)
        done = threading.Event()
        t0 = time.perf_counter()
        fut = self._client.call_async(req)
        fut.add_done_callback(lambda _f: done.set())
        end = time.monotonic() + self.timeout_s
        while not done.wait(0.1):
            if time.monotonic() >= end or (self._stop.is_set() and self._closed):
                self._client.remove_pending_request(fut)
                self.failures += 1
                raise RemoteSampleError(f"{self.service}: no answer within {self.timeout_s:g} s (is the caller's "
                                        "node spun by an executor?)")
        self.requests += 1
        self.request_s += time.perf_counter() - t0
        self._last_answer = time.monotonic()
        resp = fut.result()
        if resp is None:
            self.failures += 1
            raise RemoteSampleError(f"{self.service}: the call failed ({fut.exception()})")
        self._size, self._demo_size = int(resp.size), int(resp.demo_size)
        if not resp.success:
            self.refusals += 1
            raise RemoteSampleError(f"{self.service}: {resp.message}")
        return resp

    def _fetch(self, batch_size: int) -> dict[str, np.ndarray]:
        resp = self._request(batch_size)
        sizes = np.frombuffer(resp.sizes, np.uint32).astype(np.int64) if len(resp.sizes) else np.zeros(0, np.int64)
        data = memoryview(resp.data)
        ends = np.cumsum(sizes)
        if ends.size and ends[-1] != data.nbytes or len(sizes) != batch_size:
            raise RemoteSampleError(f"{self.service}: malformed answer: {len(sizes)} transitions of "
                                    f"{int(ends[-1]) if ends.size else 0} bytes in {data.nbytes} bytes of data "
                                    f"(asked for {batch_size})")
        out = self.layout.empty(len(sizes))
        start = 0
        for i, end in enumerate(ends.tolist()):
            try:
                self.layout.fill(out, i, decode_transition(data[start:end]))
            except DecodeError as exc:
                raise DecodeError(f"{self.service}: transition {i} of the batch: {exc}") from None
            except LayoutMismatch as exc:
                raise LayoutMismatch(f"{self.service}: transition {i} of the batch does not fit the layout: "
                                     f"{exc}") from None
            start = end
        self.batches += 1
        return out


def _check_batch_size(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_BATCH:
        raise ValueError(f"batch_size must be an integer between 1 and {MAX_BATCH}, got {n!r}")
    return int(n)


def _names(what: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of names, not the string {values!r}")
    out = tuple(values)
    bad = [v for v in out if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(f"{what} must hold non-empty strings, got {bad!r}")
    return out
