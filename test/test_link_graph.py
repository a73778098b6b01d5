"""The main job split over the link: robots and inference at the edge (one DDS domain), the learner in the
cloud (another), joined by two link nodes over mTLS through the WAN proxy; the link is cut mid-run and
restored, and every transition the robot produced reaches the cloud's replay bag."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time

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
from user_link.wanproxy import WanProxy  # noqa: E402

pytestmark = pytest.mark.timeout(600)
#: how long the link stays cut (the issue's 60 s: USER_LINK_CUT_S=60; the suite keeps it short)
CUT_S = float(os.environ.get("USER_LINK_CUT_S", "4"))


def link_config(tmp_path, certs, role: str, port: int) -> str:
    cfg = yaml.safe_load((tmp_path / "config" / "link.yaml").read_text())
    who = "cloud" if role == "cloud" else "edge-site1"
    cfg.update(role=role, endpoints=[f"tls/127.0.0.1:{port}"], edges={"site1": {"robots": ["franka_0"]}},
               tls={"ca": str(certs / "ca.pem"), "cert": str(certs / f"{who}.pem"), "key": str(certs / f"{who}.key")})
    path = tmp_path / f"link-{role}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cut_link_loses_no_transition(procs, ros_node, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the learner writes runs/ relative to its working directory
    cfg = learning_config_dir(tmp_path)
    certs = tmp_path / "certs"
    make_link_certs(certs, ["site1"])
    port, via = free_port(), free_port()
    cloud_domain = str(next_domain_id())
    proxy = WanProxy(f"127.0.0.1:{via}", f"127.0.0.1:{port}", delay_s=0.02, rate_bps=20e6).start()
    try:
        transitions = Collect(ros_node, Transition, "/user/transitions")   # the edge's domain
        acks = Collect(ros_node, TransitionAck, "/user/transitions/ack")    # as they come back over the link
        beats = Collect(ros_node, RobotStatus, "/user/robots/heartbeat")
        link_cloud = procs.start("link_cloud", node_cmd("link_node", {
            "config": link_config(tmp_path, certs, "cloud", port), "poll_s": 0.2}, pkg="user_link"),
            ROS_DOMAIN_ID=cloud_domain)
        link_cloud.wait_for("link up", 30)
        link_edge = procs.start("link_edge", node_cmd("link_node", {
            "config": link_config(tmp_path, certs, "edge", via), "poll_s": 0.2}, pkg="user_link"))
        link_edge.wait_for("link: connected", 30)
        graph = str(cfg / "franka_sac.yaml")
        edge = procs.start("edge", userctl_cmd("launch", graph, "run_name:=test", "realtime_factor:=0",
                                               "--skip", "user/learner"))
        cloud = procs.start("cloud", userctl_cmd("launch", graph, "run_name:=test", "realtime_factor:=0",
                                                 "--only", "user/learner"), ROS_DOMAIN_ID=cloud_domain)
        # cut the link once the cloud has stored some transitions, for CUT_S, while the robot keeps producing
        cloud.wait_for(r"env steps [1-9]\d{1,2} ", 120)
        n_cut = len(transitions.msgs)
        proxy.cut()
        link_edge.wait_for(r"link: no router connected \(reconnecting\)", 15)
        time.sleep(CUT_S)
        cut = {(t.episode_id, t.step) for t in transitions.msgs[n_cut:]}
        with beats.lock:
            held = max((b.unacked_transitions for b in beats.msgs[-5:]), default=0)
        proxy.restore()
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
        proxy.stop()
    assert re.search(r"updates \d*[1-9]", cloud.output()), cloud.output()[-3000:]
    bag = TransitionStore(tmp_path / "runs/test/replay", writable=False)
    v = bag.snapshot()
    stored = {(e, s) for e, s in zip(v["episode"].tolist(), v["step"].tolist())}
    bag.close()
    print(f"link cut {CUT_S:g} s: {len(cut)} transitions made meanwhile (outbox held up to {held}); {len(stored)} stored in "
          f"the cloud of {len(transitions.msgs)} made at the edge")
    assert cut <= stored, f"{len(cut - stored)} transitions acknowledged but not in the cloud's bag"
    assert acked() <= stored
    assert max(t.policy_version for t in transitions.msgs) > 1, "the edge never acted with weights from the cloud"
    assert proxy.counters.connections >= 2, "the edge must have reconnected through the proxy"
