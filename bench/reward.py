#!/usr/bin/env python3
"""Benchmark: the learned reward (success classifier) on simulated peg insertion.

1. Record labelled frames in this process (the real robot cell on the MuJoCo FR3 with its two 128x128
   cameras; no ROS): the scripted expert with action noise of 0, 0.3, 0.6 and 1.2 in turn, so that
   episodes succeed early, late or never; after its first success an episode goes on for 0-10 more
   steps (success frames, as a human holding the peg in would give). Each frame (an observation after a
   step) is labelled by the rule. Or ``--data <bag dirs>`` (recorded with ``userctl reward record``).
2. Train the classifier (``user_learner.reward``: small CNN, BCE, balanced batches, random shifts and
   colour jitter) with whole episodes held out; print per-frame accuracy and F1 on them at the
   threshold (0.85). Target: accuracy >= 95%.
3. ``--rl``: RLPD (config rlpd_peg, 20 scripted demonstrations) with the learned reward alone (reward 1
   and the episode's end when the classifier says success on the frames after a step, judged at once
   in this process; the demonstrations relabelled the same way) against the rule's sparse reward, both
   judged by the rule (an episode succeeds if the rule says success at its last step), env steps to
   90% success over the last 20 episodes. Target: learned <= 1.5x rule. The loop is
   ``bench/algorithms.py``'s (``run`` with a cell factory and a judge).

    source scripts/env.sh && python bench/reward.py                       # record, train, accuracy/F1
    python bench/reward.py --rl --seeds 3 --max-env-steps 12000 --json runs/bench_reward.json
    python bench/reward.py --episodes 6 --steps 30 --image-size 64 --rl --max-env-steps 200   # smoke (tests)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import algorithms  # noqa: E402  (bench/algorithms.py: the RL loop reused here)

NOISES = (0.0, 0.3, 0.6, 1.2)
CAMERAS = ("wrist", "side")


def make_camera_cell(seed: int, reward_source: str = "classifier", image_size: tuple[int, int] | None = None):
    """The simulated cell of config/robot_sim.yaml rendering its cameras; with ``classifier`` the rule's
    success ends nothing (the classifier decides)."""
    from user_hal.backends.base import make_backend
    from user_hal.core.cell import RobotCell
    from user_hal.profile import load_profile

    changes = {"task.reward": "sparse", "task.reward_source": reward_source}
    if image_size:
        changes["robot.image_size"] = list(image_size)
    prof = load_profile(ROOT / "config" / "robot_sim.yaml", changes)
    rc = prof.robot
    backend = make_backend("sim", **dict(prof.backend_options, cameras=tuple(rc.cameras),
                                         image_width=rc.image_size[0], image_height=rc.image_size[1]))
    cell = RobotCell(prof, backend, seed=seed)
    cell.start()
    return prof, cell


def frames_of(cell, cameras) -> np.ndarray:
    rendered = cell.backend.render()
    return np.stack([rendered[c] for c in cameras])


def record(episodes: int, seed: int, extra_after_success: int = 10, log=print, image_size=None):
    """Labelled frames of ``episodes`` scripted episodes (see the module doc); returns ``Frames``."""
    from user_hal.core.cell import proprio_vector
    from user_hal.tasks.experts import make_expert
    from user_learner.reward import frames_from_arrays

    prof, cell = make_camera_cell(seed + 20_000, image_size=image_size)
    rng = np.random.default_rng(seed)
    images, labels, eps = [], [], []
    t0 = time.perf_counter()
    try:
        for ep in range(episodes):
            expert = make_expert(prof, noise=NOISES[ep % len(NOISES)], seed=seed * 1000 + ep)
            obs = proprio_vector(cell.reset(seed=20_000 + seed * 1000 + ep))
            more = None
            while True:
                res = cell.step(expert.act(obs))
                obs = proprio_vector(res.state)
                images.append(frames_of(cell, prof.robot.cameras))
                labels.append(res.outcome.success)
                eps.append(ep)
                if res.outcome.success and more is None:
                    more = int(rng.integers(0, extra_after_success + 1))
                elif more is not None:
                    more -= 1
                if res.truncated or (more is not None and more < 0):
                    break
    finally:
        cell.close()
    frames = frames_from_arrays(images, labels, eps, prof.robot.cameras)
    if log:
        succeeded = len(np.unique(frames.episodes[frames.labels]))
        log(f"recorded {episodes} episodes, {len(frames)} frames ({int(frames.labels.sum())} success frames, "
            f"{succeeded} episodes with a success) in {time.perf_counter() - t0:.0f} s")
    return frames


class LearnedJudge:
    """The classifier as reward: renders the cell's cameras after each step; success ends the episode."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls, self.seconds = 0, 0.0

    def __call__(self, cell, res) -> tuple[float, bool]:
        t0 = time.perf_counter()
        p = float(self.model.probability(frames_of(cell, self.model.cameras)[None])[0])
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        success = p >= self.model.threshold
        return float(success), success


def rl_runs(model, args) -> list[dict]:
    """RLPD with the rule's sparse reward and with the learned reward alone, ``args.seeds`` seeds each."""
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):   # pairs first: a cut-short run compares
                                                                         # like with like
        for kind in args.rewards:
            print(f"rlpd, {kind} reward, seed {seed} ...", flush=True)
            if kind == "rule":
                r = algorithms.run("rlpd", seed, args)
            else:
                judge = LearnedJudge(model)
                r = algorithms.run("rlpd", seed, args, judge=judge,
                                   make=lambda s, _reward="sparse": make_camera_cell(s, image_size=model.image_size))
                r["classifier_ms"] = 1000 * judge.seconds / max(1, judge.calls)
            r["algo"] = f"rlpd_{kind}"
            results.append(r)
            how = f"90% after {r['reached']} env steps" if r["reached"] else f"{r['final_rate']:.0%} at the budget"
            print(f"  {how}; {r['episodes']} episodes, {r['seconds'] / 60:.1f} min", flush=True)
    return results


def plot(results: list[dict], m: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, kind in enumerate(("rlpd_rule", "rlpd_learned")):
        for j, r in enumerate(x for x in results if x["algo"] == kind):
            steps, rate = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(steps, rate, color=f"C{i}", alpha=0.8, label=kind if j == 0 else None)
    ax.axhline(args.target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"success (by the rule), last {args.window} episodes")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"RLPD, peg insertion: rule vs learned reward (classifier held-out accuracy "
                 f"{m['accuracy']:.1%}, F1 {m['f1']:.2f})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def report(m: dict, results: list[dict], args) -> list[dict]:
    print()
    print(f"command: {algorithms.command_line()}")
    print(f"python {platform.python_version()}; threshold {args.threshold}; {m['train_episodes']} training / "
          f"{m['val_episodes']} held-out episodes")
    print()
    print("| held-out frames | success frames | accuracy | precision | recall | F1 | training frames | "
          "training s |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    print(f"| {m['frames']} | {m['successes']} | {m['accuracy']:.1%} | {m['precision']:.2f} | {m['recall']:.2f} | "
          f"{m['f1']:.3f} | {m['train_frames']} | {m['train_seconds']:.0f} |")
    checks = []

    def check(text: str, ok: bool | None, measured: str) -> None:
        print(f"{ {True: 'PASS', False: 'MISS', None: 'N/A '}[ok]}  {text}: {measured}")
        checks.append({"check": text, "pass": ok, "measured": measured})

    print()
    check("per-frame accuracy on held-out episodes >= 95%", m["accuracy"] >= 0.95, f"{m['accuracy']:.1%}")
    if results:
        print()
        print("| reward | seeds reaching 90% | env steps to 90%, per seed | median | episodes | classifier ms/step | "
              "minutes per run |")
        print("|---|--:|---|--:|--:|--:|--:|")
        med = {}
        for kind in ("rlpd_rule", "rlpd_learned"):
            rs = [r for r in results if r["algo"] == kind]
            if not rs:
                med[kind] = np.nan
                continue
            per = [f"seed {r['seed']}: " + (str(r["reached"]) if r["reached"] is not None else
                                            f"> {r['env_steps']} ({r['final_rate']:.0%})") for r in rs]
            med[kind] = float(np.median([r["reached"] if r["reached"] is not None else np.inf for r in rs]))
            ms = f"{np.median([r['classifier_ms'] for r in rs]):.1f}" if "classifier_ms" in rs[0] else "-"
            print(f"| {kind[5:]} | {sum(r['reached'] is not None for r in rs)}/{len(rs)} | {', '.join(per)} | "
                  f"{med[kind]:.0f} | {np.median([r['episodes'] for r in rs]):.0f} | {ms} | "
                  f"{np.median([r['seconds'] for r in rs]) / 60:.1f} |")
        print()
        text = "RLPD on the learned reward reaches 90% (by the rule) within 1.5x the env steps of the rule reward"
        # Paired: only seeds run with both rewards count (the same seed gives the same demos and starts).
        steps = {(r["algo"], r["seed"]): r["reached"] if r["reached"] is not None else np.inf for r in results}
        both = sorted({s for a, s in steps if a == "rlpd_rule"} & {s for a, s in steps if a == "rlpd_learned"})
        med = {k: float(np.median([steps[k, s] for s in both])) if both else np.nan for k in med}
        if not both:
            check(text, None, "no seed was run with both rewards")
        elif not np.isfinite(med["rlpd_rule"]):
            check(text, None, "the rule-reward runs did not reach 90% within the budget, so there is no ratio")
        else:
            ratio = med["rlpd_learned"] / med["rlpd_rule"]
            check(text, bool(ratio <= 1.5), f"{ratio:.2f}x (medians {med['rlpd_learned']:.0f} vs {med['rlpd_rule']:.0f} "
                                            f"over seeds {both})")
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", metavar="BAG", help="train on these bags instead of recording in-process")
    ap.add_argument("--episodes", type=int, default=80, help="episodes to record (in-process)")
    ap.add_argument("--steps", type=int, default=1500, help="classifier training steps")
    ap.add_argument("--image-size", type=int, default=128, help="camera frames (square) when recording in-process")
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--model-out", type=Path, help="also save the trained classifier here")
    ap.add_argument("--model", type=Path, help="use this saved classifier (skip recording and training; its "
                                               "held-out metrics are the saved ones)")
    ap.add_argument("--rl", action="store_true", help="also run RLPD with the learned and the rule reward")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0, help="RL seeds are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--rewards", nargs="+", choices=["rule", "learned"], default=["rule", "learned"],
                    help="which RL rows to run (two processes can share the work)")
    ap.add_argument("--max-env-steps", type=int, default=12_000)
    ap.add_argument("--utd", type=int, default=2)
    ap.add_argument("--start-steps", type=int, default=500)
    ap.add_argument("--publish-every", type=int, default=50)
    ap.add_argument("--demos", type=int, default=20)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "reward_curves.png")
    ap.add_argument("--json", type=Path, help="save the metrics and runs (curves included) here")
    ap.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                    help="run nothing: one table and plot of the RL runs saved in these files (the classifier's "
                         "metrics must be the same in all)")
    args = ap.parse_args(argv)
    args.reward = "sparse"
    import torch

    from user_learner.reward import RewardModel, TrainConfig, frames_from_bags, train

    torch.set_num_threads(1)   # one core: the machine is shared
    if args.from_json:
        results, m, seen = [], None, set()
        for path in args.from_json:
            try:
                saved = json.loads(path.read_text())
                held, runs = saved["held_out"], saved["results"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"--from-json {path}: not a result file of this benchmark ({exc})")
            if m is not None and held != m:
                raise SystemExit(f"--from-json {path}: another classifier than {args.from_json[0]} (held-out metrics differ)")
            m = held
            print(f"runs from {path}: {saved.get('command', '?')}")
            for r in runs:
                if (r["algo"], r["seed"]) in seen:
                    raise SystemExit(f"--from-json: {r['algo']} seed {r['seed']} is in more than one file")
                seen.add((r["algo"], r["seed"]))
                results.append(r)
        results.sort(key=lambda r: (r["algo"], r["seed"]))
        plot(results, m, args.png, args)
        report(m, results, args)
        print(f"learning curves: {args.png}")
        return 0
    if args.model:
        model = RewardModel.load(args.model, args.threshold)
        m = model.info.get("held_out")
        if not m:
            raise SystemExit(f"--model {args.model}: no held-out metrics saved with it")
    else:
        frames = frames_from_bags(args.data) if args.data else record(args.episodes, args.seed, image_size=(args.image_size,) * 2)
        print(f"training the classifier ({args.steps} steps) ...", flush=True)
        model, m = train(frames, TrainConfig(steps=args.steps, threshold=args.threshold, seed=args.seed))
        if args.model_out:
            model.save(args.model_out)
            print(f"classifier saved to {args.model_out}")
    results = rl_runs(model, args) if args.rl else []
    if results:
        plot(results, m, args.png, args)
    checks = report(m, results, args)
    if results:
        print(f"learning curves: {args.png}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"held_out": m, "results": results, "checks": checks,
                                         "args": vars(args), "command": algorithms.command_line()},
                                        default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
