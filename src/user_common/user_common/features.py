"""What a policy observes and outputs: one description of sizes and names, shared by the learning config,
the inference and learner nodes, the replay buffers, and the check against the robots they serve.

A batch (``empty``) is a dict of numpy arrays; with ``B`` transitions, ``n`` cameras of ``H x W``:

=================  =========  ==============================  =====================================
key                dtype      shape                           meaning
=================  =========  ==============================  =====================================
``state``          float32    ``[B, state_dim]``              proprioception at time t
``pixels``         uint8      ``[B, n, H, W, 3]``             RGB images at t (only with cameras)
``action``         float32    ``[B, action_dim]``             action taken at t, in ``[-1, 1]``
``reward``         float32    ``[B]``                         reward for (t, action)
``terminated``     float32    ``[B]``                         1 = true end, do not bootstrap
``next_state``     float32    ``[B, state_dim]``              proprioception at t + 1
``next_pixels``    uint8      ``[B, n, H, W, 3]``             images at t + 1 (only with cameras)
=================  =========  ==============================  =====================================

Pixels stay ``uint8`` all the way into the image encoder, so the learner trains on exactly the bytes
the policy saw; a time-limit truncation is *not* ``terminated`` (it still bootstraps).

A batch carries these as well when ``extras`` names them (an algorithm that needs them asks):
``intervened`` (float32, 1 = a human acted), ``action_source`` (uint8, ``Action.SOURCE_*``),
``policy_version`` (int64), ``robot_id`` and ``embodiment`` (numpy arrays of ``str``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .embodiments import EmbodimentMap

#: keys holding images (uint8); every other batch key is float32
PIXEL_KEYS = ("pixels", "next_pixels")
#: keys every batch carries, whatever the observation
BASE_KEYS = ("state", "action", "reward", "terminated", "next_state")
#: keys a batch carries on request (``Features.extras``), with their dtypes
EXTRA_KEYS = {"intervened": np.float32, "action_source": np.uint8, "policy_version": np.int64,
              "robot_id": object, "embodiment": object}


class FeatureMismatch(ValueError):
    """A policy's features and a robot's do not fit; the message names both sides."""


@dataclasses.dataclass(frozen=True)
class Features:
    """Sizes of one policy's observation and action."""

    state_dim: int                                  # proprio length (Franka: pose, velocity, gripper, wrench = 20)
    action_dim: int = 7
    cameras: tuple[str, ...] = ()                   # () -> state-only policy
    image_size: tuple[int, int] = (128, 128)        # (width, height) of every camera image
    extras: tuple[str, ...] = ()                    # EXTRA_KEYS a batch carries besides the usual ones

    @property
    def n_cameras(self) -> int:
        return len(self.cameras)

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        """Shape of one observation's pixels, ``(n_cameras, height, width, 3)``."""
        width, height = self.image_size
        return (len(self.cameras), height, width, 3)

    def batch_keys(self) -> tuple[str, ...]:
        """The keys a training batch holds."""
        return BASE_KEYS + (PIXEL_KEYS if self.cameras else ()) + tuple(self.extras)

    def bytes_per_transition(self) -> int:
        n = 4 * (2 * self.state_dim + self.action_dim + 2)
        if self.cameras:
            n += 2 * int(np.prod(self.image_shape))
        return n + 16 * len(self.extras)

    def empty(self, n: int) -> dict[str, np.ndarray]:
        """Uninitialized batch arrays for ``n`` transitions."""
        out = {"state": np.empty((n, self.state_dim), np.float32),
               "next_state": np.empty((n, self.state_dim), np.float32),
               "action": np.empty((n, self.action_dim), np.float32),
               "reward": np.empty(n, np.float32), "terminated": np.empty(n, np.float32)}
        if self.cameras:
            out["pixels"] = np.empty((n, *self.image_shape), np.uint8)
            out["next_pixels"] = np.empty((n, *self.image_shape), np.uint8)
        for key in self.extras:
            out[key] = np.empty(n, EXTRA_KEYS[key])
        return out

    def validate(self) -> None:
        """Raise ``ValueError("key: problem")`` if these features are unusable."""
        if self.state_dim < 0:
            raise ValueError(f"state_dim: must be >= 0, got {self.state_dim}")
        if self.state_dim == 0 and not self.cameras:
            raise ValueError("state_dim: must be > 0 when there are no cameras")
        if self.action_dim <= 0:
            raise ValueError(f"action_dim: must be > 0, got {self.action_dim}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: names must be unique, got {list(self.cameras)}")
        unknown = [k for k in self.extras if k not in EXTRA_KEYS]
        if unknown:
            raise ValueError(f"extras: unknown batch keys {unknown} (known: {', '.join(EXTRA_KEYS)})")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            # the conv trunk needs a few pixels left after its strided layers
            raise ValueError(f"image_size: must be (width, height), each >= 32, got {self.image_size}")

    def describe(self) -> str:
        w, h = self.image_size
        cams = f"cameras [{', '.join(f'{c} {w}x{h}' for c in self.cameras)}]" if self.cameras else "no cameras"
        return f"state_dim {self.state_dim}, {self.action_dim} actions, {cams}"

    def mismatch_with_robot(self, robot: Any, embodiments: EmbodimentMap | None = None) -> str:
        """Why this policy cannot serve the robot a ``user_msgs/RobotDescription`` describes ('' if it can);
        with ``embodiments`` the robot's embodiment and proprio layout must be one the map accepts."""
        problems = []
        if embodiments is not None:
            why = embodiments.proprio_problem(robot.embodiment, robot.proprio_names)
            if why:
                problems.append(why)
        elif len(robot.proprio_names) != self.state_dim:
            problems.append(f"it publishes {len(robot.proprio_names)} proprio values "
                            f"({', '.join(robot.proprio_names)}), the policy takes state_dim {self.state_dim}")
        if len(robot.action_names) != self.action_dim:
            problems.append(f"it takes {len(robot.action_names)} actions ({', '.join(robot.action_names)}), "
                            f"the policy outputs {self.action_dim}")
        cams = {c.name: c for c in robot.cameras}
        w, h = self.image_size
        for name in self.cameras:
            cam = cams.get(name)
            if cam is None:
                problems.append(f"it has no camera {name!r} (it has {', '.join(cams) or 'none'})")
            elif (cam.width, cam.height) != (w, h) or cam.encoding != "rgb8":
                problems.append(f"its camera {name!r} is {cam.width}x{cam.height} {cam.encoding}, the policy "
                                f"takes {w}x{h} rgb8")
        if not problems:
            return ""
        return f"robot {robot.robot_id} ({robot.embodiment}): {'; '.join(problems)}"
