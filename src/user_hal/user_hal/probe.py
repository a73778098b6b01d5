"""Discovery: what is connected to this machine -- Franka arms, RealSense cameras, SpaceMice, GPUs.

``userctl robots --probe`` lists these next to the registry's robots, as resources in one table.
Every probe here is time-bounded and never raises: a probe that fails or takes too long becomes a
``Resource`` row whose status and details say why.

Franka: libfranka talks to the arm's Franka Control Interface (FCI) over TCP port 1337 (commands)
plus UDP (the 1 kHz state/command stream). ``probe_franka`` opens the TCP connection and, unless
told not to, sends libfranka's ``Connect`` request with protocol version 0, which no robot
accepts: the robot answers "incompatible library version" together with the protocol version it
speaks, and no control session starts (the brakes, the arm and any other client are untouched).
A server that accepts the TCP connection but does not answer is reported as such.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

#: libfranka's TCP command port on the robot (research_interface::robot::kCommandPort).
FCI_PORT = 1337
#: libfranka's ``Command::kConnect`` and the version this probe offers (never a real one).
_CONNECT = 0
_PROBE_VERSION = 0
_CONNECT_STATUS = {0: "success", 1: "incompatible library version"}


@dataclasses.dataclass
class Resource:
    """One row of the resources table."""

    kind: str     # robot | franka | realsense | spacemouse | gpu
    ident: str    # robot id, ip:port, serial, device path, cuda:N; "-" when there is none
    status: str   # e.g. RUNNING, reachable, unreachable, connected, none found, timed out, error
    details: str = ""


def parse_endpoint(text: str, default_port: int = FCI_PORT) -> tuple[str, int]:
    """``"172.16.0.2"``, ``"172.16.0.2:1337"``, ``"robot.local"`` or ``"[fe80::1]:1337"`` -> (host, port)."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected [host]:port, got {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    if not host:
        raise ValueError(f"no host in {text!r}")
    return host, port


def _port(p: str, text: str) -> int:
    try:
        port = int(p)
    except ValueError:
        raise ValueError(f"port must be a number in {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535 in {text!r}")
    return port


def _fmt_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the robot")
        buf += chunk
    return buf


def fci_connect_handshake(sock: socket.socket, deadline: float) -> tuple[int, int]:
    """Send libfranka's Connect request (version 0) on a connected socket; return (status, version).

    Wire format (little endian, every libfranka generation): header ``uint32 command, uint32
    command_id, uint32 size`` (size includes the header); request payload ``uint16 version, uint16
    udp_port``; reply payload: status in the first byte(s), the robot's ``uint16`` version at offset 2.
    """
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # own the UDP port we name in the request
    try:
        udp.bind(("", 0))
        udp_port = udp.getsockname()[1]
        sock.sendall(struct.pack("<IIIHH", _CONNECT, 0, 16, _PROBE_VERSION, udp_port))
        head = _recv_exact(sock, 12, deadline)
        command, _, size = struct.unpack("<III", head)
        if command != _CONNECT or not 16 <= size <= 64:
            raise ValueError(f"not a libfranka reply (it starts with {head[:8]!r})")
        payload = _recv_exact(sock, size - 12, deadline)
        status = payload[0]
        (version,) = struct.unpack_from("<H", payload, 2)
        return status, version
    finally:
        udp.close()


def probe_franka(host: str, port: int = FCI_PORT, timeout: float = 1.0, handshake: bool = True) -> Resource:
    """Is a Franka's FCI reachable at ``host:port``? Never raises; takes at most about ``timeout`` s."""
    ident = _fmt_endpoint(host, port)
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Resource("franka", ident, "unreachable",
                        f"connection refused on TCP {port} (host up, but FCI not active: activate FCI in Desk)")
    except socket.timeout:
        return Resource("franka", ident, "unreachable",
                        f"no answer within {timeout:g} s (wrong IP, robot off, or not on this network)")
    except OSError as exc:
        return Resource("franka", ident, "unreachable", f"{exc.strerror or exc}")
    ms = (time.monotonic() - t0) * 1000.0
    with sock:
        if not handshake:
            return Resource("franka", ident, "reachable", f"TCP {port} open ({ms:.0f} ms); FCI handshake skipped")
        try:
            status, version = fci_connect_handshake(sock, deadline)
        except (OSError, ConnectionError, ValueError, struct.error) as exc:
            why = "no reply" if isinstance(exc, socket.timeout) else str(exc)
            return Resource("franka", ident, "port open, no FCI",
                            f"TCP {port} open ({ms:.0f} ms) but the libfranka Connect handshake failed: {why} "
                            "(not a Franka, or another client holds the robot)")
    said = _CONNECT_STATUS.get(status, f"status {status}")
    return Resource("franka", ident, "reachable",
                    f"FCI answered in {(time.monotonic() - t0) * 1000.0:.0f} ms: robot protocol version {version} "
                    f"(probe offered 0 -> {said})")


def probe_realsense() -> list[Resource]:
    """One row per connected RealSense (serial, model, firmware, USB), or a 'none found' row."""
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        return [Resource("realsense", "-", "unavailable", f"pyrealsense2 not installed ({exc})")]
    rows = []
    for dev in rs.context().query_devices():
        def info(key, dev=dev):
            return dev.get_info(key) if dev.supports(key) else "?"

        details = f"{info(rs.camera_info.name)}, firmware {info(rs.camera_info.firmware_version)}"
        if dev.supports(rs.camera_info.usb_type_descriptor):
            details += f", USB {dev.get_info(rs.camera_info.usb_type_descriptor)}"
        rows.append(Resource("realsense", info(rs.camera_info.serial_number), "connected", details))
    if not rows:
        rows.append(Resource("realsense", "-", "none found",
                             f"pyrealsense2 {getattr(rs, '__version__', '?')} sees no device "
                             "(plugged into USB 3? udev rules installed?)"))
    return rows


def probe_spacemouse() -> list[Resource]:
    """One row per connected 3Dconnexion SpaceMouse (HID path, model, access), or 'none found'."""
    try:
        import pyspacemouse
        from easyhid import Enumeration
    except ImportError as exc:
        return [Resource("spacemouse", "-", "unavailable", f"pyspacemouse/easyhid not installed ({exc})")]
    try:
        found = pyspacemouse.get_connected_devices_by_path()
        n_hid = len(Enumeration().find())
    except (RuntimeError, AttributeError, OSError) as exc:
        return [Resource("spacemouse", "-", "error", f"HID enumeration failed: {exc} (is libhidapi installed?)")]
    rows = []
    for path, model in sorted(found.items()):
        path_s = path.decode() if isinstance(path, bytes) else str(path)
        if os.access(path_s, os.R_OK | os.W_OK):
            rows.append(Resource("spacemouse", path_s, "connected", model))
        else:
            rows.append(Resource("spacemouse", path_s, "no permission",
                                 f"{model}; {path_s} is not read/writable: add a udev rule for "
                                 "3Dconnexion (USB vendor 256f or 046d)"))
    if not rows:
        rows.append(Resource("spacemouse", "-", "none found",
                             f"no supported 3Dconnexion device among {n_hid} HID device(s)"))
    return rows


def probe_gpus() -> list[Resource]:
    """One row per CUDA GPU (torch.cuda; nvidia-smi when torch is missing), or 'none found'."""
    try:
        import torch
    except ImportError:
        return _gpus_nvidia_smi()
    rows = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append(Resource("gpu", f"cuda:{i}", "available",
                                 f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}"))
    if not rows:
        why = ("CPU-only build" if torch.version.cuda is None
               else f"built for CUDA {torch.version.cuda}, no device or driver")
        rows.append(Resource("gpu", "-", "none found", f"torch {torch.__version__}: CUDA not available ({why})"))
    return rows


def _gpus_nvidia_smi() -> list[Resource]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [Resource("gpu", "-", "none found", "torch not installed and no nvidia-smi on PATH")]
    out = subprocess.run([exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=5.0)
    rows = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append(Resource("gpu", f"cuda:{parts[0]}", "available", f"{parts[1]}, {parts[2]} (nvidia-smi)"))
    return rows or [Resource("gpu", "-", "none found", f"nvidia-smi: {out.stderr.strip() or 'no GPU listed'}")]


def bounded(fn: Callable[[], list[Resource]], timeout: float, kind: str,
            ident: str = "-") -> Callable[[], list[Resource]]:
    """Wrap a probe so that it returns within ``timeout`` and never raises.

    The probe runs in a daemon thread; when it is late, the row says so and the thread is left to
    finish on its own (it cannot block the caller or process exit).
    """

    def run() -> list[Resource]:
        box: list = []

        def target() -> None:
            try:
                box.append(fn())
            except BaseException as exc:  # noqa: BLE001 - a probe never raises
                box.append([Resource(kind, ident, "error", f"{type(exc).__name__}: {exc}")])

        t = threading.Thread(target=target, daemon=True, name=f"probe-{kind}")
        t.start()
        t.join(timeout)
        if not box:
            return [Resource(kind, ident, "timed out", f"no result within {timeout:g} s")]
        return box[0]

    return run


def probe_hardware(franka: Iterable[str] = (), franka_timeout: float = 1.0, device_timeout: float = 15.0,
                   handshake: bool = True) -> list[Resource]:
    """Run all hardware probes concurrently; rows in the order franka, realsense, spacemouse, gpu.

    ``franka``: addresses ``host[:port]`` (port default 1337); none -> one row saying so.
    ``device_timeout`` bounds the local probes (importing torch alone can take seconds).
    """
    jobs: list[Callable[[], list[Resource]]] = []
    addresses = list(franka)
    if not addresses:
        jobs.append(lambda: [Resource("franka", "-", "not probed",
                                      "no Franka IP given (userctl robots --probe --franka-ip IP)")])
    for text in addresses:
        try:
            host, port = parse_endpoint(text)
        except ValueError as exc:
            jobs.append(lambda exc=exc, text=text: [Resource("franka", text, "error", str(exc))])
            continue
        jobs.append(bounded(lambda h=host, p=port: [probe_franka(h, p, franka_timeout, handshake)],
                            franka_timeout * 2 + 1.0, "franka", _fmt_endpoint(host, port)))
    jobs += [bounded(probe_realsense, device_timeout, "realsense"),
             bounded(probe_spacemouse, device_timeout, "spacemouse"),
             bounded(probe_gpus, device_timeout, "gpu")]
    results: list[Optional[list[Resource]]] = [None] * len(jobs)

    def run(i: int) -> None:
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # each job is bounded by itself
    return [row for rows in results for row in (rows or [])]


def format_resources(rows: Sequence[Resource], title: str, now: Optional[datetime.datetime] = None,
                     subtitle: str = "") -> str:
    """Render resources as one boxed table (the ``userctl robots`` style)."""
    now = now or datetime.datetime.now()
    header = ("KIND", "ID", "STATUS", "DETAILS")
    cells = [(r.kind, r.ident, r.status, r.details) for r in rows]
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(4)]

    def line(c: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    inner = len(rule) - 4
    left = f"{title}   {now:%Y-%m-%d %H:%M:%S}"
    right = subtitle or f"{len(rows)} resource{'s' if len(rows) != 1 else ''}"
    if len(left) + 1 + len(right) > inner:  # widen the last column so the title fits
        widths[3] += len(left) + 1 + len(right) - inner
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        inner = len(rule) - 4
    gap = inner - len(left) - len(right)
    out = ["+" + "-" * (inner + 2) + "+", "| " + left + " " * gap + right + " |", rule, line(header),
           rule.replace("-", "="), *[line(c) for c in cells], rule]
    return "\n".join(out)
