"""``Policy.act`` latency at the default sizes (printed, not asserted: timings depend on the machine).

Run with ``-s`` to see the numbers.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from user_common.features import Features
from user_learner.algos.sac import SACAgent, SACConfig, SACPolicy


@pytest.mark.parametrize("spec", [Features(state_dim=20), Features(state_dim=20, cameras=("wrist", "side"))],
                         ids=["state-mlp", "cnn-2x128px"])
def test_act_latency(spec):
    cfg = SACConfig()
    policy = SACPolicy(spec, cfg)
    policy.load_policy_state_dict(SACAgent(spec, cfg).policy_state_dict())
    rng = np.random.default_rng(0)
    state = rng.standard_normal(spec.state_dim).astype(np.float32)
    pixels = rng.integers(0, 256, spec.image_shape, dtype=np.uint8) if spec.cameras else None
    for _ in range(10):  # warm-up: first calls allocate and pick kernels
        policy.act(state, pixels, deterministic=True)
    times = []
    for i in range(200):
        start = time.perf_counter()
        action = policy.act(state, pixels, deterministic=bool(i % 2))
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    print(f"\nPolicy.act {spec.cameras or 'state'}: p50 {np.percentile(ms, 50):.2f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms (1 thread)")
    assert action.shape == (spec.action_dim,)
