"""SAC really learns: a 1-D point mass is driven to the origin, and terminal transitions do not bootstrap."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.batch import batch_from_numpy
from user_learner.algos.sac import SACAgent, SACConfig

STEP = 0.1          # metres per unit action
HORIZON = 20        # steps per episode
TOLERANCE = 0.05    # |x| at the end of an evaluation episode counted as success


class PointMass:
    """``n`` independent 1-D point masses: x' = clip(x + 0.1 a), reward -|x'|, 20-step episodes."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.x = rng.uniform(-1, 1, n)
        self.t = 0

    def obs(self) -> np.ndarray:
        return self.x.astype(np.float32)[:, None]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance all masses; returns (next_obs, reward) and starts new episodes at the time limit."""
        self.x = np.clip(self.x + STEP * np.clip(action, -1, 1), -1, 1)
        next_obs, reward = self.obs(), -np.abs(self.x).astype(np.float32)
        self.t += 1
        if self.t == HORIZON:  # a time limit, not a terminal state: these transitions still bootstrap
            self.x, self.t = self.rng.uniform(-1, 1, self.x.shape), 0
        return next_obs, reward


class Replay:
    """A minimal in-test replay buffer of state transitions."""

    def __init__(self, capacity: int) -> None:
        self.data = {k: np.zeros((capacity, 1), np.float32) for k in ("state", "action", "next_state")}
        self.data.update({k: np.zeros(capacity, np.float32) for k in ("reward", "terminated")})
        self.size = 0

    def add(self, state: np.ndarray, action: np.ndarray, reward: np.ndarray, next_state: np.ndarray) -> None:
        n = len(state)
        sl = slice(self.size, self.size + n)
        self.data["state"][sl], self.data["action"][sl, 0] = state, action
        self.data["reward"][sl], self.data["next_state"][sl] = reward, next_state
        self.size += n

    def sample(self, size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size)
        return batch_from_numpy({k: v[idx] for k, v in self.data.items()})


def success_rate(agent: SACAgent, starts: np.ndarray) -> float:
    """Fraction of deterministic episodes from ``starts`` that end within TOLERANCE of the origin."""
    finals = []
    for x in starts:
        for _ in range(HORIZON):
            x = float(np.clip(x + STEP * agent.act(np.array([x], np.float32), None, deterministic=True)[0], -1, 1))
        finals.append(abs(x))
    return float(np.mean(np.array(finals) < TOLERANCE))


def test_sac_drives_point_mass_to_origin():
    cfg = SACConfig(hidden_dims=(64, 64), batch_size=128, seed=0)
    agent = SACAgent(Features(state_dim=1, action_dim=1), cfg)
    rng = np.random.default_rng(0)
    env, replay = PointMass(8, rng), Replay(40_000)
    eval_starts = np.random.default_rng(1).uniform(-1, 1, 50)
    history: list[tuple[int, float]] = []
    start = time.perf_counter()
    while agent.num_updates < 3000:
        obs = env.obs()
        if replay.size < 400:
            action = rng.uniform(-1, 1, len(obs))
        else:
            action = np.array([agent.act(o, None, deterministic=False)[0] for o in obs])
        assert np.all(np.abs(action) <= 1.0), "actions must lie in [-1, 1]"
        next_obs, reward = env.step(action)
        replay.add(obs, action, reward, next_obs)
        if replay.size >= 400:
            for _ in range(2):
                metrics = agent.update(replay.sample(cfg.batch_size, rng))
            assert np.isfinite(metrics["critic_loss"]), f"critic loss diverged: {metrics}"
            if agent.num_updates % 250 == 0 and agent.num_updates >= 500:
                history.append((agent.num_updates, success_rate(agent, eval_starts)))
                if history[-1][1] >= 0.9:
                    break
    elapsed = time.perf_counter() - start
    print(f"point mass: success {history[-1][1]:.2f} after {agent.num_updates} updates, {elapsed:.1f} s; "
          f"history {history}")
    assert history[-1][1] >= 0.9, f"SAC did not learn the point mass in 3000 updates: (updates, success) {history}"


@pytest.mark.parametrize("terminated, expected_q", [(1.0, 1.0), (0.0, 1.0 / (1.0 - 0.5))])
def test_terminal_transitions_do_not_bootstrap(terminated, expected_q):
    # Constant reward 1 everywhere: Q converges to 1 if every transition is terminal,
    # and to 1 / (1 - discount) if none is.
    cfg = SACConfig(hidden_dims=(32, 32), discount=0.5, critic_lr=3e-3, tau=0.05, seed=0)
    agent = SACAgent(Features(state_dim=2, action_dim=1), cfg)
    rng = np.random.default_rng(0)
    n = 64
    batch = batch_from_numpy({
        "state": rng.uniform(-1, 1, (n, 2)), "next_state": rng.uniform(-1, 1, (n, 2)),
        "action": rng.uniform(-1, 1, (n, 1)), "reward": np.ones(n), "terminated": np.full(n, terminated)})
    for _ in range(250):
        metrics = agent.update(batch)
    assert metrics["q_mean"] == pytest.approx(expected_q, abs=0.1), (
        f"terminated={terminated}: Q should converge to {expected_q}, got {metrics['q_mean']:.3f}")


def test_redq_subsample_and_entropy_backup_run():
    cfg = SACConfig(hidden_dims=(32,), critic_ensemble=5, critic_subsample=2, backup_entropy=True,
                    critic_actor_ratio=1)
    agent = SACAgent(Features(state_dim=3, action_dim=2), cfg)
    rng = np.random.default_rng(0)
    batch = batch_from_numpy({
        "state": rng.standard_normal((16, 3)), "next_state": rng.standard_normal((16, 3)),
        "action": rng.uniform(-1, 1, (16, 2)), "reward": rng.standard_normal(16), "terminated": np.zeros(16)})
    metrics = agent.update(batch)
    assert agent.num_updates == 1
    assert all(np.isfinite(v) for v in metrics.values()), f"non-finite metric: {metrics}"
    assert agent.critic(None, batch["state"], batch["action"]).shape == (5, 16), "one Q row per ensemble head"


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="critic_subsample"):
        SACAgent(Features(state_dim=3, action_dim=2), SACConfig(critic_ensemble=2, critic_subsample=3))
    with pytest.raises(ValueError, match="discount"):
        SACConfig(discount=1.5).validate()
