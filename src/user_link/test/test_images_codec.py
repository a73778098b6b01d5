"""No image crosses twice: the transition codec leaves out obs images the previous next_obs carried, the
other side fills them back byte for byte, and a transition it cannot fill is dropped until resent whole."""
from __future__ import annotations

import json
import shutil
import time

import pytest
from link_helpers import wait_for

pytest.importorskip("zenoh", reason="eclipse-zenoh is not installed (pip install -r requirements.txt)")

from user_link.images import TAG, DedupIn, DedupOut  # noqa: E402


def episode(robot: str = "franka_0", episode_id: int = 1, n: int = 5, size: int = 64, cams: int = 2) -> list:
    """``n`` transitions of one episode with ``cams`` size x size rgb8 images: obs(t+1) == next_obs(t)."""
    import numpy as np
    from sensor_msgs.msg import Image
    from user_msgs.msg import Observation, Transition

    rng = np.random.default_rng(episode_id)
    frames = [[rng.integers(0, 255, size * size * 3, dtype=np.uint8).tobytes() for _ in range(cams)]
              for _ in range(n + 1)]

    def obs(s: int) -> Observation:
        imgs = [Image(height=size, width=size, encoding="rgb8", step=3 * size, data=f) for f in frames[s]]
        return Observation(robot_id=robot, episode_id=episode_id, step=s, proprio=[0.1 * s, 2.0],
                           camera_names=[f"cam{i}" for i in range(cams)], images=imgs)

    return [Transition(robot_id=robot, embodiment="franka_fr3", episode_id=episode_id, step=s, obs=obs(s),
                       action=[0.5, -0.5], reward=float(s == n - 1), success=s == n - 1, terminated=s == n - 1,
                       next_obs=obs(s + 1)) for s in range(n)]


def cdr(msg) -> bytes:
    from rclpy.serialization import serialize_message

    return serialize_message(msg)


def through(out: DedupOut, inn: DedupIn, msg) -> tuple[int, object]:
    """Encode on the edge, decode on the cloud as the bridge does; (bytes sent, the message published).
    Messages are compared decoded: rclpy leaves CDR alignment padding uninitialized, so two serializations
    of one message may differ in those bytes."""
    from rclpy.serialization import deserialize_message

    [(payload, att)] = out.encode(cdr(msg))
    back = payload if att is None else inn.decode(payload, att)[0]
    return len(payload), deserialize_message(back, type(msg))


def test_every_transition_arrives_byte_for_byte_with_each_image_sent_once():
    out, inn = DedupOut(), DedupIn()
    sent = raw = 0
    for ep in (1, 2):
        for msg in episode(episode_id=ep):
            n, back = through(out, inn, msg)
            assert back == msg
            sent, raw = sent + n, raw + len(cdr(msg))
    # 2 episodes x 5 transitions x 2 cameras: the first obs of each episode and every next_obs cross, the
    # other 8 obs images per episode are references
    assert out.stats["images"] == 20 and out.stats["images_left_out"] == 16
    assert inn.stats == {"filled": 16, "dropped": 0}
    assert sent < 0.62 * raw, (sent, raw)   # 12 of 20 images per episode cross


def test_robots_are_kept_apart_and_a_transition_without_images_is_plain():
    out, inn = DedupOut(), DedupIn()
    a, b = episode("franka_0", 1, n=3), episode("franka_1", 1, n=3)
    for ma, mb in zip(a, b):
        assert through(out, inn, ma)[1] == ma and through(out, inn, mb)[1] == mb
    assert out.stats["images_left_out"] == 8
    plain = episode(cams=0, n=1)[0]
    assert out.encode(cdr(plain)) == [(cdr(plain), None)]


def test_a_reference_the_cloud_cannot_fill_is_dropped_and_the_resend_crosses_whole():
    out, inn = DedupOut(), DedupIn()
    t0, t1, t2 = episode(n=3)
    out.encode(cdr(t0))                          # lost on a cut link: the cloud never saw it
    [(payload, att)] = out.encode(cdr(t1))
    assert len(json.loads(att[len(TAG):])["refs"]) == 2
    with pytest.raises(ValueError, match="resends it whole"):
        inn.decode(payload, att)
    assert inn.stats["dropped"] == 1
    # the robot's outbox resends t0 and t1 (not acknowledged): a resend always crosses whole
    assert through(out, inn, t0)[1] == t0
    n1, back = through(out, inn, t1)
    assert back == t1 and out.stats["resent_whole"] == 2
    n2, back = through(out, inn, t2)             # a first send again: its obs images are references
    assert back == t2 and n2 < 0.6 * n1


def test_after_a_reconnect_the_first_transition_crosses_whole():
    out, inn = DedupOut(), DedupIn()
    t0, t1 = episode(n=2)
    through(out, inn, t0)
    out.on_reconnect()
    data = cdr(t1)
    [(payload, att)] = out.encode(data)
    assert json.loads(att[len(TAG):])["refs"] == [] and payload == data


def test_a_corrupt_attachment_is_refused():
    inn = DedupIn()
    with pytest.raises(ValueError, match="not an image-dedup attachment"):
        inn.decode(cdr(episode(n=1)[0]), b"zz")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH: no certificates")
def test_through_link_nodes_each_image_crosses_once(link):
    """A real edge and cloud link node: an episode of camera transitions arrives byte for byte while the
    edge sends about half the bytes (the obs images are references)."""
    import json as _json

    from std_msgs.msg import String
    from user_common import qos
    from user_link.bridge import STATUS_TOPIC
    from user_msgs.msg import Transition

    cloud, c = link("cloud")
    edge, e = link("edge", "site1")
    got = c.collect(Transition, "/user/transitions", qos.TRANSITIONS_IN)
    status = e.collect(String, STATUS_TOPIC, qos.LATCHED)
    pub = e.node.create_publisher(Transition, "/user/transitions", qos.DATA)
    msgs = episode(n=20, size=96)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20), edge.output()[-2000:]
    t_status = time.time()
    for m in msgs:
        pub.publish(m)
        time.sleep(0.02)
    assert wait_for(lambda: len(got) >= len(msgs), 30), \
        f"{len(got)}/{len(msgs)} crossed; edge:\n{edge.output()[-2000:]}\ncloud:\n{cloud.output()[-2000:]}"
    assert got[:len(msgs)] == msgs
    assert wait_for(lambda: any(_json.loads(s.data)["time"] > t_status + 1 and _json.loads(s.data)["sent_msgs"]
                                >= len(msgs) for s in status), 10)
    st = _json.loads(status[-1].data)
    raw = sum(len(cdr(m)) for m in msgs)
    print(f"raw {raw} B, sent {st['sent_bytes']} B ({st['sent_bytes'] / raw:.2f})")
    assert st["sent_bytes"] < 0.6 * raw, (st["sent_bytes"], raw)
    assert "Traceback" not in edge.output() + cloud.output()


from test_bridge import link  # noqa: E402,F401  (the fixture: link nodes in their own DDS domains)
