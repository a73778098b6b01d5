"""PersistentReplay: cache bounds and eviction, sampling distribution, windows, filters, demos, seeds."""
from __future__ import annotations

import time

import numpy as np
import pytest

from buffer_helpers import transition_bytes, transition_msg
from user_buffer.replay import Layout, PersistentReplay
from user_buffer.store import TransitionStore

STATE = Layout(state_dim=20)
IMAGES = Layout(state_dim=20, cameras=("wrist", "side"), image_size=(24, 24))


def reward_id(robot: str, episode: int, step: int) -> float:
    """Each transition's reward identifies it in a batch."""
    return float(1000 * episode + step + (0.5 if robot == "franka_1" else 0.0))


def add_all(rep: PersistentReplay, robot="franka_0", episodes=(1,), steps=10, cams=(), size=24, emb="franka_fr3"):
    for ep in episodes:
        for s in range(steps):
            rep.add(transition_bytes(robot, ep, s, cams=cams, size=size, last=s == steps - 1, embodiment=emb,
                                     reward=reward_id(robot, ep, s)))


def replay(tmp_path, name="bag", layout=STATE, **kw) -> PersistentReplay:
    kw.setdefault("prefetch", 0)
    return PersistentReplay(TransitionStore(tmp_path / name), layout, **kw)


def test_batches_hold_exactly_the_stored_pixels_and_states(tmp_path):
    rep = replay(tmp_path, layout=IMAGES, cache_bytes=0, seed=1)   # every sample comes from disk
    add_all(rep, episodes=(1, 2), steps=8, cams=("side", "wrist"))
    b = rep.sample(32)
    assert b["pixels"].shape == (32, 2, 24, 24, 3) and b["state"].shape == (32, 20)
    for i in range(32):
        ep, step = divmod(int(b["reward"][i]), 1000)
        ref = transition_msg("franka_0", ep, step, cams=("side", "wrist"), size=24)
        # layout order (wrist, side) differs from the message order (side, wrist)
        wrist = np.frombuffer(bytes(ref.obs.images[1].data), np.uint8).reshape(24, 24, 3)
        side_next = np.frombuffer(bytes(ref.next_obs.images[0].data), np.uint8).reshape(24, 24, 3)
        assert np.array_equal(b["pixels"][i, 0], wrist)
        assert np.array_equal(b["next_pixels"][i, 1], side_next)
        assert np.allclose(b["state"][i], np.asarray(ref.obs.proprio, np.float32))
        assert b["terminated"][i] == float(step == 7)
    rep.close()


def test_cache_is_bounded_by_bytes_and_keeps_the_newest(tmp_path):
    per = IMAGES.bytes_per_transition()
    rep = replay(tmp_path, layout=IMAGES, cache_bytes=10 * per, window=10)
    add_all(rep, episodes=(1, 2, 3), steps=10, cams=("wrist", "side"))
    cache = rep.online.cache
    assert cache.slots == 10 and cache.nbytes <= 10 * per
    assert sorted(cache.slot_row.tolist()) == list(range(20, 30)), "the newest 10 rows stay cached"
    for _ in range(5):
        rep.sample(64)
    st = rep.stats()
    assert st["cache_hit_rate"] == 1.0, "a window that fits the cache never touches the disk"
    assert st["size"] == 30 and st["cache_rows"] == 10
    rep.window = 0
    for _ in range(5):
        rep.sample(64)
    assert rep.stats()["cache_hit_rate"] < 0.9, "uniform sampling over 3x the cache must miss"
    rep.close()


def test_uniform_sampling_is_uniform_and_a_window_only_draws_the_newest(tmp_path):
    rep = replay(tmp_path, cache_bytes=1 << 20, seed=3)
    add_all(rep, episodes=range(1, 6), steps=10)        # 50 transitions
    counts = {}
    n_batches, bs = 200, 256
    for _ in range(n_batches):
        for r in rep.sample(bs)["reward"]:
            counts[float(r)] = counts.get(float(r), 0) + 1
    assert len(counts) == 50
    expected = n_batches * bs / 50
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 100, f"chi-square {chi2:.1f} with 49 degrees of freedom: not uniform"  # p < 1e-4 if it fails
    rep.window = 10
    newest = {reward_id("franka_0", 5, s) for s in range(10)}
    assert set(rep.sample(512)["reward"].tolist()) <= newest
    rep.close()


def test_filters_by_robot_and_embodiment(tmp_path):
    store = TransitionStore(tmp_path / "bag")
    rep = PersistentReplay(store, STATE, prefetch=0, robots=["franka_1"])
    add_all(rep, robot="franka_0", episodes=(1,))
    add_all(rep, robot="franka_1", episodes=(1,))
    assert len(rep) == 10 and len(store) == 20, "everything is stored; only franka_1 is eligible"
    assert all(r % 1 == 0.5 for r in rep.sample(100)["reward"])
    rep.close()
    store = TransitionStore(tmp_path / "bag")   # reopened: the filter applies to what is on disk
    rep = PersistentReplay(store, STATE, prefetch=0, embodiments=["arx_6dof"])
    add_all(rep, robot="arx_0", episodes=(1,), emb="arx_6dof")
    assert len(rep) == 10
    rep.close()


def test_demo_mixing_ratio(tmp_path):
    demos = TransitionStore(tmp_path / "demos")
    for s in range(10):
        demos.add(transition_bytes("franka_1", 7, s, reward=-1.0, last=s == 9))
    demos.close()
    rep = PersistentReplay(TransitionStore(tmp_path / "online"), STATE, prefetch=0,
                           demos=TransitionStore(tmp_path / "demos", writable=False), demo_ratio=0.5, seed=0)
    add_all(rep, episodes=(1, 2))
    for _ in range(10):
        b = rep.sample(256)
        assert int((b["reward"] == -1.0).sum()) == 128
    assert len(rep) == 20 and rep.stats()["demos"] == 10
    rep.close()
    with pytest.raises(ValueError, match="demo store"):
        PersistentReplay(TransitionStore(tmp_path / "x"), STATE, demo_ratio=0.5)


def test_demonstrations_of_another_robot_id_still_make_their_share_of_every_batch(tmp_path):
    demos = TransitionStore(tmp_path / "demos")
    for s in range(10):   # recorded by the scripted expert under its own id
        demos.add(transition_bytes("teacher", 7, s, reward=-1.0, last=s == 9))
    demos.close()
    rep = PersistentReplay(TransitionStore(tmp_path / "online"), STATE, prefetch=0, robots=["franka_0"],
                           demos=TransitionStore(tmp_path / "demos", writable=False), demo_ratio=0.5, seed=0)
    add_all(rep, episodes=(1, 2))
    b = rep.sample(64)
    assert int((b["reward"] == -1.0).sum()) == 32, "robots= filters the online data, not the demonstrations"
    rep.close()


def test_an_empty_demo_bag_is_an_error_naming_it(tmp_path):
    TransitionStore(tmp_path / "empty").close()
    with pytest.raises(ValueError, match=f"demo bag {tmp_path / 'empty'} holds no transitions; demo_ratio 0.5"):
        PersistentReplay(TransitionStore(tmp_path / "online"), STATE,
                         demos=TransitionStore(tmp_path / "empty", writable=False), demo_ratio=0.5)


def test_human_steps_also_go_to_the_intervention_bag_and_fill_the_non_demo_share(tmp_path):
    demos = TransitionStore(tmp_path / "demos")
    for s in range(10):
        demos.add(transition_bytes("teacher", 7, s, reward=-1.0, last=s == 9))
    demos.close()

    def open_replay():
        return PersistentReplay(TransitionStore(tmp_path / "online"), STATE, prefetch=0, seed=0,
                                demos=TransitionStore(tmp_path / "demos", writable=False), demo_ratio=0.5,
                                interventions=TransitionStore(tmp_path / "interventions"))

    rep = open_replay()
    add_all(rep, episodes=(1,))
    # no intervention yet: the whole batch comes from the demonstrations
    assert set(rep.sample(64)["reward"].tolist()) == {-1.0}
    human = {(2, s) for s in range(3, 7)}
    for s in range(10):
        rep.add(transition_bytes("franka_0", 2, s, last=s == 9, intervened=(2, s) in human,
                                 reward=reward_id("franka_0", 2, s)))
    assert len(rep) == 20 and rep.stats()["interventions"] == 4
    b = rep.sample(256)
    assert int((b["reward"] == -1.0).sum()) == 128
    assert set(b["reward"][b["reward"] != -1.0].tolist()) == {reward_id("franka_0", *k) for k in human}
    assert sorted(rep.take_durable()) == sorted(("franka_0", e, s) for e in (1, 2) for s in range(10))
    rep.close()
    # persistent: a reopened replay still draws from the human steps, and a resend is not stored twice
    bag = TransitionStore(tmp_path / "interventions", writable=False)
    v = bag.snapshot()
    assert sorted(zip(v["episode"].tolist(), v["step"].tolist())) == sorted(human)
    bag.close()
    rep = open_replay()
    assert not rep.add(transition_bytes("franka_0", 2, 4, intervened=True, reward=reward_id("franka_0", 2, 4)))
    assert rep.stats()["interventions"] == 4
    assert set(rep.sample(64)["reward"].tolist()) - {-1.0} <= {reward_id("franka_0", *k) for k in human}
    rep.close()


def test_same_seed_same_batches_with_prefetching(tmp_path):
    rep = replay(tmp_path, seed=0)
    add_all(rep, episodes=range(1, 4))
    rep.close()
    runs = []
    for seed in (11, 11, 12):
        r = PersistentReplay(TransitionStore(tmp_path / "bag", writable=False), STATE, seed=seed, prefetch=3,
                             batch_size=64, cache_bytes=1 << 20)
        runs.append([r.sample(64)["reward"].copy() for _ in range(5)])
        r.close()
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_reopened_replay_warms_its_cache_from_disk(tmp_path):
    rep = replay(tmp_path, layout=IMAGES, cache_bytes=8 * IMAGES.bytes_per_transition())
    add_all(rep, episodes=(1, 2), steps=10, cams=("wrist", "side"))
    rep.close()
    rep = replay(tmp_path, layout=IMAGES, cache_bytes=8 * IMAGES.bytes_per_transition(), window=8)
    deadline = time.monotonic() + 10
    while rep.stats()["cache_rows"] < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rep.stats()["cache_rows"] == 8
    assert set(rep.sample(64)["reward"].tolist()) <= {reward_id("franka_0", 2, s) for s in range(2, 10)}
    assert rep.stats()["cache_hit_rate"] == 1.0
    rep.close()


def test_duplicates_are_stored_once_and_acknowledged(tmp_path):
    rep = replay(tmp_path)
    add_all(rep, episodes=(1,), steps=5)
    assert not rep.add(transition_bytes("franka_0", 1, 3, reward=reward_id("franka_0", 1, 3)))
    assert len(rep) == 5 and rep.stats()["duplicates"] == 1
    # every stored transition once, and the resent copy again: its robot resends until acknowledged
    assert sorted(rep.take_durable()) == sorted([("franka_0", 1, s) for s in range(5)] + [("franka_0", 1, 3)])
    rep.close()


def test_batches_carry_the_requested_extras_from_cache_and_disk(tmp_path):
    layout = Layout(state_dim=STATE.state_dim, extras=("intervened", "policy_version", "robot_id", "embodiment"))
    rep = replay(tmp_path, layout=layout, cache_bytes=5 * layout.bytes_per_transition())   # most rows from disk
    add_all(rep, robot="ur5_0", episodes=(1, 2), emb="ur5e")
    b = rep.sample(64)
    assert set(b["robot_id"]) == {"ur5_0"} and set(b["embodiment"]) == {"ur5e"}
    assert b["policy_version"].dtype == np.int64 and set(b["policy_version"].tolist()) <= set(range(10))
    assert rep.misses > 0, "some rows must have come from disk"
    rep.close()
