"""rosbag2 conventions: message definitions, type hashes, QoS strings and ``metadata.yaml``.

A rosbag2 bag is a directory holding ``metadata.yaml`` and ``<bag>_<N>.mcap`` files (profile
``ros2``, ``cdr`` payloads, ``ros2msg`` schemas, ``offered_qos_profiles`` in channel metadata).
``metadata.yaml`` follows format version 9 (ROS 2 Jazzy); ``ros2 bag reindex`` can rebuild it from
the MCAP files, and so can ``write_metadata`` here.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import yaml

PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
              "uint32", "int64", "uint64", "string", "wstring"}
SEPARATOR = "=" * 80
DISTRO = "jazzy"
FORMAT_VERSION = 9
_NEVER = {"sec": 9223372036, "nsec": 854775807}   # rmw's "infinite" duration


def _share_dir(package: str) -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(package))


def _split(type_name: str) -> tuple[str, str]:
    """``pkg/msg/Type`` or ``pkg/Type`` -> (pkg, Type)."""
    parts = type_name.split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"not a message type name: {type_name!r}")


@functools.lru_cache(maxsize=None)
def _msg_text(package: str, name: str) -> str:
    path = _share_dir(package) / "msg" / f"{name}.msg"
    try:
        return path.read_text()
    except OSError as exc:
        raise ValueError(f"no message definition for {package}/msg/{name} ({path})") from exc


def _field_types(package: str, text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if re.match(r"^\S+\s+\w+\s*=", line):
            continue  # a constant
        tok = line.split()[0]
        base = re.sub(r"\[.*\]$", "", tok)
        base = re.sub(r"<=\d+$", "", base)
        if base in PRIMITIVES or base.startswith("string<="):
            continue
        if "/" in base:
            out.append(_split(base))
        elif base == "Header":
            out.append(("std_msgs", "Header"))
        else:
            out.append((package, base))
    return out


@functools.lru_cache(maxsize=None)
def message_definition(type_name: str) -> str:
    """The ``ros2msg`` schema text: the type's .msg, then every nested type after a separator line."""
    package, name = _split(type_name)
    text = _msg_text(package, name)
    seen: list[tuple[str, str]] = []

    def visit(pkg: str, body: str) -> None:
        for dep in _field_types(pkg, body):
            if dep not in seen and dep != (package, name):
                seen.append(dep)
                visit(dep[0], _msg_text(*dep))

    visit(package, text)
    parts = [text.rstrip("\n")]
    for pkg, dep in seen:
        parts.append(f"{SEPARATOR}\nMSG: {pkg}/{dep}\n{_msg_text(pkg, dep).rstrip(chr(10))}")
    return "\n".join(parts) + "\n"


@functools.lru_cache(maxsize=None)
def type_hash(type_name: str) -> str:
    """The RIHS01 type description hash rosidl generated for the type ('' if unavailable)."""
    package, name = _split(type_name)
    try:
        data = json.loads((_share_dir(package) / "msg" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return ""
    for h in data.get("type_hashes", []):
        if h.get("type_name") == f"{package}/msg/{name}":
            return h.get("hash_string", "")
    return ""


def qos_profile(reliability: str = "reliable", durability: str = "volatile", depth: int = 100) -> dict:
    """One offered QoS profile in the metadata version 9 spelling."""
    return {"history": "keep_last", "depth": depth, "reliability": reliability, "durability": durability,
            "deadline": dict(_NEVER), "lifespan": dict(_NEVER), "liveliness": "automatic",
            "liveliness_lease_duration": dict(_NEVER), "avoid_ros_namespace_conventions": False}


def qos_yaml(profiles: list[dict]) -> str:
    """The YAML string stored in a channel's ``offered_qos_profiles`` metadata."""
    return yaml.safe_dump(profiles, sort_keys=False, default_flow_style=False).strip()


def channel_metadata(type_name: str, profiles: list[dict]) -> dict[str, str]:
    meta = {"offered_qos_profiles": qos_yaml(profiles)}
    h = type_hash(type_name)
    if h:
        meta["topic_type_hash"] = h
    return meta


def write_metadata(directory: str | os.PathLike, files: list[dict], topics: dict[str, dict]) -> None:
    """Write ``metadata.yaml`` atomically.

    ``files``: ``[{"path", "start_ns", "end_ns", "message_count"}]`` in order;
    ``topics``: ``{name: {"type", "message_count", "qos": [profile dicts]}}``.
    """
    directory = Path(directory)
    starts = [f["start_ns"] for f in files if f["message_count"]]
    ends = [f["end_ns"] for f in files if f["message_count"]]
    start = min(starts) if starts else 0
    end = max(ends) if ends else 0
    info = {
        "version": FORMAT_VERSION,
        "storage_identifier": "mcap",
        "duration": {"nanoseconds": max(0, end - start)},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": sum(f["message_count"] for f in files),
        "topics_with_message_count": [
            {"topic_metadata": {"name": name, "type": t["type"], "serialization_format": "cdr",
                                "offered_qos_profiles": t["qos"], "type_description_hash": type_hash(t["type"])},
             "message_count": t["message_count"]}
            for name, t in topics.items()],
        "compression_format": "",
        "compression_mode": "",
        "relative_file_paths": [f["path"] for f in files],
        "files": [{"path": f["path"], "starting_time": {"nanoseconds_since_epoch": f["start_ns"]},
                   "duration": {"nanoseconds": max(0, f["end_ns"] - f["start_ns"])},
                   "message_count": f["message_count"]} for f in files],
        "custom_data": {"writer": "user_buffer"},
        "ros_distro": DISTRO,
    }
    text = yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False)
    atomic_write(directory / "metadata.yaml", text.encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync it, rename it over ``path``, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
