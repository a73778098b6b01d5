"""The learned reward through real ROS: the reward node (a saved classifier) judges the robot node's
observations, the robot applies its verdicts and records reward_source; the rule decides nothing.

The classifiers here are real saved models with untrained weights: a threshold of 1e-6 makes every verdict a
success and 0.999999 none, so the tests check the plumbing deterministically (tests/test_reward.py and
bench/reward.py check that training gives a classifier worth using).
"""
from pathlib import Path

import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from user_msgs.msg import EpisodeStats, RewardLabel, Transition

from hal_helpers import Collect, node_cmd, profile_with

DATA = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
ALWAYS, NEVER = 1e-6, 0.999999


@pytest.fixture
def model_dir(tmp_path) -> Path:
    import torch

    from user_learner.reward import RewardModel, SuccessClassifier

    torch.manual_seed(0)
    return RewardModel(SuccessClassifier(2, (32, 32)), ["wrist", "side"], (64, 64), 2).save(tmp_path / "model")


def reward_cmd(model: Path, threshold: float) -> list[str]:
    from ament_index_python.packages import get_package_prefix

    exe = Path(get_package_prefix("user_learner")) / "lib" / "user_learner" / "reward_node"
    return [str(exe), "--ros-args", "-p", "robot_ids:=[franka_0]", "-p", f"model:={model}",
            "-p", f"threshold:={threshold}"]


def run_robot(procs, ros_node, tmp_path, model_dir, threshold, when, steps, episodes, reward_node=True):
    prof = profile_with(tmp_path, **{"robot.image_size": [64, 64], "robot.max_episode_steps": steps,
                                     "task.reward_timeout_s": 1.0})
    trans = Collect(ros_node, Transition, "/user/transitions", DATA)
    eps = Collect(ros_node, EpisodeStats, "/user/episodes", DATA)
    labels = Collect(ros_node, RewardLabel, "/franka_0/reward_label", DATA)
    robot = procs.start("robot", node_cmd("robot_node", {
        "robot_id": "franka_0", "profile": str(prof), "realtime_factor": 0.0, "max_episodes": episodes,
        "reward_source": "classifier", "reward_when": when}))
    try:
        eps.wait_matched(60)
    except pytest.fail.Exception:   # say why: a robot that died, or one still starting on a loaded machine
        pytest.fail(f"the robot node's /user/episodes did not match within 60 s; its output:\n{robot.output()[-2000:]}")
    if reward_node:   # after the robot matched: with every verdict a success, episodes take a step
        procs.start("reward", reward_cmd(model_dir, threshold))
        labels.wait_matched(60)
    procs.start("policy", node_cmd("scripted_policy", {"robot_id": "franka_0", "profile": str(prof)}))
    try:
        eps.wait(lambda m: len(m) >= episodes, 90, f"{episodes} episodes")
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}; robot output:\n{robot.output()[-3000:]}")
    assert robot.popen.wait(timeout=20) == 0, robot.output()[-2000:]
    trans.wait(lambda m: sum(t.terminated or t.truncated for t in m) >= episodes, 10, "the last transitions")
    return trans.msgs, eps.msgs, labels.msgs, robot.output()


def by_episode(trans):
    out = {}
    for t in trans:
        out.setdefault(t.episode_id, []).append(t)
    return [sorted(ts, key=lambda t: t.step) for ts in out.values()]


def test_step_mode_a_success_verdict_ends_the_episode(procs, ros_node, tmp_path, model_dir):
    trans, eps, labels, out = run_robot(procs, ros_node, tmp_path, model_dir, ALWAYS, "step", 50, 2)
    # (the episodes may end before the test's subscription to the labels matches: the transitions are the proof)
    assert all(lb.success and lb.source == Transition.REWARD_CLASSIFIER for lb in labels)
    assert all(t.reward_source == Transition.REWARD_CLASSIFIER for t in trans)
    assert all(e.success for e in eps), [(e.success, e.steps) for e in eps]
    for ts in by_episode(trans):
        last = ts[-1]
        assert (last.success, last.terminated, last.truncated, last.reward) == (True, True, False, 1.0)
        assert len(ts) < 10, f"a success verdict on every observation, yet the episode took {len(ts)} steps"
        assert all(t.reward == 0.0 and not t.success for t in ts[:-1])
    assert "reward classifier; the rule says" in out


def test_step_mode_the_rule_does_not_leak(procs, ros_node, tmp_path, model_dir):
    """The scripted expert inserts the peg (the rule's success) but the classifier never agrees: no reward,
    no end before the step limit; the rule's verdict is only logged."""
    trans, eps, labels, out = run_robot(procs, ros_node, tmp_path, model_dir, NEVER, "step", 40, 1)
    assert labels and not any(lb.success for lb in labels)
    (ts,) = by_episode(trans)
    assert len(ts) == 40 and ts[-1].truncated and not ts[-1].terminated
    assert all(t.reward == 0.0 and not t.success and t.reward_source == Transition.REWARD_CLASSIFIER for t in ts)
    assert not eps[0].success
    assert "the rule says success" in out, out[-3000:]


@pytest.mark.parametrize("reward_node", [True, False])
def test_end_mode_judges_the_last_observation(procs, ros_node, tmp_path, model_dir, reward_node):
    """Only the last step's verdict counts; without a reward node the robot counts a failure after
    task.reward_timeout_s and goes on."""
    trans, eps, _labels, out = run_robot(procs, ros_node, tmp_path, model_dir, ALWAYS, "end", 8, 2,
                                         reward_node=reward_node)
    for ts in by_episode(trans):
        assert [t.step for t in ts] == list(range(8))
        assert all(t.reward == 0.0 and not t.success and not t.terminated and not t.truncated for t in ts[:-1])
        last = ts[-1]
        assert last.reward_source == Transition.REWARD_CLASSIFIER
        assert (last.success, last.terminated, last.truncated, last.reward) == (
            (True, True, False, 1.0) if reward_node else (False, False, True, 0.0))
    assert [e.success for e in eps] == [reward_node] * 2
    assert ("no reward verdict" in out) is not reward_node
