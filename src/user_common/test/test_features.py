"""The feature schema: batch arrays, validation, and the check of a policy against a robot's description."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from user_common.features import Features


@dataclasses.dataclass
class Camera:   # the fields of user_msgs/CameraSpec the check reads
    name: str
    width: int = 128
    height: int = 128
    encoding: str = "rgb8"


@dataclasses.dataclass
class Robot:    # the fields of user_msgs/RobotDescription the check reads
    robot_id: str = "franka_0"
    embodiment: str = "franka_fr3"
    proprio_names: list = dataclasses.field(default_factory=lambda: [f"p{i}" for i in range(20)])
    action_names: list = dataclasses.field(default_factory=lambda: ["dx", "dy", "dz", "droll", "dpitch", "dyaw",
                                                                    "gripper"])
    cameras: list = dataclasses.field(default_factory=lambda: [Camera("wrist"), Camera("side")])


def test_empty_batch_arrays_have_the_documented_shapes_and_dtypes():
    f = Features(state_dim=20, action_dim=7, cameras=("wrist", "side"), image_size=(128, 96))
    b = f.empty(4)
    assert set(b) == set(f.batch_keys())
    assert b["pixels"].shape == (4, 2, 96, 128, 3) and b["pixels"].dtype == np.uint8
    assert b["state"].shape == (4, 20) and b["action"].dtype == np.float32
    assert f.image_shape == (2, 96, 128, 3)
    assert f.bytes_per_transition() == 4 * (40 + 7 + 2) + 2 * 2 * 96 * 128 * 3
    assert "pixels" not in Features(state_dim=3).empty(1)


@pytest.mark.parametrize("kw, words", [
    ({"state_dim": 0}, "state_dim: must be > 0 when there are no cameras"),
    ({"state_dim": 3, "action_dim": 0}, "action_dim: must be > 0"),
    ({"state_dim": 3, "cameras": ("a", "a")}, "cameras: names must be unique"),
    ({"state_dim": 3, "cameras": ("a",), "image_size": (16, 16)}, "image_size: must be (width, height), each >= 32"),
])
def test_unusable_features_are_refused_by_key(kw, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Features(**kw).validate()


def test_a_policy_that_fits_its_robot():
    assert Features(state_dim=20, cameras=("side",)).mismatch_with_robot(Robot()) == ""


def test_every_disagreement_is_named_with_both_sides():
    policy = Features(state_dim=19, action_dim=6, cameras=("wrist", "top"), image_size=(64, 64))
    text = policy.mismatch_with_robot(Robot())
    assert text.startswith("robot franka_0 (franka_fr3): ")
    assert "it publishes 20 proprio values (p0, " in text and "the policy takes state_dim 19" in text
    assert "it takes 7 actions (dx, dy, dz, droll, dpitch, dyaw, gripper), the policy outputs 6" in text
    assert "its camera 'wrist' is 128x128 rgb8, the policy takes 64x64 rgb8" in text
    assert "it has no camera 'top' (it has wrist, side)" in text
