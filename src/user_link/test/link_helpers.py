"""Shared pieces of the user_link tests: the repository's config/link.yaml, a sample Transition, free ports."""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, Callable

LINK_YAML = Path(__file__).resolve().parents[3] / "config" / "link.yaml"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll ``pred`` every 20 ms until it is true or ``timeout`` seconds passed; its last value."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return pred()
        time.sleep(0.02)
    return True


def sample_transition(robot_id: str = "franka_0", step: int = 3) -> Any:
    """A user_msgs/Transition with arrays, strings and a 4x2 rgb8 image in obs and next_obs."""
    from sensor_msgs.msg import Image
    from user_msgs.msg import Observation, Transition

    def obs(s: int) -> Observation:
        img = Image(height=2, width=4, encoding="rgb8", step=12, data=bytes(range(s, s + 24)))
        return Observation(robot_id=robot_id, episode_id=7, step=s, proprio=[0.5, -1.25, float(s)],
                           camera_names=["wrist"], images=[img])

    return Transition(robot_id=robot_id, embodiment="franka_fr3", episode_id=7, step=step, obs=obs(step),
                      action=[0.1, -0.2, 0.3], action_source=0, intervened=True, policy_version=12, reward=1.5,
                      success=True, terminated=True, truncated=False, next_obs=obs(step + 1), reward_source=1)
