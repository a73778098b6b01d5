#!/usr/bin/env python3
"""Benchmark: hot-plug and release times of the scheduler, and how wide the inference server's batches get.

Runs the ``sched_sac`` graph (registry, scheduler, learner, one inference server) with ``--robots`` simulated
Frankas in a private ROS domain, then starts ``--hotplug`` more robot nodes one at a time and measures, for
each, the time from its process start to the scheduler's binding (``start->bound s``, includes MuJoCo and
rclpy start-up; the scheduler decides every 0.25 s once it has the description and a heartbeat); then kills each with SIGKILL and
measures the time until the scheduler released it (``release s``; the heartbeat timeout is
``--heartbeat-timeout``). At the end it prints the inference server's policy queries, forward passes and
widest pass.

    source scripts/env.sh && python bench/scheduler.py                  # 2 robots + 3 hot-plugged, 10 Hz
    python bench/scheduler.py --robots 4 --hotplug 0 --realtime-factor 0 --seconds 20   # batching
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from graph_run import isolate_ros  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", type=int, default=2, help="robots started with the job")
    ap.add_argument("--hotplug", type=int, default=3, help="robots started later, one at a time")
    ap.add_argument("--realtime-factor", type=float, default=1.0)
    ap.add_argument("--heartbeat-timeout", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=10.0, help="run time before the hot-plugging starts")
    a = ap.parse_args()
    isolate_ros()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from user_common import qos
    from user_msgs.msg import Bindings

    from ament_index_python.packages import get_package_prefix

    work = Path(tempfile.mkdtemp(prefix="bench_sched_"))
    cfg = work / "config"
    subprocess.run(["cp", "-r", str(ROOT / "config"), str(cfg)], check=True)
    prof = yaml.safe_load((cfg / "robot_sim.yaml").read_text())
    prof["robot"]["cameras"] = []
    (cfg / "robot_sim.yaml").write_text(yaml.safe_dump(prof))
    userctl = Path(get_package_prefix("user_bringup")) / "lib" / "user_bringup" / "userctl"
    robot_exe = Path(get_package_prefix("user_hal")) / "lib" / "user_hal" / "robot_node"

    rclpy.init()
    node = rclpy.create_node("bench_scheduler")
    lock = threading.Lock()
    bound: dict[str, float] = {}
    released: dict[str, float] = {}

    def on_bindings(msg: Bindings) -> None:
        now = time.monotonic()
        with lock:
            live = {b.robot_id for b in msg.robots if b.server}
            for rid in live:
                bound.setdefault(rid, now)
            for rid in bound.keys() - live - released.keys():
                released[rid] = now

    node.create_subscription(Bindings, qos.BINDINGS_TOPIC, on_bindings, qos.LATCHED)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()

    log = open(work / "run.log", "w")
    run = subprocess.Popen([str(userctl), "launch", str(cfg / "sched_sac.yaml"), f"robots:={a.robots}",
                            f"realtime_factor:={a.realtime_factor:g}", "respawn_delay:=0", "max_robots:=16",
                            f"heartbeat_timeout_s:={a.heartbeat_timeout:g}"],
                           cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with lock:
                if pred():
                    return True
            time.sleep(0.02)
        return False

    rows = []
    try:
        if not wait(lambda: len(bound) >= a.robots, 120):
            print(f"the job's {a.robots} robots were not bound within 120 s; log {work / 'run.log'}")
            return 1
        time.sleep(a.seconds)
        for i in range(a.hotplug):
            rid = f"franka_{100 + i}"
            t0 = time.monotonic()
            p = subprocess.Popen([str(robot_exe), "--ros-args", "-p", f"robot_id:={rid}", "-p",
                                  f"profile:={cfg / 'robot_sim.yaml'}", "-p", "backend:=sim", "-p",
                                  f"realtime_factor:={a.realtime_factor!r}", "-p", "ack_consumers:=[learner]",
                                  "-p", "follow_bindings:=true"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            ok = wait(lambda: rid in bound, 60)
            rows.append([rid, bound[rid] - t0 if ok else float("nan"), p])
            time.sleep(2.0)
        for row in rows:
            rid, p = row[0], row[2]
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            t_kill = time.monotonic()
            ok = wait(lambda: rid in released, 30)
            row[2] = released[rid] - t_kill if ok else float("nan")
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
        log.close()
        ex.shutdown()
        spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"{'robot':<12} {'start->bound s':>15} {'release s':>10}")
    for rid, start_s, release_s in rows:
        print(f"{rid:<12} {start_s:15.2f} {release_s:10.2f}")
    m = re.search(r"done: (\d+) actions \((\d+) policy queries in (\d+) forward passes, up to (\d+) robots per pass\)",
                  (work / "run.log").read_text())
    if m:
        actions, queries, passes, widest = map(int, m.groups())
        print(f"inference server: {queries} policy queries in {passes} forward passes "
              f"({queries / max(passes, 1):.2f} robots per pass, widest {widest})")
    print(f"log: {work / 'run.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
