"""What a training run writes to TensorBoard per episode (read back from the event file)."""
from __future__ import annotations

import logging
import types

from user_msgs.msg import EpisodeStats

from user_learner.progress import Progress


def test_episodes_log_success_and_human_intervention_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = types.SimpleNamespace(learner=types.SimpleNamespace(log_every_s=60.0))
    progress = Progress(cfg, tmp_path, logging.getLogger("test"))
    for i, (success, steps, human, version) in enumerate([(False, 100, 0, 3), (True, 40, 10, 7)]):
        progress.episode(EpisodeStats(robot_id="franka_0", episode_id=i, steps=steps, success=success,
                                      intervention_steps=human, policy_version=version))
    progress._writer.flush()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    series = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert series["episode/success"] == [0.0, 1.0]
    assert series["episode/intervention_steps"] == [0.0, 10.0]
    assert series["episode/intervention_rate"] == [0.0, 0.25]
    assert series["episode/policy_version"] == [3.0, 7.0]


def test_success_per_embodiment_in_the_log_the_summary_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = []
    logger = types.SimpleNamespace(info=lines.append, warning=lines.append)
    cfg = types.SimpleNamespace(learner=types.SimpleNamespace(log_every_s=60.0))
    progress = Progress(cfg, tmp_path, logger)
    for i, (robot, embodiment, success) in enumerate([("franka_0", "franka_fr3", True), ("wxai_0", "wxai", False),
                                                      ("franka_0", "franka_fr3", False), ("wxai_0", "wxai", False)]):
        progress.episode(EpisodeStats(robot_id=robot, episode_id=i, steps=10, success=success), embodiment)
    stats = {"elapsed_s": 1.0, "env_steps": 40, "updates": 5, "version": 1, "inference_version": 1,
             "staleness_mean": 0.0, "staleness_p99": 0.0, "buffer": 40, "first_update_s": 0.5}
    progress.summary(stats, final=True)
    assert "success 25% (last 4) [franka_fr3 50% (last 2 of 2), wxai 0% (last 2 of 2)]" in lines[0], lines
    assert "success per embodiment: franka_fr3 50% (last 2 of 2), wxai 0% (last 2 of 2)" in lines[1], lines
    progress._writer.flush()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    series = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert series["embodiment/franka_fr3/success_rate_20"] == [1.0, 0.5]
    assert series["embodiment/wxai/success"] == [0.0, 0.0]
