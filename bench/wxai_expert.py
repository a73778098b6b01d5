#!/usr/bin/env python3
"""Benchmark: the scripted peg-insertion expert on the simulated WidowX AI (config/robot_wxai.yaml), no ROS.

Runs randomized episodes (start pose from the episode's seed, 0, 1, 2, ...) with the expert's actions plus
Gaussian noise of each ``--noise`` in turn, and prints successes and steps per noise level. The measured run
is in docs/wxai.md.

    source scripts/env.sh && python bench/wxai_expert.py                      # 200 episodes, noise 0 and 0.2
    python bench/wxai_expert.py --episodes 3 --noise 0                        # smoke (tests)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "config" / "robot_wxai.yaml"))
    ap.add_argument("--episodes", type=int, default=200, help="episodes per noise level")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2], help="action noise std (action units)")
    args = ap.parse_args(argv)

    from user_hal.backends.base import make_backend
    from user_hal.core.cell import RobotCell
    from user_hal.profile import load_profile
    from user_hal.tasks.experts import make_expert

    prof = load_profile(args.profile, {"robot.realtime_factor": 0.0})
    cell = RobotCell(prof, make_backend(prof.robot.backend, **prof.backend_options, render_images=False))
    cell.start()
    print(f"| noise | successes | steps mean | steps max |   ({prof.robot.embodiment}, {args.profile})")
    try:
        for noise in args.noise:
            ok, steps = 0, []
            for seed in range(args.episodes):
                state, expert = cell.reset(seed=seed), make_expert(prof, noise=noise, seed=seed)
                for _ in range(prof.robot.max_episode_steps):
                    res = cell.step(expert.act(cell.proprio(state)))
                    state = res.state
                    if res.terminated or res.truncated:
                        break
                ok += bool(res.outcome.success)
                steps.append(cell.step_count)
            print(f"| {noise:g} | {ok}/{args.episodes} | {np.mean(steps):.1f} | {max(steps)} |")
    finally:
        cell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
