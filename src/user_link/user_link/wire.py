"""The wire format of zenoh-bridge-ros2dds (v1.x), so either side of a USER link may be the official bridge.

- Key: the ROS name without its leading ``/``, under an optional namespace prefix (the bridge's
  ``namespace`` option): ``/user/transitions`` -> ``user/transitions``; with namespace ``site1``
  -> ``site1/user/transitions``. No domain id and no type in the key.
- Payload: the serialized message exactly as DDS carries it, CDR including the 4-byte encapsulation header
  (``rclpy.serialization.serialize_message``); no attachment.
- Services are queryables on the same key (request CDR in the query payload, reply CDR back); actions are
  ``<key>/_action/{send_goal,cancel_goal,get_result}`` services plus ``<key>/_action/{feedback,status}`` topics.

Allow-list patterns are ROS names whose tokens may be ``*`` (exactly one token) or ``**`` (any number of tokens,
zero included), so that a pattern maps token for token onto a zenoh key expression with the same meaning.
Pure Python: nothing here imports zenoh; rclpy only inside ``encode``/``decode``.
"""
from __future__ import annotations

import re
from typing import Any

_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN_RE = re.compile(rf"^{_TOKEN}$")
_NAME_HINT = ("an absolute ROS name: '/' then tokens of letters, digits and '_' (not starting with a digit) "
              "joined by single '/', no trailing '/'")

#: CDR encapsulation identifiers (first two bytes of a DDS payload, big-endian), OMG DDS-XTypes 1.3 7.6.3.1.2
ENCAPSULATIONS = {0x0000: "CDR_BE", 0x0001: "CDR_LE", 0x0002: "PL_CDR_BE", 0x0003: "PL_CDR_LE",
                  0x0006: "CDR2_BE", 0x0007: "CDR2_LE", 0x0008: "D_CDR2_BE", 0x0009: "D_CDR2_LE",
                  0x000A: "PL_CDR2_BE", 0x000B: "PL_CDR2_LE"}
#: the suffixes of an action's five routes (three services, two topics), as the bridge maps them
ACTION_SERVICES = ("_action/send_goal", "_action/cancel_goal", "_action/get_result")
ACTION_TOPICS = ("_action/feedback", "_action/status")


class WireError(ValueError):
    """A name, key or payload that has no mapping; the message says which and why."""


def namespace_prefix(namespace: str) -> str:
    """The key prefix of a bridge namespace: ``""``/``"/"`` -> ``""``; ``site1``/``/site1`` -> ``site1/``."""
    if not isinstance(namespace, str):
        raise WireError(f"namespace {namespace!r}: expected a string")
    if namespace in ("", "/"):
        return ""
    body = namespace[1:] if namespace.startswith("/") else namespace
    tokens = body.split("/")
    if not all(_TOKEN_RE.match(t) for t in tokens):
        raise WireError(f"namespace {namespace!r}: expected '' or a ROS namespace such as site1 or /site1/cell2 "
                        f"(tokens of letters, digits and '_', not starting with a digit, no trailing '/')")
    return body + "/"


def check_ros_name(name: str, what: str = "ROS name", patterns: bool = False) -> list[str]:
    """The tokens of absolute ROS name ``name``; WireError when it is not one (``patterns``: allow ``*``/``**``)."""
    if not isinstance(name, str) or not name.startswith("/") or name == "/":
        raise WireError(f"{what} {name!r}: expected {_NAME_HINT}")
    tokens = name[1:].split("/")
    for t in tokens:
        if _TOKEN_RE.match(t) or (patterns and t in ("*", "**")):
            continue
        why = "has an empty token ('//' or a trailing '/')" if t == "" else f"has the invalid token {t!r}"
        extra = " (wildcards: '*' and '**' as whole tokens)" if patterns else ""
        raise WireError(f"{what} {name!r} {why}, so it maps to no zenoh key; expected {_NAME_HINT}{extra}")
    return tokens


def topic_to_key(topic: str, namespace: str = "") -> str:
    """Zenoh key of ROS topic (or service) ``topic``: ``/user/transitions`` -> ``[<ns>/]user/transitions``."""
    return namespace_prefix(namespace) + "/".join(check_ros_name(topic, "ROS topic"))


def key_to_topic(key: str, namespace: str = "") -> str:
    """ROS topic of zenoh key ``key``, the namespace prefix taken off (the inverse of ``topic_to_key``)."""
    if not isinstance(key, str):
        raise WireError(f"zenoh key {key!r}: expected a string")
    prefix = namespace_prefix(namespace)
    if not key.startswith(prefix):
        raise WireError(f"zenoh key {key!r} is not under the namespace {prefix.rstrip('/')!r}")
    rest = key[len(prefix):]
    try:
        check_ros_name("/" + rest, "ROS topic")
    except WireError:
        raise WireError(f"zenoh key {key!r}: {rest!r} after the namespace is not a ROS name ({_NAME_HINT}, "
                        f"without the leading '/')") from None
    return "/" + rest


def service_to_key(service: str, namespace: str = "") -> str:
    """Key of the queryable that serves ROS service ``service`` (the same mapping as a topic's)."""
    return namespace_prefix(namespace) + "/".join(check_ros_name(service, "ROS service"))


def action_keys(action: str, namespace: str = "") -> dict[str, str]:
    """The five keys of ROS action ``action``: its three services and two topics, by suffix."""
    base = namespace_prefix(namespace) + "/".join(check_ros_name(action, "ROS action"))
    return {s: f"{base}/{s}" for s in ACTION_SERVICES + ACTION_TOPICS}


def pattern_to_key_expr(pattern: str, namespace: str = "") -> str:
    """Zenoh key expression of an allow-list pattern: ``/user/jobs/*/transitions`` -> ``user/jobs/*/transitions``."""
    tokens = check_ros_name(pattern, "topic pattern", patterns=True)
    for a, b in zip(tokens, tokens[1:]):
        if a == "**" and b == "**":
            raise WireError(f"topic pattern {pattern!r}: '**/**' is the same as '**'; write it once")
    return namespace_prefix(namespace) + "/".join(tokens)


def _match(p: list[str], t: list[str]) -> bool:
    if not p:
        return not t
    if p[0] == "**":
        return any(_match(p[1:], t[i:]) for i in range(len(t) + 1))
    return bool(t) and (p[0] == "*" or p[0] == t[0]) and _match(p[1:], t[1:])


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether ROS topic ``topic`` is matched by allow-list ``pattern`` (``*`` one token, ``**`` any)."""
    return _match(check_ros_name(pattern, "topic pattern", patterns=True), check_ros_name(topic, "ROS topic"))


def _meet(a: list[str], b: list[str]) -> bool:
    if not a or not b:
        return all(x == "**" for x in a + b)
    if a[0] == "**":
        return _meet(a[1:], b) or _meet(a, b[1:])
    if b[0] == "**":
        return _meet(a, b[1:]) or _meet(a[1:], b)
    return (a[0] == b[0] or "*" in (a[0], b[0])) and _meet(a[1:], b[1:])


def patterns_intersect(a: str, b: str) -> bool:
    """Whether some ROS topic is matched by both patterns."""
    return _meet(check_ros_name(a, "topic pattern", patterns=True), check_ros_name(b, "topic pattern", patterns=True))


def encapsulation(payload: bytes | bytearray | memoryview) -> str:
    """Name of the CDR encapsulation of a payload (``CDR_LE`` for ROS 2 on Fast DDS); WireError if none."""
    data = bytes(payload[:4])
    if len(data) < 4:
        raise WireError(f"payload of {len(payload)} bytes: shorter than the 4-byte CDR encapsulation header")
    rep = int.from_bytes(data[:2], "big")
    if rep not in ENCAPSULATIONS:
        raise WireError(f"payload starts with {data.hex(' ')}: 0x{rep:04x} is not a CDR encapsulation identifier "
                        f"(known: {', '.join(f'{k:04x} {v}' for k, v in ENCAPSULATIONS.items())})")
    return ENCAPSULATIONS[rep]


def encode(msg: Any) -> bytes:
    """Payload of ROS message ``msg``: its CDR bytes with the encapsulation header, as DDS carries it."""
    from rclpy.serialization import serialize_message

    return serialize_message(msg)


def decode(payload: bytes | bytearray | memoryview, msg_type: type) -> Any:
    """The ROS message of type ``msg_type`` in ``payload``; WireError when it is not a CDR payload of that type."""
    encapsulation(payload)
    from rclpy.serialization import deserialize_message

    try:
        return deserialize_message(bytes(payload), msg_type)
    except Exception as exc:  # rclpy raises plain exceptions of several kinds for bad bytes
        name = getattr(msg_type, "__name__", repr(msg_type))
        raise WireError(f"payload of {len(payload)} bytes is not a serialized {name}: {exc}") from None
