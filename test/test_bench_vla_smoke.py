"""Smoke test of the VLA pretraining benchmark (bench/vla.py): demos from the scripted expert in the MuJoCo
cell, a few BC updates, an evaluation episode, and the table (the measured run is in docs/vla.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_vla_prints_its_table():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "vla.py"), "--demos", "1", "--steps", "3",
                          "--eval", "1", "--execute", "2", "8", "--set", "algo.d_model=32", "algo.layers=1", "algo.head_dim=32",
                          "algo.head_layers=1", "algo.batch_size=8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 1 | 0 |")]
    assert len(rows) == 2, out.stdout   # one per --execute value
    for row, execute in zip(rows, ("2", "8")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[2]) > 10 and cells[3] == "3" and cells[6] == execute and cells[7].endswith("%"), cells
