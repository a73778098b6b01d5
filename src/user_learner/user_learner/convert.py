"""user_msgs -> numpy: observations and transitions as the learner and the policy consume them."""
from __future__ import annotations

import numpy as np

from user_hal.ros_convert import msg_to_image

from .batch import ObsSpec
from .replay import TransitionArrays


class ObservationMismatch(ValueError):
    """An observation does not fit the policy's ObsSpec (wrong proprio size, missing camera...)."""


def observation_arrays(obs, spec: ObsSpec, normalize=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(state, pixels)`` of a ``user_msgs/Observation``; pixels ordered as ``spec.cameras``.

    ``normalize`` (e.g. ``ObsConfig.normalizer()``) maps the raw proprio to what the policy sees.
    """
    state = np.asarray(obs.proprio, dtype=np.float32)
    if state.shape[0] != spec.state_dim:
        raise ObservationMismatch(f"{obs.robot_id}: proprio has {state.shape[0]} values, policy expects "
                                  f"{spec.state_dim}")
    if normalize is not None:
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


def transition_arrays(msg, spec: ObsSpec, normalize=None) -> TransitionArrays:
    """A ``user_msgs/Transition`` as ``TransitionArrays`` (states normalized like observations)."""
    state, pixels = observation_arrays(msg.obs, spec, normalize)
    next_state, next_pixels = observation_arrays(msg.next_obs, spec, normalize)
    action = np.asarray(msg.action, dtype=np.float32)
    if action.shape[0] != spec.action_dim:
        raise ObservationMismatch(f"{msg.robot_id}: action has {action.shape[0]} values, policy expects "
                                  f"{spec.action_dim}")
    return TransitionArrays(
        state=state, action=action, reward=float(msg.reward), terminated=bool(msg.terminated),
        next_state=next_state, pixels=pixels, next_pixels=next_pixels, robot_id=msg.robot_id,
        episode_id=int(msg.episode_id), step=int(msg.step), policy_version=int(msg.policy_version),
        intervened=bool(msg.intervened),
    )
