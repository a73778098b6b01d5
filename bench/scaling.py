#!/usr/bin/env python3
"""Benchmark: 1, 2, 4, 8 simulated robots feeding one learner (real time, 10 Hz, state policy, no cameras).

For each robot count N, runs ``userctl launch franka_sac robots:=N config:=sac_peg realtime_factor:=1``
(the robots' cameras switched off: they would only measure rendering) and, after ``--warmup`` seconds,
measures for ``--seconds`` in this process:

- aggregated env steps/s: transitions on ``/user/transitions`` per second (one per executed action);
- achieved control rate per robot: the heartbeats' ``achieved_control_hz`` (measured on the robot's
  control ticks), median per robot over the window; the table shows the slowest and the fastest robot;
- action latency p99: the inference nodes' ``latency_p99_ms`` (observation in, action out), the worst node,
  median over the window;
- learner updates/s: from the learner's progress lines at the window's start and end;
- CPU: the machine's busy cores over the window (``/proc/stat``), of ``os.cpu_count()``;
- episodes ended in the window: every episode costs a reset, during which the robot ticks but steps
  nothing, so env steps/s stays below N x the control rate even when nothing is saturated.

Target: aggregated env steps/s at least 0.9 x N x 10 up to where the machine saturates.

    source scripts/env.sh && python bench/scaling.py                 # N = 1 2 4 8, 60 s windows
    python bench/scaling.py --robots 1 2 --seconds 20 --warmup 15    # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_run import Listener, config_copy, isolate_ros  # noqa: E402

PROGRESS = re.compile(r"env steps (\d+) \([\d.]+/s\) \| updates (\d+)")
HZ = 10.0


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]   # idle + iowait
    return sum(fields) - idle, sum(fields)


def last_progress(log: Path) -> tuple[int, int] | None:
    found = PROGRESS.findall(log.read_text(errors="replace"))
    return tuple(map(int, found[-1])) if found else None


class Probe(Listener):
    """Counts transitions and episodes and keeps heartbeats and inference statuses, stamped on arrival."""

    def __init__(self) -> None:
        from user_common import qos
        from user_msgs.msg import EpisodeStats, PolicyStatus, RobotStatus, Transition

        super().__init__("bench_scaling")
        self.transitions: list[float] = []
        self.beats: list[tuple[float, str, float]] = []
        self.status: list[tuple[float, str, float]] = []
        self.episodes: list[float] = []
        self.node.create_subscription(Transition, qos.TRANSITIONS_TOPIC,
                                      lambda m: self.transitions.append(time.monotonic()), qos.TRANSITIONS_IN)
        self.node.create_subscription(EpisodeStats, qos.EPISODES_TOPIC,
                                      lambda m: self.episodes.append(time.monotonic()), qos.DATA)
        self.node.create_subscription(
            RobotStatus, qos.HEARTBEAT_TOPIC,
            lambda m: self.beats.append((time.monotonic(), m.robot_id, m.achieved_control_hz)), qos.ANNOUNCEMENTS_IN)
        self.node.create_subscription(
            PolicyStatus, qos.POLICY_STATUS_TOPIC,
            lambda m: self.status.append((time.monotonic(), m.node, m.latency_p99_ms)), qos.SENSOR)


def run(n: int, cfg_dir: Path, work: Path, warmup: float, seconds: float) -> dict:
    log = work / f"robots_{n}.log"
    probe = Probe()
    with open(log, "w") as fh:
        proc = subprocess.Popen(["userctl", "launch", str(cfg_dir / "franka_sac.yaml"), f"robots:={n}",
                                 "config:=sac_peg", "realtime_factor:=1.0", f"run_name:=scaling_{n}"],
                                cwd=work, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len({r for _, r, _ in probe.beats}) < n or not probe.transitions:   # every robot up and stepping
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"robots:={n}: the graph did not start every robot; see {log}")
            time.sleep(0.5)
        time.sleep(warmup)
        t0, cpu0, prog0 = time.monotonic(), cpu_times(), last_progress(log)
        time.sleep(seconds)
        t1, cpu1, prog1 = time.monotonic(), cpu_times(), last_progress(log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        probe.close()
    steps = sum(t0 <= t < t1 for t in probe.transitions)
    per_robot = {}
    for t, robot, hz in probe.beats:
        if t0 <= t < t1 and hz > 0:
            per_robot.setdefault(robot, []).append(hz)
    rates = [float(np.median(v)) for v in per_robot.values()]
    by_time: dict[int, float] = {}
    for t, _, p99 in probe.status:   # the worst node in each half-second
        if t0 <= t < t1:
            k = int((t - t0) * 2)
            by_time[k] = max(by_time.get(k, 0.0), p99)
    updates = (prog1[1] - prog0[1]) / (t1 - t0) if prog0 and prog1 else float("nan")
    busy = (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1.0) * (os.cpu_count() or 1)
    return {"robots": n, "env_steps_per_s": steps / (t1 - t0), "target": 0.9 * n * HZ,
            "episodes": sum(t0 <= t < t1 for t in probe.episodes),
            "hz_min": min(rates) if rates else float("nan"), "hz_max": max(rates) if rates else float("nan"),
            "robots_reporting": len(rates), "latency_p99_ms": float(np.median(list(by_time.values())))
            if by_time else float("nan"), "updates_per_s": updates, "cpu_cores": busy, "window_s": t1 - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robots", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement window per robot count")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds after every robot stepped, before measuring")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if any(n <= 0 for n in args.robots):
        ap.error(f"--robots: counts must be > 0, got {args.robots}")
    isolate_ros()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; command: "
          f"python {' '.join(shlex.quote(a) for a in sys.argv)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="user_scaling_") as tmp:
        work = Path(tmp)
        cfg_dir = config_copy(work, {"sac_peg": {"log_every_s": 2.0}})
        prof = cfg_dir / "robot_sim.yaml"
        data = yaml.safe_load(prof.read_text())
        data["robot"]["cameras"] = []
        prof.write_text(yaml.safe_dump(data))
        for n in args.robots:
            r = run(n, cfg_dir, work, args.warmup, args.seconds)
            rows.append(r)
            print(f"  robots {n}: {r['env_steps_per_s']:.1f} env steps/s, {r['cpu_cores']:.2f} cores busy",
                  flush=True)
    print()
    print("| robots | env steps/s | target 0.9 x N x 10 | met | control rate per robot (min-max, Hz) | "
          "action latency p99 (ms) | learner updates/s | CPU (cores busy) | episodes (resets) |")
    print("|--:|--:|--:|---|---|--:|--:|--:|--:|")
    for r in rows:
        met = "yes" if r["env_steps_per_s"] >= r["target"] else "no"
        print(f"| {r['robots']} | {r['env_steps_per_s']:.1f} | {r['target']:.0f} | {met} | "
              f"{r['hz_min']:.2f}-{r['hz_max']:.2f} ({r['robots_reporting']} robots) | {r['latency_p99_ms']:.1f} | "
              f"{r['updates_per_s']:.1f} | {r['cpu_cores']:.2f} of {os.cpu_count()} | {r['episodes']} |")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
