"""The image path: uint8 pixels through the shared conv trunk, DrQ shifts, and a conv trained by the critic only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.batch import batch_from_numpy, obs_to_tensors
from user_learner.networks import random_shift
from user_learner.algos.sac import SACAgent, SACConfig

SIZE = 32


def square_image(x: float) -> np.ndarray:
    """A dark 32x32 RGB image with a bright 6x6 square whose column encodes ``x`` in [-1, 1]."""
    img = np.full((SIZE, SIZE, 3), 20, np.uint8)
    col = int(round((x + 1) / 2 * (SIZE - 6)))
    img[13:19, col:col + 6] = 230
    return img


def square_batch(rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
    """Point-mass transitions whose only observation of x is the image (the state is a constant 1)."""
    x = rng.uniform(-1, 1, size)
    a = rng.uniform(-1, 1, size)
    x2 = np.clip(x + 0.1 * a, -1, 1)
    return batch_from_numpy({
        "state": np.ones((size, 1)), "next_state": np.ones((size, 1)), "action": a[:, None],
        "reward": -np.abs(x2), "terminated": np.zeros(size),
        "pixels": np.stack([square_image(v) for v in x])[:, None],
        "next_pixels": np.stack([square_image(v) for v in x2])[:, None]})


SPEC = Features(state_dim=1, cameras=("front",), image_size=(SIZE, SIZE), action_dim=1)
CFG = SACConfig(hidden_dims=(64, 64), encoder_dim=32, critic_actor_ratio=2, seed=0)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_random_shift_moves_pixels_but_keeps_shape_and_dtype():
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (8, 2, SIZE, SIZE, 3), dtype=np.uint8))
    shifted = random_shift(pixels, 4, torch.Generator().manual_seed(0))
    assert shifted.shape == pixels.shape and shifted.dtype == torch.uint8
    assert not torch.equal(shifted, pixels), "a random shift of 16 noise images should move some of them"
    # Every output image is a replicate-padded crop of its own input: same pixel values, only moved.
    padded = torch.nn.functional.pad(pixels.reshape(16, SIZE, SIZE, 3).permute(0, 3, 1, 2).float(),
                                     (4, 4, 4, 4), mode="replicate")
    out = shifted.reshape(16, SIZE, SIZE, 3).permute(0, 3, 1, 2).float()
    for i in range(16):
        assert any(torch.equal(padded[i, :, dy:dy + SIZE, dx:dx + SIZE], out[i])
                   for dy in range(9) for dx in range(9)), f"image {i} is not a shifted crop of its input"
    assert torch.equal(random_shift(pixels, 0, None), pixels), "pad 0 disables the augmentation"


def test_image_agent_trains_with_right_shapes():
    agent = SACAgent(SPEC, CFG)
    batch = square_batch(np.random.default_rng(0), 32)
    assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (32, 1, SIZE, SIZE, 3)
    for _ in range(4):
        metrics = agent.update(batch)
    assert agent.num_updates == 4
    assert all(np.isfinite(v) for v in metrics.values()), f"non-finite metric: {metrics}"
    feats = agent.conv(batch["pixels"])
    assert feats.shape == (32, 1, agent.conv.out_dim) and feats.dtype == torch.float32
    action = agent.act(np.ones(1, np.float32), square_image(0.3)[None], deterministic=False)
    assert action.shape == (1,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
    with pytest.raises(ValueError, match="pixels"):
        agent.act(np.ones(1, np.float32), None, deterministic=True)


def test_actor_update_leaves_conv_and_critic_unchanged():
    agent = SACAgent(SPEC, CFG)
    batch = square_batch(np.random.default_rng(0), 32)
    conv, critic, actor = params(agent.conv), params(agent.critic), params(agent.actor)
    agent.update_actor(batch)
    assert not changed(conv, agent.conv), "the actor loss must not train the conv trunk"
    assert not changed(critic, agent.critic), "the actor loss must not train the critic"
    assert changed(actor, agent.actor), "the actor step should change the actor"
    agent.update_critic(batch)
    assert changed(conv, agent.conv), "the critic loss trains the conv trunk"


def test_default_128px_two_camera_encoder_works():
    spec = Features(state_dim=20, cameras=("wrist", "side"))
    agent = SACAgent(spec, SACConfig(hidden_dims=(32,)))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, spec.image_shape, dtype=np.uint8)
    assert spec.image_shape == (2, 128, 128, 3)
    obs = obs_to_tensors(np.zeros(20, np.float32), pixels)
    assert obs["pixels"].shape == (1, 2, 128, 128, 3) and obs["state"].shape == (1, 20)
    assert agent.conv(obs["pixels"]).shape == (1, 2, agent.conv.out_dim)
    assert agent.act(np.zeros(20, np.float32), pixels, deterministic=True).shape == (7,)


def test_image_only_policy_learns_square_position():
    # x is visible only in the image; after a few hundred updates the deterministic action
    # must push the square towards the centre (sign opposite to x) for clearly off-centre squares.
    cfg = SACConfig(hidden_dims=(64, 64), encoder_dim=32, batch_size=64, critic_actor_ratio=1, seed=0)
    agent = SACAgent(SPEC, cfg)
    rng = np.random.default_rng(0)
    data = square_batch(rng, 2000)
    for _ in range(300):
        idx = torch.from_numpy(rng.integers(0, 2000, cfg.batch_size))
        agent.update({k: v[idx] for k, v in data.items()})
    xs = np.array([-0.9, -0.7, -0.5, 0.5, 0.7, 0.9])
    actions = np.array([agent.act(np.ones(1, np.float32), square_image(x)[None], True)[0] for x in xs])
    assert np.all(np.sign(actions) == -np.sign(xs)), f"actions {actions.round(2)} for x {xs} should point to 0"
