"""The algorithm registry and the inference side's policy server (weight swaps, exploration noise)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from user_learner.algos import UnknownAlgorithm, algorithm_names, get_algorithm
from user_common.features import Features
from user_learner.serving import PolicyServer, robot_seed

SPEC = Features(state_dim=4, action_dim=3)


def test_unknown_algorithm_lists_the_registered_ones():
    assert "sac" in algorithm_names()
    with pytest.raises(UnknownAlgorithm) as err:
        get_algorithm("ppo")
    assert str(err.value) == f"unknown algorithm 'ppo'; registered: {', '.join(algorithm_names())}"


@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_builds_a_policy_that_takes_its_agents_weights(name):
    algo = get_algorithm(name)
    if not algo.learns:
        print(f"SKIP {name}: inference only (a fixed model, no agent); its own tests cover it")
        pytest.skip(f"{name}: inference only, no agent")
    cfg = algo.config(hidden_dims=(16,)) if "hidden_dims" in algo.config.__dataclass_fields__ else algo.config()
    agent = algo.agent(SPEC, cfg)
    policy = algo.policy(SPEC, cfg)
    policy.load_policy_state_dict(agent.policy_state_dict())
    state = np.linspace(-1, 1, SPEC.state_dim).astype(np.float32)
    a = policy.act(state, None, deterministic=True, generator=torch.Generator().manual_seed(0))
    b = policy.act(state, None, deterministic=True, generator=torch.Generator().manual_seed(1))
    shape = (SPEC.action_dim,) if policy.chunk_size == 1 else (policy.chunk_size, SPEC.action_dim)
    assert a.shape == shape and np.all(np.abs(a) <= 1.0)
    assert np.array_equal(a, b), "evaluation must not depend on the noise generator"


def _server(seed: int = 0, robots=("franka_0", "franka_1")) -> tuple[PolicyServer, dict]:
    algo = get_algorithm("sac")
    cfg = algo.config(hidden_dims=(16,), seed=3)
    weights = algo.agent(SPEC, cfg).policy_state_dict()
    server = PolicyServer(lambda: algo.policy(SPEC, cfg), seed, robots)
    server.prepare(1, weights)
    assert server.swap() and server.version == 1
    return server, weights


STATE = np.zeros(SPEC.state_dim, np.float32)


def test_exploration_noise_goes_on_across_weight_swaps():
    server, weights = _server()
    before = [server.act("franka_0", STATE, None, False) for _ in range(3)]
    server.prepare(2, weights)   # the same weights again: only the noise can make actions differ
    assert server.swap() and server.version == 2
    after = [server.act("franka_0", STATE, None, False) for _ in range(3)]
    assert not any(np.array_equal(x, y) for x in before for y in after), (
        "after a swap the robot replays the noise draws it made before it")


def test_robots_explore_differently_and_reruns_alike():
    server, _ = _server()
    a0 = [server.act("franka_0", STATE, None, False) for _ in range(3)]
    a1 = [server.act("franka_1", STATE, None, False) for _ in range(3)]
    assert not any(np.array_equal(x, y) for x, y in zip(a0, a1)), "two robots draw the same noise"
    again, _ = _server()
    assert all(np.array_equal(x, again.act("franka_0", STATE, None, False)) for x in a0), "same seed, same noise"
    other, _ = _server(seed=1)
    assert not np.array_equal(a0[0], other.act("franka_0", STATE, None, False)), "the seed must matter"
    assert robot_seed(0, "franka_0") != robot_seed(0, "franka_1") != robot_seed(1, "franka_1")


def test_no_swap_without_new_weights():
    server, _ = _server()
    assert not server.swap() and server.version == 1


@pytest.mark.parametrize("cameras", [False, True])
def test_one_batched_pass_gives_each_robot_the_action_it_would_get_alone(cameras):
    """Several robots' observations in one forward pass: each row equals that robot's own ``act`` (same noise
    generator, same draw), evaluation rows are deterministic, and the generators go on identically."""
    spec = Features(state_dim=4, action_dim=3, cameras=("wrist",), image_size=(32, 32)) if cameras else SPEC
    algo = get_algorithm("sac")
    cfg = algo.config(hidden_dims=(16,), seed=3)
    weights = algo.agent(spec, cfg).policy_state_dict()
    robots = ("franka_0", "franka_1", "wxai_0")
    alone, batched = (PolicyServer(lambda: algo.policy(spec, cfg), 0, robots) for _ in range(2))
    for server in (alone, batched):
        server.prepare(1, weights)
        server.swap()
    rng = np.random.default_rng(0)
    for _ in range(3):
        requests = [(rid, rng.normal(size=spec.state_dim).astype(np.float32),
                     rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8) if cameras else None, rid == "wxai_0", None)
                    for rid in robots]
        one_by_one = [alone.act(rid, s, p, det) for rid, s, p, det, _ in requests]
        together = batched.act_batch(requests)
        assert len(together) == len(robots)
        for rid, a, b in zip(robots, one_by_one, together):
            np.testing.assert_allclose(b, a, atol=1e-5, err_msg=f"{rid}: batched action differs from its own")
    assert not np.allclose(one_by_one[0], one_by_one[1]), "two robots drew the same noise"
