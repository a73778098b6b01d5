"""Versioned policy weights over ROS 2: the learner publishes, inference nodes swap them in.

Two paths, chosen per reader (``transport="auto"``, the default on both sides):
- one host: the learner writes each snapshot once into a new file in ``/dev/shm`` (``weights.write_blob_file``)
  and announces it on ``/user/policy/weights/manifest``: one small ``user_msgs/PolicyWeights`` with
  ``num_chunks = 0`` and ``data`` = UTF-8 JSON ``{"path": ..., "host": <hostname/boot id>}`` (``path`` "" =
  no file, take the chunks). The manifest goes out twice: first with ``sha256`` "" as soon as the file is
  written, so the reader maps the file and hashes it while the learner hashes it too, then with the sha256.
  The reader delivers only when its own sha256 of the mapped bytes equals the announced one. It maps the
  file private copy-on-write, so the tensors are zero-copy views that outlive the file; the learner never
  writes a published file again and removes it ``retire_s`` after the next snapshot was announced.
- other host (or no usable file): the first manifest a reader cannot use makes it subscribe to the chunks on
  ``/user/policy/weights`` (see ``weights.py`` for the blob format, chunking and verification). The learner
  sends chunks only while such a subscriber exists, and sends the current snapshot to one that appears
  between snapshots. ``transport="dds"`` on either side forces chunks (the publisher's manifests then say
  "no file").

QoS and why (publisher and subscriber share it, except for the depth):
- RELIABLE: a snapshot is useless with a chunk missing.
- TRANSIENT_LOCAL: an inference node that starts (or restarts) late gets the newest snapshot at once,
  without waiting for the learner's next publish. Manifests: KEEP_LAST 1, so a late joiner gets exactly
  the newest one.
- Chunks: KEEP_LAST, publisher depth = the chunk count N of one snapshot. The publisher fixes N at its first
  chunked snapshot (``ceil(size / chunk_bytes)``, at most ``max_chunks``) and cuts every later snapshot into
  exactly N chunks (chunk size follows the snapshot size), so the writer's history always holds exactly
  one snapshot: the newest complete one once its publish finished. A late joiner therefore receives
  that snapshot and nothing older (a deeper history would replay, and make receivers unpack, old
  versions; a shallower one could not hold a whole snapshot). While a publish is under way the history
  holds the tail of the previous snapshot and the head of the new one; the receiver drops the
  incomplete older tail as soon as chunks of the newer version arrive.
  KEEP_LAST (not KEEP_ALL) also means a slow reader never blocks the learner: the writer overwrites its
  oldest chunks, and a reader that fell behind simply completes the next snapshot instead. A slow reader
  of the shared-memory path never blocks it either: the learner does not wait for readers.
- Subscriber depth = ``max_chunks`` (>= any publisher's N): the reader's history must be able to buffer a
  whole snapshot while the executor is busy, or chunks would be overwritten before they are taken.

Threads: ``publish_async`` packs (one copy) in the caller, then hashes/publishes in a background thread
(niced); ``WeightSubscriber``'s ROS callbacks only enqueue, a niced worker thread maps or reassembles,
verifies sha256 (hashlib releases the GIL), unpacks (zero-copy for the default format) and calls
``on_weights`` there. Neither blocks the executor or a control thread for long.

Files: ``/dev/shm/user-weights-<pid namespace>-<pid>-<policy>-v<version>-<n>``; ``close()`` removes them, and
a new publisher removes those of dead processes (a killed learner leaves at most two snapshots behind).
"""
from __future__ import annotations

import array
import itertools
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from user_msgs.msg import PolicyWeights

from .weights import (Reassembler, blob_format, chunk_blob, default_shm_dir, host_id, open_shm_blob,
                      pack_state_dict, release_pages, remove_stale_shm_blobs, sha256_hex, shm_blob_prefix, unpack_state_dict,
                      write_blob_file)

WEIGHTS_TOPIC = "/user/policy/weights"
DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNKS = 1024  # subscriber history depth; publishers never use more chunks per snapshot
TRANSPORTS = ("auto", "dds")
MAINTAIN_PERIOD_S = 0.5  # publisher thread: retire files, serve a new chunk reader, this often when idle
_MANIFEST = object()  # worker queue token: a manifest is waiting in WeightSubscriber._manifest


def _nice_this_thread(nice: int) -> None:
    """Linux: lower this thread's priority only (hashing and copying yield the CPU to control loops)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):
            pass


def manifest_topic(topic: str = WEIGHTS_TOPIC) -> str:
    """Where the manifests of ``topic`` go: one small ``PolicyWeights`` per version (see module docstring)."""
    return topic.rstrip("/") + "/manifest"


def weights_qos(depth: int) -> QoSProfile:
    """Reliable, transient-local, KEEP_LAST ``depth`` (see module docstring for the depth choice)."""
    return QoSProfile(depth=max(1, int(depth)), history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class PublishStats:
    version: int
    total_bytes: int
    num_chunks: int  # chunks sent over DDS (0: shared memory only, no chunk subscriber)
    pack_s: float = 0.0
    hash_s: float = 0.0
    send_s: float = 0.0
    started: float = 0.0  # time.monotonic() when publishing began (before packing)
    shm: bool = False  # announced in shared memory


class _Snap:
    """A packed snapshot: the blob, and its shared-memory file when it is in one."""

    def __init__(self, blob, path: str | None = None) -> None:
        self.blob = blob
        self.path = path
        self.chunks_sent = False
        self.version = -1
        self.digest = ""

    def remove(self) -> None:
        """Unlink the file (receivers that mapped it keep their pages) and drop our mapping's pages without
        holding the GIL (see ``weights.release_pages``)."""
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None
            if self.blob is not None:
                release_pages(self.blob)
                self.blob = None


class WeightPublisher:
    """Publishes versioned snapshots of one policy.

    ``publish(obj, version)`` sends now, in the caller's thread; ``publish_async(obj, version)`` returns at
    once and sends in a background thread, replacing a pending (not yet started) snapshot with the newer
    one. ``obj`` is a state dict or an already packed blob. Versions must increase.

    ``transport="auto"`` (default) packs each snapshot into a shared-memory file and announces it on
    ``<topic>/manifest``; chunks go over DDS on ``<topic>`` only while a chunk subscriber exists (a reader
    on another host, or one that cannot use the file), including the current snapshot for one that joins
    later. ``transport="dds"``: chunks always, the manifest says "no file".

    ``num_chunks`` fixes the chunk count (and so the history depth) up front; by default it is fixed by
    the first snapshot as ``ceil(size / chunk_bytes)`` capped at ``max_chunks``.
    """

    def __init__(self, node: Node, topic: str = WEIGHTS_TOPIC, policy_name: str = "policy",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_chunks: int = MAX_CHUNKS,
                 num_chunks: int | None = None, fmt: str | None = None, transport: str = "auto",
                 shm_dir: str | None = None, retire_s: float = 1.0, worker_nice: int = 10) -> None:
        if chunk_bytes <= 0 or max_chunks <= 0:
            raise ValueError("chunk_bytes and max_chunks must be positive")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown weights transport {transport!r}; expected one of {TRANSPORTS}")
        self.node = node
        self.topic = topic
        self.policy_name = policy_name
        self.chunk_bytes = int(chunk_bytes)
        self.max_chunks = int(max_chunks)
        self.fmt = fmt
        self.transport = transport
        self.shm_dir = (shm_dir or default_shm_dir()) if transport == "auto" else None
        self.retire_s = float(retire_s)
        self.worker_nice = worker_nice
        self.num_chunks: int | None = None
        self._pub = None
        self._manifest_pub = node.create_publisher(PolicyWeights, manifest_topic(topic), weights_qos(1))
        self._host = host_id()
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
        self._current: _Snap | None = None
        self._retired: list[tuple[float, _Snap]] = []
        self._seq = itertools.count(1)  # file names; next() is atomic (caller and background thread)
        self._shm_warned = False
        if self.shm_dir:
            remove_stale_shm_blobs(self.shm_dir)
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

    def _shm_failed(self, e: BaseException) -> None:
        if not self._shm_warned:
            self._shm_warned = True
            self.node.get_logger().warning(f"weights: no shared-memory file in {self.shm_dir} ({e!r}); "
                                           "sending chunks over DDS")

    def _pack(self, obj, version: int) -> _Snap:
        """State dict or blob -> ``_Snap``: written to a new shared-memory file when possible (one copy)."""
        if isinstance(obj, _Snap):
            return obj
        if self.shm_dir:
            name = f"{shm_blob_prefix()}{self.policy_name.replace('/', '_')}-v{version}-{next(self._seq)}"
            path = os.path.join(self.shm_dir, name)
            try:
                total = write_blob_file(path, obj, self.fmt)  # removes its file itself if it fails
            except ValueError:
                raise  # a bad state dict or format, not a shared-memory problem
            except OSError as e:
                self._shm_failed(e)
            else:
                try:
                    snap = _Snap(None, path)
                    snap.blob = open_shm_blob(path, total)  # the publisher never writes to it again
                    return snap
                except (OSError, ValueError) as e:
                    _Snap(None, path).remove()
                    self._shm_failed(e)
        if isinstance(obj, Mapping):
            return _Snap(pack_state_dict(obj, self.fmt))
        return _Snap(obj)

    # -- synchronous
    def publish(self, state_dict_or_blob: Mapping[str, Any] | bytes | bytearray | memoryview,
                version: int) -> PublishStats:
        """Pack (if a state dict), hash and publish one snapshot; returns timings."""
        with self._send_lock:
            version = int(version)
            if self.last_version is not None and version <= self.last_version:
                raise ValueError(f"weights version must increase: {version} <= last published {self.last_version}")
            t0 = time.monotonic()
            snap = self._pack(state_dict_or_blob, version)
            t1 = time.monotonic()
            snap.version = version
            if snap.path:  # announce first: readers map and hash the file while we hash it too
                self._announce(snap, "")
            t1b = time.monotonic()
            snap.digest = sha256_hex(snap.blob)
            t2 = time.monotonic()
            total = self._announce(snap, snap.digest)
            n = 0
            if self.transport == "dds" or not snap.path or self._chunk_subscribers():
                n = self._send_chunks(snap)
            t3 = time.monotonic()
            self.last_version = version
            if self._current is not None:
                self._retired.append((time.monotonic() + self.retire_s, self._current))
            self._current = snap
            self._reap()
            self.last_stats = PublishStats(version, total, n, t1 - t0, t2 - t1b, t3 - t2 + t1b - t1, t0,
                                           bool(snap.path))
        self._ensure_thread()
        return self.last_stats

    def _announce(self, snap: _Snap, digest: str) -> int:
        """Publish the manifest of ``snap`` (``digest`` "" = hash still being computed); returns its size."""
        total = memoryview(snap.blob).nbytes
        try:
            fmt = blob_format(snap.blob)
        except ValueError:
            fmt = ""
        m = PolicyWeights()
        m.header.stamp = self.node.get_clock().now().to_msg()
        m.policy_name, m.version, m.chunk_index, m.num_chunks = self.policy_name, snap.version, 0, 0
        m.total_bytes, m.sha256, m.format = total, digest, fmt
        m.data = array.array("B", json.dumps({"path": snap.path or "", "host": self._host}).encode())
        self._manifest_pub.publish(m)
        return total

    def _chunk_subscribers(self) -> int:
        return self.node.count_subscribers(self.topic)

    def _send_chunks(self, snap: _Snap) -> int:
        blob = snap.blob
        total = memoryview(blob).nbytes
        if self._pub is None:
            self._create(min(self.max_chunks, max(1, -(-total // self.chunk_bytes))))
        try:
            fmt = blob_format(blob)
        except ValueError:
            fmt = ""
        chunks = chunk_blob(blob, snap.version, self.policy_name, fmt=fmt, num_chunks=self.num_chunks,
                            sha256=snap.digest)
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
        snap.chunks_sent = True
        return len(chunks)

    @property
    def buffers_held(self) -> int:
        """Snapshot buffers still held: the newest, plus older ones a caller still references (freed by the
        worker within ``MAINTAIN_PERIOD_S`` after the last reference is gone)."""
        return len(self._held)

    def _reap(self) -> None:
        now = time.monotonic()
        while self._retired and self._retired[0][0] <= now:
            self._retired.pop(0)[1].remove()

    def _maintain(self) -> None:
        """Background: remove retired files; send the current snapshot as chunks to a new chunk reader."""
        with self._send_lock:
            self._reap()
        cur = self._current
        if cur is not None and not cur.chunks_sent and self._chunk_subscribers():
            with self._send_lock:
                if cur is self._current and not cur.chunks_sent:
                    self._send_chunks(cur)

    # -- asynchronous
    def publish_async(self, state_dict_or_blob: Mapping[str, Any] | bytes | bytearray | memoryview,
                      version: int, copy: bool = True) -> None:
        """Queue a snapshot for the background thread and return.

        With ``copy=True`` a state dict is packed here (one memcpy, into shared memory with the default
        transport: the snapshot is consistent even if training changes the tensors right after) and
        hashing + sending happen in the background; with ``copy=False`` the caller promises not to
        modify ``state_dict_or_blob`` and even packing runs in the background. A pending snapshot that
        has not started sending is replaced (``dropped_stale``).
        """
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError("background weights publish failed") from err
        version = int(version)
        with self._cond:
            floor = max((v for v in (self.last_version, self._max_requested) if v is not None), default=None)
        if floor is not None and version <= floor:
            raise ValueError(f"weights version must increase: {version} <= {floor}")
        obj = state_dict_or_blob
        if copy and isinstance(obj, Mapping):
            obj = self._pack(obj, version)
        with self._cond:
            floor = max((v for v in (self.last_version, self._max_requested) if v is not None), default=None)
            if self._closed or (floor is not None and version <= floor):  # closed or raced, while packing
                if isinstance(obj, _Snap):
                    obj.remove()
                if self._closed:
                    raise RuntimeError("WeightPublisher is closed")
                raise ValueError(f"weights version must increase: {version} <= {floor}")
            self._max_requested = version
            if self._pending is not None:
                self.dropped_stale += 1
                if isinstance(self._pending[0], _Snap):
                    self._pending[0].remove()
            self._pending = (obj, version)
            self._ensure_thread()
            self._cond.notify_all()

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="weights-publisher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        _nice_this_thread(self.worker_nice)
        while True:
            job = None
            with self._cond:
                if self._pending is None and not self._closed:
                    self._cond.wait(MAINTAIN_PERIOD_S)
                if self._pending is not None:
                    job, self._pending = self._pending, None
                    self._busy = True
                elif self._closed:
                    return
            if job is None:
                try:
                    self._maintain()
                except Exception as e:  # e.g. the node is being destroyed
                    self.node.get_logger().warning(f"weights publisher maintenance: {e!r}")
                continue
            obj, version = job
            try:
                self.publish(obj, version)
            except BaseException as e:  # surfaced on the next publish_async / flush
                if isinstance(obj, _Snap):
                    obj.remove()
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
        """Stop the background thread (a snapshot being sent is finished), remove the shared-memory files
        and destroy the publishers."""
        with self._cond:
            self._closed = True
            if self._pending is not None and isinstance(self._pending[0], _Snap):
                self._pending[0].remove()
            self._pending = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        with self._send_lock:
            for _, snap in self._retired:
                snap.remove()
            self._retired.clear()
            if self._current is not None:
                self._current.remove()
            for pub in (self._pub, self._manifest_pub):
                if pub is not None:
                    self.node.destroy_publisher(pub)
            self._pub = self._manifest_pub = None


@dataclass
class ReceiveStats:
    version: int
    total_bytes: int
    first_chunk: float  # time.monotonic() the worker took the first chunk (or the manifest) of this version
    complete: float  # reassembled (or mapped) and sha256-verified
    delivered: float  # on_weights returned
    unpack_s: float = 0.0
    via: str = "dds"  # "shm": mapped from the publisher's shared-memory file; "dds": chunks


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

    ``transport="auto"`` (default) reads the manifests on ``<topic>/manifest`` and maps the publisher's
    shared-memory file (same host); the first manifest it cannot use (another host, no file, unreadable,
    sha256 mismatch) makes it subscribe to the DDS chunks on ``<topic>`` as well, for good.
    ``transport="dds"``: chunks only.
    """

    def __init__(self, node: Node, on_weights: Callable[[int, dict], None] | None = None,
                 topic: str = WEIGHTS_TOPIC, policy_name: str | None = None, callback_group=None,
                 max_chunks: int = MAX_CHUNKS, max_total_bytes: int = 16 << 30, worker_nice: int = 10,
                 transport: str = "auto") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown weights transport {transport!r}; expected one of {TRANSPORTS}")
        self.node = node
        self.topic = topic
        self.policy_name = policy_name
        self.transport = transport
        self.worker_nice = worker_nice
        self.on_weights = on_weights
        self.max_chunks = max_chunks
        self.max_total_bytes = max_total_bytes
        self._callback_group = callback_group
        self._log = node.get_logger()
        self._host = host_id()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._reasm = Reassembler(policy_name=policy_name, max_total_bytes=max_total_bytes,
                                  on_warning=lambda w: self._log.warning(w))
        self._latest = _Latest()
        self.last_delivered: int | None = None
        self.history: list[ReceiveStats] = []
        self._first_chunk: dict[int, float] = {}
        self._manifest = None  # newest manifest not yet handled (the worker coalesces)
        self._manifest_lock = threading.Lock()
        self.fallback_reason: str | None = None  # why chunks are subscribed too (None: shared memory only)
        self._held: list = []  # buffers of delivered snapshots: freed here, never in a control thread
        self._stop = False
        self._sub = None
        self._manifest_sub = None
        self._worker = threading.Thread(target=self._run, name="weights-subscriber", daemon=True)
        self._worker.start()
        if transport == "dds":
            self._subscribe_chunks("transport='dds'")
        else:
            self._manifest_sub = node.create_subscription(PolicyWeights, manifest_topic(topic), self._on_manifest,
                                                          weights_qos(1), callback_group=callback_group)

    def _subscribe_chunks(self, reason: str) -> None:
        if self._sub is not None:
            return
        self.fallback_reason = reason
        if self.transport == "auto":
            self._log.info(f"weights: receiving chunks over DDS ({reason})")
        self._sub = self.node.create_subscription(PolicyWeights, self.topic, self._on_msg,
                                                  weights_qos(self.max_chunks), callback_group=self._callback_group)

    def _on_msg(self, msg: PolicyWeights) -> None:
        self._queue.put(msg)  # the executor does nothing else: reassembly and hashing are the worker's

    def _on_manifest(self, msg: PolicyWeights) -> None:
        if self.policy_name is not None and msg.policy_name != self.policy_name:
            return  # before the slot: another policy's manifest must not replace ours
        with self._manifest_lock:
            self._manifest = msg
        self._queue.put(_MANIFEST)

    def _run(self) -> None:
        _nice_this_thread(self.worker_nice)
        while True:
            try:
                msg = self._queue.get(timeout=MAINTAIN_PERIOD_S)
            except queue.Empty:
                self._reap()
                continue
            if msg is None or self._stop:
                return
            try:
                if msg is _MANIFEST:
                    self._handle_manifest()
                else:
                    self._handle(msg)
            except Exception as e:  # a bad chunk or callback must not kill the worker
                self._log.error(f"weights subscriber: {e!r}")

    def _take_manifest(self):
        with self._manifest_lock:
            m, self._manifest = self._manifest, None
        return m

    def _handle_manifest(self) -> None:
        m = self._take_manifest()
        if m is None:
            return
        t_first = time.monotonic()
        v = int(m.version)
        if (self.last_delivered is not None and v <= self.last_delivered) or (
                self.policy_name is not None and m.policy_name != self.policy_name):
            return
        try:
            info = json.loads(bytes(m.data))
            path, host = str(info.get("path", "")), str(info.get("host", ""))
        except (ValueError, AttributeError) as e:
            self._subscribe_chunks(f"unreadable manifest for v{v}: {e!r}")
            return
        if not path:
            self._subscribe_chunks(f"v{v} is not in shared memory")
            return
        if host != self._host:
            self._subscribe_chunks(f"publisher on another host ({host})")
            return
        if int(m.total_bytes) > self.max_total_bytes:
            self._log.warning(f"weights v{v}: {int(m.total_bytes)} bytes exceed max_total_bytes; ignored")
            return
        try:
            mm = open_shm_blob(path, int(m.total_bytes))
        except FileNotFoundError:
            # Superseded and removed already: the newer manifest was sent before the removal, so it is
            # here or on its way. Only if none comes is the file invisible to us (another /dev/shm).
            end = time.monotonic() + 1.0
            while time.monotonic() < end and not self._stop:
                with self._manifest_lock:
                    if self._manifest is not None and int(self._manifest.version) > v:
                        return  # its queue token follows
                time.sleep(0.02)
            self._subscribe_chunks(f"shared-memory file of v{v} not found: {path}")
            return
        except (OSError, ValueError) as e:
            self._subscribe_chunks(f"cannot map v{v}: {e!r}")
            return
        digest = sha256_hex(mm)  # hashlib releases the GIL
        expected = str(m.sha256).lower()
        if not expected:  # announced before the publisher's hash was done: its final manifest follows
            final = self._wait_final_manifest(v, int(m.total_bytes))
            if final is None:
                return
            expected = str(final.sha256).lower()
        if digest != expected:
            self._subscribe_chunks(f"sha256 mismatch of v{v} in shared memory")
            return
        self._reasm.skip_to(v)
        self._deliver(v, memoryview(mm), t_first, time.monotonic(), "shm")

    def _wait_final_manifest(self, version: int, nbytes: int):
        """The manifest of ``version`` with its sha256 (taken from the slot), or None if a newer version
        came first or the publisher did not finish hashing in time (at 50 MB/s, plus 10 s)."""
        end = time.monotonic() + 10.0 + nbytes / 50e6
        while time.monotonic() < end and not self._stop:
            with self._manifest_lock:
                m = self._manifest
                if m is not None and int(m.version) > version:
                    return None  # superseded; the worker takes the newer one next
                if m is not None and int(m.version) == version:
                    self._manifest = None
                    if m.sha256:
                        return m
            time.sleep(0.005)
        self._log.warning(f"weights v{version}: no sha256 from the publisher in time; dropped")
        return None

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
        self._deliver(version, blob, self._first_chunk.pop(version, None), time.monotonic(), "dds")

    def _deliver(self, version: int, blob, t_first: float | None, t_complete: float, via: str) -> None:
        if self.last_delivered is not None and version <= self.last_delivered:
            return  # completed both ways: the first one won
        sd = unpack_state_dict(blob)
        t_unpacked = time.monotonic()
        with self._latest.cond:
            self._latest.version = version
            self._latest.state_dict = sd
            self._latest.cond.notify_all()
        self.last_delivered = version
        if self.on_weights is not None:
            self.on_weights(version, sd)
        self.history.append(ReceiveStats(version, len(blob), t_complete if t_first is None else t_first,
                                         t_complete, time.monotonic(), t_unpacked - t_complete, via))
        del self.history[:-100]
        base = blob.obj if isinstance(blob, memoryview) else blob
        del blob, sd
        self._held.append(base)
        del base
        self._reap()

    @property
    def buffers_held(self) -> int:
        """Snapshot buffers still held: the newest, plus older ones a caller still references (freed by the
        worker within ``MAINTAIN_PERIOD_S`` after the last reference is gone)."""
        return len(self._held)

    def _reap(self) -> None:
        """Free the buffers of older snapshots nobody references any more, their pages first without the GIL
        (``weights.release_pages``), so the last reference never dies in a control thread (where unmapping
        400 MB would hold the GIL for tens of ms)."""
        keep = []
        last = len(self._held) - 1
        for i in range(last + 1):
            base = self._held[i]
            # references: the list, ``base``, getrefcount's argument; more = a caller still uses it
            if i < last and sys.getrefcount(base) <= 3:
                release_pages(base)
            else:
                keep.append(base)
            base = None
        self._held = keep

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
        """Destroy the subscriptions and stop the worker."""
        for sub in (self._sub, self._manifest_sub):
            if sub is not None:
                self.node.destroy_subscription(sub)
        self._sub = self._manifest_sub = None
        self._stop = True
        self._queue.put(None)
        self._worker.join(timeout=10.0)
