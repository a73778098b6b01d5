"""Several embodiments, one policy input: the common row, normalization per embodiment, the one-hot, and
robots that do not fit."""
from __future__ import annotations

import types

import numpy as np
import pytest

from user_common.embodiments import EmbodimentLayout, EmbodimentMap, EmbodimentMismatch
from user_common.features import Features

POSE = ("x", "y", "z")
ARM = EmbodimentLayout(proprio=(*POSE, "grip", "force"), state_offset=(0.5, 0.0, 0.1, 0.04, 0.0),
                       state_scale=(0.05, 0.05, 0.05, 0.04, 10.0))
SMALL = EmbodimentLayout(proprio=(*POSE, "grip"), state_offset=(0.28, 0.0, 0.07, 0.015),
                         state_scale=(0.04, 0.04, 0.04, 0.01))
MAP = EmbodimentMap({"arm": ARM, "small": SMALL})


def robot(embodiment: str, proprio: tuple[str, ...], robot_id: str = "r_0"):
    return types.SimpleNamespace(robot_id=robot_id, embodiment=embodiment, proprio_names=list(proprio),
                                 action_names=["a"] * 7, cameras=[])


def test_the_common_row_is_the_union_of_the_named_values():
    assert MAP.names == ("x", "y", "z", "grip", "force") and MAP.stored_dim == 5 and MAP.input_dim == 7
    assert MAP.stored("small", np.array([1, 2, 3, 4])).tolist() == [1, 2, 3, 4, 0]
    other = EmbodimentMap({"small": SMALL, "arm": ARM})   # order of first appearance
    assert other.names == ("x", "y", "z", "grip", "force")


def test_each_embodiment_is_normalized_with_its_own_offset_and_scale_and_one_hot():
    arm = MAP.observation("arm", np.array([0.55, 0.05, 0.15, 0.08, 20.0]))
    small = MAP.observation("small", np.array([0.32, 0.04, 0.11, 0.025]))
    assert np.allclose(arm, [1, 1, 1, 1, 2, 1, 0])
    assert np.allclose(small, [1, 1, 1, 1, 0, 0, 1]), "a value the body lacks stays 0; then its one-hot"
    rows = np.stack([MAP.stored("arm", [0.55, 0.05, 0.15, 0.08, 20.0]), MAP.stored("small", [0.32, 0.04, 0.11, 0.025])])
    assert np.allclose(MAP.policy_input(rows, np.array(["arm", "small"], object)), np.stack([arm, small]))


def test_without_normalization_the_raw_values_pass():
    plain = EmbodimentMap({"a": EmbodimentLayout(proprio=("p", "q"))})
    assert plain.observation("a", np.array([3.0, -2.0])).tolist() == [3.0, -2.0, 1.0]


@pytest.mark.parametrize("call, words", [
    (lambda: MAP.stored("ur5", [0.0] * 4), "embodiment 'ur5' is not in the config (it has arm (5 proprio values), small (4))"),
    (lambda: MAP.stored("small", [0.0] * 5), "proprio has 5 values, the config's small layout has 4"),
    (lambda: MAP.policy_input(np.zeros((1, 5)), ["ur5"]), "embodiment 'ur5' is not in the config"),
    (lambda: MAP.policy_input(np.zeros((2, 4)), ["arm", "arm"]), "rows: expected [2, 5], got [2, 4]"),
])
def test_data_of_an_unknown_body_or_layout_is_refused(call, words):
    with pytest.raises(EmbodimentMismatch) as err:
        call()
    assert words in str(err.value), str(err.value)


def test_a_robot_that_does_not_fit_is_refused_naming_it_its_embodiment_and_what_is_accepted():
    spec = Features(state_dim=MAP.input_dim)
    assert spec.mismatch_with_robot(robot("small", SMALL.proprio), MAP) == ""
    assert spec.mismatch_with_robot(robot("arm", ARM.proprio), MAP) == ""
    why = spec.mismatch_with_robot(robot("ur5", POSE, "ur5_0"), MAP)
    assert why == ("robot ur5_0 (ur5): its embodiment 'ur5' is not one this policy serves "
                   "(it serves arm (5 proprio values), small (4))"), why
    why = spec.mismatch_with_robot(robot("small", ARM.proprio, "small_1"), MAP)
    assert why.startswith("robot small_1 (small): it publishes 5 proprio values (x, y, z, grip, force), the "
                          "config's small layout has 4 (x, y, z, grip)"), why
    why = spec.mismatch_with_robot(robot("small", ("x", "y", "z", "width")), MAP)
    assert "its proprio value 3 is 'width', the config's small layout has 'grip' there" in why, why


@pytest.mark.parametrize("layout, words", [
    (EmbodimentLayout(proprio=()), "b.proprio: must name at least one value"),
    (EmbodimentLayout(proprio=("x", "x")), "b.proprio: names must be unique"),
    (EmbodimentLayout(proprio=("x",), state_offset=(1.0, 2.0)), "b.state_offset: has 2 values, proprio has 1"),
    (EmbodimentLayout(proprio=("x",), state_scale=(0.0,)), "b.state_scale: must be > 0"),
])
def test_bad_layouts_are_refused_by_key(layout, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        EmbodimentMap({"a": ARM, "b": layout})
