"""Smoke test of the learned-reward benchmark (bench/reward.py): a tiny run records, trains, runs RLPD with
the rule and the learned reward and prints both tables, the checks and the curves (the measured run is in
docs/learned_reward.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_reward_prints_the_tables_and_checks(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "reward.py"), "--episodes", "4", "--steps", "15",
                          "--image-size", "64", "--rl", "--max-env-steps", "80", "--start-steps", "50",
                          "--demos", "1", "--model-out", str(tmp_path / "model"),
                          "--png", str(tmp_path / "curves.png"), "--json", str(tmp_path / "res.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    lines = out.stdout.splitlines()
    assert any(line.startswith("| held-out frames |") for line in lines), out.stdout
    for row in ("| rule |", "| learned |"):
        assert any(line.startswith(row) for line in lines), f"no row {row!r}:\n{out.stdout}"
    for check in ("per-frame accuracy on held-out episodes >= 95%", "within 1.5x the env steps of the rule"):
        assert any(line[:4] in ("PASS", "MISS", "N/A ") and check in line for line in lines), check
    res = json.loads((tmp_path / "res.json").read_text())
    assert {r["algo"] for r in res["results"]} == {"rlpd_rule", "rlpd_learned"}
    assert all(r["env_steps"] >= 80 and r["updates"] > 0 for r in res["results"]), res["results"]
    learned = next(r for r in res["results"] if r["algo"] == "rlpd_learned")
    assert learned["classifier_ms"] > 0, "the learned run judged its steps with the classifier"
    assert (tmp_path / "model" / "reward_model.json").is_file() and (tmp_path / "curves.png").stat().st_size > 1000

    # The saved runs give the same tables again, without running anything.
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "reward.py"), "--from-json", str(tmp_path / "res.json"),
                            "--png", str(tmp_path / "again.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [x for x in lines if x.startswith("| ")] == [x for x in again.stdout.splitlines() if x.startswith("| ")]
