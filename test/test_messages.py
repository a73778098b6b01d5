"""user_msgs round trips: CDR serialization of every message, and a real DDS pub/sub of images."""
import threading

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from user_msgs.msg import (Action, CameraSpec, EpisodeStats, Observation, PolicyWeights, RobotDescription,
                           RobotStatus, Transition)
from user_msgs.srv import ListRobots, ResetRobot

from user_common.ros_convert import image_to_msg, msg_to_image


def _observation(rng, step=3) -> Observation:
    o = Observation(robot_id="franka_7", episode_id=2**40 + 5, step=step, evaluation=True)
    o.proprio = rng.standard_normal(20).astype(np.float32).tolist()
    for name in ("wrist", "side"):
        img = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        o.camera_names.append(name)
        o.images.append(image_to_msg(img, o.header.stamp, f"{name}_optical"))
    return o


def test_every_message_survives_cdr_round_trip():
    rng = np.random.default_rng(0)
    obs = _observation(rng)
    msgs = [
        obs,
        Action(robot_id="franka_7", episode_id=9, step=4, action=[0.5, -1.0, 0, 0, 0, 0.25, 1.0],
               policy_version=12, source=Action.SOURCE_HUMAN),
        Transition(robot_id="franka_7", embodiment="franka_fr3", episode_id=9, step=4, obs=obs,
                   next_obs=_observation(rng, 4), action=[0.1] * 7, action_source=Action.SOURCE_POLICY,
                   intervened=False, policy_version=3, reward=1.0, success=True, terminated=True),
        RobotDescription(robot_id="arx_1", embodiment="arx_6dof", backend="sim", dof=6,
                         action_names=["dx"], action_scale=[0.02], proprio_names=["tcp_x"],
                         cameras=[CameraSpec(name="wrist", width=128, height=128, encoding="rgb8")],
                         control_hz=10.0, safety_box_lower=[0.0, 0.0, 0.0], safety_box_upper=[1.0, 1.0, 1.0]),
        RobotStatus(robot_id="arx_1", state=RobotStatus.STATE_RUNNING, achieved_control_hz=9.9),
        EpisodeStats(robot_id="arx_1", episode_id=1, steps=40, episode_return=1.0, success=True),
        PolicyWeights(policy_name="sac", version=7, chunk_index=1, num_chunks=3, total_bytes=10,
                      sha256="ab" * 32, format="torch_state_dict", data=bytes(range(256)) * 4),
    ]
    for m in msgs:
        back = deserialize_message(serialize_message(m), type(m))
        assert back == m, f"{type(m).__name__} changed in a CDR round trip"


def test_images_are_lossless():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    msg = image_to_msg(img, Observation().header.stamp, "cam")
    back = deserialize_message(serialize_message(msg), type(msg))
    assert back.encoding == "rgb8" and back.step == 128 * 3
    np.testing.assert_array_equal(msg_to_image(back), img)


def test_services_have_the_documented_fields():
    req = ResetRobot.Request()
    assert req.seed == -1 and req.evaluation is False
    resp = ListRobots.Response()
    assert list(resp.robots) == [] and list(resp.status) == []


def test_observation_with_images_over_dds(ros_node):
    """A real Fast DDS publish/subscribe in the test's own domain carries the pixels unchanged."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    got: list[Observation] = []
    arrived = threading.Event()

    def on_obs(m: Observation) -> None:
        got.append(m)
        arrived.set()

    ros_node.create_subscription(Observation, "/franka_7/observation", on_obs, qos)
    pub = ros_node.create_publisher(Observation, "/franka_7/observation", qos)
    sent = _observation(np.random.default_rng(2))
    for _ in range(50):  # discovery takes a moment; publish until the subscriber has one
        pub.publish(sent)
        if arrived.wait(0.1):
            break
    if not got:
        pytest.fail("no Observation arrived over DDS within 5 s")
    recv = got[0]
    assert recv.robot_id == "franka_7" and recv.step == 3 and list(recv.camera_names) == ["wrist", "side"]
    for a, b in zip(sent.images, recv.images):
        np.testing.assert_array_equal(msg_to_image(a), msg_to_image(b))
