"""Versioned policy weights over ROS 2: the learner publishes, inference nodes swap them in.

Wire: ``user_msgs/PolicyWeights`` chunks on ``/user/policy/weights`` (see ``weights.py`` for the blob
format, chunking and verification).

QoS and why (publisher and subscriber share it, except for the depth):
- RELIABLE: a snapshot is useless with a chunk missing.
- TRANSIENT_LOCAL: an inference node that starts (or restarts) late gets the newest snapshot at once,
  without waiting for the learner's next publish.
- KEEP_LAST, publisher depth = the chunk count N of one snapshot. The publisher fixes N at its first
  snapshot (``ceil(size / chunk_bytes)``, at most ``max_chunks``) and cuts every later snapshot into
  exactly N chunks (chunk size follows the snapshot size), so the writer's history always holds exactly
  one snapshot: the newest complete one once its publish finished. A late joiner therefore receives
  that snapshot and nothing older (a deeper history would replay, and make receivers unpack, old
  versions; a shallower one could not hold a whole snapshot). While a publish is under way the history
  holds the tail of the previous snapshot and the head of the new one; the receiver drops the
  incomplete older tail as soon as chunks of the newer version arrive.
  KEEP_LAST (not KEEP_ALL) also means a slow reader never blocks the learner: the writer overwrites its
  oldest chunks, and a reader that fell behind simply completes the next snapshot instead.
- Subscriber depth = ``max_chunks`` (>= any publisher's N): the reader's history must be able to buffer a
  whole snapshot while the executor is busy, or chunks would be overwritten before they are taken.

Threads: ``publish_async`` packs/hashes/publishes in a background thread; ``WeightSubscriber``'s ROS
callback only enqueues the message, a worker thread reassembles, verifies sha256 (hashlib releases the
GIL), unpacks (zero-copy for the default format) and calls ``on_weights`` there. Neither blocks the
executor or a control thread for long.
"""
from __future__ import annotations

import array
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from user_msgs.msg import PolicyWeights

from .weights import Reassembler, blob_format, chunk_blob, pack_state_dict, sha256_hex, unpack_state_dict

WEIGHTS_TOPIC = "/user/policy/weights"
DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNKS = 1024  # subscriber history depth; publishers never use more chunks per snapshot


def weights_qos(depth: int) -> QoSProfile:
    """Reliable, transient-local, KEEP_LAST ``depth`` (see module docstring for the depth choice)."""
    return QoSProfile(depth=max(1, int(depth)), history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class PublishStats:
    version: int
    total_bytes: int
    num_chunks: int
    pack_s: float = 0.0
    hash_s: float = 0.0
    send_s: float = 0.0
    started: float = 0.0  # time.monotonic() when publishing began (before packing)


class WeightPublisher:
    """Publishes versioned snapshots of one policy as ``PolicyWeights`` chunks.

    ``publish(obj, version)`` sends now, in the caller's thread; ``publish_async(obj, version)`` returns at
    once and sends in a background thread, replacing a pending (not yet started) snapshot with the newer
    one. ``obj`` is a state dict or an already packed blob. Versions must increase.

    ``num_chunks`` fixes the chunk count (and so the history depth) up front; by default it is fixed by
    the first snapshot as ``ceil(size / chunk_bytes)`` capped at ``max_chunks``.
    """

    def __init__(self, node: Node, topic: str = WEIGHTS_TOPIC, policy_name: str = "policy",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_chunks: int = MAX_CHUNKS,
                 num_chunks: int | None = None, fmt: str | None = None) -> None:
        if chunk_bytes <= 0 or max_chunks <= 0:
            raise ValueError("chunk_bytes and max_chunks must be positive")
        self.node = node
        self.topic = topic
        self.policy_name = policy_name
        self.chunk_bytes = int(chunk_bytes)
        self.max_chunks = int(max_chunks)
        self.fmt = fmt
        self.num_chunks: int | None = None
        self._pub = None
        self._send_lock = threading.Lock()  # one snapshot on the wire at a time, in version order
        self.last_version: int | None = None
        self._max_requested: int | None = None
        self.last_stats: PublishStats | None = None
        self.dropped_stale = 0
        self._cond = threading.Condition()
        self._pending: tuple[Any, int] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if num_chunks is not None:
            self._create(min(int(num_chunks), self.max_chunks))

    # -- setup
    def _create(self, n: int) -> None:
        self.num_chunks = max(1, n)
        self._pub = self.node.create_publisher(PolicyWeights, self.topic, weights_qos(self.num_chunks))

    @property
    def depth(self) -> int | None:
        """History depth (= chunks per snapshot), None before the first snapshot fixed it."""
        return self.num_chunks

    # -- synchronous
    def publish(self, state_dict_or_blob: Mapping[str, Any] | bytes | bytearray | memoryview,
                version: int) -> PublishStats:
        """Pack (if a state dict), hash, chunk and publish one snapshot; returns timings."""
        with self._send_lock:
            version = int(version)
            if self.last_version is not None and version <= self.last_version:
                raise ValueError(f"weights version must increase: {version} <= last published {self.last_version}")
            t0 = time.monotonic()
            obj = state_dict_or_blob
            blob = pack_state_dict(obj, self.fmt) if isinstance(obj, Mapping) else obj
            t1 = time.monotonic()
            digest = sha256_hex(blob)
            t2 = time.monotonic()
            total = memoryview(blob).nbytes
            if self._pub is None:
                self._create(min(self.max_chunks, max(1, -(-total // self.chunk_bytes))))
            try:
                fmt = blob_format(blob)
            except ValueError:
                fmt = ""
            chunks = chunk_blob(blob, version, self.policy_name, fmt=fmt, num_chunks=self.num_chunks,
                                sha256=digest)
            stamp = self.node.get_clock().now().to_msg()
            for c in chunks:
                msg = PolicyWeights()
                msg.header.stamp = stamp
                msg.policy_name = c.policy_name
                msg.version = c.version
                msg.chunk_index = c.chunk_index
                msg.num_chunks = c.num_chunks
                msg.total_bytes = c.total_bytes
                msg.sha256 = c.sha256
                msg.format = c.format
                data = array.array("B")
                data.frombytes(c.data)  # one memcpy; assigning bytes would check every element in Python
                msg.data = data
                self._pub.publish(msg)
            t3 = time.monotonic()
            self.last_version = version
            self.last_stats = PublishStats(version, total, len(chunks), t1 - t0, t2 - t1, t3 - t2, t0)
            return self.last_stats

    # -- asynchronous
    def publish_async(self, state_dict_or_blob: Mapping[str, Any] | bytes | bytearray | memoryview,
                      version: int, copy: bool = True) -> None:
        """Queue a snapshot for the background thread and return.

        With ``copy=True`` a state dict is packed here (one memcpy: the snapshot is consistent even if
        training changes the tensors right after) and hashing + sending happen in the background; with
        ``copy=False`` the caller promises not to modify ``state_dict_or_blob`` and even packing runs in
        the background. A pending snapshot that has not started sending is replaced (``dropped_stale``).
        """
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError("background weights publish failed") from err
        version = int(version)
        obj = state_dict_or_blob
        if copy and isinstance(obj, Mapping):
            obj = pack_state_dict(obj, self.fmt)
        with self._cond:
            if self._closed:
                raise RuntimeError("WeightPublisher is closed")
            floor = max((v for v in (self.last_version, self._max_requested) if v is not None), default=None)
            if floor is not None and version <= floor:
                raise ValueError(f"weights version must increase: {version} <= {floor}")
            self._max_requested = version
            if self._pending is not None:
                self.dropped_stale += 1
            self._pending = (obj, version)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="weights-publisher", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                obj, version = self._pending
                self._pending = None
                self._busy = True
            try:
                self.publish(obj, version)
            except BaseException as e:  # surfaced on the next publish_async / flush
                self._error = e
                self.node.get_logger().error(f"weights v{version} publish failed: {e!r}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or being sent; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError("background weights publish failed") from err
        return True

    def close(self) -> None:
        """Stop the background thread (a snapshot being sent is finished) and destroy the publisher."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        if self._pub is not None:
            self.node.destroy_publisher(self._pub)
            self._pub = None


@dataclass
class ReceiveStats:
    version: int
    total_bytes: int
    first_chunk: float  # time.monotonic() of the first chunk of this version taken by the worker
    complete: float  # reassembled and sha256-verified
    delivered: float  # on_weights returned
    unpack_s: float = 0.0


@dataclass
class _Latest:
    version: int = -1
    state_dict: dict | None = None
    taken: int = -1
    cond: threading.Condition = field(default_factory=threading.Condition)


class WeightSubscriber:
    """Receives snapshots and hands them over as ``(version, state_dict)``, newest only, monotonic.

    ``on_weights(version, state_dict)`` (optional) is called in the subscriber's worker thread, never in
    the executor: keep it short and thread-safe (e.g. load into a shadow model, or just store the dict).
    For a control loop, ``take_latest()`` returns a snapshot newer than the one taken last (else None):
    call it between control steps to swap weights without a lock on the control path.
    The state dict's tensors are views into the received blob (``weights.unpack_state_dict``).
    """

    def __init__(self, node: Node, on_weights: Callable[[int, dict], None] | None = None,
                 topic: str = WEIGHTS_TOPIC, policy_name: str | None = None, callback_group=None,
                 max_chunks: int = MAX_CHUNKS, max_total_bytes: int = 16 << 30, worker_nice: int = 10) -> None:
        self.node = node
        self.worker_nice = worker_nice
        self.on_weights = on_weights
        self._log = node.get_logger()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._reasm = Reassembler(policy_name=policy_name, max_total_bytes=max_total_bytes,
                                  on_warning=lambda w: self._log.warning(w))
        self._latest = _Latest()
        self.last_delivered: int | None = None
        self.history: list[ReceiveStats] = []
        self._first_chunk: dict[int, float] = {}
        self._stop = False
        self._worker = threading.Thread(target=self._run, name="weights-subscriber", daemon=True)
        self._worker.start()
        self._sub = node.create_subscription(PolicyWeights, topic, self._on_msg, weights_qos(max_chunks),
                                             callback_group=callback_group)

    def _on_msg(self, msg: PolicyWeights) -> None:
        self._queue.put(msg)  # the executor does nothing else: reassembly and hashing are the worker's

    def _run(self) -> None:
        if self.worker_nice:
            try:  # Linux: nice applies to this thread only; the control thread keeps its share of the CPU
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.worker_nice)
            except (AttributeError, OSError):
                pass
        while True:
            msg = self._queue.get()
            if msg is None or self._stop:
                return
            try:
                self._handle(msg)
            except Exception as e:  # a bad chunk or callback must not kill the worker
                self._log.error(f"weights subscriber: {e!r}")

    def _handle(self, msg) -> None:
        v = int(msg.version)
        if v not in self._first_chunk:
            if len(self._first_chunk) > 8:
                self._first_chunk.clear()
            self._first_chunk[v] = time.monotonic()
        done = self._reasm.add(msg)
        if done is None:
            return
        version, blob = done
        t_complete = time.monotonic()
        if self.last_delivered is not None and version <= self.last_delivered:
            return  # cannot happen with one Reassembler; kept as the documented guarantee
        sd = unpack_state_dict(blob)
        t_unpacked = time.monotonic()
        with self._latest.cond:
            self._latest.version = version
            self._latest.state_dict = sd
            self._latest.cond.notify_all()
        self.last_delivered = version
        if self.on_weights is not None:
            self.on_weights(version, sd)
        self.history.append(ReceiveStats(version, len(blob), self._first_chunk.pop(version, t_complete),
                                         t_complete, time.monotonic(), t_unpacked - t_complete))
        del self.history[:-100]

    # -- for control loops and tests
    def take_latest(self) -> tuple[int, dict] | None:
        """The newest snapshot if it is newer than the one returned last, else None. Never blocks long."""
        lt = self._latest
        with lt.cond:
            if lt.version <= lt.taken or lt.state_dict is None:
                return None
            lt.taken = lt.version
            return lt.version, lt.state_dict

    def latest(self) -> tuple[int, dict] | None:
        """The newest delivered snapshot (without marking it taken), or None."""
        lt = self._latest
        with lt.cond:
            return None if lt.state_dict is None else (lt.version, lt.state_dict)

    def wait_for_version(self, version: int, timeout: float) -> tuple[int, dict] | None:
        """Block until a snapshot with version >= ``version`` was delivered; None on timeout."""
        end = time.monotonic() + timeout
        lt = self._latest
        with lt.cond:
            while lt.version < version:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                lt.cond.wait(left)
            return lt.version, lt.state_dict

    def progress(self) -> tuple[int, int, int] | None:
        """``(version, chunks, num_chunks)`` being assembled (approximate: read across threads)."""
        return self._reasm.progress()

    def close(self) -> None:
        """Destroy the subscription and stop the worker."""
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
            self._sub = None
        self._stop = True
        self._queue.put(None)
        self._worker.join(timeout=10.0)
