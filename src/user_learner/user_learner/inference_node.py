"""The inference node: observations in, actions out, for every robot it serves (edge side).

For each ``robot_ids`` entry it subscribes ``/<id>/observation`` and answers on ``/<id>/action``
with the current policy of the configured algorithm (``algo.name``), stamping the action with the
policy version. Observations are queued; a serving thread answers every robot whose observation is pending
in one batched forward pass (``PolicyServer.act_batch``), so robots that arrive together share a pass.
New weights arrive on ``/user/policy/weights`` (transient-local: a late start gets the newest at once); a
worker thread builds a shadow policy from them and the serving thread swaps it in between passes
(``serving.PolicyServer``), so weights never change during a forward pass. Each robot draws its
exploration noise from its own generator, seeded from (``seed``, robot id) and kept across swaps.
With no learner around it keeps acting with the last weights it has. Evaluation episodes
(``Observation.evaluation``) get the deterministic action.

A policy with ``chunk_size`` H > 1 returns an action chunk ``[H, A]``: the node asks it only when a
robot needs one (``serving.ChunkScheduler``: the first step of an episode, every ``replan_every`` steps,
and again for a step the robot re-publishes because it held) and answers with one Action carrying the
chunk (``chunk_length`` H, H rows for steps ``step .. step+H-1``) and the policy version; the robot runs
it step by step (``user_hal.core.chunks``). A policy with ``uses_instruction`` gets the robot's
``RobotDescription.instruction`` as ``act(..., instruction=text)``.
With several embodiments in the config (``obs.embodiments``) each robot's observation is mapped by the
embodiment its RobotDescription names (docs/embodiments.md); a robot the config does not accept is refused.
Publishes ``/user/inference/status`` (version in use, latency p50/p99 per policy query) twice a second.

With ``scheduled`` true it is an inference server of a job (docs/scheduler.md): it announces its capacity on
``/user/inference/capacity`` and serves the robots the scheduler binds to it, adding and dropping them live
from ``/user/scheduler/bindings``; a robot that does not fit the config is refused there, not by exiting.

Parameters: ``config`` (learner config, required), ``robot_ids``, ``seed``, ``replan_every`` (steps between
chunk queries; 0, the default: the chunk size, one query per chunk; only used when H > 1), ``topic_ns`` (its
job's namespace: weights and status live under it; "" = /user); with ``scheduled``: ``job``, ``server_id``
(default: the node name), ``max_robots``.
"""
from __future__ import annotations

import collections
import socket
import sys
import threading
import time

import numpy as np
import rclpy
import torch
from rclpy.node import Node
from user_msgs.msg import Action, Bindings, InferenceCapacity, Observation, PolicyStatus, RobotDescription

from user_common import qos
from user_common.config_schema import ConfigError
from user_common.node_main import run_node
from user_common.topics import check_topic_ns, job_topic

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
        self.declare_parameter("scheduled", False)
        self.declare_parameter("job", "")
        self.declare_parameter("server_id", "")
        self.declare_parameter("max_robots", 4)
        self.declare_parameter("topic_ns", "")   # its job's namespace: weights in, status out
        self.topic_ns = check_topic_ns(str(self.get_parameter("topic_ns").value))
        path = self.get_parameter("config").value
        if not path:
            raise ConfigError("<parameters>", "config", "no learner config given (parameter 'config')")
        seed = int(self.get_parameter("seed").value)
        # The learner applies the same seed: before its first weights arrive, both hold the same networks.
        self.cfg = load_learner_config(path, {"algo.seed": seed})
        torch.set_num_threads(self.cfg.learner.torch_threads)
        self.spec = self.cfg.obs.spec()
        # Several embodiments (obs.embodiments): each robot's observation is mapped by the embodiment its
        # RobotDescription names; until that arrives the robot gets no action (it holds).
        self.embodiments = self.cfg.obs.embodiment_map()
        self.normalize = self.cfg.obs.normalizer() if self.embodiments is None else None
        self.embodiment_of: dict[str, str] = {}   # robot id -> RobotDescription.embodiment
        algorithm = get_algorithm(self.cfg.algo_name)
        self.scheduled = bool(self.get_parameter("scheduled").value)
        self.robot_ids = [] if self.scheduled else [r for r in self.get_parameter("robot_ids").value if r]
        self.server = PolicyServer(lambda: algorithm.policy(self.spec, self.cfg.algo), seed, self.robot_ids)
        try:
            self.scheduler = ChunkScheduler(self.server.chunk_size, int(self.get_parameter("replan_every").value))
        except ValueError as exc:
            raise ConfigError("<parameters>", "replan_every", str(exc)) from None
        self.instructions: dict[str, str] = {}   # robot id -> RobotDescription.instruction
        self.latencies: collections.deque[float] = collections.deque(maxlen=500)
        self.actions_sent = 0
        self.queries = 0
        self.passes = 0          # forward passes (one per batch)
        self.widest = 0          # most robots answered by one pass
        self._pending: dict[str, tuple] = {}   # robot id -> the newest request not yet answered
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._pubs: dict = {}
        self._subs: dict = {}
        self.descriptions: dict[str, RobotDescription] = {}
        self.last_obs: dict[str, tuple[int, int]] = {}   # robot id -> (episode_id, step) last seen
        for rid in self.robot_ids:
            self._serve(rid)
        self.weights = WeightSubscriber(self, on_weights=self.server.prepare, policy_name=self.cfg.algo_name,
                                        topic=job_topic(qos.WEIGHTS_TOPIC, self.topic_ns))
        # A robot whose description disagrees with the config is refused: exit 2, one line naming both.
        self.create_subscription(RobotDescription, qos.DESCRIPTION_TOPIC, self._on_description, qos.ANNOUNCEMENTS_IN)
        self.pub_status = self.create_publisher(PolicyStatus, job_topic(qos.POLICY_STATUS_TOPIC, self.topic_ns),
                                                qos.SENSOR)
        self.create_timer(0.5, self._status)
        if self.scheduled:
            self._init_server()
        self._serving = threading.Thread(target=self._serve_loop, name="inference-serve", daemon=True)
        self._serving.start()
        self.get_logger().info(
            f"inference for {', '.join(self.robot_ids) or 'the robots the scheduler binds'}: {self.cfg.algo_name}, "
            f"{len(self.spec.cameras)} cameras "
            f"{list(self.spec.cameras)}, state {self.spec.state_dim}"
            + (f" (embodiments {self.embodiments.describe()})" if self.embodiments is not None else "")
            + f", config {self.cfg.source}"
            + (f", chunks of {self.scheduler.chunk_size} steps, replanning every {self.scheduler.replan_every}"
               if self.scheduler.chunk_size > 1 else ""))

    def _init_server(self) -> None:
        self.job = str(self.get_parameter("job").value)
        self.server_id = str(self.get_parameter("server_id").value) or self.get_name()
        self.max_robots = int(self.get_parameter("max_robots").value)
        if not self.job:
            raise ConfigError("<parameters>", "job", "an inference server (scheduled: true) needs the job it serves")
        if self.max_robots < 1:
            raise ConfigError("<parameters>", "max_robots", f"must be >= 1, got {self.max_robots}")
        self.host = socket.gethostname()
        self.device = "gpu" if torch.cuda.is_available() else "cpu"
        self.pub_capacity = self.create_publisher(InferenceCapacity, qos.CAPACITY_TOPIC, qos.LATCHED)
        self.create_subscription(Bindings, qos.BINDINGS_TOPIC, self._on_bindings, qos.LATCHED)
        self.create_timer(1.0, self._announce)
        self._announce()
        self.get_logger().info(f"inference server {self.server_id} of job {self.job} on {self.host} ({self.device}): "
                               f"up to {self.max_robots} robots, bound by the scheduler")

    def _announce(self) -> None:
        m = InferenceCapacity(server=self.server_id, host=self.host, device=self.device, job=self.job,
                              max_robots=self.max_robots, robot_ids=sorted(self._pubs))
        m.header.stamp = self.get_clock().now().to_msg()
        self.pub_capacity.publish(m)

    def _on_bindings(self, msg: Bindings) -> None:
        mine = {b.robot_id for b in msg.robots if b.server == self.server_id and b.job == self.job}
        # A scheduler that has not heard this server yet (it just restarted, discovery is slow) decided
        # without it: keep serving, drop nothing, until it lists this server.
        if self.server_id not in {s.server for s in msg.servers}:
            self._announce()
            return
        for rid in sorted(set(self._pubs) - mine):
            self._drop(rid)
        for rid in sorted(mine - set(self._pubs)):
            if len(self._pubs) >= self.max_robots:
                self.get_logger().error(f"not serving {rid}: bound beyond this server's {self.max_robots} robots")
                continue
            d = self.descriptions.get(rid)
            why = self.spec.mismatch_with_robot(d, self.embodiments) if d is not None else ""
            if why:
                self.get_logger().error(f"not serving {rid}: {self.cfg.source}: obs: the policy "
                                        f"({self.spec.describe()}) cannot serve {why}", throttle_duration_sec=5.0)
                continue
            self._serve(rid)
            self.get_logger().info(f"serving {rid} (now {len(self._pubs)} of {self.max_robots}: "
                                   f"{', '.join(sorted(self._pubs))})")
        self._announce()

    def _serve(self, rid: str) -> None:
        self.server.add_robot(rid)
        self._pubs[rid] = self.create_publisher(Action, qos.robot_topic(rid, "action"), qos.CONTROL)
        self._subs[rid] = self.create_subscription(Observation, qos.robot_topic(rid, "observation"), self._on_obs,
                                                   qos.CONTROL)

    def _drop(self, rid: str) -> None:
        self.destroy_subscription(self._subs.pop(rid))
        with self._cv:   # the serving thread publishes under this lock
            self._pending.pop(rid, None)
            self.destroy_publisher(self._pubs.pop(rid))
        episode = self.last_obs.pop(rid, None)
        where = f"; its episode {episode[0]} was cut at step {episode[1]}" if episode else ""
        self.get_logger().warning(f"dropped {rid}: the scheduler released it{where}")

    def _on_description(self, d: RobotDescription) -> None:
        self.descriptions[d.robot_id] = d
        self.instructions[d.robot_id] = d.instruction
        self.embodiment_of[d.robot_id] = d.embodiment
        if self.scheduled or d.robot_id not in self.server.generators:
            return
        why = self.spec.mismatch_with_robot(d, self.embodiments)
        if why:
            raise ConfigError(self.cfg.source, "obs", f"the policy ({self.spec.describe()}) cannot serve {why}")

    @property
    def version(self) -> int:
        return self.server.version

    def _on_obs(self, obs: Observation) -> None:
        t0 = time.perf_counter()
        if obs.robot_id not in self._pubs:
            return
        self.last_obs[obs.robot_id] = (obs.episode_id, obs.step)
        instruction = self.instructions.get(obs.robot_id)
        if self.server.uses_instruction and instruction is None:
            self.get_logger().warning(f"cannot act for {obs.robot_id}: no RobotDescription (instruction) from it "
                                      f"yet on {qos.DESCRIPTION_TOPIC}", throttle_duration_sec=2.0)
            return
        embodiment = self.embodiment_of.get(obs.robot_id, "")
        if self.embodiments is not None and not embodiment:
            self.get_logger().warning(f"cannot act for {obs.robot_id}: no RobotDescription (embodiment) from it "
                                      f"yet on {qos.DESCRIPTION_TOPIC}", throttle_duration_sec=2.0)
            return
        if not self.scheduler.due(obs.robot_id, obs.episode_id, obs.step):
            return  # the robot's queued chunk covers this step
        try:
            state, pixels = observation_arrays(obs, self.spec, self.normalize, self.embodiments, embodiment)
        except ObservationMismatch as exc:
            self.get_logger().error(f"cannot act: {exc}", throttle_duration_sec=2.0)
            return
        with self._cv:
            self._pending[obs.robot_id] = (obs, state, pixels, instruction, t0)
            self._cv.notify()

    def _serve_loop(self) -> None:
        """Answer the pending observations, all robots in one forward pass; swap weights between passes."""
        while not self._stop.is_set() and self.context.ok():
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._stop.is_set(), timeout=0.5)
                batch, self._pending = list(self._pending.values()), {}
            self.server.swap()   # also while no robot sends observations (e.g. waiting for its reset)
            if not batch:
                continue
            actions = self.server.act_batch([(o.robot_id, state, pixels, o.evaluation, instruction)
                                             for o, state, pixels, instruction, _ in batch])
            self.passes += 1
            self.widest = max(self.widest, len(batch))
            with self._cv:
                for (obs, _, _, _, t0), action in zip(batch, actions):
                    self._publish(obs, np.asarray(action, dtype=np.float32), t0)

    def _publish(self, obs: Observation, action: np.ndarray, t0: float) -> None:
        pub = self._pubs.get(obs.robot_id)
        if pub is None:   # dropped while its action was computed
            return
        self.queries += 1
        a = Action()
        a.header.stamp = obs.header.stamp
        a.robot_id, a.episode_id, a.step = obs.robot_id, obs.episode_id, obs.step
        a.chunk_length = action.shape[0] if action.ndim == 2 and action.shape[0] > 1 else 0
        a.action = action.ravel().tolist()
        a.policy_version = self.version
        a.source = Action.SOURCE_POLICY
        try:
            pub.publish(a)
        except Exception:   # noqa: BLE001 - shutting down (Ctrl-C invalidates the context under this thread)
            if self.context.ok() and not self._stop.is_set():
                raise
            return
        self.actions_sent += 1
        self.latencies.append(time.perf_counter() - t0)

    def latency_ms(self) -> tuple[float, float]:
        lat = np.array(tuple(self.latencies))
        if lat.size == 0:
            return 0.0, 0.0
        return float(np.percentile(lat, 50) * 1e3), float(np.percentile(lat, 99) * 1e3)

    def _status(self) -> None:
        s = PolicyStatus()
        s.header.stamp = self.get_clock().now().to_msg()
        s.node = self.get_fully_qualified_name()
        s.policy_version = self.version
        s.actions_sent = self.actions_sent
        s.latency_p50_ms, s.latency_p99_ms = self.latency_ms()
        s.robot_ids = sorted(self._pubs)
        self.pub_status.publish(s)

    def close(self) -> None:
        p50, p99 = self.latency_ms()
        # print, not the ROS logger: after Ctrl-C the context (and /rosout) may already be gone
        self._stop.set()
        with self._cv:
            self._cv.notify()
        self._serving.join(timeout=2.0)
        print(f"[inference] done: {self.actions_sent} actions ({self.queries} policy queries in {self.passes} "
              f"forward passes, up to {self.widest} robots per pass), policy version {self.version}, "
              f"latency p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        self.weights.close()


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(InferenceNode, "inference", args=args))


if __name__ == "__main__":
    main()
