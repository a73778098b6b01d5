"""Helpers for system tests of the HAL nodes: profiles with changes, node command lines."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIM_PROFILE = ROOT / "config" / "robot_sim.yaml"


def profile_with(tmp_path: Path, name: str = "robot_test.yaml", **dotted) -> Path:
    """Copy of the sim profile with dotted-key changes, e.g. ``**{"robot.cameras": []}``."""
    data = yaml.safe_load(SIM_PROFILE.read_text())
    for key, value in dotted.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def node_cmd(executable: str, params: dict, node_name: str | None = None) -> list[str]:
    """Command line of an installed node executable with ``-p name:=value`` parameters."""
    from ament_index_python.packages import get_package_prefix

    pkg = "user_hal"
    exe = Path(get_package_prefix(pkg)) / "lib" / pkg / executable
    cmd = [str(exe), "--ros-args"]
    if node_name:
        cmd += ["-r", f"__node:={node_name}"]
    for k, v in params.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        cmd += ["-p", f"{k}:={v}"]
    return cmd


def userctl_cmd(*args: str) -> list[str]:
    """Command line of the installed ``userctl`` CLI."""
    from ament_index_python.packages import get_package_prefix

    return [str(Path(get_package_prefix("user_bringup")) / "lib" / "user_bringup" / "userctl"), *args]
