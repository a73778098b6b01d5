"""Hold sent transitions until a consumer acknowledges them; resend what was not acknowledged.

DDS "reliable" only covers readers that exist: a learner that is down (or restarting after
``kill -9``), or one across a cut link, misses what was published meanwhile. The robot node therefore
keeps every transition in this outbox until each required consumer has acknowledged it by key, and
resends the rest when a consumer is (back) on the topic. Past its RAM budget the outbox moves the
oldest entries to a ``Spool`` file on disk (when it has one) and resends them from there; only past the
spool's own budget, or without one, does it drop the oldest entries, and it counts them.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable


@dataclasses.dataclass
class _Entry:
    msg: Any
    nbytes: int
    sent_at: float
    pending: set[str]          # consumers that have not acknowledged it yet


@dataclasses.dataclass
class _Spooled:
    offset: int
    length: int
    sent_at: float
    pending: set[str]


class Spool:
    """Entries an outbox moved out of RAM, in one append-only file: read back for each resend, the file
    emptied once every entry in it was acknowledged (and compacted when holes make it twice its budget).
    ``encode(msg) -> bytes`` and ``decode(bytes) -> msg`` convert messages; ``max_bytes`` bounds what it
    holds (past it the oldest entries are dropped and counted)."""

    def __init__(self, path: str | os.PathLike, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any],
                 max_bytes: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w+b")   # a fresh file: a spool does not outlive its robot node
        self.encode, self.decode, self.max_bytes = encode, decode, max_bytes
        self._index: collections.OrderedDict[Hashable, _Spooled] = collections.OrderedDict()
        self.file_bytes = 0      # bytes written since the file was last emptied
        self.held_bytes = 0      # bytes of the entries still unacknowledged
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._index

    def put(self, key: Hashable, msg: Any, sent_at: float, pending: set[str]) -> None:
        data = self.encode(msg)
        self._f.seek(self.file_bytes)
        self._f.write(data)
        self._index[key] = _Spooled(self.file_bytes, len(data), sent_at, set(pending))
        self.file_bytes += len(data)
        self.held_bytes += len(data)
        while self.held_bytes > self.max_bytes and len(self._index) > 1:
            _, old = self._index.popitem(last=False)
            self.held_bytes -= old.length
            self.dropped += 1
        if self.file_bytes > 2 * max(self.max_bytes, 1 << 20):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file with only the entries still held (acknowledged ones leave holes)."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w+b") as out:
            offset = 0
            for e in self._index.values():
                self._f.seek(e.offset)
                out.write(self._f.read(e.length))
                e.offset, offset = offset, offset + e.length
        self._f.close()
        os.replace(tmp, self.path)
        self._f = open(self.path, "r+b")
        self.file_bytes = offset

    def ack(self, consumer: str, key: Hashable) -> bool:
        """Record ``consumer``'s acknowledgement; True when that released the entry."""
        e = self._index.get(key)
        if e is None:
            return False
        e.pending.discard(consumer)
        if e.pending:
            return False
        del self._index[key]
        self.held_bytes -= e.length
        self._maybe_empty()
        return True

    def due(self, now: float, resend_after: float, limit: int, where: Callable[[Any], bool] | None) -> list[Any]:
        out = []
        for e in self._index.values():
            if len(out) >= limit:
                break
            if now - e.sent_at >= resend_after:
                self._f.seek(e.offset)
                msg = self.decode(self._f.read(e.length))
                if where is None or where(msg):
                    e.sent_at = now
                    out.append(msg)
        return out

    def _maybe_empty(self) -> None:
        if not self._index and self.file_bytes:
            self._f.truncate(0)
            self.file_bytes = 0

    def close(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


class Outbox:
    """Ordered, byte-bounded store of unacknowledged messages keyed by a unique key (``spool``: where the
    oldest go past ``max_bytes`` of RAM, instead of being dropped)."""

    def __init__(self, consumers: Iterable[str], max_bytes: int, resend_after: float = 2.0,
                 spool: Spool | None = None) -> None:
        self.consumers = frozenset(consumers)
        if not self.consumers:
            raise ValueError("an outbox needs at least one consumer")
        self.max_bytes = max_bytes
        self.resend_after = resend_after
        self.spool = spool
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self.bytes = 0
        self._dropped = 0
        self.resent = 0

    def __len__(self) -> int:
        return len(self._entries) + (len(self.spool) if self.spool is not None else 0)

    @property
    def dropped(self) -> int:
        """Entries given up (RAM and spool budgets both exceeded, or no spool)."""
        return self._dropped + (self.spool.dropped if self.spool is not None else 0)

    @property
    def spooled(self) -> int:
        return len(self.spool) if self.spool is not None else 0

    def add(self, key: Hashable, msg: Any, nbytes: int, now: float) -> None:
        """Remember a message just sent. Moves the oldest entries beyond the RAM budget to the spool (or
        drops them without one)."""
        self._entries[key] = _Entry(msg, nbytes, now, set(self.consumers))
        self.bytes += nbytes
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            if self.spool is not None:
                self.spool.put(old_key, old.msg, old.sent_at, old.pending)
            else:
                self._dropped += 1

    def ack(self, consumer: str, keys: Iterable[Hashable]) -> int:
        """Record that ``consumer`` holds ``keys``; returns how many entries were released."""
        if consumer not in self.consumers:
            return 0
        released = 0
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                if self.spool is not None and self.spool.ack(consumer, key):
                    released += 1
                continue
            entry.pending.discard(consumer)
            if not entry.pending:
                del self._entries[key]
                self.bytes -= entry.nbytes
                released += 1
        return released

    def due(self, now: float, limit: int, where: Callable[[Any], bool] | None = None) -> list[Any]:
        """Up to ``limit`` oldest messages unacknowledged for ``resend_after`` seconds (and, with ``where``, for
        which ``where(msg)`` holds); marks them sent. Spooled entries (the oldest) come first."""
        out = self.spool.due(now, self.resend_after, limit, where) if self.spool is not None else []
        for entry in self._entries.values():
            if len(out) >= limit:
                break
            if now - entry.sent_at >= self.resend_after and (where is None or where(entry.msg)):
                entry.sent_at = now
                out.append(entry.msg)
        self.resent += len(out)
        return out
