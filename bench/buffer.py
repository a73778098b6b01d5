#!/usr/bin/env python3
"""Benchmark: size on disk, ingest and sampling throughput of the disk-backed, cache-aware replay,
compressed (the default: zstd chunks of about one transition) and uncompressed, versus RAM and TorchRL.

Data: real transitions of the simulated Franka (two 128x128 rgb8 cameras plus a 20-dim state, for obs
and next_obs), recorded first with the main job's graph (scripted expert, two robots, a buffer node);
``--source BAG`` takes them from any transition bag instead (a real robot's, say). Transitions are
re-keyed into 8 robots x 100-step episodes. Images of uniform noise (incompressible) are measured too.

  (s) size table: for sim and noise images, each storage choice (chunk compression x chunk size):
      bytes per transition on disk, ingest (``TransitionStore.add`` + ``sync()`` per episode), and the
      CPU cost of one random ``read`` (page cache warm, chunk cache off);
  (a) MemoryReplay: everything in RAM (the reference);
  (b) PersistentReplay, cache = ``--cache-frac`` of the data, window = what fits the cache, prefetch on;
  (c) PersistentReplay, same cache, uniform over all data (window 0), prefetch on;
  (d) PersistentReplay, pure disk: no cache, no prefetch, no reader threads (read + decode in sample());
      (b), (c), (d) once on a zstd bag and once on an uncompressed bag holding the same ``--gb``;
  (e) TorchRL ``ReplayBuffer(LazyMemmapStorage)`` holding the same tensors, uniform; warm (page cache
      holds the memmap files) and cold (evicted);
  (f) ingest through ``TransitionStore.add`` (timed while writing the data set) and ``PersistentReplay.add``
      (decode + store + cache), against 10x what 8 robots at 10 Hz with two 128x128 cameras produce.

Disk reads are made real: before (b), (c), (d) the bag files are evicted from the OS page cache
(fsync + ``posix_fadvise(DONTNEED)``), and again every ``--evict-every`` seconds during their
measurement, since this machine's RAM would otherwise hold the whole bag after the first pass (a bag
much larger than RAM is what the disk-backed replay is for). The TorchRL memmap files get the same
treatment for (e, cold) (msync + ``madvise(DONTNEED)`` of the mapping + ``posix_fadvise(DONTNEED)``).
The "disk MB/s" column is what the process read from the block device (``/proc/self/io``).

    source scripts/env.sh && python bench/buffer.py                   # ~2 GB of data, 10 s per measurement
    python bench/buffer.py --gb 0.2 --seconds 3                        # quick look
    python bench/buffer.py --gb 8 --json runs/bench_buffer.json --keep
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import mmap
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "user_buffer" / "test"))  # buffer_helpers: real Transition messages

CAMERAS = ("wrist", "side")
IMAGE = 128
STATE_DIM = 20
ACTION_DIM = 7
BATCH = 256
EPISODE_STEPS = 100
ROBOTS = 8
HZ = 10.0
TARGET_FACTOR = 10


# ------------------------------------------------------------------------------------------- machine facts

def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_total_gb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return float("nan")


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(device, mount point, filesystem type) holding ``path``."""
    best = ("?", "/", "?")
    p = str(path.resolve())
    try:
        for line in open("/proc/mounts"):
            dev, mnt, fs = line.split()[:3]
            if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                best = (dev, mnt, fs)
    except OSError:
        pass
    return best


def _read_bytes() -> int:
    """Bytes this process (all threads) had fetched from the block layer."""
    try:
        for line in open("/proc/self/io"):
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------------------- page cache

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_DONTNEED, MS_SYNC = 4, 4


def evict_files(paths: list[Path]) -> None:
    """Write back and drop the page cache of these files (pages mapped by a process are not dropped)."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()]


def unmap_pages(ptr: int, nbytes: int) -> None:
    """msync + madvise(DONTNEED) the whole pages of one file mapping (so fadvise can then drop them)."""
    page = mmap.PAGESIZE
    start = -(-ptr // page) * page          # never touch a page that may belong to another mapping
    end = (ptr + nbytes) // page * page
    if end - start <= 0:
        return
    if _libc.msync(start, end - start, MS_SYNC) != 0 or _libc.madvise(start, end - start, MADV_DONTNEED) != 0:
        raise OSError(ctypes.get_errno(), "msync/madvise of a memmap tensor failed")


# ---------------------------------------------------------------------------------------------- data

class Messages:
    """Distinct serialized Transitions with unique (robot, episode, step) keys, built from a pool of real ones."""

    def __init__(self, pool: list) -> None:
        from rclpy.serialization import serialize_message  # noqa: PLC0415

        self._ser = serialize_message
        self.pool = pool

    @classmethod
    def noise(cls, n: int) -> "Messages":
        """Transitions whose images are uniform noise (incompressible: the worst case for compression)."""
        from buffer_helpers import transition_msg  # noqa: PLC0415 - needs the test helpers on sys.path

        return cls([transition_msg(f"franka_{i % ROBOTS}", 0, i, cams=CAMERAS, size=IMAGE) for i in range(n)])

    @classmethod
    def recorded(cls, bag: Path, limit: int) -> "Messages":
        """The first ``limit`` transitions of a bag, in the order they were recorded."""
        from rclpy.serialization import deserialize_message  # noqa: PLC0415
        from user_buffer.store import TransitionStore  # noqa: PLC0415
        from user_msgs.msg import Transition  # noqa: PLC0415

        store = TransitionStore(bag, writable=False)
        try:
            pool = [deserialize_message(store.read(r), Transition) for r in range(min(limit, len(store)))]
        finally:
            store.close()
        for t in pool:
            shapes = {(img.height, img.width, img.encoding) for img in t.obs.images}
            if len(t.obs.images) != len(CAMERAS) or shapes != {(IMAGE, IMAGE, "rgb8")} or len(t.obs.proprio) != STATE_DIM:
                raise SystemExit(f"{bag}: transitions need {len(CAMERAS)} {IMAGE}x{IMAGE} rgb8 cameras and a "
                                 f"{STATE_DIM}-dim state; found {len(t.obs.images)} images {shapes}, "
                                 f"state {len(t.obs.proprio)}")
        if not pool:
            raise SystemExit(f"{bag}: no transitions")
        return cls(pool)

    def episode(self, episode: int) -> list[bytes]:
        """The 100 steps of one episode of robot ``episode % 8`` (the last one terminated)."""
        out = []
        robot = f"franka_{episode % ROBOTS}"
        for s in range(EPISODE_STEPS):
            m = self.pool[(episode * EPISODE_STEPS + s) % len(self.pool)]
            m.robot_id, m.episode_id, m.step = robot, episode, s
            for o, k in ((m.obs, s), (m.next_obs, s + 1)):
                o.robot_id, o.episode_id, o.step = robot, episode, k
            m.reward = 1.0 if s == EPISODE_STEPS - 1 else 0.0
            m.terminated = s == EPISODE_STEPS - 1
            m.policy_version = episode
            out.append(bytes(self._ser(m)))
        return out


def record_sim(work: Path, transitions: int) -> Path:
    """Record about ``transitions`` real transitions of the simulated Franka with the main job's graph
    (scripted expert on two robots, a buffer node recording); returns the bag."""
    userctl = shutil.which("userctl")
    if userctl is None:
        raise SystemExit("userctl is not on PATH: run `source scripts/env.sh` first")
    per_robot = max(1, -(-transitions // (2 * 8)))    # the expert needs about 8 steps per episode
    cmd = [userctl, "launch", "franka_sac", "policy:=scripted", "record:=true", f"episodes:={per_robot}",
           "robots:=2", "realtime_factor:=0", "run_name:=sim", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"recording failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    print(f"  recorded {per_robot} episodes x 2 robots of the simulated Franka in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return work / "runs" / "sim" / "replay"


# ------------------------------------------------------------------------------------------ measuring

def check_batch(batch) -> None:
    """The batch holds what the benchmark claims to measure (shapes and dtypes of every key)."""
    want = {"state": ((BATCH, STATE_DIM), "float32"), "next_state": ((BATCH, STATE_DIM), "float32"),
            "action": ((BATCH, ACTION_DIM), "float32"), "reward": ((BATCH,), "float32"),
            "terminated": ((BATCH,), "float32"), "pixels": ((BATCH, len(CAMERAS), IMAGE, IMAGE, 3), "uint8"),
            "next_pixels": ((BATCH, len(CAMERAS), IMAGE, IMAGE, 3), "uint8")}
    for k, (shape, dtype) in want.items():
        a = batch[k]
        if tuple(a.shape) != shape or str(a.dtype).rsplit(".", 1)[-1] != dtype:
            raise AssertionError(f"batch[{k!r}] is {tuple(a.shape)} {a.dtype}, expected {shape} {dtype}")


def measure(sample, seconds: float, warmup: float, evict=None, evict_every: float = 0.0, counters=None) -> dict:
    """Call ``sample()`` for ``seconds`` after ``warmup`` s; eviction pauses are not counted."""
    check_batch(sample())
    t_end = time.perf_counter() + warmup
    n = 1
    while n < 2 or time.perf_counter() < t_end:
        sample()
        n += 1
    if evict is not None:
        evict()
    c0 = counters() if counters else None
    io0 = _read_bytes()
    calls, wait, paused = 0, 0.0, 0.0
    t0 = time.perf_counter()
    next_evict = t0 + evict_every
    while True:
        a = time.perf_counter()
        if a - t0 - paused >= seconds:
            break
        sample()
        b = time.perf_counter()
        wait += b - a
        calls += 1
        if evict is not None and evict_every > 0 and b >= next_evict:
            evict()
            c = time.perf_counter()
            paused += c - b
            next_evict = c + evict_every
    elapsed = time.perf_counter() - t0 - paused
    res = {"calls": calls, "seconds": elapsed, "samples_per_s": BATCH * calls / elapsed,
           "wait_ms": 1e3 * wait / calls, "disk_mb_per_s": (_read_bytes() - io0) / 1e6 / elapsed}
    if counters:
        h0, m0 = c0
        h1, m1 = counters()
        looked = (h1 - h0) + (m1 - m0)
        res["hit_rate"] = (h1 - h0) / looked if looked else float("nan")
    return res


def open_replay(bag: Path, layout, args, **kw):
    from user_buffer.replay import PersistentReplay  # noqa: PLC0415
    from user_buffer.store import TransitionStore  # noqa: PLC0415

    return PersistentReplay(TransitionStore(bag, writable=False), layout, seed=args.seed, batch_size=BATCH, **kw)


def wait_cache_warm(rep, target: int, timeout: float = 3600.0) -> tuple[int, float]:
    """Wait until the replay's background warm-up has filled ``target`` cache rows (or finished)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        rows = int(rep.stats()["cache_rows"])
        if rows >= target or not any(t.is_alive() for t in rep._warmers):
            return rows, time.perf_counter() - t0
        time.sleep(0.02)
    raise TimeoutError(f"cache warm-up did not finish in {timeout:.0f} s")


def ingest_replay(msgs: Messages, d: Path, layout, cache_bytes: int, seconds: float, max_rows: int,
                  first_episode: int) -> dict:
    """PersistentReplay.add (decode + store add + cache put; syncs at every episode end) into a fresh bag."""
    from user_buffer.replay import PersistentReplay  # noqa: PLC0415
    from user_buffer.store import TransitionStore  # noqa: PLC0415

    rep = PersistentReplay(TransitionStore(d), layout, cache_bytes=cache_bytes, prefetch=0, readers=0)
    n, nbytes, spent = 0, 0, 0.0
    ep = first_episode
    try:
        while (spent < seconds or n == 0) and n < max_rows:
            batch = msgs.episode(ep)      # serialization is not counted
            ep += 1
            t0 = time.perf_counter()
            for b in batch:
                rep.add(b)
            spent += time.perf_counter() - t0
            n += len(batch)
            nbytes += sum(len(b) for b in batch)
    finally:
        rep.close()
    return {"transitions": n, "seconds": spent, "per_s": n / spent, "mb_per_s": nbytes / 1e6 / spent}


# ---------------------------------------------------------------------------------------------- main

def disk_ceiling(files: list[Path], nbytes: int, seconds: float, threads: int) -> float:
    """(g) Cold random preads of ``nbytes`` from ``files`` by ``threads`` threads: MB/s the device gives.

    The files are evicted from the page cache before and every 0.1 s during the run, like (c) and (d)."""
    fds = [os.open(f, os.O_RDONLY) for f in files]
    sizes = [os.fstat(fd).st_size for fd in fds]
    stop = time.monotonic() + seconds
    count = [0] * threads

    def evictor() -> None:
        while time.monotonic() < stop:
            for fd in fds:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            time.sleep(0.1)

    def reader(i: int) -> None:
        rng = np.random.default_rng(i)
        while time.monotonic() < stop:
            k = int(rng.integers(len(fds)))
            os.pread(fds[k], nbytes, int(rng.integers(0, max(1, sizes[k] - nbytes))))
            count[i] += 1

    for fd in fds:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    workers = [threading.Thread(target=reader, args=(i,)) for i in range(threads)] + [threading.Thread(target=evictor)]
    t0 = time.monotonic()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    mb_s = sum(count) * nbytes / (time.monotonic() - t0) / 1e6
    for fd in fds:
        os.close(fd)
    return mb_s


SIZE_CHOICES = (("none", 128 << 10), ("zstd", 128 << 10), ("lz4", 128 << 10), ("zstd", 512 << 10),
                ("zstd", 4 << 20))     # (chunk compression, chunk size); the first two are the old and new defaults
SAMPLED = ("zstd", "none")            # bags the sampling rows run on: the default, and as before this release


def build_bag(msgs: Messages, bag: Path, episodes: int, compression: str, chunk_bytes: int = 128 << 10,
              on_episode=None) -> dict:
    """Write ``episodes`` episodes into a bag (timed: ``TransitionStore.add`` + ``sync()`` per episode)."""
    from user_buffer.store import StoreOptions, TransitionStore  # noqa: PLC0415

    store = TransitionStore(bag, options=StoreOptions(compression=compression, chunk_bytes=chunk_bytes))
    add_s, msg_bytes, n = 0.0, 0, 0
    for ep in range(episodes):
        batch = msgs.episode(ep)
        t0 = time.perf_counter()
        for b in batch:
            store.add(b)
        store.sync()
        add_s += time.perf_counter() - t0
        msg_bytes += sum(len(b) for b in batch)
        n += len(batch)
        if on_episode is not None:
            on_episode(batch)
    store.close()
    files = files_under(bag)
    return {"transitions": n, "seconds": add_s, "per_s": n / add_s, "mb_per_s": msg_bytes / 1e6 / add_s,
            "message_bytes": msg_bytes, "bag_bytes": sum(p.stat().st_size for p in files if p.suffix == ".mcap"),
            "bag_files": len([p for p in files if p.suffix == ".mcap"])}


def size_row(msgs: Messages, d: Path, compression: str, chunk_bytes: int, episodes: int, reads: int,
             seed: int) -> dict:
    """(s) one storage choice: bytes per transition on disk, ingest rate, CPU cost of one random read."""
    from user_buffer.store import StoreOptions, TransitionStore  # noqa: PLC0415

    built = build_bag(msgs, d, episodes, compression, chunk_bytes)
    n = built["transitions"]
    ro = TransitionStore(d, writable=False, options=StoreOptions(chunk_cache=0))   # every read decompresses
    rows = np.random.default_rng(seed).integers(0, n, reads + 20).tolist()
    for r in rows[:20]:
        ro.read(r)
    t0 = time.perf_counter()
    for r in rows[20:]:
        ro.read(r)
    read_ms = 1e3 * (time.perf_counter() - t0) / reads
    ro.close()
    shutil.rmtree(d)
    return {"compression": compression, "chunk_bytes": chunk_bytes, "transitions": n,
            "message_bytes": built["message_bytes"] / n, "disk_bytes": built["bag_bytes"] / n,
            "ingest_per_s": built["per_s"], "ingest_mb_per_s": built["mb_per_s"], "read_ms": read_ms}


def run(args, work: Path) -> dict:
    import torch  # noqa: PLC0415
    import torchrl  # noqa: PLC0415
    from tensordict import TensorDict  # noqa: PLC0415
    from torchrl.data import LazyMemmapStorage, ReplayBuffer  # noqa: PLC0415
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    from user_buffer.codec import decode_transition  # noqa: PLC0415
    from user_buffer.replay import Layout  # noqa: PLC0415
    from user_learner.replay import MemoryReplay  # noqa: PLC0415

    layout = Layout(state_dim=STATE_DIM, action_dim=ACTION_DIM, cameras=CAMERAS, image_size=(IMAGE, IMAGE))
    bpt = layout.bytes_per_transition()
    episodes = max(2, round(args.gb * 1e9 / bpt / EPISODE_STEPS))
    n = episodes * EPISODE_STEPS
    data_bytes = n * bpt
    cache_bytes = int(args.cache_frac * data_bytes)
    window = cache_bytes // bpt
    res: dict = {"command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1]] + sys.argv),
                 "transitions": n, "episodes": episodes, "bytes_per_transition": bpt, "data_bytes": data_bytes,
                 "cache_bytes": cache_bytes, "window": window, "dir": str(work), "load_start": os.getloadavg()[0],
                 "gpu": "GPU present (unused)" if torch.cuda.is_available() else "no GPU",
                 "versions": {"python": platform.python_version(), "numpy": np.__version__,
                              "torch": torch.__version__, "torchrl": torchrl.__version__}}
    dev, mnt, fs = _mount_of(work)
    if fs in ("tmpfs", "ramfs"):
        print(f"WARNING: {work} is on {fs}: 'disk' reads come from RAM; pass --dir on a real disk", flush=True)

    # -- the transitions: real ones of the simulated Franka (or --source), and noise images
    if args.source is None:
        print(f"recording about {args.sim_transitions} transitions of the simulated Franka ...", flush=True)
        source = record_sim(work, args.sim_transitions)
    else:
        source = args.source
    pools = {"sim": Messages.recorded(source, args.sim_transitions), "noise": Messages.noise(args.pool)}
    res["source"] = {"bag": str(source), "transitions": len(pools["sim"].pool), "recorded": args.source is None}

    # -- (s) size on disk, ingest and random-read cost of each storage choice
    size_eps = max(1, round(args.size_transitions / EPISODE_STEPS))
    res["sizes"] = []
    for kind in ("sim", "noise"):
        for comp, chunk in SIZE_CHOICES:
            r = size_row(pools[kind], work / "size", comp, chunk, size_eps, args.reads, args.seed)
            r["images"] = kind
            res["sizes"].append(r)
            print(f"(s) {kind} images, {comp} chunks of {chunk >> 10} KiB: {r['disk_bytes'] / 1e3:.1f} kB/transition, "
                  f"ingest {r['ingest_per_s']:.0f}/s, random read {r['read_ms']:.3f} ms", flush=True)

    # -- the data set: one bag per compression (ingest timed), MemoryReplay and TorchRL (not timed)
    msgs = pools["sim"]
    print(f"writing {n} transitions ({episodes} episodes x {EPISODE_STEPS} steps, {ROBOTS} robots) = "
          f"{data_bytes / 1e9:.2f} GB decoded into {len(SAMPLED)} bags in {work} ({dev} on {mnt}, {fs}) ...",
          flush=True)
    memory = MemoryReplay(layout, capacity=n, seed=args.seed, checkpointed=False)
    rb = ReplayBuffer(storage=LazyMemmapStorage(n, scratch_dir=work / "torchrl"), batch_size=BATCH)

    def fill_peers(batch: list[bytes]) -> None:
        first = len(memory)
        for b in batch:
            memory.add(b, decode_transition(b))
        sl = slice(first, first + len(batch))
        rb.extend(TensorDict({k: torch.from_numpy(memory.arrays[k][sl]) for k in
                              ("state", "next_state", "action", "reward", "terminated", "pixels", "next_pixels")},
                             batch_size=[len(batch)]))

    t_build = time.perf_counter()
    bags = {comp: work / f"bag_{comp}" for comp in SAMPLED}
    res["ingest_store"] = {comp: build_bag(msgs, bags[comp], episodes, comp,
                                           on_episode=fill_peers if i == 0 else None)
                           for i, comp in enumerate(SAMPLED)}
    tr_files = files_under(work / "torchrl")
    res.update(build_s=time.perf_counter() - t_build, torchrl_bytes=sum(p.stat().st_size for p in tr_files))
    assert len(memory) == n and len(rb) == n, (len(memory), len(rb))
    for comp, r in res["ingest_store"].items():
        print(f"  bag ({comp}): {r['bag_bytes'] / 1e9:.2f} GB in {r['bag_files']} MCAP files, "
              f"ingest {r['per_s']:.0f} transitions/s", flush=True)

    rows: dict[str, dict] = {}
    warm: dict[str, tuple[int, float]] = {}

    def report(key: str, r: dict) -> None:
        rows[key] = r
        print(f"  {key}: {r['samples_per_s']:.0f} samples/s", flush=True)

    # (a) everything in RAM
    print(f"(a) MemoryReplay for {args.seconds:g} s ...", flush=True)
    report("a", measure(lambda: memory.sample(BATCH), args.seconds, args.warmup))
    del memory

    for comp, bag in bags.items():
        bag_files = files_under(bag)

        def evict_bag(files=bag_files) -> None:
            evict_files(files)

        # (b) cache-aware, window = what fits the cache; (c) the same cache, uniform over all data
        for key, win in (("b", window), ("c", 0)):
            print(f"({key}) PersistentReplay on the {comp} bag, cache {cache_bytes / 1e6:.0f} MB, window {win} "
                  f"for {args.seconds:g} s ...", flush=True)
            evict_bag()
            rep = open_replay(bag, layout, args, cache_bytes=cache_bytes, window=win, prefetch=args.prefetch,
                              readers=args.readers)
            try:
                warm[f"{key}_{comp}"] = wait_cache_warm(rep, min(window, n))
                report(f"{key}_{comp}", measure(lambda: rep.sample(BATCH), args.seconds, args.warmup, evict_bag,
                                                args.evict_every, counters=lambda: (rep.hits, rep.misses)))
            finally:
                rep.close()
        # (d) pure disk
        print(f"(d) PersistentReplay on the {comp} bag, pure disk, for {args.seconds:g} s ...", flush=True)
        evict_bag()
        rep = open_replay(bag, layout, args, cache_bytes=0, window=0, prefetch=0, readers=0)
        try:
            report(f"d_{comp}", measure(lambda: rep.sample(BATCH), args.seconds, args.warmup, evict_bag,
                                        args.evict_every, counters=lambda: (rep.hits, rep.misses)))
        finally:
            rep.close()

    # (g) what the device gives to cold random reads of one (uncompressed) transition, 1 thread versus 8
    raw = res["ingest_store"]["none"]
    per = int(raw["message_bytes"] / raw["transitions"])
    res["disk_ceiling"] = {str(t): disk_ceiling(files_under(bags["none"]), per, min(args.seconds, 5.0), t)
                           for t in (1, 8)}

    # (e) TorchRL peer, warm then cold
    tensors = list(rb.storage._storage.values(include_nested=True, leaves_only=True))

    def evict_torchrl() -> None:
        for t in tensors:
            unmap_pages(t.data_ptr(), t.numel() * t.element_size())
        evict_files(tr_files)

    print(f"(e) TorchRL LazyMemmapStorage, warm page cache, for {args.seconds:g} s ...", flush=True)
    report("e_warm", measure(lambda: rb.sample(), args.seconds, args.warmup))
    if not args.no_cold_peer:
        print(f"(e) TorchRL LazyMemmapStorage, cold page cache, for {args.seconds:g} s ...", flush=True)
        report("e_cold", measure(lambda: rb.sample(), args.seconds, args.warmup, evict_torchrl, args.evict_every))
    del rb, tensors

    # (f) ingest through PersistentReplay.add (the default store: zstd)
    print(f"(f) PersistentReplay.add for {args.seconds:g} s (at most {n} transitions) ...", flush=True)
    d = work / "ingest"
    res["ingest_replay"] = ingest_replay(msgs, d, layout, cache_bytes, args.seconds, n, episodes)
    shutil.rmtree(d, ignore_errors=True)
    res["rows"], res["cache_warmup"] = rows, {k: {"rows": r, "seconds": s} for k, (r, s) in warm.items()}
    return res


def print_report(res: dict, args) -> None:
    dev, mnt, fs = _mount_of(Path(res["dir"]))
    rows, bpt = res["rows"], res["bytes_per_transition"]
    load = os.getloadavg()
    print()
    print(f"replay buffer benchmark: {os.cpu_count()} CPU cores ({_cpu_model()}), {_mem_total_gb():.0f} GB RAM, "
          f"{res['gpu']}; load average (1 min) at the start {res['load_start']:.2f}, at the end {load[0]:.2f}")
    v = res["versions"]
    print(f"python {v['python']}, numpy {v['numpy']}, torch {v['torch']}, torchrl {v['torchrl']}")
    print(f"command: {res['command']}")
    src = res["source"]
    print(f"transitions: {src['transitions']} real ones from {'a recording of the simulated Franka' if src['recorded'] else src['bag']} "
          f"(two {IMAGE}x{IMAGE} rgb8 cameras + {STATE_DIM}-dim state, obs and next_obs; {bpt / 1e3:.1f} kB decoded "
          f"each), re-keyed into {ROBOTS} robots x {EPISODE_STEPS}-step episodes; noise: {args.pool} transitions "
          f"with uniformly random images")
    print()
    sizes = res["sizes"]
    base = {r["images"]: r["disk_bytes"] for r in sizes if r["compression"] == "none"}
    print(f"(s) storage choices, {sizes[0]['transitions']} transitions each (add + sync per episode; random read = "
          f"one TransitionStore.read, page cache warm, chunk cache off):")
    print()
    print("| images | chunks | chunk KiB | kB/transition on disk | vs uncompressed | ingest transitions/s | ingest MB/s | random read ms |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for r in sizes:
        print(f"| {r['images']} | {r['compression']} | {r['chunk_bytes'] >> 10} | {r['disk_bytes'] / 1e3:.1f} | "
              f"{base[r['images']] / r['disk_bytes']:.2f}x | {r['ingest_per_s']:.0f} | {r['ingest_mb_per_s']:.0f} | "
              f"{r['read_ms']:.3f} |")
    print()
    ing = res["ingest_store"]
    print(f"data set: {res['transitions']} transitions = {res['data_bytes'] / 1e9:.2f} GB decoded; bags on {dev} ({fs}): "
          + ", ".join(f"{comp} {r['bag_bytes'] / 1e9:.2f} GB in {r['bag_files']} MCAP files" for comp, r in ing.items())
          + f"; TorchRL memmap {res['torchrl_bytes'] / 1e9:.2f} GB on the same disk")
    print(f"cache: {res['cache_bytes'] / 1e6:.0f} MB = {100 * args.cache_frac:g}% of the data = {res['window']} "
          f"transitions (the (b) window); batch {BATCH}; prefetch {args.prefetch}, readers {args.readers}; "
          f"{args.seconds:g} s per measurement after {args.warmup:g} s of warm-up")
    every = f"and every {args.evict_every:g} s during" if args.evict_every > 0 else "only before"
    print(f"page cache: bag files evicted (fsync + posix_fadvise DONTNEED) before opening (b), (c), (d) {every} "
          f"their measurement; TorchRL memmap files evicted (msync + madvise + fadvise DONTNEED) the same way "
          f"for (e, cold); eviction time is not counted")
    for k, w in res["cache_warmup"].items():
        print(f"cache warm-up from disk after opening ({k}): {w['rows']} rows in {w['seconds']:.1f} s")
    print()
    a = rows["a"]["samples_per_s"]
    frac = f"{100 * args.cache_frac:g}%"
    names = {"a": "(a) MemoryReplay, all in RAM"}
    for comp in SAMPLED:
        names[f"b_{comp}"] = f"(b) PersistentReplay, {comp} bag, cache {frac}, window {res['window']}, prefetch"
        names[f"c_{comp}"] = f"(c) PersistentReplay, {comp} bag, cache {frac}, uniform, prefetch"
        names[f"d_{comp}"] = f"(d) PersistentReplay, {comp} bag, pure disk (no cache/prefetch)"
    names["e_warm"] = "(e) TorchRL LazyMemmapStorage, warm page cache"
    names["e_cold"] = "(e) TorchRL LazyMemmapStorage, cold page cache"
    w = max(len(s) for s in names.values())
    print(f"| {'configuration':<{w}} | {'samples/s':>9} | {'vs (a)':>6} | {'cache hit':>9} | "
          f"{'wait ms/sample()':>16} | {'disk MB/s':>9} |")
    print(f"|{'-' * (w + 2)}|{'-' * 10}:|{'-' * 7}:|{'-' * 10}:|{'-' * 17}:|{'-' * 10}:|")
    for key, name in names.items():
        r = rows.get(key)
        if r is None:
            continue
        hit = f"{100 * r['hit_rate']:.1f}%" if "hit_rate" in r else "-"
        print(f"| {name:<{w}} | {r['samples_per_s']:>9.0f} | {r['samples_per_s'] / a:>6.2f} | {hit:>9} | "
              f"{r['wait_ms']:>16.2f} | {r['disk_mb_per_s']:>9.0f} |")
    print()
    dc = res.get("disk_ceiling")
    if dc:
        print(f"(g) device ceiling, cold random reads of one uncompressed transition: 1 thread {dc['1']:.0f} MB/s, "
              f"8 threads {dc['8']:.0f} MB/s ({dc['8'] / dc['1']:.2f}x): the most that overlapping reads can give")
        print()
    target = TARGET_FACTOR * ROBOTS * HZ
    per_msg = ing["none"]["message_bytes"] / ing["none"]["transitions"]
    print(f"ingest target: {TARGET_FACTOR}x what {ROBOTS} robots at {HZ:g} Hz with two {IMAGE}x{IMAGE} cameras "
          f"produce = {target:.0f} transitions/s = {target * per_msg / 1e6:.0f} MB/s ({per_msg / 1e3:.1f} kB/message)")
    lines = {f"store_{comp}": (f"(f) TransitionStore.add + sync() per 100-step episode, {comp} bag", r)
             for comp, r in ing.items()}
    lines["replay"] = ("(f) PersistentReplay.add (decode + store + cache), zstd bag", res["ingest_replay"])
    for name, r in lines.values():
        print(f"  {name}: {r['per_s']:.0f} transitions/s, {r['mb_per_s']:.0f} MB/s "
              f"({r['transitions']} transitions in {r['seconds']:.1f} s)")
    print()

    def check(text: str, ratio: float, need: float, extra: str = "") -> dict:
        ok = ratio >= need
        print(f"{'PASS' if ok else 'MISS'}  {text}: measured {ratio:.2f} (needs >= {need:g}){extra}")
        return {"check": text, "ratio": ratio, "need": need, "pass": ok}

    s = {k: r["samples_per_s"] for k, r in rows.items()}
    sim_zstd = next(r for r in sizes if r["images"] == "sim" and r["compression"] == "zstd"
                    and r["chunk_bytes"] == SIZE_CHOICES[1][1])
    checks = [check("sim images: bytes per transition, uncompressed / zstd (default chunks)",
                    base["sim"] / sim_zstd["disk_bytes"], 5.0),
              check("(b) zstd >= 80% of (b) uncompressed", s["b_zstd"] / s["b_none"], 0.8),
              check("(c) zstd >= 80% of (c) uncompressed", s["c_zstd"] / s["c_none"], 0.8),
              check("(b) >= 80% of (a)", s["b_zstd"] / a, 0.8),
              check("(c) >= 3x (d)", s["c_zstd"] / s["d_zstd"], 3.0)]
    extra = f"; vs the cold peer {s['b_zstd'] / s['e_cold']:.2f}" if "e_cold" in s else ""
    checks.append(check("(b) >= TorchRL peer (warm page cache)", s["b_zstd"] / s["e_warm"], 1.0, extra))
    for key in ("store_zstd", "replay"):
        checks.append(check(f"ingest {key} >= {TARGET_FACTOR}x {ROBOTS} robots ({target:.0f}/s)",
                            lines[key][1]["per_s"] / target, 1.0))
    res["checks"] = checks
    res["target_transitions_per_s"] = target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="data size in GB (1e9 bytes) of decoded transitions")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each measurement "
                    "(default: 20%% of --seconds, at most 1)")
    ap.add_argument("--cache-frac", type=float, default=0.10, help="cache size as a fraction of the data size")
    ap.add_argument("--prefetch", type=int, default=2, help="(b), (c): batches prefetched in the background")
    ap.add_argument("--readers", type=int, default=2, help="(b), (c): threads reading cache misses")
    ap.add_argument("--evict-every", type=float, default=1.0,
                    help="evict the files from the page cache every this many seconds during the disk-backed "
                         "measurements (0: only before)")
    ap.add_argument("--no-cold-peer", action="store_true", help="skip the cold-page-cache TorchRL measurement")
    ap.add_argument("--source", type=Path, help="take the transitions from this bag (two 128x128 cameras) instead "
                    "of recording the simulated Franka")
    ap.add_argument("--sim-transitions", type=int, default=480, help="real transitions to record (or take from "
                    "--source) as the pool the data set is built from")
    ap.add_argument("--pool", type=int, default=16, help="distinct noise-image transitions")
    ap.add_argument("--size-transitions", type=int, default=1000, help="(s): transitions written per storage choice")
    ap.add_argument("--reads", type=int, default=400, help="(s): random reads timed per storage choice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=ROOT / "runs" / "bench_buffer",
                    help="a fresh directory is made inside it (on the disk under test; not tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the data (bags + TorchRL memmap) at the end")
    ap.add_argument("--json", type=Path, help="also save the results here")
    args = ap.parse_args()
    if args.warmup is None:
        args.warmup = min(1.0, 0.2 * args.seconds)
    made_parent = not args.dir.exists()
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.dir))
    try:
        res = run(args, work)
        print_report(res, args)
    finally:
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if made_parent:
                try:
                    args.dir.rmdir()
                except OSError:
                    pass
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
