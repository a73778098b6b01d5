#!/usr/bin/env python3
"""Benchmark: behaviour-cloning pretraining of the VLA-like chunk policy on simulated pick-and-place.

Records ``--demos`` episodes of the scripted expert in the real robot cell (``user_hal.core.cell.RobotCell`` on
the MuJoCo FR3, randomized starts, in this process), BC-pretrains the policy of ``config/vla_pick.yaml``
(``finetune: all``, architecture overridable with ``--set``) for ``--steps`` updates, then runs
``--eval`` episodes acting in chunks (the first ``--execute`` actions of every chunk, then a new chunk) and
prints the success rate and the time per update. Without ``--cameras`` the policy sees proprio and
instruction only (no rendering: fast); ``--cameras wrist side`` renders both cameras (MUJOCO_GL=egl).

    source scripts/env.sh && python bench/vla.py --demos 5 20 --steps 1500
    python bench/vla.py --demos 20 --steps 2000 --cameras wrist side --set algo.d_model=256
    python bench/vla.py --sizes        # the shipped (29 M) model: bytes per weight update, time per update

``bc_pretrained_policy`` is what an HG-DAgger curve starts from: a weakly pretrained policy and its agent.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"algo.d_model": 128, "algo.layers": 2, "algo.heads": 4, "algo.head_dim": 128, "algo.head_layers": 2,
         "algo.lr": 3e-4, "algo.batch_size": 64}   # about 1 M parameters: trains in minutes on a CPU


def make_pick_cell(seed: int, cameras: Sequence[str] = ()):
    from user_hal.backends.base import make_backend
    from user_hal.core.cell import RobotCell
    from user_hal.profile import load_profile

    prof = load_profile(ROOT / "config" / "robot_sim_pick.yaml", {"robot.cameras": list(cameras)})
    cell = RobotCell(prof, make_backend("sim", **dict(prof.backend_options, cameras=tuple(cameras),
                                                      render_images=bool(cameras))), seed=seed)
    cell.start()
    return prof, cell


def _pixels(cell, cameras: Sequence[str]) -> np.ndarray | None:
    if not cameras:
        return None
    frames = cell.backend.render()
    return np.stack([frames[c] for c in cameras])


def record_demos(episodes: int, seed: int, cameras: Sequence[str] = ()) -> list:
    """``episodes`` scripted-expert episodes (``user_learner.vla.pretrain.Episode``; successful or not)."""
    from user_hal.tasks.experts import make_expert
    from user_learner.vla.pretrain import Episode

    prof, cell = make_pick_cell(seed + 10_000, cameras)
    expert = make_expert(prof, seed=seed)
    out = []
    try:
        for ep in range(episodes):
            state = cell.reset(seed=10_000 + 100 * seed + ep)
            s, a, px = [], [], []
            while True:
                obs = cell.proprio(state)
                s.append(obs)
                if cameras:
                    px.append(_pixels(cell, cameras))
                res = cell.step(expert.act(obs))
                a.append(res.commanded)
                state = res.state
                if res.terminated or res.truncated:
                    break
            out.append(Episode(np.array(s, np.float32), np.array(a, np.float32),
                               np.array(px) if cameras else None))
    finally:
        cell.close()
    return out


def evaluate(policy, normalize, episodes: int, seed: int, cameras: Sequence[str] = (), execute: int = 4,
             instruction: str | None = None) -> tuple[float, float]:
    """Success rate over ``episodes`` deterministic episodes, executing ``execute`` actions per chunk; and
    the mean seconds per ``act`` call."""
    import torch

    _, cell = make_pick_cell(seed, cameras)
    wins, act_s, calls = 0, 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    try:
        for ep in range(episodes):
            state = cell.reset(seed=100 * seed + ep)
            plan: list[np.ndarray] = []
            success = False
            while True:
                if not plan:
                    t0 = time.perf_counter()
                    chunk = policy.act(normalize(cell.proprio(state)), _pixels(cell, cameras), True, gen,
                                       instruction=instruction)
                    act_s += time.perf_counter() - t0
                    calls += 1
                    chunk = chunk.reshape(-1, chunk.shape[-1])
                    plan = list(chunk[:max(1, min(execute, len(chunk)))])
                res = cell.step(plan.pop(0))
                state = res.state
                success = success or res.outcome.success
                if res.terminated or res.truncated:
                    break
            wins += success
    finally:
        cell.close()
    return wins / episodes, act_s / max(calls, 1)


def small_agent(seed: int = 0, cameras: Sequence[str] = (), overrides: dict | None = None):
    """``(algo, spec, cfg, agent)``: a fresh ``finetune: all`` agent of ``config/vla_pick.yaml`` with the
    ``SMALL`` architecture (``overrides`` on top)."""
    import torch

    from user_learner.algos import get_algorithm
    from user_learner.learner_config import load_learner_config

    o = {**SMALL, **(overrides or {}), "algo.seed": seed, "algo.finetune": "all", "algo.pretrained": "",
         "obs.cameras": list(cameras)}
    cfg = load_learner_config(ROOT / "config" / "vla_pick.yaml", o)
    algo = get_algorithm(cfg.algo_name)
    spec = cfg.obs.spec()
    spec = type(spec)(**{**spec.__dict__, "extras": algo.batch_extras})
    torch.manual_seed(seed)
    return algo, spec, cfg, algo.agent(spec, cfg.algo)


def bc_pretrained_policy(demos: int = 5, steps: int = 500, seed: int = 0, cameras: Sequence[str] = (),
                         overrides: dict | None = None, log_every: int = 0):
    """A BC-pretrained policy to start HG-DAgger from (few demos/steps give a weak one).

    Returns ``(policy, agent, cfg, info)``: ``policy`` a ``VLAPolicy`` loaded with the agent's weights,
    ``agent`` the ``HGDAggerVLAAgent`` (``finetune: all``; save ``agent.model`` with
    ``user_learner.vla.model.save_model`` to fine-tune ``head``/``lora`` from it), ``cfg`` the loaded
    learner config, ``info`` the losses and seconds per update.
    """
    from user_learner.vla.pretrain import Demos, bc_pretrain

    episodes = record_demos(demos, seed, cameras)
    algo, spec, cfg, agent = small_agent(seed, cameras, overrides)
    t0 = time.perf_counter()
    losses = bc_pretrain(agent, Demos(episodes, cfg.algo.chunk_size, seed), steps, cfg.obs.normalizer(),
                         log_every=log_every)
    per_update = (time.perf_counter() - t0) / max(steps, 1)
    policy = algo.policy(spec, cfg.algo)
    policy.load_policy_state_dict(agent.policy_state_dict())
    info = {"losses": losses, "s_per_update": per_update, "demo_steps": sum(len(e.action) for e in episodes)}
    return policy, agent, cfg, info


def sizes(updates: int = 3, batch_size: int = 32) -> None:
    """What crosses to inference per weight update (``finetune`` all / head / lora, packed as weight sync
    packs it) and the time per update and per ``act`` of the model ``config/vla_pick.yaml`` describes."""
    import tempfile

    import torch

    from user_learner.algos import get_algorithm
    from user_learner.learner_config import load_learner_config
    from user_learner.vla.model import count_parameters, save_model
    from user_learner.weights import pack_state_dict

    algo = get_algorithm("hg_dagger_vla")
    base = load_learner_config(ROOT / "config" / "vla_pick.yaml", {"algo.pretrained": "", "algo.finetune": "all"})
    spec = base.obs.spec()
    spec = type(spec)(**{**spec.__dict__, "extras": algo.batch_extras})
    rng = np.random.default_rng(0)
    h, a, n = base.algo.chunk_size, spec.action_dim, batch_size
    batch = {"state": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
             "next_state": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
             "pixels": rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8),
             "next_pixels": rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8),
             "action": rng.uniform(-1, 1, (n, a)).astype(np.float32), "reward": np.zeros(n, np.float32),
             "terminated": np.zeros(n, np.float32), "intervened": np.zeros(n, np.float32),
             "action_source": np.full(n, 2, np.uint8), "action_chunk": rng.uniform(-1, 1, (n, h, a)).astype(np.float32),
             "chunk_mask": np.ones((n, h), np.float32), "chunk_source": np.full((n, h), 2, np.uint8)}
    from user_learner.batch import batch_from_numpy

    tb = batch_from_numpy(batch)
    print(f"command: {' '.join(shlex.quote(x) for x in ['python'] + sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); cameras {list(spec.cameras)} "
          f"{spec.image_size[0]}x{spec.image_size[1]}, chunk {h}, batch {n}")
    print()
    print("| finetune | trained parameters | of total | tensors per update | bytes per update (packed) | "
          "s per update | ms per act |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        full = algo.agent(spec, base.algo)
        total = count_parameters(full.model)
        save_model(full.model, tmp)
        del full
        for mode in ("all", "head", "lora"):
            cfg = load_learner_config(ROOT / "config" / "vla_pick.yaml",
                                      {"algo.pretrained": tmp, "algo.finetune": mode})
            agent = algo.agent(spec, cfg.algo)
            agent.update(tb)   # warm-up
            t0 = time.perf_counter()
            for _ in range(updates):
                agent.update(tb)
            per = (time.perf_counter() - t0) / updates
            sd = agent.policy_state_dict()
            blob = pack_state_dict(sd)
            policy = algo.policy(spec, cfg.algo)
            policy.load_policy_state_dict(sd)
            px = batch["pixels"][0]
            policy.act(batch["state"][0], px, True)
            t0 = time.perf_counter()
            for _ in range(3):
                policy.act(batch["state"][0], px, True)
            act_ms = (time.perf_counter() - t0) / 3 * 1e3
            trained = sum(t.numel() for t in sd.values())
            print(f"| {mode} | {trained:,} | {trained / total:.1%} | {len(sd)} | {len(blob):,} | {per:.2f} | "
                  f"{act_ms:.0f} |", flush=True)
            del agent, policy
    print(f"\ntotal parameters {total:,}")


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    import yaml

    from user_learner.vla.model import count_parameters

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demos", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval", type=int, default=20)
    ap.add_argument("--execute", type=int, nargs="+", default=[4], help="actions executed per chunk (each "
                                                                      "value evaluated on the same policy)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--cameras", nargs="*", default=[])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sizes", action="store_true", help="only: bytes per update and time per update of the "
                                                         "shipped model (all / head / lora)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.sizes:
        sizes()
        return 0
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    for n in args.demos:
        for seed in range(args.seeds):
            policy, agent, cfg, info = bc_pretrained_policy(n, args.steps, seed, args.cameras, overrides,
                                                            log_every=max(1, args.steps // 5))
            for execute in args.execute:
                rate, act_s = evaluate(policy, cfg.obs.normalizer(), args.eval, 1000 + seed, args.cameras, execute,
                                       cfg.algo.instruction)
                rows.append((n, seed, info["demo_steps"], float(np.mean(info["losses"][:20])),
                             float(np.mean(info["losses"][-50:])), execute, rate, info["s_per_update"], act_s))
                print(f"demos {n} seed {seed} executing {execute} per chunk: success {rate:.0%}", flush=True)
    print()
    print(f"command: {' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, 1 thread; model "
          f"{count_parameters(agent.model) / 1e6:.2f} M parameters, chunk {cfg.algo.chunk_size}, batch "
          f"{cfg.algo.batch_size}, cameras {args.cameras or 'none'}; eval: {args.eval} episodes, deterministic")
    print()
    print("| demos | seed | demo steps | BC updates | loss first 20 | loss last 50 | executed per chunk | success | "
          "s per update | ms per act |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for n, seed, ds, l0, l1, execute, rate, su, act_s in rows:
        print(f"| {n} | {seed} | {ds} | {args.steps} | {l0:.3f} | {l1:.3f} | {execute} | {rate:.0%} | {su:.3f} | "
              f"{1e3 * act_s:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
