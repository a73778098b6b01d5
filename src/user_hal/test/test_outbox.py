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
