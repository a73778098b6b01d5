"""The success classifier (user_learner.reward): a small recorded set (real MuJoCo frames, rule labels)
trains to a clearly-better-than-chance classifier on held-out episodes; bags in, a saved model out."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from user_msgs.msg import Observation, Transition

from user_learner.reward import (Frames, RewardDataError, RewardModel, TrainConfig, frames_from_bags, metrics,
                                 shrink, split_episodes, train)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def recorded() -> Frames:
    """12 episodes of the noisy scripted expert at 64x64 (bench/reward.py's recorder)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import reward as bench_reward
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return bench_reward.record(12, seed=3, log=None, image_size=(64, 64))


def test_a_small_recorded_set_trains_a_useful_classifier(recorded, tmp_path):
    f = recorded
    assert f.images.shape[1:] == (2, 32, 32, 3) and f.cameras == ["wrist", "side"]
    assert 0 < f.labels.sum() < len(f), "both classes were recorded"
    model, m = train(f, TrainConfig(steps=150, batch_size=32, seed=0), log=None)
    tr, val = split_episodes(f, 0.2, seed=0)
    assert m["frames"] == len(val) and not set(tr.episodes.tolist()) & set(val.episodes.tolist())
    majority = max(val.labels.mean(), 1 - val.labels.mean())
    # Chance and the always-"failure" answer score 0 F1; the held-out success frames must be found.
    assert m["f1"] >= 0.6 and m["accuracy"] >= majority, (m, majority)

    loaded = RewardModel.load(model.save(tmp_path / "m"))
    assert (loaded.cameras, loaded.image_size, loaded.downsample, loaded.threshold) == (
        ["wrist", "side"], (64, 64), 2, 0.85)
    assert loaded.info["held_out"]["f1"] == pytest.approx(m["f1"])
    full = np.repeat(np.repeat(val.images[:8], 2, axis=2), 2, axis=3)     # back to 64x64: shrink is exact on it
    np.testing.assert_allclose(loaded.probability(full), model.probability_small(val.images[:8]), atol=1e-6)
    with pytest.raises(ValueError, match=r"expects \[B, 2, 64, 64, 3\]"):
        loaded.probability(full[:, :1])
    assert RewardModel.load(tmp_path / "m", threshold=0.5).threshold == 0.5


def test_metrics_and_shrink():
    m = metrics(np.array([0.9, 0.2, 0.86, 0.84]), np.array([True, False, False, True]), 0.85)
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5, 0.5)
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    assert shrink(img, 2)[0, 0, 0, 0] == (0 + 3 + 12 + 15) // 4
    with pytest.raises(RewardDataError, match="do not divide"):
        shrink(img[:, :3], 2)


def _obs(episode: int, step: int, frame: np.ndarray | None) -> Observation:
    o = Observation(robot_id="franka_0", episode_id=episode, step=step)
    if frame is not None:
        for name, img in zip(("wrist", "side"), frame):
            o.camera_names.append(name)
            o.images.append(Image(height=img.shape[0], width=img.shape[1], encoding="rgb8", step=img.shape[1] * 3,
                                  data=img.tobytes()))
    return o


def test_frames_from_a_bag_are_the_recorded_frames_and_labels(tmp_path):
    """A real MCAP bag of transitions (as the buffer node writes them) -> next_obs frames with success labels."""
    from user_buffer.store import TransitionStore

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 5, 2, 8, 8, 3), dtype=np.uint8)   # episode, step, camera, H, W, 3
    store = TransitionStore(tmp_path / "bag")
    for ep in range(2):
        for step in range(5):
            t = Transition(robot_id="franka_0", embodiment="franka_fr3", episode_id=ep + 1, step=step)
            t.obs, t.next_obs = _obs(ep + 1, step, None), _obs(ep + 1, step + 1, frames[ep, step])
            t.success = t.terminated = ep == 1 and step == 4
            t.truncated = ep == 0 and step == 4
            store.add(bytes(serialize_message(t)))
    store.close()
    f = frames_from_bags([tmp_path / "bag"])
    assert f.cameras == ["wrist", "side"] and f.image_size == (8, 8) and len(f) == 10
    np.testing.assert_array_equal(f.images, shrink(frames.reshape(10, 2, 8, 8, 3), 2))
    assert f.labels.tolist() == [False] * 9 + [True]
    assert f.episodes.tolist() == [0] * 5 + [1] * 5
    with pytest.raises(RewardDataError, match="has no camera 'top'"):
        frames_from_bags([tmp_path / "bag"], cameras=["top"])
    no_success = dataclasses.replace(f, labels=np.zeros(len(f), bool))
    with pytest.raises(RewardDataError, match=r"hold 0 success and \d+ failure frames; both are needed"):
        train(no_success, TrainConfig(steps=1), log=None)
