"""Shared helpers for the learner tests: one CPU thread and random batches of the right layout."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.batch import batch_from_numpy

# Two cores on the test machines: keep torch from oversubscribing them (and keep timings stable).
torch.set_num_threads(1)


def random_batch(spec: Features, size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A batch with every key ``spec`` needs, filled with random values of the right dtype."""
    arrays = {
        "state": rng.standard_normal((size, spec.state_dim)).astype(np.float32),
        "next_state": rng.standard_normal((size, spec.state_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (size, spec.action_dim)).astype(np.float32),
        "reward": rng.standard_normal(size).astype(np.float32),
        "terminated": (rng.random(size) < 0.1).astype(np.float32),
    }
    if spec.cameras:
        arrays["pixels"] = rng.integers(0, 256, (size, *spec.image_shape), dtype=np.uint8)
        arrays["next_pixels"] = rng.integers(0, 256, (size, *spec.image_shape), dtype=np.uint8)
    return batch_from_numpy(arrays)


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """``make_batch(spec, size, seed=0)`` -> a random batch for ``spec``."""
    def make(spec: Features, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
        return random_batch(spec, size, np.random.default_rng(seed))
    return make
