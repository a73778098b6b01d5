"""The scheduler node: a ROS shell around ``scheduler.Pool`` (docs/scheduler.md).

Robots come from the registry topics (descriptions, heartbeats), jobs from ``/user/jobs``, inference capacity
from ``/user/inference/capacity``; all three are transient-local and resent as heartbeats, so a restarted
scheduler rebuilds its state from them. Its decisions go out latched on ``/user/scheduler/bindings``.
A job's learning config is read to refuse robots it cannot serve (the same check the inference node makes).
It decides nothing during its first heartbeat timeout, so that a restart does not release a working robot.

Parameters: ``heartbeat_timeout_s`` (robots, jobs and servers silent this long are gone; default 3).
"""
from __future__ import annotations

import time

from rclpy.node import Node
from user_msgs.msg import (Bindings, EpisodeStats, InferenceCapacity, JobSpec, RobotBinding, RobotDescription,
                            RobotStatus)

from user_common import qos
from user_common.config_schema import ConfigError
from user_common.node_main import run_node
from user_common.registry import RobotRegistry
from user_common.topics import check_topic_ns, job_topic

from .learner_config import load_learner_config
from .scheduler import Decision, Job, Pool, Robot, Server

REPUBLISH_S = 1.0


class SchedulerNode(Node):
    """Binds the live robots to jobs and inference servers and publishes the bindings."""

    def __init__(self) -> None:
        super().__init__("scheduler")
        self.timeout = float(self.declare_parameter("heartbeat_timeout_s", 3.0).value)
        if not self.timeout > 0:
            raise ConfigError("<parameters>", "heartbeat_timeout_s", f"must be > 0, got {self.timeout}")
        self.registry = RobotRegistry(self.timeout)
        self.jobs: dict[str, tuple[float, JobSpec]] = {}
        self.servers: dict[str, tuple[float, InferenceCapacity]] = {}
        self._configs: dict[str, object] = {}   # config path -> (spec, embodiments) or an error line
        self.pool = Pool(self._fits)
        self.last: Decision | None = None
        self._sent = 0.0
        # Decide nothing until every live robot, job and server had time to be heard: a restarted scheduler
        # must not publish empty bindings (the servers would drop their robots) before it knows the pool.
        self._quiet_until = time.monotonic() + self.timeout
        self.create_subscription(RobotDescription, qos.DESCRIPTION_TOPIC,
                                 lambda m: self.registry.update_description(m, time.monotonic()), qos.ANNOUNCEMENTS_IN)
        self.create_subscription(RobotStatus, qos.HEARTBEAT_TOPIC, self._on_heartbeat, qos.ANNOUNCEMENTS_IN)
        self.create_subscription(JobSpec, qos.JOBS_TOPIC, self._on_job, qos.ANNOUNCEMENTS_IN)
        self.create_subscription(InferenceCapacity, qos.CAPACITY_TOPIC, self._on_capacity, qos.ANNOUNCEMENTS_IN)
        self.pub = self.create_publisher(Bindings, qos.BINDINGS_TOPIC, qos.LATCHED)
        self._job_ns: dict[str, str] = {}    # job -> its topic namespace (kept after the job is gone)
        self._cut_pubs: dict[str, object] = {}   # namespace -> EpisodeStats publisher
        self._cut_pub("")
        self.create_timer(0.25, self._decide)
        self.get_logger().info(f"scheduler up: bindings on {qos.BINDINGS_TOPIC}, heartbeat timeout {self.timeout:g} s")

    def _on_heartbeat(self, msg: RobotStatus) -> None:
        if msg.robot_id:
            self.registry.update_heartbeat(msg, time.monotonic())

    def _on_job(self, msg: JobSpec) -> None:
        if not msg.job:
            self.get_logger().warning(f"ignoring a JobSpec with an empty job id on {qos.JOBS_TOPIC}")
            return
        try:
            check_topic_ns(msg.topic_ns, f"job {msg.job}: topic_ns", qos.JOBS_TOPIC)
        except ValueError as exc:
            self.get_logger().error(f"ignoring the job: {exc}", throttle_duration_sec=10.0)
            return
        if msg.job not in self.jobs:
            self.get_logger().info(f"job {msg.job}: {msg.robots or 'any number of'} robots of "
                                   f"{', '.join(msg.embodiments) or 'any embodiment'}, config {msg.config}, topics "
                                   f"under {msg.topic_ns or '/user'}")
        self.jobs[msg.job] = (time.monotonic(), msg)
        self._job_ns[msg.job] = msg.topic_ns
        self._cut_pub(msg.topic_ns)   # made now: matched with the job's readers long before a robot is lost

    def _on_capacity(self, msg: InferenceCapacity) -> None:
        if not msg.server:
            self.get_logger().warning(f"ignoring an InferenceCapacity with an empty server id on {qos.CAPACITY_TOPIC}")
            return
        if msg.server not in self.servers:
            self.get_logger().info(f"inference server {msg.server} on {msg.host} ({msg.device}): up to "
                                   f"{msg.max_robots} robots of job {msg.job}")
        self.servers[msg.server] = (time.monotonic(), msg)

    def _fits(self, job: Job, robot: Robot) -> str:
        path = self.jobs[job.job][1].config
        if path not in self._configs:
            try:
                cfg = load_learner_config(path)
                self._configs[path] = (cfg.obs.spec(), cfg.obs.embodiment_map())
            except (ConfigError, OSError) as exc:
                self._configs[path] = f"its config cannot be read: {exc}"
        loaded = self._configs[path]
        if isinstance(loaded, str):
            return loaded
        spec, embodiments = loaded
        why = spec.mismatch_with_robot(robot.description, embodiments)
        return f"{path}: obs: the policy ({spec.describe()}) cannot serve {why}" if why else ""

    def _live(self, table: dict, now: float) -> list:
        for key in [k for k, (seen, _) in table.items() if now - seen > self.timeout]:
            self.get_logger().warning(f"{key} silent for more than {self.timeout:g} s: gone")
            del table[key]
        return [msg for _, msg in table.values()]

    def _decide(self) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            return
        robots = [Robot(e.robot_id, e.description.embodiment, e.description)
                  for e in self.registry.entries(now) if not e.lost and e.description is not None]
        jobs = [Job(m.job, tuple(m.embodiments), int(m.robots)) for m in self._live(self.jobs, now)]
        servers = [Server(m.server, m.job, int(m.max_robots), m.host, m.device, tuple(m.robot_ids))
                   for m in self._live(self.servers, now)]
        decision = self.pool.bind(robots, jobs, servers)
        changed = self.last is None or decision.robots != self.last.robots or decision.jobs != self.last.jobs \
            or decision.servers != self.last.servers
        if changed:
            self._log_changes(decision)
        if changed or now - self._sent >= REPUBLISH_S:
            self._publish(decision, {s.server: s for s in servers})
            self._sent = now
        self.last = decision

    def _log_changes(self, d: Decision) -> None:
        log = self.get_logger()
        before = self.last.robots if self.last is not None else {}
        for rid, b in d.robots.items():
            old = before.get(rid)
            if b.server and (old is None or (old.job, old.server) != (b.job, b.server)):
                log.info(f"bound {rid} ({b.embodiment}) to job {b.job} on inference server {b.server}")
            elif not b.server and (old is None or old.reason != b.reason):
                log.warning(f"{rid} ({b.embodiment}) idle: {b.reason}")
        for rid in sorted(before.keys() - d.robots.keys()):
            log.warning(f"released {rid}: its heartbeat stopped")
            self._flag_cut(rid, self._job_ns.get(before[rid].job, ""))
        old_jobs = self.last.jobs if self.last is not None else {}
        for job, status in d.jobs.items():
            if old_jobs.get(job) != status:
                log.info(f"job {job}: {status}")

    def _flag_cut(self, rid: str, ns: str) -> None:
        """A lost robot cannot end its episode: say on its behalf, on its job's namespace ``ns``, that the episode
        was cut (``cut``), at the last step its heartbeat reported. Its stored transitions end without a terminal,
        so the critic bootstraps."""
        entry = self.registry.entry(rid, time.monotonic())
        status = entry.status if entry is not None else None
        if status is None or status.state != RobotStatus.STATE_RUNNING or status.step == 0:
            return
        e = EpisodeStats(robot_id=rid, episode_id=status.episode_id, steps=status.step, cut=True,
                         policy_version=status.policy_version)
        e.header.stamp = self.get_clock().now().to_msg()
        self._cut_pub(ns).publish(e)

    def _cut_pub(self, ns: str):
        if ns not in self._cut_pubs:
            self._cut_pubs[ns] = self.create_publisher(EpisodeStats, job_topic(qos.EPISODES_TOPIC, ns), qos.DATA)
        return self._cut_pubs[ns]

    def _publish(self, d: Decision, servers: dict[str, Server]) -> None:
        msg = Bindings()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.robots = [RobotBinding(robot_id=b.robot_id, embodiment=b.embodiment, job=b.job, server=b.server,
                                   reason=b.reason, topic_ns=self._job_ns.get(b.job, "") if b.server else "")
                      for b in d.robots.values()]
        msg.jobs = list(d.jobs)
        msg.job_status = list(d.jobs.values())
        msg.servers = [InferenceCapacity(server=s, host=servers[s].host, device=servers[s].device, job=servers[s].job,
                                         max_robots=servers[s].max_robots, robot_ids=rs) for s, rs in d.servers.items()]
        self.pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    """Run the scheduler until Ctrl-C or SIGTERM."""
    return run_node(SchedulerNode, "scheduler", args=args)


if __name__ == "__main__":
    raise SystemExit(main())
