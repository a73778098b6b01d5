"""Real serialized user_msgs/Transition messages for the buffer tests and benchmark."""
from __future__ import annotations

import zlib

import numpy as np
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from user_msgs.msg import Observation, Transition

STATE_DIM = 20


def observation(robot_id: str, episode: int, step: int, cams: tuple[str, ...], size: int, seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    o = Observation(robot_id=robot_id, episode_id=episode, step=step)
    o.header.stamp.sec = 1_700_000_000 + step
    o.proprio = rng.standard_normal(STATE_DIM).astype(np.float32).tolist()
    o.camera_names = list(cams)
    for c in cams:
        img = Image(height=size, width=size, encoding="rgb8", step=size * 3)
        img.header.frame_id = c
        img.data = rng.integers(0, 256, size * size * 3, dtype=np.uint8).tobytes()
        o.images.append(img)
    return o


def transition_msg(robot_id: str = "franka_0", episode: int = 1, step: int = 0, *, cams: tuple[str, ...] = (),
                   size: int = 16, last: bool = False, embodiment: str = "franka_fr3",
                   reward: float | None = None, intervened: bool = False) -> Transition:
    """A transition whose contents are a pure function of (robot, episode, step): checkable after a round trip."""
    seed = zlib.crc32(f"{robot_id}/{episode}/{step}".encode())  # stable across processes
    t = Transition(robot_id=robot_id, embodiment=embodiment, episode_id=episode, step=step)
    t.obs = observation(robot_id, episode, step, cams, size, seed)
    t.next_obs = observation(robot_id, episode, step + 1, cams, size, seed + 1)
    t.action = np.linspace(-1, 1, 7, dtype=np.float32).tolist()
    t.reward = float(step) if reward is None else reward
    t.terminated = last
    t.policy_version = step
    t.intervened = intervened
    t.action_source = 1 if intervened else 0   # Action.SOURCE_HUMAN / SOURCE_POLICY
    return t


def transition_bytes(*args, **kwargs) -> bytes:
    return bytes(serialize_message(transition_msg(*args, **kwargs)))


def episode_bytes(robot_id: str, episode: int, steps: int, **kwargs) -> list[bytes]:
    return [transition_bytes(robot_id, episode, s, last=(s == steps - 1), **kwargs) for s in range(steps)]
