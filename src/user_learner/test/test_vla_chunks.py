"""Action-chunk sampling in both replays: a row's next H actions of its own episode, masked after the
episode's end, with the action source of every step."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message

from user_buffer.codec import decode_transition
from user_buffer.replay import Layout, PersistentReplay, chunk_arrays
from user_buffer.store import TransitionStore
from user_learner.replay import MemoryReplay

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "user_buffer" / "test"))
from buffer_helpers import STATE_DIM, transition_msg  # noqa: E402

LAYOUT = Layout(state_dim=STATE_DIM, extras=("action_source",))
H = 4
EPISODES = {("franka_0", 1): 6, ("franka_1", 1): 3, ("franka_0", 2): 5}   # steps per episode


def code(robot: str, episode: int, step: int) -> float:
    """The first action value of a step: says which step it is."""
    return (int(robot[-1]) * 100 + episode * 10 + step) / 1000.0


def transitions():
    """The episodes' steps, robots interleaved as they arrive at a learner."""
    out = []
    for step in range(6):
        for (robot, episode), n in EPISODES.items():
            if step < n:
                t = transition_msg(robot, episode, step, last=step == n - 1)
                t.action = [code(robot, episode, step)] + [0.0] * 6
                t.action_source = 2 if step != 2 else 1   # scripted, a human at step 2
                data = bytes(serialize_message(t))
                out.append((data, decode_transition(data)))
    return out


def check(batch: dict[str, np.ndarray]) -> int:
    """Every row's chunk is its episode's next steps; returns how many rows reached their episode's end."""
    ends = 0
    for i in range(len(batch["action"])):
        a0 = float(batch["action"][i, 0])
        key = round(a0 * 1000)
        robot, episode, step = f"franka_{key // 100}", key // 10 % 10, key % 10
        n = EPISODES[(robot, episode)]
        real = min(H, n - step)
        assert batch["chunk_mask"][i].tolist() == [1.0] * real + [0.0] * (H - real), (robot, episode, step)
        want = [code(robot, episode, min(step + k, n - 1)) for k in range(H)]   # padded with the last step
        assert np.allclose(batch["action_chunk"][i, :, 0], want), (robot, episode, step)
        assert batch["chunk_source"][i, :real].tolist() == [1 if step + k == 2 else 2 for k in range(real)]
        ends += real < H
    return ends


def test_memory_replay_samples_chunks_within_episodes():
    rep = MemoryReplay(LAYOUT, capacity=64, seed=1, checkpointed=False)
    for data, t in transitions():
        rep.add(data, t)
    assert "action_chunk" not in rep.sample(4), "chunks only on request"
    rep.set_chunk(H)
    batch = rep.sample(256)
    assert batch["action_chunk"].shape == (256, H, 7) and batch["chunk_mask"].dtype == np.float32
    assert check(batch) > 0, "no sampled row was near an episode's end"


def test_bag_replay_samples_chunks_within_episodes(tmp_path):
    store = TransitionStore(tmp_path / "bag")
    rep = PersistentReplay(store, LAYOUT, prefetch=0, cache_bytes=5 * LAYOUT.bytes_per_transition(), seed=2)
    try:
        for data, t in transitions():
            rep.add(data, t)
        rep.set_chunk(H)
        batch = rep.sample(256)   # most later steps are not cached: decoded from the bag
        assert batch["action_chunk"].shape == (256, H, 7)
        assert check(batch) > 0
    finally:
        rep.close()


def test_chunk_mask_stops_at_the_first_missing_step():
    actions = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
    out = chunk_arrays(actions, np.array([[True, True, False, True]]))
    assert out["chunk_mask"].tolist() == [[1, 1, 0, 0]]
    assert out["action_chunk"][0, 2:].tolist() == [[3, 4, 5], [3, 4, 5]], "padded with the last real step"
