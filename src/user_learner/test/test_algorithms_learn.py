"""Every registered algorithm learns a tiny task, seeded, in seconds: a 1-D point mass driven to the
origin. Acting goes through the algorithm's policy, reloaded from the agent's weights as weight sync
does; an algorithm that learns from demonstrations gets half of every batch from an expert's."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.algos import algorithm_names, get_algorithm
from user_learner.batch import batch_from_numpy

STEP = 0.1          # metres per unit action
HORIZON = 20        # steps per episode
TOLERANCE = 0.05    # |x| at the end of an evaluation episode counted as success
SPEC = Features(state_dim=1, action_dim=1)
SOURCE_POLICY, SOURCE_SCRIPTED = 0, 2   # user_msgs/Action.SOURCE_*
SMALL = {"hidden_dims": (64, 64), "batch_size": 128, "seed": 0}   # every MLP algorithm's config takes these
#: algorithms with other networks: their small settings (the VLA policy acting one step per call here)
OWN_SMALL = {"hg_dagger_vla": {"batch_size": 128, "seed": 0, "chunk_size": 1, "d_model": 32, "layers": 1, "heads": 2,
                               "head_dim": 64, "head_layers": 1, "head_heads": 2, "text_tokens": 4, "lr": 1e-3}}


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
        self.data.update({k: np.zeros(capacity, np.float32) for k in ("reward", "terminated", "intervened")})
        self.data["action_source"] = np.zeros(capacity, np.uint8)
        self.size = 0

    def add(self, state: np.ndarray, action: np.ndarray, reward: np.ndarray, next_state: np.ndarray,
            source: int = SOURCE_POLICY) -> None:
        n = len(state)
        sl = slice(self.size, self.size + n)
        self.data["state"][sl], self.data["action"][sl, 0] = state, action
        self.data["reward"][sl], self.data["next_state"][sl] = reward, next_state
        self.data["action_source"][sl] = source
        self.size += n

    def sample(self, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, size)
        return {k: v[idx] for k, v in self.data.items()}


def expert(x: np.ndarray) -> np.ndarray:
    return np.clip(-x / STEP, -1, 1)


def success_rate(policy, starts: np.ndarray) -> float:
    """Fraction of deterministic episodes from ``starts`` that end within TOLERANCE of the origin."""
    finals = []
    for x in starts:
        for _ in range(HORIZON):
            x = float(np.clip(x + STEP * policy.act(np.array([x], np.float32), None, deterministic=True)[0], -1, 1))
        finals.append(abs(x))
    return float(np.mean(np.array(finals) < TOLERANCE))


CASES = [(name, {}) for name in algorithm_names()] + [("sac_flow", {"actor": "flow_t", "flow_d_model": 32,
                                                                        "flow_heads": 2})]


@pytest.mark.parametrize("name, extra", CASES, ids=[f"{n}-{e.get('actor', 'default')}" for n, e in CASES])
def test_every_algorithm_drives_the_point_mass_to_the_origin(name, extra):
    algo = get_algorithm(name)
    if not algo.learns:
        print(f"SKIP {name}: inference only (a fixed model), nothing to learn")
        pytest.skip(f"{name}: inference only, nothing to learn")
    cfg = algo.config(**OWN_SMALL.get(name, SMALL), **extra)
    agent, policy = algo.agent(SPEC, cfg), algo.policy(SPEC, cfg)
    noise = torch.Generator().manual_seed(5)
    rng = np.random.default_rng(0)
    env, online = PointMass(8, rng), Replay(40_000)
    demos = None
    if algo.needs_demos:   # 200 expert transitions
        demos, denv = Replay(1000), PointMass(10, np.random.default_rng(9))
        while demos.size < 200:
            o = denv.obs()
            a = expert(o[:, 0])
            demos.add(o, a, *reversed(denv.step(a)), source=SOURCE_SCRIPTED)
    eval_starts = np.random.default_rng(1).uniform(-1, 1, 50)
    history: list[tuple[int, float]] = []
    start = time.perf_counter()
    warmup = 200 if demos is not None else 400
    while agent.num_updates < 3000:
        obs = env.obs()
        if online.size < warmup:
            action = rng.uniform(-1, 1, len(obs))
        else:
            action = np.array([policy.act(o, None, deterministic=False, generator=noise)[0] for o in obs])
        assert np.all(np.abs(action) <= 1.0), "actions must lie in [-1, 1]"
        next_obs, reward = env.step(action)
        online.add(obs, action, reward, next_obs)
        if online.size < warmup:
            continue
        for _ in range(2):
            if demos is None:
                arrays = online.sample(cfg.batch_size, rng)
            else:   # half of every batch from the demonstrations
                a, b = online.sample(cfg.batch_size // 2, rng), demos.sample(cfg.batch_size // 2, rng)
                arrays = {k: np.concatenate([a[k], b[k]]) for k in a}
            keys = set(SPEC.batch_keys()) | set(algo.batch_extras)   # the keys a real replay would deliver
            metrics = agent.update(batch_from_numpy({k: v for k, v in arrays.items() if k in keys}))
        losses = {k: v for k, v in metrics.items() if k.endswith("loss") and not np.isnan(v)}
        assert losses and all(np.isfinite(list(losses.values()))), f"a loss diverged or none was reported: {metrics}"
        if agent.num_updates % 50 == 0:
            policy.load_policy_state_dict(agent.policy_state_dict())   # as weight sync delivers them
        if agent.num_updates % 250 == 0:
            history.append((agent.num_updates, success_rate(policy, eval_starts)))
            if history[-1][1] >= 0.9:
                break
    elapsed = time.perf_counter() - start
    print(f"{name} point mass: success {history[-1][1]:.2f} after {agent.num_updates} updates, {elapsed:.1f} s; "
          f"history {history}")
    assert history[-1][1] >= 0.9, f"{name} did not learn the point mass in 3000 updates: (updates, success) {history}"
