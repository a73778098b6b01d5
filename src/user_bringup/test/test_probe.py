"""Tests of hardware discovery (``user_hal.probe``) and ``userctl robots --probe``.

Franka: real TCP sockets on localhost stand in for a robot's FCI port -- a listener that only
accepts, one that answers libfranka's Connect request in the libfranka wire format, a closed port,
and a port whose accept queue is full (SYNs dropped: a timeout). Optionally franky-sim, which
serves libfranka's protocol on a loopback address. RealSense, SpaceMouse and GPU rows are checked
against what the real libraries report on this machine (none here).
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from user_hal.probe import (FCI_PORT, Resource, bounded, format_resources, parse_endpoint, probe_franka,
                            probe_gpus, probe_hardware, probe_realsense, probe_spacemouse)

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "test"))
from ros_isolation import isolated_ros_env  # noqa: E402

pytestmark = pytest.mark.timeout(120)


class Listener:
    """A TCP server on 127.0.0.1 in a thread. ``mode``: 'accept' (silent) or 'fci' (answers Connect)."""

    def __init__(self, mode: str = "accept", robot_version: int = 9) -> None:
        self.mode, self.robot_version = mode, robot_version
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[int, int, int, int, int]] = []
        self.accepted = 0
        self._stop = False
        self._conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            self._conns.append(conn)
            if self.mode == "fci":
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        data = b""
        while len(data) < 16:
            chunk = conn.recv(16 - len(data))
            if not chunk:
                return
            data += chunk
        req = struct.unpack("<IIIHH", data)  # command, command_id, size, version, udp_port
        self.requests.append(req)
        status = 0 if req[3] == self.robot_version else 1  # kIncompatibleLibraryVersion
        # ResponseBase<Connect>: header, uint8 status (+1 byte padding), uint16 version -> 16 bytes
        conn.sendall(struct.pack("<IIIBxH", 0, req[1], 16, status, self.robot_version))

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2.0)
        for c in self._conns:
            c.close()
        self.sock.close()


@pytest.fixture
def listener():
    made = []

    def make(mode: str = "accept", **kw) -> Listener:
        lst = Listener(mode, **kw)
        made.append(lst)
        return lst

    yield make
    for lst in made:
        lst.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


# --- Franka ----------------------------------------------------------------------------------------


def test_parse_endpoint():
    assert parse_endpoint("172.16.0.2") == ("172.16.0.2", FCI_PORT) == ("172.16.0.2", 1337)
    assert parse_endpoint(" 172.16.0.2:4242 ") == ("172.16.0.2", 4242)
    assert parse_endpoint("robot.local") == ("robot.local", 1337)
    assert parse_endpoint("[fe80::1]:99") == ("fe80::1", 99)
    assert parse_endpoint("[::1]") == ("::1", 1337)
    for bad, why in [("", "empty"), ("1.2.3.4:x", "number"), ("1.2.3.4:0", "1..65535"), ("[::1", "unclosed"),
                     (":1337", "no host")]:
        with pytest.raises(ValueError, match=why):
            parse_endpoint(bad)


def test_franka_tcp_port_open_is_reachable(listener):
    lst = listener("accept")
    row = probe_franka("127.0.0.1", lst.port, timeout=1.0, handshake=False)
    assert (row.kind, row.ident, row.status) == ("franka", f"127.0.0.1:{lst.port}", "reachable")
    assert f"TCP {lst.port} open" in row.details
    deadline = time.monotonic() + 2.0
    while lst.accepted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lst.accepted == 1  # the probe really connected


def test_franka_handshake_reads_the_robot_protocol_version(listener):
    lst = listener("fci", robot_version=9)
    t0 = time.monotonic()
    row = probe_franka("127.0.0.1", lst.port, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert row.status == "reachable", row
    assert "robot protocol version 9" in row.details and "incompatible library version" in row.details
    (command, _, size, version, udp_port), = lst.requests
    assert (command, size, version) == (0, 16, 0) and 0 < udp_port < 65536  # libfranka's Connect, version 0


def test_franka_silent_port_is_not_an_fci(listener):
    lst = listener("accept")
    t0 = time.monotonic()
    row = probe_franka("127.0.0.1", lst.port, timeout=0.5)
    took = time.monotonic() - t0
    assert 0.4 < took < 1.0, took  # waited for the reply, but not beyond the timeout
    assert row.status == "port open, no FCI" and "no reply" in row.details


def test_franka_closed_port_is_unreachable_at_once():
    port = _closed_port()
    t0 = time.monotonic()
    row = probe_franka("127.0.0.1", port, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert (row.ident, row.status) == (f"127.0.0.1:{port}", "unreachable")
    assert "connection refused" in row.details


def test_franka_no_answer_is_unreachable_within_the_timeout():
    # A listener whose accept queue is full: the kernel drops further SYNs, as for a host that is off.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", port))
            except socket.timeout:
                s.close()
                break
            fillers.append(s)
        else:
            pytest.skip("this kernel accepted every connection to a full accept queue; cannot provoke a timeout")
        t0 = time.monotonic()
        row = probe_franka("127.0.0.1", port, timeout=0.6)
        took = time.monotonic() - t0
        assert row.status == "unreachable" and "no answer within 0.6 s" in row.details, row
        assert 0.5 < took < 1.2, took
    finally:
        for s in fillers:
            s.close()
        srv.close()


@pytest.mark.skipif(shutil.which("franky-sim") is None, reason="franky-sim is not installed")
def test_franka_probe_against_franky_sim(tmp_path):
    """franky-sim serves libfranka's protocol; the probe must recognise it as an FCI."""
    host = f"127.0.{(os.getpid() >> 8) % 250 + 3}.{os.getpid() % 250 + 3}"  # not 127.0.0.1: others may use it
    log = tmp_path / "franky_sim.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["franky-sim", "-s", "mujoco", "--hostname", host], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Connect to the server" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"franky-sim did not start here: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.2)
        row = probe_franka(host, FCI_PORT, timeout=2.0)
        assert (row.ident, row.status) == (f"{host}:1337", "reachable"), row
        assert re.search(r"robot protocol version \d+", row.details), row
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- local devices ---------------------------------------------------------------------------------


def test_realsense_rows_match_the_sdk():
    import pyrealsense2 as rs

    serials = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
    rows = probe_realsense()
    if serials:
        assert [r.ident for r in rows] == serials and all(r.status == "connected" for r in rows)
    else:
        assert rows == [Resource("realsense", "-", "none found", rows[0].details)]
        assert f"pyrealsense2 {rs.__version__} sees no device" in rows[0].details


def test_spacemouse_rows_match_hid_enumeration():
    import pyspacemouse

    found = pyspacemouse.get_connected_devices_by_path()
    rows = probe_spacemouse()
    if found:
        assert sorted(r.ident for r in rows) == sorted(str(p) for p in found)
    else:
        assert [(r.ident, r.status) for r in rows] == [("-", "none found")]
        assert "no supported 3Dconnexion device" in rows[0].details


def test_gpu_rows_match_torch():
    import torch

    rows = probe_gpus()
    if torch.cuda.is_available():
        assert [r.ident for r in rows] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        assert all(r.status == "available" and "GiB" in r.details for r in rows)
    else:
        assert [(r.ident, r.status) for r in rows] == [("-", "none found")]
        assert f"torch {torch.__version__}: CUDA not available" in rows[0].details


def test_bounded_probe_never_hangs_nor_raises():
    release = threading.Event()
    t0 = time.monotonic()
    rows = bounded(lambda: release.wait(30) and [], 0.3, "realsense")()
    assert time.monotonic() - t0 < 0.6
    assert rows == [Resource("realsense", "-", "timed out", "no result within 0.3 s")]
    release.set()

    def boom():
        raise RuntimeError("USB hub on fire")

    assert bounded(boom, 1.0, "gpu")() == [Resource("gpu", "-", "error", "RuntimeError: USB hub on fire")]


def test_probe_hardware_rows(listener):
    lst = listener("fci", robot_version=9)
    closed = _closed_port()
    rows = probe_hardware([f"127.0.0.1:{lst.port}", f"127.0.0.1:{closed}"], franka_timeout=1.0)
    kinds = [r.kind for r in rows]
    assert kinds[:2] == ["franka", "franka"] and {"realsense", "spacemouse", "gpu"} <= set(kinds[2:])
    assert rows[0].status == "reachable" and rows[1].status == "unreachable"
    rows = probe_hardware([])
    assert rows[0] == Resource("franka", "-", "not probed",
                               "no Franka IP given (userctl robots --probe --franka-ip IP)")


def test_format_resources_is_one_aligned_table():
    rows = [Resource("robot", "franka_0", "RUNNING", "franka_fr3 on sim"), Resource("gpu", "-", "none found", "x")]
    text = format_resources(rows, "userctl robots --probe", now=datetime.datetime(2025, 1, 2, 3, 4, 5))
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # a box: every line equally wide
    assert "2025-01-02 03:04:05" in lines[1] and "2 resources" in lines[1]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["KIND", "ID", "STATUS", "DETAILS"]
    assert [c.strip() for c in lines[5].strip("|").split("|")] == ["robot", "franka_0", "RUNNING", "franka_fr3 on sim"]


# --- userctl robots --probe ------------------------------------------------------------------------


def _userctl(*args: str, env: dict[str, str], timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    from ament_index_python.packages import get_package_prefix

    exe = Path(get_package_prefix("user_bringup")) / "lib" / "user_bringup" / "userctl"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout)


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and line.count("|") == 5:
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_userctl_robots_probe_prints_one_resource_table(listener):
    lst = listener("fci", robot_version=9)
    closed = _closed_port()
    with isolated_ros_env() as env:  # an empty ROS domain: no registry answers
        result = _userctl("robots", "--probe", "--timeout", "1", "--franka-ip", f"127.0.0.1:{lst.port}",
                          "--franka-ip", f"127.0.0.1:{closed}", env=env)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.count("KIND") == 1 and sum(ln.startswith("+=") for ln in out.splitlines()) == 1, out  # one table
    rows = _table_rows(out)
    assert rows[0] == ["KIND", "ID", "STATUS", "DETAILS"]
    by_kind: dict[str, list[list[str]]] = {}
    for r in rows[1:]:
        by_kind.setdefault(r[0], []).append(r)
    assert by_kind["robot"] == [["robot", "-", "no registry", by_kind["robot"][0][3]]]
    assert "ROS_DOMAIN_ID=" in by_kind["robot"][0][3]
    assert [(r[1], r[2]) for r in by_kind["franka"]] == [(f"127.0.0.1:{lst.port}", "reachable"),
                                                        (f"127.0.0.1:{closed}", "unreachable")]
    for kind in ("realsense", "spacemouse", "gpu"):  # nothing of that kind on this machine
        expected = {"realsense": probe_realsense, "spacemouse": probe_spacemouse, "gpu": probe_gpus}[kind]()
        assert [(r[1], r[2]) for r in by_kind[kind]] == [(e.ident, e.status) for e in expected], out
    if all(len(v) == 1 and v[0][1] == "-" for k, v in by_kind.items() if k in ("realsense", "spacemouse", "gpu")):
        assert [by_kind[k][0][2] for k in ("realsense", "spacemouse", "gpu")] == ["none found"] * 3
    n_gpu = sum(1 for r in by_kind["gpu"] if r[1] != "-")
    assert re.search(rf"0 robots, {n_gpu} GPUs?, \d+ RealSense, \d+ SpaceMouse, 0 inference servers \|$", out.splitlines()[1]), out


def test_userctl_robots_probe_without_ip_and_usage_errors():
    with isolated_ros_env() as env:
        result = _userctl("robots", "--probe", "--timeout", "0.5", env=env)
        assert result.returncode == 0, result.stderr
        franka = [r for r in _table_rows(result.stdout) if r[0] == "franka"]
        assert franka == [["franka", "-", "not probed", "no Franka IP given (userctl robots --probe --franka-ip IP)"]]
        bad = _userctl("robots", "--probe", "--franka-ip", "10.0.0.1:70000", env=env)
        assert bad.returncode == 2 and "--franka-ip '10.0.0.1:70000': port must be 1..65535" in bad.stderr
        bad = _userctl("robots", "--franka-ip", "10.0.0.1", env=env)
        assert bad.returncode == 2 and "need --probe" in bad.stderr
        bad = _userctl("robots", "--probe", "--watch", env=env)
        assert bad.returncode == 2 and "cannot be combined" in bad.stderr


def test_userctl_robots_probe_lists_registry_robots_next_to_gpus():
    """A real registry_node and a robot announcing itself: the robot is a row of the same table."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from user_msgs.msg import RobotDescription, RobotStatus

    from hal_helpers import node_cmd

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    with isolated_ros_env() as env:
        registry = subprocess.Popen(node_cmd("registry_node", {"heartbeat_timeout_s": 5.0}), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        ctx = rclpy.Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("probe_test_robot", context=ctx)
        try:
            desc = node.create_publisher(RobotDescription, "/user/robots/description", latched)
            beat = node.create_publisher(RobotStatus, "/user/robots/heartbeat", latched)
            desc.publish(RobotDescription(robot_id="franka_9", embodiment="franka_fr3", backend="franky",
                                          control_hz=10.0))
            node.create_timer(0.2, lambda: beat.publish(RobotStatus(
                robot_id="franka_9", state=RobotStatus.STATE_RUNNING, achieved_control_hz=9.8, episodes_done=2,
                step=5)))
            ex = SingleThreadedExecutor(context=ctx)
            ex.add_node(node)
            spin = threading.Thread(target=ex.spin, daemon=True)
            spin.start()
            deadline = time.monotonic() + 40
            robot = None
            while time.monotonic() < deadline:
                result = _userctl("robots", "--probe", "--timeout", "5", env=env)
                robot = next((r for r in _table_rows(result.stdout) if r[:2] == ["robot", "franka_9"]), None)
                if robot is not None and robot[2] == "RUNNING":
                    break
                time.sleep(0.5)
            assert robot is not None and robot[2] == "RUNNING", result.stdout + result.stderr
            assert robot[3].startswith("franka_fr3 on franky, control 9.8 / 10.0 Hz, episode 2 (step 5), heartbeat ")
            kinds = [r[0] for r in _table_rows(result.stdout)[1:]]
            assert kinds[0] == "robot" and "gpu" in kinds and "franka" in kinds
            assert "1 robot, " in result.stdout.splitlines()[1]
            ex.shutdown(timeout_sec=1.0)
            spin.join(timeout=2.0)
        finally:
            node.destroy_node()
            ctx.try_shutdown()
            os.killpg(registry.pid, signal.SIGINT)
            try:
                registry.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(registry.pid, signal.SIGKILL)
                registry.wait()
