"""The link configuration (``config/link.yaml``): role, router endpoints, TLS files, namespace, what crosses.

Loaded with the project's config schema: an unknown key, a wrong type or a bad value is one ``ConfigError``
naming the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from user_common.config_schema import ConfigError, load_config_file, positive
from user_common.topics import (DESCRIPTION_TOPIC, EPISODES_TOPIC, HEARTBEAT_TOPIC, TRANSITION_ACK_TOPIC,
                                TRANSITIONS_TOPIC, WEIGHTS_TOPIC)

from .certs import check_edge_name
from .wire import WireError, check_ros_name, namespace_prefix, pattern_to_key_expr, patterns_intersect


def _with_jobs(topic: str) -> list[str]:
    """A shared topic and the same topic in every job namespace ``/user/jobs/<job>`` (docs/scheduler.md)."""
    return [topic, "/user/jobs/*" + topic[len("/user"):]]


#: edge -> cloud by default: transitions and episode statistics (shared and per job), robot descriptions, heartbeats
DEFAULT_UP = (*_with_jobs(TRANSITIONS_TOPIC), *_with_jobs(EPISODES_TOPIC), DESCRIPTION_TOPIC, HEARTBEAT_TOPIC)
#: cloud -> edge by default: policy weights with their manifests, transition acknowledgements (shared and per job)
DEFAULT_DOWN = (*_with_jobs(WEIGHTS_TOPIC), *_with_jobs(WEIGHTS_TOPIC + "/manifest"), *_with_jobs(TRANSITION_ACK_TOPIC))

_ENDPOINT_RE = re.compile(r"^tls/(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is ``tls/<host>:<port>`` (host a DNS name, IPv4 or [IPv6]), else ValueError."""
    m = _ENDPOINT_RE.match(endpoint)
    if m is None:
        raise ValueError(f"{endpoint!r} is not tls/<host>:<port> (only TLS endpoints: the link is always "
                         f"encrypted and mutually authenticated)")
    host, port = m["host"], int(m["port"])
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{endpoint!r}: {host} is not an IPv6 address") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{endpoint!r}: port {port} is outside 1..65535")
    return endpoint


@dataclasses.dataclass
class TlsFiles:
    """PEM files of this side: the link CA both sides trust, this side's certificate and its private key."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def validate(self) -> None:
        for name in ("ca", "cert", "key"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required: a PEM file path (userctl link certs makes them)")


@dataclasses.dataclass
class EdgeSpec:
    """One edge as the cloud knows it: the robots whose keys its certificate may use."""

    robots: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        for i, r in enumerate(self.robots):
            try:
                check_ros_name("/" + r, "robot id")
            except WireError:
                raise ValueError(f"robots[{i}]: {r!r} is not a robot id (one ROS name token: letters, digits, "
                                 f"'_', not starting with a digit)") from None
        if len(set(self.robots)) != len(self.robots):
            raise ValueError(f"robots: repeated robot ids in {self.robots}")


@dataclasses.dataclass
class LinkConfig:
    """A whole link configuration file."""

    #: edge: dials out to the cloud router (a zenoh client); cloud: the router the edges dial (listens)
    role: Literal["edge", "cloud"] = "edge"
    #: cloud: where the router listens; edge: the router(s) it dials. ``tls/<host>:<port>`` only.
    endpoints: list[str] = dataclasses.field(default_factory=lambda: ["tls/localhost:7447"])
    #: edge: give up opening the session when no router answered in this time (a TLS refusal looks the same)
    connect_timeout_s: float = dataclasses.field(default=10.0, metadata=positive())
    tls: TlsFiles = dataclasses.field(default_factory=TlsFiles)
    #: prefix of every key of this link, like zenoh-bridge-ros2dds' ``namespace`` ("" none; ``site1``)
    namespace: str = ""
    #: a link that stays silent this long is declared dead (zenoh's lease; keep-alives every quarter of it):
    #: how soon a cut is noticed, against spurious reconnects on a lossy path
    lease_s: float = dataclasses.field(default=10.0, metadata=positive())
    #: lossless lz4 compression of everything the link carries (zenoh's transport compression; the two sides
    #: negotiate it, so a side that has it off, e.g. an official bridge without it, gets plain bytes)
    compression: bool = True
    #: USER's own encodings on top (both sides must be USER link nodes: set both false toward an official
    #: zenoh-bridge-ros2dds). A transition's observation images that the previous transition's next_obs
    #: carried cross as references, not twice
    dedup_images: bool = True
    #: weights cross as compressed deltas against the last full snapshot, a full one every
    #: ``weights_full_every`` versions and whenever an edge asks (it lacks the base); integrity checked
    weight_deltas: bool = True
    weights_full_every: int = dataclasses.field(default=10, metadata=positive())
    #: ROS topics (patterns: ``*`` one token, ``**`` any) sent edge -> cloud, and cloud -> edge
    up: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_UP))
    down: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_DOWN))
    #: cloud: every edge allowed in, by name (its certificate's CN is ``edge-<name>``), with its robots
    edges: dict[str, EdgeSpec] = dataclasses.field(default_factory=dict)
    source: str = "<defaults>"

    def validate(self) -> None:
        if not self.endpoints:
            raise ValueError("endpoints: at least one tls/<host>:<port> is needed")
        for i, ep in enumerate(self.endpoints):
            try:
                check_endpoint(ep)
            except ValueError as exc:
                raise ValueError(f"endpoints[{i}]: {exc}") from None
        try:
            namespace_prefix(self.namespace)
        except WireError as exc:
            raise ValueError(f"namespace: {exc}") from None
        for direction in ("up", "down"):
            pats = getattr(self, direction)
            for i, pat in enumerate(pats):
                try:
                    pattern_to_key_expr(pat)
                except WireError as exc:
                    raise ValueError(f"{direction}[{i}]: {exc}") from None
            if len(set(pats)) != len(pats):
                raise ValueError(f"{direction}: repeated entries in {pats}")
        for u in self.up:
            for d in self.down:
                if patterns_intersect(u, d):
                    raise ValueError(f"down: {d!r} and up: {u!r} match the same topics; a topic crosses one way "
                                     f"only (else it would loop)")
        owner: dict[str, str] = {}
        for name, spec in self.edges.items():
            try:
                check_edge_name(name)
            except ValueError as exc:
                raise ValueError(f"edges.{name}: {exc}") from None
            for r in spec.robots:
                if r in owner:
                    raise ValueError(f"edges.{name}.robots: {r!r} is already a robot of edge {owner[r]!r}")
                owner[r] = name
        if self.role == "cloud" and not self.edges:
            raise ValueError("edges: a cloud needs at least one edge (name: {robots: [...]}) to let in")

    @property
    def key_prefix(self) -> str:
        """The key prefix of ``namespace`` (``""`` or ``site1/``)."""
        return namespace_prefix(self.namespace)

    def check_files(self) -> None:
        """ConfigError naming the key when a TLS file is missing or unreadable."""
        for name in ("ca", "cert", "key"):
            path = Path(getattr(self.tls, name))
            try:
                with open(path, "rb") as f:
                    head = f.read(64)
            except OSError as exc:
                raise ConfigError(self.source, f"tls.{name}", f"cannot read {path}: {exc.strerror or exc}") from None
            if b"-----BEGIN" not in head:
                raise ConfigError(self.source, f"tls.{name}", f"{path} is not a PEM file (no -----BEGIN line)")


def load_link_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LinkConfig:
    """Load and check a link configuration file; ``overrides`` are dotted keys, e.g. ``{"role": "cloud"}``."""
    return load_config_file(LinkConfig, path, overrides)

