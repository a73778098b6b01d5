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
