"""Smoke test of bench/wxai_expert.py: a few episodes print the table row (the measured run is in docs/wxai.md)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_wxai_expert_prints_successes_per_noise_level():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "wxai_expert.py"), "--episodes", "3", "--noise", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    row = re.search(r"^\| 0 \| (\d+)/3 \| [\d.]+ \| \d+ \|$", out.stdout, re.M)
    assert row, out.stdout
    assert int(row.group(1)) >= 2, f"the expert failed on the WidowX: {out.stdout}"
