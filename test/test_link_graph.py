"""The main job split over the link: robots and inference at the edge (one DDS domain), the learner in the
cloud (another DDS domain; with ``netns``, another network namespace behind a veth pair shaped to 20 Mbit/s),
joined by two link nodes over mTLS through the delaying WAN proxy; the link is cut mid-run and restored, and
every transition the robot made meanwhile reaches the cloud's replay bag."""
from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from hal_helpers import Collect, learning_config_dir, node_cmd, userctl_cmd
from ros_isolation import next_domain_id
from user_msgs.msg import RobotStatus, Transition, TransitionAck

pytest.importorskip("zenoh", reason="eclipse-zenoh is not installed (pip install -r requirements.txt)")
if shutil.which("openssl") is None:
    pytest.skip("openssl is not on PATH (apt-get install openssl): no certificates for the link",
                allow_module_level=True)

from user_buffer.store import TransitionStore  # noqa: E402
from user_link.certs import make_link_certs  # noqa: E402
from user_link.netns import EmulatedWan  # noqa: E402
from user_link.wanproxy import WanProxy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "user_link" / "test"))
from link_helpers import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(600)
#: how long the link stays cut (the issue's 60 s: USER_LINK_CUT_S=60; the suite keeps it short)
CUT_S = float(os.environ.get("USER_LINK_CUT_S", "4"))


def link_config(tmp_path, certs, role: str, endpoint: str) -> str:
    cfg = yaml.safe_load((tmp_path / "config" / "link.yaml").read_text())
    who = "cloud" if role == "cloud" else "edge-site1"
    cfg.update(role=role, endpoints=[f"tls/{endpoint}"], lease_s=3.0, edges={"site1": {"robots": ["franka_0"]}},
               tls={"ca": str(certs / "ca.pem"), "cert": str(certs / f"{who}.pem"), "key": str(certs / f"{who}.key")})
    path = tmp_path / f"link-{role}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


class _ProxyWan:
    """Both sides on this host's loopback; the WAN proxy in this process delays, limits and cuts."""

    cut_s = CUT_S

    def __init__(self, port: int) -> None:
        self.via = free_port()
        self.proxy = WanProxy(f"127.0.0.1:{self.via}", f"127.0.0.1:{port}", delay_s=0.02, rate_bps=20e6).start()
        self.edge_dials, self.hosts = f"127.0.0.1:{self.via}", []

    def exec(self, cmd):
        return cmd

    def cut(self):
        self.proxy.cut()

    def restore(self):
        self.proxy.restore()

    def close(self):
        self.proxy.stop()


class _NetnsWan:
    """The cloud in its own network namespace: veth + tbf 20 Mbit/s, the proxy (20 ms each way) inside it;
    the cut blackholes the path (nothing is reset: the edge notices by its own timeouts)."""

    cut_s = max(CUT_S, 4.0)

    def __init__(self, port: int) -> None:
        self.wan = EmulatedWan(rate_mbit=20, delay_ms=20).__enter__()
        self.edge_dials = self.wan.proxy(port, free_port())
        self.hosts = [self.wan.cloud_ip]
        self.exec, self.cut, self.restore = self.wan.exec, self.wan.cut, self.wan.restore

    def close(self):
        self.wan.close()


def refused_over_the_wan(tmp_path, endpoint: str) -> None:
    import json

    import zenoh
    from user_link.config import load_link_config
    from user_link.session import LinkError, open_session

    plain = zenoh.Config()
    for key, value in {"mode": "client", "connect/endpoints": [f"tcp/{endpoint}"], "connect/timeout_ms": 2000,
                       "scouting/multicast/enabled": False}.items():
        plain.insert_json5(key, json.dumps(value))
    with pytest.raises(zenoh.ZError, match="Unable to connect"):
        zenoh.open(plain).close()
    rogue = tmp_path / "rogue"
    make_link_certs(rogue, ["site1"])
    cfg = load_link_config(tmp_path / "link-edge.yaml", {"connect_timeout_s": 2.0, "tls": {
        "ca": str(tmp_path / "certs" / "ca.pem"), "cert": str(rogue / "edge-site1.pem"),
        "key": str(rogue / "edge-site1.key")}})
    with pytest.raises(LinkError, match="could not reach a router"):
        open_session(cfg).close()


@pytest.mark.parametrize("kind", ["proxy", "netns"])
def test_a_cut_link_loses_no_transition(procs, ros_node, tmp_path, monkeypatch, kind):
    why = EmulatedWan.unavailable()
    if kind == "netns" and why:
        print(f"SKIP netns: {why}")
        pytest.skip(f"no emulated WAN with namespaces here: {why}; the proxy variant runs instead")
    if kind == "proxy" and not why and not os.environ.get("USER_LINK_BOTH"):
        print("SKIP proxy: the netns variant runs here and has the proxy inside (USER_LINK_BOTH=1 runs both)")
        pytest.skip("the netns variant covers it here (USER_LINK_BOTH=1 runs both)")
    monkeypatch.chdir(tmp_path)   # the learner writes runs/ relative to its working directory
    cfg = learning_config_dir(tmp_path)
    port = free_port()
    cloud_domain = str(next_domain_id())
    wan = _ProxyWan(port) if kind == "proxy" else _NetnsWan(port)
    certs = tmp_path / "certs"
    make_link_certs(certs, ["site1"], wan.hosts)
    try:
        transitions = Collect(ros_node, Transition, "/user/transitions")   # the edge's domain
        acks = Collect(ros_node, TransitionAck, "/user/transitions/ack")    # as they come back over the link
        beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat")
        link_cloud = procs.start("link_cloud", wan.exec(node_cmd("link_node", {
            "config": link_config(tmp_path, certs, "cloud", f"127.0.0.1:{port}"), "poll_s": 0.2}, pkg="user_link")),
            ROS_DOMAIN_ID=cloud_domain)
        link_cloud.wait_for("link up", 30)
        link_edge = procs.start("link_edge", node_cmd("link_node", {
            "config": link_config(tmp_path, certs, "edge", wan.edge_dials), "poll_s": 0.2}, pkg="user_link"))
        link_edge.wait_for("link: connected", 30)
        if kind == "netns":   # the router across the emulated WAN refuses plain TCP and a foreign certificate
            refused_over_the_wan(tmp_path, wan.edge_dials)
        graph = str(cfg / "franka_sac.yaml")
        edge = procs.start("edge", userctl_cmd("launch", graph, "run_name:=test", "realtime_factor:=0",
                                               "--skip", "user/learner"))
        cloud = procs.start("cloud", wan.exec(userctl_cmd("launch", graph, "run_name:=test", "realtime_factor:=0",
                                                          "--only", "user/learner")), ROS_DOMAIN_ID=cloud_domain)
        # cut the link once the cloud has stored some transitions, for CUT_S, while the robot keeps producing
        cloud.wait_for(r"env steps [1-9]\d{1,2} ", 120)
        n_cut = len(transitions.msgs)
        wan.cut()
        t_cut = time.monotonic()
        link_edge.wait_for(r"link: no router connected \(reconnecting\)", 30)
        time.sleep(max(0.0, wan.cut_s - (time.monotonic() - t_cut)))
        cut = {(t.episode_id, t.step) for t in transitions.msgs[n_cut:]}
        with beats.lock:
            held = max((b.unacked_transitions for b in beats.msgs[-5:]), default=0)
        cut_for = time.monotonic() - t_cut
        wan.restore()
        assert cut, "the robot stopped producing while the link was cut"
        assert held > 0, "the robot's outbox must hold what the cloud could not acknowledge"
        link_edge.wait_for("link: connected", 60)

        def acked() -> set:
            with acks.lock:
                return {(e, s) for a in acks.msgs for e, s in zip(a.episode_ids, a.steps)}

        end = time.monotonic() + 90
        while not cut <= acked() and time.monotonic() < end:
            time.sleep(0.2)
        assert cut <= acked(), f"{len(cut - acked())} of the {len(cut)} transitions made during the cut were " \
                               f"never acknowledged from the cloud"
        edge.popen.send_signal(signal.SIGINT)
        edge.popen.wait(timeout=30)
        cloud.popen.send_signal(signal.SIGINT)
        cloud.popen.wait(timeout=30)
    finally:
        wan.close()
    assert re.search(r"updates \d*[1-9]", cloud.output()), cloud.output()[-3000:]
    bag = TransitionStore(tmp_path / "runs/test/replay", writable=False)
    v = bag.snapshot()
    stored = {(e, s) for e, s in zip(v["episode"].tolist(), v["step"].tolist())}
    bag.close()
    print(f"{kind}: link cut {cut_for:.1f} s: {len(cut)} transitions made meanwhile (outbox held up to {held}); "
          f"{len(stored)} stored in "
          f"the cloud of {len(transitions.msgs)} made at the edge")
    assert cut <= stored, f"{len(cut - stored)} transitions acknowledged but not in the cloud's bag"
    assert acked() <= stored
    assert max(t.policy_version for t in transitions.msgs) > 1, "the edge never acted with weights from the cloud"
    if kind == "proxy":
        assert wan.proxy.counters.connections >= 2, "the edge must have reconnected through the proxy"
