"""An emulated WAN between this host and a "cloud" network namespace: a veth pair shaped by ``tbf``, the
one-way delay added by a ``wanproxy`` process inside the namespace (this kernel has no ``netem``).

``with EmulatedWan(rate_mbit=20, delay_ms=20) as wan:`` makes namespace ``wan.ns`` reachable at ``wan.cloud_ip``
from this side's ``wan.edge_ip``; ``wan.exec(cmd)`` prefixes a command to run inside it; ``wan.proxy(port)``
starts the delaying proxy ``wan.cloud_ip:<proxy port>`` -> ``127.0.0.1:<port>`` in the namespace;
``wan.cut()``/``wan.restore()`` blackhole the path both ways and lift that (packets are lost silently, as when a
cable is pulled).
Needs root (``ip netns``); ``EmulatedWan.unavailable()`` says why not.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


class EmulatedWan:
    def __init__(self, rate_mbit: float = 20.0, delay_ms: float = 20.0, tag: str | None = None) -> None:
        self.rate_mbit, self.delay_ms = rate_mbit, delay_ms
        n = os.getpid() % 250 + 1
        self.tag = tag or f"u{os.getpid()}"
        self.ns = f"user_cloud_{self.tag}"
        self.veth, self.peer = f"ue{self.tag}"[:15], f"uc{self.tag}"[:15]
        self.edge_ip, self.cloud_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self._proxies: list[subprocess.Popen] = []

    @staticmethod
    def unavailable() -> str:
        """Why namespaces cannot be made here ("" when they can)."""
        if os.geteuid() != 0:
            return "network namespaces need root (ip netns add)"
        probe = f"user_probe_{os.getpid()}"
        try:
            _ip("ip", "netns", "add", probe)
        except (OSError, FileNotFoundError) as exc:
            return f"ip netns add is not permitted here: {exc}"
        _ip("ip", "netns", "del", probe, check=False)
        return ""

    def __enter__(self) -> "EmulatedWan":
        self.close()   # leftovers of a killed run with the same tag
        try:
            _ip("ip", "netns", "add", self.ns)
            _ip("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
            _ip("ip", "link", "set", self.peer, "netns", self.ns)
            _ip("ip", "addr", "add", f"{self.edge_ip}/30", "dev", self.veth)
            _ip("ip", "addr", "add", f"{self.cloud_ip}/30", "dev", self.peer, ns=self.ns)
            _ip("ip", "link", "set", self.veth, "up")
            _ip("ip", "link", "set", self.peer, "up", ns=self.ns)
            _ip("ip", "link", "set", "lo", "up", ns=self.ns)
            rate = f"{self.rate_mbit:g}mbit"
            for dev, ns in ((self.veth, None), (self.peer, self.ns)):
                _ip("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kbit",
                    "latency", "400ms", ns=ns)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside the cloud namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def proxy(self, target_port: int, listen_port: int) -> str:
        """Start the delay proxy in the namespace; returns the endpoint the edge dials (``host:port``)."""
        cmd = self.exec([sys.executable, "-m", "user_link.wanproxy", f"{self.cloud_ip}:{listen_port}",
                         f"127.0.0.1:{target_port}", "--delay-ms", str(self.delay_ms), "--mbit", "0"])
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = p.stdout.readline()
        if "wan proxy" not in line:
            p.kill()
            raise OSError(f"the delay proxy did not start in {self.ns}: {line}{p.stdout.read()[-2000:]}")
        self._proxies.append(p)
        return f"{self.cloud_ip}:{listen_port}"

    def cut(self) -> None:
        """Take the link down: packets are dropped silently (no reset reaches either side)."""
        _ip("ip", "route", "add", "blackhole", f"{self.cloud_ip}/32")
        _ip("ip", "route", "add", "blackhole", f"{self.edge_ip}/32", ns=self.ns)

    def restore(self) -> None:
        _ip("ip", "route", "del", "blackhole", f"{self.cloud_ip}/32", check=False)
        _ip("ip", "route", "del", "blackhole", f"{self.edge_ip}/32", ns=self.ns, check=False)

    def close(self) -> None:
        _ip("ip", "route", "del", "blackhole", f"{self.cloud_ip}/32", check=False)
        for p in self._proxies:
            p.kill()
            p.wait()
        self._proxies.clear()
        _ip("ip", "link", "del", self.veth, check=False)
        _ip("ip", "netns", "del", self.ns, check=False)
