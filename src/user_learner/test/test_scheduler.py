"""The scheduler's binding core: pool, jobs, bind and release, idle robots with their reason, waiting jobs,
capacity limits, sticky bindings and a restarted scheduler adopting what the servers serve."""
from __future__ import annotations

from user_learner.scheduler import Job, Pool, Robot, Server


def franka(i: int) -> Robot:
    return Robot(f"franka_{i}", "franka_fr3")


def wxai(i: int) -> Robot:
    return Robot(f"wxai_{i}", "wxai")


def where(decision) -> dict[str, tuple[str, str]]:
    return {r: (b.job, b.server) for r, b in decision.robots.items()}


def test_robots_are_bound_to_their_job_on_the_least_loaded_server_within_capacity():
    pool = Pool()
    d = pool.bind([franka(0), franka(1), franka(2)], [Job("peg", ("franka_fr3",))],
                  [Server("inf_a", "peg", 2), Server("inf_b", "peg", 2)])
    assert where(d) == {"franka_0": ("peg", "inf_a"), "franka_1": ("peg", "inf_b"), "franka_2": ("peg", "inf_a")}
    assert d.servers == {"inf_a": ["franka_0", "franka_2"], "inf_b": ["franka_1"]}
    assert d.jobs["peg"] == "running with 3 robots: franka_0, franka_1, franka_2"


def test_capacity_limits_leave_the_rest_idle_with_the_reason():
    d = Pool().bind([franka(0), franka(1)], [Job("peg")], [Server("inf_a", "peg", 1)])
    assert where(d)["franka_0"] == ("peg", "inf_a")
    idle = d.robots["franka_1"]
    assert not idle.server and idle.reason == "job peg has no inference server with room (inf_a 1/1)"


def test_a_robot_whose_embodiment_no_job_accepts_stays_idle_and_says_why():
    d = Pool().bind([wxai(0)], [Job("peg", ("franka_fr3",))], [Server("inf_a", "peg", 4)])
    assert d.robots["wxai_0"].reason == "no job accepts embodiment 'wxai' (job peg accepts franka_fr3)"
    assert Pool().bind([wxai(0)], [], []).robots["wxai_0"].reason == "no job is declared"


def test_a_job_asking_for_robots_that_do_not_exist_waits_and_says_for_what():
    d = Pool().bind([franka(0)], [Job("peg", ("franka_fr3", "wxai"), robots=3)], [Server("inf_a", "peg", 4)])
    assert d.jobs["peg"] == "waiting for 2 more robots (franka_fr3 or wxai); has 1 robot of 3: franka_0"
    assert Pool().bind([], [Job("peg", robots=1)], []).jobs["peg"] == \
        "waiting for 1 more robot (any embodiment); has 0 robots of 1"


def test_a_job_takes_no_more_robots_than_it_asks_for():
    d = Pool().bind([franka(0), franka(1)], [Job("peg", robots=1)], [Server("inf_a", "peg", 4)])
    assert where(d)["franka_0"] == ("peg", "inf_a")
    assert d.robots["franka_1"].reason == "job peg has its 1 robot"


def test_a_robot_the_config_does_not_fit_is_refused_with_the_fit_message():
    def fits(job, robot):
        return "" if robot.embodiment == "franka_fr3" else f"robot {robot.robot_id}: 6 actions, the policy outputs 7"

    d = Pool(fits).bind([franka(0), wxai(0)], [Job("peg")], [Server("inf_a", "peg", 4)])
    assert where(d)["franka_0"] == ("peg", "inf_a")
    assert d.robots["wxai_0"].reason == "job peg refuses it: robot wxai_0: 6 actions, the policy outputs 7"


def test_two_jobs_split_robots_by_embodiment_and_use_only_their_own_servers():
    jobs = [Job("peg", ("franka_fr3",)), Job("pick", ("wxai",))]
    servers = [Server("inf_peg", "peg", 4), Server("inf_pick", "pick", 4)]
    d = Pool().bind([franka(0), wxai(0)], jobs, servers)
    assert where(d) == {"franka_0": ("peg", "inf_peg"), "wxai_0": ("pick", "inf_pick")}


def test_a_lost_robot_is_released_and_a_later_robot_is_bound_without_moving_the_others():
    pool = Pool()
    jobs, servers = [Job("peg")], [Server("inf_a", "peg", 2), Server("inf_b", "peg", 2)]
    first = where(pool.bind([franka(0), franka(1)], jobs, servers))
    d = pool.bind([franka(1)], jobs, servers)                    # franka_0 lost
    assert "franka_0" not in d.robots and d.servers["inf_a"] == []
    d = pool.bind([franka(1), franka(5), franka(6)], jobs, servers)   # hot-plugged robots
    assert where(d)["franka_1"] == first["franka_1"]
    assert sorted(s for _, s in where(d).values()) == ["inf_a", "inf_a", "inf_b"]


def test_a_lost_server_releases_its_robots_to_the_servers_with_room():
    pool = Pool()
    jobs = [Job("peg")]
    pool.bind([franka(0), franka(1)], jobs, [Server("inf_a", "peg", 1), Server("inf_b", "peg", 1)])
    d = pool.bind([franka(0), franka(1)], jobs, [Server("inf_b", "peg", 2)])
    assert {b.server for b in d.robots.values()} == {"inf_b"}
    d = pool.bind([franka(0), franka(1)], jobs, [])
    assert all(not b.server and "none announced" in b.reason for b in d.robots.values())


def test_a_restarted_scheduler_adopts_what_the_servers_say_they_serve():
    servers = [Server("inf_a", "peg", 2, serving=("franka_1",)), Server("inf_b", "peg", 2, serving=("franka_0",))]
    d = Pool().bind([franka(0), franka(1)], [Job("peg")], servers)
    assert where(d) == {"franka_0": ("peg", "inf_b"), "franka_1": ("peg", "inf_a")}


def test_a_server_of_an_undeclared_job_gets_no_robots():
    d = Pool().bind([franka(0)], [Job("peg")], [Server("inf_x", "other", 4)])
    assert d.robots["franka_0"].reason == "job peg has no inference server with room (none announced)"
    assert d.servers == {}
