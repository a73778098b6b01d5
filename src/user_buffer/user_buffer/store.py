"""A bag of transitions on disk: rosbag2 directory + MCAP files + a persistent per-transition index.

``TransitionStore`` appends serialized ``user_msgs/Transition`` messages (CDR bytes, exactly as they
came off DDS) to ``<bag>_<N>.mcap`` files, splits files by size or age, and keeps an index row per
transition: where its payload lies (file, absolute offset, length) and what it is (robot,
embodiment, episode, step, terminated/truncated). Chunks are zstd-compressed by default and hold
about one image transition each (``StoreOptions.chunk_bytes``), so reading one transition back is
one chunk read plus its decompression; in an uncompressed bag it is one ``pread``.

Durability: ``sync()`` closes the open chunk and fsyncs the file; only then are the transitions in
it reported by ``take_durable()`` (the buffer acknowledges them to the robots after that). The index
(``user_index.npz``) is written atomically at every file switch, on close and every
``index_every_s``; when it is missing or does not match the files it is rebuilt from them.

Opening a bag for writing takes an exclusive lock and repairs what a crash left behind: a file
without a footer is cut after its last complete chunk and closed as the writer would have closed it
(summary with complete chunk indexes, footer); a closed file whose chunk indexes are incomplete gets
them rewritten; chunks failing their CRC are reported by file name and skipped.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import mcap_format as mf
from . import rosbag2
from .codec import DecodeError, transition_key

TOPIC = "/user/transitions"
TYPE = "user_msgs/msg/Transition"
INDEX_NAME = "user_index.npz"
# 2: every file listed was checked to have complete chunk indexes (version 1 trusted repaired files that lacked them)
INDEX_VERSION = 2
LOCK_NAME = ".user_buffer.lock"
PENDING = np.iinfo(np.uint64).max
FLAG_TERMINATED, FLAG_TRUNCATED, FLAG_COMPRESSED = 1, 2, 4
COMPRESSIONS = ("zstd", "lz4", "none", "")   # "" is "none"

ROW_FIELDS = {   # name -> dtype of one index column
    "file": np.uint16, "offset": np.uint64, "length": np.uint32, "chunk": np.uint64, "log_time": np.uint64,
    "robot": np.uint16, "embodiment": np.uint16, "episode": np.uint64, "step": np.uint32, "flags": np.uint8,
}

log = logging.getLogger("user_buffer")


class BagLocked(RuntimeError):
    """Another process is writing this bag."""


@dataclasses.dataclass
class FileEntry:
    name: str
    size: int = 0
    mtime_ns: int = 0
    complete: bool = False
    messages: int = 0
    start_ns: int = 0
    end_ns: int = 0

    def stats_from_rows(self, log_times: np.ndarray) -> None:
        self.messages = int(log_times.size)
        self.start_ns = int(log_times.min()) if log_times.size else 0
        self.end_ns = int(log_times.max()) if log_times.size else 0


@dataclasses.dataclass
class StoreOptions:
    split_bytes: int = 512 << 20          # start a new file past this size
    split_seconds: float = 0.0            # ... or past this age (0: never)
    chunk_bytes: int = 128 << 10          # a chunk closes past this many uncompressed bytes (and at every sync)
    compression: str = "zstd"             # MCAP chunk compression: "zstd", "lz4" or "none" (""); all lossless
    index_every_s: float = 30.0
    chunk_cache: int = 8                  # decompressed chunks kept for reads (sequential reads hit them)

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be zstd, lz4 or none, got {self.compression!r}")
        if self.chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {self.chunk_bytes}")

    @property
    def chunk_compression(self) -> str:
        """The name MCAP records in each chunk ("" for none)."""
        return "" if self.compression == "none" else self.compression


class Rows:
    """Growable columns of the index; appends under a lock, readers take a consistent snapshot."""

    def __init__(self, data: dict[str, np.ndarray] | None = None) -> None:
        n = 0 if not data else len(data["file"])
        cap = max(1024, n * 2)
        self.cols = {k: np.zeros(cap, dt) for k, dt in ROW_FIELDS.items()}
        if data:
            for k in ROW_FIELDS:
                self.cols[k][:n] = data[k]
        self.n = n

    def append(self, **values) -> int:
        if self.n == len(self.cols["file"]):
            for k, a in self.cols.items():
                b = np.zeros(len(a) * 2, a.dtype)
                b[: self.n] = a[: self.n]
                self.cols[k] = b
        i = self.n
        for k, v in values.items():
            self.cols[k][i] = v
        self.n = i + 1
        return i

    def view(self, n: int | None = None) -> dict[str, np.ndarray]:
        n = self.n if n is None else n
        return {k: a[:n] for k, a in self.cols.items()}

    def keep(self, mask: np.ndarray) -> None:
        kept = {k: a[: self.n][mask] for k, a in self.cols.items()}
        self.__init__(kept)


class TransitionStore:
    """A rosbag2 directory of transitions with an index; ``writable`` stores take the bag's lock."""

    def __init__(self, directory: str | os.PathLike, writable: bool = True,
                 options: StoreOptions | None = None) -> None:
        self.dir = Path(directory)
        self.opts = options or StoreOptions()
        self.writable = writable
        self.name = self.dir.name
        self.lock = threading.RLock()
        self._sync_lock = threading.Lock()   # one sync (fsync, file switch) at a time
        self.rows = Rows()
        self.files: list[FileEntry] = []
        self.robots: list[str] = []
        self.embodiments: list[str] = []
        self._robot_ids: dict[str, int] = {}
        self._emb_ids: dict[str, int] = {}
        self.keys: dict[tuple[int, int, int], int] = {}     # (robot, episode, step) -> row
        self.problems: list[str] = []                       # damage found while opening (file names)
        self._fds: dict[int, int] = {}
        self._chunk_cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._writer: mf.McapWriter | None = None
        self._wfile = None
        self._wfile_idx = -1
        self._wopened = 0.0
        self._pending_rows: list[int] = []
        self._pending_data: dict[int, bytes] = {}
        self._durable: list[int] = []
        self._unsynced = 0
        self._last_index_save = time.monotonic()
        self._index_dirty = False
        self._lock_fd: int | None = None
        if writable:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        elif not self.dir.is_dir():
            raise FileNotFoundError(f"no bag directory {self.dir}")
        self._open()

    # -- opening -------------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BagLocked(f"{self.dir}: another process is writing this bag") from None
        self._lock_fd = fd

    def mcap_files(self) -> list[str]:
        """Every ``*.mcap`` in the directory, ordered by the number before the extension."""
        def key(name: str) -> tuple[int, str]:
            m = re.search(r"_(\d+)\.mcap$", name)
            return (int(m.group(1)) if m else -1, name)

        return sorted((p.name for p in self.dir.glob("*.mcap") if p.is_file()), key=key)

    def _open(self) -> None:
        saved = self._load_index()
        names = self.mcap_files()
        keep_files: dict[str, int] = {}
        if saved is not None:
            meta, data = saved
            old = [FileEntry(**f) for f in meta["files"]]
            checked = meta.get("version", 1) >= INDEX_VERSION
            self.robots, self.embodiments = list(meta["robots"]), list(meta["embodiments"])
            ok_old = []
            for i, fe in enumerate(old):
                p = self.dir / fe.name
                st = p.stat() if p.exists() else None
                if st is not None and fe.complete and st.st_size == fe.size and st.st_mtime_ns == fe.mtime_ns \
                        and (checked or not mf.check_index(p)):   # else re-indexed (and repaired) below
                    ok_old.append(i)
            mask = np.isin(data["file"], ok_old)
            remap = np.zeros(max(len(old), 1), np.uint16)
            for new_i, old_i in enumerate(ok_old):
                remap[old_i] = new_i
                keep_files[old[old_i].name] = new_i
            self.files = [old[i] for i in ok_old]
            data = {k: v[mask] for k, v in data.items()}
            data["file"] = remap[data["file"]] if len(data["file"]) else data["file"]
            self.rows = Rows(data)
            gone = [fe.name for fe in old if fe.name not in names]
            for g in gone:
                self.problems.append(f"{self.dir / g}: listed in the index but missing; its transitions are gone")
        self._robot_ids = {r: i for i, r in enumerate(self.robots)}
        self._emb_ids = {e: i for i, e in enumerate(self.embodiments)}
        order = {n: i for i, n in enumerate(names)}
        for name in names:
            if name in keep_files:
                continue
            self._index_file(name)
            self._index_dirty = True
        # Files in name order, rows remapped accordingly.
        perm = sorted(range(len(self.files)), key=lambda i: order.get(self.files[i].name, 1 << 30))
        if perm != list(range(len(self.files))):
            inv = np.zeros(len(perm), np.uint16)
            for new_i, old_i in enumerate(perm):
                inv[old_i] = new_i
            self.files = [self.files[i] for i in perm]
            v = self.rows.view()
            v["file"][:] = inv[v["file"]]
        self._rebuild_keys()
        self._durable_upto = self.rows.n   # rows are appended in order; these are on disk already
        for p in self.problems:
            log.warning(p)
        if self.writable:
            if self._index_dirty or saved is None:
                self.save_index()
            self._write_metadata()   # cheap, and a crash may have come between index and metadata

    def _index_file(self, name: str) -> None:
        path = self.dir / name
        fidx = len(self.files)
        fe = FileEntry(name)
        self.files.append(fe)
        first_row = self.rows.n

        def on_chunk(info: mf.ChunkInfo, records: bytes) -> None:
            self._add_chunk_rows(fidx, info, records)

        if mf.cut_before_header(path):   # its writer was killed right after creating it
            self.files.pop()
            if self.writable:
                path.unlink()
                self.problems.append(f"{path}: cut before its MCAP header was written (it held nothing); removed")
            else:
                self.problems.append(f"{path}: cut before its MCAP header was written (it holds nothing); skipped")
            return
        try:
            res = mf.scan(path, on_chunk=on_chunk)
        except mf.McapError as exc:
            self.problems.append(f"{exc}; file skipped")
            self.files.pop()
            return
        self.problems.extend(f"{m}; chunk skipped" for m in res.bad_chunks)
        if not res.complete:
            if self.writable:
                self.problems.append(f"{path}: not closed by its writer ({res.problem}); recovered "
                                     f"{sum(len(c.messages) for c in res.chunks)} messages up to byte {res.valid_end}")
                self.problems.extend(mf.finalize_truncated(path, res).bad_chunks)
                res.complete = True
            else:
                self.problems.append(f"{path}: not closed by its writer ({res.problem}); reading what is complete")
        elif bad_index := mf.check_index(path):
            if self.writable:   # e.g. repaired by a release whose repair left the chunk indexes empty
                mf.rewrite_summary(path)
                self.problems.append(f"{path}: chunk indexes were incomplete (indexed readers missed its messages); "
                                     f"rewrote them")
            else:
                self.problems.extend(bad_index)
        st = path.stat()
        fe.size, fe.mtime_ns, fe.complete = st.st_size, st.st_mtime_ns, res.complete
        fe.stats_from_rows(self.rows.view()["log_time"][first_row:])

    def _add_chunk_rows(self, fidx: int, info: mf.ChunkInfo, records: bytes) -> None:
        compressed = info.compression != ""
        mv = memoryview(records)
        for m in info.messages:
            payload = mv[m.data_offset:m.data_offset + m.length]
            try:
                robot, emb, episode, step, term, trunc = transition_key(payload)
            except DecodeError as exc:
                self.problems.append(f"{self.dir / self.files[fidx].name}: message at chunk {info.start} "
                                     f"is not a Transition ({exc}); skipped")
                continue
            offset = m.data_offset if compressed else info.records_start + m.data_offset
            self.rows.append(file=fidx, offset=offset, length=m.length, chunk=info.start, log_time=m.log_time,
                             robot=self._intern(robot, self.robots, self._robot_ids),
                             embodiment=self._intern(emb, self.embodiments, self._emb_ids),
                             episode=episode, step=step,
                             flags=(FLAG_TERMINATED * term) | (FLAG_TRUNCATED * trunc) | (FLAG_COMPRESSED * compressed))

    @staticmethod
    def _intern(value: str, table: list[str], ids: dict[str, int]) -> int:
        i = ids.get(value)
        if i is None:
            i = ids[value] = len(table)
            table.append(value)
        return i

    def _rebuild_keys(self) -> None:
        v = self.rows.view()
        self.keys = {}
        dupes = 0
        for i, k in enumerate(zip(v["robot"].tolist(), v["episode"].tolist(), v["step"].tolist())):
            if k in self.keys:
                dupes += 1
            self.keys[k] = i
        if dupes:
            log.info(f"{self.dir}: {dupes} duplicate transitions on disk (resent after a crash); newest kept")

    # -- index persistence ----------------------------------------------------------------------------
    def _load_index(self):
        path = self.dir / INDEX_NAME
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                data = {k: z[f"col_{k}"].astype(dt) for k, dt in ROW_FIELDS.items()}
            return meta, data
        except Exception as exc:  # noqa: BLE001 - any damage means: rebuild from the MCAP files
            self.problems.append(f"{path}: unreadable index ({exc}); rebuilding it from the MCAP files")
            return None

    def save_index(self) -> None:
        with self.lock:
            files = [dataclasses.asdict(f) for f in self.files if f.complete]
            complete = [i for i, f in enumerate(self.files) if f.complete]
            v = self.rows.view()
            mask = np.isin(v["file"], complete)
            remap = np.zeros(max(len(self.files), 1), np.uint16)
            for new_i, old_i in enumerate(complete):
                remap[old_i] = new_i
            cols = {k: a[mask] for k, a in v.items()}
            cols["file"] = remap[cols["file"]] if len(cols["file"]) else cols["file"]
            meta = {"version": INDEX_VERSION, "files": files, "robots": self.robots, "embodiments": self.embodiments}
        tmp = self.dir / f".{INDEX_NAME}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                     **{f"col_{k}": a for k, a in cols.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / INDEX_NAME)
        rosbag2.fsync_dir(self.dir)
        self._last_index_save = time.monotonic()
        self._index_dirty = False

    def _write_metadata(self) -> None:
        files, total = [], 0
        for fe in self.files:
            files.append({"path": fe.name, "start_ns": fe.start_ns, "end_ns": fe.end_ns, "message_count": fe.messages})
            total += fe.messages
        topics = {TOPIC: {"type": TYPE, "message_count": total, "qos": [rosbag2.qos_profile()]}}
        rosbag2.write_metadata(self.dir, files, topics)

    # -- writing ---------------------------------------------------------------------------------------
    def _open_file(self) -> None:
        numbers = [int(m.group(1)) for x in self.mcap_files() if (m := re.search(r"_(\d+)\.mcap$", x))]
        name = f"{self.name}_{1 + max(numbers, default=-1)}.mcap"
        self._wfile = open(self.dir / name, "wb")
        self._wfile_idx = len(self.files)
        self.files.append(FileEntry(name))
        self._writer = mf.McapWriter(self._wfile, chunk_bytes=self.opts.chunk_bytes,
                                     compression=self.opts.chunk_compression, on_chunk=self._on_chunk,
                                     library="user_buffer (rosbag2-compatible)")
        sid = self._writer.add_schema(TYPE, "ros2msg", rosbag2.message_definition(TYPE).encode())
        self._channel = self._writer.add_channel(TOPIC, "cdr", sid,
                                                 rosbag2.channel_metadata(TYPE, [rosbag2.qos_profile()]))
        self._wfile.flush()   # header, schema and channel on disk at once: a crash leaves a file that opens
        self._wopened = time.monotonic()
        self._write_metadata()

    def _on_chunk(self, info: mf.ChunkInfo) -> None:
        compressed = info.compression != ""
        cols = self.rows.cols
        for row, m in zip(self._pending_rows, info.messages):
            cols["offset"][row] = m.data_offset if compressed else info.records_start + m.data_offset
            cols["chunk"][row] = info.start
            cols["flags"][row] |= FLAG_COMPRESSED * compressed
            self._pending_data.pop(row, None)
        self._pending_rows = []

    def is_durable(self, robot_id: str, episode_id: int, step: int) -> bool:
        """Stored and fsynced (safe to acknowledge)."""
        with self.lock:
            r = self._robot_ids.get(robot_id)
            row = self.keys.get((r, episode_id, step)) if r is not None else None
            return row is not None and row < self._durable_upto

    def contains(self, robot_id: str, episode_id: int, step: int) -> bool:
        r = self._robot_ids.get(robot_id)
        return r is not None and (r, episode_id, step) in self.keys

    def add(self, data: bytes, log_time_ns: int | None = None) -> int:
        """Append one serialized Transition; returns its row (or -1 for a duplicate)."""
        if not self.writable:
            raise PermissionError(f"{self.dir} is open read-only")
        robot, emb, episode, step, term, trunc = transition_key(data)
        t = time.time_ns() if log_time_ns is None else log_time_ns
        with self.lock:
            rid = self._intern(robot, self.robots, self._robot_ids)
            if (rid, episode, step) in self.keys:
                return -1
            if self._writer is None:
                self._open_file()
            row = self.rows.append(file=self._wfile_idx, offset=PENDING, length=len(data), chunk=PENDING,
                                   log_time=t, robot=rid,
                                   embodiment=self._intern(emb, self.embodiments, self._emb_ids),
                                   episode=episode, step=step,
                                   flags=(FLAG_TERMINATED * term) | (FLAG_TRUNCATED * trunc))
            self.keys[(rid, episode, step)] = row
            self._pending_rows.append(row)
            self._pending_data[row] = data if isinstance(data, bytes) else bytes(data)
            self._writer.write_message(self._channel, t, data, sequence=row)
            fe = self.files[self._wfile_idx]
            fe.start_ns = t if fe.messages == 0 else min(fe.start_ns, t)
            fe.end_ns = max(fe.end_ns, t)
            fe.messages += 1
            self._unsynced += 1
            self._index_dirty = True
        return row

    def sync(self) -> int:
        """Make everything added so far durable (chunk + fsync); returns how many rows became durable.

        The fsync runs outside the store's lock, so reads and adds go on meanwhile."""
        with self._sync_lock:
            with self.lock:
                if self._writer is None or self._unsynced == 0:
                    return 0
                self._writer.flush()
                self._wfile.flush()
                fd = os.dup(self._writer.fileno())
                first, end = self.rows.n - self._unsynced, self.rows.n
                self._unsynced = 0
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            with self.lock:
                self._durable.extend(range(first, end))
                self._durable_upto = max(self._durable_upto, end)
                w = self._writer
                too_big = w.position >= self.opts.split_bytes
                too_old = self.opts.split_seconds > 0 and time.monotonic() - self._wopened >= self.opts.split_seconds
                if too_big or too_old:
                    self._close_file()
                elif time.monotonic() - self._last_index_save >= self.opts.index_every_s:
                    self.save_index()
            return end - first

    def take_durable(self) -> list[tuple[str, int, int]]:
        """(robot_id, episode_id, step) of every transition made durable since the last call."""
        with self.lock:
            rows, self._durable = self._durable, []
            v = self.rows.view()
            return [(self.robots[int(v["robot"][r])], int(v["episode"][r]), int(v["step"][r])) for r in rows]

    def _close_file(self) -> None:
        w, f = self._writer, self._wfile
        if w is None:
            return
        w.close()
        f.close()
        st = (self.dir / self.files[self._wfile_idx].name).stat()
        fe = self.files[self._wfile_idx]
        fe.size, fe.mtime_ns, fe.complete = st.st_size, st.st_mtime_ns, True
        self._durable.extend(range(self.rows.n - self._unsynced, self.rows.n))
        self._durable_upto = self.rows.n
        self._unsynced = 0
        self._writer, self._wfile = None, None
        self.save_index()
        self._write_metadata()

    def close(self) -> None:
        """Finish the open file (summary + footer), save the index and metadata, release the lock.

        Stop readers first: a ``read`` running concurrently with ``close`` may fail."""
        with self._sync_lock, self.lock:
            if self.writable:
                self._close_file()
                if self._index_dirty:
                    self.save_index()
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- reading ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.rows.n

    def snapshot(self) -> dict[str, np.ndarray]:
        """The index columns up to now, as views. robot, embodiment, episode, step, log_time and
        length never change; offset and chunk of rows still in the open chunk are filled in when it
        is written."""
        with self.lock:
            return self.rows.view()

    def _fd(self, fidx: int) -> int:
        fd = self._fds.get(fidx)
        if fd is None:
            fd = self._fds[fidx] = os.open(self.dir / self.files[fidx].name, os.O_RDONLY)
        return fd

    def read(self, row: int) -> bytes:
        """The serialized Transition of one row (from the open chunk, or one pread from disk)."""
        with self.lock:
            data = self._pending_data.get(row)
            if data is not None:
                return data
            c = self.rows.cols
            fidx, off, n, flags = int(c["file"][row]), int(c["offset"][row]), int(c["length"][row]), int(c["flags"][row])
            chunk = int(c["chunk"][row])
            fd = self._fd(fidx)
        if flags & FLAG_COMPRESSED:
            records = self._chunk_records(fidx, fd, chunk)
            return bytes(records[off:off + n])
        data = os.pread(fd, n, off)
        if len(data) != n:
            raise OSError(f"{self.dir / self.files[fidx].name}: short read at {off}")
        return data

    def _chunk_records(self, fidx: int, fd: int, start: int) -> bytes | memoryview:
        key = (fidx, start)
        with self.lock:
            hit = self._chunk_cache.get(key)
            if hit is not None:
                self._chunk_cache.move_to_end(key)
                return hit
        records = mf.read_chunk_records(fd, start)   # outside the lock: other reads go on meanwhile
        with self.lock:
            self._chunk_cache[key] = records
            while len(self._chunk_cache) > self.opts.chunk_cache:
                self._chunk_cache.popitem(last=False)
        return records

    def episodes(self) -> list[dict]:
        """One entry per (robot, episode): steps, whether it ended, and where its first step lies."""
        with self.lock:
            v = self.rows.view()
            newest = np.fromiter(self.keys.values(), np.int64, len(self.keys))   # one row per step
        if not len(newest):
            return []
        order = newest[np.lexsort((v["step"][newest], v["episode"][newest], v["robot"][newest]))]
        r, e = v["robot"][order], v["episode"][order]
        starts = np.flatnonzero(np.r_[True, (r[1:] != r[:-1]) | (e[1:] != e[:-1])])
        ends = np.r_[starts[1:], len(order)]
        out = []
        for s, t in zip(starts, ends):
            rows = order[s:t]
            first = int(rows[0])
            out.append({
                "robot_id": self.robots[int(v["robot"][first])],
                "embodiment": self.embodiments[int(v["embodiment"][first])],
                "episode_id": int(v["episode"][first]), "steps": int(t - s),
                "ended": bool(np.any(v["flags"][rows] & (FLAG_TERMINATED | FLAG_TRUNCATED))),
                "file": self.files[int(v["file"][first])].name, "chunk": int(v["chunk"][first]),
                "offset": int(v["offset"][first]), "rows": rows,
                "start_ns": int(v["log_time"][rows].min()), "end_ns": int(v["log_time"][rows].max()),
            })
        return out

    def verify(self) -> list[str]:
        """Re-check every chunk's CRC and every chunk index (a scrub); one line per damaged chunk or
        incomplete index, naming the file."""
        bad = []
        for fe in list(self.files):
            if self._writer is not None and fe is self.files[self._wfile_idx]:
                continue
            try:
                res = mf.scan(self.dir / fe.name)
            except mf.McapError as exc:
                bad.append(str(exc))
                continue
            bad.extend(res.bad_chunks)
            if res.complete:
                bad.extend(mf.check_index(self.dir / fe.name))
        return bad
