#!/usr/bin/env python3
"""Benchmark: HG-DAgger from a weak behaviour-cloned start, on the simulated FR3.

Each (task, seed) run drives the real robot cell (``user_hal.core.cell.RobotCell``, MuJoCo, the robot's own
resets and speed limits) in this process:
1. ``--demos`` episodes of the scripted expert, then ``--bc-updates`` behaviour-cloning updates: the weak
   start. ``--policy mlp``: HG-DAgger's learner with the state policy of ``config/hg_dagger_<task>.yaml``;
   ``--policy vla``: the small VLA-like chunk policy (``bench/vla.py``'s architecture, proprio and
   instruction in, pick-and-place only), acting ``--execute`` actions of every chunk.
2. ``--episodes`` training episodes: the policy drives and the scripted expert plays the human behind
   a gate (``--gate``, see ``Human``): ``corridor`` (default) takes over for ``--hold`` steps whenever
   the policy's commanded motion is more than ``--corridor`` action units from the expert's, then hands
   back; ``stuck`` is the ``sim_human`` node's rule. The human's motion goes through the real teleop
   mapping (``Teleop``: device axes, dead band, scales) with ``--human-gain``; the gripper is the
   expert's command (a human's buttons). Every human step joins the aggregated dataset (for the chunk
   policy, a row's target is the next H actions of its own intervention segment); after each episode
   the learner makes ``--utd`` updates per env step of that episode, uniform over demonstrations and
   interventions together (``--demo-ratio`` < 0, HG-DAgger's rule).
3. Every ``--eval-every`` training episodes, ``--eval-episodes`` episodes of the policy alone
   (deterministic, the same start seeds every time) measure its success rate.

The table reports the policy-alone success rate at the start and at the end and the intervention rate
(human steps / steps) over the first and the last ``--rate-window`` training episodes. Targets: at
least +30 points of success and the intervention rate at least halved within the stated budget.

    source scripts/env.sh && python bench/hitl.py --tasks peg --png docs/hitl_curves.png   # the README's table
    python bench/hitl.py --tasks pick --policy vla --demos 10 --bc-updates 2000 --episodes 60 --utd 0.5
    python bench/hitl.py --tasks peg --gate stuck         # the sim_human rule, for comparison
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"peg": "robot_sim", "pick": "robot_sim_pick"}
CONFIGS = {"peg": "hg_dagger_peg", "pick": "hg_dagger_pick"}


def make_cell(task: str, seed: int):
    """The task's simulated cell, state only (no cameras rendered)."""
    from user_hal.backends.base import make_backend
    from user_hal.core.cell import RobotCell
    from user_hal.profile import load_profile

    prof = load_profile(ROOT / "config" / f"{PROFILES[task]}.yaml", {"robot.cameras": [], "task.reward": "sparse"})
    cell = RobotCell(prof, make_backend("sim", **dict(prof.backend_options, cameras=(), render_images=False)),
                     seed=seed)
    cell.start()
    return prof, cell


class Human:
    """The scripted expert at a simulated SpaceMouse; a gate decides when it takes over.

    ``stuck`` (the ``sim_human`` node's rule): once the task's tracked point came no 5 mm closer to its
    target in ``stuck_steps`` steps, for the rest of the episode. ``corridor``: whenever the policy's
    commanded motion leaves a corridor around the expert's (the distance between the two actions'
    motion parts, 6 entries, exceeds ``corridor`` action units), for ``hold`` steps, then it hands
    back -- a human who corrects early and lets go. ``progress``: when the tracked point moved
    ``corridor`` metres away from its best distance, or made no 5 mm progress in ``stuck_steps``
    steps, for ``hold`` steps.
    """

    def __init__(self, prof, seed: int, stuck_steps: int, gain: float, gate: str = "stuck",
                 corridor: float = 0.5, hold: int = 10) -> None:
        from user_hal.tasks.experts import HumanSchedule, make_expert
        from user_hal.devices.teleop import TeleopConfig

        self.expert = make_expert(prof, seed=seed)
        self.schedule = HumanSchedule([(0, None)], 1, stuck_steps)
        self.mapping = TeleopConfig()
        self.gain, self.gate, self.corridor, self.hold, self.stuck_steps = gain, gate, corridor, hold, stuck_steps
        self._until = -1
        self._episode = None

    def act(self, episode: int, step: int, proprio: np.ndarray, proposed: np.ndarray | None = None):
        """The human's action for this step, or None while the policy keeps control."""
        expert = self.expert.act(proprio)   # the expert follows the episode (its phase) either way
        if self.gate == "stuck":
            active = self.schedule.active(episode, step, self.expert.judge(proprio).distance)
        else:
            if episode != self._episode:
                self._episode, self._until, self._best, self._best_step = episode, -1, np.inf, step
            distance = self.expert.judge(proprio).distance
            if distance < self._best - 0.005:
                self._best, self._best_step = distance, step
            if self.gate == "corridor":
                off = proposed is not None and np.linalg.norm(proposed[:6] - expert[:6]) > self.corridor
            else:   # progress: the policy moves away from the goal, or makes no progress
                off = distance > self._best + self.corridor or step - self._best_step >= self.stuck_steps
            if off and step >= self._until:
                self._until = step + self.hold
                self._best, self._best_step = distance, step + self.hold   # judged afresh after handing back
            active = step < self._until
        if not active:
            return None
        from user_hal.devices.teleop import InputSample, Teleop, device_axes_for_action

        teleop = Teleop(self.mapping, clock=lambda: 0.0)
        teleop.update(InputSample(axes=tuple(device_axes_for_action(self.gain * expert, self.mapping)),
                                  buttons=(), stamp=0.0))
        a = teleop.action(0.0)
        if a is None:   # the expert rests (all axes inside the dead band): a human holding still
            a = np.zeros(7)
        a[6] = expert[6]
        return a


class Labels:
    """A growing set of labelled steps (raw proprio, expert action), sampled uniformly."""

    def __init__(self, state_dim: int, action_dim: int, capacity: int = 1024) -> None:
        self.state = np.zeros((capacity, state_dim), np.float32)
        self.action = np.zeros((capacity, action_dim), np.float32)
        self.n = 0

    def add(self, state: np.ndarray, action: np.ndarray) -> None:
        while self.n + len(state) > len(self.state):
            self.state = np.concatenate([self.state, np.zeros_like(self.state)])
            self.action = np.concatenate([self.action, np.zeros_like(self.action)])
        self.state[self.n:self.n + len(state)], self.action[self.n:self.n + len(state)] = state, action
        self.n += len(state)

    def sample(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.n, k)
        return self.state[idx], self.action[idx]


def run_episode(cell, seed: int, policy, human: Human | None = None, episode: int = 0):
    """One episode from a reset: ``(success, states [T, D], commanded actions [T, A], by_human [T])``.

    ``policy.act(proprio)`` proposes every step; ``policy.interrupt()`` is called when the human acts (a
    chunk policy drops the rest of its chunk, as the robot does)."""
    state = cell.reset(seed=seed)
    obs = cell.proprio(state)
    policy.interrupt()
    states, actions, by_human = [], [], []
    success = False
    while True:
        proposed = policy.act(obs)
        a = human.act(episode, len(states), obs, proposed) if human is not None else None
        if a is not None:
            policy.interrupt()
        res = cell.step(proposed if a is None else a)
        states.append(obs)
        actions.append(res.commanded)
        by_human.append(a is not None)
        success = success or res.outcome.success
        obs = cell.proprio(res.state)
        if res.terminated or res.truncated:
            return success, np.array(states, np.float32), np.array(actions, np.float32), np.array(by_human)


def segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of every run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


class Expert:
    """The scripted expert as a policy (the demonstrations)."""

    def __init__(self, prof, seed: int) -> None:
        from user_hal.tasks.experts import make_expert

        self.act = make_expert(prof, seed=seed).act

    def interrupt(self) -> None:
        pass


class MLPLearner:
    """HG-DAgger's learner with the state (MLP) policy, built from the shipped config; one action per step."""

    policy_name = "mlp"

    def __init__(self, task: str, seed: int, args) -> None:
        import torch

        from user_learner.algos import get_algorithm
        from user_learner.learner_config import load_learner_config

        self.cfg = load_learner_config(ROOT / "config" / f"{CONFIGS[task]}.yaml", {**dict(args.set), "algo.seed": seed})
        algo = get_algorithm(self.cfg.algo_name)
        self.spec, self.normalize = self.cfg.obs.spec(), self.cfg.obs.normalizer()
        torch.manual_seed(seed)
        self.agent, self.policy = algo.agent(self.spec, self.cfg.algo), algo.policy(self.spec, self.cfg.algo)
        self.demos, self.interventions = Labels(self.spec.state_dim, self.spec.action_dim), \
            Labels(self.spec.state_dim, self.spec.action_dim)
        self.demo_ratio = args.demo_ratio
        self.sync()

    def add(self, states: np.ndarray, actions: np.ndarray, demo: bool) -> None:
        """One demonstration episode, or one intervention segment."""
        (self.demos if demo else self.interventions).add(states, actions)

    def train(self, updates: int, rng: np.random.Generator) -> None:
        from user_learner.batch import batch_from_numpy

        k = self.cfg.algo.batch_size
        for _ in range(updates):
            state, action = draw(self.demos, self.interventions, k, rng, self.demo_ratio)
            self.agent.update(batch_from_numpy({
                "state": self.normalize(state), "next_state": self.normalize(state), "action": action,
                "reward": np.zeros(k, np.float32), "terminated": np.zeros(k, np.float32),
                "action_source": np.full(k, 1, np.uint8), "intervened": np.ones(k, np.float32)}))
        self.sync()

    def sync(self) -> None:
        self.policy.load_policy_state_dict(self.agent.policy_state_dict())

    def act(self, proprio: np.ndarray) -> np.ndarray:
        return self.policy.act(self.normalize(proprio), None, deterministic=True)

    def interrupt(self) -> None:
        pass

    @property
    def updates(self) -> int:
        return self.agent.num_updates


class VLALearner:
    """HG-DAgger's learner with the small VLA-like chunk policy (``bench/vla.py``'s architecture, state and
    instruction in, no cameras). A row's chunk target is the next ``H`` expert actions of its own
    demonstration or intervention segment (masked after the segment ends); batches are uniform over
    both. The policy acts in chunks: ``execute`` actions, then a new chunk (or at once after the human)."""

    policy_name = "vla"

    def __init__(self, task: str, seed: int, args) -> None:
        import torch

        from vla import small_agent

        self.algo, self.spec, self.cfg, self.agent = small_agent(seed, (), dict(args.set))
        self.normalize = self.cfg.obs.normalizer()
        self.policy = self.algo.policy(self.spec, self.cfg.algo)
        self.execute, self.episodes, self.seed = args.execute, [], seed
        self.gen = torch.Generator().manual_seed(seed)
        self.plan: list[np.ndarray] = []
        self._demos = None
        self.sync()

    def add(self, states: np.ndarray, actions: np.ndarray, demo: bool) -> None:
        from user_learner.vla.pretrain import Episode

        self.episodes.append(Episode(states, actions, action_source=np.full(len(actions), 2 if demo else 1, np.uint8)))
        self._demos = None

    def train(self, updates: int, rng: np.random.Generator) -> None:
        from user_learner.vla.pretrain import Demos, bc_pretrain

        if self._demos is None:
            self._demos = Demos(self.episodes, self.cfg.algo.chunk_size, int(rng.integers(1 << 31)))
        bc_pretrain(self.agent, self._demos, updates, self.normalize)
        self.sync()

    def sync(self) -> None:
        self.policy.load_policy_state_dict(self.agent.policy_state_dict())

    def act(self, proprio: np.ndarray) -> np.ndarray:
        if not self.plan:
            chunk = self.policy.act(self.normalize(proprio), None, True, self.gen, instruction=self.cfg.algo.instruction)
            self.plan = list(chunk.reshape(-1, chunk.shape[-1])[:self.execute])
        return self.plan.pop(0)

    def interrupt(self) -> None:
        self.plan = []

    @property
    def updates(self) -> int:
        return self.agent.num_updates


LEARNERS = {"mlp": MLPLearner, "vla": VLALearner}


def draw(demos: Labels, interventions: Labels, k: int, rng: np.random.Generator, demo_ratio: float):
    """A batch of the aggregated dataset: uniform over demonstrations and interventions together
    (``demo_ratio`` < 0, HG-DAgger's own rule), or that fixed share from the demonstrations."""
    share = demos.n / (demos.n + interventions.n) if demo_ratio < 0 else demo_ratio
    k_demo = int(rng.binomial(k, share)) if demo_ratio < 0 else int(round(k * share))
    if not interventions.n:
        k_demo = k
    s, a = demos.sample(k_demo, rng)
    if k_demo < k:
        s2, a2 = interventions.sample(k - k_demo, rng)
        s, a = np.concatenate([s, s2]), np.concatenate([a, a2])
    return s, a


def run(task: str, seed: int, policy: str, args) -> dict:
    import torch

    torch.set_num_threads(1)
    prof, cell = make_cell(task, seed)
    rng = np.random.default_rng(seed)
    learner = LEARNERS[policy](task, seed, args)
    t0 = time.perf_counter()
    try:
        expert = Expert(prof, seed)
        for ep in range(args.demos):
            _, states, actions, _ = run_episode(cell, 10_000 + 100 * seed + ep, expert)
            learner.add(states, actions, demo=True)
        learner.train(args.bc_updates, rng)

        def evaluate() -> float:
            return float(np.mean([run_episode(cell, 50_000 + e, learner)[0] for e in range(args.eval_episodes)]))

        human = Human(prof, seed, args.stuck_steps, args.human_gain, args.gate, args.corridor, args.hold)
        evals = [(0, evaluate())]
        episodes = []
        for ep in range(args.episodes):
            success, states, actions, by_human = run_episode(cell, 100 * seed + ep, learner, human, ep)
            for a, b in segments(by_human):
                learner.add(states[a:b], actions[a:b], demo=False)
            episodes.append({"success": success, "steps": len(states), "human_steps": int(by_human.sum())})
            learner.train(int(args.utd * len(states)), rng)
            if (ep + 1) % args.eval_every == 0:
                evals.append((ep + 1, evaluate()))
    finally:
        cell.close()
    w = args.rate_window
    rate = lambda eps: sum(e["human_steps"] for e in eps) / max(1, sum(e["steps"] for e in eps))  # noqa: E731
    return {"task": task, "policy": policy, "seed": seed, "start": evals[0][1], "end": evals[-1][1],
            "rate_first": rate(episodes[:w]), "rate_last": rate(episodes[-w:]), "evals": evals, "episodes": episodes,
            "human_steps": sum(e["human_steps"] for e in episodes),
            "env_steps": sum(e["steps"] for e in episodes), "updates": learner.updates,
            "seconds": time.perf_counter() - t0, "settings": settings(args)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({(r["task"], r["policy"]) for r in results})
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 6), squeeze=False)
    for col, (task, policy) in enumerate(tasks):
        for r in (r for r in results if (r["task"], r["policy"]) == (task, policy)):
            x, y = zip(*r["evals"])
            axes[0, col].plot(x, [100 * v for v in y], marker="o", label=f"seed {r['seed']}")
            rates = [e["human_steps"] / e["steps"] for e in r["episodes"]]
            k = min(5, len(rates))
            smooth = np.convolve(rates, np.ones(k) / k, mode="valid")
            axes[1, col].plot(np.arange(k, len(rates) + 1), 100 * smooth, label=f"seed {r['seed']}")
        axes[0, col].set_title(f"{task}, {policy} policy")
        axes[0, col].set_ylabel("success, policy alone (%)")
        axes[1, col].set_ylabel("intervention rate (%, 5-episode mean)")
        axes[1, col].set_xlabel("training episodes")
        axes[0, col].set_ylim(-5, 105)
        axes[0, col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def settings(args) -> str:
    """One line saying how a run was made."""
    gate = (f"stuck for {args.stuck_steps} steps" if args.gate == "stuck"
            else f"corridor {args.corridor}, hold {args.hold} steps")
    chunks = f", executing {args.execute} per chunk" if args.policy == "vla" else ""
    return (f"{args.policy}: {args.demos} demos, {args.bc_updates} BC updates, {args.episodes} training episodes, "
            f"{args.utd} updates per env step, human gate {gate}, gain {args.human_gain}{chunks}; success of the "
            f"policy alone over {args.eval_episodes} episodes; intervention rate over the first/last "
            f"{args.rate_window} episodes")


def report(results: list[dict]) -> bool:
    print("\nHG-DAgger from a weak BC start:")
    for line in dict.fromkeys(r["settings"] for r in results):
        print(f"  {line}")
    print(f"{'task':6} {'policy':6} {'seed':>4} {'start':>6} {'end':>6} {'gain':>6} {'rate first':>10} "
          f"{'rate last':>9} {'human/env steps':>16} {'time s':>7}")
    ok = True
    for r in results:
        gain = 100 * (r["end"] - r["start"])
        print(f"{r['task']:6} {r['policy']:6} {r['seed']:>4} {100 * r['start']:>5.0f}% {100 * r['end']:>5.0f}% "
              f"{gain:>+5.0f}  {100 * r['rate_first']:>9.1f}% {100 * r['rate_last']:>8.1f}% "
              f"{r['human_steps']:>7}/{r['env_steps']:<8} {r['seconds']:>7.0f}")
    for key in sorted({(r["task"], r["policy"]) for r in results}):
        rs = [r for r in results if (r["task"], r["policy"]) == key]
        gain = 100 * np.median([r["end"] - r["start"] for r in rs])
        first, last = np.median([r["rate_first"] for r in rs]), np.median([r["rate_last"] for r in rs])
        met = gain >= 30 and last <= first / 2
        ok &= met
        print(f"{key[0]}/{key[1]}: median success gain {gain:+.0f} points (target >= +30), intervention rate "
              f"{100 * first:.1f}% -> {100 * last:.1f}% (target: at least halved): {'met' if met else 'MISSED'}")
    return ok


def setting(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["peg", "pick"], choices=sorted(PROFILES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--demos", type=int, default=2, help="expert episodes for the weak BC start")
    ap.add_argument("--bc-updates", type=int, default=1000)
    ap.add_argument("--episodes", type=int, default=100, help="HG-DAgger training episodes (the budget)")
    ap.add_argument("--utd", type=float, default=1.0, help="updates per env step, made after each episode")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--rate-window", type=int, default=20)
    ap.add_argument("--stuck-steps", type=int, default=20, help="the sim_human rule (human_when_stuck)")
    ap.add_argument("--human-gain", type=float, default=1.0)
    ap.add_argument("--gate", choices=["stuck", "corridor", "progress"], default="corridor",
                    help="when the human takes over (see Human)")
    ap.add_argument("--corridor", type=float, default=1.0,
                    help="corridor gate: action distance (translation); progress gate: metres moved away from the goal")
    ap.add_argument("--hold", type=int, default=3, help="corridor gate: steps the human keeps control")
    ap.add_argument("--demo-ratio", type=float, default=-1.0,
                    help="share of each batch from the demonstrations; < 0: uniform over demos + interventions")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML", type=setting,
                    help="learning-config overrides by dotted key, e.g. obs.state_scale=[0.01,0.01,...]")
    ap.add_argument("--policy", choices=sorted(LEARNERS), default="mlp",
                    help="mlp: the state policy of config/hg_dagger_<task>.yaml; vla: the small VLA-like chunk "
                         "policy (pick only; bench/vla.py's architecture)")
    ap.add_argument("--execute", type=int, default=4, help="vla: actions executed per chunk before a new one")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                    help="run nothing: report and plot the results of earlier runs' --json files together "
                         "(runs split over processes); the table's header then shows this command's settings")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.policy == "vla" and args.tasks != ["pick"]:
        ap.error(f"--policy vla runs pick-and-place only (config/vla_pick.yaml), not --tasks {' '.join(args.tasks)}")
    if args.rate_window * 2 > args.episodes:
        ap.error(f"--rate-window {args.rate_window}: the first and last windows overlap in {args.episodes} episodes")
    print(f"{platform.processor() or platform.machine()}, {len(args.seeds)} seeds; command: "
          f"python {' '.join(shlex.quote(a) for a in sys.argv)}", flush=True)
    results = []
    for f in args.merge or ():
        saved = json.loads(f.read_text())
        for r in saved["results"]:   # runs that predate "settings": their command line instead
            results.append({"settings": "python " + " ".join(saved["command"]), **r})
    for task in args.tasks if not args.merge else ():
        for seed in args.seeds:
            r = run(task, seed, args.policy, args)
            print(f"  {task} {args.policy} seed {seed}: {100 * r['start']:.0f}% -> {100 * r['end']:.0f}%, evals "
                  f"{[(e, round(100 * v)) for e, v in r['evals']]}, {r['seconds']:.0f} s", flush=True)
            results.append(r)
    ok = report(results)
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "results": results}))
    if args.png:
        plot(results, args.png)
        print(f"curves: {args.png}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
