"""HG-DAgger's learner: it clones only the steps an expert controlled, with the right likelihood, and
resumes bit-identically."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.algos import get_algorithm
from user_learner.algos.hg_dagger import HGDAggerConfig, expert_log_likelihood
from user_learner.batch import batch_from_numpy

SPEC = Features(state_dim=3, action_dim=2, extras=("action_source", "intervened"))
POLICY, HUMAN, SCRIPTED, HOLD = 0, 1, 2, 3


def make_batch(sources, seed=0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    n = len(sources)
    return batch_from_numpy({
        "state": rng.normal(size=(n, 3)).astype(np.float32), "next_state": rng.normal(size=(n, 3)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32), "reward": np.zeros(n, np.float32),
        "terminated": np.zeros(n, np.float32), "action_source": np.asarray(sources, np.uint8),
        "intervened": (np.asarray(sources) == HUMAN).astype(np.float32)})


def agent(**cfg):
    return get_algorithm("hg_dagger").agent(SPEC, HGDAggerConfig(hidden_dims=(32,), batch_size=8, **cfg))


def params(a) -> list[torch.Tensor]:
    return [p.detach().clone() for p in a.actor.parameters()]


def test_the_likelihood_is_that_of_a_tanh_gaussian():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 2), 0.3 * torch.randn(5, 2)
    action = torch.tanh(torch.randn(5, 2))
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()])
    expected = dist.log_prob(action).sum(-1)
    assert torch.allclose(expert_log_likelihood(mean, log_std, action, clip=0.999999), expected, atol=1e-4)


def test_only_the_steps_an_expert_controlled_are_labels():
    a = agent()
    before = params(a)
    m = a.update(make_batch([POLICY, HOLD, POLICY, POLICY]))
    assert m["expert_fraction"] == 0.0 and np.isnan(m["bc_loss"]) and a.num_updates == 1
    assert all(torch.equal(x, y) for x, y in zip(before, params(a))), "policy steps must not train the policy"
    m = a.update(make_batch([POLICY, HUMAN, SCRIPTED, POLICY]))
    assert m["expert_fraction"] == 0.5 and np.isfinite(m["bc_loss"]) and a.labels_seen == 2
    assert not all(torch.equal(x, y) for x, y in zip(before, params(a)))
    # The policy's own rows do not change the update: the same expert rows with other policy rows.
    b, c = agent(), agent()
    batch1, batch2 = make_batch([HUMAN, SCRIPTED, POLICY, POLICY]), make_batch([HUMAN, SCRIPTED, POLICY, POLICY], 1)
    for k in ("state", "action"):
        batch2[k][:2] = batch1[k][:2]
    b.update(batch1), c.update(batch2)
    assert all(torch.equal(x, y) for x, y in zip(params(b), params(c)))


def test_expert_sources_are_configurable_and_checked():
    only_humans = agent(expert_sources=(HUMAN,))
    assert only_humans.update(make_batch([SCRIPTED, SCRIPTED]))["expert_fraction"] == 0.0
    for bad, words in (({"actor": "flow_g"}, "tanh-Gaussian actor"), ({"expert_sources": ()}, "at least one"),
                       ({"action_clip": 1.0}, "in (0, 1)")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            HGDAggerConfig(**bad).validate()


def test_resume_gives_identical_further_updates():
    a = agent()
    for i in range(3):
        a.update(make_batch([HUMAN, POLICY, SCRIPTED, HUMAN], i))
    b = agent(seed=7)
    b.load_state_dict(a.state_dict())
    ma, mb = a.update(make_batch([HUMAN] * 4, 9)), b.update(make_batch([HUMAN] * 4, 9))
    assert ma == mb and all(torch.equal(x, y) for x, y in zip(params(a), params(b)))
    assert b.num_updates == 4 and b.labels_seen == a.labels_seen
