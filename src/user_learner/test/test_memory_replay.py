"""The in-memory replay behind the learner's one replay interface: storage, duplicates, acknowledgements
that wait for a saved checkpoint, and restoring from one."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from user_buffer.codec import decode_transition
from user_buffer.replay import Layout, LayoutMismatch
from user_learner.replay import MemoryReplay, open_replay

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "user_buffer" / "test"))
from buffer_helpers import STATE_DIM, transition_bytes  # noqa: E402

LAYOUT = Layout(state_dim=STATE_DIM)


def add(rep: MemoryReplay, robot: str, episode: int, step: int) -> bool:
    data = transition_bytes(robot, episode, step, reward=float(100 * episode + step))
    return rep.add(data, decode_transition(data))


def test_acknowledged_once_a_saved_checkpoint_holds_it():
    rep = MemoryReplay(LAYOUT, capacity=16)
    for s in range(3):
        assert add(rep, "franka_0", 1, s)
    assert rep.take_durable() == [], "nothing is safe before a checkpoint holds it"
    state = rep.checkpoint()
    assert add(rep, "franka_0", 1, 3)          # arrives while the checkpoint is being written
    assert rep.take_durable() == [], "not before the checkpoint is on disk"
    rep.checkpoint_saved()
    assert rep.take_durable() == [("franka_0", 1, s) for s in range(3)]
    assert int(state["size"]) == 3
    assert not add(rep, "franka_0", 1, 0), "a resent transition is stored once"
    assert rep.take_durable() == [("franka_0", 1, 0)], "... and acknowledged again (the robot resends until then)"
    assert not add(rep, "franka_0", 1, 3)
    assert rep.take_durable() == [], "its first copy is in no saved checkpoint yet"
    assert len(rep) == 4 and rep.stats()["duplicates"] == 2


def test_without_checkpoints_acknowledged_on_receipt():
    rep = MemoryReplay(LAYOUT, capacity=4, checkpointed=False)
    add(rep, "franka_0", 1, 0)
    assert rep.checkpoint() is None and rep.take_durable() == [("franka_0", 1, 0)]


def test_the_ring_overwrites_the_oldest_and_forgets_its_key():
    rep = MemoryReplay(LAYOUT, capacity=3, checkpointed=False)
    for s in range(5):
        add(rep, "franka_0", 1, s)
    assert len(rep) == 3
    assert sorted(rep.sample(64)["reward"].tolist())[0] >= 102.0, "steps 0 and 1 were overwritten"
    assert add(rep, "franka_0", 1, 0), "an overwritten transition is new again"


def test_restore_gives_the_same_contents_and_the_same_batches():
    a = MemoryReplay(LAYOUT, capacity=8, seed=3)
    for s in range(6):
        add(a, "franka_0", 2, s)
    state = a.checkpoint()
    b = MemoryReplay(LAYOUT, capacity=8, seed=99)
    b.restore(state)
    assert len(b) == 6
    for _ in range(3):
        x, y = a.sample(32), b.sample(32)
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not add(b, "franka_0", 2, 5), "restored keys still catch resent transitions"
    with pytest.raises(ValueError, match="replay capacity is 4"):
        MemoryReplay(LAYOUT, capacity=4).restore(state)


def test_a_transition_that_does_not_fit_changes_nothing():
    rep = MemoryReplay(Layout(state_dim=3), capacity=4)
    with pytest.raises(LayoutMismatch, match="proprio has 20 values, layout expects 3"):
        add(rep, "franka_0", 1, 0)
    assert len(rep) == 0 and rep.checkpoint()["size"] == 0


def test_an_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match="replay.kind: must be one of memory, bag, remote, got 's3'"):
        open_replay("s3")


def test_a_batch_carries_the_extras_an_algorithm_asks_for_and_a_checkpoint_keeps_them():
    from user_learner.batch import batch_from_numpy

    layout = Layout(state_dim=STATE_DIM, extras=("intervened", "action_source", "robot_id", "embodiment"))
    rep = MemoryReplay(layout, capacity=8, seed=0)
    for s in range(4):
        add(rep, "franka_1", 3, s)
    b = rep.sample(16)
    assert set(b) == set(layout.batch_keys()) and set(b["robot_id"]) == {"franka_1"}
    assert set(b["embodiment"]) == {"franka_fr3"} and b["action_source"].dtype == np.uint8
    t = batch_from_numpy(b)
    assert t["intervened"].dtype.is_floating_point and list(t["robot_id"]) == list(b["robot_id"])
    again = MemoryReplay(layout, capacity=8, seed=0)
    again.restore(rep.checkpoint())
    assert set(again.sample(8)["robot_id"]) == {"franka_1"}
    with pytest.raises(ValueError, match="extras: unknown batch keys"):
        Layout(state_dim=3, extras=("color",)).validate()


def test_a_mixed_layout_keeps_each_body_on_the_common_row_with_its_embodiment():
    """With several embodiments a row holds the body's raw proprio on the common row (0 where it has no
    value) and the embodiment; a transition of a body the config does not know is refused."""
    from user_common.embodiments import EmbodimentLayout, EmbodimentMap
    from rclpy.serialization import serialize_message

    from buffer_helpers import transition_msg

    names = [f"p{i}" for i in range(STATE_DIM)]
    emb = EmbodimentMap({"franka_fr3": EmbodimentLayout(proprio=tuple(names)),
                         "wxai": EmbodimentLayout(proprio=tuple(names[:14]))})
    layout = Layout(state_dim=emb.stored_dim, embodiments=emb, extras=("embodiment",))
    rep = MemoryReplay(layout, capacity=4, checkpointed=False)
    franka = transition_msg("franka_0", 1, 0)
    wxai = transition_msg("wxai_0", 1, 0, embodiment="wxai")
    wxai.obs.proprio, wxai.next_obs.proprio = wxai.obs.proprio[:14], wxai.next_obs.proprio[:14]
    for t in (franka, wxai):
        data = bytes(serialize_message(t))
        assert rep.add(data, decode_transition(data))
    batch = {k: v[: len(rep)] for k, v in rep.arrays.items()}
    assert batch["embodiment"].tolist() == ["franka_fr3", "wxai"]
    assert np.allclose(batch["state"][0], franka.obs.proprio)
    assert np.allclose(batch["state"][1, :14], wxai.obs.proprio) and not batch["state"][1, 14:].any()
    assert np.allclose(batch["next_state"][1, :14], wxai.next_obs.proprio)
    ur5 = bytes(serialize_message(transition_msg("ur5_0", 1, 0, embodiment="ur5")))
    with pytest.raises(LayoutMismatch, match="ur5_0: embodiment 'ur5' is not in the config"):
        rep.add(ur5, decode_transition(ur5))
    with pytest.raises(ValueError, match="state_dim: is 20, the embodiments' common row has 21"):
        Layout(state_dim=20, embodiments=EmbodimentMap({"a": EmbodimentLayout(proprio=tuple(names + ["q"]))})).validate()
