"""Hold sent transitions until a consumer acknowledges them; resend what was not acknowledged.

DDS "reliable" only covers readers that exist: a learner that is down (or restarting after
``kill -9``) misses what was published meanwhile. The robot node therefore keeps every transition in
this bounded outbox until each required consumer has acknowledged it by key, and resends the rest
when a consumer is (back) on the topic. Only when the outbox overflows its byte budget does it drop
the oldest entries, and it counts them.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Hashable, Iterable


@dataclasses.dataclass
class _Entry:
    msg: Any
    nbytes: int
    sent_at: float
    pending: set[str]          # consumers that have not acknowledged it yet


class Outbox:
    """Ordered, byte-bounded store of unacknowledged messages keyed by a unique key."""

    def __init__(self, consumers: Iterable[str], max_bytes: int, resend_after: float = 2.0) -> None:
        self.consumers = frozenset(consumers)
        if not self.consumers:
            raise ValueError("an outbox needs at least one consumer")
        self.max_bytes = max_bytes
        self.resend_after = resend_after
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self.bytes = 0
        self.dropped = 0
        self.resent = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: Hashable, msg: Any, nbytes: int, now: float) -> None:
        """Remember a message just sent. Drops the oldest entries beyond the byte budget."""
        self._entries[key] = _Entry(msg, nbytes, now, set(self.consumers))
        self.bytes += nbytes
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.dropped += 1

    def ack(self, consumer: str, keys: Iterable[Hashable]) -> int:
        """Record that ``consumer`` holds ``keys``; returns how many entries were released."""
        if consumer not in self.consumers:
            return 0
        released = 0
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            entry.pending.discard(consumer)
            if not entry.pending:
                del self._entries[key]
                self.bytes -= entry.nbytes
                released += 1
        return released

    def due(self, now: float, limit: int, where: Callable[[Any], bool] | None = None) -> list[Any]:
        """Up to ``limit`` oldest messages unacknowledged for ``resend_after`` seconds (and, with ``where``, for
        which ``where(msg)`` holds); marks them sent."""
        out = []
        for entry in self._entries.values():
            if len(out) >= limit:
                break
            if now - entry.sent_at >= self.resend_after and (where is None or where(entry.msg)):
                entry.sent_at = now
                out.append(entry.msg)
        self.resent += len(out)
        return out
