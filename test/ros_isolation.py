"""Give each test its own ROS 2 domain so parallel runs and other users never cross-talk."""
from __future__ import annotations

import contextlib
import itertools
import os
from typing import Iterator

_counter = itertools.count()


def next_domain_id() -> int:
    # Fast DDS supports domain ids 0..232; spread by pid so concurrent test sessions rarely collide.
    return 1 + (os.getpid() * 37 + next(_counter) * 11) % 200


@contextlib.contextmanager
def isolated_ros_env() -> Iterator[dict[str, str]]:
    """Set ROS_DOMAIN_ID / localhost discovery in os.environ for the block; yield a copy for children."""
    keys = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "PYTHONUNBUFFERED")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["ROS_DOMAIN_ID"] = str(next_domain_id())
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    os.environ["PYTHONUNBUFFERED"] = "1"
    try:
        yield dict(os.environ)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
