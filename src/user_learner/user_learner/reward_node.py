"""The reward node: a learned success classifier judging the robots' observations (edge side).

For each ``robot_ids`` entry it subscribes ``/<id>/observation``, runs the classifier saved in ``model``
(``userctl reward train``; ``user_learner.reward``) on the camera frames it was trained on, and publishes
every verdict as a ``user_msgs/RewardLabel`` on ``/<id>/reward_label`` (``source = REWARD_CLASSIFIER``,
``success = probability >= threshold``). A robot with ``task.reward_source: classifier`` applies them (see
``user_hal.robot_node``); it never waits for this node, so a slow classifier makes labels late, not the robot.
Parameters: ``robot_ids``, ``model`` (folder, required), ``threshold`` (0: the model's own, default 0.85),
``torch_threads`` (1).
"""
from __future__ import annotations

import collections
import sys
import time

import numpy as np
import torch
from rclpy.node import Node
from user_msgs.msg import Observation, RewardLabel, Transition

from user_common import qos
from user_common.config_schema import ConfigError
from user_common.node_main import run_node
from user_common.ros_convert import msg_to_image

from .reward import RewardDataError, RewardModel


class RewardNode(Node):
    """Judges observations of several robots with one classifier."""

    def __init__(self) -> None:
        super().__init__("reward")
        self.declare_parameter("robot_ids", ["franka_0"])
        self.declare_parameter("model", "")
        self.declare_parameter("threshold", 0.0)
        self.declare_parameter("torch_threads", 1)
        path = self.get_parameter("model").value
        if not path:
            raise ConfigError("<parameters>", "model", "no reward model given (parameter 'model', a folder written "
                                                       "by `userctl reward train`)")
        threshold = float(self.get_parameter("threshold").value)
        try:
            self.model = RewardModel.load(path, threshold if threshold > 0 else None)
        except RewardDataError as exc:
            raise ConfigError("<parameters>", "model", str(exc)) from None
        torch.set_num_threads(int(self.get_parameter("torch_threads").value))
        self.robot_ids = [r for r in self.get_parameter("robot_ids").value if r]
        self._pubs = {}
        for rid in self.robot_ids:
            self._pubs[rid] = self.create_publisher(RewardLabel, qos.robot_topic(rid, "reward_label"), qos.CONTROL)
            self.create_subscription(Observation, qos.robot_topic(rid, "observation"), self._on_obs, qos.CONTROL)
        self.judged = 0
        self.successes = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=500)
        w, h = self.model.image_size
        self.get_logger().info(
            f"reward classifier for {', '.join(self.robot_ids)}: cameras {self.model.cameras} at {w}x{h}, "
            f"threshold {self.model.threshold:g}, model {path}")

    def frames(self, obs: Observation) -> np.ndarray | None:
        """``[1, n_cameras, H, W, 3]`` in the model's camera order, or None (logged) if they do not fit."""
        names = list(obs.camera_names)
        w, h = self.model.image_size
        out = []
        for cam in self.model.cameras:
            if cam not in names:
                self.get_logger().error(f"{obs.robot_id}: observation has no camera {cam!r} (has {names}); the "
                                        f"reward model needs {self.model.cameras}", throttle_duration_sec=2.0)
                return None
            img = msg_to_image(obs.images[names.index(cam)])
            if img.shape != (h, w, 3):
                self.get_logger().error(f"{obs.robot_id}: camera {cam!r} is {img.shape[1]}x{img.shape[0]}, the "
                                        f"reward model expects {w}x{h}", throttle_duration_sec=2.0)
                return None
            out.append(img)
        return np.stack(out)[None]

    def _on_obs(self, obs: Observation) -> None:
        pub = self._pubs.get(obs.robot_id)
        if pub is None:
            return
        t0 = time.perf_counter()
        frames = self.frames(obs)
        if frames is None:
            return
        p = float(self.model.probability(frames)[0])
        label = RewardLabel(robot_id=obs.robot_id, episode_id=obs.episode_id, step=obs.step,
                            success=p >= self.model.threshold, probability=p,
                            source=Transition.REWARD_CLASSIFIER)
        pub.publish(label)
        self.judged += 1
        self.successes += int(label.success)
        self.latencies.append(time.perf_counter() - t0)

    def close(self) -> None:
        lat = np.array(tuple(self.latencies))
        p50 = float(np.percentile(lat, 50) * 1e3) if lat.size else 0.0
        # print, not the ROS logger: after Ctrl-C the context (and /rosout) may already be gone
        print(f"[reward] done: {self.judged} observations judged, {self.successes} success verdicts, "
              f"latency p50 {p50:.1f} ms", flush=True)


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(RewardNode, "reward", args=args))


if __name__ == "__main__":
    main()
