"""The transition store: rosbag2/MCAP format checked by independent readers, index, recovery, damage."""
from __future__ import annotations

import json
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
from rclpy.serialization import deserialize_message, serialize_message
from user_msgs.msg import Transition

from bag_readers import assert_every_reader_sees_the_store, foxglove_read, mcap_keys, rosbags_keys, \
    rosbags_messages
from buffer_helpers import episode_bytes, transition_msg
from user_buffer import bag_tools
from user_buffer import mcap_format as mf
from user_buffer.codec import decode_transition, transition_key
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

    n = 0
    for conn, m in rosbags_messages(bag):   # decoded with the schema the bag carries
        assert conn.topic == "/user/transitions" and conn.msgtype == "user_msgs/msg/Transition"
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
    s = TransitionStore({bag!r}, options=StoreOptions(split_bytes=300_000, chunk_bytes=30_000,
                                                      compression={compression!r}))
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


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_kill_9_during_ingest_keeps_every_acknowledged_transition_readable_by_every_reader(tmp_path, compression):
    bag = tmp_path / "bag"
    helpers = str(Path(__file__).resolve().parent)
    durable: set[tuple[str, int, int]] = set()
    rng = random.Random(4)
    for round_ in range(4):
        script = WRITER.format(helpers=helpers, bag=str(bag), first_episode=1000 * (round_ + 1),
                               compression=compression)
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
            assert not mf.check_index(p)
        stored = assert_every_reader_sees_the_store(bag)
        assert durable <= stored, f"round {round_}: readers miss acknowledged {sorted(durable - stored)[:5]}"


def _crashed_file(tmp_path: Path, **opts) -> tuple[bytes, list[tuple[int, int, list]]]:
    """The bytes of a file its writer was still appending to (no summary) and its chunks as
    (start, end of chunk record, keys of its messages)."""
    live = tmp_path / "live"
    s = TransitionStore(live, options=StoreOptions(**opts))
    for ep in range(3):
        for b in episode_bytes("franka_0", ep, 12, cams=CAMS, size=24):
            s.add(b)
        s.sync()
    (path,) = live.glob("*.mcap")
    data = path.read_bytes()
    s.close()
    chunks = []
    for ch in mf.scan(path).chunks:
        records = mf.decompress(data[ch.records_start:ch.records_start + ch.compressed_size], ch.compression,
                                ch.uncompressed_size)
        keys = [(r, e, st) for r, _em, e, st, _t, _u in
                (transition_key(records[m.data_offset:m.data_offset + m.length]) for m in ch.messages)]
        chunks.append((ch.start, ch.start + ch.length, keys))
    return data, chunks


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_file_cut_at_any_point_is_closed_so_every_reader_reads_every_complete_chunk(tmp_path, compression):
    data, chunks = _crashed_file(tmp_path, chunk_bytes=8_000, compression=compression)
    assert len(chunks) >= 6
    rng = random.Random(9)
    cuts = {len(data)}
    for start, end, _keys in chunks[-3:]:   # around every record boundary of the last chunks ...
        cuts |= {start - 1, start, start + 1, end - 1, end, end + 1, end + 12, (start + end) // 2}
    cuts |= {rng.randrange(chunks[0][0], len(data)) for _ in range(8)}   # ... and anywhere
    bags = {}
    for cut in sorted(c for c in cuts if c <= len(data)):
        bag = tmp_path / f"cut_{cut}"
        bag.mkdir()
        (bag / f"cut_{cut}_0.mcap").write_bytes(data[:cut])
        s = TransitionStore(bag)      # repairs
        assert any("not closed by its writer" in p for p in s.problems), s.problems
        s.close()
        want = sorted(k for _start, end, keys in chunks if end <= cut for k in keys)
        for name, got in (("mcap", mcap_keys(bag)), ("rosbags", rosbags_keys(bag))):
            assert sorted(got) == want, f"cut at {cut}: {name} reads {len(got)} messages, expected {len(want)}"
        (path,) = bag.glob("*.mcap")
        assert not mf.check_index(path), f"cut at {cut}: {mf.check_index(path)}"
        bags[str(path)] = want
    for path, got in foxglove_read([Path(p) for p in bags]).items():   # one Node run for every file
        assert sorted(got) == bags[path], f"{path}: @mcap/core reads {got!r:.200}, expected {len(bags[path])}"


def _repair_as_release_0_did(bag: Path, path: Path) -> None:
    """Give ``path`` the summary the first release's repair wrote (chunk indexes naming no message
    index) and list it as checked in a version 1 index, as that release left bags after a crash."""
    res = mf.scan(path)
    for ch in res.chunks:
        ch.index_offsets, ch.end = {}, ch.start + ch.length
    with open(path, "r+b") as f:
        f.truncate(res.valid_end)
        f.seek(res.valid_end)
        mf._write_summary_of(f, res, res.chunks)
    with np.load(bag / INDEX_NAME) as z:
        cols = {k: z[k] for k in z.files}
    meta = json.loads(bytes(cols["meta"]).decode())
    meta["version"] = 1
    st = path.stat()
    for fe in meta["files"]:
        if fe["name"] == path.name:
            fe["size"], fe["mtime_ns"] = st.st_size, st.st_mtime_ns
    cols["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(bag / INDEX_NAME, "wb") as f:
        np.savez(f, **cols)


def test_files_repaired_by_the_first_release_are_reported_and_fixed_when_the_bag_is_reopened(tmp_path):
    bag = tmp_path / "old"
    fill(bag, robots=("franka_0",), episodes=4, steps=10, split_bytes=60_000, chunk_bytes=20_000).close()
    files = sorted(bag.glob("*.mcap"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert len(files) >= 2
    total = len(store_rows := TransitionStore(bag, writable=False))
    store_rows.close()
    _repair_as_release_0_did(bag, files[0])
    # What users met: indexed readers refuse or skip the file, the metadata still counts it.
    fox = foxglove_read(files)
    assert "chunk index without message indexes" in str(fox[str(files[0])]), fox[str(files[0])]
    with pytest.raises(AssertionError, match="metadata.yaml counts"):
        rosbags_keys(bag)
    problem = mf.check_index(files[0])
    assert problem and str(files[0]) in problem[0] and "indexed readers" in problem[0], problem
    assert not mf.check_index(files[1])
    ro = bag_tools.open_bag(bag)        # userctl bag info names the file
    try:
        text = bag_tools.format_info(bag_tools.bag_summary(ro))
    finally:
        ro.close()
    assert f"{files[0]}: " in text and "chunk indexes are incomplete" in text, text
    found, n = bag_tools.repair_bag(bag)   # = opening for writing, as the learner and buffer node do
    assert n == total and any(str(files[0]) in f and "rewrote" in f for f in found), found
    assert sorted(assert_every_reader_sees_the_store(bag)) == sorted(
        ("franka_0", e, st) for e in range(1, 5) for st in range(10))
    assert bag_tools.repair_bag(bag) == ([], total), "a second repair finds nothing"


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


def test_an_uncompressed_bag_reopened_with_the_default_keeps_reading_and_appends_compressed_files(tmp_path):
    bag = tmp_path / "mixed"
    fill(bag, robots=("franka_0",), episodes=2, steps=10, compression="none").close()   # as before this release
    s = TransitionStore(bag)                                                            # the default: zstd
    assert s.opts.compression == "zstd" and len(s) == 20
    for b in episode_bytes("franka_0", 3, 10, cams=CAMS, size=24):
        s.add(b)
    s.close()
    files = sorted(bag.glob("*.mcap"))
    assert len(files) == 2
    kinds = []
    for f in files:
        with open(f, "rb") as fh:
            kinds.append({ci.compression for ci in mf.read_summary(fh, f.stat().st_size).chunk_indexes})
    assert kinds == [{""}, {"zstd"}], kinds
    ro = TransitionStore(bag, writable=False)
    try:
        for row in range(len(ro)):
            m = deserialize_message(ro.read(row), Transition)
            assert same(m, transition_msg(m.robot_id, m.episode_id, m.step, cams=CAMS, size=24, last=m.step == 9))
    finally:
        ro.close()
    assert len(assert_every_reader_sees_the_store(bag)) == 30


def test_bad_storage_options_are_refused_by_name():
    with pytest.raises(ValueError, match="compression must be zstd, lz4 or none, got 'gzip'"):
        StoreOptions(compression="gzip")
    with pytest.raises(ValueError, match="chunk_bytes must be > 0, got 0"):
        StoreOptions(chunk_bytes=0)


def test_a_file_cut_before_its_header_was_whole_is_removed_and_one_cut_after_it_is_closed(tmp_path):
    bag = tmp_path / "b"
    fill(bag, robots=("franka_0",), episodes=2, steps=5).close()
    (good,) = bag.glob("*.mcap")
    data = good.read_bytes()
    header_end = 8 + 9 + int.from_bytes(data[9:17], "little")
    victim = bag / "b_1.mcap"    # the next file of a writer killed right after creating it
    for cut in (0, 3, 8, 12, header_end - 1):
        victim.write_bytes(data[:cut])
        ro = TransitionStore(bag, writable=False)
        assert any(f"{victim}: cut before its MCAP header" in p and "skipped" in p for p in ro.problems), ro.problems
        ro.close()
        s = TransitionStore(bag)
        assert not victim.exists() and any(f"{victim}: cut before" in p and "removed" in p for p in s.problems)
        assert len(s) == 10
        s.close()
        assert len(assert_every_reader_sees_the_store(bag)) == 10, f"cut at {cut}"
    victim.write_bytes(data[:header_end])   # a whole header and nothing else: closed as an empty file
    s = TransitionStore(bag)
    assert victim.exists() and any(f"{victim}: not closed by its writer" in p for p in s.problems), s.problems
    s.close()
    assert not mf.check_index(victim)
    assert len(assert_every_reader_sees_the_store(bag)) == 10


def test_bags_written_before_and_after_reward_source(tmp_path, monkeypatch):
    """A bag of the layout before Transition.reward_source (its schema and bytes without the field) and one
    after: every reader reads both, and the fast decoder gives the rule (0) for the old one."""
    from user_buffer import rosbag2

    new_def = rosbag2.message_definition("user_msgs/msg/Transition")
    head, sep, rest = new_def.partition("# Who decided reward and success")
    assert sep and "uint8 reward_source\n" in rest
    old_def = head + rest.split("uint8 reward_source\n", 1)[1]
    assert "reward_source" not in old_def and "MSG: sensor_msgs/Image" in old_def
    for layout, source in (("old", Transition.REWARD_RULE), ("new", Transition.REWARD_CLASSIFIER)):
        bag = tmp_path / layout
        with monkeypatch.context() as m:
            if layout == "old":
                m.setattr(rosbag2, "message_definition", lambda _type: old_def)
            s = TransitionStore(bag)
            for step in range(5):
                msg = transition_msg("franka_0", 1, step, cams=CAMS, size=8, last=step == 4)
                msg.reward_source = source
                raw = bytes(serialize_message(msg))
                s.add(raw[:-1] if layout == "old" else raw)
            s.close()
        assert sorted(assert_every_reader_sees_the_store(bag)) == [("franka_0", 1, st) for st in range(5)]
        got = [getattr(msg, "reward_source", "absent") for _conn, msg in rosbags_messages(bag)]
        assert got == (["absent"] * 5 if layout == "old" else [source] * 5), (layout, got)
        store = TransitionStore(bag, writable=False)
        try:
            views = [decode_transition(store.read(row)) for row in range(len(store))]
        finally:
            store.close()
        assert [v.reward_source for v in views] == [source] * 5
        assert [v.step for v in views] == list(range(5)) and views[-1].terminated
