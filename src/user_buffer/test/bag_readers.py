"""A bag's messages as independent readers see them, for the crash tests.

- the ``mcap`` library (chunk CRCs validated);
- ``rosbags`` (``metadata.yaml``, then each file's summary and chunk indexes; every message decoded from
  the schema embedded in the file);
- Foxglove's indexed reader ``@mcap/core`` run by Node (``test/js/read_mcap.mjs``: summary -> chunk
  indexes -> message indexes -> messages, decoded by ``@foxglove/rosmsg2-serialization``).

``assert_every_reader_sees_the_store(bag)`` is the check: each reader yields exactly the transitions the
store indexed, no more and no fewer.
"""
from __future__ import annotations

import collections
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
JS_DIR = ROOT / "test" / "js"
Key = tuple[str, int, int]   # robot_id, episode_id, step


def _files(bag: Path) -> list[Path]:
    files = sorted(Path(bag).glob("*.mcap"))
    assert files, f"no MCAP file in {bag}"
    return files


def mcap_keys(bag: Path) -> list[Key]:
    from mcap.reader import make_reader

    from user_buffer.codec import transition_key

    keys = []
    for path in _files(bag):
        with open(path, "rb") as f:
            for schema, channel, message in make_reader(f, validate_crcs=True).iter_messages():
                assert channel.topic == "/user/transitions" and channel.message_encoding == "cdr", channel
                assert schema is not None and schema.name == "user_msgs/msg/Transition", schema
                robot, _emb, episode, step, _term, _trunc = transition_key(message.data)
                keys.append((robot, episode, step))
    return keys


def rosbags_messages(bag: Path):
    """(connection, message) of every message rosbags reads, decoded with the types the bag itself carries
    (not an installed package); checks that it yields as many as ``metadata.yaml`` counts."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    with Reader(bag) as reader:
        typestores, n = {}, 0
        for conn, _t, raw in reader.messages():
            ts = typestores.get(conn.id)
            if ts is None:
                ts = typestores[conn.id] = get_typestore(Stores.EMPTY)
                first, *deps = conn.msgdef.data.split("=" * 80 + "\n")
                types = dict(get_types_from_msg(first, conn.msgtype))
                for dep in deps:
                    head, body = dep.split("\n", 1)
                    pkg, name = head[len("MSG: "):].split("/")
                    types.update(get_types_from_msg(body, f"{pkg}/msg/{name}"))
                ts.register(types)
            n += 1
            yield conn, ts.deserialize_cdr(raw, conn.msgtype)
        assert reader.message_count == n, (
            f"rosbags: metadata.yaml counts {reader.message_count} messages, the files yielded {n}")


def rosbags_keys(bag: Path) -> list[Key]:
    return [(m.robot_id, int(m.episode_id), int(m.step)) for _conn, m in rosbags_messages(bag)]


def node_reader_missing() -> str:
    """Why Foxglove's reader cannot run here ('' when it can)."""
    if shutil.which("node") is None:
        return "Node.js is not installed (scripts/setup.sh installs it)"
    if not (JS_DIR / "node_modules" / "@mcap" / "core").is_dir():
        return f"{JS_DIR}/node_modules is missing (scripts/setup.sh runs npm ci there)"
    return ""


def foxglove_read(files: list[Path]) -> dict[str, list[Key] | str]:
    """Per file: the keys @mcap/core's indexed reader yields, or the error it raised."""
    why = node_reader_missing()
    if why:
        pytest.skip(f"Foxglove's indexed MCAP reader (@mcap/core) not checked: {why}")
    out = subprocess.run(["node", str(JS_DIR / "read_mcap.mjs"), *map(str, files)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"read_mcap.mjs failed:\n{out.stderr[-3000:]}"
    result: dict[str, list[Key] | str] = {}
    for line in out.stdout.splitlines():
        d = json.loads(line)
        result[d["file"]] = d["error"] if "error" in d else [(r, int(e), int(s)) for r, e, s in d["keys"]]
    assert len(result) == len(files), f"read_mcap.mjs answered for {len(result)} of {len(files)} files"
    return result


def foxglove_keys(bag: Path) -> list[Key]:
    per_file = foxglove_read(_files(bag))
    refused = {f: r for f, r in per_file.items() if isinstance(r, str)}
    assert not refused, f"@mcap/core refuses {len(refused)} file(s): {refused}"
    return [k for keys in per_file.values() for k in keys]


def store_keys(bag: Path) -> list[Key]:
    """Every row the store indexed (a read-only open), duplicates included."""
    from user_buffer.store import TransitionStore

    store = TransitionStore(bag, writable=False)
    try:
        v = store.snapshot()
        return [(store.robots[r], e, s) for r, e, s in zip(v["robot"].tolist(), v["episode"].tolist(),
                                                           v["step"].tolist())]
    finally:
        store.close()


def assert_every_reader_sees_the_store(bag: Path) -> set[Key]:
    """Each independent reader yields exactly the store's rows; returns them as a set.

    Foxglove's reader comes last: where Node is missing the test skips there, after the other checks."""
    want = collections.Counter(store_keys(bag))
    for name, read in (("mcap", mcap_keys), ("rosbags", rosbags_keys), ("@mcap/core (Foxglove)", foxglove_keys)):
        got = collections.Counter(read(bag))
        missing, extra = want - got, got - want
        assert not missing and not extra, (
            f"{name} reads {sum(got.values())} messages, the store indexed {sum(want.values())}: "
            f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
    return set(want)
