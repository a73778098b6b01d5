#!/usr/bin/env python3
"""Benchmark: how fast does USER learn simulated peg insertion, asynchronously versus synchronously?

Runs the main job's node graph (``userctl launch franka_sac``) on the simulated Franka with
randomized starts, once per mode, until the success rate over the last 20 episodes reaches the
target (default 90%) or the budget runs out. Prints wall-clock time and environment steps to the
target per mode and saves the learning curves (success rate over the last 20 episodes against
wall-clock minutes and against environment steps) as a PNG.

    source scripts/env.sh && python bench/learning.py                    # 30 min budget per mode
    python bench/learning.py --modes async --minutes 20 --png docs/learning_curve.png
"""
from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_run import ROOT, EpisodeClock, config_copy, isolate_ros, run_graph, updates_per_env_step  # noqa: E402


def record_demos(cfg_dir: Path, work: Path, episodes: int) -> None:
    """Demonstrations of the scripted expert into ``work/runs/demos/replay`` (what rlpd_peg reads)."""
    log = work / "demos.log"
    code = run_graph(cfg_dir / "franka_sac.yaml", ["policy:=scripted", "record:=true", f"episodes:={episodes}",
                     "realtime_factor:=0", "run_name:=demos"], work, log, timeout_s=600)
    if code != 0:
        raise SystemExit(f"recording demonstrations failed (exit {code}); see {log}")


def run_mode(cfg_dir: Path, work: Path, config: str, mode: str, minutes: float, target: float, window: int,
             rf: float, reward: str, robots: int = 1) -> dict:
    run_name = f"learn_{config}_{mode}_{robots}"
    shutil.rmtree(work / "runs" / run_name, ignore_errors=True)
    clock = EpisodeClock()
    t0 = time.monotonic()
    recent: collections.deque[bool] = collections.deque(maxlen=window)
    curve: list[tuple[float, int, float]] = []   # (seconds, env steps, success rate over the window)
    reached: dict[str, float] = {}
    seen = 0
    steps = 0

    def check() -> bool:
        nonlocal seen, steps
        while seen < len(clock.events):
            t, m = clock.events[seen]
            seen += 1
            steps += m.steps
            recent.append(bool(m.success))
            rate = sum(recent) / len(recent)
            curve.append((t - t0, steps, rate))
            if not reached and len(recent) == window and rate >= target:
                reached.update(seconds=t - t0, env_steps=steps, episodes=seen)
        return bool(reached)

    log = work / f"{run_name}.log"
    run_graph(cfg_dir / "franka_sac.yaml", [f"config:={config}", f"sync:={str(mode == 'sync').lower()}",
              f"max_minutes:={minutes}", f"run_name:={run_name}", f"realtime_factor:={rf}", f"reward:={reward}",
              f"robots:={robots}"],
              work, log, timeout_s=60 * minutes + 120, stop_when=check)
    check()
    clock.close()
    utd = updates_per_env_step(log)
    shutil.copy(log, ROOT / "runs" / f"{run_name}.log") if (ROOT / "runs").is_dir() else None
    return {"mode": mode, "robots": robots, "curve": curve, "reached": reached, "episodes": seen, "env_steps": steps,
            "seconds": time.monotonic() - t0, "utd": utd}


def plot(results: list[dict], target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if not r["curve"]:
            continue
        secs, steps, rate = zip(*r["curve"])
        label = r["mode"] if r.get("robots", 1) == 1 else f"{r['mode']}, {r['robots']} robots"
        axes[0].plot([s / 60 for s in secs], rate, label=label)
        axes[1].plot(steps, rate, label=label)
    for ax, xlabel in zip(axes, ("wall-clock minutes", "environment steps")):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("success rate, last 20 episodes")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget per mode")
    ap.add_argument("--modes", nargs="+", default=["async", "sync"], choices=["async", "sync"])
    ap.add_argument("--config", default="sac_peg", help="learning config in config/ (sac_peg, sac_peg_cnn, "
                    "rlpd_peg, sac_flow_peg)")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--realtime-factor", type=float, default=1.0)
    ap.add_argument("--reward", default="profile", choices=["profile", "sparse", "dense"])
    ap.add_argument("--demos", type=int, default=20, help="scripted demonstration episodes, for a config that "
                    "learns from demonstrations (rlpd_peg)")
    ap.add_argument("--robots", type=int, nargs="+", default=[1], help="robot counts, each run per mode "
                    "(the success window spans every robot's episodes)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "learning_curve.png")
    args = ap.parse_args()
    isolate_ros()
    results = []
    with tempfile.TemporaryDirectory(prefix="user-learning-") as tmp:
        work = Path(tmp)
        cfg_dir = config_copy(work)
        from user_learner.algos import get_algorithm
        from user_learner.learner_config import load_learner_config

        if get_algorithm(load_learner_config(cfg_dir / f"{args.config}.yaml").algo_name).needs_demos:
            print(f"recording {args.demos} demonstration episodes of the scripted expert ...", flush=True)
            record_demos(cfg_dir, work, args.demos)
        for robots in args.robots:
            for mode in args.modes:
                print(f"learning ({mode}, {robots} robot(s)) for at most {args.minutes:g} min ...", flush=True)
                results.append(run_mode(cfg_dir, work, args.config, mode, args.minutes, args.target, args.window,
                                        args.realtime_factor, args.reward, robots))
    title = (f"{args.config} on simulated peg insertion, realtime_factor {args.realtime_factor:g}, "
             f"randomized starts, reward {args.reward}")
    plot(results, args.target, args.png, title)
    print()
    print(title)
    head = (f"{'mode':<6} | {'robots':>6} | {'reached':>7} | {'wall-clock s':>12} | {'env steps':>9} | {'episodes':>8} | "
            f"{'final success':>13} | {'updates/env step':>16}")
    print(head)
    print("-" * len(head))
    for r in results:
        rr = r["reached"]
        final = r["curve"][-1][2] if r["curve"] else 0.0
        print(f"{r['mode']:<6} | {r['robots']:>6} | {'yes' if rr else 'no':>7} | {rr.get('seconds', r['seconds']):>12.0f} | "
              f"{int(rr.get('env_steps', r['env_steps'])):>9} | {int(rr.get('episodes', r['episodes'])):>8} | "
              f"{100 * final:>12.0f}% | {r['utd']:>16.2f}")
    print(f"(where not reached: the numbers are for the whole budget; updates/env step: the training each mode "
          f"gave its data, from the learner's last progress line)\nlearning curves: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
