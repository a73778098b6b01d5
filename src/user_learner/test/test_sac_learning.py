"""SAC's update: terminal transitions do not bootstrap, REDQ subsets and entropy backups run, bad configs
are refused (that it learns: test_algorithms_learn.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.batch import batch_from_numpy
from user_learner.algos.sac import SACAgent, SACConfig

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
