"""The link node: forwards the allow-listed topics between this side's DDS graph and the zenoh link.

Out (edge: ``up``, cloud: ``down``): every DDS topic on the graph that an out pattern matches and whose type
is a known USER topic kind is subscribed raw and put on its key (``wire.topic_to_key``) unchanged.
In (edge: ``down``, cloud: ``up``): samples on the in patterns' key expressions are published raw on DDS,
on the topic ``wire.key_to_topic`` names, with the kind's QoS. Latched kinds (weights, descriptions,
heartbeats) are transient-local on both DDS sides; across the link the out side keeps them in a cache that
answers queries, and the in side queries that cache when it starts, so a late edge or cloud gets them at once.
See src/user_link/README.md.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import threading
import time
from typing import Any

from user_common.config_schema import ConfigError
from user_common.topics import HEARTBEAT_TOPIC

from . import images
from .codec import Codec
from .config import LinkConfig, load_link_config
from .session import open_session
from .wire import WireError, key_to_topic, pattern_matches, pattern_to_key_expr, patterns_intersect, topic_to_key


@dataclasses.dataclass(frozen=True)
class TopicKind:
    """How a USER topic crosses: its message type, the DDS history depth on either side, latched or not."""

    type_name: str      # e.g. user_msgs/msg/Transition
    depth: int
    latched: bool = False

    def msg_class(self) -> type:
        pkg, _, name = self.type_name.split("/")
        return getattr(importlib.import_module(f"{pkg}.msg"), name)

    def qos(self) -> Any:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        return QoSProfile(depth=self.depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if self.latched else DurabilityPolicy.VOLATILE)


#: The topics a link can carry, first match wins. Weights keep a whole snapshot (up to 1024 chunks, as
#: user_learner.weight_sync.MAX_CHUNKS); announcements keep one per robot for up to 100 robots.
KINDS: tuple[tuple[str, TopicKind], ...] = (
    ("/**/transitions/ack", TopicKind("user_msgs/msg/TransitionAck", 1000)),
    ("/**/transitions", TopicKind("user_msgs/msg/Transition", 1000)),
    ("/**/episodes", TopicKind("user_msgs/msg/EpisodeStats", 200)),
    ("/**/policy/weights/manifest", TopicKind("user_msgs/msg/PolicyWeights", 1, latched=True)),
    ("/**/policy/weights", TopicKind("user_msgs/msg/PolicyWeights", 1024, latched=True)),
    ("/**/inference/status", TopicKind("user_msgs/msg/PolicyStatus", 10)),
    ("/user/robots/description", TopicKind("user_msgs/msg/RobotDescription", 100, latched=True)),
    ("/user/robots/heartbeat", TopicKind("user_msgs/msg/RobotStatus", 100, latched=True)),
)


#: the link node's state, JSON in a std_msgs/String, latched (``userctl link status`` reads it)
STATUS_TOPIC = "/user/link/status"
#: the key the cloud's link node answers for round-trip times (under the namespace prefix)
PING_KEY = "user/link/ping"


def topic_kind(topic: str) -> TopicKind | None:
    """The kind of ROS topic ``topic`` (None: not a topic a link carries)."""
    return next((k for pat, k in KINDS if pattern_matches(pat, topic)), None)


def routes(cfg: LinkConfig) -> tuple[list[str], list[str]]:
    """This side's (out, in) topic patterns: an edge sends ``up`` and receives ``down``; a cloud the reverse."""
    return (cfg.up, cfg.down) if cfg.role == "edge" else (cfg.down, cfg.up)


def may_be_latched(pattern: str) -> bool:
    """Whether some topic of ``pattern`` is of a latched kind (so the in side asks the out side's cache)."""
    return any(k.latched and patterns_intersect(p, pattern) for p, k in KINDS)


@dataclasses.dataclass
class Counters:
    """Messages and bytes one way, for ``userctl link status``."""

    msgs: int = 0
    bytes: int = 0

    def add(self, n: int) -> None:
        self.msgs += 1
        self.bytes += n


#: topic kind type name -> factory(bridge, topic, direction "out"/"in") of its codec (None: plain CDR)
CODECS: dict[str, Any] = {"user_msgs/msg/Transition": images.codec_factory}


def make_codec(bridge: "LinkBridge", topic: str, kind: TopicKind, direction: str) -> Codec:
    """The codec of ``topic`` on this side (the plain one unless a factory in ``CODECS`` returns another)."""
    factory = CODECS.get(kind.type_name)
    codec = factory(bridge, topic, direction) if factory is not None else None
    return codec if codec is not None else Codec()


class _OutRoute:
    """One DDS topic put on the link: a raw subscription, a codec, a zenoh publisher, a cache of latched
    samples (plain CDR: what a late joiner gets, whatever the codec)."""

    def __init__(self, bridge: "LinkBridge", topic: str, kind: TopicKind) -> None:
        import zenoh

        self.topic, self.kind, self.key = topic, kind, topic_to_key(topic, bridge.cfg.namespace)
        self.bridge = bridge
        self.cache: collections.deque[bytes] = collections.deque(maxlen=kind.depth if kind.latched else 0)
        self.lock = threading.Lock()
        s = bridge.session
        self.pub = s.declare_publisher(self.key, congestion_control=zenoh.CongestionControl.BLOCK,
                                       reliability=zenoh.Reliability.RELIABLE)
        self.codec = make_codec(bridge, topic, kind, "out")
        self.queryable = s.declare_queryable(self.key, self._on_query) if kind.latched else None
        self.sub = bridge.node.create_subscription(kind.msg_class(), topic, self._on_dds, kind.qos(), raw=True)

    def _on_dds(self, data: bytes) -> None:
        if self.kind.latched:
            with self.lock:
                self.cache.append(data)
        try:
            encoded = self.codec.encode(data)
        except Exception as exc:  # noqa: BLE001 - a sample the codec cannot handle goes plain, and is reported
            self.bridge._say_once(f"encode {self.topic}", f"link: sending {self.topic} plain: {exc!r}")
            encoded = [(data, None)]
        for payload, attachment in encoded:
            self.pub.put(payload, attachment=attachment)
            self.bridge.sent.add(len(payload))

    def _on_query(self, query: Any) -> None:
        params = str(query.parameters)
        if params:
            self.codec.on_query(params)
        with self.lock:
            cached = list(self.cache)
        for data in cached:
            query.reply(self.key, data)

    def close(self) -> None:
        self.bridge.node.destroy_subscription(self.sub)
        if self.queryable is not None:
            self.queryable.undeclare()
        self.pub.undeclare()


class LinkBridge:
    """This side of the link, on ``node`` (an rclpy Node): call ``poll_graph()`` periodically, ``close()`` at
    the end. ``session`` defaults to ``open_session(cfg)``."""

    def __init__(self, node: Any, cfg: LinkConfig, session: Any = None) -> None:
        import zenoh

        self.node, self.cfg = node, cfg
        self.log = node.get_logger()
        self.out_patterns, self.in_patterns = routes(cfg)
        self.session = session if session is not None else open_session(cfg)
        self.sent, self.received = Counters(), Counters()
        self.rtt_s: float | None = None      # edge: the last round trip to the cloud's link node
        self.last_error = ""
        self._unacked: dict[str, int] = {}   # robot id -> unacknowledged transitions in its outbox (heartbeats)
        self.out: dict[str, _OutRoute] = {}
        self._in_pubs: dict[str, Any] = {}
        self._in_codecs: dict[str, Codec] = {}
        self._in_lock = threading.Lock()
        self._said: set[str] = set()   # topics already complained about (one line each)
        self.subs = [self.session.declare_subscriber(pattern_to_key_expr(p, cfg.namespace), self._on_sample,
                                                     allowed_origin=zenoh.Locality.REMOTE)
                     for p in self.in_patterns]
        self.ping_key = cfg.key_prefix + PING_KEY
        self._ping = (self.session.declare_queryable(self.ping_key, lambda q: q.reply(self.ping_key, b""))
                      if cfg.role == "cloud" else None)
        self.resync()

    # -- status ------------------------------------------------------------------------------------
    def measure_rtt(self, timeout_s: float = 2.0) -> float | None:
        """Edge: one round trip to the cloud's link node (None: no answer within ``timeout_s``)."""
        t0 = time.monotonic()
        for reply in self.session.get(self.ping_key, timeout=timeout_s):
            if reply.ok is not None:
                self.rtt_s = time.monotonic() - t0
                return self.rtt_s
        self.rtt_s = None
        return None

    def connected(self) -> bool:
        """Edge: a router is connected; cloud: the router runs (always)."""
        return self.cfg.role == "cloud" or bool(list(self.session.info.routers_zid()))

    def on_link_state(self, connected: bool) -> None:
        """The status thread saw the link go down (False) or come back (True): after a reconnect the codecs
        forget what the other side may have missed and the latched caches are asked again."""
        if not connected:
            return
        for c in [r.codec for r in list(self.out.values())] + list(self._in_codecs.values()):
            c.on_reconnect()
        self.resync()

    def on_heartbeat(self, msg: Any) -> None:
        self._unacked[msg.robot_id] = int(msg.unacked_transitions)

    def status(self) -> dict[str, Any]:
        """What ``userctl link status`` shows (counters are totals; the reader takes rates)."""
        return {"role": self.cfg.role, "endpoints": list(self.cfg.endpoints), "connected": self.connected(),
                "sent_msgs": self.sent.msgs, "sent_bytes": self.sent.bytes, "received_msgs": self.received.msgs,
                "received_bytes": self.received.bytes, "rtt_ms": None if self.rtt_s is None else 1000 * self.rtt_s,
                "queued_transitions": sum(self._unacked.values()), "robots": sorted(self._unacked),
                "routes_out": sorted(self.out), "last_error": self.last_error, "time": time.time()}

    # -- in: zenoh -> DDS --------------------------------------------------------------------------
    def resync(self, timeout_s: float = 5.0) -> None:
        """Ask the other side's caches for the latched samples of the in patterns (replies arrive async)."""
        import zenoh

        for p in self.in_patterns:
            if may_be_latched(p):
                self.session.get(pattern_to_key_expr(p, self.cfg.namespace), self._on_reply,
                                 target=zenoh.QueryTarget.ALL, consolidation=zenoh.ConsolidationMode.NONE,
                                 timeout=timeout_s)

    def _on_reply(self, reply: Any) -> None:
        if reply.ok is not None:
            self._on_sample(reply.ok)

    def _on_sample(self, sample: Any) -> None:
        key = str(sample.key_expr)
        try:
            topic = key_to_topic(key, self.cfg.namespace)
        except WireError as exc:
            return self._say_once(key, f"link: dropped a sample: {exc}")
        if not any(pattern_matches(p, topic) for p in self.in_patterns):
            return self._say_once(topic, f"link: dropped a sample on {topic}: not in this side's allow-list")
        pub = self._in_pub(topic)
        if pub is None:
            return
        data = sample.payload.to_bytes()
        self.received.add(len(data))
        if sample.attachment is None:
            pub.publish(data)
            return
        try:
            msgs = self._in_codecs[topic].decode(data, sample.attachment.to_bytes())
        except Exception as exc:  # noqa: BLE001 - one undecodable sample is dropped and reported, never fatal
            return self._say_once(f"decode {topic}", f"link: dropped a sample on {topic}: {exc}")
        for m in msgs:
            pub.publish(m)

    def _in_pub(self, topic: str) -> Any:
        with self._in_lock:
            if topic in self._in_pubs:
                return self._in_pubs[topic]
            kind = topic_kind(topic)
            if kind is None:
                self._say_once(topic, f"link: cannot publish {topic} on DDS: not a topic kind a link carries "
                                      f"(known: {', '.join(p for p, _ in KINDS)})")
                pub = None
            else:
                pub = self.node.create_publisher(kind.msg_class(), topic, kind.qos())
                self._in_codecs[topic] = make_codec(self, topic, kind, "in")
            self._in_pubs[topic] = pub
            return pub

    # -- out: DDS -> zenoh -------------------------------------------------------------------------
    def poll_graph(self) -> None:
        """Route every new DDS topic an out pattern matches (call every few hundred ms)."""
        for topic, types in self.node.get_topic_names_and_types():
            if topic in self.out or not any(pattern_matches(p, topic) for p in self.out_patterns):
                continue
            kind = topic_kind(topic)
            if kind is None or kind.type_name not in types:
                self._say_once(topic, f"link: not sending {topic} ({', '.join(types)}): a link carries "
                                      + (f"it as {kind.type_name}" if kind else "only USER's known topic kinds"))
                continue
            self.out[topic] = _OutRoute(self, topic, kind)
            self.log.info(f"link: sending {topic} as {self.out[topic].key}"
                          + (" (latched: cached for late joiners)" if kind.latched else ""))

    def _say_once(self, what: str, line: str) -> None:
        self.last_error = line
        if what not in self._said:
            self._said.add(what)
            self.log.warning(line)

    def close(self) -> None:
        for r in self.out.values():
            r.close()
        for s in self.subs:
            s.undeclare()
        if self._ping is not None:
            self._ping.undeclare()
        self.session.close()


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def format_status(cur: dict[str, Any], prev: dict[str, Any] | None = None) -> str:
    """The text of ``userctl link status`` for one link node; rates need an earlier status ``prev``."""
    edge = cur["role"] == "edge"
    state = ("connected" if cur["connected"] else "NOT CONNECTED (reconnecting)") if edge else "router listening"
    rtt = f", round trip {cur['rtt_ms']:.1f} ms" if cur.get("rtt_ms") is not None else (
        ", round trip: no answer" if edge else "")
    lines = [f"link {cur['role']} ({', '.join(cur['endpoints'])}): {state}{rtt}"]
    dt = cur["time"] - prev["time"] if prev else 0.0
    for label, key in (("sent    ", "sent"), ("received", "received")):
        rate = (f"{_size((cur[key + '_bytes'] - prev[key + '_bytes']) / dt)}/s" if dt > 0 else "-/s")
        lines.append(f"  {label} {rate:>10}  (total {cur[key + '_msgs']} messages, {_size(cur[key + '_bytes'])})")
    robots = f" (robots {', '.join(cur['robots'])})" if cur["robots"] else ""
    lines.append(f"  queued transitions {cur['queued_transitions']}{robots}")
    lines.append(f"  sending {', '.join(cur['routes_out']) or 'nothing yet'}")
    lines.append(f"  last error: {cur['last_error'] or '-'}")
    return "\n".join(lines)


def _make_node() -> Any:
    from rclpy.node import Node
    from std_msgs.msg import String
    from user_common import qos
    from user_msgs.msg import RobotStatus

    class LinkNode(Node):
        def __init__(self) -> None:
            super().__init__("user_link")
            path = self.declare_parameter("config", "config/link.yaml").value
            poll = float(self.declare_parameter("poll_s", 0.5).value)
            every = float(self.declare_parameter("status_s", 1.0).value)
            for name, v in (("poll_s", poll), ("status_s", every)):
                if not v > 0:
                    raise ConfigError("<parameters>", name, f"must be > 0, got {v}")
            cfg = load_link_config(path)
            t0 = time.monotonic()
            self.bridge = LinkBridge(self, cfg)
            out, into = routes(cfg)
            self.get_logger().info(
                f"link up ({cfg.role}, {', '.join(cfg.endpoints)}, {time.monotonic() - t0:.1f} s): sending "
                f"{', '.join(out) or 'nothing'}; receiving {', '.join(into) or 'nothing'}")
            self.bridge.poll_graph()
            self.create_timer(poll, self.bridge.poll_graph)
            self.create_subscription(RobotStatus, HEARTBEAT_TOPIC, self.bridge.on_heartbeat, qos.ANNOUNCEMENTS_IN)
            self._status_pub = self.create_publisher(String, STATUS_TOPIC, qos.LATCHED)
            self._stop = threading.Event()
            self._status_thread = threading.Thread(target=self._report, args=(every,), daemon=True)
            self._status_thread.start()

        def _report(self, every: float) -> None:
            """Publish the status every ``every`` s; an edge measures its round trip first (off the executor)."""
            was = None
            while not self._stop.wait(every):
                if self.bridge.cfg.role == "edge":
                    try:
                        self.bridge.measure_rtt(timeout_s=min(2.0, 2 * every))
                    except Exception as exc:  # noqa: BLE001 - a closing session; reported, never fatal
                        self.bridge.last_error = f"round trip: {exc}"
                try:
                    st = self.bridge.status()
                    if st["connected"] != was:
                        if st["connected"]:
                            self.get_logger().info("link: connected")
                        else:
                            self.get_logger().warning("link: no router connected (reconnecting)")
                        if was is not None:
                            self.bridge.on_link_state(st["connected"])
                        was = st["connected"]
                    self._status_pub.publish(String(data=json.dumps(st)))
                except Exception as exc:  # noqa: BLE001 - shutting down; the status thread never kills the node
                    if self._stop.is_set() or not self.context.ok():
                        return
                    self.get_logger().error(f"link status: {exc!r}", throttle_duration_sec=10.0)

        def close(self) -> None:
            self._stop.set()
            self._status_thread.join(timeout=3)
            self.bridge.close()

    return LinkNode()


def main(args: list[str] | None = None) -> None:
    import sys

    from user_common.node_main import run_node

    from .session import LinkError

    def make() -> Any:
        try:
            return _make_node()
        except LinkError as exc:
            print(f"[user_link] {exc}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None

    sys.exit(run_node(make, "user_link", args=args))


if __name__ == "__main__":
    main()
