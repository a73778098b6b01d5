"""The robot node's parameters become profile overrides; a bad one is one error naming it."""
import pytest

from user_common.config_schema import ConfigError
from user_hal.robot_io import profile_overrides

DEFAULTS = {"profile": "robot.yaml", "backend": "", "realtime_factor": -1.0, "reward": "profile",
            "reward_source": "profile", "reward_when": "profile", "terminate_on_success": "profile"}


def test_parameters_override_the_profile_only_when_set():
    assert profile_overrides(DEFAULTS) == ("robot.yaml", {})
    path, o = profile_overrides(dict(DEFAULTS, backend="franky", realtime_factor=0, reward="learned",
                                     reward_when="end", terminate_on_success="false"))
    assert o == {"robot.backend": "franky", "robot.realtime_factor": 0.0, "task.reward_source": "classifier",
                 "task.reward_when": "end", "task.terminate_on_success": False}
    assert profile_overrides(dict(DEFAULTS, reward="dense"))[1] == {"task.reward": "dense"}


@pytest.mark.parametrize("key, value, words", [
    ("terminate_on_success", "yes", "terminate_on_success: expected profile, true or false, got 'yes'"),
    ("profile", "", "profile: no robot profile given"),
])
def test_a_bad_parameter_names_itself(key, value, words):
    with pytest.raises(ConfigError, match=words):
        profile_overrides(dict(DEFAULTS, **{key: value}))
