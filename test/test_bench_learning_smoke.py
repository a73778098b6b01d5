"""Smoke test of the learning benchmark (bench/learning.py): a short run of two robots through the real
graph prints its row and draws the curves (the measured runs are in the README)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_learning_runs_two_robots_and_prints_the_row(tmp_path, ros_env):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "learning.py"), "--modes", "async", "--robots", "2",
                          "--minutes", "0.1", "--realtime-factor", "0", "--png", str(tmp_path / "c.png")],
                         cwd=ROOT, env=ros_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("async ")]
    assert len(rows) == 1 and rows[0][1].strip() == "2", out.stdout
    assert int(rows[0][4]) > 0, f"no env steps: {out.stdout}"
    assert (tmp_path / "c.png").stat().st_size > 1000
