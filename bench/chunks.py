#!/usr/bin/env python3
"""Benchmark: per-step control timing at 10 Hz with single actions vs action chunks.

A real robot node (simulated FR3 in MuJoCo, ``realtime_factor`` 1, 10 Hz) runs in a subprocess in a private
ROS domain; this process plays the inference node: it decides when to query with the inference node's own
``ChunkScheduler``, "computes" an answer by sleeping ``--latency-ms`` (an emulated policy forward pass, the
single-threaded inference node blocks meanwhile just the same) and publishes an Action (a chunk when H > 1).
For each configuration it reports, over the measured window: executed steps per second, the share of held
ticks (heartbeat ``held_steps``), the interval between executed steps (robot's observation stamps, p50 /
p99 / max) and policy queries per executed step.

    source scripts/env.sh && python bench/chunks.py                      # latencies 5 and 150 ms
    python bench/chunks.py --latency-ms 5 --seconds 4 --configs single,h10   # quick smoke
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from graph_run import isolate_ros  # noqa: E402

# name -> (chunk size H, replan_every, robot.chunk_ensemble)
CONFIGS = {
    "single": (1, 1, "none"),
    "h10": (10, 10, "none"),
    "h10-r2-exp": (10, 2, "exp"),
}


def robot_cmd(profile: Path) -> list[str]:
    from ament_index_python.packages import get_package_prefix

    exe = Path(get_package_prefix("user_hal")) / "lib" / "user_hal" / "robot_node"
    return [str(exe), "--ros-args", "-p", "robot_id:=franka_0", "-p", f"profile:={profile}",
            "-p", "realtime_factor:=1.0"]


def run_one(name: str, latency_s: float, seconds: float, workdir: Path, cameras: list[str]) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from user_msgs.msg import Action, Observation, RobotStatus, Transition

    from user_common import qos
    from user_learner.serving import ChunkScheduler

    h, replan, ensemble = CONFIGS[name]
    prof = yaml.safe_load((ROOT / "config" / "robot_sim.yaml").read_text())
    prof["robot"].update({"cameras": cameras, "max_episode_steps": 100000, "chunk_ensemble": ensemble})
    path = workdir / f"robot_{name}.yaml"
    path.write_text(yaml.safe_dump(prof))

    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx)
    node = rclpy.create_node(f"bench_chunks_{os.getpid()}", context=ctx)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = node.create_publisher(Action, "/franka_0/action", qos.CONTROL)   # as the inference node
    sched = ChunkScheduler(h, replan)
    lock = threading.Lock()
    stats = {"queries": 0, "trans": [], "beats": [], "measuring": False}

    def on_obs(o: Observation) -> None:
        if not sched.due(o.robot_id, o.episode_id, o.step):
            return
        time.sleep(latency_s)                     # the emulated forward pass
        t = o.step + np.arange(h)
        acts = np.zeros((h, 7), np.float32)
        acts[:, 0] = 0.3 * np.sin(t / 10.0)        # a slow back-and-forth along x
        acts[:, 6] = -1.0
        a = Action(robot_id=o.robot_id, episode_id=o.episode_id, step=o.step, action=acts.ravel().tolist(),
                   policy_version=1, source=Action.SOURCE_POLICY, chunk_length=h if h > 1 else 0)
        a.header.stamp = o.header.stamp
        pub.publish(a)
        with lock:
            stats["queries"] += int(stats["measuring"])

    def on_trans(t: Transition) -> None:
        with lock:
            if stats["measuring"]:
                s = t.next_obs.header.stamp
                stats["trans"].append(s.sec + 1e-9 * s.nanosec)

    def on_beat(b: RobotStatus) -> None:
        with lock:
            stats["beats"].append((b.steps_done, b.held_steps))

    node.create_subscription(Observation, "/franka_0/observation", on_obs, qos.CONTROL)
    node.create_subscription(Transition, "/user/transitions", on_trans, QoSProfile(
        depth=500, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(RobotStatus, "/user/robots/heartbeat", on_beat, latched)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    thread = threading.Thread(target=ex.spin, daemon=True)
    thread.start()
    log = open(workdir / f"robot_{name}.log", "wb")
    robot = subprocess.Popen(robot_cmd(path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 60
        while not any(b[0] > 20 for b in stats["beats"]):   # warm-up: discovery, reset, first steps
            if time.monotonic() > end or robot.poll() is not None:
                raise RuntimeError(f"robot node did not start stepping; see {log.name}")
            time.sleep(0.1)
        with lock:
            stats["measuring"] = True
            b0 = stats["beats"][-1]
        time.sleep(seconds)
        with lock:
            stats["measuring"] = False
            b1 = stats["beats"][-1]
            trans = list(stats["trans"])
            queries = stats["queries"]
    finally:
        robot.terminate()
        try:
            robot.wait(timeout=10)
        except subprocess.TimeoutExpired:
            robot.kill()
        log.close()
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()
        ctx.try_shutdown()
    gaps = np.diff(trans) * 1e3
    steps, held = b1[0] - b0[0], b1[1] - b0[1]
    return {"config": name, "latency_ms": latency_s * 1e3, "steps_per_s": len(trans) / seconds,
            "held_pct": 100.0 * held / max(steps + held, 1),
            "gap_p50": float(np.percentile(gaps, 50)) if gaps.size else float("nan"),
            "gap_p99": float(np.percentile(gaps, 99)) if gaps.size else float("nan"),
            "gap_max": float(gaps.max()) if gaps.size else float("nan"),
            "queries_per_step": queries / max(len(trans), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", default="5,150", help="emulated policy latencies, comma separated")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured window per configuration")
    ap.add_argument("--cameras", default="", help="rendered cameras, comma separated (e.g. wrist,side)")
    args = ap.parse_args()
    isolate_ros()
    cameras = [c for c in args.cameras.split(",") if c]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_chunks_") as tmp:
        for lat in (float(x) for x in args.latency_ms.split(",")):
            for name in args.configs.split(","):
                rows.append(run_one(name, lat / 1e3, args.seconds, Path(tmp), cameras))
                r = rows[-1]
                print(f"  {r['config']:<12} latency {r['latency_ms']:5.0f} ms: {r['steps_per_s']:5.2f} steps/s",
                      flush=True)
    print(f"\n10 Hz, realtime_factor 1, cameras {cameras or 'none'}, {args.seconds:g} s per row")
    print(f"{'config':<12} {'latency ms':>10} {'steps/s':>8} {'held %':>7} {'gap p50':>8} {'gap p99':>8} "
          f"{'gap max':>8} {'queries/step':>12}")
    for r in rows:
        print(f"{r['config']:<12} {r['latency_ms']:>10.0f} {r['steps_per_s']:>8.2f} {r['held_pct']:>7.1f} "
              f"{r['gap_p50']:>8.1f} {r['gap_p99']:>8.1f} {r['gap_max']:>8.1f} {r['queries_per_step']:>12.2f}")


if __name__ == "__main__":
    main()
