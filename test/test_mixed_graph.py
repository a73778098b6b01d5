"""One policy, two bodies, through the real graph: a simulated Franka and a simulated WidowX AI, one
inference node each and one learner on config/sac_peg_mixed.yaml (docs/embodiments.md)."""
from __future__ import annotations

import collections
import re

import pytest
import yaml
from user_msgs.msg import Action, Transition

from hal_helpers import Collect, learning_config_dir, userctl_cmd

pytestmark = pytest.mark.timeout(200)


def test_franka_and_widowx_train_one_policy_and_report_success_per_embodiment(procs, ros_node, tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)   # the learner writes runs/ and logs/ here
    cfg = learning_config_dir(tmp_path)   # short Franka episodes, no cameras
    mixed = yaml.safe_load((cfg / "sac_peg_mixed.yaml").read_text())
    mixed["learner"].update({"min_buffer": 100, "publish_every_updates": 20, "checkpoint_every_updates": 100,
                             "log_every_s": 2.0})
    mixed["algo"].update({"batch_size": 64, "hidden_dims": [64, 64]})
    (cfg / "sac_peg_mixed.yaml").write_text(yaml.safe_dump(mixed))
    wxai = yaml.safe_load((cfg / "robot_wxai.yaml").read_text())
    wxai["robot"].update({"cameras": [], "max_episode_steps": 30})
    (cfg / "robot_wxai.yaml").write_text(yaml.safe_dump(wxai))

    transitions = Collect(ros_node, Transition, "/user/transitions")
    run = procs.start("userctl", userctl_cmd("launch", str(cfg / "franka_sac.yaml"), "franka:=1", "wxai:=1",
                                             "config:=sac_peg_mixed", "run_name:=mixed", "realtime_factor:=0",
                                             "max_env_steps:=600"))
    assert run.popen.wait(timeout=150) == 0, run.output()[-4000:]
    out = run.output()
    assert "node user/learner finished (code 0); stopping the run" in out, out[-4000:]
    assert re.search(r"\[franka_0/inference\].*state 22 \(embodiments franka_fr3 \(20 proprio values\), "
                     r"wxai \(14\)\)", out), out[-4000:]

    with transitions.lock:
        seen = list(transitions.msgs)
    by_robot = collections.defaultdict(set)
    for t in seen:
        by_robot[(t.robot_id, t.embodiment, len(t.obs.proprio))].add(
            t.policy_version if t.action_source == Action.SOURCE_POLICY else 0)
    assert set(by_robot) == {("franka_0", "franka_fr3", 20), ("wxai_0", "wxai", 14)}, sorted(by_robot)
    for robot, versions in by_robot.items():
        assert max(versions) > 1, f"{robot} never acted with learned weights: versions {sorted(versions)}"

    summary = re.search(r"summary: (\d+) env steps, (\d+) updates, (\d+) episodes.*success per embodiment: "
                        r"franka_fr3 \d+% \(last \d+ of (\d+)\), wxai \d+% \(last \d+ of (\d+)\)", out)
    assert summary, out[-4000:]
    steps, updates, _, franka_eps, wxai_eps = map(int, summary.groups())
    # robots at realtime_factor 0 run seconds before the learner is up: a budget past their backlog lets it
    # hear episodes of both embodiments
    assert steps >= 600 and updates > 0 and int(franka_eps) > 0 and int(wxai_eps) > 0
    rejected = re.findall(r"not training on a transition: .*", out)
    assert not rejected, rejected[:3]
    # the launcher's summary: per robot, then per embodiment
    assert re.search(r"^\[userctl\]\s+EMBODIMENT\s+EPISODES\s+SUCCESSES\s+SUCCESS RATE\s+MEAN STEPS$", out, re.M)
    for embodiment in ("franka_fr3", "wxai"):
        assert re.search(rf"^\[userctl\]\s+{embodiment}\s+\d+\s+\d+\s+[\d.]+%\s+[\d.]+$", out, re.M), out[-2000:]


def test_a_robot_whose_embodiment_the_config_does_not_name_is_refused(procs, tmp_path, monkeypatch):
    """A mixed config without the WidowX: its inference node exits 2 naming the robot, its embodiment and
    what the config serves."""
    monkeypatch.chdir(tmp_path)
    cfg = learning_config_dir(tmp_path)
    path = cfg / "sac_peg_mixed.yaml"
    mixed = yaml.safe_load(path.read_text())
    del mixed["obs"]["embodiments"]["wxai"]
    path.write_text(yaml.safe_dump(mixed))
    run = procs.start("userctl", userctl_cmd("launch", str(cfg / "franka_sac.yaml"), "franka:=1", "wxai:=1",
                                             "config:=sac_peg_mixed", "run_name:=refused", "realtime_factor:=0"))
    assert run.popen.wait(timeout=120) == 2, run.output()[-3000:]
    out = run.output()
    assert "node wxai_0/inference refused its configuration (code 2); stopping the run" in out, out[-3000:]
    assert (f"{path}: obs: the policy (state_dim 21, 7 actions, no cameras) cannot serve robot wxai_0 (wxai): "
            f"its embodiment 'wxai' is not one this policy serves (it serves franka_fr3 (20 proprio values))") in out
