"""Checkpoint -> resume restores the agent exactly, and the inference Policy acts like the agent."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.checkpoint import checkpoint_path, load_latest_checkpoint, save_checkpoint
from user_learner.algos.sac import SACAgent, SACConfig, SACPolicy

STATE_SPEC = Features(state_dim=5, action_dim=3)
IMAGE_SPEC = Features(state_dim=5, cameras=("wrist", "side"), image_size=(40, 32), action_dim=3)
# An ensemble with a random REDQ subset and ratio 2 exercises every random draw and both update kinds.
CFG = SACConfig(hidden_dims=(32, 32), encoder_dim=16, critic_ensemble=3, critic_subsample=2, seed=7)


def assert_same(a: Any, b: Any, where: str = "state_dict") -> None:
    """Recursively assert two nested state dicts are identical (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, f"{where}: type/shape"
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys differ: {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("spec,actor", [(STATE_SPEC, "gaussian"), (IMAGE_SPEC, "gaussian"), (STATE_SPEC, "flow_g"),
                                        (STATE_SPEC, "flow_t")], ids=["state", "images", "sac_flow-g", "sac_flow-t"])
def test_resume_from_checkpoint_is_bit_identical(spec, actor, make_batch, tmp_path):
    batches = [make_batch(spec, 16, seed=i) for i in range(12)]
    cfg = SACConfig(**{**CFG.__dict__, "actor": actor})
    original = SACAgent(spec, cfg)
    for batch in batches[:7]:
        original.update(batch)
    save_checkpoint(checkpoint_path(tmp_path, original.num_updates), original.state_dict())

    _, payload = load_latest_checkpoint(tmp_path)
    restored = SACAgent(spec, SACConfig(**{**cfg.__dict__, "seed": 99}))  # different init, overwritten by load
    restored.load_state_dict(payload)
    assert restored.num_updates == 7
    assert restored.temperature == original.temperature
    snap_original, snap_restored = original.state_dict(), restored.state_dict()
    assert snap_restored.pop("config")["seed"] == 99, "the restored agent keeps its own config"
    snap_original.pop("config")
    assert_same(snap_original, snap_restored)

    for batch in batches[7:]:
        m_original, m_restored = original.update(batch), restored.update(batch)
        assert_same(m_original, m_restored, "metrics")
    assert original.num_updates == restored.num_updates == 12
    for name, module in original._modules().items():
        if module is not None:
            assert_same(module.state_dict(), restored._modules()[name].state_dict(), name)
    assert_same(original.state_dict()["optimizers"], restored.state_dict()["optimizers"], "optimizers")
    assert torch.equal(original.log_alpha, restored.log_alpha)


def test_state_dict_is_a_snapshot(make_batch):
    agent = SACAgent(STATE_SPEC, CFG)
    snapshot = agent.state_dict()
    before = snapshot["nets"]["critic"]["q.net.0.weight"].clone()
    agent.update(make_batch(STATE_SPEC, 16))
    assert torch.equal(snapshot["nets"]["critic"]["q.net.0.weight"], before), \
        "state_dict() must not alias live parameters (a checkpoint writer may still be reading it)"


@pytest.mark.parametrize("spec", [STATE_SPEC, IMAGE_SPEC], ids=["state", "images"])
def test_policy_acts_like_the_agent(spec, make_batch):
    agent = SACAgent(spec, CFG)
    for i in range(4):
        agent.update(make_batch(spec, 16, seed=i))
    weights = agent.policy_state_dict()
    assert all(k.startswith(("actor.", "conv.")) for k in weights), f"only actor and encoder: {sorted(weights)}"
    assert any(k.startswith("conv.") for k in weights) == bool(spec.cameras)
    policy = SACPolicy(spec, CFG)
    policy.load_policy_state_dict(weights)
    rng = np.random.default_rng(3)
    for _ in range(5):
        state = rng.standard_normal(spec.state_dim).astype(np.float32)
        pixels = rng.integers(0, 256, spec.image_shape, dtype=np.uint8) if spec.cameras else None
        expected = agent.act(state, pixels, deterministic=True)
        np.testing.assert_allclose(policy.act(state, pixels, deterministic=True), expected, rtol=0, atol=1e-6,
                                   err_msg="SACPolicy and SACAgent disagree on the deterministic action")
        sampled = policy.act(state, pixels, deterministic=False)
        assert sampled.shape == (spec.action_dim,) and np.all(np.abs(sampled) <= 1)
    with pytest.raises(KeyError, match="unexpected key"):
        policy.load_policy_state_dict({**weights, "critic.q": torch.zeros(1)})
