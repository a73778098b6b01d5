"""Learning configurations: the shipped ones load; bad values name the file and the key."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from user_common.config_schema import ConfigError
from user_learner.learner_config import load_learner_config

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name, algo, cameras", [("sac_peg", "sac", ()), ("sac_peg_cnn", "sac", ("wrist", "side")),
                                                 ("rlpd_peg", "rlpd", ())])
def test_shipped_configs_load(name, algo, cameras):
    cfg = load_learner_config(ROOT / "config" / f"{name}.yaml")
    spec = cfg.obs.spec()
    assert spec.cameras == cameras and spec.state_dim == 20 and spec.action_dim == 7
    assert cfg.algo_name == algo and cfg.algo.batch_size == 256 and cfg.learner.mode == "async"
    raw = np.zeros(20, np.float32)
    raw[:3] = (0.55, 0.05, 0.15)
    assert np.allclose(cfg.obs.normalizer()(raw)[:3], (1.0, 1.0, 1.0))


def test_the_pick_config_fits_the_pick_robot_and_not_the_peg_robot():
    """sac_pick serves the robot that config/robot_sim_pick.yaml describes (27 proprio values), and the
    peg configs are refused by it with both sides named."""
    from user_msgs.msg import RobotDescription

    from user_hal.core.cell import proprio_names
    from user_hal.profile import load_profile
    from user_hal.tasks.rules import make_task

    prof = load_profile(ROOT / "config" / "robot_sim_pick.yaml")
    robot = RobotDescription(robot_id="franka_0", embodiment="franka_fr3",
                             proprio_names=proprio_names(make_task(prof.task).objects),
                             action_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"])
    pick = load_learner_config(ROOT / "config" / "sac_pick.yaml").obs
    assert pick.spec().mismatch_with_robot(robot) == ""
    assert len(pick.state_offset) == len(pick.state_scale) == 27
    cube = np.zeros(27, np.float32)
    cube[20:23] = (0.6, 0.2, 0.08)
    assert np.allclose(pick.normalizer()(cube)[20:23], (1.0, 1.0, 1.0))
    why = load_learner_config(ROOT / "config" / "sac_peg.yaml").obs.spec().mismatch_with_robot(robot)
    assert "publishes 27 proprio values" in why and "cube_x" in why and "state_dim 20" in why


def test_the_wxai_config_fits_the_widowx_and_the_franka_config_does_not():
    """sac_peg_wxai serves the robot config/robot_wxai.yaml describes (14 proprio values, no wrench); sac_peg
    (20 values) is refused by it with both sides named."""
    from user_msgs.msg import RobotDescription

    from user_hal.core.cell import proprio_names
    from user_hal.profile import load_profile

    prof = load_profile(ROOT / "config" / "robot_wxai.yaml")
    robot = RobotDescription(robot_id="wxai_0", embodiment="wxai", proprio_names=proprio_names((), prof.robot.proprio),
                             action_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"])
    wxai = load_learner_config(ROOT / "config" / "sac_peg_wxai.yaml").obs
    assert wxai.spec().mismatch_with_robot(robot) == ""
    tip = np.zeros(14, np.float32)
    tip[:3] = (0.32, 0.04, 0.11)
    assert np.allclose(wxai.normalizer()(tip)[:3], (1.0, 1.0, 1.0))
    why = load_learner_config(ROOT / "config" / "sac_peg.yaml").obs.spec().mismatch_with_robot(robot)
    assert "publishes 14 proprio values" in why and "state_dim 20" in why and "(wxai)" in why


@pytest.mark.parametrize("data, key, words", [
    ({"learner": {"mode": "fast"}}, "learner.mode", "must be one of"),
    ({"replay": {"kind": "s3"}}, "replay.kind", "must be one of"),
    ({"replay": {"compression": "gzip"}}, "replay.compression", "must be one of"),
    ({"replay": {"demo_ratio": 0.5}}, "replay.demo_ratio", "needs demo_dir"),
    ({"replay": {"demo_ratio": 1.5, "demo_dir": "d"}}, "replay.demo_ratio", "in [0, 1]"),
    ({"replay": {"cache_mb": -1}}, "replay.cache_mb", ">= 0"),
    ({"replay": {"kind": "memory", "interventions": True}}, "replay.interventions", "needs kind bag"),
    ({"learner": {"min_buffer": -1}}, "learner.min_buffer", ">= 0"),
    ({"algo": {"name": "sac", "discount": "high"}}, "algo.discount", "expected a number"),
    ({"algo": {"batch_size": 0}}, "algo.batch_size", "must be > 0"),
    ({"algo": {"name": "ppo"}}, "algo.name", "unknown algorithm 'ppo'; registered: "),
    ({"algo": {"name": "rlpd"}}, "replay.demo_ratio", "algo rlpd learns from demonstrations: set replay.demo_dir"),
    ({"algo": "sac"}, "algo", "expected a mapping with a name"),
    ({"algo": {"name": "sac", "discont": 0.9}}, "algo.discont", "unknown key"),
    ({"sac": {"discount": 0.9}}, "sac", "moved under algo:"),
    ({"obs": {"state_scale": [1.0, 2.0]}}, "obs.state_scale", "state_dim is 20"),
    ({"obs": {"camras": []}}, "obs.camras", "unknown key"),
])
def test_bad_values_name_file_and_key(tmp_path, data, key, words):
    path = tmp_path / "bad_learning.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_learner_config(path)
    assert err.value.key == key and str(path) in str(err.value) and words in str(err.value), str(err.value)


def test_overrides_apply():
    cfg = load_learner_config(ROOT / "config" / "sac_peg.yaml", {"learner.mode": "sync", "learner.max_env_steps": 9})
    assert cfg.learner.mode == "sync" and cfg.learner.max_env_steps == 9


def test_the_mixed_config_serves_both_arms_each_by_its_own_layout():
    """sac_peg_mixed: one policy for the Franka (20 proprio values) and the WidowX (14, no wrench), each robot
    checked against its embodiment's layout, each normalized by its own workspace, plus a one-hot."""
    from user_msgs.msg import RobotDescription

    from user_hal.core.cell import ACTION_NAMES, proprio_names
    from user_hal.profile import load_profile

    cfg = load_learner_config(ROOT / "config" / "sac_peg_mixed.yaml")
    emb, spec = cfg.obs.embodiment_map(), cfg.obs.spec()
    assert emb.embodiments == ("franka_fr3", "wxai") and emb.stored_dim == 20 and spec.state_dim == 22
    robots = {}
    for name in ("robot_sim", "robot_wxai"):
        prof = load_profile(ROOT / "config" / f"{name}.yaml")
        robots[prof.robot.embodiment] = RobotDescription(
            robot_id=f"{prof.robot.embodiment}_0", embodiment=prof.robot.embodiment, action_names=ACTION_NAMES,
            proprio_names=proprio_names((), prof.robot.proprio))
        assert spec.mismatch_with_robot(robots[prof.robot.embodiment], emb) == ""
    franka = np.zeros(20, np.float32)
    franka[:3] = (0.55, 0.05, 0.15)
    wxai = np.zeros(14, np.float32)
    wxai[:3] = (0.32, 0.04, 0.11)
    assert np.allclose(emb.observation("franka_fr3", franka)[[0, 1, 2, 20, 21]], (1, 1, 1, 1, 0))
    assert np.allclose(emb.observation("wxai", wxai)[[0, 1, 2, 20, 21]], (1, 1, 1, 0, 1))
    # the one-embodiment configs keep refusing the other arm; the mixed one refuses an arm it does not know
    odd = RobotDescription(robot_id="ur5_0", embodiment="ur5", proprio_names=robots["wxai"].proprio_names,
                           action_names=ACTION_NAMES)
    assert "its embodiment 'ur5' is not one this policy serves (it serves franka_fr3 (20 proprio values), " \
           "wxai (14))" in spec.mismatch_with_robot(odd, emb)
    with pytest.raises(ValueError, match="per embodiment"):
        cfg.obs.normalizer()


@pytest.mark.parametrize("obs, key, words", [
    ({"state_dim": 20}, "obs.state_dim", "not with embodiments"),
    ({"state_scale": [1.0]}, "obs.state_scale", "not with embodiments"),
    ({"embodiments": {"wxai": {"state_dim": 14}}}, "obs.embodiments.wxai.state_dim", "unknown key"),
    ({"embodiments": {"wxai": {"state_offset": [0.0]}}}, "obs.embodiments.wxai.proprio", "required key is missing"),
    ({"embodiments": {"wxai": {"proprio": ["a", "b"], "state_scale": [1.0]}}}, "obs.embodiments.wxai.state_scale",
     "has 1 values, proprio has 2"),
    ({"embodiments": {"wxai": {"proprio": ["a"], "state_scale": [-1.0]}}}, "obs.embodiments.wxai.state_scale",
     "must be > 0"),
    ({"embodiments": ["wxai"]}, "obs.embodiments", "expected a mapping"),
])
def test_bad_embodiments_name_file_and_key(tmp_path, obs, key, words):
    data = {"obs": {"embodiments": {"franka_fr3": {"proprio": ["x"]}}}}
    data["obs"].update(obs)
    if isinstance(obs.get("embodiments"), dict):
        data["obs"]["embodiments"] = {"franka_fr3": {"proprio": ["x"]}, **obs["embodiments"]}
    path = tmp_path / "bad_mixed.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_learner_config(path)
    assert err.value.key == key and words in str(err.value), str(err.value)
