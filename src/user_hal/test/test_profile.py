"""Robot profiles: the shipped one loads, and every malformed value names its file and key."""
from pathlib import Path

import pytest
import yaml

from user_common.config_schema import ConfigError
from user_hal.profile import load_profile

ROOT = Path(__file__).resolve().parents[3]
SIM_PROFILE = ROOT / "config" / "robot_sim.yaml"


def write(tmp_path, data) -> Path:
    p = tmp_path / "robot_bad.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_shipped_sim_profile_loads():
    prof = load_profile(SIM_PROFILE)
    assert prof.robot.backend == "sim"
    assert prof.robot.control_hz == 10.0
    assert prof.robot.action_scale[:3] == (0.02, 0.02, 0.02)
    assert prof.robot.action_scale[3:6] == (0.1, 0.1, 0.1)
    assert prof.robot.cameras == ["wrist", "side"]
    assert prof.source == str(SIM_PROFILE)


def test_overrides_apply():
    prof = load_profile(SIM_PROFILE, {"robot.realtime_factor": 0.0, "robot.max_episode_steps": 7})
    assert prof.robot.realtime_factor == 0.0
    assert prof.robot.max_episode_steps == 7


@pytest.mark.parametrize("data, key, words", [
    ({"robot": {"control_hz": -1}}, "robot.control_hz", "must be > 0"),
    ({"robot": {"control_hz": "fast"}}, "robot.control_hz", "expected a number"),
    ({"robot": {"contrl_hz": 10}}, "robot.contrl_hz", "unknown key"),
    ({"robot": {"control_hz": 20, "inference_budget_s": 0.05}}, "robot.inference_budget_s",
     "shorter than the control period"),
    ({"robot": {"action_scale": [0.02, 0.02]}}, "robot.action_scale", "expected 7 values"),
    ({"robot": {"safety_box": {"lower": [0.8, 0, 0], "upper": [0.7, 1, 1]}}}, "robot.safety_box.lower[0]",
     "above upper"),
    ({"robot": {"cameras": ["wrist", "wrist"]}}, "robot.cameras", "duplicate"),
    ({"task": {"name": "stacking"}}, "task.name", "must be one of"),
    ({"task": {"start": {"pos": [5.0, 0.0, 0.1]}}}, "task.start.pos", "outside robot.safety_box"),
    ({"task": {"success_radius": 0}}, "task.success_radius", "must be > 0"),
    ({"robot": {"max_episode_steps": 1.5}}, "robot.max_episode_steps", "expected an integer"),
    ({"robot": {"realtime_factor": float("nan")}}, "robot.realtime_factor", "finite"),
    ({"robot": []}, "robot", "expected a mapping"),
])
def test_malformed_profile_names_file_and_key(tmp_path, data, key, words):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert err.value.key == key
    assert str(path) in str(err.value)
    assert words in str(err.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "robot:\n  control_hz: [1,\n")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and "invalid YAML" in str(err.value) and "line" in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_profile(tmp_path / "nope.yaml")
