"""The flow actor of SAC-Flow: its log-density against an independent computation, gradients through
every Euler step (and into the noise scale), deterministic evaluation, both velocity fields, images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.flow import FlowActor, time_embedding

SPEC = Features(state_dim=3, action_dim=2)


def actor(velocity: str, spec: Features = SPEC, **kw) -> FlowActor:
    torch.manual_seed(0)
    return FlowActor(spec, 0, 16, (32, 32), velocity=velocity, steps=3, d_model=16, heads=2, layers=1, **kw)


@pytest.mark.parametrize("velocity", ["gated", "transformer"])
def test_log_density_matches_an_independent_computation(velocity):
    """Replay the rollout step by step in float64 from the recorded noise and sum the densities with
    the closed form of a Gaussian; the actor's own log-probability must agree."""
    a = actor(velocity).double()
    state = torch.tensor([[0.3, -0.2, 0.5], [-1.0, 0.4, 0.0]], dtype=torch.float64)
    trace: list = []
    action, logp = a.rollout(None, state, torch.Generator().manual_seed(3), noise=True, trace=trace)
    x0, steps = trace[0].detach().numpy(), trace[1:]
    want = (-0.5 * x0 ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    x = trace[0]
    with torch.no_grad():
        for k, (_, _, sigma, x_next) in enumerate(steps):
            v, _ = a.field(state, x, time_embedding(k / a.steps, a.time_dim, 2, state))
            mu = (x + v / a.steps).detach().numpy()
            s, xn = sigma.detach().numpy(), x_next.detach().numpy()
            want += (-0.5 * ((xn - mu) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)
            x = x_next
    xk = x.detach().numpy()
    want -= np.log(1.0 - np.tanh(xk) ** 2).sum(-1)
    np.testing.assert_allclose(action.detach().numpy(), np.tanh(xk), atol=1e-12)
    np.testing.assert_allclose(logp.detach().numpy(), want, rtol=1e-9, atol=1e-9)
    assert np.all(np.abs(action.detach().numpy()) < 1.0)


@pytest.mark.parametrize("velocity", ["gated", "transformer"])
def test_gradients_reach_every_step_and_the_noise_scale(velocity):
    a = actor(velocity)
    trace: list = []
    action, logp = a.rollout(None, torch.randn(8, 3), torch.Generator().manual_seed(1), trace=trace)
    for _, mu, _, x_next in trace[1:]:
        x_next.retain_grad()
    action.sum().backward(retain_graph=True)
    for k, (_, _, _, x_next) in enumerate(trace[1:]):
        assert x_next.grad is not None and x_next.grad.abs().sum() > 0, f"no gradient reaches step {k + 1}"
    a.zero_grad()
    assert logp.requires_grad, "the log-probability must not be detached"
    logp.sum().backward()
    sigma_head = a.field.sigma if velocity == "gated" else a.field.out
    grads = [p.grad for p in sigma_head.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, (
        "the -log sigma terms carry no gradient into the noise scale")


def test_the_log_probability_falls_as_the_noise_scale_grows():
    """Entropy is bought with noise: the -log sigma terms are there."""
    state = torch.zeros(4096, 3)
    with torch.no_grad():
        lo = actor("gated", sigma_min=0.05, sigma_max=0.05).rollout(None, state, torch.Generator().manual_seed(0))[1]
        hi = actor("gated", sigma_min=0.4, sigma_max=0.4).rollout(None, state, torch.Generator().manual_seed(0))[1]
    assert float(hi.mean()) < float(lo.mean()) - 1.0


@pytest.mark.parametrize("velocity", ["gated", "transformer"])
def test_evaluation_is_deterministic_and_training_is_not(velocity):
    a = actor(velocity)
    state = torch.randn(5, 3)
    with torch.no_grad():
        m1, m2 = a.mode(None, state), a.mode(None, state)
        s1 = a.sample(None, state, torch.Generator().manual_seed(1))[0]
        s2 = a.sample(None, state, torch.Generator().manual_seed(2))[0]
    assert torch.equal(m1, m2) and not torch.equal(s1, s2)


def test_images_give_one_memory_token_per_camera_plus_the_state():
    spec = Features(state_dim=3, action_dim=2, cameras=("wrist", "side"))
    feats = torch.randn(4, 2, 10)   # conv features [B, cameras, F]
    a = FlowActor(spec, 10, 16, (32,), velocity="transformer", steps=2, d_model=16, heads=2, layers=1)
    assert a.field.tokens == 3 and a.field.token_dim == 16
    action, logp = a.sample(feats, torch.randn(4, 3), None)
    assert action.shape == (4, 2) and logp.shape == (4,)


def test_an_unknown_velocity_field_is_refused():
    with pytest.raises(ValueError, match="velocity: must be gated or transformer, got 'lstm'"):
        actor("lstm")


@pytest.mark.parametrize("flow", ["flow_g", "flow_t"])
def test_sac_flow_updates_on_images_and_its_policy_acts_like_the_agent(flow):
    from user_learner.algos import get_algorithm
    from user_learner.batch import batch_from_numpy

    algo = get_algorithm("sac_flow")
    spec = Features(state_dim=3, action_dim=2, cameras=("wrist",), image_size=(32, 32))
    cfg = algo.config(actor=flow, hidden_dims=(32,), encoder_dim=8, conv_channels=8, flow_d_model=16, flow_heads=2,
                      critic_actor_ratio=1, seed=2)
    agent, policy = algo.agent(spec, cfg), algo.policy(spec, cfg)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, *spec.image_shape), dtype=np.uint8)
    batch = batch_from_numpy({"state": rng.standard_normal((8, 3)), "next_state": rng.standard_normal((8, 3)),
                              "action": rng.uniform(-1, 1, (8, 2)), "reward": np.ones(8), "terminated": np.zeros(8),
                              "pixels": pixels, "next_pixels": pixels})
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    metrics = agent.update(batch)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert any(not torch.equal(before[k], v) for k, v in agent.actor.state_dict().items()), "the actor did not train"
    policy.load_policy_state_dict(agent.policy_state_dict())
    obs = np.zeros(3, np.float32), pixels[0]
    np.testing.assert_allclose(policy.act(*obs, deterministic=True), agent.act(*obs, deterministic=True), atol=1e-6)
