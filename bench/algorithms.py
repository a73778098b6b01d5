#!/usr/bin/env python3
"""Benchmark: sample efficiency of the registered algorithms on simulated peg insertion.

Each (algorithm, seed) run drives the real robot cell (``user_hal.core.cell.RobotCell`` on the MuJoCo FR3,
randomized starts, the robot's own resets and speed limits) in this process with exactly ``--utd``
updates per environment step, so the figures count environment steps and do not depend on how fast
the CPU is; the policy acts with weights reloaded from the agent every ``--publish-every`` updates,
as weight sync would deliver them. A run ends when the success rate over the last 20 episodes
reaches 90% or after ``--max-env-steps``. Reward: sparse (1 on success), the real-world setting, or
``--reward dense``; RLPD learns from ``--demos`` episodes of the scripted expert as well. Each algorithm uses the shipped
learning config that names it (``--configs``), its networks and hyper-parameters as there.

Wall-clock rows through the real graph at 10 Hz: ``python bench/learning.py --config <name>``.

    source scripts/env.sh && python bench/algorithms.py                     # every algorithm, 3 seeds
    python bench/algorithms.py --algos sac rlpd --seeds 1 --max-env-steps 3000 --png docs/algorithms.png
    python bench/algorithms.py --from-json a.json b.json     # one table and plot of runs saved with --json
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"sac": "sac_peg", "rlpd": "rlpd_peg", "sac_flow": "sac_flow_peg", "sac_flow_t": "sac_flow_peg"}
VARIANTS = {"sac_flow_t": {"algo.actor": "flow_t"}}     # rows that change a shipped config


def make_cell(seed: int, reward: str = "sparse"):
    from user_hal.backends.base import make_backend
    from user_hal.core.cell import RobotCell
    from user_hal.profile import load_profile

    prof = load_profile(ROOT / "config" / "robot_sim.yaml", {"robot.cameras": [], "task.reward": reward})
    cell = RobotCell(prof, make_backend("sim", **dict(prof.backend_options, cameras=(), render_images=False)),
                     seed=seed)
    cell.start()
    return prof, cell


class Ring:
    """Transitions as arrays (raw proprio), sampled uniformly."""

    def __init__(self, state_dim: int, action_dim: int, capacity: int) -> None:
        self.a = {"state": np.zeros((capacity, state_dim), np.float32),
                  "next_state": np.zeros((capacity, state_dim), np.float32),
                  "action": np.zeros((capacity, action_dim), np.float32),
                  "reward": np.zeros(capacity, np.float32), "terminated": np.zeros(capacity, np.float32)}
        self.n = 0

    def add(self, **row) -> None:
        for k, v in row.items():
            self.a[k][self.n] = v
        self.n += 1

    def sample(self, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.n, k)
        return {key: v[idx] for key, v in self.a.items()}


def run_episode(cell, act, seed: int, store, judge=None) -> tuple[bool, int]:
    """One episode from a reset; ``act(proprio) -> action``; every transition goes to ``store``.

    ``judge(cell, step_result) -> (reward, success)`` replaces the rule's reward and end (a learned reward,
    bench/reward.py; success ends the episode); the episode's success is then the rule's at its last step."""
    from user_hal.core.cell import proprio_vector

    state = cell.reset(seed=seed)
    obs = proprio_vector(state)
    steps, success = 0, False
    while True:
        a = act(obs)
        res = cell.step(a)
        nxt = proprio_vector(res.state)
        reward, terminated = (res.outcome.reward, res.terminated) if judge is None else judge(cell, res)
        store(state=obs, action=res.commanded, reward=reward, terminated=float(terminated), next_state=nxt)
        steps += 1
        success = (success or res.outcome.success) if judge is None else res.outcome.success
        obs = nxt
        if terminated or res.truncated:
            return success, steps


def record_demos(episodes: int, seed: int, state_dim: int, action_dim: int, make=None, judge=None) -> Ring:
    from user_hal.tasks.experts import make_expert

    prof, cell = (make or make_cell)(seed + 10_000)
    expert = make_expert(prof, seed=seed)
    ring = Ring(state_dim, action_dim, episodes * prof.robot.max_episode_steps)
    try:
        for ep in range(episodes):
            run_episode(cell, expert.act, 10_000 + 100 * seed + ep, ring.add, judge)
    finally:
        cell.close()
    return ring


def run(name: str, seed: int, args, make=None, judge=None) -> dict:
    """One run; ``make(seed, reward) -> (profile, cell)`` and ``judge`` (see ``run_episode``) change the
    cell and the reward (bench/reward.py: cameras and a learned reward)."""
    import torch

    from user_learner.algos import get_algorithm
    from user_learner.batch import batch_from_numpy
    from user_learner.learner_config import load_learner_config

    cfg = load_learner_config(ROOT / "config" / f"{CONFIGS[name]}.yaml", {"algo.seed": seed, **VARIANTS.get(name, {})})
    min_buffer = cfg.learner.min_buffer if getattr(args, "min_buffer", None) is None else args.min_buffer
    algo = get_algorithm(cfg.algo_name)
    spec, normalize = cfg.obs.spec(), cfg.obs.normalizer()
    torch.manual_seed(seed)
    agent, policy = algo.agent(spec, cfg.algo), algo.policy(spec, cfg.algo)
    policy.load_policy_state_dict(agent.policy_state_dict())
    noise = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    demos = (record_demos(args.demos, seed, spec.state_dim, spec.action_dim, make, judge) if algo.needs_demos
             else None)
    prof, cell = (make or make_cell)(seed, args.reward)
    online = Ring(spec.state_dim, spec.action_dim, args.max_env_steps + prof.robot.max_episode_steps)
    half = cfg.algo.batch_size // 2
    recent: collections.deque[bool] = collections.deque(maxlen=args.window)
    curve, reached = [], None
    t0 = time.perf_counter()

    def act(obs: np.ndarray) -> np.ndarray:
        if online.n < args.start_steps:
            return rng.uniform(-1, 1, spec.action_dim)
        return policy.act(normalize(obs), None, deterministic=False, generator=noise)

    def store(**row) -> None:
        online.add(**row)
        if online.n < max(args.start_steps, min_buffer):
            return
        for _ in range(args.utd):
            arrays = online.sample(cfg.algo.batch_size if demos is None else half, rng)
            if demos is not None:
                d = demos.sample(cfg.algo.batch_size - half, rng)
                arrays = {k: np.concatenate([arrays[k], d[k]]) for k in arrays}
            arrays["state"], arrays["next_state"] = normalize(arrays["state"]), normalize(arrays["next_state"])
            agent.update(batch_from_numpy(arrays))
            if agent.num_updates % args.publish_every == 0:
                policy.load_policy_state_dict(agent.policy_state_dict())

    episode = 0
    try:
        while online.n < args.max_env_steps and reached is None:
            success, _ = run_episode(cell, act, 100 * seed + episode, store, judge)
            episode += 1
            recent.append(success)
            rate = sum(recent) / len(recent)
            curve.append((online.n, rate))
            if len(recent) == args.window and rate >= args.target:
                reached = online.n
    finally:
        cell.close()
    return {"algo": name, "seed": seed, "reached": reached, "env_steps": online.n, "episodes": episode,
            "final_rate": curve[-1][1] if curve else 0.0, "updates": agent.num_updates,
            "seconds": time.perf_counter() - t0, "curve": curve}


def plot(results: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(dict.fromkeys(r["algo"] for r in results)):
        for j, r in enumerate(x for x in results if x["algo"] == name):
            steps, rate = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(steps, rate, color=f"C{i}", alpha=0.8, label=name if j == 0 else None)
    ax.axhline(args.target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"success rate, last {args.window} episodes")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"simulated peg insertion, {args.reward} reward, {args.utd} update(s) per env step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python"] + sys.argv)


def load_runs(paths: list[Path], args) -> list[dict]:
    """Results saved by earlier runs (``--json``); the settings that change the figures must agree."""
    results, first, seen, budget = [], None, {}, 0
    for path in paths:
        try:
            saved = json.loads(path.read_text())
            runs, settings = saved["results"], saved["args"]
            budget = max(budget, int(settings["max_env_steps"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--from-json {path}: not a result file of this benchmark ({e})")
        settings.setdefault("reward", "sparse")          # files written before --reward existed
        key = {k: settings.get(k) for k in ("utd", "reward", "target", "window", "start_steps", "publish_every")}
        if first is not None and key != first[1]:
            raise SystemExit(f"--from-json: {path} was run with {key}, {first[0]} with {first[1]}; "
                             "runs with other settings do not share a table")
        first = first or (path, key)
        print(f"runs from {path}: {saved.get('command', 'python bench/algorithms.py ...')}")
        for r in runs:
            if (r["algo"], r["seed"]) in seen:
                raise SystemExit(f"--from-json: {r['algo']} seed {r['seed']} is in both {seen[r['algo'], r['seed']]} "
                                 f"and {path}")
            seen[r["algo"], r["seed"]] = path
            results.append(r)
    results.sort(key=lambda r: (list(CONFIGS).index(r["algo"]), r["seed"]))
    for k, v in first[1].items():
        setattr(args, k, v)
    args.max_env_steps = budget
    return results


def report(results: list[dict], args) -> list[dict]:
    print()
    print(f"command: {command_line()}")
    print(f"python {platform.python_version()}; {args.utd} update(s) per env step; budget {args.max_env_steps} env "
          f"steps; target {args.target:.0%} over the last {args.window} episodes; {args.reward} reward")
    print()
    print("| algorithm | config | seeds reaching 90% | env steps to 90%, per seed | median | episodes | "
          "updates | minutes per run |")
    print("|---|---|--:|---|--:|--:|--:|--:|")
    medians: dict[str, float] = {}
    for name in dict.fromkeys(r["algo"] for r in results):
        rs = [r for r in results if r["algo"] == name]
        per = [str(r["reached"]) if r["reached"] is not None else f"> {r['env_steps']} ({r['final_rate']:.0%})"
               for r in rs]
        steps = [r["reached"] if r["reached"] is not None else float("inf") for r in rs]
        medians[name] = float(np.median(steps))
        med = f"{medians[name]:.0f}" if np.isfinite(medians[name]) else "not reached"
        print(f"| {name} | {CONFIGS[name]}{' ' + str(VARIANTS[name]) if name in VARIANTS else ''} | "
              f"{sum(r['reached'] is not None for r in rs)}/{len(rs)} | {', '.join(per)} | {med} | "
              f"{np.median([r['episodes'] for r in rs]):.0f} | {np.median([r['updates'] for r in rs]):.0f} | "
              f"{np.median([r['seconds'] for r in rs]) / 60:.1f} |")
    print()
    checks = []

    def check(text: str, ok: bool | None, measured: str) -> None:
        print(f"{ {True: 'PASS', False: 'MISS', None: 'N/A '}[ok]}  {text}: {measured}")
        checks.append({"check": text, "pass": ok, "measured": measured})

    if "rlpd" in medians:
        check("RLPD reaches 90% within 3000 env steps (median over seeds)", medians["rlpd"] <= 3000,
              f"{medians['rlpd']:.0f}")
    for flow in ("sac_flow", "sac_flow_t"):
        if flow in medians and "sac" in medians:
            text = f"{flow} needs at most 1.3x the env steps of SAC"
            if not np.isfinite(medians["sac"]):
                check(text, None, "SAC did not reach the target within the budget, so there is no ratio "
                      "(compare with --reward dense)")
                continue
            ratio = medians[flow] / medians["sac"]
            check(text, bool(ratio <= 1.3), f"{ratio:.2f}x ({medians[flow]:.0f} vs {medians['sac']:.0f})")
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-env-steps", type=int, default=12_000)
    ap.add_argument("--utd", type=int, default=2, help="updates per environment step (fixed)")
    ap.add_argument("--start-steps", type=int, default=500, help="random actions before the policy acts")
    ap.add_argument("--min-buffer", type=int, help="transitions before the first update (default: the config's "
                    "learner.min_buffer)")
    ap.add_argument("--publish-every", type=int, default=50, help="updates between weight reloads of the policy")
    ap.add_argument("--demos", type=int, default=20, help="scripted demonstration episodes (RLPD)")
    ap.add_argument("--reward", default="sparse", choices=["sparse", "dense"],
                    help="sparse: 1 on success (the real-world setting); dense: also minus the distance to the target")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "algorithms_curves.png")
    ap.add_argument("--json", type=Path, help="save every run (curves included) here")
    ap.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                    help="run nothing: one table and plot of the runs saved in these files")
    args = ap.parse_args()
    if args.from_json:
        results = load_runs(args.from_json, args)
        plot(results, args.png, args)
        report(results, args)
        print(f"learning curves: {args.png}")
        return 0
    import torch

    torch.set_num_threads(1)   # one core per run: two runs of this script share a 2-core machine
    results = []
    for name in args.algos:
        for seed in range(args.seeds):
            print(f"{name}, seed {seed} ...", flush=True)
            r = run(name, seed, args)
            results.append(r)
            how = f"90% after {r['reached']} env steps" if r["reached"] else f"{r['final_rate']:.0%} at the budget"
            print(f"  {how}; {r['episodes']} episodes, {r['updates']} updates, {r['seconds'] / 60:.1f} min", flush=True)
    plot(results, args.png, args)
    checks = report(results, args)
    print(f"learning curves: {args.png}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "checks": checks, "args": vars(args),
                                         "command": command_line()}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
