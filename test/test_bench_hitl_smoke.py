"""Smoke test of the HG-DAgger benchmark (bench/hitl.py): a tiny run prints the table,
the verdict lines and the curves (the measured run is in the README)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_hitl_prints_a_row_per_run_and_a_verdict_per_task(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "hitl.py"), "--tasks", "peg", "--seeds", "0",
                          "--demos", "1", "--bc-updates", "20", "--episodes", "2", "--eval-every", "1",
                          "--eval-episodes", "1", "--rate-window", "1", "--png", str(tmp_path / "c.png"),
                          "--json", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"   # 1: a target missed
    lines = out.stdout.splitlines()
    for task in ("peg",):
        assert any(line.split()[:3] == [task, "mlp", "0"] for line in lines if line.strip()), out.stdout
        assert any(line.startswith(f"{task}/mlp: median success gain") and ("met" in line or "MISSED" in line)
                   for line in lines), out.stdout
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [len(r["episodes"]) for r in res] == [2] and all(len(r["evals"]) == 3 for r in res)
    assert all(r["updates"] >= 20 for r in res)
    assert (tmp_path / "c.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "hitl.py"), "--episodes", "4", "--rate-window", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--rate-window 3" in bad.stderr


def test_bench_hitl_runs_the_vla_chunk_policy_on_pick_and_place(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "hitl.py"), "--tasks", "pick", "--policy", "vla",
                          "--seeds", "0", "--demos", "1", "--bc-updates", "5", "--episodes", "2", "--utd", "0.1",
                          "--eval-every", "2", "--eval-episodes", "1", "--rate-window", "1",
                          "--json", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert any(line.split()[:3] == ["pick", "vla", "0"] for line in out.stdout.splitlines()), out.stdout
    (r,) = json.loads((tmp_path / "r.json").read_text())["results"]
    # the human stepped in, and the learner trained on after the BC start
    assert r["policy"] == "vla" and r["human_steps"] > 0 and r["updates"] > 5, r
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "hitl.py"), "--tasks", "peg", "--policy", "vla",
                          "--episodes", "2", "--rate-window", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--policy vla" in bad.stderr and "pick" in bad.stderr, bad.stderr[-2000:]
