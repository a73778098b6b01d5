"""The robot's outbox: held until every consumer acknowledges, resent when due, bounded in bytes."""
import pytest

from user_hal.core.outbox import Outbox


def test_entries_are_released_only_when_every_consumer_acked():
    box = Outbox(["learner", "buffer"], max_bytes=10_000)
    for step in range(5):
        box.add((1, step), f"t{step}", 100, now=0.0)
    assert len(box) == 5 and box.bytes == 500
    assert box.ack("learner", [(1, 0), (1, 1)]) == 0  # the buffer still needs them
    assert box.ack("buffer", [(1, 0)]) == 1
    assert len(box) == 4 and box.bytes == 400
    assert box.ack("stranger", [(1, 1)]) == 0
    assert box.ack("buffer", [(1, 1), (1, 9)]) == 1  # unknown keys are ignored


def test_due_returns_oldest_unacked_after_the_resend_delay_and_marks_them_sent():
    box = Outbox(["learner"], max_bytes=10_000, resend_after=2.0)
    for step in range(4):
        box.add((1, step), step, 10, now=float(step))
    assert box.due(now=2.5, limit=10) == [0]        # only entry 0 is 2 s old
    assert box.due(now=2.6, limit=10) == []          # it was just resent
    assert box.due(now=5.0, limit=2) == [0, 1]       # oldest first, limited
    assert box.resent == 3


def test_overflow_drops_the_oldest_and_counts_it():
    box = Outbox(["learner"], max_bytes=250)
    for step in range(4):
        box.add((1, step), step, 100, now=0.0)
    assert len(box) == 2 and box.dropped == 2
    assert box.due(now=10.0, limit=10) == [2, 3]


def test_needs_a_consumer():
    with pytest.raises(ValueError):
        Outbox([], max_bytes=1)


def test_due_with_a_filter_resends_only_what_it_accepts_and_keeps_the_rest_due():
    """The robot node keeps (namespace, transition) and resends an entry only on its own job's namespace."""
    box = Outbox(["learner"], max_bytes=10_000, resend_after=1.0)
    box.add((1, 0), ("/user/jobs/a", "t0"), 10, now=0.0)
    box.add((2, 0), ("/user/jobs/b", "t1"), 10, now=0.0)
    assert box.due(now=5.0, limit=10, where=lambda m: m[0] == "/user/jobs/b") == [("/user/jobs/b", "t1")]
    assert box.due(now=5.0, limit=10) == [("/user/jobs/a", "t0")], "the skipped entry is still due"


def _spool(tmp_path, max_bytes=1 << 20):
    from user_hal.core.outbox import Spool

    return Spool(tmp_path / "spool" / "franka_0.bin", lambda m: m.encode(), lambda b: b.decode(), max_bytes)


def test_past_its_ram_budget_the_outbox_spools_to_disk_and_resends_from_there(tmp_path):
    spool = _spool(tmp_path)
    box = Outbox(["learner", "buffer"], max_bytes=250, resend_after=2.0, spool=spool)
    for step in range(6):
        box.add((1, step), f"t{step}", 100, now=float(step))
    assert len(box) == 6 and box.dropped == 0 and box.spooled == 4 and box.bytes == 200
    assert spool.file_bytes == spool.held_bytes == 8   # "t0".."t3" on disk
    # oldest first, the spooled ones read back from the file; the skipped stays due
    assert box.due(now=10.0, limit=3, where=lambda m: m != "t1") == ["t0", "t2", "t3"]
    assert box.due(now=10.5, limit=10) == ["t1", "t4", "t5"]   # the limit had held back the RAM ones
    assert box.due(now=20.0, limit=10) == ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert box.ack("learner", [(1, s) for s in range(6)]) == 0   # the buffer still needs them
    assert box.ack("buffer", [(1, 0), (1, 4)]) == 2
    assert len(box) == 4 and box.spooled == 3
    assert box.ack("buffer", [(1, 1), (1, 2), (1, 3)]) == 3
    assert box.spooled == 0 and spool.path.stat().st_size == 0, "an empty spool truncates its file"
    box.add((2, 0), "u0", 100, now=30.0)
    box.add((2, 1), "u1", 100, now=30.0)
    assert box.spooled == 1 and box.due(now=40.0, limit=1) == ["t5"]
    spool.close()
    assert not spool.path.exists()


def test_past_the_spool_budget_the_oldest_are_dropped_and_counted(tmp_path):
    spool = _spool(tmp_path, max_bytes=5)   # room for two 2-byte entries
    box = Outbox(["learner"], max_bytes=100, spool=spool)
    for step in range(6):
        box.add((1, step), f"t{step}", 100, now=0.0)
    assert box.dropped == 3 and box.spooled == 2 and len(box) == 3
    assert box.due(now=10.0, limit=10) == ["t3", "t4", "t5"]


def test_a_spool_with_holes_is_compacted(tmp_path):
    from user_hal.core.outbox import Spool

    spool = Spool(tmp_path / "s.bin", lambda m: m, lambda b: b, max_bytes=2_100_000)
    box = Outbox(["learner"], max_bytes=0, spool=spool)   # no RAM at all: everything but the newest spools
    blob = bytes(100_000)
    for step in range(45):
        box.add((1, step), blob + bytes([step]), len(blob), now=0.0)
        if step < 25:
            box.ack("learner", [(1, step)])   # acknowledged at once: holes in the file
    assert box.dropped == 0
    assert spool.file_bytes <= 2_100_000, f"holes must be compacted away ({spool.file_bytes} bytes)"
    assert [m[-1] for m in box.due(now=10.0, limit=100)] == list(range(25, 45))


def test_spools_of_dead_robot_nodes_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from user_hal.robot_io import remove_stale_spools

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"franka_0-{dead.stdout.strip()}.bin"
    live = tmp_path / f"franka_0-{os.getppid()}.bin"
    other = tmp_path / f"franka_1-{dead.stdout.strip()}.bin"
    for f in (stale, live, other):
        f.write_bytes(b"x")
    assert remove_stale_spools(tmp_path, "franka_0") == [stale]
    assert not stale.exists() and live.exists() and other.exists()
