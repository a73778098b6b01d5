"""The buffer node: records every robot's transitions into a bag at the edge, serves batches over ROS.

Runs next to the robots (where the disk is) and lets a learner anywhere on the network train from
what it recorded:

- subscribes ``/user/transitions`` (raw CDR bytes, stored exactly as received: no re-serialization)
  and appends them to a ``TransitionStore`` bag (rosbag2 directory of MCAP files);
- makes them durable (chunk + fsync) at every episode end and every ``sync_every_s``, and only then
  acknowledges them on ``/user/transitions/ack`` as consumer ``consumer`` (default ``buffer``), so
  a robot releases its copy only once the data is on disk. A transition already in the bag (a robot
  resending after a crash of this node) is not stored twice, and acknowledged at once if its first
  copy is durable (else with that copy, after the next sync);
- serves ``/user/buffer/sample`` (``user_msgs/srv/SampleBatch``): a batch of stored transitions,
  drawn uniformly (or from the newest ``window``) among those matching the request's robot ids and
  embodiments, ``demo_ratio`` of it from the read-only demo bag, returned as the stored bytes.
  Only durable transitions are served;
- logs a status line every ``status_every_s`` (stored, rate, duplicates, bag size, acks, batches).

A clean stop (Ctrl-C, SIGTERM) closes the bag: last chunk, summary, footer, index. After ``kill -9``
the next start repairs the file that was being written (cut after its last complete chunk) and the
robots resend whatever was not acknowledged.

Parameters: ``bag_dir`` (required), ``demo_dir`` (optional, opened read-only), ``consumer``,
``sync_every_s`` (1.0), ``split_mb`` (512: start a new MCAP file past this size), ``chunk_mb`` (0.125),
``compression`` ("zstd", "lz4" or "none"), ``status_every_s`` (5.0), ``max_response_mb`` (256: refuse batches
larger than this), ``seed`` (0), ``topic_ns`` ("": the shared ``/user`` names; a job's namespace, e.g.
``/user/jobs/peg``: its transitions, acks and sample service live under it).
"""
from __future__ import annotations

import array
import collections
import logging
import math
import os
import random
import sys
import threading
import time
from typing import Iterable

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from user_common.executors import ThreadedExecutor
from rclpy.node import Node
from user_msgs.msg import Transition, TransitionAck
from user_msgs.srv import SampleBatch

from user_common import qos
from user_common.config_schema import ConfigError
from user_common.node_main import run_node
from user_common.topics import check_topic_ns, job_topic

from .codec import DecodeError, transition_key
from .replay import SampleSource
from .store import COMPRESSIONS, BagLocked, StoreOptions, TransitionStore

#: The service a remote learner samples batches from.
SAMPLE_SERVICE = "/user/buffer/sample"
#: Largest batch one request may ask for.
MAX_BATCH = 4096
#: Keys per acknowledgement message (as the learner does).
ACK_KEYS_PER_MSG = 2000
#: Distinct (robot_ids, embodiments) filters whose sample sources are kept (least recently used out).
MAX_SOURCES = 8

_PARAMS = "<parameters>"
_STORE_LOG = logging.getLogger("user_buffer")


class BufferNode(Node):
    """ROS shell around a writable ``TransitionStore`` (+ an optional read-only demo store)."""

    def __init__(self) -> None:
        super().__init__("buffer")
        any_number = ParameterDescriptor(dynamic_typing=True)   # accept 1 as well as 1.0
        self.declare_parameter("bag_dir", "")
        self.declare_parameter("demo_dir", "")
        self.declare_parameter("consumer", "buffer")
        self.declare_parameter("sync_every_s", 1.0, any_number)
        self.declare_parameter("split_mb", 512, any_number)
        self.declare_parameter("chunk_mb", 0.125, any_number)
        self.declare_parameter("compression", "zstd")
        self.declare_parameter("status_every_s", 5.0, any_number)
        self.declare_parameter("max_response_mb", 256, any_number)
        self.declare_parameter("seed", 0)
        self.declare_parameter("topic_ns", "")   # its job's namespace ("" = the shared /user topics)
        p = self.get_parameter
        ns = check_topic_ns(str(p("topic_ns").value))
        self.transitions_topic = job_topic(qos.TRANSITIONS_TOPIC, ns)
        self.sample_service = job_topic(SAMPLE_SERVICE, ns)
        bag_dir = str(p("bag_dir").value or "")
        if not bag_dir:
            raise ConfigError(_PARAMS, "bag_dir", "no bag directory given (parameter 'bag_dir')")
        demo_dir = str(p("demo_dir").value or "")
        self.consumer = str(p("consumer").value or "")
        if not self.consumer:
            raise ConfigError(_PARAMS, "consumer", "must be a non-empty name (robots list it in ack_consumers)")
        self.sync_every_s = self._number("sync_every_s", positive=True)
        split_mb = self._number("split_mb", positive=True)
        chunk_mb = self._number("chunk_mb", positive=True)
        self.status_every_s = self._number("status_every_s", positive=True)
        self.max_response_bytes = int(self._number("max_response_mb", positive=True) * (1 << 20))
        compression = str(p("compression").value)
        if compression not in COMPRESSIONS:
            raise ConfigError(_PARAMS, "compression", f"must be zstd, lz4 or none, got {compression!r}")
        if demo_dir and os.path.abspath(demo_dir) == os.path.abspath(bag_dir):
            raise ConfigError(_PARAMS, "demo_dir", f"must differ from bag_dir ({bag_dir})")

        # The store reports repairs and damage through Python logging: route it into this node's log.
        self._log_handler = _RosLogHandler(self.get_logger())
        _STORE_LOG.addHandler(self._log_handler)
        _STORE_LOG.setLevel(logging.INFO)
        _STORE_LOG.propagate = False
        options = StoreOptions(split_bytes=int(split_mb * (1 << 20)), chunk_bytes=max(1, int(chunk_mb * (1 << 20))),
                               compression=compression)
        self.store = self._open_store(bag_dir, "bag_dir", writable=True, options=options)
        self.demos: TransitionStore | None = None
        if demo_dir:
            try:
                self.demos = self._open_store(demo_dir, "demo_dir", writable=False)
            except ConfigError:
                self.store.close()
                raise

        self.session = random.getrandbits(63)
        self.rng = np.random.default_rng(int(p("seed").value))
        self._ingest = threading.Lock()       # add / sync / source creation, in this order
        self._sources_lock = threading.Lock()
        self._ack_lock = threading.Lock()
        self._closed = False
        self._served = len(self.store)        # rows [0, _served) are durable and eligible for sampling
        self._sources: collections.OrderedDict[tuple, tuple[SampleSource, SampleSource | None]] = \
            collections.OrderedDict()
        self._ackable: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        self._unsynced_keys: set[tuple[str, int, int]] = set()   # stored since the last sync
        self._last_sync = time.monotonic()
        self.received = self.added = self.duplicates = self.rejected = self.store_errors = 0
        self.acked = self.batches = self.refused = 0
        self._status_t = time.monotonic()
        self._status_added = 0

        data_cb = MutuallyExclusiveCallbackGroup()
        sample_cb = MutuallyExclusiveCallbackGroup()
        timer_cb = MutuallyExclusiveCallbackGroup()
        self.pub_ack = self.create_publisher(TransitionAck, job_topic(qos.TRANSITION_ACK_TOPIC, ns), qos.DATA)
        self.create_subscription(Transition, self.transitions_topic, self._on_transition, qos.TRANSITIONS_IN,
                                 raw=True, callback_group=data_cb)
        self.create_service(SampleBatch, self.sample_service, self._on_sample, callback_group=sample_cb)
        self.create_timer(min(0.1, self.sync_every_s), self._sync_if_due, callback_group=timer_cb)
        self.create_timer(0.25, self._send_acks, callback_group=timer_cb)
        self.create_timer(self.status_every_s, self._status, callback_group=timer_cb)
        demo = (f", demos {self.demos.dir} ({len(self.demos)} transitions)" if self.demos is not None else "")
        self.get_logger().info(
            f"buffer node: bag {self.store.dir} ({len(self.store)} transitions of {len(self.store.robots)} "
            f"robots, {len(self.store.files)} files){demo}; recording {self.transitions_topic} as consumer "
            f"'{self.consumer}', serving {self.sample_service}")

    # -- setup helpers ----------------------------------------------------------------------------------
    def _number(self, name: str, positive: bool = False) -> float:
        value = self.get_parameter(name).value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(_PARAMS, name, f"must be a number, got {value!r}")
        if positive and value <= 0:
            raise ConfigError(_PARAMS, name, f"must be > 0, got {value!r}")
        return float(value)

    @staticmethod
    def _open_store(path: str, key: str, writable: bool, options: StoreOptions | None = None) -> TransitionStore:
        try:
            return TransitionStore(path, writable=writable, options=options)
        except BagLocked as exc:
            raise ConfigError(_PARAMS, key, str(exc)) from None
        except FileNotFoundError:
            raise ConfigError(_PARAMS, key, f"no bag directory {path}") from None
        except OSError as exc:
            raise ConfigError(_PARAMS, key, f"cannot open bag {path}: {exc.strerror or exc}") from None

    # -- recording (data callback group) ----------------------------------------------------------------
    def _on_transition(self, data: bytes) -> None:
        self.received += 1
        try:
            robot, _emb, episode, step, terminated, truncated = transition_key(data)
        except DecodeError as exc:
            self.rejected += 1
            self.get_logger().error(f"dropping an undecodable transition: {exc}", throttle_duration_sec=2.0)
            return
        with self._ingest:
            if self._closed:
                return
            try:
                row = self.store.add(data)
            except (OSError, DecodeError) as exc:
                # Not stored, so not acknowledged: the robot keeps it and resends it later.
                self.store_errors += 1
                self.get_logger().error(f"cannot store a transition of {robot}: {exc}", throttle_duration_sec=2.0)
                return
            if row >= 0:
                self.added += 1
                self._unsynced_keys.add((robot, episode, step))
                if terminated or truncated or time.monotonic() - self._last_sync >= self.sync_every_s:
                    self._sync_locked()
                return
            self.duplicates += 1
            if (robot, episode, step) in self._unsynced_keys:
                return   # its first copy is not durable yet: acknowledged with it after the next sync
        with self._ack_lock:   # already durable in the bag: release the robot's copy at once
            self._ackable[robot].append((episode, step))

    def _sync_if_due(self) -> None:
        if time.monotonic() - self._last_sync < self.sync_every_s:
            return
        with self._ingest:
            if not self._closed:
                self._sync_locked()

    def _sync_locked(self) -> None:
        """fsync what was added, queue acks for it and make it eligible for sampling (ingest lock held)."""
        try:
            self.store.sync()
        except OSError as exc:
            self.store_errors += 1
            self.get_logger().error(f"syncing the bag failed: {exc}", throttle_duration_sec=2.0)
            return
        self._last_sync = time.monotonic()
        self._unsynced_keys.clear()
        durable = self.store.take_durable()
        if durable:
            with self._ack_lock:
                for robot, episode, step in durable:
                    self._ackable[robot].append((episode, step))
        n = len(self.store)
        if n > self._served:
            self._extend_sources(self._served, n)
            self._served = n

    def _extend_sources(self, lo: int, hi: int) -> None:
        v = self.store.snapshot()
        robots, embs = v["robot"][lo:hi], v["embodiment"][lo:hi]
        with self._sources_lock:
            for online, _demo in self._sources.values():
                ok = np.ones(hi - lo, bool)
                if online.robots:
                    ok &= np.isin(robots, _ids(self.store.robots, online.robots))
                if online.embodiments:
                    ok &= np.isin(embs, _ids(self.store.embodiments, online.embodiments))
                if ok.any():
                    online.extend(lo + np.flatnonzero(ok))

    def _send_acks(self) -> None:
        with self._ack_lock:
            pending, self._ackable = self._ackable, collections.defaultdict(list)
        for robot, keys in pending.items():
            for i in range(0, len(keys), ACK_KEYS_PER_MSG):
                part = keys[i:i + ACK_KEYS_PER_MSG]
                ack = TransitionAck(consumer=self.consumer, session=self.session, robot_id=robot,
                                    episode_ids=[k[0] for k in part], steps=[k[1] for k in part])
                ack.header.stamp = self.get_clock().now().to_msg()
                self.pub_ack.publish(ack)
                self.acked += len(part)

    # -- serving (sample callback group) ------------------------------------------------------------------
    def _on_sample(self, req: SampleBatch.Request, resp: SampleBatch.Response) -> SampleBatch.Response:
        resp.success = False
        problem = self._check_request(req)
        if problem:
            return self._refuse(resp, problem)
        robot_ids = sorted({r for r in req.robot_ids if r})
        embodiments = sorted({e for e in req.embodiments if e})
        try:
            online, demo = self._sources_for(robot_ids, embodiments)
        except RuntimeError as exc:   # closed while answering
            return self._refuse(resp, str(exc))
        resp.size = online.n
        resp.demo_size = demo.n if demo is not None else 0
        k_demo = int(round(req.batch_size * float(req.demo_ratio)))
        k_online = req.batch_size - k_demo
        which = _describe_filter(robot_ids, embodiments)
        if k_online and online.n == 0:
            return self._refuse(resp, f"no transitions stored yet{which} (the buffer is empty)")
        if k_demo and (demo is None or demo.n == 0):
            return self._refuse(resp, f"the demo bag {self.demos.dir} holds no transitions{which}")
        with self._sources_lock:   # the generator is not thread-safe
            rows = online.draw(self.rng, k_online, int(req.window))
            demo_rows = demo.draw(self.rng, k_demo, 0) if k_demo else np.zeros(0, np.int64)
        data, sizes = array.array("B"), array.array("I")
        try:
            for store, picked in ((self.store, rows), (self.demos, demo_rows)):
                for r in picked.tolist():
                    b = store.read(r)
                    if len(data) + len(b) > self.max_response_bytes:
                        return self._refuse(resp, f"a batch of {req.batch_size} transitions exceeds "
                                                  f"max_response_mb ({self.max_response_bytes >> 20} MB); "
                                                  f"ask for a smaller batch_size")
                    sizes.append(len(b))
                    data.frombytes(b)
        except OSError as exc:
            return self._refuse(resp, f"reading the bag failed: {exc}")
        resp.sizes, resp.data = sizes, data
        resp.success, resp.message = True, "ok"
        self.batches += 1
        return resp

    def _check_request(self, req: SampleBatch.Request) -> str:
        if self._closed:
            return "the buffer node is shutting down"
        if req.batch_size == 0 or req.batch_size > MAX_BATCH:
            return f"batch_size must be between 1 and {MAX_BATCH}, got {req.batch_size}"
        ratio = float(req.demo_ratio)
        if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
            return f"demo_ratio must be in [0, 1], got {ratio:g}"
        if ratio > 0 and self.demos is None:
            return f"demo_ratio {ratio:g} needs a demo bag, but this buffer node has none (parameter demo_dir)"
        return ""

    def _refuse(self, resp: SampleBatch.Response, message: str) -> SampleBatch.Response:
        self.refused += 1
        resp.success, resp.message = False, message
        resp.sizes, resp.data = array.array("I"), array.array("B")
        self.get_logger().warning(f"{self.sample_service}: refused: {message}", throttle_duration_sec=5.0)
        return resp

    def _sources_for(self, robot_ids: list[str], embodiments: list[str]) -> tuple[SampleSource, SampleSource | None]:
        key = (tuple(robot_ids), tuple(embodiments))
        with self._sources_lock:
            found = self._sources.get(key)
            if found is not None:
                self._sources.move_to_end(key)
                return found
        with self._ingest:
            if self._closed:
                raise RuntimeError("the buffer node is shutting down")
            # A new source takes every row in the store: make them all durable first, so that the
            # source and the rows added later (extended after each sync) line up exactly.
            self._sync_locked()
            online = SampleSource(self.store, None, 0, robot_ids, embodiments)
            # Demonstrations come from whichever robot recorded them: only the embodiment filter applies.
            demo = SampleSource(self.demos, None, 0, (), embodiments) if self.demos is not None else None
            with self._sources_lock:
                self._sources[key] = (online, demo)
                while len(self._sources) > MAX_SOURCES:
                    self._sources.popitem(last=False)
        return online, demo

    # -- status / shutdown -----------------------------------------------------------------------------------
    def _bag_bytes(self) -> int:
        total = 0
        for name in self.store.mcap_files():
            try:
                total += (self.store.dir / name).stat().st_size
            except OSError:
                pass
        return total

    def _status(self) -> None:
        now = time.monotonic()
        rate = (self.added - self._status_added) / max(now - self._status_t, 1e-9)
        self._status_t, self._status_added = now, self.added
        self.get_logger().info(
            f"buffer: stored {len(self.store)} ({rate:.1f}/s), {self.duplicates} duplicates, "
            f"{self.rejected} rejected, bag {self._bag_bytes() / 2**20:.1f} MB in {len(self.store.mcap_files())} "
            f"files, acked {self.acked}, served {self.batches} batches ({self.refused} refused)")

    def close(self) -> None:
        """Make everything durable, acknowledge it if still possible, and close the bag."""
        with self._ingest:
            if self._closed:
                return
            try:
                self._sync_locked()
            finally:
                self._closed = True
                self.store.close()
                if self.demos is not None:
                    self.demos.close()
        if self.context.ok():
            try:
                self._send_acks()
            except Exception:  # noqa: BLE001 - the robots resend; they are acknowledged after a restart
                pass
        _STORE_LOG.removeHandler(self._log_handler)
        print(f"[buffer_node] closed bag {self.store.dir}: {len(self.store)} transitions, "
              f"{self.added} added, {self.duplicates} duplicates this session", flush=True)


class _RosLogHandler(logging.Handler):
    """Python logging records (of ``user_buffer``) into a ROS logger."""

    def __init__(self, ros_logger) -> None:
        super().__init__()
        self.ros = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.ERROR:
                self.ros.error(msg)
            elif record.levelno >= logging.WARNING:
                self.ros.warning(msg)
            else:
                self.ros.info(msg)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)


def _ids(table: list[str], names: Iterable[str]) -> list[int]:
    wanted = set(names)
    return [i for i, name in enumerate(table) if name in wanted]


def _describe_filter(robot_ids: list[str], embodiments: list[str]) -> str:
    parts = []
    if robot_ids:
        parts.append(f"robot_ids {robot_ids}")
    if embodiments:
        parts.append(f"embodiments {embodiments}")
    return f" for {' and '.join(parts)}" if parts else ""


def _spin(node: BufferNode) -> int:
    executor = ThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        executor.spin()
    finally:
        executor.shutdown(timeout_sec=5.0)
    return 0


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(BufferNode, "buffer_node", _spin, args))


if __name__ == "__main__":
    main()
