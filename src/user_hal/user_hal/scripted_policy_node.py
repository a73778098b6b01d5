"""ROS node around ``ScriptedInsertion``: observation in, action out, for one robot."""
from __future__ import annotations

import sys

import numpy as np
from rclpy.node import Node
from user_msgs.msg import Action, Observation

from . import qos
from .config_schema import ConfigError
from .node_main import run_node
from .profile import load_profile
from .scripted_policy import ScriptedInsertion


class ScriptedPolicyNode(Node):
    """Answers every observation of ``robot_id`` with the scripted expert's action."""

    def __init__(self) -> None:
        super().__init__("scripted_policy")
        self.declare_parameter("robot_id", "franka_0")
        self.declare_parameter("profile", "")
        self.declare_parameter("seed", 0)
        self.declare_parameter("noise", 0.0)
        self.robot_id = self.get_parameter("robot_id").value
        path = self.get_parameter("profile").value
        if not path:
            raise ConfigError("<parameters>", "profile", "no robot profile given (parameter 'profile')")
        profile = load_profile(path)
        self.policy = ScriptedInsertion(profile, noise=float(self.get_parameter("noise").value),
                                        seed=int(self.get_parameter("seed").value))
        self.pub = self.create_publisher(Action, qos.robot_topic(self.robot_id, "action"), qos.CONTROL)
        self.create_subscription(Observation, qos.robot_topic(self.robot_id, "observation"), self._on_obs,
                                 qos.CONTROL)

    def _on_obs(self, obs: Observation) -> None:
        a = Action()
        a.header.stamp = obs.header.stamp
        a.robot_id, a.episode_id, a.step = obs.robot_id, obs.episode_id, obs.step
        a.action = self.policy.act(np.asarray(obs.proprio, dtype=np.float64)).astype(np.float32).tolist()
        a.source = Action.SOURCE_SCRIPTED
        self.pub.publish(a)


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(ScriptedPolicyNode, "scripted_policy", args=args))


if __name__ == "__main__":
    main()
