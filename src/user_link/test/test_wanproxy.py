"""The WAN proxy on loopback: it adds its delay, holds its rate, counts bytes, and cuts and restores."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from link_helpers import free_port

from user_link.wanproxy import WanProxy, parse_hostport


@pytest.fixture
def echo():
    """A TCP echo server on a free port; yields its port."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve(conn):
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    stop.set()
    srv.close()


def roundtrip(port: int, payload: bytes, timeout: float = 20.0) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            data = s.recv(65536)
            if not data:
                break
            got += data
        return time.monotonic() - t0, got


def test_delay_rate_and_counters(echo):
    port = free_port()
    p = WanProxy(f"127.0.0.1:{port}", f"127.0.0.1:{echo}", delay_s=0.05, rate_bps=8e6).start()
    try:
        rtt, got = roundtrip(port, b"ping")
        assert got == b"ping" and rtt >= 0.1, f"round trip {rtt:.3f} s through 2 x 50 ms"
        blob = bytes(range(256)) * 2048   # 512 kB at 8 Mbit/s: >= 0.5 s one way
        t, got = roundtrip(port, blob)
        assert got == blob and t >= 0.5, f"512 kB echoed in {t:.3f} s through 8 Mbit/s"
        assert p.counters.up == p.counters.down == 4 + len(blob)
    finally:
        p.stop()


def test_cut_drops_and_refuses_until_restored(echo):
    port = free_port()
    p = WanProxy(f"127.0.0.1:{port}", f"127.0.0.1:{echo}", delay_s=0.0, rate_bps=0).start()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"a")
        assert s.recv(10) == b"a"
        p.cut()
        s.settimeout(5)
        with pytest.raises((ConnectionResetError, AssertionError)):
            assert s.recv(10) != b""   # reset, or an orderly close: either way nothing more comes
        s.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s2:
            s2.settimeout(5)
            try:
                data = s2.recv(10)
            except ConnectionResetError:
                data = b""
            assert data == b"", "a new connection while cut must be closed at once"
        assert p.counters.refused >= 1
        p.restore()
        _, got = roundtrip(port, b"c")
        assert got == b"c"
    finally:
        p.stop()


@pytest.mark.parametrize("bad", ["7447", "host:", ":7447", "h:99999", "h:x"])
def test_bad_addresses_are_named(bad):
    with pytest.raises(ValueError, match="expected host:port"):
        parse_hostport(bad)
