#!/usr/bin/env python3
"""Benchmark: control-loop jitter at a robot while a large policy snapshot crosses over DDS.

Two processes on one machine, in a private ROS domain (localhost discovery):
- "robot": a 10 Hz control thread (deadline-scheduled; each tick takes the newest weights, if any, with
  ``WeightSubscriber.take_latest()`` between steps and runs a small policy forward), plus an executor
  thread spinning the node that hosts the ``WeightSubscriber`` (its worker thread reassembles, hashes and
  unpacks), exactly like the inference node. Every tick's lateness is recorded.
- "learner": builds a stack of ``nn.Linear`` (~100M parameters = ~400 MB float32 by default) and
  publishes it with ``WeightPublisher.publish_async`` when told to.

The orchestrator (this script without ``--role``) runs a baseline window with no sync, then publishes
``--versions`` snapshots one after another, and prints p50/p99/max tick lateness per phase plus transfer
times. The whole run is bounded by ``--timeout``; both children are killed at the end in every case.

    source scripts/env.sh && python bench/weight_sync.py            # 100M params (~400 MB)
    python bench/weight_sync.py --params 10e6 --versions 3         # smaller model
    python bench/weight_sync.py --mb 1600 --transport dds          # a byte size; chunks only (the old path)
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time

PERIOD = 0.1


def _emit(**kw) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _ros_node(name: str):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(name)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    t = threading.Thread(target=lambda: _spin(ex), name="executor", daemon=True)
    t.start()
    return rclpy, node, ex


def _spin(ex) -> None:
    try:
        ex.spin()
    except Exception:  # shutdown at exit
        pass


# ----------------------------------------------------------------------------------------------- robot

def run_robot(args) -> None:
    import torch

    from user_learner.weight_sync import WeightSubscriber

    torch.set_num_threads(1)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval / 1e3)  # GIL hand-over period (Python default 5 ms)
    rclpy, node, ex = _ros_node("bench_robot")

    def on_weights(version: int, sd: dict) -> None:  # subscriber worker thread; the control thread swaps
        _emit(event="delivered", version=version, t=time.monotonic())

    sub = WeightSubscriber(node, on_weights=on_weights, policy_name="bench", transport=args.transport)

    policy = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    obs = torch.randn(1, 64)
    ticks: list[tuple[float, float, float, int]] = []
    stop = threading.Event()
    state = {"version": 0, "weights": None}

    def control() -> None:
        torch.set_num_threads(1)  # per thread: a fresh thread would use the OpenMP default (+3 ms per forward here)
        start = time.monotonic() + PERIOD
        k = 0
        while not stop.is_set():
            deadline = start + k * PERIOD
            now = time.monotonic()
            if deadline > now:
                time.sleep(deadline - now)
            woke = time.monotonic()
            got = sub.take_latest()  # between steps: never during a forward pass
            if got is not None:
                state["version"], state["weights"] = got
            with torch.no_grad():
                policy(obs)
            done = time.monotonic()
            ticks.append((deadline, woke - deadline, done - deadline, state["version"]))
            k += 1
            if woke - deadline > PERIOD:  # skip missed periods instead of bursting to catch up
                k = int((woke - start) / PERIOD) + 1

    ctl = threading.Thread(target=control, name="control", daemon=True)
    ctl.start()
    _emit(event="ready", t=time.monotonic())
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()
    ctl.join(timeout=2.0)
    rx = {h.version: {"first_chunk": h.first_chunk, "complete": h.complete, "unpack_s": h.unpack_s, "via": h.via}
          for h in sub.history}
    _emit(event="ticks", ticks=ticks, maxrss_mb=_maxrss_mb(), last_version=state["version"], rx=rx)
    sub.close()
    ex.shutdown(timeout_sec=1.0)
    node.destroy_node()
    rclpy.try_shutdown()


# --------------------------------------------------------------------------------------------- learner

def run_learner(args) -> None:
    import torch

    from user_learner.weight_sync import WEIGHTS_TOPIC, WeightPublisher, manifest_topic

    rclpy, node, ex = _ros_node("bench_learner")
    width = 4096
    t = time.monotonic()
    if args.params >= width * width + width:
        layers = round(args.params / (width * width + width))
        with torch.no_grad():
            model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    else:  # small sizes (smoke test): one layer of about the requested size
        layers = 1
        model = torch.nn.Sequential(torch.nn.Linear(max(1, int(args.params) // width), width, bias=False))
    n_params = sum(p.numel() for p in model.parameters())
    pub = WeightPublisher(node, policy_name="bench", chunk_bytes=args.chunk_bytes, transport=args.transport)
    end = time.monotonic() + 20
    while node.count_subscribers(manifest_topic()) + node.count_subscribers(WEIGHTS_TOPIC) < 1 and \
            time.monotonic() < end:
        time.sleep(0.05)
    _emit(event="ready", params=n_params, layers=layers, build_s=time.monotonic() - t)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "publish":
            v = int(cmd[1])
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3)  # a "training step": every snapshot differs
            t0 = time.monotonic()
            pub.publish_async(model.state_dict(), v)  # packs (one copy) here, hashes and sends in background
            t_call = time.monotonic() - t0
            pub.flush(timeout=args.timeout)
            st = pub.last_stats
            _emit(event="published", version=v, t0=t0, call_s=t_call, pack_s=st.pack_s, hash_s=st.hash_s,
                  send_s=st.send_s, total_bytes=st.total_bytes, num_chunks=st.num_chunks, t_end=time.monotonic())
    _emit(event="bye", maxrss_mb=_maxrss_mb())
    pub.close()
    ex.shutdown(timeout_sec=1.0)
    node.destroy_node()
    rclpy.try_shutdown()


# ---------------------------------------------------------------------------------------- orchestrator

class Child:
    def __init__(self, name: str, argv: list[str], env: dict) -> None:
        self.name = name
        self.lines: queue.Queue = queue.Queue()
        self.p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL if not os.environ.get("BENCH_VERBOSE") else None,
                                  text=True, bufsize=1, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            line = line.strip()
            if line.startswith("{"):
                try:
                    self.lines.put(json.loads(line))
                except json.JSONDecodeError:
                    pass
        self.lines.put({"event": "eof"})

    def send(self, text: str) -> None:
        try:
            self.p.stdin.write(text + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def expect(self, event: str, deadline: float, **match) -> dict:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} before the deadline")
            try:
                msg = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg.get("event") == "eof":
                raise RuntimeError(f"{self.name} exited early (rc={self.p.poll()}); rerun with BENCH_VERBOSE=1")
            if msg.get("event") == event and all(msg.get(k) == v for k, v in match.items()):
                return msg

    def kill(self) -> None:
        for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGKILL, 3.0)):
            if self.p.poll() is not None:
                break
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)  # stragglers of the group
        except (ProcessLookupError, PermissionError):
            pass


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def orchestrate(args) -> int:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(1 + (os.getpid() * 37) % 200)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONUNBUFFERED"] = "1"
    me = [sys.executable, os.path.abspath(__file__), "--params", str(args.params), "--transport", args.transport,
          "--chunk-bytes", str(args.chunk_bytes), "--timeout", str(args.timeout),
          "--switch-interval", str(args.switch_interval)]
    t_start = time.monotonic()
    deadline = t_start + args.timeout
    children: list[Child] = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        robot = Child("robot", me + ["--role", "robot"], env)
        children.append(robot)
        robot.expect("ready", deadline)
        learner = Child("learner", me + ["--role", "learner"], env)
        children.append(learner)
        info = learner.expect("ready", deadline)
        mb = info["params"] * 4 / 1e6
        print(f"model: {info['params'] / 1e6:.1f}M parameters in {info['layers']} x nn.Linear "
              f"= {mb:.0f} MB float32 (built in {info['build_s']:.1f} s); transport {args.transport}; "
              f"domain {env['ROS_DOMAIN_ID']}", flush=True)

        base_a = time.monotonic()
        time.sleep(args.baseline)
        base_b = time.monotonic()
        windows, transfers = [], []
        for v in range(1, args.versions + 1):
            learner.send(f"publish {v}")
            got = robot.expect("delivered", deadline, version=v)
            pubd = learner.expect("published", deadline, version=v)
            windows.append((pubd["t0"], got["t"]))
            transfers.append((pubd, got))
            print(f"  v{v}: {pubd['total_bytes'] / 1e6:.0f} MB delivered {got['t'] - pubd['t0']:.1f} s after "
                  f"publish_async", flush=True)
            time.sleep(args.gap)
        robot.send("stop")
        ticks_msg = robot.expect("ticks", deadline)
        learner.send("quit")
        bye = learner.expect("bye", deadline)
    except (TimeoutError, RuntimeError, KeyboardInterrupt) as e:
        print(f"benchmark aborted: {e!r} after {time.monotonic() - t_start:.0f} s", file=sys.stderr)
        return 1
    finally:
        for c in children:
            c.kill()

    ticks = ticks_msg["ticks"]
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump({"ticks": ticks, "baseline": [base_a, base_b], "windows": windows,
                       "transfers": transfers, "rx": ticks_msg["rx"]}, f)
    def in_windows(t, ws):
        return any(a <= t <= b for a, b in ws)
    phases = [("no sync", [x for x in ticks if base_a <= x[0] <= base_b]),
              ("during sync", [x for x in ticks if in_windows(x[0], windows)])]
    print()
    print(f"10 Hz control loop at the robot ({len(ticks)} ticks); lateness = wake-up time - deadline, "
          f"step end = after take_latest + policy forward")
    print(f"{'phase':<13}{'ticks':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}   {'step end p50':>12}{'p99':>8}"
          f"{'max':>8}{'  missed':>8}")
    for name, xs in phases:
        late = [x[1] * 1e3 for x in xs]
        done = [x[2] * 1e3 for x in xs]
        missed = sum(1 for x in xs if x[2] > PERIOD)
        print(f"{name:<13}{len(xs):>6}{_pct(late, .5):>9.2f}{_pct(late, .99):>9.2f}{max(late, default=0):>9.2f}   "
              f"{_pct(done, .5):>12.2f}{_pct(done, .99):>8.2f}{max(done, default=0):>8.2f}{missed:>8}")
    print()
    print(f"{'version':<8}{'MB':>7}{'via':>5}{'chunks':>7}{'call ms':>9}{'pack s':>8}{'sha s':>7}{'send s':>8}"
          f"{'rx s':>7}{'total s':>9}{'MB/s':>7}")
    for pubd, got in transfers:
        nb = pubd["total_bytes"] / 1e6
        h = ticks_msg["rx"].get(str(pubd["version"]))
        rx = (h["complete"] - h["first_chunk"]) if h else float("nan")
        total = got["t"] - pubd["t0"]
        print(f"v{pubd['version']:<7}{nb:>7.0f}{(h or {}).get('via', '?'):>5}{pubd['num_chunks']:>7}{pubd['call_s'] * 1e3:>9.0f}"
              f"{pubd['pack_s']:>8.2f}{pubd['hash_s']:>7.2f}{pubd['send_s']:>8.2f}{rx:>7.2f}{total:>9.2f}"
              f"{nb / total:>7.0f}")
    print("via: shm = mapped from the learner's shared-memory file, dds = chunks; chunks: sent over DDS;\n"
          "call ms: publish_async blocking time in the learner (the snapshot copy, into shared memory with via shm);\n"
          "pack/sha/send: learner background thread (send: manifest + chunks); rx s: robot, first chunk (or manifest)\n"
          "taken -> sha256 verified; total s: publish_async call -> state dict delivered at the robot")
    print(f"peak RSS: robot {ticks_msg['maxrss_mb']:.0f} MB, learner {bye['maxrss_mb']:.0f} MB; "
          f"wall time {time.monotonic() - t_start:.0f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=100e6, help="model size in parameters (float32)")
    ap.add_argument("--mb", type=float, help="model size in MB (1e6 bytes) instead of --params")
    ap.add_argument("--transport", choices=["auto", "dds"], default="auto",
                    help="auto: shared memory on one host (DDS chunks as fallback); dds: chunks only (the old path)")
    ap.add_argument("--versions", type=int, default=2, help="snapshots to publish, one after another")
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20)
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds of control loop with no sync")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between snapshots")
    ap.add_argument("--timeout", type=float, default=180.0, help="hard bound on the whole run (s)")
    ap.add_argument("--switch-interval", type=float, default=0.0,
                    help="robot process: sys.setswitchinterval in ms (0: keep Python's 5 ms)")
    ap.add_argument("--dump", help="write raw ticks and timings as JSON to this file")
    ap.add_argument("--role", choices=["robot", "learner"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mb:
        args.params = args.mb * 1e6 / 4
    if args.role == "robot":
        run_robot(args)
        return 0
    if args.role == "learner":
        run_learner(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
