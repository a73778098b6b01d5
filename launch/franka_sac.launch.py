"""ROS 2 launch file for the ``franka_sac`` graph (needs a full ROS 2 install with launch_ros).

A thin adapter: every node, parameter and condition comes from ``config/franka_sac.yaml`` through
:func:`user_bringup.graph.load_graph`, the same description ``userctl launch franka_sac`` runs.
Usage: ``ros2 launch user_bringup franka_sac.launch.py robots:=2 episodes:=10``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from launch import LaunchContext, LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
    TimerAction,
)
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from user_bringup.graph import NodeSpec, load_arg_specs, load_graph
from user_bringup.launcher import build_command, resolve_executable, write_params_file

# Installed as share/user_bringup/launch/; the graph lives next door in share/user_bringup/config/.
GRAPH_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "config", "franka_sac.yaml")


def _action(spec: NodeSpec, params_dir: str) -> ExecuteProcess:
    """Build the launch action of one resolved node."""
    if spec.package:
        return Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace,
            parameters=[spec.parameters] if spec.parameters else [],
            remappings=spec.remappings,
            arguments=spec.arguments,
            output="screen",
        )
    # A plain command (no package): same argv as the embedded launcher uses.
    cmd = build_command(spec, resolve_executable(spec), write_params_file(spec, Path(params_dir)))
    return ExecuteProcess(cmd=cmd, name=spec.label, output="screen")


def _launch_graph(context: LaunchContext) -> list:
    """Resolve the graph with the launch arguments and return its nodes plus end-of-run handlers."""
    specs = load_arg_specs(GRAPH_FILE)
    overrides = {name: LaunchConfiguration(name).perform(context) for name in specs}
    graph = load_graph(GRAPH_FILE, overrides)
    params_dir = tempfile.mkdtemp(prefix="user-launch-params-")
    actions: list = []
    pending_ends_run: set[str] = set()

    def on_exit(event, _context):  # noqa: ANN001, ANN202 (launch's callback signature)
        spec = by_action.pop(id(event.action))
        if event.returncode != 0 and spec.respawn_delay > 0:
            # Crash-only respawn, as in the embedded launcher (launch_ros's respawn also restarts
            # nodes that finished cleanly).
            return [TimerAction(period=spec.respawn_delay, actions=start(spec))]
        if event.returncode != 0:
            return [Shutdown(reason=f"{spec.label} exited with code {event.returncode}")]
        if spec.stops_run:
            return [Shutdown(reason=f"{spec.label} finished")]
        if not spec.ends_run:
            return [Shutdown(reason=f"{spec.label} exited unexpectedly")]
        pending_ends_run.discard(spec.label)
        if not pending_ends_run:
            return [Shutdown(reason="all ends_run nodes have exited")]
        return None

    by_action: dict[int, NodeSpec] = {}

    def start(spec: NodeSpec) -> list:
        action = _action(spec, params_dir)
        by_action[id(action)] = spec
        return [action, RegisterEventHandler(OnProcessExit(target_action=action, on_exit=on_exit))]

    for spec in graph.nodes:
        if spec.ends_run:
            pending_ends_run.add(spec.label)
        actions += start(spec)
    return actions


def _text(value: Any) -> str:
    """Spell a default or choice as typed on the command line (booleans as true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def generate_launch_description() -> LaunchDescription:
    """Declare one launch argument per graph argument and resolve the graph at launch time."""
    declared = [
        DeclareLaunchArgument(
            spec.name,
            default_value=_text(spec.default),
            description=spec.help,
            **({"choices": [_text(c) for c in spec.choices]} if spec.choices else {}),
        )
        for spec in load_arg_specs(GRAPH_FILE).values()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_graph)])
