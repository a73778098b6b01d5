"""What a user watching a training run sees: console progress, TensorBoard scalars, a summary."""
from __future__ import annotations

import collections
import math
import time
from pathlib import Path

SUCCESS_WINDOW = 20


def _fmt_duration(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * fraction:3.0f}%"


class Progress:
    """Collects episode results and learner metrics; logs a line every ``log_every_s``."""

    def __init__(self, cfg, log_dir: Path, logger) -> None:
        self.cfg = cfg
        self.logger = logger
        self.every = cfg.learner.log_every_s
        self.results: collections.deque[tuple[bool, float, int]] = collections.deque(maxlen=SUCCESS_WINDOW)
        self.episodes = 0
        self.eval_results: collections.deque[bool] = collections.deque(maxlen=SUCCESS_WINDOW)
        # embodiment -> (episodes, the last SUCCESS_WINDOW successes): one policy, several bodies
        self.by_embodiment: dict[str, tuple[int, collections.deque[bool]]] = {}
        self.latency: tuple[float, float] = (0.0, 0.0)
        self._last_log = time.monotonic()
        self._last = (time.monotonic(), 0, 0)  # time, env_steps, updates at the previous line
        self._metrics: dict[str, float] = {}
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(log_dir))
        except ImportError as exc:  # tensorboard is in requirements.txt; say so if it is missing
            logger.warning(f"TensorBoard logging off: {exc}")

    def episode(self, msg, embodiment: str = "") -> None:
        """One finished episode (``EpisodeStats``) of a robot of ``embodiment`` ('' if not known)."""
        self.episodes += 1
        self.results.append((bool(msg.success), float(msg.episode_return), int(msg.steps)))
        if msg.evaluation:
            self.eval_results.append(bool(msg.success))
        if embodiment:
            n, recent = self.by_embodiment.get(embodiment, (0, collections.deque(maxlen=SUCCESS_WINDOW)))
            recent.append(bool(msg.success))
            self.by_embodiment[embodiment] = (n + 1, recent)
        if self._writer is not None:
            if embodiment:
                n, recent = self.by_embodiment[embodiment]
                self._writer.add_scalar(f"embodiment/{embodiment}/success", float(msg.success), n)
                self._writer.add_scalar(f"embodiment/{embodiment}/success_rate_20", sum(recent) / len(recent), n)
            self._writer.add_scalar("episode/success", float(msg.success), self.episodes)
            self._writer.add_scalar("episode/return", float(msg.episode_return), self.episodes)
            self._writer.add_scalar("episode/steps", float(msg.steps), self.episodes)
            self._writer.add_scalar("episode/success_rate_20", self.success_rate(), self.episodes)
            # Human in the loop: how much of the episode a human drove, and which policy drove the rest.
            self._writer.add_scalar("episode/intervention_steps", float(msg.intervention_steps), self.episodes)
            self._writer.add_scalar("episode/intervention_rate", msg.intervention_steps / max(msg.steps, 1),
                                    self.episodes)
            self._writer.add_scalar("episode/policy_version", float(msg.policy_version), self.episodes)

    def inference(self, msg) -> None:
        self.latency = (float(msg.latency_p50_ms), float(msg.latency_p99_ms))

    def success_rate(self) -> float:
        return sum(r[0] for r in self.results) / len(self.results) if self.results else 0.0

    def per_embodiment(self) -> str:
        """Success per embodiment over its last episodes, e.g. ``franka_fr3 40% (last 20), wxai 25% (last 8)``;
        '' with fewer than two embodiments."""
        if len(self.by_embodiment) < 2:
            return ""
        return ", ".join(f"{e} {100 * sum(r) / len(r):.0f}% (last {len(r)} of {n})"
                         for e, (n, r) in sorted(self.by_embodiment.items()))

    def update(self, metrics: dict[str, float], step: int) -> None:
        self._metrics = metrics
        if self._writer is not None and step % 50 == 0:
            for k, v in metrics.items():
                self._writer.add_scalar(f"train/{k}", v, step)

    def maybe_log(self, stats: dict[str, float]) -> None:
        if time.monotonic() - self._last_log >= self.every:
            self.log(stats)

    def log(self, stats: dict[str, float]) -> None:
        now = time.monotonic()
        t, steps, updates = self._last
        dt = max(now - t, 1e-6)
        env_rate = (stats["env_steps"] - steps) / dt
        upd_rate = (stats["updates"] - updates) / dt
        self._last = (now, stats["env_steps"], stats["updates"])
        self._last_log = now
        mean_ret = sum(r[1] for r in self.results) / len(self.results) if self.results else 0.0
        line = (f"{_fmt_duration(stats['elapsed_s'])} | episodes {self.episodes}, success "
                f"{100 * self.success_rate():.0f}% (last {len(self.results)})"
                + (f" [{per}]" if (per := self.per_embodiment()) else "")
                + f", return {mean_ret:.2f} | "
                f"env steps {stats['env_steps']} ({env_rate:.1f}/s) | updates {stats['updates']} "
                f"({upd_rate:.1f}/s) | weights v{stats['version']} (inference v{stats['inference_version']}, "
                f"lag {stats['staleness_mean']:.1f}) | buffer {stats['buffer']}")
        frac = stats.get("budget_fraction", math.nan)
        if not math.isnan(frac) and frac > 0:
            eta = stats["elapsed_s"] * (1 - frac) / frac
            line += f" | {progress_bar(frac)} ETA {_fmt_duration(eta)}"
        self.logger.info(line)
        if self._writer is not None:
            step = stats["env_steps"]
            self._writer.add_scalar("rate/env_steps_per_s", env_rate, step)
            self._writer.add_scalar("rate/updates_per_s", upd_rate, step)
            self._writer.add_scalar("weights/staleness_mean", stats["staleness_mean"], step)
            self._writer.add_scalar("weights/staleness_p99", stats["staleness_p99"], step)
            self._writer.add_scalar("inference/latency_p50_ms", self.latency[0], step)
            self._writer.add_scalar("inference/latency_p99_ms", self.latency[1], step)
            self._writer.flush()

    def summary(self, stats: dict[str, float], final: bool) -> None:
        self.log(stats)
        self.logger.info(
            f"summary: {stats['env_steps']} env steps, {stats['updates']} updates, {self.episodes} episodes in "
            f"{_fmt_duration(stats['elapsed_s'])} (first update after {stats['first_update_s']:.1f} s); "
            f"success over the last {len(self.results)}: "
            f"{100 * self.success_rate():.0f}%"
            + (f"; success per embodiment: {self.per_embodiment()}" if self.per_embodiment() else "")
            + f"; weights v{stats['version']}; staleness mean "
            f"{stats['staleness_mean']:.1f}, p99 {stats['staleness_p99']:.0f} versions; inference latency p50 "
            f"{self.latency[0]:.2f} ms, p99 {self.latency[1]:.2f} ms")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
