"""``userctl``: launch a node graph, show what it would launch, list the robots, stop them all
(``userctl estop``), inspect, replay or export a recorded transition bag (``userctl bag``), record
labelled frames for a learned reward and train it (``userctl reward record|train``), and make the TLS
certificates of the edge-cloud link (``userctl link certs``).

Exit codes: 0 success; 1 runtime failure (no registry answered, a node failed); 2 bad input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Any, NoReturn, Sequence

from user_bringup.graph import Graph, GraphError, load_graph, parse_overrides, select_nodes
from user_common.registry import STATE_NAMES
from user_common.topics import BINDINGS_TOPIC, LIST_ROBOTS_SERVICE



class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _selection_args(p: argparse.ArgumentParser) -> None:
    help_ = ("node labels or shell patterns, comma-separated, repeatable (e.g. user/learner,*/inference): "
             "split one graph over hosts on one network")
    p.add_argument("--only", action="append", default=[], metavar="NODES", help="run only these nodes; " + help_)
    p.add_argument("--skip", action="append", default=[], metavar="NODES", help="run all but these nodes; " + help_)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``userctl`` argument parser."""
    parser = _Parser(prog="userctl", description="USER robot-learning system control.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("launch", help="run a node graph until it ends (Ctrl-C stops it)")
    p.add_argument("graph", help="graph name in the config folder (e.g. franka_sac) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="name:=value", help="graph argument overrides")
    _selection_args(p)
    p.add_argument("--log-dir", help="also write each node's output to <log-dir>/<node>.log")
    p.add_argument("--quiet", action="store_true", help="do not echo node output to the console")

    p = sub.add_parser("graph", help="print the resolved node list a launch would start")
    p.add_argument("graph", help="graph name in the config folder (e.g. franka_sac) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="name:=value", help="graph argument overrides")
    _selection_args(p)

    p = sub.add_parser("robots", help="list the robots known to the registry, each robot's job and inference "
                                       "server (from the scheduler), and the inference servers")
    p.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the registry (default 3)"
    )
    p.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    p.add_argument("--probe", action="store_true",
                   help="also discover this machine's hardware -- Franka arms (see --franka-ip), RealSense "
                        "cameras, SpaceMice, GPUs -- and list it with the robots as resources in one table")
    p.add_argument("--franka-ip", action="append", default=[], metavar="IP[:PORT]",
                   help="with --probe: check a Franka's FCI at this address (TCP port 1337 unless given); "
                        "repeatable")
    p.add_argument("--franka-tcp-only", action="store_true",
                   help="with --probe: only open the TCP connection, skip libfranka's Connect handshake")

    p = sub.add_parser("estop", help="stop every robot now (hold pose, refuse actions and resets); "
                                      "confirmed from the robots' heartbeats")
    p.add_argument("--release", action="store_true", help="release the e-stop instead: the robots continue")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for every live robot to confirm (default 10; discovering the "
                        "robots alone can take seconds)")

    p = sub.add_parser("reward", help="a learned reward: record labelled episodes, train the success classifier")
    rw = p.add_subparsers(dest="reward_command", metavar="REWARD_COMMAND", parser_class=_Parser)
    rw.required = True
    p = rw.add_parser("record", help="record labelled episodes into runs/<run-name>/replay (franka_sac with "
                                     "policy:=scripted record:=true; labels: the rule in simulation, the human's "
                                     "label on a real robot)")
    p.add_argument("overrides", nargs="*", metavar="name:=value", help="more franka_sac graph arguments "
                                                                       "(robot:=franky teleop:=spacemouse ...)")
    p.add_argument("--episodes", type=int, default=40, help="episodes per robot (default 40)")
    p.add_argument("--noise", type=float, default=0.5,
                   help="action noise of the scripted expert, so that some episodes fail (default 0.5)")
    p.add_argument("--run-name", default="reward_data", help="bag in runs/<run-name>/replay (default reward_data)")
    p.add_argument("--log-dir", help="also write each node's output to <log-dir>/<node>.log")
    p.add_argument("--quiet", action="store_true", help="do not echo node output to the console")
    p = rw.add_parser("train", help="train the success classifier on recorded bags; prints held-out accuracy/F1")
    p.add_argument("--data", nargs="+", required=True, metavar="BAG", help="bag directories (userctl reward record)")
    p.add_argument("--out", required=True, metavar="DIR", help="model folder to write (model.safetensors + "
                                                                "reward_model.json)")
    p.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    p.add_argument("--threshold", type=float, default=0.85, help="success when probability >= this (default 0.85)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of episodes held out (default 0.2)")
    p.add_argument("--cameras", nargs="+", metavar="NAME", help="cameras to use (default: every camera recorded)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("bag", help="inspect, replay, export or repair a recorded transition bag")
    bag = p.add_subparsers(dest="bag_command", metavar="BAG_COMMAND", parser_class=_Parser)
    bag.required = True
    bag_help = "the bag directory (holding metadata.yaml and <bag>_<N>.mcap files)"
    p = bag.add_parser("info", help="summarize a bag: files, transitions, robots, episodes, problems")
    p.add_argument("bag_dir", help=bag_help)
    p.add_argument("--episodes", action="store_true",
                   help="also list every episode with its return (reads every transition)")
    p = bag.add_parser("replay", help="republish an episode's observations and camera images at the recorded pace")
    p.add_argument("bag_dir", help=bag_help)
    p.add_argument("--episode", type=int, metavar="ID", help="episode id (default: the first episode)")
    p.add_argument("--robot", metavar="R", help="robot id (needed when several robots have that episode id)")
    p.add_argument("--rate", type=float, default=1.0, metavar="X", help="speed factor (default 1: recorded pace)")
    p.add_argument("--prefix", default="/replay",
                   help='topic prefix (default /replay, so a replay never feeds a running system; "" for '
                        "the live topic names)")
    p.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    p = bag.add_parser("export", help="write an episode's camera frames as PNGs plus steps.csv or episode.npz")
    p.add_argument("bag_dir", help=bag_help)
    p.add_argument("--episode", type=int, metavar="ID", required=True, help="episode id")
    p.add_argument("--robot", metavar="R", help="robot id (needed when several robots have that episode id)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--format", choices=("csv", "npz"), default="csv",
                   help="steps.csv (default) or episode.npz next to the <camera>/<step>.png frames")
    p = bag.add_parser("repair", help="close files cut by a crash and rewrite incomplete chunk indexes, so that "
                                      "every reader (rosbags, Foxglove, ros2 bag) reads every message")
    p.add_argument("bag_dir", help=bag_help)

    p = sub.add_parser("link", help="the edge-cloud link over zenoh (src/user_link): TLS certificates, status")
    lk = p.add_subparsers(dest="link_command", metavar="LINK_COMMAND", parser_class=_Parser)
    lk.required = True
    p = lk.add_parser("certs", help="make a CA (or reuse the one in --out) and the certificates and keys of the "
                                    "cloud router (CN cloud) and of each edge (CN edge-<name>), with openssl")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for ca.pem, cloud.pem, edge-<name>.pem and their keys")
    p.add_argument("--edge", action="append", default=[], metavar="NAME",
                   help="an edge (robot cell) to make a certificate for; repeatable")
    p.add_argument("--host", action="append", default=[], metavar="HOST",
                   help="a DNS name or IP address the edges dial the cloud router at (a subject alternative name "
                        "of cloud.pem besides localhost and 127.0.0.1); repeatable")
    p.add_argument("--days", type=int, default=825, help="validity of the cloud and edge certificates (default 825)")
    p.add_argument("--force", action="store_true", help="replace existing cloud and edge files (the CA is kept)")
    p = lk.add_parser("status", help="what the link node on this ROS domain reports: connected, round trip, "
                                     "bytes/s each way, transitions queued in the robots' outboxes, last error")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the link node (default 5)")
    return parser


# --- graph / launch ---------------------------------------------------------------------------------


def _load(graph: str, overrides: list[str], only: list[str] | None = None, skip: list[str] | None = None) -> Graph:
    g = load_graph(graph, parse_overrides(overrides))
    split = lambda items: [x.strip() for item in items or [] for x in item.split(",") if x.strip()]  # noqa: E731
    if only or skip:
        g = select_nodes(g, split(only), split(skip))
    return g


def format_graph(graph: Graph) -> str:
    """Return a human-readable listing of a resolved graph."""
    lines = [f"graph: {graph.path}"]
    if graph.description:
        lines.append(f"  {graph.description}")
    lines.append("args:")
    for name, value in graph.args.items():
        spec = graph.arg_specs[name]
        note = "" if value == spec.default else f"   (default {spec.default!r})"
        lines.append(f"  {name} = {value!r}{note}")
    lines.append(f"robots: {', '.join(graph.robot_ids) or '(none)'}")
    lines.append(f"nodes ({len(graph.nodes)}):")
    for node in graph.nodes:
        exe = f"{node.package}/{node.executable}" if node.package else node.executable
        flags = "   [ends_run]" if node.ends_run else ""
        if node.stops_run:
            flags += "   [stops_run]"
        if node.respawn_delay > 0:
            flags += f"   [respawn after {node.respawn_delay:g} s]"
        lines.append(f"  {node.fqn}: {exe}{flags}")
        for key, value in node.parameters.items():
            lines.append(f"      {key}: {value!r}")
        for src, dst in node.remappings:
            lines.append(f"      remap {src} -> {dst}")
        if node.arguments:
            lines.append(f"      arguments: {' '.join(node.arguments)}")
    return "\n".join(lines)


def cmd_graph(args: argparse.Namespace) -> int:
    """Print what ``userctl launch`` would start."""
    print(format_graph(_load(args.graph, args.overrides, args.only, args.skip)))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    """Run a graph with the embedded launcher."""
    from user_bringup.launcher import Launcher, LaunchError

    graph = _load(args.graph, args.overrides, args.only, args.skip)
    try:
        return Launcher(graph, log_dir=args.log_dir, quiet=args.quiet).run()
    except LaunchError as exc:
        print(f"userctl launch: error: {exc}", file=sys.stderr)
        return 1


# --- robots -----------------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    if math.isinf(seconds) or math.isnan(seconds):
        return "never"
    if seconds < 60.0:
        return f"{seconds:.1f} s ago"
    if seconds < 3600.0:
        return f"{seconds / 60.0:.1f} min ago"
    return f"{seconds / 3600.0:.1f} h ago"


def robot_rows(response: Any, bindings: Any = None) -> list[tuple[str, ...]]:
    """Turn a ListRobots response into table rows (one tuple of cells per robot); ``bindings`` (the scheduler's
    ``user_msgs/Bindings``, or None when no scheduler answered) gives each robot's job and inference server."""
    where = {b.robot_id: b for b in bindings.robots} if bindings is not None else {}
    rows = []
    for desc, status, age in zip(
        response.robots, response.status, response.seconds_since_heartbeat
    ):
        rid = desc.robot_id or status.robot_id
        b = where.get(rid)
        if bindings is None:
            job, server = "-", "-"
        elif b is None:
            job, server = "-", "-"   # lost, or not yet seen by the scheduler
        else:
            job, server = (b.job, b.server) if b.server else ("idle", "-")
        heard = not math.isinf(age)
        hz = f"{status.achieved_control_hz:.1f}" if heard else "-"
        nominal = f"{desc.control_hz:.1f}" if desc.control_hz > 0 else "?"
        episode = f"{status.episodes_done} (step {status.step})" if heard else "-"
        rows.append(
            (
                desc.robot_id or status.robot_id,
                desc.embodiment or "?",
                desc.backend or "?",
                STATE_NAMES.get(status.state, str(status.state)),
                f"{hz} / {nominal}",
                episode,
                _age(age),
                job,
                server,
            )
        )
    return rows


def server_rows(servers: list[Any]) -> list[tuple[str, ...]]:
    """Inference servers (``user_msgs/InferenceCapacity``) as rows of the robots table."""
    return [(s.server, "inference server", f"{s.device} on {s.host}", "SERVING" if s.robot_ids else "READY", "-",
             f"{len(s.robot_ids)} of {s.max_robots} robots", "-", s.job, "-")
            for s in sorted(servers, key=lambda s: s.server)]


def format_robots(response: Any, now: datetime.datetime | None = None, bindings: Any = None,
                  servers: list[Any] | None = None) -> str:
    """Render the robots table (robots, then inference servers) in a boxed layout like ``nvidia-smi``; below it
    why idle robots are idle and what each job has or waits for."""
    now = now or datetime.datetime.now()
    header = ("ID", "EMBODIMENT", "BACKEND", "STATE", "CONTROL HZ", "EPISODE", "LAST HEARTBEAT", "JOB", "INFERENCE")
    robots = robot_rows(response, bindings)
    rows = robots + server_rows(servers or [])
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    right = {4, 5, 6}  # numbers read best right-aligned

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(parts) + " |"

    def rule(ch: str, joint: str = "+") -> str:
        return joint + joint.join(ch * (w + 2) for w in widths) + joint

    inner = len(rule("-")) - 4
    title_left = f"userctl robots   {now:%Y-%m-%d %H:%M:%S}"
    n_servers = len(rows) - len(robots)
    title_right = (f"{len(robots)} robot{'s' if len(robots) != 1 else ''}, {n_servers} inference server"
                   f"{'s' if n_servers != 1 else ''}, {LIST_ROBOTS_SERVICE}")
    gap = max(1, inner - len(title_left) - len(title_right))
    out = [
        "+" + "-" * (inner + 2) + "+",
        "| " + title_left + " " * gap + title_right + " |",
        rule("-"),
        line(header),
        rule("="),
    ]
    if rows:
        out += [line(r) for r in rows]
    else:
        out.append("| " + "No robots registered.".ljust(inner) + " |")
    out.append(rule("-"))
    for desc, status in zip(response.robots, response.status):
        if status.message:
            out.append(f"{desc.robot_id or status.robot_id}: {status.message}")
    if bindings is None:
        out.append(f"no scheduler answered on {BINDINGS_TOPIC}: no jobs or bindings to show")
    else:
        listed = {r[0] for r in robots}
        for b in bindings.robots:
            if not b.server and b.robot_id in listed:
                out.append(f"{b.robot_id} idle: {b.reason}")
        for job, status in zip(bindings.jobs, bindings.job_status):
            out.append(f"job {job}: {status}")
    return "\n".join(out)


class _RegistryClient:
    """A short-lived rclpy node that calls ``/user/list_robots``."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.signals import SignalHandlerOptions
        from user_msgs.srv import ListRobots

        self._srv_type = ListRobots
        self._context = rclpy.Context()
        # Keep Python's own Ctrl-C handling (KeyboardInterrupt) for --watch.
        rclpy.init(args=[], context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node(f"userctl_{os.getpid()}", context=self._context)
        self._client = self._node.create_client(ListRobots, LIST_ROBOTS_SERVICE)
        from user_common import qos
        from user_msgs.msg import Bindings

        self.bindings: Any = None   # the scheduler's latched user_msgs/Bindings, if one answered
        self._node.create_subscription(Bindings, BINDINGS_TOPIC, self._on_bindings, qos.LATCHED)

    def _on_bindings(self, msg: Any) -> None:
        self.bindings = msg

    @property
    def servers(self) -> list[Any]:
        """The inference servers the scheduler knows (``InferenceCapacity``, robot_ids = the robots bound)."""
        return list(self.bindings.servers) if self.bindings is not None else []

    def call(self, timeout: float) -> Any | None:
        """Return the response, or None if no registry answered within ``timeout`` seconds."""
        from rclpy.executors import SingleThreadedExecutor

        deadline = time.monotonic() + timeout
        if not self._client.wait_for_service(timeout_sec=max(0.0, timeout)):
            return None
        future = self._client.call_async(self._srv_type.Request())
        executor = SingleThreadedExecutor(context=self._context)
        executor.add_node(self._node)
        try:
            executor.spin_until_future_complete(
                future, timeout_sec=max(0.1, deadline - time.monotonic())
            )
            # The scheduler's latched bindings: give discovery a moment.
            settle = time.monotonic() + min(2.0, max(0.0, deadline - time.monotonic()))
            while time.monotonic() < settle and self.bindings is None:
                executor.spin_once(timeout_sec=0.05)
        finally:
            executor.remove_node(self._node)
            executor.shutdown(timeout_sec=0.5)
        if not future.done():
            return None
        return future.result()

    def close(self) -> None:
        """Release the ROS context."""
        self._node.destroy_node()
        self._context.try_shutdown()


def registry_resources(response: Any, timeout: float, bindings: Any = None,
                       servers: list[Any] | None = None) -> list[Any]:
    """The registry's answer as ``probe.Resource`` rows (kind ``robot``, each with its job and inference server),
    and the inference servers (kind ``inference``), for ``--probe``."""
    from user_hal.probe import Resource

    if response is None:
        domain = os.environ.get("ROS_DOMAIN_ID", "0")
        return [Resource("robot", "-", "no registry",
                         f"no answer on {LIST_ROBOTS_SERVICE} within {timeout:g} s "
                         f"(is registry_node running, on ROS_DOMAIN_ID={domain}?)")]
    rows = []
    why = {b.robot_id: b.reason for b in bindings.robots if not b.server} if bindings is not None else {}
    for (rid, embodiment, backend, state, hz, episode, age, job, server), status in zip(
            robot_rows(response, bindings), response.status):
        details = f"{embodiment} on {backend}, control {hz} Hz, episode {episode}, heartbeat {age}"
        if server != "-":
            details += f", job {job} on {server}"
        elif rid in why:
            details += f", idle: {why[rid]}"
        if status.message:
            details += f"; {status.message}"
        rows.append(Resource("robot", rid, state, details))
    rows = rows or [Resource("robot", "-", "none registered", f"the registry ({LIST_ROBOTS_SERVICE}) knows no robot")]
    for sid, _, where, state, _, load, _, job, _ in server_rows(servers or []):
        rows.append(Resource("inference", sid, state, f"{where}, job {job}, {load}"))
    return rows


def cmd_probe(args: argparse.Namespace) -> int:
    """``userctl robots --probe``: registry robots and local hardware as one resources table."""
    import threading

    from user_hal.probe import Resource, format_resources, parse_endpoint, probe_hardware

    for text in args.franka_ip:
        try:
            parse_endpoint(text)
        except ValueError as exc:
            raise UsageError(f"--franka-ip {text!r}: {exc}") from None
    hardware: list[Any] = []
    worker = threading.Thread(
        target=lambda: hardware.extend(probe_hardware(args.franka_ip, franka_timeout=args.timeout,
                                                      handshake=not args.franka_tcp_only)),
        daemon=True)
    worker.start()  # the hardware probes run while the registry is asked
    try:
        client = _RegistryClient()
        try:
            robots = registry_resources(client.call(args.timeout), args.timeout, client.bindings, client.servers)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - a failed probe is a row, not a crash
        robots = [Resource("robot", "-", "error", f"registry query failed: {type(exc).__name__}: {exc}")]
    worker.join()
    rows = robots + hardware

    def count(kind: str) -> int:
        return sum(1 for r in rows if r.kind == kind and r.ident != "-")

    n_rob, n_gpu = count("robot"), count("gpu")
    summary = (f"{n_rob} robot{'s' if n_rob != 1 else ''}, {n_gpu} GPU{'s' if n_gpu != 1 else ''}, "
               f"{count('realsense')} RealSense, {count('spacemouse')} SpaceMouse, {count('inference')} inference "
               f"server{'s' if count('inference') != 1 else ''}")
    print(format_resources(rows, "userctl robots --probe", subtitle=summary))
    return 0


def cmd_robots(args: argparse.Namespace) -> int:
    """Print the robots table once, or refresh it with ``--watch``."""
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    if args.probe:
        if args.watch:
            raise UsageError("--watch cannot be combined with --probe")
        return cmd_probe(args)
    if args.franka_ip or args.franka_tcp_only:
        raise UsageError("--franka-ip and --franka-tcp-only need --probe")
    client = _RegistryClient()
    try:
        while True:
            response = client.call(args.timeout)
            if response is None:
                domain = os.environ.get("ROS_DOMAIN_ID", "0")
                print(
                    f"userctl: no robot registry answered on {LIST_ROBOTS_SERVICE} within "
                    f"{args.timeout:g} s (is registry_node running, on ROS_DOMAIN_ID={domain}?)",
                    file=sys.stderr,
                )
                return 1
            table = format_robots(response, bindings=client.bindings, servers=client.servers)
            if not args.watch:
                print(table)
                return 0
            # Clear the screen and redraw, as `watch` does.
            sys.stdout.write("\x1b[H\x1b[2J" + table + "\n")
            sys.stdout.flush()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def cmd_estop(args: argparse.Namespace) -> int:
    """``userctl estop [--release]``: see ``user_bringup.estop``."""
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    from user_bringup.estop import run_estop

    return run_estop(args.release, args.timeout, sys.stdout, sys.stderr)


# --- bag ------------------------------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_bag(args: argparse.Namespace) -> int:
    """``userctl bag info|replay|export|repair``: offline tools on a transition bag (all but repair read-only)."""
    from user_buffer import bag_tools
    from user_buffer.codec import DecodeError

    if args.bag_command == "replay" and not (args.rate > 0 and math.isfinite(args.rate)):
        raise UsageError(f"--rate must be a positive number, got {args.rate}")
    if getattr(args, "episode", None) is not None and args.episode < 0:
        raise UsageError(f"--episode must be >= 0, got {args.episode}")
    try:
        if args.bag_command == "repair":
            found, n = bag_tools.repair_bag(args.bag_dir)
            for line in found:
                print(line)
            print(f"{args.bag_dir}: {'repaired' if found else 'nothing to repair'}; {n} transitions")
            return 0
        store = bag_tools.open_bag(args.bag_dir)
        try:
            if args.bag_command == "info":
                print(bag_tools.format_info(bag_tools.bag_summary(store, per_step=args.episodes),
                                            episodes=args.episodes))
            elif args.bag_command == "replay":
                ep = bag_tools.find_episode(store, args.episode, args.robot)
                bag_tools.replay_episode(store, ep, rate=args.rate, prefix=args.prefix, loop=args.loop, out=_say)
            else:
                ep = bag_tools.find_episode(store, args.episode, args.robot)
                done = bag_tools.export_episode(store, ep, args.out, args.format, progress=_say)
                cams = ", ".join(f"{c} ({n} PNGs)" for c, n in done["cameras"].items()) or "none"
                print(f"exported {ep.robot_id} episode {ep.episode_id}: {done['steps']} steps -> {done['file']}; "
                      f"cameras: {cams}")
        finally:
            store.close()
    except bag_tools.BagToolError as exc:
        raise UsageError(str(exc)) from None
    except (DecodeError, OSError, RuntimeError) as exc:
        print(f"userctl bag {args.bag_command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


# --- learned reward ---------------------------------------------------------------------------------

#: graph arguments ``userctl reward record`` sets itself
RECORD_FIXED = ("policy", "record", "episodes", "run_name", "noise")


def record_overrides(args: argparse.Namespace) -> list[str]:
    """The franka_sac overrides of ``userctl reward record``: the scripted expert with noise, recorded by a
    buffer node; in simulation as fast as possible and going on after success (more success frames)."""
    if args.episodes <= 0:
        raise UsageError(f"--episodes must be > 0, got {args.episodes}")
    if not (args.noise >= 0 and math.isfinite(args.noise)):
        raise UsageError(f"--noise must be >= 0, got {args.noise}")
    given = parse_overrides(args.overrides)
    fixed = [k for k in RECORD_FIXED if k in given]
    if fixed:
        raise UsageError(f"{fixed[0]}:= is set by userctl reward record (use its options)")
    out = ["policy:=scripted", "record:=true", f"episodes:={args.episodes}", f"run_name:={args.run_name}",
           f"noise:={args.noise:g}"]
    if given.get("robot", "sim") == "sim":
        out += [f"{k}:={v}" for k, v in (("realtime_factor", "0"), ("terminate_on_success", "false"))
                if k not in given]
    return out + list(args.overrides)


def cmd_reward(args: argparse.Namespace) -> int:
    """``userctl reward record|train``."""
    if args.reward_command == "record":
        from user_bringup.launcher import Launcher, LaunchError

        graph = _load("franka_sac", record_overrides(args))
        bag = f"runs/{args.run_name}/replay"
        print(f"recording {args.episodes} episodes per robot into {bag}", flush=True)
        try:
            code = Launcher(graph, log_dir=args.log_dir, quiet=args.quiet).run()
        except LaunchError as exc:
            print(f"userctl reward record: error: {exc}", file=sys.stderr)
            return 1
        if code == 0:
            print(f"recorded into {bag}; next: userctl reward train --data {bag} --out runs/reward_model")
        return code
    if args.steps <= 0:
        raise UsageError(f"--steps must be > 0, got {args.steps}")
    if not 0.0 < args.threshold < 1.0:
        raise UsageError(f"--threshold must be in (0, 1), got {args.threshold}")
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; give a folder")
    from user_learner.reward import RewardDataError, TrainConfig, frames_from_bags, train

    try:
        frames = frames_from_bags(args.data, args.cameras)
        print(f"{len(frames)} frames ({int(frames.labels.sum())} success) of {len(set(frames.episodes.tolist()))} "
              f"episodes, cameras {frames.cameras}", flush=True)
        model, m = train(frames, TrainConfig(steps=args.steps, threshold=args.threshold,
                                             val_fraction=args.val_fraction, seed=args.seed), log=_say)
    except RewardDataError as exc:
        raise UsageError(str(exc)) from None
    model.save(args.out)
    print(f"held out: {m['val_episodes']} episodes, {m['frames']} frames ({m['successes']} success): accuracy "
          f"{m['accuracy']:.1%}, precision {m['precision']:.2f}, recall {m['recall']:.2f}, F1 {m['f1']:.3f} at "
          f"threshold {args.threshold:g}")
    print(f"saved to {args.out}; use it: userctl launch franka_sac reward:=learned reward_model:={args.out}")
    return 0


# --- link -----------------------------------------------------------------------------------------


def link_status(timeout: float) -> tuple[dict | None, dict | None]:
    """The newest status of the link node on this domain and one from at least 1 s before it (for rates)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from std_msgs.msg import String
    from user_common import qos
    from user_link.bridge import STATUS_TOPIC

    got: list[dict] = []
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"userctl_{os.getpid()}", context=ctx)
    node.create_subscription(String, STATUS_TOPIC, lambda m: got.append(json.loads(m.data)), qos.LATCHED)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end and not (len(got) >= 2 and got[-1]["time"] - got[0]["time"] >= 1.0):
            ex.spin_once(timeout_sec=0.1)
    finally:
        ex.shutdown(timeout_sec=0.5)
        node.destroy_node()
        ctx.try_shutdown()
    if not got:
        return None, None
    return got[-1], (got[0] if len(got) > 1 else None)


def cmd_link(args: argparse.Namespace) -> int:
    """``userctl link certs``: a CA and the certificates of a cloud router and N edges (user_link.certs);
    ``userctl link status``: what the link node on this domain reports."""
    if args.link_command == "status":
        from user_link.bridge import STATUS_TOPIC, format_status

        cur, prev = link_status(args.timeout)
        if cur is None:
            print(f"userctl link status: no link node answered on {STATUS_TOPIC} within {args.timeout:g} s "
                  f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}); start one: "
                  f"ros2 run user_link link_node --ros-args -p config:=config/link.yaml", file=sys.stderr)
            return 1
        print(format_status(cur, prev))
        return 0 if cur["connected"] else 1
    from user_link.certs import CertError, OpensslError, make_link_certs, summary

    try:
        made = make_link_certs(args.out, args.edge, args.host, days=args.days, force=args.force)
    except OpensslError as exc:
        print(f"userctl link certs: error: {exc}", file=sys.stderr)
        return 1
    except CertError as exc:
        raise UsageError(str(exc)) from None
    print(summary(made))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``userctl``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"launch": cmd_launch, "graph": cmd_graph, "robots": cmd_robots, "estop": cmd_estop,
                "bag": cmd_bag, "reward": cmd_reward, "link": cmd_link}
    try:
        return handlers[args.command](args)
    except (GraphError, UsageError) as exc:
        command = " ".join(filter(None, (args.command, getattr(args, "bag_command", None),
                                         getattr(args, "reward_command", None),
                                         getattr(args, "link_command", None))))
        print(f"userctl {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
