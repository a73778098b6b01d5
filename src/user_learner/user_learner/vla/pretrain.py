"""Behaviour-cloning pretraining of the VLA-like policy on demonstrations, and the demonstrations as
whole episodes (so that a row's chunk target is the next ``H`` actions of its episode).

    python -m user_learner.vla.pretrain --demos runs/demos/replay --out runs/vla_base --steps 2000 \\
        [--config config/vla_pick.yaml] [--set algo.d_model=128 ...]

reads the learning config for the observation (normalization, cameras) and the architecture, trains
every weight (``finetune: all``) on all rows of the bag, and writes ``model.safetensors`` + ``config.json``
to ``--out``: the directory ``algo.pretrained`` names for fine-tuning.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from user_buffer.replay import chunk_arrays

SOURCE_SCRIPTED = 2


@dataclasses.dataclass
class Episode:
    """One demonstration: ``state`` ``[T, D]`` (as the robot sent it), ``action`` ``[T, A]``, ``pixels``
    ``[T, n, H, W, 3]`` uint8 or None, ``action_source`` ``[T]`` uint8."""

    state: np.ndarray
    action: np.ndarray
    pixels: np.ndarray | None = None
    action_source: np.ndarray | None = None


class Demos:
    """Demonstration episodes, sampled as training batches with action chunks of ``horizon`` steps."""

    def __init__(self, episodes: Sequence[Episode], horizon: int, seed: int = 0) -> None:
        if not episodes:
            raise ValueError("demos: no episodes")
        self.horizon = horizon
        self.rng = np.random.default_rng(seed)
        self.state = np.concatenate([e.state for e in episodes]).astype(np.float32)
        self.action = np.concatenate([e.action for e in episodes]).astype(np.float32)
        self.pixels = np.concatenate([e.pixels for e in episodes]) if episodes[0].pixels is not None else None
        self.source = np.concatenate([e.action_source if e.action_source is not None
                                      else np.full(len(e.action), SOURCE_SCRIPTED, np.uint8) for e in episodes])
        ends = np.cumsum([len(e.action) for e in episodes])
        self.end = np.repeat(ends, [len(e.action) for e in episodes])   # one past each row's episode
        self.episodes = len(episodes)

    def __len__(self) -> int:
        return len(self.action)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch (``batch.py`` keys with ``action_source`` and ``intervened``) plus the chunk keys."""
        idx = self.rng.integers(0, len(self), batch_size)
        later = idx[:, None] + np.arange(self.horizon)[None]
        found = later < self.end[idx][:, None]
        later = np.where(found, later, idx[:, None])
        nxt = np.minimum(idx + 1, len(self) - 1)
        out = {"state": self.state[idx], "next_state": self.state[nxt], "action": self.action[idx],
               "reward": np.zeros(batch_size, np.float32), "terminated": np.zeros(batch_size, np.float32),
               "action_source": self.source[idx], "intervened": np.zeros(batch_size, np.float32)}
        if self.pixels is not None:
            out["pixels"], out["next_pixels"] = self.pixels[idx], self.pixels[nxt]
        out.update(chunk_arrays(self.action[later], found, self.source[later]))
        return out


def demos_from_bag(directory: str | Path, cameras: Sequence[str] = (), embodiment: str = "") -> list[Episode]:
    """Every episode of a recorded bag (``runs/<name>/replay``), steps in order; all action sources kept."""
    from user_buffer.codec import decode_transition
    from user_buffer.store import TransitionStore

    store = TransitionStore(directory, writable=False)
    try:
        v = store.snapshot()
        rows = np.lexsort((v["step"], v["episode"], v["robot"]))
        episodes, current, key = [], [], None
        for r in rows.tolist():
            t = decode_transition(store.read(r))
            if embodiment and t.embodiment != embodiment:
                continue
            k = (t.robot_id, int(t.episode_id))
            if k != key and current:
                episodes.append(_episode(current, cameras))
                current = []
            key = k
            current.append(t)
        if current:
            episodes.append(_episode(current, cameras))
    finally:
        store.close()
    if not episodes:
        raise ValueError(f"--demos {directory}: no transitions{' of ' + embodiment if embodiment else ''}")
    return episodes


def _episode(ts, cameras: Sequence[str]) -> Episode:
    pixels = None
    if cameras:
        pixels = np.stack([np.stack([t.obs.images[t.obs.camera_names.index(c)] for c in cameras]) for t in ts])
    return Episode(state=np.stack([t.obs.proprio for t in ts]), action=np.stack([t.action for t in ts]),
                   pixels=pixels, action_source=np.array([t.action_source for t in ts], np.uint8))


def bc_pretrain(agent, demos: Demos, steps: int, normalize: Callable[[np.ndarray], np.ndarray] | None = None,
                log_every: int = 0, log: Callable[[str], None] = print) -> list[float]:
    """``steps`` updates of ``agent`` (an ``HGDAggerVLAAgent``) on batches of ``demos``; the losses."""
    from ..batch import batch_from_numpy

    losses = []
    t0 = time.perf_counter()
    for i in range(steps):
        arrays = demos.sample(agent.cfg.batch_size)
        if normalize is not None:
            arrays["state"], arrays["next_state"] = normalize(arrays["state"]), normalize(arrays["next_state"])
        m = agent.update(batch_from_numpy(arrays))
        losses.append(m["bc_loss"])
        if log_every and (i + 1) % log_every == 0:
            log(f"step {i + 1}/{steps}: bc_loss {np.mean(losses[-log_every:]):.4f} "
                f"({(time.perf_counter() - t0) / (i + 1) * 1e3:.0f} ms per update)")
    return losses


def main(argv: Sequence[str] | None = None) -> int:
    from ..algos.hg_dagger_vla import HGDAggerVLAAgent
    from ..learner_config import load_learner_config
    from .model import count_parameters, save_model

    ap = argparse.ArgumentParser(prog="python -m user_learner.vla.pretrain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--demos", required=True, help="a bag of demonstrations (runs/<name>/replay)")
    ap.add_argument("--out", required=True, help="directory to write model.safetensors + config.json to")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--config", default="config/vla_pick.yaml", help="learning config (obs and algo.*)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (algo.d_model=128)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device (cuda on a GPU box; not tried here)")
    args = ap.parse_args(argv)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    overrides.update({"algo.finetune": "all", "algo.pretrained": ""})
    cfg = load_learner_config(args.config, overrides)
    if cfg.algo_name != "hg_dagger_vla":
        print(f"--config {args.config}: algo.name is {cfg.algo_name}, pretraining needs hg_dagger_vla", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    spec = cfg.obs.spec()
    episodes = demos_from_bag(args.demos, spec.cameras)
    demos = Demos(episodes, cfg.algo.chunk_size, seed=cfg.algo.seed)
    agent = HGDAggerVLAAgent(spec, cfg.algo, device=args.device)
    print(f"{demos.episodes} episodes, {len(demos)} steps from {args.demos}; model "
          f"{count_parameters(agent.model) / 1e6:.1f} M parameters; {args.steps} updates of {cfg.algo.batch_size}")
    losses = bc_pretrain(agent, demos, args.steps, cfg.obs.normalizer(), log_every=max(1, args.steps // 20))
    out = save_model(agent.model, args.out, {
        "demos": str(args.demos), "episodes": demos.episodes, "steps": args.steps, "config": str(args.config),
        "instruction": cfg.algo.instruction, "final_bc_loss": float(np.mean(losses[-50:])),
        "state_offset": list(cfg.obs.state_offset), "state_scale": list(cfg.obs.state_scale)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
