"""Smoke test of the replay benchmark script (bench/buffer.py): a tiny run prints the whole table."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "bench" / "buffer.py"

ROWS = ("(a) MemoryReplay", "(b) PersistentReplay", "(c) PersistentReplay", "(d) PersistentReplay",
        "(e) TorchRL LazyMemmapStorage, warm", "(e) TorchRL LazyMemmapStorage, cold",
        "(f) TransitionStore.add", "(f) PersistentReplay.add")
CHECKS = ("(b) >= 80% of (a)", "(c) >= 3x (d)", "(b) >= TorchRL peer", "ingest store >= ", "ingest replay >= ")


@pytest.mark.skipif(not SCRIPT.exists(), reason="bench/buffer.py not in this checkout")
def test_bench_buffer_prints_the_table(tmp_path: Path) -> None:
    pytest.importorskip("torchrl")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--gb", "0.05", "--seconds", "1", "--dir", str(tmp_path),
                           "--json", str(tmp_path / "res.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    took = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table and table[0].split("|")[2].strip() == "samples/s", out
    for row in ROWS:
        assert any(row in line for line in out.splitlines()), f"no {row!r} row:\n{out}"
    for c in CHECKS:
        lines = [line for line in out.splitlines() if c in line]
        assert lines and lines[0][:4] in ("PASS", "MISS") and "measured" in lines[0], f"no check {c!r}:\n{out}"
    for line in table[2:]:
        rate = float(line.split("|")[2])
        assert rate > 0, line
    assert "command: " in out and "posix_fadvise" in out
    assert (tmp_path / "res.json").exists()
    assert not any(p.name.startswith("run-") for p in tmp_path.iterdir()), "data not deleted at the end"
    print(f"bench/buffer.py smoke run: {took:.0f} s")  # ~15 s on an idle 2-core machine, mostly imports
