"""Smoke test of the replay benchmark script (bench/buffer.py): a tiny run prints the whole table."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "bench" / "buffer.py"

ROWS = ("(a) MemoryReplay", "(b) PersistentReplay, zstd", "(c) PersistentReplay, zstd", "(d) PersistentReplay, zstd",
        "(b) PersistentReplay, none", "(c) PersistentReplay, none", "(d) PersistentReplay, none",
        "(e) TorchRL LazyMemmapStorage, warm", "(e) TorchRL LazyMemmapStorage, cold",
        "(f) TransitionStore.add", "(f) PersistentReplay.add")
SIZES = ("| sim | none | 128 |", "| sim | zstd | 128 |", "| sim | lz4 | 128 |", "| noise | none | 128 |",
         "| noise | zstd | 128 |")
CHECKS = ("sim images: bytes per transition", "(b) zstd >= 80% of (b) uncompressed",
          "(c) zstd >= 80% of (c) uncompressed", "(b) >= 80% of (a)", "(c) >= 3x (d)", "(b) >= TorchRL peer",
          "ingest store_zstd >= ", "ingest replay >= ")


@pytest.mark.skipif(not SCRIPT.exists(), reason="bench/buffer.py not in this checkout")
def test_bench_buffer_prints_the_table(tmp_path: Path) -> None:
    pytest.importorskip("torchrl")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--gb", "0.05", "--seconds", "0.5", "--dir", str(tmp_path),
                           "--sim-transitions", "20", "--size-transitions", "200", "--reads", "20",
                           "--json", str(tmp_path / "res.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    took = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| sim", "| noise",
                                                                                                 "| images"))]
    assert table and table[0].split("|")[2].strip() == "samples/s", out
    for row in SIZES:   # a size row: kB/transition, ratio, ingest and read cost, all measured
        (line,) = [x for x in out.splitlines() if x.startswith(row)]
        cells = [c.strip() for c in line.split("|")[4:-1]]
        assert float(cells[0]) > 0 and cells[1].endswith("x") and all(float(c) > 0 for c in cells[2:]), line
    sim = {c: float(x.split("|")[4]) for x in out.splitlines() for c in ("none", "zstd")
           if x.startswith(f"| sim | {c} | 128 |")}
    assert sim["zstd"] < sim["none"] / 2, f"the rendered images must compress: {sim}"
    for row in ROWS:
        assert any(row in line for line in out.splitlines()), f"no {row!r} row:\n{out}"
    for c in CHECKS:
        lines = [line for line in out.splitlines() if c in line]
        assert lines and lines[0][:4] in ("PASS", "MISS") and "measured" in lines[0], f"no check {c!r}:\n{out}"
    for line in table[1:]:
        rate = float(line.split("|")[2])
        assert rate > 0, line
    assert "command: " in out and "posix_fadvise" in out
    assert (tmp_path / "res.json").exists()
    assert not any(p.name.startswith("run-") for p in tmp_path.iterdir()), "data not deleted at the end"
    print(f"bench/buffer.py smoke run: {took:.0f} s")  # ~25 s on an idle 2-core machine (recording, imports)
