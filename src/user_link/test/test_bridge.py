"""The link node between two (then three) real DDS domains over real mTLS zenoh: allow-listed topics cross
byte for byte both ways, the rest stays at the edge, latched samples reach a late edge at once."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from link_helpers import LINK_YAML, free_port, sample_transition, wait_for

pytest.importorskip("zenoh", reason="eclipse-zenoh is not installed (pip install -r requirements.txt)")
if shutil.which("openssl") is None:
    pytest.skip("openssl is not on PATH (apt-get install openssl): no certificates to test with",
                allow_module_level=True)

from user_link.bridge import KINDS, may_be_latched, routes, topic_kind  # noqa: E402
from user_link.certs import make_link_certs  # noqa: E402
from user_link.config import load_link_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "test"))
from hal_helpers import node_cmd, userctl_cmd  # noqa: E402
from ros_isolation import next_domain_id  # noqa: E402


def test_every_default_topic_has_a_kind_and_the_sides_mirror():
    cfg = load_link_config(LINK_YAML)
    for t in ("/user/transitions", "/user/jobs/peg/transitions", "/user/episodes", "/user/robots/description",
              "/user/robots/heartbeat", "/user/policy/weights", "/user/jobs/peg/policy/weights/manifest",
              "/user/transitions/ack", "/user/jobs/peg/transitions/ack"):
        assert topic_kind(t) is not None, t
    assert topic_kind("/user/transitions/ack").type_name == "user_msgs/msg/TransitionAck"
    assert topic_kind("/user/policy/weights/manifest").depth == 1
    assert topic_kind("/user/policy/weights").depth == 1024 and topic_kind("/user/policy/weights").latched
    assert topic_kind("/franka_0/observation") is None and topic_kind("/franka_0/camera/wrist/color/image_raw") is None
    assert routes(cfg) == (cfg.up, cfg.down)
    cfg.role = "cloud"
    assert routes(cfg) == (cfg.down, cfg.up)
    assert may_be_latched("/user/jobs/*/policy/weights") and not may_be_latched("/user/transitions")
    assert len({p for p, _ in KINDS}) == len(KINDS)


class Domain:
    """The test's own node in one DDS domain, spun in a thread."""

    def __init__(self, domain_id: int, name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.id = domain_id
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        threading.Thread(target=self.ex.spin, daemon=True).start()

    def collect(self, msg_type: type, topic: str, qos: Any) -> list:
        got: list = []
        self.node.create_subscription(msg_type, topic, got.append, qos)
        return got

    def close(self) -> None:
        import rclpy

        self.ex.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


class LinkProc:
    """An installed ``link_node`` process in one DDS domain."""

    def __init__(self, cfg: Path, domain_id: int, log: Path) -> None:
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   PYTHONUNBUFFERED="1")
        self.log = log
        self.f = open(log, "w")
        self.p = subprocess.Popen(node_cmd("link_node", {"config": str(cfg), "poll_s": 0.2}, pkg="user_link"),
                                  stdout=self.f, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float) -> None:
        if not wait_for(lambda: text in self.output() or self.p.poll() is not None, timeout) or text not in self.output():
            pytest.fail(f"link node: no {text!r} within {timeout} s (exit {self.p.poll()}):\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.f.close()


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Any]:
    certs = tmp_path / "certs"
    make_link_certs(certs, ["site1", "site2"])
    port = free_port()
    base = yaml.safe_load(LINK_YAML.read_text())
    procs: list[LinkProc] = []
    domains: list[Domain] = []

    def side(role: str, edge: str = "site1", via: int | None = None) -> tuple[LinkProc, Domain]:
        """A link node and the test's node in a fresh domain; an edge dials port ``via`` (a proxy) if given."""
        cfg = dict(base, role=role, endpoints=[f"tls/127.0.0.1:{via or port}"], connect_timeout_s=5.0,
                   edges={"site1": {"robots": ["franka_0"]}, "site2": {"robots": ["franka_1"]}},
                   tls={"ca": str(certs / "ca.pem"),
                        "cert": str(certs / ("cloud.pem" if role == "cloud" else f"edge-{edge}.pem")),
                        "key": str(certs / ("cloud.key" if role == "cloud" else f"edge-{edge}.key"))})
        name = role if role == "cloud" else edge
        path = tmp_path / f"link-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        d = Domain(next_domain_id(), f"test_{name}")
        p = LinkProc(path, d.id, tmp_path / f"link-{name}.log")
        procs.append(p)
        domains.append(d)
        p.wait_for("link up", 30)
        return p, d

    side.port = port
    yield side
    for p in procs:
        p.stop()
    for d in domains:
        d.close()


def test_allow_listed_topics_cross_both_ways_and_the_rest_stays(link):
    from rclpy.serialization import serialize_message
    from user_common import qos
    from user_msgs.msg import Observation, PolicyWeights, RobotDescription, Transition, TransitionAck

    cloud, c = link("cloud")
    edge, e = link("edge", "site1")
    assert cloud.p.poll() is None and edge.p.poll() is None

    # up: a transition, byte for byte; an observation does not cross
    got = c.collect(Transition, "/user/transitions", qos.TRANSITIONS_IN)
    desc_pub = e.node.create_publisher(RobotDescription, "/user/robots/description", qos.LATCHED)
    desc = RobotDescription(robot_id="franka_0", embodiment="franka_fr3")
    desc_pub.publish(desc)
    pub = e.node.create_publisher(Transition, "/user/transitions", qos.DATA)
    obs_pub = e.node.create_publisher(Observation, "/franka_0/observation", qos.CONTROL)
    msg = sample_transition()
    assert wait_for(lambda: pub.publish(msg) or obs_pub.publish(msg.obs) or time.sleep(0.2) or bool(got), 30), \
        f"no transition crossed up; edge:\n{edge.output()[-2000:]}\ncloud:\n{cloud.output()[-2000:]}"
    assert serialize_message(got[0]) == serialize_message(msg)
    assert "sending /user/transitions as user/transitions" in edge.output()
    assert "franka_0/observation" not in edge.output() + cloud.output()
    assert "/franka_0/observation" not in dict(c.node.get_topic_names_and_types())

    # a late reader at the cloud still gets the latched description
    late = c.collect(RobotDescription, "/user/robots/description", qos.ANNOUNCEMENTS_IN)
    assert wait_for(lambda: bool(late), 15), "the cloud's late reader got no robot description"
    assert late[0].robot_id == "franka_0"

    # down: an acknowledgement and a weights chunk
    acks = e.collect(TransitionAck, "/user/transitions/ack", qos.DATA)
    ack_pub = c.node.create_publisher(TransitionAck, "/user/transitions/ack", qos.DATA)
    ack = TransitionAck(consumer="buffer", robot_id="franka_0", episode_ids=[7], steps=[3])
    assert wait_for(lambda: ack_pub.publish(ack) or time.sleep(0.2) or bool(acks), 30), \
        f"no acknowledgement crossed down; cloud:\n{cloud.output()[-2000:]}"
    assert serialize_message(acks[0]) == serialize_message(ack)

    from user_learner.weight_sync import weights_qos

    w = PolicyWeights(policy_name="sac", version=9, chunk_index=0, num_chunks=1, total_bytes=4, sha256="cd" * 32,
                      format="torch_state_dict", data=b"\x01\x02\x03\x04")
    w_pub = c.node.create_publisher(PolicyWeights, "/user/policy/weights", weights_qos(1024))
    w_pub.publish(w)   # once: latched on DDS, the cloud's link node picks it up when it discovers the topic
    w_edge = e.collect(PolicyWeights, "/user/policy/weights", weights_qos(1024))
    assert wait_for(lambda: bool(w_edge), 20), f"no weights reached the edge; cloud:\n{cloud.output()[-2000:]}"
    assert serialize_message(w_edge[0]) == serialize_message(w)

    # a late edge (another site, another DDS domain) gets the newest weights at once, from the cloud's cache
    edge2, e2 = link("edge", "site2")
    w_late = e2.collect(PolicyWeights, "/user/policy/weights", weights_qos(1024))
    assert wait_for(lambda: bool(w_late), 15), f"the late edge got no weights:\n{edge2.output()[-2000:]}"
    assert serialize_message(w_late[0]) == serialize_message(w)
    for p in (cloud, edge, edge2):
        assert p.p.poll() is None and "Traceback" not in p.output(), p.output()[-2000:]


def userctl_link_status(domain: Domain, timeout: float = 5.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain.id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    return subprocess.run(userctl_cmd("link", "status", "--timeout", str(timeout)), capture_output=True, text=True,
                          env=env, timeout=timeout + 30)


def test_status_through_a_wan_and_a_cut_link_comes_back(link):
    """Edge -> WAN proxy (20 ms each way) -> cloud: ``userctl link status`` shows the round trip and the bytes;
    cut, the edge reports it is not connected; restored, it reconnects and transitions cross again."""
    from user_common import qos
    from user_link.wanproxy import WanProxy
    from user_msgs.msg import Transition

    cloud, c = link("cloud")
    via = free_port()
    proxy = WanProxy(f"127.0.0.1:{via}", f"127.0.0.1:{link.port}", delay_s=0.02, rate_bps=20e6).start()
    try:
        edge, e = link("edge", "site1", via=via)
        got = c.collect(Transition, "/user/transitions", qos.TRANSITIONS_IN)
        pub = e.node.create_publisher(Transition, "/user/transitions", qos.DATA)
        msg = sample_transition()

        def crossed(n: int, timeout: float) -> bool:
            return wait_for(lambda: pub.publish(msg) or time.sleep(0.1) or len(got) >= n, timeout)

        assert crossed(1, 30), f"no transition crossed the WAN; edge:\n{edge.output()[-2000:]}"
        r = userctl_link_status(e)
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"link edge (tls/127.0.0.1:{via}): connected, round trip" in r.stdout
        rtt = float(r.stdout.split("round trip ")[1].split(" ms")[0])
        assert rtt >= 40.0, f"round trip {rtt} ms through 2 x 20 ms"
        sending = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("sending"))
        assert "/user/transitions" in sending and "total 0 messages" not in r.stdout.split("sent")[1][:60]
        rc = userctl_link_status(c)
        assert rc.returncode == 0 and "link cloud" in rc.stdout and "router listening" in rc.stdout, rc.stdout

        proxy.cut()
        edge.wait_for("link: no router connected (reconnecting)", 30)
        r = userctl_link_status(e)
        assert r.returncode == 1 and "NOT CONNECTED" in r.stdout, r.stdout + r.stderr
        n = len(got)
        for _ in range(5):
            pub.publish(msg)
            time.sleep(0.1)
        # weights published while the link is cut reach the edge after the restore: its link node asks the
        # cloud's latched cache again when it reconnects
        from user_learner.weight_sync import weights_qos
        from user_msgs.msg import PolicyWeights

        w_edge = e.collect(PolicyWeights, "/user/policy/weights", weights_qos(1024))
        w = PolicyWeights(policy_name="sac", version=4, chunk_index=0, num_chunks=1, total_bytes=3,
                          sha256="ab" * 32, format="torch_state_dict", data=b"\x07\x08\x09")
        c.node.create_publisher(PolicyWeights, "/user/policy/weights", weights_qos(1024)).publish(w)
        cloud.wait_for("sending /user/policy/weights", 10)
        time.sleep(0.5)
        assert not w_edge, "weights crossed a cut link"
        proxy.restore()
        edge.wait_for("link: connected", 60)
        assert crossed(n + 1, 30), "no transition crossed after the link came back"
        assert wait_for(lambda: bool(w_edge), 15), f"no weights after the reconnect:\n{edge.output()[-2000:]}"
        assert w_edge[-1].version == 4 and bytes(w_edge[-1].data) == b"\x07\x08\x09"
        assert cloud.p.poll() is None and edge.p.poll() is None
    finally:
        proxy.stop()
