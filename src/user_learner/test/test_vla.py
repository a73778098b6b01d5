"""The VLA-like chunk policy: shapes, the byte tokenizer, safetensors round trip, BC on a small expert,
partial weight updates (head / LoRA) that cross to inference, and resuming."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from user_common.features import Features
from user_learner.algos import get_algorithm
from user_learner.algos.hg_dagger_vla import HGDAggerVLAConfig
from user_learner.batch import batch_from_numpy
from user_learner.vla.model import (VLAModel, VLAModelConfig, count_parameters, load_model, save_model, tokenize)
from user_learner.vla.pretrain import Demos, Episode, bc_pretrain

ALGO = get_algorithm("hg_dagger_vla")
TINY = dict(d_model=32, layers=2, heads=2, head_dim=32, head_layers=1, head_heads=2, patch_size=16, text_tokens=16,
            chunk_size=4, flow_steps=4)
CAM_SPEC = Features(state_dim=5, action_dim=3, cameras=("wrist", "side"), image_size=(32, 32),
                    extras=("action_source", "intervened"))
SPEC = Features(state_dim=2, action_dim=2, extras=("action_source", "intervened"))


def model_config(spec: Features, **kw) -> VLAModelConfig:
    return VLAModelConfig(state_dim=spec.state_dim, action_dim=spec.action_dim, cameras=spec.cameras,
                          image_size=spec.image_size, **{**TINY, **kw})


def obs(spec: Features, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(b, spec.state_dim, generator=g)
    pixels = torch.randint(0, 256, (b, *spec.image_shape), generator=g, dtype=torch.uint8) if spec.cameras else None
    return state, torch.stack([tokenize("put the cube in the right bin", TINY["text_tokens"])] * b), pixels


def test_the_default_model_has_tens_of_millions_of_parameters():
    m = VLAModel(VLAModelConfig(cameras=("wrist", "side")))
    n = count_parameters(m)
    assert 10e6 < n < 100e6, n
    assert count_parameters(m.head) < 0.2 * n, "the action head is a small part"


def test_chunks_have_the_right_shape_and_range_and_see_every_input():
    torch.manual_seed(0)
    m = VLAModel(model_config(CAM_SPEC)).eval()
    state, tokens, pixels = obs(CAM_SPEC, 3)
    a = m.sample(state, tokens, pixels, deterministic=True)
    assert a.shape == (3, 4, 3) and a.abs().max() <= 1.0
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert torch.equal(a, m.sample(state, tokens, pixels, True, g1)), "deterministic: no noise"
    assert not torch.equal(m.sample(state, tokens, pixels, False, g1), m.sample(state, tokens, pixels, False, g2))
    other_text = torch.stack([tokenize("lift the cube", TINY["text_tokens"])] * 3)
    for changed in ((state + 1, tokens, pixels), (state, other_text, pixels), (state, tokens, 255 - pixels)):
        assert not torch.allclose(a, m.sample(*changed, deterministic=True)), "an input is ignored"
    with pytest.raises(ValueError, match="pixels: the model sees cameras"):
        m.sample(state, tokens, None, True)


def test_byte_tokenizer():
    t = tokenize("  Put IT ", 6)
    assert t.tolist() == [ord(c) + 1 for c in "put it"]
    assert tokenize("ab", 4).tolist() == [ord("a") + 1, ord("b") + 1, 0, 0], "0 pads"
    assert tokenize("abcdef", 3).tolist() == [ord(c) + 1 for c in "abc"], "cut at max_tokens"
    assert tokenize("é", 4).tolist()[:2] == [0xC3 + 1, 0xA9 + 1], "UTF-8 bytes"


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = VLAModel(model_config(CAM_SPEC)).eval()
    out = save_model(m, tmp_path / "base", {"steps": 3})
    assert (out / "model.safetensors").is_file()
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"]["cameras"] == ["wrist", "side"] and meta["info"] == {"steps": 3}
    loaded, info = load_model(out)
    assert info == {"steps": 3} and loaded.c == m.c
    state, tokens, pixels = obs(CAM_SPEC, 2)
    assert torch.equal(m.sample(state, tokens, pixels, True), loaded.eval().sample(state, tokens, pixels, True))
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors: no such file"):
        load_model(out)


def point_mass_demos(n: int, seed: int) -> list[Episode]:
    """A 2-D point mass x' = x + 0.1 a, the expert a = clip(-3 x): its chunk is a function of the state."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        x, s, a = rng.uniform(-1, 1, 2), [], []
        for _ in range(15):
            act = np.clip(-3 * x, -1, 1)
            s.append(x.copy())
            a.append(act)
            x = x + 0.1 * act
        eps.append(Episode(np.array(s, np.float32), np.array(a, np.float32)))
    return eps


def expert_chunk(x: np.ndarray, h: int) -> np.ndarray:
    out = []
    for _ in range(h):
        out.append(np.clip(-3 * x, -1, 1))
        x = x + 0.1 * out[-1]
    return np.array(out)


def test_bc_lowers_the_loss_and_reproduces_the_expert_chunk():
    cfg = HGDAggerVLAConfig(batch_size=64, lr=2e-3, instruction="go home", **{**TINY, "layers": 1})
    agent = ALGO.agent(SPEC, cfg)
    losses = bc_pretrain(agent, Demos(point_mass_demos(40, 0), cfg.chunk_size, seed=0), 400)
    assert np.mean(losses[-40:]) < 0.3 * np.mean(losses[:10]), (np.mean(losses[:10]), np.mean(losses[-40:]))
    policy = ALGO.policy(SPEC, cfg)
    policy.load_policy_state_dict(agent.policy_state_dict())
    starts = np.random.default_rng(7).uniform(-0.8, 0.8, (20, 2)).astype(np.float32)
    err = np.mean([np.abs(policy.act(x, None, True) - expert_chunk(x, 4)).mean() for x in starts])
    untrained = ALGO.policy(SPEC, HGDAggerVLAConfig(seed=3, **TINY))
    before = np.mean([np.abs(untrained.act(x, None, True) - expert_chunk(x, 4)).mean() for x in starts])
    assert err < 0.15 and err < 0.3 * before, (err, before)


def pretrained(tmp_path, spec=CAM_SPEC) -> str:
    torch.manual_seed(0)
    save_model(VLAModel(model_config(spec)), tmp_path / "base")
    return str(tmp_path / "base")


def cam_batch(n: int, seed: int, sources=None) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    h, a = TINY["chunk_size"], CAM_SPEC.action_dim
    return batch_from_numpy({
        "state": rng.normal(size=(n, 5)).astype(np.float32), "next_state": rng.normal(size=(n, 5)).astype(np.float32),
        "pixels": rng.integers(0, 256, (n, *CAM_SPEC.image_shape), dtype=np.uint8),
        "next_pixels": rng.integers(0, 256, (n, *CAM_SPEC.image_shape), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (n, a)).astype(np.float32), "reward": np.zeros(n, np.float32),
        "terminated": np.zeros(n, np.float32), "intervened": np.zeros(n, np.float32),
        "action_source": np.asarray(sources if sources is not None else [2] * n, np.uint8),
        "action_chunk": rng.uniform(-1, 1, (n, h, a)).astype(np.float32), "chunk_mask": np.ones((n, h), np.float32),
        "chunk_source": np.full((n, h), 2, np.uint8)})


def nbytes(d: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in d.values())


def test_head_and_lora_updates_ship_only_what_trains_and_the_policy_applies_them(tmp_path):
    base = pretrained(tmp_path)
    sizes = {}
    for mode in ("all", "head", "lora"):
        cfg = HGDAggerVLAConfig(pretrained=base, finetune=mode, lora_rank=2, lr=1e-2, **TINY)
        agent = ALGO.agent(CAM_SPEC, cfg)
        frozen = {k: p.detach().clone() for k, p in agent.model.named_parameters() if not p.requires_grad}
        for i in range(3):
            agent.update(cam_batch(8, i))
        assert all(torch.equal(p, frozen[k]) for k, p in agent.model.named_parameters() if k in frozen)
        sd = agent.policy_state_dict()
        sizes[mode] = nbytes(sd)
        if mode == "head":
            assert all(k.startswith("head.") for k in sd)
        if mode == "lora":
            assert {k.split(".")[0] for k in sd} == {"trunk", "head"}
            assert all(".lora_" in k for k in sd if k.startswith("trunk."))
        policy = ALGO.policy(CAM_SPEC, cfg)   # builds the frozen rest from the same pretrained directory
        policy.load_policy_state_dict(sd)
        x = obs(CAM_SPEC, 1, seed=5)
        agent.model.eval()
        want = agent.model.sample(x[0], agent.tokens[None], x[2], True)[0].numpy()
        got = policy.act(x[0][0].numpy(), x[2][0].numpy(), True, instruction="")
        assert np.allclose(got, want, atol=1e-6), mode
        with pytest.raises(ValueError, match="missing keys"):
            policy.load_policy_state_dict(dict(list(sd.items())[1:]))
        with pytest.raises(ValueError, match="unexpected keys"):
            policy.load_policy_state_dict({**sd, "trunk.extra": torch.zeros(1)})
    assert sizes["head"] < sizes["lora"] < sizes["all"], sizes


def test_config_checks_and_a_pretrained_model_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match="finetune: head keeps the pretrained weights"):
        HGDAggerVLAConfig(finetune="head").validate()
    base = pretrained(tmp_path)
    with pytest.raises(ValueError, match="was trained for"):
        ALGO.agent(SPEC, HGDAggerVLAConfig(pretrained=base, finetune="head", **TINY))
    with pytest.raises(ValueError, match="chunk_size: 8"):
        ALGO.agent(CAM_SPEC, HGDAggerVLAConfig(pretrained=base, finetune="head", **{**TINY, "chunk_size": 8}))
    agent = ALGO.agent(CAM_SPEC, HGDAggerVLAConfig(pretrained=base, **TINY))
    b = cam_batch(4, 0)
    del b["action_chunk"]
    with pytest.raises(ValueError, match="missing key 'action_chunk'"):
        agent.update(b)


def test_only_expert_steps_are_targets_and_resume_is_identical(tmp_path):
    cfg = HGDAggerVLAConfig(pretrained=pretrained(tmp_path), finetune="lora", lora_rank=2, **TINY)
    a = ALGO.agent(CAM_SPEC, cfg)
    m = a.update(cam_batch(4, 0, sources=[0, 0, 3, 0]))
    assert m["expert_fraction"] == 0.0 and np.isnan(m["bc_loss"])
    b = cam_batch(4, 1, sources=[1, 0, 2, 0])
    b["chunk_source"][0, 2] = 0   # the policy took over at the third step of row 0
    m = a.update(b)
    assert m["expert_fraction"] == 0.5 and m["chunk_steps"] == pytest.approx((2 + 4) / 2)
    a2 = ALGO.agent(CAM_SPEC, HGDAggerVLAConfig(**{**vars(cfg), "seed": 9}))
    a2.load_state_dict(a.state_dict())
    ma, mb = a.update(cam_batch(4, 2)), a2.update(cam_batch(4, 2))
    assert ma == mb
    assert all(torch.equal(x, y) for x, y in zip(a.policy_state_dict().values(), a2.policy_state_dict().values()))


ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]


def test_the_shipped_configs_load_and_a_memory_replay_samples_their_chunks():
    from user_buffer.replay import Layout
    from user_hal.core.cell import proprio_names
    from user_common.config_schema import ConfigError
    from user_hal.profile import load_profile
    from user_hal.tasks.rules import make_task
    from user_learner.learner_config import load_learner_config
    from user_learner.replay import open_replay
    from user_msgs.msg import CameraSpec, RobotDescription

    pick = load_learner_config(ROOT / "config" / "vla_pick.yaml")
    assert pick.algo_name == "hg_dagger_vla" and pick.algo.finetune == "lora" and pick.algo.pretrained
    assert pick.algo.instruction == load_profile(ROOT / "config" / "robot_sim_pick.yaml").task.instruction
    prof = load_profile(ROOT / "config" / "robot_sim_pick.yaml")
    robot = RobotDescription(robot_id="franka_0", embodiment="franka_fr3",
                             proprio_names=proprio_names(make_task(prof.task).objects),
                             action_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
                             cameras=[CameraSpec(name=c, width=128, height=128, encoding="rgb8")
                                      for c in prof.robot.cameras])
    assert pick.obs.spec().mismatch_with_robot(robot) == ""
    peg = load_learner_config(ROOT / "config" / "vla_peg.yaml", {"learner.checkpoint_replay": False})
    assert peg.algo.finetune == "all" and peg.obs.spec().cameras == ()
    layout = Layout(state_dim=20, extras=ALGO.batch_extras)
    rep = open_replay("memory", cfg=peg, layout=layout, seed=0)
    assert rep.horizon == peg.algo.chunk_size == 8
    with pytest.raises(ValueError, match="remote cannot sample action chunks"):
        open_replay("remote", cfg=peg, layout=layout, node=None)
    with pytest.raises(ConfigError, match="algo.finetune"):
        load_learner_config(ROOT / "config" / "vla_peg.yaml", {"algo.finetune": "some"})


def test_pretrain_command_from_a_bag_then_head_finetuning_starts_from_it(tmp_path, capsys):
    """``python -m user_learner.vla.pretrain`` on a real MCAP bag writes a model that ``finetune: head`` loads."""
    import sys

    from rclpy.serialization import serialize_message

    from user_buffer.store import TransitionStore
    from user_learner.learner_config import load_learner_config
    from user_learner.vla.pretrain import demos_from_bag, main

    sys.path.insert(0, str(ROOT / "src" / "user_buffer" / "test"))
    from buffer_helpers import transition_msg

    store = TransitionStore(tmp_path / "demos")
    for episode, n in ((1, 7), (2, 5)):
        for step in range(n):
            t = transition_msg("franka_0", episode, step, last=step == n - 1)
            t.action = [0.1 * step] * 7
            t.action_source = 2
            store.add(bytes(serialize_message(t)))
    store.close()
    eps = demos_from_bag(tmp_path / "demos")
    assert [len(e.action) for e in eps] == [7, 5] and np.allclose(eps[0].action[:, 0], 0.1 * np.arange(7))
    small = ["algo.d_model=32", "algo.layers=1", "algo.heads=2", "algo.head_dim=32", "algo.head_layers=1",
             "algo.head_heads=2", "algo.batch_size=8"]
    assert main(["--demos", str(tmp_path / "demos"), "--out", str(tmp_path / "base"), "--steps", "3",
                 "--config", str(ROOT / "config" / "vla_peg.yaml"), "--set", *small]) == 0
    assert "2 episodes, 12 steps" in capsys.readouterr().out
    _, info = load_model(tmp_path / "base")
    assert info["episodes"] == 2 and info["steps"] == 3 and info["instruction"] == "insert the peg into the hole"
    cfg = load_learner_config(ROOT / "config" / "vla_peg.yaml",
                              {"algo.pretrained": str(tmp_path / "base"), "algo.finetune": "head"})
    agent = ALGO.agent(Features(state_dim=20, extras=ALGO.batch_extras), cfg.algo)
    assert all(k.startswith("head.") for k in agent.policy_state_dict())
