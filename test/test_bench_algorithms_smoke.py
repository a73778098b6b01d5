"""Smoke test of the sample-efficiency benchmark (bench/algorithms.py): a tiny run of every row prints
the table, the checks and the curves (the measured run is in the README)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_algorithms_prints_every_row_and_check(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "algorithms.py"), "--seeds", "1",
                          "--max-env-steps", "100", "--start-steps", "50", "--min-buffer", "50", "--utd", "1", "--demos", "2",
                          "--png", str(tmp_path / "curves.png"), "--json", str(tmp_path / "res.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    text = out.stdout
    for row in ("| sac | sac_peg |", "| rlpd | rlpd_peg |", "| sac_flow | sac_flow_peg |", "| sac_flow_t |"):
        assert any(line.startswith(row) for line in text.splitlines()), f"no row {row!r}:\n{text}"
    for check in ("RLPD reaches 90% within 3000 env steps", "sac_flow needs at most 1.3x", "sac_flow_t needs"):
        assert any(line[:4] in ("PASS", "MISS", "N/A ") and check in line for line in text.splitlines()), check
    res = json.loads((tmp_path / "res.json").read_text())
    assert {r["algo"] for r in res["results"]} == {"sac", "rlpd", "sac_flow", "sac_flow_t"}
    assert all(r["env_steps"] >= 100 and r["updates"] > 0 for r in res["results"]), res["results"]
    assert (tmp_path / "curves.png").stat().st_size > 1000

    # The saved runs give the same table again, without running anything.
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "algorithms.py"), "--from-json",
                            str(tmp_path / "res.json"), "--png", str(tmp_path / "again.png")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows == [line for line in again.stdout.splitlines() if line.startswith("| ")]
    assert "runs from" in again.stdout and (tmp_path / "again.png").stat().st_size > 1000
