"""The inference node: observations in, actions out, for every robot it serves (edge side).

For each ``robot_ids`` entry it subscribes ``/<id>/observation`` and answers on ``/<id>/action``
with the current policy of the configured algorithm (``algo.name``), stamping the action with the
policy version. New weights arrive on ``/user/policy/weights`` (transient-local: a late start gets
the newest at once); a worker thread builds a shadow policy from them and the next observation swaps
it in (``serving.PolicyServer``), so weights never change during a forward pass. Each robot draws its
exploration noise from its own generator, seeded from (``seed``, robot id) and kept across swaps.
With no learner around it keeps acting with the last weights it has. Evaluation episodes
(``Observation.evaluation``) get the deterministic action.

A policy with ``chunk_size`` H > 1 returns an action chunk ``[H, A]``: the node asks it only when a
robot needs one (``serving.ChunkScheduler``: the first step of an episode, every ``replan_every`` steps,
and again for a step the robot re-publishes because it held) and answers with one Action carrying the
chunk (``chunk_length`` H, H rows for steps ``step .. step+H-1``) and the policy version; the robot runs
it step by step (``user_hal.chunks``). A policy with ``uses_instruction`` gets the robot's
``RobotDescription.instruction`` as ``act(..., instruction=text)``.
Publishes ``/user/inference/status`` (version in use, latency p50/p99 per policy query) twice a second.

Parameters: ``config`` (learner config, required), ``robot_ids``, ``seed``, ``replan_every`` (steps between
chunk queries; 0, the default: the chunk size, one query per chunk; only used when H > 1).
"""
from __future__ import annotations

import collections
import sys
import time

import numpy as np
import rclpy
import torch
from rclpy.node import Node
from user_msgs.msg import Action, Observation, PolicyStatus, RobotDescription

from user_hal import qos
from user_hal.config_schema import ConfigError
from user_hal.node_main import run_node

from .algos import get_algorithm
from .convert import ObservationMismatch, observation_arrays
from .learner_config import load_learner_config
from .serving import ChunkScheduler, PolicyServer
from .weight_sync import WeightSubscriber


class InferenceNode(Node):
    """Serves one policy to several robots."""

    def __init__(self) -> None:
        super().__init__("inference")
        self.declare_parameter("config", "")
        self.declare_parameter("robot_ids", ["franka_0"])
        self.declare_parameter("seed", 0)
        self.declare_parameter("replan_every", 0)
        path = self.get_parameter("config").value
        if not path:
            raise ConfigError("<parameters>", "config", "no learner config given (parameter 'config')")
        seed = int(self.get_parameter("seed").value)
        # The learner applies the same seed: before its first weights arrive, both hold the same networks.
        self.cfg = load_learner_config(path, {"algo.seed": seed})
        torch.set_num_threads(self.cfg.learner.torch_threads)
        self.spec = self.cfg.obs.spec()
        self.normalize = self.cfg.obs.normalizer()
        algorithm = get_algorithm(self.cfg.algo_name)
        self.robot_ids = [r for r in self.get_parameter("robot_ids").value if r]
        self.server = PolicyServer(lambda: algorithm.policy(self.spec, self.cfg.algo), seed, self.robot_ids)
        try:
            self.scheduler = ChunkScheduler(self.server.chunk_size, int(self.get_parameter("replan_every").value))
        except ValueError as exc:
            raise ConfigError("<parameters>", "replan_every", str(exc)) from None
        self.instructions: dict[str, str] = {}   # robot id -> RobotDescription.instruction
        self.latencies: collections.deque[float] = collections.deque(maxlen=500)
        self.actions_sent = 0
        self.queries = 0
        self._pubs = {}
        for rid in self.robot_ids:
            self._pubs[rid] = self.create_publisher(Action, qos.robot_topic(rid, "action"), qos.CONTROL)
            self.create_subscription(Observation, qos.robot_topic(rid, "observation"), self._on_obs, qos.CONTROL)
        self.weights = WeightSubscriber(self, on_weights=self.server.prepare, policy_name=self.cfg.algo_name)
        # A robot whose description disagrees with the config is refused: exit 2, one line naming both.
        self.create_subscription(RobotDescription, qos.DESCRIPTION_TOPIC, self._on_description, qos.ANNOUNCEMENTS_IN)
        self.pub_status = self.create_publisher(PolicyStatus, qos.POLICY_STATUS_TOPIC, qos.SENSOR)
        self.create_timer(0.5, self._status)
        self.get_logger().info(
            f"inference for {', '.join(self.robot_ids)}: {self.cfg.algo_name}, {len(self.spec.cameras)} cameras "
            f"{list(self.spec.cameras)}, state {self.spec.state_dim}, config {self.cfg.source}"
            + (f", chunks of {self.scheduler.chunk_size} steps, replanning every {self.scheduler.replan_every}"
               if self.scheduler.chunk_size > 1 else ""))

    def _on_description(self, d: RobotDescription) -> None:
        if d.robot_id not in self.server.generators:
            return
        why = self.spec.mismatch_with_robot(d)
        if why:
            raise ConfigError(self.cfg.source, "obs", f"the policy ({self.spec.describe()}) cannot serve {why}")
        self.instructions[d.robot_id] = d.instruction

    @property
    def version(self) -> int:
        return self.server.version

    def _on_obs(self, obs: Observation) -> None:
        t0 = time.perf_counter()
        # Swaps happen only in executor callbacks, which never overlap a forward pass (one
        # single-threaded executor serves observations and the status timer).
        self.server.swap()
        if obs.robot_id not in self.server.generators:
            return
        instruction = self.instructions.get(obs.robot_id)
        if self.server.uses_instruction and instruction is None:
            self.get_logger().warning(f"cannot act for {obs.robot_id}: no RobotDescription (instruction) from it "
                                      f"yet on {qos.DESCRIPTION_TOPIC}", throttle_duration_sec=2.0)
            return
        if not self.scheduler.due(obs.robot_id, obs.episode_id, obs.step):
            return  # the robot's queued chunk covers this step
        try:
            state, pixels = observation_arrays(obs, self.spec, self.normalize)
        except ObservationMismatch as exc:
            self.get_logger().error(f"cannot act: {exc}", throttle_duration_sec=2.0)
            return
        action = np.asarray(self.server.act(obs.robot_id, state, pixels, deterministic=obs.evaluation,
                                            instruction=instruction), dtype=np.float32)
        self.queries += 1
        a = Action()
        a.header.stamp = obs.header.stamp
        a.robot_id, a.episode_id, a.step = obs.robot_id, obs.episode_id, obs.step
        a.chunk_length = action.shape[0] if action.ndim == 2 and action.shape[0] > 1 else 0
        a.action = action.ravel().tolist()
        a.policy_version = self.version
        a.source = Action.SOURCE_POLICY
        pub = self._pubs.get(obs.robot_id)
        if pub is None:
            return
        pub.publish(a)
        self.actions_sent += 1
        self.latencies.append(time.perf_counter() - t0)

    def latency_ms(self) -> tuple[float, float]:
        lat = np.array(tuple(self.latencies))
        if lat.size == 0:
            return 0.0, 0.0
        return float(np.percentile(lat, 50) * 1e3), float(np.percentile(lat, 99) * 1e3)

    def _status(self) -> None:
        self.server.swap()  # a robot waiting for its reset sends no observations: adopt new weights anyway
        s = PolicyStatus()
        s.header.stamp = self.get_clock().now().to_msg()
        s.node = self.get_fully_qualified_name()
        s.policy_version = self.version
        s.actions_sent = self.actions_sent
        s.latency_p50_ms, s.latency_p99_ms = self.latency_ms()
        s.robot_ids = list(self.robot_ids)
        self.pub_status.publish(s)

    def close(self) -> None:
        p50, p99 = self.latency_ms()
        # print, not the ROS logger: after Ctrl-C the context (and /rosout) may already be gone
        print(f"[inference] done: {self.actions_sent} actions ({self.queries} policy queries), policy version "
              f"{self.version}, latency p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        self.weights.close()


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(InferenceNode, "inference", args=args))


if __name__ == "__main__":
    main()
