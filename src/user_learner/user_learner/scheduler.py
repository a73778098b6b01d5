"""The scheduler's binding core: one pool of robots and inference servers, jobs that want robots, and the
bindings robot -> (job, inference server). Plain Python, no ROS (docs/scheduler.md).

``Pool.bind()`` is called with the live robots, jobs and servers and returns every robot's binding (or why
it is idle) and every job's status. Bindings are sticky: a bound robot keeps its job and server while all
three live and the server has room, so a robot is never moved while it works.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Robot:
    """A live robot."""

    robot_id: str
    embodiment: str
    description: object = None   # its RobotDescription, for the fit check


@dataclass(frozen=True)
class Job:
    """A declared job: which embodiments it accepts (empty: any its config fits) and how many robots."""

    job: str
    embodiments: tuple[str, ...] = ()
    robots: int = 0   # 0: every robot it accepts


@dataclass(frozen=True)
class Server:
    """A live inference server of one job, with room for ``max_robots`` robots."""

    server: str
    job: str
    max_robots: int
    host: str = ""
    device: str = "cpu"
    serving: tuple[str, ...] = ()   # robots it says it serves (a restarted scheduler adopts them)


@dataclass(frozen=True)
class Binding:
    """Where one robot works, or why it is idle (``job`` and ``server`` empty, ``reason`` set)."""

    robot_id: str
    embodiment: str
    job: str = ""
    server: str = ""
    reason: str = ""


@dataclass
class Decision:
    """One round of binding: per robot, per job and per server."""

    robots: dict[str, Binding] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)      # job -> status line
    servers: dict[str, list[str]] = field(default_factory=dict)   # server -> robots bound to it

    def bound(self) -> dict[str, Binding]:
        """The robots that have a job and a server."""
        return {r: b for r, b in self.robots.items() if b.server}


#: ``fits(job, robot)`` returns why the job's config cannot serve the robot ('' if it can).
FitCheck = Callable[[Job, Robot], str]


class Pool:
    """Binds robots to jobs and inference servers; remembers the previous bindings to keep them."""

    def __init__(self, fits: FitCheck | None = None) -> None:
        self._fits = fits or (lambda job, robot: "")
        self._previous: dict[str, Binding] = {}

    def bind(self, robots: list[Robot], jobs: list[Job], servers: list[Server]) -> Decision:
        """Decide every live robot's binding; robots not in ``robots`` (lost) are released."""
        jobs_by_id = {j.job: j for j in jobs}
        servers_by_id = {s.server: s for s in servers if s.job in jobs_by_id}
        load: dict[str, list[str]] = {s: [] for s in servers_by_id}
        per_job: dict[str, list[str]] = {j: [] for j in jobs_by_id}
        out = Decision()
        live = sorted(robots, key=lambda r: r.robot_id)

        def keep(robot: Robot, job: str, server: str) -> bool:
            j, s = jobs_by_id.get(job), servers_by_id.get(server)
            if j is None or s is None or s.job != job or len(load[server]) >= s.max_robots:
                return False
            if j.robots and len(per_job[job]) >= j.robots:
                return False
            if not self._accepts(j, robot) or self._fits(j, robot):
                return False
            load[server].append(robot.robot_id)
            per_job[job].append(robot.robot_id)
            out.robots[robot.robot_id] = Binding(robot.robot_id, robot.embodiment, job, server)
            return True

        # 1. what was bound stays bound; then what the servers say they serve (a restarted scheduler)
        for robot in live:
            old = self._previous.get(robot.robot_id)
            if old is not None and old.server:
                keep(robot, old.job, old.server)
        for robot in live:
            if robot.robot_id in out.robots:
                continue
            for s in sorted(servers_by_id.values(), key=lambda s: s.server):
                if robot.robot_id in s.serving and keep(robot, s.job, s.server):
                    break
        # 2. the rest: the first job (by id) that accepts it and has room, on its least loaded server
        for robot in live:
            if robot.robot_id not in out.robots:
                out.robots[robot.robot_id] = self._place(robot, jobs_by_id, servers_by_id, load, per_job)
        for job in sorted(jobs_by_id.values(), key=lambda j: j.job):
            out.jobs[job.job] = self._job_status(job, per_job[job.job], live)
        out.servers = {s: sorted(rs) for s, rs in sorted(load.items())}
        self._previous = dict(out.robots)
        return out

    @staticmethod
    def _accepts(job: Job, robot: Robot) -> bool:
        return not job.embodiments or robot.embodiment in job.embodiments

    def _place(self, robot: Robot, jobs: dict[str, Job], servers: dict[str, Server],
               load: dict[str, list[str]], per_job: dict[str, list[str]]) -> Binding:
        idle = Binding(robot.robot_id, robot.embodiment)
        if not jobs:
            return _with_reason(idle, "no job is declared")
        reasons = []
        for job in sorted(jobs.values(), key=lambda j: j.job):
            if not self._accepts(job, robot):
                reasons.append(f"job {job.job} accepts {', '.join(job.embodiments)}")
                continue
            why = self._fits(job, robot)
            if why:
                reasons.append(f"job {job.job} refuses it: {why}")
                continue
            if job.robots and len(per_job[job.job]) >= job.robots:
                reasons.append(f"job {job.job} has its {job.robots} robot{'s' if job.robots != 1 else ''}")
                continue
            own = [s for s in servers.values() if s.job == job.job]
            free = [s for s in own if len(load[s.server]) < s.max_robots]
            if not free:
                full = ", ".join(f"{s.server} {len(load[s.server])}/{s.max_robots}" for s in own)
                reasons.append(f"job {job.job} has no inference server with room ({full or 'none announced'})")
                continue
            server = min(free, key=lambda s: (len(load[s.server]) / s.max_robots, s.server))
            load[server.server].append(robot.robot_id)
            per_job[job.job].append(robot.robot_id)
            return Binding(robot.robot_id, robot.embodiment, job.job, server.server)
        if all(r.startswith("job ") and " accepts " in r for r in reasons):
            return _with_reason(idle, f"no job accepts embodiment {robot.embodiment!r} ({'; '.join(reasons)})")
        return _with_reason(idle, "; ".join(reasons))

    @staticmethod
    def _job_status(job: Job, bound: list[str], live: list[Robot]) -> str:
        have = f"{len(bound)} robot{'s' if len(bound) != 1 else ''}" + (f" of {job.robots}" if job.robots else "")
        if job.robots and len(bound) < job.robots:
            kinds = " or ".join(job.embodiments) or "any embodiment"
            missing = job.robots - len(bound)
            return (f"waiting for {missing} more robot{'s' if missing != 1 else ''} ({kinds}); has {have}"
                    + (f": {', '.join(sorted(bound))}" if bound else ""))
        return f"running with {have}" + (f": {', '.join(sorted(bound))}" if bound else "")


def _with_reason(b: Binding, reason: str) -> Binding:
    return Binding(b.robot_id, b.embodiment, reason=reason)
