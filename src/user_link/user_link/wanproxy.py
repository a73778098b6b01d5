"""A user-space TCP proxy that makes a loopback or veth path look like a WAN: one-way delay, a rate limit,
byte counters each way, and a cut that can be restored (``netem`` is not in this kernel).

``WanProxy(listen, target, delay_s=0.02, rate_bps=20e6)`` forwards every connection to ``target``; bytes
leave each direction ``delay_s`` after they arrived, paced at ``rate_bps`` (0: unlimited). ``cut()`` drops
every connection and refuses new ones until ``restore()``. Runs its own asyncio loop in a thread:
``start()``/``stop()``, or as ``python -m user_link.wanproxy LISTEN TARGET [--delay-ms] [--mbit]``.
"""
from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import dataclass


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError naming the text."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected host:port, e.g. 127.0.0.1:7447")
    return host.strip("[]"), int(port)


@dataclass
class Counters:
    up: int = 0          # client -> target bytes delivered
    down: int = 0        # target -> client bytes delivered
    connections: int = 0
    refused: int = 0     # connections refused while cut


class WanProxy:
    def __init__(self, listen: str, target: str, delay_s: float = 0.02, rate_bps: float = 20e6,
                 chunk: int = 16384) -> None:
        self.listen, self.target = parse_hostport(listen), parse_hostport(target)
        if delay_s < 0 or rate_bps < 0:
            raise ValueError(f"delay_s {delay_s} and rate_bps {rate_bps} must be >= 0")
        self.delay_s, self.rate_bps, self.chunk = delay_s, rate_bps, chunk
        self.counters = Counters()
        self._cut = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- control (any thread) ----------------------------------------------------------------------
    def start(self) -> "WanProxy":
        self._thread = threading.Thread(target=self._run, name="wanproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise OSError(f"wan proxy cannot listen on {self.listen[0]}:{self.listen[1]}: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until ``restore()``."""
        self._cut = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_all)

    def restore(self) -> None:
        self._cut = False

    @property
    def is_cut(self) -> bool:
        return self._cut

    # -- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._accept, self.listen[0], self.listen[1]))
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._drop_all()
            tasks = asyncio.all_tasks(self._loop)
            if tasks:   # the aborted connections end their pipes; cancel only what is left after a second
                _, left = self._loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
                for t in left:
                    t.cancel()
                self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self._loop.close()

    def _drop_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.counters.refused += 1
            writer.transport.abort()
            return
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.counters.connections += 1
        self._writers |= {writer, t_writer}
        await asyncio.gather(self._pipe(reader, t_writer, "up"), self._pipe(t_reader, writer, "down"),
                             return_exceptions=True)
        for w in (writer, t_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=32)   # a bounded queue: TCP backpressure reaches the sender

        async def deliver() -> None:
            free_at = 0.0   # when the rate-limited link is free again
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                now = time.monotonic()
                if self.rate_bps:
                    free_at = max(free_at, now) + len(data) * 8 / self.rate_bps
                    due = max(due, free_at)
                if due > now:
                    await asyncio.sleep(due - now)
                writer.write(data)
                await writer.drain()
                setattr(self.counters, way, getattr(self.counters, way) + len(data))

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(self.chunk)
                if not data:
                    break
                await queue.put((time.monotonic() + self.delay_s, data))
        finally:
            await queue.put((0.0, None))
            await asyncio.gather(sender, return_exceptions=True)
            writer.transport.abort()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m user_link.wanproxy", description=__doc__.split("\n")[0])
    ap.add_argument("listen", help="host:port to listen on")
    ap.add_argument("target", help="host:port to forward to")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay (default 20: a 40 ms round trip)")
    ap.add_argument("--mbit", type=float, default=20.0, help="rate limit in Mbit/s each way (0: none)")
    a = ap.parse_args(argv)
    p = WanProxy(a.listen, a.target, a.delay_ms / 1000, a.mbit * 1e6).start()
    print(f"wan proxy {a.listen} -> {a.target}: {a.delay_ms:g} ms one way, {a.mbit:g} Mbit/s", flush=True)
    try:
        while True:
            time.sleep(5)
            c = p.counters
            print(f"up {c.up} B, down {c.down} B, {c.connections} connections", flush=True)
    except KeyboardInterrupt:
        p.stop()


if __name__ == "__main__":
    main()
