"""user_msgs -> numpy: observations as the policy consumes them."""
from __future__ import annotations

import numpy as np

from user_common.embodiments import EmbodimentMap, EmbodimentMismatch
from user_common.features import Features
from user_common.ros_convert import msg_to_image


class ObservationMismatch(ValueError):
    """An observation does not fit the policy's Features (wrong proprio size, missing camera...)."""


def observation_arrays(obs, spec: Features, normalize=None, embodiments: EmbodimentMap | None = None,
                       embodiment: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """``(state, pixels)`` of a ``user_msgs/Observation``; pixels ordered as ``spec.cameras``.

    ``normalize`` (e.g. ``ObsConfig.normalizer()``) maps the raw proprio to what the policy sees; with
    ``embodiments`` (several bodies, one policy) the map does, by the robot's ``embodiment``.
    """
    state = np.asarray(obs.proprio, dtype=np.float32)
    if embodiments is not None:
        try:
            state = embodiments.observation(embodiment, state)
        except EmbodimentMismatch as exc:
            raise ObservationMismatch(f"{obs.robot_id}: {exc}") from None
    elif state.shape[0] != spec.state_dim:
        raise ObservationMismatch(f"{obs.robot_id}: proprio has {state.shape[0]} values, policy expects "
                                  f"{spec.state_dim}")
    elif normalize is not None:
        state = normalize(state)
    if not spec.cameras:
        return state, None
    names = list(obs.camera_names)
    frames = []
    w, h = spec.image_size
    for cam in spec.cameras:
        if cam not in names:
            raise ObservationMismatch(f"{obs.robot_id}: observation has no camera {cam!r} (has {names})")
        img = msg_to_image(obs.images[names.index(cam)])
        if img.shape != (h, w, 3):
            raise ObservationMismatch(f"{obs.robot_id}: camera {cam!r} is {img.shape[1]}x{img.shape[0]}, "
                                      f"policy expects {w}x{h}")
        frames.append(img)
    return state, np.stack(frames)
