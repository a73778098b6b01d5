"""The learner node: transitions in, updates of the configured algorithm, versioned weights out,
checkpoints on disk.

What to do when (updates, publishing, checkpoints, budgets; async or the sync loop, where robots
wait for the learner to reset them) is decided by ``schedule.TrainingSchedule``; this node carries it
out in a training thread while robots and inference never wait for it (async).

The replay is whichever ``replay.kind`` the config names (``replay.py``): the node hands it every
transition it receives (raw CDR bytes, stored exactly as received) unless a buffer node records them
(``remote``), and acknowledges (``/user/transitions/ack``) what the replay reports as stored for good,
so robots keep and resend the rest and a learner killed with SIGKILL loses nothing acknowledged.

A config with several embodiments (``obs.embodiments``, docs/embodiments.md) trains one policy on all of them:
the replay places each transition's proprio on the common row by its ``embodiment``, and every batch is
turned into policy inputs (normalized per embodiment, plus a one-hot) before the update.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from user_common.executors import ThreadedExecutor
from rclpy.node import Node
from user_msgs.msg import (Action, EpisodeStats, JobSpec, PolicyStatus, RobotDescription, RobotStatus, Transition,
                            TransitionAck)
from user_msgs.srv import ResetRobot

from user_buffer.codec import DecodeError, decode_transition
from user_buffer.replay import Layout, LayoutMismatch
from user_buffer.store import BagLocked
from user_common import qos
from user_common.config_schema import ConfigError
from user_common.node_main import run_node
from user_common.topics import check_topic_ns, job_topic

from .batch import batch_from_numpy
from .algos import get_algorithm
from .checkpoint import checkpoint_path, load_latest_checkpoint, save_checkpoint
from .learner_config import load_learner_config
from .progress import Progress
from .replay import open_replay
from .schedule import Do, TrainingSchedule
from .weight_sync import WeightPublisher

CONSUMER = "learner"


class LearnerNode(Node):
    """ROS shell around an algorithm's agent + a replay buffer."""

    def __init__(self) -> None:
        super().__init__("learner")
        self.declare_parameter("config", "")
        self.declare_parameter("run_name", "franka_sac")
        self.declare_parameter("runs_dir", "runs")
        self.declare_parameter("logs_dir", "logs")
        self.declare_parameter("sync", False)
        self.declare_parameter("resume", True)
        self.declare_parameter("seed", 0)
        self.declare_parameter("max_env_steps", 0)   # 0: the config's budget
        self.declare_parameter("max_minutes", 0.0)
        self.declare_parameter("remote_buffer", False)   # true: replay.kind remote (a buffer node records)
        # A job run by the scheduler (docs/scheduler.md): declared on /user/jobs while this learner lives.
        self.declare_parameter("job", "")
        self.declare_parameter("job_robots", 0)
        self.declare_parameter("job_embodiments", [""])
        # Where this learner's data plane lives ("" = the shared /user topics; a job: e.g. /user/jobs/peg).
        self.declare_parameter("topic_ns", "")
        p = self.get_parameter
        self.topic_ns = check_topic_ns(str(p("topic_ns").value))
        path = p("config").value
        if not path:
            raise ConfigError("<parameters>", "config", "no learner config given (parameter 'config')")
        overrides = {}
        if p("sync").value:
            overrides["learner.mode"] = "sync"
        if p("max_env_steps").value > 0:
            overrides["learner.max_env_steps"] = int(p("max_env_steps").value)
        if p("max_minutes").value > 0:
            overrides["learner.max_minutes"] = float(p("max_minutes").value)
        if p("remote_buffer").value:
            overrides["replay.kind"] = "remote"
        seed = int(p("seed").value)
        overrides["algo.seed"] = seed   # the inference node applies the same seed
        self.cfg = load_learner_config(path, overrides)
        L = self.cfg.learner
        self.opts = L
        torch.set_num_threads(L.torch_threads)
        random.seed(seed)
        self.spec = self.cfg.obs.spec()
        # Several embodiments: the replay keeps each transition's proprio on the common row (raw units)
        # and the embodiment of each row; batches become policy inputs in _update_once.
        self.embodiments = self.cfg.obs.embodiment_map()
        self.normalize = self.cfg.obs.normalizer() if self.embodiments is None else None
        algorithm = get_algorithm(self.cfg.algo_name)
        self._extras = algorithm.batch_extras
        self.agent = algorithm.agent(self.spec, self.cfg.algo)
        run = str(p("run_name").value)
        layout = Layout(**{**dataclasses.asdict(self.spec), "extras": algorithm.batch_extras})
        if self.embodiments is not None:
            layout = dataclasses.replace(layout, state_dim=self.embodiments.stored_dim, embodiments=self.embodiments,
                                         extras=tuple(dict.fromkeys((*algorithm.batch_extras, "embodiment"))))
        self.robot_embodiments: dict[str, str] = {}   # robot id -> embodiment (descriptions, transitions)
        try:
            self.replay = open_replay(self.cfg.replay.kind, cfg=self.cfg, layout=layout, seed=seed, node=self,
                                      default_dir=Path(p("runs_dir").value) / run / "replay", topic_ns=self.topic_ns)
        except (BagLocked, FileNotFoundError, ValueError) as exc:   # a bag in use, a missing or empty demo bag
            key = "replay.dir" if isinstance(exc, BagLocked) else "replay.demo_dir"
            raise ConfigError(self.cfg.source, key, str(exc)) from None
        for problem in self.replay.problems:
            self.get_logger().warning(problem)
        self.ckpt_dir = Path(p("runs_dir").value) / run / "checkpoints"
        # Versions must grow across restarts (inference ignores older ones): the last one published
        # is kept next to the checkpoints; a process crash leaves the page cache intact.
        self.version_file = self.ckpt_dir.parent / "weights_version"
        self.log_dir = Path(p("logs_dir").value) / run
        self.session = random.getrandbits(63)
        self.version = 0
        self._resumed_env_steps = 0
        self.duplicates = 0
        self.rejected = 0
        self.staleness: collections.deque[int] = collections.deque(maxlen=2000)
        self.inference_version = 0
        self.resumed_from: str | None = None
        if p("resume").value:
            self._resume()
        try:   # versions only grow, resumed or not: a running inference node ignores older ones
            self.version = max(self.version, int(self.version_file.read_text()))
        except (OSError, ValueError):
            pass
        self.schedule = TrainingSchedule(L, updates=self.agent.num_updates, env_steps=self._resumed_env_steps)

        data_cb = MutuallyExclusiveCallbackGroup()
        other = ReentrantCallbackGroup()
        if self.replay.records:   # raw CDR bytes: stored exactly as received, decoded without rclpy objects
            self.create_subscription(Transition, job_topic(qos.TRANSITIONS_TOPIC, self.topic_ns),
                                     self._on_transition, qos.TRANSITIONS_IN, callback_group=data_cb, raw=True)
        self.create_subscription(EpisodeStats, job_topic(qos.EPISODES_TOPIC, self.topic_ns), self._on_episode,
                                 qos.DATA, callback_group=other)
        self.create_subscription(PolicyStatus, job_topic(qos.POLICY_STATUS_TOPIC, self.topic_ns),
                                 self._on_policy_status, qos.SENSOR, callback_group=other)
        if L.mode == "sync":   # a robot left waiting for its reset (by a learner that died) is reset too
            self.create_subscription(RobotStatus, qos.HEARTBEAT_TOPIC, self._on_heartbeat, qos.ANNOUNCEMENTS_IN,
                                     callback_group=other)
        self.create_subscription(RobotDescription, qos.DESCRIPTION_TOPIC, self._on_description, qos.ANNOUNCEMENTS_IN,
                                 callback_group=other)
        self._misfits: set[str] = set()
        self.pub_ack = self.create_publisher(TransitionAck, job_topic(qos.TRANSITION_ACK_TOPIC, self.topic_ns),
                                             qos.DATA)
        self.create_timer(0.25, self._send_acks, callback_group=other)
        self.weights = WeightPublisher(self, topic=job_topic(qos.WEIGHTS_TOPIC, self.topic_ns),
                                       policy_name=self.cfg.algo_name)
        if p("job").value:
            self._declare_job(other)
        self._reset_clients: dict[str, object] = {}
        self._cb_other = other
        self.progress = Progress(self.cfg, self.log_dir, self.get_logger())
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.exit_code = 0
        self._thread = threading.Thread(target=self._train_main, name="learner-train", daemon=True)
        self.get_logger().info(
            f"learner ({L.mode}): {self.cfg.algo_name}, "
            f"{'images ' + str(list(self.spec.cameras)) if self.spec.cameras else 'state'} "
            f"policy, config {self.cfg.source}, {self.replay.describe()}, checkpoints {self.ckpt_dir}, "
            f"{'topics under ' + self.topic_ns + ', ' if self.topic_ns else ''}"
            f"TensorBoard {self.log_dir}" + (f", resumed from {self.resumed_from}" if self.resumed_from else ""))

    # -- checkpoints ----------------------------------------------------------------------------------
    def _resume(self) -> None:
        found = load_latest_checkpoint(self.ckpt_dir)
        if found is None:
            return
        path, payload = found
        algo = payload.get("algo", {"name": "sac"})   # checkpoints before the registry were all SAC
        if algo["name"] != self.cfg.algo_name:
            raise ConfigError(self.cfg.source, "algo.name",
                              f"{self.cfg.algo_name!r}, but this run's checkpoint {path} was written by "
                              f"{algo['name']!r}; choose another run_name (or resume:=false to start over)")
        try:
            self.agent.load_state_dict(payload["agent"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ConfigError(self.cfg.source, "algo",
                              f"does not fit this run's checkpoint {path} (networks differ: "
                              f"{str(exc).splitlines()[0]}); choose another run_name or resume:=false") from None
        self.version = int(payload["version"])
        if payload.get("replay") is not None:
            self.replay.restore(payload["replay"])
        # A replay that is its own record (the bag) counts: transitions the checkpoint counted but the
        # kill cut off before they were on disk come again from the robots and are counted once.
        held = self.replay.held()
        self._resumed_env_steps = int(payload["env_steps"]) if held is None else held
        self.resumed_from = str(path)

    def _checkpoint(self) -> None:
        """Write a checkpoint (with the replay's contents, if it needs that to be restored)."""
        payload = {"agent": self.agent.state_dict(), "version": self.version, "env_steps": self.schedule.env_steps,
                   "algo": {"name": self.cfg.algo_name, "config": dataclasses.asdict(self.cfg.algo)},
                   "replay": self.replay.checkpoint()}
        save_checkpoint(checkpoint_path(self.ckpt_dir, self.agent.num_updates), payload,
                        keep=self.opts.keep_checkpoints)
        self.replay.checkpoint_saved()   # what it holds may be acknowledged now

    # -- data (executor threads) ------------------------------------------------------------------------
    def _on_transition(self, data: bytes) -> None:
        try:
            t = decode_transition(data)
            added = self.replay.add(data, t)
        except (DecodeError, LayoutMismatch) as exc:
            self.rejected += 1
            self.get_logger().error(f"not training on a transition: {exc}", throttle_duration_sec=2.0)
            return
        if not added:
            self.duplicates += 1   # resent after a restart; the replay acknowledges it again
            return
        self.robot_embodiments.setdefault(t.robot_id, t.embodiment)
        self._received(t.robot_id, t.action_source, t.policy_version, t.terminated or t.truncated)

    def _received(self, robot_id: str, action_source: int, policy_version: int, episode_end: bool) -> None:
        """Bookkeeping of one new transition: env steps, staleness of policy actions, episode ends."""
        self.schedule.add_env_steps(1)
        if action_source == Action.SOURCE_POLICY:   # human, hold and scripted steps carry no policy version
            self.staleness.append(max(0, self.version - policy_version))
        if episode_end:
            self.schedule.episode_ended(robot_id)

    def _send_acks(self) -> None:
        pending: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for rid, episode, step in self.replay.take_durable():
            pending[rid].append((episode, step))
        for rid, keys in pending.items():
            for i in range(0, len(keys), 2000):
                part = keys[i:i + 2000]
                ack = TransitionAck(consumer=CONSUMER, session=self.session, robot_id=rid,
                                    episode_ids=[k[0] for k in part], steps=[k[1] for k in part])
                ack.header.stamp = self.get_clock().now().to_msg()
                self.pub_ack.publish(ack)

    def _declare_job(self, group) -> None:
        p = self.get_parameter
        if p("job_robots").value < 0:
            raise ConfigError("<parameters>", "job_robots", f"must be >= 0, got {p('job_robots').value}")
        embodiments = [e.strip() for x in p("job_embodiments").value for e in x.split(",") if e.strip()]
        self.job_spec = JobSpec(job=str(p("job").value), robots=int(p("job_robots").value), embodiments=embodiments,
                                config=str(Path(p("config").value).resolve()), topic_ns=self.topic_ns)
        self.pub_job = self.create_publisher(JobSpec, qos.JOBS_TOPIC, qos.LATCHED)

        def declare() -> None:
            self.job_spec.header.stamp = self.get_clock().now().to_msg()
            self.pub_job.publish(self.job_spec)

        declare()
        self.create_timer(1.0, declare, callback_group=group)

    def _on_episode(self, msg: EpisodeStats) -> None:
        if msg.cut:   # not an outcome: the robot was lost mid-episode (the scheduler says so on its behalf)
            self.get_logger().warning(f"episode {msg.episode_id} of {msg.robot_id} was cut at step {msg.steps}: the "
                                      f"robot was lost or lost its binding; its transitions so far stay in the "
                                      f"replay")
            return
        self.progress.episode(msg, self.robot_embodiments.get(msg.robot_id, ""))

    def _on_description(self, d: RobotDescription) -> None:
        self.robot_embodiments[d.robot_id] = d.embodiment
        why = self.spec.mismatch_with_robot(d, self.embodiments)
        if why and d.robot_id not in self._misfits:   # its transitions do not fit: say so once, by name
            self._misfits.add(d.robot_id)
            self.get_logger().error(f"{self.cfg.source}: obs: the policy ({self.spec.describe()}) cannot learn "
                                    f"from {why}; its transitions are not trained on")

    def _on_heartbeat(self, msg: RobotStatus) -> None:
        self.schedule.robot_status(msg.robot_id, msg.state == RobotStatus.STATE_IDLE and msg.episodes_done > 0)

    def _on_policy_status(self, msg: PolicyStatus) -> None:
        self.inference_version = int(msg.policy_version)
        self.progress.inference(msg)

    # -- training thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30.0)
        if self._thread.ident is not None and self.exit_code == 0:
            self._checkpoint()  # a clean stop keeps everything received so far
        self.weights.close()
        self.progress.close()
        self.replay.close()   # a bag: summary + footer + index, complete

    def _train_main(self) -> None:
        try:
            self._t0 = time.monotonic()
            self._first_update_at: float | None = None
            while not self._stop.is_set():
                if not self.replay.records:   # a buffer node receives the transitions: count what it holds
                    self.schedule.env_steps = len(self.replay)
                step = self.schedule.next(len(self.replay))
                if step.do is Do.STOP:
                    self._checkpoint()
                    self.progress.summary(self._stats(), final=True)
                    break
                if step.do is Do.UPDATE:
                    self._update_once()
                elif step.do is Do.PUBLISH:
                    version = self._publish(sync=step.wait_for_inference)
                    if step.wait_for_inference:
                        self._wait_inference(version, timeout=30.0)
                elif step.do is Do.CHECKPOINT:
                    self._checkpoint()
                elif step.do is Do.RESET:
                    self._reset_robot(step.robot_id)
                else:
                    self._stop.wait(0.005)
                self.schedule.done(step)
                self.progress.maybe_log(self._stats())
        except Exception as exc:  # report, never hang
            self.get_logger().error(f"learner failed: {type(exc).__name__}: {exc}")
            self.exit_code = 1
        finally:
            self.finished.set()

    def _update_once(self) -> None:
        arrays = self.replay.sample(self.cfg.algo.batch_size)   # states as the robots sent them
        if self.embodiments is None:
            arrays["state"] = self.normalize(arrays["state"])
            arrays["next_state"] = self.normalize(arrays["next_state"])
        else:
            which = arrays["embodiment"] if "embodiment" in self._extras else arrays.pop("embodiment")
            arrays["state"] = self.embodiments.policy_input(arrays["state"], which)
            arrays["next_state"] = self.embodiments.policy_input(arrays["next_state"], which)
        if self._first_update_at is None:
            self._first_update_at = time.monotonic() - self._t0
        metrics = self.agent.update(batch_from_numpy(arrays))
        self.progress.update(metrics, self.agent.num_updates)

    def _publish(self, sync: bool) -> int:
        self.version += 1
        self.version_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.version_file.with_suffix(".tmp")
        tmp.write_text(str(self.version))
        os.replace(tmp, self.version_file)
        sd = self.agent.policy_state_dict()
        if sync:
            self.weights.publish(sd, self.version)
        else:
            self.weights.publish_async(sd, self.version)
        return self.version

    def _wait_inference(self, version: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.inference_version < version and time.monotonic() < end and not self._stop.is_set():
            time.sleep(0.005)

    def _reset_robot(self, robot_id: str) -> None:
        cli = self._reset_clients.get(robot_id)
        if cli is None:
            cli = self.create_client(ResetRobot, qos.robot_topic(robot_id, "reset"), callback_group=self._cb_other)
            self._reset_clients[robot_id] = cli
        if not cli.wait_for_service(timeout_sec=10.0):
            self.get_logger().error(f"sync: reset service of {robot_id} not available")
            return
        fut = cli.call_async(ResetRobot.Request(robot_id=robot_id))
        end = time.monotonic() + 60.0
        while not fut.done() and time.monotonic() < end and not self._stop.is_set():
            time.sleep(0.01)

    def _stats(self) -> dict[str, float]:
        stale = np.array(tuple(self.staleness)) if self.staleness else np.zeros(1)
        elapsed = time.monotonic() - self._t0
        return {
            "elapsed_s": elapsed, "env_steps": self.schedule.env_steps, "updates": self.agent.num_updates,
            "version": self.version, "inference_version": self.inference_version,
            "staleness_mean": float(stale.mean()), "staleness_p99": float(np.percentile(stale, 99)),
            "buffer": len(self.replay), "duplicates": self.duplicates,
            **{k: v for k, v in self.replay.stats().items() if k in ("cache_hit_rate", "sample_wait_ms")},
            "budget_fraction": self.schedule.budget_fraction(),
            "first_update_s": self._first_update_at if self._first_update_at is not None else math.nan,
        }


def _spin(node: LearnerNode) -> int:
    node.start()
    executor = ThreadedExecutor(num_threads=3)
    executor.add_node(node)
    while rclpy.ok() and not node.finished.is_set():
        executor.spin_once(timeout_sec=0.1)
    end = time.monotonic() + 1.0  # let the last acks and weights leave
    while time.monotonic() < end and rclpy.ok():   # after Ctrl-C the context is already shut down
        executor.spin_once(timeout_sec=0.05)
    return node.exit_code


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(run_node(LearnerNode, "learner", _spin, args))


if __name__ == "__main__":
    main()
