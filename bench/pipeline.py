#!/usr/bin/env python3
"""Benchmark: the synchronous loop versus USER's asynchronous pipeline (the RLinf-USER paper's table).

For each policy (state MLP, two-camera CNN) and each mode, runs the real node graph
(``userctl launch franka_sac``) with the simulated Franka in real time (10 Hz) for a fixed wall-clock
budget, and measures:

- generation s/episode: wall-clock time between consecutive episode ends (so the sync loop's
  training pauses count), and the physical limit of each episode: its steps / control rate plus the
  reset time it took;
- train s/update: wall-clock time per SAC update from the first update to the end of the run.

Sync mode is the traditional loop: collect an episode, train K updates, push the weights, wait until
inference uses them, reset the robot, repeat. Async mode is USER: nobody waits. Prints one table.

    source scripts/env.sh && python bench/pipeline.py               # 3 minutes per run, 4 runs
    python bench/pipeline.py --minutes 1 --policies state            # quick look
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_run import ROOT, EpisodeClock, config_copy, isolate_ros, run_graph  # noqa: E402
SUMMARY = re.compile(r"summary: (\d+) env steps, (\d+) updates, (\d+) episodes in (\d+)m(\d+)s "
                     r"\(first update after ([\d.]+) s\)")


def run_once(cfg_dir: Path, work: Path, config: str, sync: bool, minutes: float, hz: float) -> dict:
    run_name = f"{config}_{'sync' if sync else 'async'}"
    shutil.rmtree(work / "runs" / run_name, ignore_errors=True)
    clock = EpisodeClock()
    log = work / f"{run_name}.log"
    t_start = time.monotonic()
    run_graph(cfg_dir / "franka_sac.yaml", [f"config:={config}", f"sync:={str(sync).lower()}",
              f"max_minutes:={minutes}", f"run_name:={run_name}", "realtime_factor:=1.0"],
              work, log, timeout_s=60 * minutes + 180)
    clock.close()
    text = log.read_text()
    summary = SUMMARY.search(text)
    if summary is None:
        raise SystemExit(f"{run_name}: the learner printed no summary; see {log}")
    total_s = 60 * int(summary.group(4)) + int(summary.group(5))
    updates = int(summary.group(2))
    train_s = total_s - float(summary.group(6))
    train_updates = updates
    eps = [(t, m) for t, m in clock.events if t > t_start]
    intervals, limits = [], []
    for (t0, _), (t1, m1) in zip(eps, eps[1:]):
        interval = t1 - t0
        reset = max(interval - m1.duration_s, 0.0)
        intervals.append(interval)
        limits.append(m1.steps / hz + reset)
    n = len(intervals)
    return {
        "run": run_name, "episodes": len(eps), "updates": updates, "utd": updates / max(int(summary.group(1)), 1),
        "gen_s": sum(intervals) / n if n else float("nan"),
        "limit_s": sum(limits) / n if n else float("nan"),
        "train_s_per_update": train_s / train_updates if train_updates > 0 else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget of each run")
    ap.add_argument("--policies", nargs="+", default=["state", "cnn"], choices=["state", "cnn"])
    ap.add_argument("--sync-k-state", type=int, default=100, help="sync: updates per episode, state policy")
    ap.add_argument("--sync-k-cnn", type=int, default=5, help="sync: updates per episode, CNN policy")
    args = ap.parse_args()
    isolate_ros()
    configs = {"state": "sac_peg", "cnn": "sac_peg_cnn"}
    ks = {"sac_peg": args.sync_k_state, "sac_peg_cnn": args.sync_k_cnn}
    prof = yaml.safe_load((ROOT / "config" / "robot_sim.yaml").read_text())
    hz = float(prof["robot"]["control_hz"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="user-bench-") as tmp:
        work = Path(tmp)
        # async trains as fast as the CPU allows; sync trains K updates per episode
        cfg_dir = config_copy(work, {name: {"sync_updates_per_episode": k, "max_utd": 0.0, "log_every_s": 2.0}
                                     for name, k in ks.items()})
        for policy in args.policies:
            res = {}
            for sync in (True, False):
                print(f"running {policy} {'sync' if sync else 'async'} for {args.minutes:g} min ...", flush=True)
                res[sync] = run_once(cfg_dir, work, configs[policy], sync, args.minutes, hz)
            rows.append((policy, ks[configs[policy]], res[True], res[False]))
    print()
    print(f"pipeline benchmark: simulated Franka in real time ({hz:g} Hz), {args.minutes:g} min per run, "
          f"{os.cpu_count()} CPU cores, no GPU")
    head = (f"{'policy':<7} {'sync K':>6} | {'gen s/ep sync':>13} {'async':>7} {'limit':>7} {'async/limit':>11} | "
            f"{'train s/upd sync':>16} {'async':>8} {'speedup':>8} | {'updates sync':>12} {'async':>7} | "
            f"{'upd/env step sync':>17} {'async':>6}")
    print(head)
    print("-" * len(head))
    for policy, k, s, a in rows:
        print(f"{policy:<7} {k:>6} | {s['gen_s']:>13.2f} {a['gen_s']:>7.2f} {a['limit_s']:>7.2f} "
              f"{a['gen_s'] / a['limit_s']:>11.3f} | {s['train_s_per_update']:>16.3f} "
              f"{a['train_s_per_update']:>8.3f} {s['train_s_per_update'] / a['train_s_per_update']:>7.1f}x | "
              f"{s['updates']:>12} {a['updates']:>7} | {s['utd']:>17.2f} {a['utd']:>6.2f}")
    print("(upd/env step: updates per environment step, the training each mode gave its data; the modes are\n"
          " compared at the training they can afford in the same wall-clock time, not at equal updates per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
