"""The transition store: rosbag2/MCAP format checked by independent readers, index, recovery, damage."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from user_msgs.msg import Transition

from buffer_helpers import episode_bytes, transition_msg
from user_buffer import mcap_format as mf
from user_buffer.store import INDEX_NAME, BagLocked, StoreOptions, TransitionStore

CAMS = ("wrist", "side")


def fill(directory: Path, robots=("franka_0", "franka_1"), episodes=3, steps=12, **opts) -> TransitionStore:
    s = TransitionStore(directory, options=StoreOptions(**opts))
    for ep in range(1, episodes + 1):
        for r in robots:
            for b in episode_bytes(r, ep, steps, cams=CAMS, size=24):
                s.add(b)
            s.sync()
    return s


def same(a: Transition, b: Transition) -> bool:
    return a == b


def test_bag_opens_with_the_mcap_library_and_rosbags_and_round_trips_every_message(tmp_path):
    bag = tmp_path / "run"
    s = fill(bag, split_bytes=150_000, chunk_bytes=40_000)
    s.close()
    files = sorted(p.name for p in bag.glob("*.mcap"))
    assert len(files) >= 3, f"expected the bag split into several files, got {files}"
    assert all(f.startswith("run_") for f in files)

    from mcap.reader import make_reader
    from mcap.stream_reader import StreamReader

    total = 0
    for name in files:
        with open(bag / name, "rb") as f:
            reader = make_reader(f)
            header = reader.get_header()
            assert header.profile == "ros2"
            summary = reader.get_summary()
            (ch,) = summary.channels.values()
            assert ch.topic == "/user/transitions" and ch.message_encoding == "cdr"
            assert "reliability: reliable" in ch.metadata["offered_qos_profiles"]
            sch = summary.schemas[ch.schema_id]
            assert sch.name == "user_msgs/msg/Transition" and sch.encoding == "ros2msg"
            assert b"MSG: sensor_msgs/Image" in sch.data
            for _, _, msg in reader.iter_messages():
                m = deserialize_message(msg.data, Transition)
                assert same(m, transition_msg(m.robot_id, m.episode_id, m.step, cams=CAMS, size=24,
                                              last=m.step == 11))
                total += 1
        with open(bag / name, "rb") as f:   # every chunk CRC checked by the independent reader
            assert sum(1 for _ in StreamReader(f, skip_magic=False, validate_crcs=True).records) > 0
    assert total == 2 * 3 * 12

    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    with Reader(bag) as r:
        assert r.message_count == total
        (conn,) = r.connections
        assert conn.topic == "/user/transitions" and conn.msgtype == "user_msgs/msg/Transition"
        ts = get_typestore(Stores.EMPTY)
        first, *deps = conn.msgdef.data.split("=" * 80 + "\n")
        types = dict(get_types_from_msg(first, conn.msgtype))
        for d in deps:
            head, body = d.split("\n", 1)
            pkg, name = head[len("MSG: "):].split("/")
            types.update(get_types_from_msg(body, f"{pkg}/msg/{name}"))
        ts.register(types)
        n = 0
        for c, _, raw in r.messages():
            m = ts.deserialize_cdr(raw, c.msgtype)
            ref = transition_msg(m.robot_id, m.episode_id, m.step, cams=CAMS, size=24)
            assert np.array_equal(m.obs.images[1].data, np.frombuffer(bytes(ref.obs.images[1].data), np.uint8))
            n += 1
        assert n == total


def test_index_is_persisted_and_rebuilt_when_missing_or_damaged(tmp_path):
    bag = tmp_path / "b"
    fill(bag, split_bytes=100_000).close()
    s = TransitionStore(bag, writable=False)
    before = {k: v.copy() for k, v in s.snapshot().items()}
    eps = [(e["robot_id"], e["episode_id"], e["steps"], e["ended"]) for e in s.episodes()]
    s.close()
    assert len(eps) == 6 and all(e[2] == 12 and e[3] for e in eps)
    for damage in ("missing", "garbage"):
        if damage == "missing":
            (bag / INDEX_NAME).unlink()
        else:
            (bag / INDEX_NAME).write_bytes(b"not an npz")
        s = TransitionStore(bag)
        after = s.snapshot()
        for k in before:
            assert np.array_equal(before[k], after[k]), f"rebuilt index differs in column {k} ({damage})"
        if damage == "garbage":
            assert any("unreadable index" in p for p in s.problems)
        s.close()
        assert (bag / INDEX_NAME).exists()


def test_a_second_writer_is_refused(tmp_path):
    s = TransitionStore(tmp_path / "b")
    with pytest.raises(BagLocked, match="another process"):
        TransitionStore(tmp_path / "b")
    s.close()
    TransitionStore(tmp_path / "b").close()


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {helpers!r})
    from buffer_helpers import episode_bytes
    from user_buffer.store import StoreOptions, TransitionStore
    s = TransitionStore({bag!r}, options=StoreOptions(split_bytes=300_000, chunk_bytes=30_000))
    ep = {first_episode}
    while True:
        for i, b in enumerate(episode_bytes("franka_0", ep, 15, cams=("wrist",), size=24)):
            s.add(b)
            if i == 7:
                s.sync()  # a mid-episode flush, as the buffer does every second
                for key in s.take_durable():
                    print("DURABLE", *key, flush=True)
        s.sync()
        for key in s.take_durable():
            print("DURABLE", *key, flush=True)
        ep += 1
""")


def test_kill_9_during_ingest_keeps_every_acknowledged_transition(tmp_path):
    bag = tmp_path / "bag"
    helpers = str(Path(__file__).resolve().parent)
    durable: set[tuple[str, int, int]] = set()
    rng = random.Random(4)
    for round_ in range(4):
        script = WRITER.format(helpers=helpers, bag=str(bag), first_episode=1000 * (round_ + 1))
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                env=os.environ.copy())
        deadline = time.monotonic() + 60
        target = rng.randint(20, 200)     # kill after a random number of durable transitions ...
        seen = 0
        while seen < target and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("DURABLE"):
                _, r, e, st = line.split()
                durable.add((r, int(e), int(st)))
                seen += 1
        time.sleep(rng.uniform(0.0, 0.05))   # ... plus a random moment inside the next writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().split("\n")[:-1]:  # whole lines printed before the kill count too
            if line.startswith("DURABLE"):
                _, r, e, st = line.split()
                durable.add((r, int(e), int(st)))
        assert seen >= target, f"round {round_}: writer produced only {seen} durable transitions"

        s = TransitionStore(bag)   # recovers: repairs the cut file, rebuilds what the index lacks
        missing = [k for k in durable if not s.contains(*k)]
        assert not missing, f"round {round_}: acknowledged transitions lost: {sorted(missing)[:5]}"
        for row in range(len(s)):
            m = deserialize_message(s.read(row), Transition)   # every indexed row is readable
            assert m.robot_id == "franka_0"
        s.close()
        for p in bag.glob("*.mcap"):
            res = mf.scan(p)
            assert res.complete and not res.bad_chunks, f"{p.name}: {res.problem} {res.bad_chunks}"
    from rosbags.rosbag2 import Reader

    with Reader(bag) as r:
        assert r.message_count >= len(durable)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_damaged_files_are_reported_by_name_and_skipped(tmp_path):
    bag = tmp_path / "d"
    fill(bag, robots=("franka_0",), episodes=6, steps=10, split_bytes=120_000, chunk_bytes=20_000).close()
    files = sorted(bag.glob("*.mcap"))
    assert len(files) >= 3
    s = TransitionStore(bag, writable=False)
    total = len(s)
    chunks = {fe.name: sorted({int(c) for c, f in zip(s.snapshot()["chunk"], s.snapshot()["file"])
                               if s.files[int(f)].name == fe.name}) for fe in s.files}
    s.close()
    # 1. flipped bytes inside a chunk of the first file
    first = files[0]
    _flip(first, chunks[first.name][1] + 200)
    # 2. the second file cut in half (as if the disk lost its tail)
    second = files[1]
    size = second.stat().st_size
    with open(second, "r+b") as f:
        f.truncate(size // 2)
    # 3. a file that is not MCAP at all
    junk = bag / "d_99.mcap"
    junk.write_bytes(b"garbage" * 10)

    s = TransitionStore(bag)
    text = "\n".join(s.problems)
    assert f"{first}" in text and "CRC" in text, text
    assert f"{second}" in text, text
    assert f"{junk}" in text and "not an MCAP file" in text, text
    assert 0 < len(s) < total
    for row in range(len(s)):
        deserialize_message(s.read(row), Transition)
    s.close()
    # The cut file was repaired into a valid MCAP that independent readers accept.
    from mcap.reader import make_reader

    with open(second, "rb") as f:
        n = sum(1 for _ in make_reader(f).iter_messages())
    assert n > 0


def test_verify_finds_damage_the_index_cannot_see(tmp_path):
    bag = tmp_path / "v"
    fill(bag, robots=("franka_0",), episodes=2, steps=10, chunk_bytes=20_000).close()
    (f,) = sorted(bag.glob("*.mcap"))
    st = f.stat()
    s = TransitionStore(bag, writable=False)
    chunk = int(s.snapshot()["chunk"][-1])
    s.close()
    _flip(f, chunk + 300)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))   # same size and mtime: the index looks fresh
    s = TransitionStore(bag, writable=False)
    bad = s.verify()
    s.close()
    assert bad and str(f) in bad[0] and "CRC" in bad[0]


def test_read_only_open_changes_nothing(tmp_path):
    bag = tmp_path / "r"
    s = fill(bag, robots=("franka_0",), episodes=1, steps=5)
    s.sync()
    # simulate a crash: copy the directory while the writer still has the file open (no footer)
    crashed = tmp_path / "crashed"
    shutil.copytree(bag, crashed)
    s.close()
    (crashed / ".user_buffer.lock").unlink()
    before = {p.name: p.read_bytes() for p in crashed.iterdir() if p.is_file()}
    ro = TransitionStore(crashed, writable=False)
    assert len(ro) == 5 and any("not closed by its writer" in p for p in ro.problems)
    ro.close()
    after = {p.name: p.read_bytes() for p in crashed.iterdir() if p.is_file()}
    assert before == after


def test_a_transition_is_durable_only_after_sync(tmp_path):
    s = TransitionStore(tmp_path / "s", options=StoreOptions(chunk_bytes=1000))   # chunks close on size too
    rows = [s.add(b) for b in episode_bytes("franka_0", 1, 6)]
    assert not s.is_durable("franka_0", 1, 0) and not s.take_durable()
    for r in rows:   # rows in chunks closed by size are readable before any sync
        assert deserialize_message(s.read(r), Transition).step == r
    assert s.sync() == 6 and s.is_durable("franka_0", 1, 5)
    assert s.take_durable() == [("franka_0", 1, k) for k in range(6)]
    assert not s.is_durable("franka_0", 1, 6) and not s.is_durable("franka_9", 1, 0)
    s.close()
