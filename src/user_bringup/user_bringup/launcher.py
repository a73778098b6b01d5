"""Embedded launcher: run a resolved :class:`~user_bringup.graph.Graph` as child processes.

Each node runs in its own process group with its parameters in a temporary ROS params file; its
output is prefixed with ``[label]``. The run ends when every ``ends_run`` node has exited, when any
node exits unexpectedly (reported with its exit code), or on Ctrl-C/SIGTERM. Teardown sends SIGINT,
then SIGTERM, then SIGKILL to every process group and reaps every child. While running, finished
episodes from ``/user/episodes`` are printed, and a per-robot summary at the end (and one per embodiment
when robots of several embodiments ran, as their ``RobotDescription`` says).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

import yaml

from user_bringup.graph import Graph, NodeSpec
from user_common.topics import DESCRIPTION_TOPIC, EPISODES_TOPIC, job_topic

LAUNCHER_TAG = "userctl"
EPISODE_TAG = "episode"
SUCCESS_WINDOW = 20
EXIT_BAD_INPUT = 2   # what user_common.node_main.run_node returns for a configuration error


class LaunchError(Exception):
    """A node cannot be started (missing package or executable)."""


# --- episode bookkeeping (pure) ---------------------------------------------------------------------


@dataclass
class _RobotTally:
    episodes: int = 0
    successes: int = 0
    total_steps: int = 0
    recent: collections.deque[bool] = field(
        default_factory=lambda: collections.deque(maxlen=SUCCESS_WINDOW)
    )


class EpisodeTally:
    """Count finished episodes per robot (and per embodiment) and format progress lines and the summary."""

    def __init__(self) -> None:
        """Start with no episodes."""
        self._robots: dict[str, _RobotTally] = {}
        self._embodiment_of: dict[str, str] = {}
        self._embodiments: dict[str, _RobotTally] = {}
        self._seen: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()

    def set_embodiment(self, robot_id: str, embodiment: str) -> None:
        """Record what a robot is (from its RobotDescription)."""
        with self._lock:
            self._embodiment_of[robot_id] = embodiment

    def add(
        self,
        robot_id: str,
        episode_id: int,
        episode_index: int,
        steps: int,
        episode_return: float,
        success: bool,
    ) -> str | None:
        """Record one episode and return its progress line (None for a duplicate)."""
        with self._lock:
            key = (robot_id, episode_id, episode_index)
            if key in self._seen:
                return None
            self._seen.add(key)
            t = self._robots.setdefault(robot_id, _RobotTally())
            t.episodes += 1
            t.successes += int(success)
            t.total_steps += steps
            t.recent.append(bool(success))
            rate = 100.0 * sum(t.recent) / len(t.recent)
            line = (
                f"{robot_id} episode {episode_index}: steps {steps}, return {episode_return:.3f}, "
                f"success {'yes' if success else 'no'}, success rate {rate:.0f}% "
                f"(last {len(t.recent)})"
            )
            embodiment = self._embodiment_of.get(robot_id)
            if embodiment is None:
                return line
            e = self._embodiments.setdefault(embodiment, _RobotTally())
            e.episodes += 1
            e.successes += int(success)
            e.total_steps += steps
            e.recent.append(bool(success))
            if len(set(self._embodiment_of.values())) < 2:
                return line
            return line + f"; {embodiment} {100.0 * sum(e.recent) / len(e.recent):.0f}% (last {len(e.recent)})"

    def summary(self) -> str:
        """Return a table with one row per robot: episodes, successes, success rate, mean steps; then,
        when robots of several embodiments finished episodes, the same per embodiment."""
        with self._lock:
            if not self._robots:
                return "no episodes finished"
            tables = [_table("ROBOT", self._robots)]
            per_embodiment: dict[str, _RobotTally] = {}
            for rid, t in self._robots.items():   # totals from the robots: right even for late descriptions
                e = per_embodiment.setdefault(self._embodiment_of.get(rid, "(unknown)"), _RobotTally())
                e.episodes += t.episodes
                e.successes += t.successes
                e.total_steps += t.total_steps
            if len(per_embodiment) > 1:
                tables.append(_table("EMBODIMENT", per_embodiment))
        return "\n".join(tables)


def _table(what: str, tallies: dict[str, _RobotTally]) -> str:
    header = (what, "EPISODES", "SUCCESSES", "SUCCESS RATE", "MEAN STEPS")
    rows = [header] + [(name, str(t.episodes), str(t.successes), f"{100.0 * t.successes / t.episodes:.1f}%",
                        f"{t.total_steps / t.episodes:.1f}") for name, t in sorted(tallies.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
                     for r in rows)


class EpisodeMonitor:
    """Subscribe to ``/user/episodes`` in a background thread with its own rclpy context."""

    def __init__(self, on_episode: Callable[[Any], None],
                 on_description: Callable[[Any], None] | None = None, episodes_topic: str = EPISODES_TOPIC) -> None:
        """Create the node; ``on_episode`` is called with each EpisodeStats message (of ``episodes_topic``: a job's
        own under its namespace), ``on_description`` with each RobotDescription."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from user_msgs.msg import EpisodeStats, RobotDescription

        self._rclpy = rclpy
        self._context = rclpy.Context()
        # The launcher owns SIGINT/SIGTERM; rclpy must not install its own handlers.
        rclpy.init(args=[], context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node(
            f"userctl_launcher_{os.getpid()}", namespace="/user", context=self._context
        )
        qos = QoSProfile(
            depth=100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self._node.create_subscription(EpisodeStats, episodes_topic, on_episode, qos)
        if on_description is not None:   # transient-local: descriptions published before we joined arrive too
            latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self._node.create_subscription(RobotDescription, DESCRIPTION_TOPIC, on_description, latched)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="episode-monitor", daemon=True)

    def start(self) -> None:
        """Start receiving episodes."""
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self._context.ok():
            self._executor.spin_once(timeout_sec=0.1)

    def stop(self) -> None:
        """Stop the thread and release the ROS context."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        self._context.try_shutdown()


# --- processes --------------------------------------------------------------------------------------


def resolve_executable(spec: NodeSpec) -> str:
    """Return the path of a node's executable (``<prefix>/lib/<package>/<executable>``)."""
    if spec.package:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix

        try:
            prefix = get_package_prefix(spec.package)
        except PackageNotFoundError:
            raise LaunchError(
                f"{spec.label}: package '{spec.package}' not found "
                "(did you build the workspace and source scripts/env.sh?)"
            ) from None
        path = Path(prefix) / "lib" / spec.package / spec.executable
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LaunchError(f"{spec.label}: executable '{spec.executable}' not found at {path}")
        return str(path)
    if os.sep in spec.executable:
        path = Path(spec.executable).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LaunchError(f"{spec.label}: '{spec.executable}' is not an executable file")
        return str(path)
    found = shutil.which(spec.executable)
    if found is None:
        raise LaunchError(f"{spec.label}: command '{spec.executable}' not found on PATH")
    return found


def build_command(spec: NodeSpec, executable: str, params_file: str | None) -> list[str]:
    """Return the argv of a node: ``exe [arguments] --ros-args -r __node:=... ...``."""
    cmd = [executable, *spec.arguments, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace != "/":
        cmd += ["-r", f"__ns:={spec.namespace}"]
    if params_file is not None:
        cmd += ["--params-file", params_file]
    for src, dst in spec.remappings:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def write_params_file(spec: NodeSpec, directory: Path) -> str | None:
    """Write a node's parameters as ``{fqn: {ros__parameters: ...}}``; None when it has none."""
    if not spec.parameters:
        return None
    path = directory / f"{spec.label.replace('/', '__')}.params.yaml"
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump({spec.fqn: {"ros__parameters": spec.parameters}}, fh, sort_keys=False)
    return str(path)


def _group_alive(pgid: int) -> bool:
    """Return True while any non-zombie process is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
            return True
    return False


class _Child:
    """One running node: its process, output pump and log file."""

    def __init__(self, spec: NodeSpec, cmd: list[str], log_file: IO[str] | None) -> None:
        self.spec = spec
        self.cmd = cmd
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump: threading.Thread | None = None
        self.returncode: int | None = None

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # session leader: its pid is the group id

    def poll(self) -> int | None:
        if self.proc is not None and self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def group_alive(self) -> bool:
        if self.proc is None:
            return False
        return self.poll() is None or _group_alive(self.pgid)

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def describe_exit(code: int) -> str:
    """Return ``code 3`` or ``signal SIGSEGV`` for a Popen return code."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _exit_status(code: int) -> int:
    """Map a child's Popen return code to a shell-style exit status."""
    return 128 - code if code < 0 else code


class Launcher:
    """Run every node of a graph until the run ends, then tear everything down."""

    def __init__(
        self,
        graph: Graph,
        log_dir: str | os.PathLike[str] | None = None,
        quiet: bool = False,
        out: IO[str] | None = None,
        monitor_episodes: bool = True,
        sigint_timeout: float = 5.0,
        sigterm_timeout: float = 3.0,
        poll_interval: float = 0.05,
    ) -> None:
        """Prepare to run ``graph``; ``out`` defaults to stdout."""
        self.graph = graph
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.quiet = quiet
        self.out = out if out is not None else sys.stdout
        self.monitor_episodes = monitor_episodes
        self.sigint_timeout = sigint_timeout
        self.sigterm_timeout = sigterm_timeout
        self.poll_interval = poll_interval
        self.tally = EpisodeTally()
        self._children: list[_Child] = []
        self._exe: dict[str, str] = {}  # node label -> resolved executable, for respawns
        self._tmp: Path = Path(tempfile.gettempdir())
        self._lock = threading.Lock()
        self._signals: list[int] = []
        self._own_log: IO[str] | None = None

    # output ---------------------------------------------------------------------------------------

    def _emit(self, tag: str, text: str, to_console: bool = True, log: IO[str] | None = None) -> None:
        line = f"[{tag}] {text}"
        with self._lock:
            if to_console:
                self.out.write(line + "\n")
                self.out.flush()
            for fh in (log, self._own_log):
                if fh is not None:
                    fh.write(line + "\n")
                    fh.flush()

    def say(self, text: str) -> None:
        """Print a launcher message."""
        self._emit(LAUNCHER_TAG, text)

    def _pump(self, child: _Child) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        for raw in iter(child.proc.stdout.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._emit(child.spec.label, text, to_console=not self.quiet, log=child.log_file)
        child.proc.stdout.close()

    def _on_episode(self, msg: Any) -> None:
        if getattr(msg, "cut", False):   # not an outcome (a lost robot or binding)
            return
        line = self.tally.add(
            msg.robot_id,
            int(msg.episode_id),
            int(msg.episode_index),
            int(msg.steps),
            float(msg.episode_return),
            bool(msg.success),
        )
        if line is not None:
            self._emit(EPISODE_TAG, line)

    def _on_description(self, msg: Any) -> None:
        self.tally.set_embodiment(msg.robot_id, msg.embodiment)

    # signals --------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous  # only the main thread may set handlers; the caller owns signals then
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    # run ------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start all nodes, wait for the end of the run, tear down; return the exit status."""
        commands = [(spec, resolve_executable(spec)) for spec in self.graph.nodes]  # fail fast
        previous_handlers = self._install_signal_handlers()
        tmp = Path(tempfile.mkdtemp(prefix="userctl-params-"))
        monitor: EpisodeMonitor | None = None
        status = 1
        try:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self._own_log = open(self.log_dir / "userctl.log", "w", encoding="utf-8")
            if self.monitor_episodes:
                try:   # a graph whose job has its own namespace (sched_sac: topic_ns) reports its episodes there
                    topic = job_topic(EPISODES_TOPIC, str(self.graph.args.get("topic_ns", "")))
                except ValueError:
                    topic = EPISODES_TOPIC   # the job's learner refuses the bad namespace, naming the parameter
                monitor = EpisodeMonitor(self._on_episode, self._on_description, topic)
                monitor.start()
            self.say(
                f"graph {self.graph.path} with "
                + ", ".join(f"{k}={v}" for k, v in self.graph.args.items())
            )
            self._tmp = tmp
            for spec, exe in commands:
                self._exe[spec.label] = exe
                self._start(spec, exe, tmp)
            status = self._wait()
        except OSError as exc:
            self.say(f"cannot start the run: {exc}")
            status = 1
        finally:
            self._teardown()
            if monitor is not None:
                monitor.stop()
                self.say("episode summary:")
                for line in self.tally.summary().splitlines():
                    self.say("  " + line)
            self.say(f"run ended with exit status {status}")
            if self._own_log is not None:
                self._own_log.close()
            for child in self._children:
                if child.log_file is not None:
                    child.log_file.close()
            shutil.rmtree(tmp, ignore_errors=True)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        return status

    def _start(self, spec: NodeSpec, exe: str, tmp: Path) -> None:
        cmd = build_command(spec, exe, write_params_file(spec, tmp))
        log_file = None
        if self.log_dir is not None:
            log_file = open(self.log_dir / f"{spec.label.replace('/', '__')}.log", "a", encoding="utf-8")
        child = _Child(spec, cmd, log_file)
        self._children.append(child)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # Python nodes print lines as they happen
        child.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: signals reach the node and its children
        )
        child.pump = threading.Thread(target=self._pump, args=(child,), daemon=True)
        child.pump.start()
        self.say(f"started {spec.label} (pid {child.proc.pid}): {' '.join(cmd)}")

    def _wait(self) -> int:
        reported: set[int] = set()
        respawns: list[tuple[float, NodeSpec]] = []  # (when, spec) of crashed nodes to restart
        while True:
            if self._signals:
                sig = self._signals[0]
                self.say(f"received {signal.Signals(sig).name}; stopping all nodes")
                return 128 + sig
            for i, child in enumerate(list(self._children)):
                code = child.poll()
                if code is None or i in reported:
                    continue
                reported.add(i)
                label = child.spec.label
                if code == EXIT_BAD_INPUT:   # its configuration is wrong: a respawn would fail the same way
                    self.say(f"node {label} refused its configuration (code 2); stopping the run")
                    return EXIT_BAD_INPUT
                if code != 0 and child.spec.respawn_delay > 0:
                    delay = child.spec.respawn_delay
                    self.say(f"node {label} crashed ({describe_exit(code)}); respawning in {delay:g} s")
                    respawns.append((time.monotonic() + delay, child.spec))
                    continue
                if code != 0:
                    self.say(f"node {label} crashed ({describe_exit(code)}); stopping the run")
                    return _exit_status(code)
                if child.spec.stops_run:
                    self.say(f"node {label} finished (code 0); stopping the run")
                    return 0
                if not child.spec.ends_run:
                    self.say(f"node {label} exited unexpectedly (code 0); stopping the run")
                    return 1
                self.say(f"node {label} finished (code 0)")
            now = time.monotonic()
            for when, spec in [r for r in respawns if r[0] <= now]:
                respawns.remove((when, spec))
                self._start(spec, self._exe[spec.label], self._tmp)
            # The newest process of each ends_run node decides; a pending respawn counts as running.
            # Only exits the loop above has handled count: polling again here could see a crash that
            # happened a moment ago and end the run before that crash was given its respawn.
            latest = {c.spec.label: c for c in self._children if c.spec.ends_run}
            waiting = {spec.label for _, spec in respawns}
            if latest and not waiting and all(c.returncode is not None for c in latest.values()):
                self.say("all ends_run nodes have exited; stopping the run")
                return 0  # a failed ends_run node has already ended the run as a crash
            time.sleep(self.poll_interval)

    def _teardown(self) -> None:
        """Signal every process group (SIGINT, SIGTERM, SIGKILL) until all are gone; reap all."""
        was_running = [c for c in self._children if c.poll() is None]
        stages = (
            (signal.SIGINT, self.sigint_timeout),
            (signal.SIGTERM, self.sigterm_timeout),
            (signal.SIGKILL, 5.0),
        )
        for sig, timeout in stages:
            targets = [c for c in self._children if c.group_alive()]
            if not targets:
                break
            if sig != signal.SIGINT:
                names = ", ".join(c.spec.label for c in targets)
                self.say(f"still running: {names}; sending {sig.name}")
            for c in targets:
                c.signal_group(sig)
            signals_before = len(self._signals)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(c.group_alive() for c in targets):
                if len(self._signals) > signals_before:
                    break  # a repeated Ctrl-C escalates at once
                time.sleep(self.poll_interval)
        for c in self._children:
            if c.proc is not None:
                try:
                    c.proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    self.say(f"{c.spec.label} (pid {c.proc.pid}) could not be reaped")
                c.poll()
            if c.pump is not None:
                c.pump.join(timeout=2.0)
        for c in was_running:
            if c.returncode is not None:
                self.say(f"stopped {c.spec.label} ({describe_exit(c.returncode)})")
