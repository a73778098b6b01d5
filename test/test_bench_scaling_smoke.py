"""Smoke test of the scaling benchmark (bench/scaling.py): one robot, a short window, the table printed
with measured values (the measured run is in the README)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_scaling_prints_a_row_per_robot_count(tmp_path, ros_env):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--robots", "1", "--seconds", "4",
                          "--warmup", "1", "--json", str(tmp_path / "r.json")], cwd=ROOT, env=ros_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert any(line.startswith("| 1 |") for line in out.stdout.splitlines()), out.stdout
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["env_steps_per_s"] > 0 and row["robots_reporting"] == 1 and row["hz_max"] > 0, row
    assert row["cpu_cores"] > 0, row
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--robots", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--robots" in bad.stderr
