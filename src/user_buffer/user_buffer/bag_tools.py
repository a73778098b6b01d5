"""Offline tools for a transition bag: a summary (``info``), ROS replay (``replay``), file export and
``repair``.

All but ``repair`` open the bag read-only (``TransitionStore(dir, writable=False)``: no lock, no index
or metadata written), so they are safe on a copy, on a bag another process is still writing and on a
damaged bag (what the store could not read is listed in ``problems``). ``repair`` opens it for
writing, which is what fixes a bag (the learner and the buffer node do the same when they start).

Bad input (a missing bag, an unknown robot or episode, an unusable output folder...) raises
:class:`BagToolError` with one line naming what was wrong; ``userctl bag`` reports it with exit
code 2. Damage found while reading (``DecodeError``, ``OSError``) propagates as is.

Steps of an episode are taken in step order; a step stored twice (resent after a crash) counts
once, the newest copy wins, as in the store's own key table.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import signal
import struct
import threading
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import mcap_format as mf
from .codec import TransitionView, decode_transition
from .store import FLAG_TERMINATED, FLAG_TRUNCATED, BagLocked, TransitionStore

__all__ = ["BagToolError", "EpisodeInfo", "open_bag", "repair_bag", "list_episodes", "find_episode", "bag_summary",
           "format_info", "export_episode", "write_png", "replay_episode", "delay_ns", "prefixed_topics"]

Printer = Callable[[str], None]


class BagToolError(ValueError):
    """Bad input to a bag tool (one line, naming what was wrong)."""


# -- opening and episodes -------------------------------------------------------------------------------
def _bag_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise BagToolError(f"no bag directory {p}")
    if not p.is_dir():
        raise BagToolError(f"{p} is a file; pass the bag directory (the folder holding metadata.yaml)")
    if not any(p.glob("*.mcap")) and not (p / "metadata.yaml").exists():
        raise BagToolError(f"{p} is not a transition bag (no metadata.yaml and no .mcap files)")
    return p


def open_bag(path: str | os.PathLike) -> TransitionStore:
    """Open the bag directory ``path`` read-only; :class:`BagToolError` if it is not a transition bag."""
    return TransitionStore(_bag_dir(path), writable=False)


def repair_bag(path: str | os.PathLike) -> tuple[list[str], int]:
    """Open the bag for writing and close it again: files cut by a crash are closed, incomplete chunk
    indexes rewritten, the index and ``metadata.yaml`` rebuilt. Returns what was found (one line per
    repair or damage) and the number of transitions; :class:`BagToolError` while another process
    writes the bag."""
    try:
        store = TransitionStore(_bag_dir(path))
    except BagLocked as exc:
        raise BagToolError(f"{exc} (stop it first)") from None
    try:
        return list(store.problems), len(store)
    finally:
        store.close()


@dataclass
class EpisodeInfo:
    """One (robot, episode) of a bag, its rows deduplicated and in step order."""

    robot_id: str
    embodiment: str
    episode_id: int
    rows: np.ndarray                 # index rows, one per step, in step order
    steps: np.ndarray                # their step numbers
    log_times: np.ndarray            # their log times (ns)
    end: str                         # "terminated", "truncated" or "" (not ended in the bag)
    file: str                        # file holding its first step
    duplicates: int = 0              # extra stored copies of its steps
    start_ns: int = 0
    end_ns: int = 0
    success: bool | None = None      # filled by bag_summary
    ret: float | None = None         # filled by bag_summary(per_step=True)

    @property
    def n(self) -> int:
        return int(len(self.rows))

    @property
    def missing(self) -> int:
        """Steps absent between step 0 and the last stored step (lost or skipped as damaged)."""
        return int(self.steps[-1]) + 1 - self.n if self.n else 0


def list_episodes(store: TransitionStore) -> list[EpisodeInfo]:
    """The bag's episodes in ``store.episodes()`` order (robot, then episode id)."""
    snap = store.snapshot()
    pairs = np.stack([snap["robot"].astype(np.uint64), snap["episode"]], axis=1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True) if len(pairs) else (pairs, np.zeros(0, int))
    stored = {(int(r), int(e)): int(c) for (r, e), c in zip(uniq, counts)}   # every copy on disk
    robot_index = {r: i for i, r in enumerate(store.robots)}
    out = []
    for ep in store.episodes():   # one (newest) row per step
        rows = np.asarray(ep["rows"])
        steps = snap["step"][rows]
        keep = np.r_[steps[1:] != steps[:-1], True]      # rows of one step are in row order: keep the newest
        rows, steps = rows[keep], steps[keep]
        flags = snap["flags"][rows]
        last = int(flags[-1])
        end = ("terminated" if last & FLAG_TERMINATED else "truncated" if last & FLAG_TRUNCATED
               else "terminated" if np.any(flags & FLAG_TERMINATED) else
               "truncated" if np.any(flags & FLAG_TRUNCATED) else "")
        log_times = snap["log_time"][rows]
        out.append(EpisodeInfo(ep["robot_id"], ep["embodiment"], int(ep["episode_id"]), rows, steps, log_times,
                               end, store.files[int(snap["file"][rows[0]])].name,
                               stored.get((robot_index[ep["robot_id"]], int(ep["episode_id"])), len(rows)) - len(rows),
                               int(log_times.min()), int(log_times.max())))
    return out


def _ids(values: Sequence[int], limit: int = 12) -> str:
    """``0-4, 7, 9-12`` for a sorted list of ints, shortened past ``limit`` runs."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    more = len(text) - limit
    return ", ".join(text[:limit]) + (f" ... ({more} more runs)" if more > 0 else "")


def find_episode(store: TransitionStore, episode_id: int | None = None, robot: str | None = None) -> EpisodeInfo:
    """The episode ``episode_id`` (of ``robot``); without an id the first one (of ``robot``).

    Raises :class:`BagToolError` listing what exists when the robot or episode is unknown, or when
    the id exists for several robots and none was given.
    """
    eps = list_episodes(store)
    if not eps:
        raise BagToolError(f"bag {store.dir} has no episodes")
    robots = sorted({e.robot_id for e in eps})
    if robot is not None:
        if robot not in robots:
            raise BagToolError(f"no robot {robot!r} in bag {store.dir}; robots: {', '.join(robots)}")
        eps = [e for e in eps if e.robot_id == robot]
    if episode_id is None:
        return eps[0]
    hits = [e for e in eps if e.episode_id == episode_id]
    if not hits:
        by_robot = {}
        for e in eps:
            by_robot.setdefault(e.robot_id, []).append(e.episode_id)
        listing = "; ".join(f"{r}: {_ids(sorted(ids))}" for r, ids in by_robot.items())
        where = f"for robot {robot} " if robot is not None else ""
        raise BagToolError(f"no episode {episode_id} {where}in bag {store.dir}; episodes: {listing}")
    if len(hits) > 1:
        raise BagToolError(f"episode {episode_id} exists for robots {', '.join(e.robot_id for e in hits)}; "
                           f"choose one with --robot")
    return hits[0]


def _transitions(store: TransitionStore, rows: np.ndarray) -> Iterator[TransitionView]:
    for row in rows.tolist():
        yield decode_transition(store.read(row))


# -- info ---------------------------------------------------------------------------------------------
def bag_summary(store: TransitionStore, per_step: bool = False) -> dict:
    """What ``userctl bag info`` shows, as a dict.

    Success: an episode succeeded if any of its steps has ``success``. Without ``per_step`` only
    each episode's last transition is decoded (success is set at the final step); with it every
    transition is decoded, giving each episode's exact success and its return (sum of rewards).
    """
    eps = list_episodes(store)
    for e in eps:
        if per_step:
            ret, ok = 0.0, False
            for t in _transitions(store, e.rows):
                ret += float(t.reward)
                ok = ok or t.success
            e.ret, e.success = ret, ok
        else:
            e.success = decode_transition(store.read(int(e.rows[-1]))).success
    robots: dict[str, dict] = {}
    embodiments: dict[str, dict] = {}
    for e in eps:
        for table, key in ((robots, e.robot_id), (embodiments, e.embodiment)):
            d = table.setdefault(key, {"transitions": 0, "episodes": 0, "ended": 0, "successes": 0, "other": set()})
            d["transitions"] += e.n
            d["episodes"] += 1
            d["ended"] += bool(e.end)
            d["successes"] += bool(e.success)
        robots[e.robot_id]["other"].add(e.embodiment)
        embodiments[e.embodiment]["other"].add(e.robot_id)
    problems = list(store.problems)
    compression: dict[str, str] = {}
    for f in store.files:
        path = store.dir / f.name
        compression[f.name] = _chunk_compression(path)
        if f.complete:   # files trusted from the index were not re-read when the store opened
            problems += [p for p in mf.check_index(path) if p not in problems]
    with_msgs = [f for f in store.files if f.messages]
    start = min((f.start_ns for f in with_msgs), default=0)
    end = max((f.end_ns for f in with_msgs), default=0)
    return {
        "dir": str(store.dir), "files": list(store.files), "transitions": sum(e.n for e in eps),
        "duplicates": sum(e.duplicates for e in eps), "start_ns": start, "end_ns": end,
        "episodes": eps, "robots": robots, "embodiments": embodiments,
        "successes": sum(bool(e.success) for e in eps), "per_step": per_step,
        "problems": problems, "compression": compression,
    }


def _chunk_compression(path: Path) -> str:
    """How a file's chunks are stored ("zstd", "none", "zstd+none"...), read from its summary or first chunk."""
    try:
        with open(path, "rb") as f:
            summary = mf.read_summary(f, os.fstat(f.fileno()).st_size)
            if summary is not None:
                kinds = sorted({ci.compression or "none" for ci in summary.chunk_indexes})
                return "+".join(kinds) or "-"
    except (OSError, mf.McapError, UnicodeDecodeError):
        pass
    return "-"   # no summary yet (being written, or cut short)


def _table(header: Sequence[str], rows: list[Sequence[str]], right: set[int], indent: str = "  ") -> list[str]:
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header)] + [line(r) for r in rows]


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def format_info(s: dict, episodes: bool = False) -> str:
    """The text of ``userctl bag info`` for a :func:`bag_summary` result."""
    out = [f"bag: {s['dir']}"]
    files = s["files"]
    out.append(f"files ({len(files)}):")
    if files:
        comp = s.get("compression", {})
        out += _table(("NAME", "SIZE MB", "MESSAGES", "KB/MESSAGE", "CHUNKS", "COMPLETE"),
                      [(f.name, f"{f.size / 1e6:.2f}", str(f.messages),
                        f"{f.size / 1e3 / f.messages:.1f}" if f.messages else "-", comp.get(f.name, "?"),
                        "yes" if f.complete else "no (being written, or cut short)") for f in files], {1, 2, 3})
    else:
        out.append("  (none)")
    eps: list[EpisodeInfo] = s["episodes"]
    n_eps, ended = len(eps), sum(bool(e.end) for e in eps)
    dup = f" (+{s['duplicates']} duplicate copies, ignored)" if s["duplicates"] else ""
    out.append(f"transitions: {s['transitions']}{dup} in {n_eps} episode{'s' * (n_eps != 1)} ({ended} ended)")
    if s["transitions"]:
        span = (s["end_ns"] - s["start_ns"]) / 1e9
        out.append(f"duration: {_duration(span)} ({_when(s['start_ns'])} .. {_when(s['end_ns'])}, log time)")
    else:
        out.append("duration: -")
    how = "any step" if s["per_step"] else "last step"
    out.append(f"success: {s['successes']} of {n_eps} episode{'s' * (n_eps != 1)} (success flag on {how})")
    if s["robots"]:
        out.append(f"robots ({len(s['robots'])}):")
        out += _table(("ROBOT", "EMBODIMENT", "TRANSITIONS", "EPISODES", "ENDED", "SUCCESSES"),
                      [(r, ", ".join(sorted(d["other"])), str(d["transitions"]), str(d["episodes"]), str(d["ended"]),
                        str(d["successes"])) for r, d in sorted(s["robots"].items())], {2, 3, 4, 5})
        out.append(f"embodiments ({len(s['embodiments'])}):")
        out += _table(("EMBODIMENT", "ROBOTS", "TRANSITIONS", "EPISODES", "ENDED", "SUCCESSES"),
                      [(k, str(len(d["other"])), str(d["transitions"]), str(d["episodes"]), str(d["ended"]),
                        str(d["successes"])) for k, d in sorted(s["embodiments"].items())], {1, 2, 3, 4, 5})
    if episodes:
        out.append(f"episodes ({n_eps}):")
        rows = []
        for e in eps:
            steps = str(e.n) + (f" ({e.missing} missing)" if e.missing else "")
            ret = "-" if e.ret is None else f"{e.ret:.3f}"
            rows.append((e.robot_id, str(e.episode_id), steps, e.end or "no", ret,
                         "yes" if e.success else "no", e.file))
        out += _table(("ROBOT", "EPISODE", "STEPS", "ENDED", "RETURN", "SUCCESS", "FILE"), rows, {1, 2, 4})
    problems = s["problems"]
    if problems:
        out.append(f"problems ({len(problems)}):")
        out += [f"  {p}" for p in problems]
    else:
        out.append("problems: none")
    return "\n".join(out)


# -- export -------------------------------------------------------------------------------------------
def write_png(path: str | os.PathLike, img: np.ndarray, level: int = 6) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB image as an 8-bit RGB PNG (lossless; "Sub" row filter)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    raw = np.ascontiguousarray(img).reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), np.uint8)
    filtered[:, 0] = 1                                    # filter type 1 (Sub): byte minus the byte 3 left
    filtered[:, 1:4] = raw[:, :3]
    np.subtract(raw[:, 3:], raw[:, :-3], out=filtered[:, 4:])   # uint8 arithmetic wraps mod 256, as PNG wants

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)   # 8 bits, colour type 2 (RGB), no interlace
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(filtered.tobytes(), level))
           + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def _check_out_dir(out: Path, bag: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BagToolError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise BagToolError(f"--out {out} exists and is not empty; choose a new folder")
    o, b = out.resolve(), bag.resolve()
    if o == b or b in o.parents:
        raise BagToolError(f"--out {out} is inside the bag directory {bag}; the bag is never modified")


def _camera_dir(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise BagToolError(f"camera name {name!r} cannot be used as a folder name")
    return name


@dataclass
class _Columns:
    step: list = field(default_factory=list)
    action: list = field(default_factory=list)
    reward: list = field(default_factory=list)
    success: list = field(default_factory=list)
    terminated: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    intervened: list = field(default_factory=list)
    action_source: list = field(default_factory=list)
    policy_version: list = field(default_factory=list)
    proprio: list = field(default_factory=list)
    next_proprio: list = field(default_factory=list)


def _npy_entry(zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype):
    """Open ``name.npy`` in ``zf`` for writing and write its .npy header; the caller writes the data."""
    f = zf.open(f"{name}.npy", "w", force_zip64=True)
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape})
    return f


def _stack(values: list, name: str, dtype) -> np.ndarray:
    sizes = {len(v) for v in values}
    if len(sizes) > 1:
        raise BagToolError(f"{name} changes size within the episode ({sorted(sizes)}); use --format csv")
    return np.asarray(values, dtype=dtype).reshape(len(values), sizes.pop() if sizes else 0)


def export_episode(store: TransitionStore, ep: EpisodeInfo, out_dir: str | os.PathLike, fmt: str = "csv",
                   progress: Printer | None = None) -> dict:
    """Write ``out_dir/<camera>/<step:05d>.png`` for every obs image and ``steps.csv`` or ``episode.npz``.

    The PNGs and the npz images hold exactly the stored pixels. Returns what was written.
    """
    if fmt not in ("csv", "npz"):
        raise BagToolError(f"unknown --format {fmt!r} (csv or npz)")
    out = Path(out_dir)
    _check_out_dir(out, store.dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = _Columns()
    shapes: dict[str, dict[int, tuple]] = {}              # camera -> {step: shape}
    pngs = 0
    t0 = time.monotonic()
    for i, t in enumerate(_transitions(store, ep.rows)):
        for name, img in zip(t.obs.camera_names, t.obs.images):
            d = out / _camera_dir(name)
            if name not in shapes:
                d.mkdir(exist_ok=True)
                shapes[name] = {}
            write_png(d / f"{t.step:05d}.png", img)
            shapes[name][t.step] = img.shape
            pngs += 1
        cols.step.append(t.step)
        cols.action.append(np.array(t.action))
        cols.reward.append(t.reward)
        cols.success.append(t.success)
        cols.terminated.append(t.terminated)
        cols.truncated.append(t.truncated)
        cols.intervened.append(t.intervened)
        cols.action_source.append(t.action_source)
        cols.policy_version.append(t.policy_version)
        cols.proprio.append(np.array(t.obs.proprio))
        cols.next_proprio.append(np.array(t.next_obs.proprio))
        if progress and time.monotonic() - t0 > 2.0:
            progress(f"  {i + 1}/{ep.n} steps")
            t0 = time.monotonic()
    written = {"dir": str(out), "steps": ep.n, "cameras": {k: len(v) for k, v in shapes.items()}, "pngs": pngs}
    if fmt == "csv":
        path = out / "steps.csv"
        n_act = max((len(a) for a in cols.action), default=0)
        n_pro = max((len(p) for p in cols.proprio), default=0)
        header = (["step"] + [f"action_{j}" for j in range(n_act)]
                  + ["reward", "success", "terminated", "truncated", "intervened", "action_source", "policy_version"]
                  + [f"proprio_{j}" for j in range(n_pro)])

        def floats(a: np.ndarray, n: int) -> list[str]:
            return [str(v) for v in a] + [""] * (n - len(a))     # str() of a float32: shortest exact text

        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for k in range(ep.n):
                w.writerow([cols.step[k], *floats(cols.action[k], n_act), str(np.float32(cols.reward[k])),
                            int(cols.success[k]), int(cols.terminated[k]), int(cols.truncated[k]),
                            int(cols.intervened[k]), cols.action_source[k], cols.policy_version[k],
                            *floats(cols.proprio[k], n_pro)])
    else:
        path = out / "episode.npz"
        steps = cols.step
        for name, by_step in shapes.items():
            if len(by_step) != ep.n or len(set(by_step.values())) != 1:
                raise BagToolError(f"camera {name!r} is missing at some steps or changes size within the episode; "
                                   f"npz needs one [T,H,W,3] array per camera (use --format csv)")
        arrays = {
            "step": np.asarray(steps, np.uint32),
            "proprio": _stack(cols.proprio, "proprio", np.float32),
            "next_proprio": _stack(cols.next_proprio, "next_proprio", np.float32),
            "action": _stack(cols.action, "action", np.float32),
            "reward": np.asarray(cols.reward, np.float32),
            "success": np.asarray(cols.success, bool),
            "terminated": np.asarray(cols.terminated, bool),
            "truncated": np.asarray(cols.truncated, bool),
            "intervened": np.asarray(cols.intervened, bool),
            "action_source": np.asarray(cols.action_source, np.uint8),
            "policy_version": np.asarray(cols.policy_version, np.uint64),
        }
        tmp = out / ".episode.npz.tmp"
        # Written like np.savez (uncompressed zip of .npy files), images streamed one camera at a time
        # so a long episode never has to fit in memory.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, a, allow_pickle=False)
            for cam, by_step in shapes.items():
                shape = next(iter(by_step.values()))
                with _npy_entry(zf, f"images_{cam}", (ep.n, *shape), np.uint8) as f:
                    for t in _transitions(store, ep.rows):
                        f.write(np.ascontiguousarray(t.obs.images[t.obs.camera_names.index(cam)]).tobytes())
        os.replace(tmp, path)
    written["file"] = str(path)
    return written


# -- replay -------------------------------------------------------------------------------------------
def delay_ns(prev_stamp: int, stamp: int, prev_log: int | None, log: int | None, fallback: int = 0) -> int:
    """Time between two consecutive observations: from their header stamps when both are set and in
    order, else from their log times (when given and in order), else ``fallback``."""
    if prev_stamp > 0 and stamp >= prev_stamp:
        return stamp - prev_stamp
    if prev_log is not None and log is not None and log >= prev_log:
        return log - prev_log
    return fallback


def prefixed_topics(prefix: str, robot_id: str, cameras: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The observation topic and camera topics (by camera) a replay publishes on; validates the names."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_full_topic_name import validate_full_topic_name
    from user_common.topics import camera_topic, robot_topic

    obs = prefix + robot_topic(robot_id, "observation")
    cams = {c: prefix + camera_topic(robot_id, c) for c in cameras}
    for name in (obs, *cams.values()):
        try:
            validate_full_topic_name(name)
        except InvalidTopicNameException as exc:
            what = "--prefix" if prefix else "topic"
            raise BagToolError(f"{what}: {name!r} is not a valid topic name "
                               f"({str(exc).splitlines()[0]})") from None
    return obs, cams


def normalize_prefix(prefix: str) -> str:
    """``replay/`` -> ``/replay``; ``""`` and ``/`` mean the live topic names."""
    prefix = prefix.strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return prefix


class _ReplayPublisher:
    """A short-lived rclpy node publishing one robot's observations and camera images."""

    def __init__(self, prefix: str, robot_id: str, cameras: Sequence[str]) -> None:
        import rclpy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from user_common import qos
        from user_msgs.msg import Observation

        self._image_type, self._qos = Image, qos
        self.prefix, self.robot_id = prefix, robot_id
        obs_topic, cams = prefixed_topics(prefix, robot_id, cameras)
        self.context = rclpy.Context()
        # Keep Python's own Ctrl-C handling (KeyboardInterrupt) so a replay stops between messages.
        rclpy.init(args=[], context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"userctl_bag_replay_{os.getpid()}", context=self.context)
        self.obs_topic = obs_topic
        self.pub_obs = self.node.create_publisher(Observation, obs_topic, qos.CONTROL)
        self.pub_cams = {c: self.node.create_publisher(Image, t, qos.SENSOR) for c, t in cams.items()}

    def camera_topics(self) -> dict[str, str]:
        return {c: p.topic_name for c, p in self.pub_cams.items()}

    def wait_for_subscribers(self, timeout: float, stop: threading.Event) -> int:
        """Wait (up to ``timeout`` s, or until ``stop`` is set) until every topic has a subscriber, so the
        first messages are not published into the void; returns how many topics have one."""
        pubs = [self.pub_obs, *self.pub_cams.values()]
        end = time.monotonic() + timeout
        while True:
            matched = sum(p.get_subscription_count() > 0 for p in pubs)
            if matched == len(pubs) or time.monotonic() >= end or stop.wait(0.05):
                break
        if matched:
            stop.wait(0.3)     # discovery is two-sided: give the subscribers time to match us too
        return matched

    def publish(self, obs) -> int:
        """Publish one ``user_msgs/Observation`` and each of its images; returns the image count."""
        self.pub_obs.publish(obs)
        for name, img in zip(obs.camera_names, obs.images):
            pub = self.pub_cams.get(name)
            if pub is None:                                   # a camera that appears mid-episode
                _, topics = prefixed_topics(self.prefix, self.robot_id, [name])
                pub = self.pub_cams[name] = self.node.create_publisher(self._image_type, topics[name],
                                                                       self._qos.SENSOR)
            pub.publish(img)
        return len(obs.images)

    def flush(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` s in all) until subscribers acknowledged everything published, so
        the last messages are not lost when the process exits right after them."""
        from rclpy.duration import Duration

        end = time.monotonic() + timeout
        ok = True
        for p in [self.pub_obs, *self.pub_cams.values()]:
            left = max(0.0, end - time.monotonic())
            ok = p.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))) and ok
        return ok

    def close(self) -> None:
        self.node.destroy_node()
        self.context.try_shutdown()


def replay_episode(store: TransitionStore, ep: EpisodeInfo, rate: float = 1.0, prefix: str = "/replay",
                   loop: bool = False, out: Printer = print, wait_s: float = 5.0) -> dict:
    """Publish ``ep``'s observations (and their images) at the recorded pace scaled by ``rate``.

    Each step's ``obs`` goes to ``<prefix>/<robot>/observation`` and its images to
    ``<prefix>/<robot>/camera/<cam>/color/image_raw``; the last step's ``next_obs`` ends the episode.
    Stops at the end (or, with ``loop``, on Ctrl-C, which also ends a non-looping replay early,
    between two messages). Before the first message it waits up to ``wait_s`` for every topic to
    have a subscriber (DDS discovery on localhost can take a few seconds), so nothing is published
    into the void. Returns counts of what was published.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise BagToolError(f"--rate must be a positive number, got {rate}")
    prefix = normalize_prefix(prefix)
    first = decode_transition(store.read(int(ep.rows[0])))
    prefixed_topics(prefix, ep.robot_id, first.obs.camera_names)     # bad names fail before any ROS setup
    sent = {"observations": 0, "images": 0, "loops": 0, "stopped": False}
    with _ctrl_c_sets() as stop:
        pub = _ReplayPublisher(prefix, ep.robot_id, first.obs.camera_names)
        try:
            _replay_laps(store, ep, pub, rate, loop, out, wait_s, stop, sent)
        except KeyboardInterrupt:   # Ctrl-C outside the main thread's handler (replay called as a library)
            stop.set()
        finally:
            pub.close()
    if stop.is_set():
        sent["stopped"] = True
        out(f"  stopped after {sent['observations']} observations")
    return sent


@contextmanager
def _ctrl_c_sets() -> Iterator[threading.Event]:
    """An event that SIGINT sets (instead of raising KeyboardInterrupt) while the block runs.

    A KeyboardInterrupt raised inside rclpy's C calls (deserialising, publishing) comes out as an
    unrelated TypeError; with a flag the replay loop stops cleanly between messages instead. Outside
    the main thread no handler can be installed and Python's own KeyboardInterrupt applies.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _replay_laps(store: TransitionStore, ep: EpisodeInfo, pub: _ReplayPublisher, rate: float, loop: bool,
                 out: Printer, wait_s: float, stop: threading.Event, sent: dict) -> None:
    """The replay itself (see ``replay_episode``); returns early, between two messages, once ``stop`` is set."""
    from rclpy.serialization import deserialize_message
    from user_msgs.msg import Transition

    total = ep.n + 1
    cams = ", ".join(f"{c} -> {t}" for c, t in pub.camera_topics().items()) or "none"
    out(f"replaying {ep.robot_id} episode {ep.episode_id} ({ep.n} steps + final next_obs) at {rate:g}x: "
        f"observations -> {pub.obs_topic}; cameras: {cams}")
    matched = pub.wait_for_subscribers(wait_s, stop)
    if matched < 1 + len(pub.pub_cams):
        out(f"  ({matched} of {1 + len(pub.pub_cams)} topics have a subscriber after {wait_s:g} s; "
            f"publishing anyway)")
    while not stop.is_set():
        sent["loops"] += 1
        started = last_print = target = time.monotonic()
        delays: list[int] = []
        prev_stamp = prev_log = None
        for i, row in enumerate(ep.rows.tolist()):
            msg = deserialize_message(store.read(row), Transition)
            stamp, log_t = _stamp_ns(msg.obs), int(ep.log_times[i])
            if prev_stamp is not None:
                delays.append(delay_ns(prev_stamp, stamp, prev_log, log_t))
                target += delays[-1] / 1e9 / rate
                if delays[-1] / 1e9 / rate > 5.0:
                    out(f"  waiting {delays[-1] / 1e9 / rate:.1f} s (a pause in the recording before step "
                        f"{msg.step})")
            prev_stamp, prev_log = stamp, log_t
            target = _sleep_until(target, stop)
            if stop.is_set():
                return
            sent["images"] += pub.publish(msg.obs)
            sent["observations"] += 1
            now = time.monotonic()
            if now - last_print >= 1.0:
                out(f"  step {msg.step} ({i + 1}/{total}) {now - started:.1f} s")
                last_print = now
        # The episode's last next_obs; no log time of its own: the typical step period if its stamp is unset.
        typical = int(np.median(delays)) if delays else 0
        _sleep_until(target + delay_ns(prev_stamp, _stamp_ns(msg.next_obs), None, None, typical) / 1e9 / rate, stop)
        if stop.is_set():
            return
        sent["images"] += pub.publish(msg.next_obs)
        sent["observations"] += 1
        if not loop:
            pub.flush(2.0)
        lap = f" (loop {sent['loops']})" if loop else ""
        out(f"  done{lap}: {total} observations in {time.monotonic() - started:.1f} s")
        if not loop:
            return
        _sleep_until(time.monotonic() + typical / 1e9 / rate, stop)     # one step period between laps


def _stamp_ns(obs) -> int:
    return obs.header.stamp.sec * 1_000_000_000 + obs.header.stamp.nanosec


def _sleep_until(target: float, stop: threading.Event) -> float:
    """Sleep until ``target`` (monotonic) or until ``stop`` is set; returns the schedule point to continue
    from (re-anchored when more than 0.25 s late, so a slow stretch is not followed by a burst)."""
    now = time.monotonic()
    if target > now:
        stop.wait(target - now)
        return target
    return now if now - target > 0.25 else target
