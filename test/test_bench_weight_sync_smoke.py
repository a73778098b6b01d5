"""Smoke test of the weight-sync benchmark (bench/weight_sync.py): a tiny run per transport prints the control-loop
table and one transfer row per version (the measured 100M-parameter runs are in docs/weight_sync.md)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("transport,versions,via", [("auto", 2, "shm"), ("dds", 1, "dds")])
def test_bench_weight_sync_prints_the_tables(transport, versions, via):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "weight_sync.py"), "--mb", "8", "--versions",
                          str(versions), "--baseline", "1", "--gap", "0.2", "--timeout", "90", "--transport", transport],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    lines = out.stdout.splitlines()
    for phase in ("no sync", "during sync"):
        row = next((line for line in lines if line.startswith(phase)), None)
        assert row is not None and len(row.split()) == 10, f"no {phase!r} row:\n{out.stdout}"
    rows = [line.split() for line in lines if re.match(r"v\d+ ", line)]
    assert [r[0] for r in rows] == [f"v{v}" for v in range(1, versions + 1)], out.stdout
    for r in rows:
        assert r[2] == via, f"snapshot crossed via {r[2]}, expected {via}:\n{out.stdout}"
        assert (int(r[3]) > 0) == (via == "dds"), "chunks go over DDS only on the dds path"
        assert float(r[-1]) > 0  # MB/s
