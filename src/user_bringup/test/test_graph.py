"""Tests of the shared node-graph description (graph.py) and of the launch file built on it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from user_bringup import cli
from user_bringup.graph import GraphError, NodeSpec, load_graph, parse_overrides, select_nodes

WORKSPACE = Path(__file__).resolve().parents[3]
FRANKA_SAC = WORKSPACE / "config" / "franka_sac.yaml"
LAUNCH_FILE = WORKSPACE / "launch" / "franka_sac.launch.py"


def write_graph(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    """Write a graph file into a temporary config folder and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def by_label(nodes: list[NodeSpec]) -> dict[str, NodeSpec]:
    """Index nodes by their label (fully-qualified name without the leading slash)."""
    return {n.label: n for n in nodes}


# --- the franka_sac graph ---------------------------------------------------------------------------


def test_scripted_recording_adds_a_buffer_node_the_robots_wait_for() -> None:
    """policy:=scripted record:=true: a buffer node records, robots hold transitions until it acks."""
    g = load_graph(FRANKA_SAC, {"policy": "scripted", "record": "true", "run_name": "demos"})
    nodes = by_label(g.nodes)
    assert "user/buffer" in nodes and "user/learner" not in nodes
    buffer = nodes["user/buffer"]
    assert (buffer.package, buffer.executable) == ("user_buffer", "buffer_node")
    assert buffer.parameters == {"bag_dir": "runs/demos/replay", "consumer": "buffer"}
    assert nodes["franka_0/robot"].parameters["ack_consumers"] == ["buffer"]
    plain = by_label(load_graph(FRANKA_SAC, {"policy": "scripted"}).nodes)
    assert "user/buffer" not in plain and "ack_consumers" not in plain["franka_0/robot"].parameters


def test_teleop_adds_a_teleop_node_for_one_robot_and_optionally_a_simulated_human() -> None:
    """teleop:=spacemouse|joy: one teleop node on teleop_robot; sim_human:=true adds the scripted human."""
    assert not {"teleop", "sim_human"} & {n.name for n in load_graph(FRANKA_SAC, {}).nodes}
    g = load_graph(FRANKA_SAC, {"robots": "2", "teleop": "spacemouse", "teleop_robot": "franka_1",
                                "sim_human": "true"})
    nodes = by_label(g.nodes)
    teleop = nodes["franka_1/teleop"]
    assert (teleop.package, teleop.executable) == ("user_hal", "teleop_node")
    assert teleop.parameters == {"robot_id": "franka_1", "input": "spacemouse"}
    assert "franka_0/teleop" not in nodes and "franka_1/sim_human" not in nodes, "sim_human needs teleop:=joy"
    g = load_graph(FRANKA_SAC, {"teleop": "joy", "sim_human": "true"})
    human = by_label(g.nodes)["franka_0/sim_human"]
    assert human.executable == "scripted_policy" and human.parameters["as_human"] is True
    assert human.parameters["robot_id"] == "franka_0" and human.parameters["human_when_stuck"] == 20
    assert human.parameters["human_corridor"] == 0.0
    corridor = by_label(load_graph(FRANKA_SAC, {"teleop": "joy", "sim_human": "true", "sim_human_corridor": "1.0"})
                        .nodes)["franka_0/sim_human"]
    assert corridor.parameters["human_corridor"] == 1.0
    assert by_label(g.nodes)["franka_0/teleop"].parameters == {
        "robot_id": "franka_0", "input": "joy", "success_button": 1, "open_button": -1}
    plain_joy = by_label(load_graph(FRANKA_SAC, {"teleop": "joy"}).nodes)["franka_0/teleop"]
    assert plain_joy.parameters == {"robot_id": "franka_0", "input": "joy"}
    with pytest.raises(GraphError, match=r"for_robot: 'franka_3' is not a robot of this graph \(robots: franka_0\)"):
        load_graph(FRANKA_SAC, {"teleop": "joy", "teleop_robot": "franka_3"})
    with pytest.raises(GraphError, match="teleop: 'keyboard' is not one of"):
        load_graph(FRANKA_SAC, {"teleop": "keyboard"})


def test_select_nodes_splits_the_graph_over_hosts() -> None:
    """--only / --skip keep nodes by label pattern; a pattern that matches nothing is an error."""
    g = load_graph(FRANKA_SAC, {"robots": "2"})
    edge = select_nodes(g, skip=["user/learner", "*/inference"])
    gpu = select_nodes(g, only=["user/learner", "*/inference"])
    assert [n.label for n in edge.nodes] == ["user/registry", "franka_0/robot", "franka_1/robot"]
    assert [n.label for n in gpu.nodes] == ["franka_0/inference", "franka_1/inference", "user/learner"]
    assert {n.label for n in edge.nodes} | {n.label for n in gpu.nodes} == {n.label for n in g.nodes}
    assert [n.label for n in select_nodes(g, only=["franka_1/*"], skip=["*/inference"]).nodes] == ["franka_1/robot"]
    with pytest.raises(GraphError, match=r"--only 'user/lerner' matches no node \(nodes: user/registry, "):
        select_nodes(g, only=["user/lerner"])
    with pytest.raises(GraphError, match="leave no node to run"):
        select_nodes(g, skip=["*"])


def test_cli_graph_only_and_skip(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["graph", "franka_sac", "--only", "user/learner,*/inference"]) == 0
    out = capsys.readouterr().out
    assert "/user/learner:" in out and "/franka_0/inference:" in out and "/franka_0/robot:" not in out
    assert cli.main(["graph", "franka_sac", "--skip", "nope"]) == 2
    assert "--skip 'nope' matches no node" in capsys.readouterr().err


def test_franka_sac_defaults() -> None:
    """Defaults: one robot trained with SAC: registry, robot (ends_run), inference, learner (stops_run)."""
    g = load_graph(FRANKA_SAC, {})
    assert g.args == {
        "robot": "sim", "robots": 1, "franka": 0, "wxai": 0, "policy": "sac", "config": "sac_peg", "sync": False,
        "profile": "robot_sim", "max_env_steps": 0, "max_minutes": 0.0, "run_name": "franka_sac",
        "realtime_factor": 1.0, "episodes": 0, "seed": 0, "record": False, "buffer": False, "reward": "profile",
        "reward_model": "runs/reward_model", "reward_when": "profile", "noise": 0.0, "terminate_on_success": "profile",
        "teleop": "none",
        "teleop_robot": "franka_0", "replan_every": 0, "sim_human": False, "sim_human_corridor": 0.0, "respawn_delay": 5.0,
    }
    assert g.robot_ids == ["franka_0"]
    nodes = by_label(g.nodes)
    assert list(nodes) == ["user/registry", "franka_0/robot", "franka_0/inference", "user/learner"]
    registry, robot, inference, learner = nodes.values()
    assert (registry.package, registry.executable, registry.ends_run) == ("user_hal", "registry_node", False)
    assert (robot.package, robot.executable, robot.ends_run) == ("user_hal", "robot_node", True)
    assert (inference.package, inference.executable) == ("user_learner", "inference_node")
    assert (learner.package, learner.executable, learner.stops_run) == ("user_learner", "learner_node", True)
    assert robot.namespace == "/franka_0" and robot.fqn == "/franka_0/robot"
    profile = str(g.config_dir / "robot_sim.yaml")
    assert robot.parameters == {
        "robot_id": "franka_0", "profile": profile, "backend": "sim", "realtime_factor": 1.0,
        "max_episodes": 0, "seed": 0, "wait_for_reset": False, "reward": "profile", "reward_when": "profile",
        "terminate_on_success": "profile", "ack_consumers": ["learner"],
    }
    assert isinstance(robot.parameters["realtime_factor"], float)
    assert isinstance(robot.parameters["max_episodes"], int)
    assert (robot.respawn_delay, registry.respawn_delay, learner.respawn_delay) == (5.0, 0.0, 5.0)
    assert load_graph(FRANKA_SAC, {"respawn_delay": "0"}).nodes[1].respawn_delay == 0.0
    learning = str(g.config_dir / "sac_peg.yaml")
    assert inference.parameters == {"config": learning, "robot_ids": ["franka_0"], "seed": 0,
                                    "replan_every": 0}
    assert learner.parameters["config"] == learning and learner.parameters["sync"] is False
    assert g.config_dir == FRANKA_SAC.parent.resolve() or g.config_dir == FRANKA_SAC.parent
    assert learner.parameters["remote_buffer"] is False


def test_franka_sac_buffer_puts_a_buffer_node_between_robots_and_learner() -> None:
    nodes = by_label(load_graph(FRANKA_SAC, {"buffer": "true", "run_name": "r"}).nodes)
    assert list(nodes) == ["user/registry", "franka_0/robot", "user/buffer", "franka_0/inference", "user/learner"]
    assert nodes["franka_0/robot"].parameters["ack_consumers"] == ["buffer"]
    assert nodes["user/buffer"].parameters == {"bag_dir": "runs/r/replay", "consumer": "buffer"}
    assert nodes["user/learner"].parameters["remote_buffer"] is True


def test_franka_sac_scripted_and_sync_variants() -> None:
    """policy:=scripted swaps inference + learner for the scripted expert; sync:=true reaches both sides."""
    g = load_graph(FRANKA_SAC, {"policy": "scripted"})
    assert [n.label for n in g.nodes] == ["user/registry", "franka_0/robot", "franka_0/scripted_policy"]
    assert "ack_consumers" not in g.nodes[1].parameters
    g = load_graph(FRANKA_SAC, {"sync": "true", "config": "sac_peg_cnn"})
    by = by_label(g.nodes)
    assert by["franka_0/robot"].parameters["wait_for_reset"] is True
    assert by["user/learner"].parameters["sync"] is True
    assert by["user/learner"].parameters["config"].endswith("sac_peg_cnn.yaml")


def test_franka_sac_profile_follows_the_robot_or_names_another() -> None:
    """The profile defaults to robot_<robot>; profile:= picks another cell (pick-and-place)."""
    robot = lambda ov: by_label(load_graph(FRANKA_SAC, ov).nodes)["franka_0/robot"].parameters  # noqa: E731
    assert robot({"robot": "franky"})["profile"].endswith("/robot_franky.yaml")
    params = robot({"profile": "robot_sim_pick", "policy": "scripted"})
    assert params["profile"].endswith("/robot_sim_pick.yaml") and params["backend"] == "sim"
    assert Path(params["profile"]).is_file()
    params = robot({"robot": "wxai_sim", "profile": "robot_wxai", "policy": "scripted"})
    assert params["profile"].endswith("/robot_wxai.yaml") and params["backend"] == "wxai_sim"
    assert Path(params["profile"]).is_file()


def test_an_arg_default_may_name_other_args(tmp_path: Path) -> None:
    path = write_graph(tmp_path, """\
        args:
          kind: {default: a}
          name: {default: "thing_${kind}"}
        nodes:
          - {name: n, executable: /bin/true, parameters: {p: "${name}"}}
        """)
    assert load_graph(path, {}).nodes[0].parameters["p"] == "thing_a"
    assert load_graph(path, {"kind": "b"}).nodes[0].parameters["p"] == "thing_b"
    assert load_graph(path, {"kind": "b", "name": "x"}).nodes[0].parameters["p"] == "x"
    bad = write_graph(tmp_path, """\
        args:
          name: {default: "thing_${nope}"}
        nodes: []
        """, "bad.yaml")
    with pytest.raises(GraphError, match=r"args\.name\.default: unknown substitution \$\{nope\}"):
        load_graph(bad, {})


def test_franka_sac_found_by_name() -> None:
    """A bare graph name is looked up in the config folder."""
    assert load_graph("franka_sac", {}).path.name == "franka_sac.yaml"


def test_franka_sac_overrides_three_robots() -> None:
    """robots:=3 gives three robot and three policy nodes in distinct namespaces, typed args."""
    overrides = parse_overrides(["robots:=3", "seed:=7", "episodes:=4", "realtime_factor:=2.5",
                                 "policy:=scripted"])
    g = load_graph(FRANKA_SAC, overrides)
    assert g.args["robots"] == 3 and g.args["realtime_factor"] == 2.5
    assert g.robot_ids == ["franka_0", "franka_1", "franka_2"]
    robots = [n for n in g.nodes if n.executable == "robot_node"]
    policies = [n for n in g.nodes if n.executable == "scripted_policy"]
    assert len(robots) == 3 and len(policies) == 3
    assert [n.namespace for n in robots] == ["/franka_0", "/franka_1", "/franka_2"]
    assert {n.namespace for n in policies} == {n.namespace for n in robots}
    assert len({n.fqn for n in g.nodes}) == len(g.nodes)
    for n in robots:
        assert n.parameters["robot_id"] == n.namespace.strip("/") == n.robot_id
        assert n.parameters["max_episodes"] == 4 and n.parameters["seed"] == 7
        assert n.parameters["realtime_factor"] == 2.5
    assert [n.label for n in g.ends_run_nodes] == [n.label for n in robots]


def test_franka_sac_zero_robots_keeps_registry_only() -> None:
    """robots:=0 leaves only the shared nodes (registry and learner)."""
    g = load_graph(FRANKA_SAC, {"robots": "0"})
    assert [n.label for n in g.nodes] == ["user/registry", "user/learner"]


# --- general features -------------------------------------------------------------------------------

FEATURES = """\
    args:
      mode: {default: a, choices: [a, b, c], help: which mode}
      n: {default: 2}
      gain: {default: 0.5}
      verbose: {default: false}
    robots:
      - {kind: arm, id_prefix: arm_, count: "${n}", vars: {model: ur5}}
      - {kind: cam, ids: [cam_left]}
    nodes:
      - name: always
        executable: /bin/true
        namespace: /tools/${mode}
        arguments: [--gain, "${gain}"]
        parameters:
          label: "mode=${mode} cost=$$5"
          gain: ${gain}
          verbose: ${verbose}
          nested: {inner: "${config_dir}/x_${mode}.yaml"}
          sizes: [1, 2, 3]
        remappings: {chatter: /other}
      - name: only_a
        package: pkg
        executable: exe
        if: {mode: a}
      - name: b_or_c
        package: pkg
        executable: exe
        if: {mode: [b, c], verbose: true}
      - name: worker
        package: pkg
        executable: exe
        per_robot: true
        namespace: ${robot_id}
        parameters: {id: "${robot_id}", index: "${robot_index}", kind: "${robot_kind}"}
        remappings: [[in, "/${robot_id}/data"]]
    """


def test_substitutions_types_and_remappings(tmp_path: Path) -> None:
    """Whole-value substitutions keep their type; embedded ones become text; $$ is a dollar."""
    g = load_graph(write_graph(tmp_path, FEATURES), {})
    always = by_label(g.nodes)["tools/a/always"]
    assert always.package == "" and always.executable == "/bin/true"
    assert always.parameters["label"] == "mode=a cost=$5"
    assert always.parameters["gain"] == 0.5 and always.parameters["verbose"] is False
    assert always.parameters["nested"] == {"inner": f"{tmp_path}/x_a.yaml"}
    assert always.parameters["sizes"] == [1, 2, 3]
    assert always.arguments == ["--gain", "0.5"]
    assert always.remappings == [("chatter", "/other")]


def test_robot_groups_and_per_robot_variables(tmp_path: Path) -> None:
    """Robot groups give ids, indices, kinds and group vars to per-robot nodes."""
    g = load_graph(write_graph(tmp_path, FEATURES), {"n": "3"})
    assert g.robot_ids == ["arm_0", "arm_1", "arm_2", "cam_left"]
    workers = [n for n in g.nodes if n.name == "worker"]
    assert [(w.parameters["id"], w.parameters["index"], w.parameters["kind"]) for w in workers] == [
        ("arm_0", 0, "arm"), ("arm_1", 1, "arm"), ("arm_2", 2, "arm"), ("cam_left", 3, "cam"),
    ]
    assert workers[1].remappings == [("in", "/arm_1/data")]


def test_conditions(tmp_path: Path) -> None:
    """`if` keeps a node only when every listed arg matches (a list means any of)."""
    path = write_graph(tmp_path, FEATURES)
    names = lambda ov: {n.name for n in load_graph(path, ov).nodes}  # noqa: E731
    assert {"only_a"} <= names({}) and "b_or_c" not in names({})
    assert "only_a" not in names({"mode": "b"}) and "b_or_c" not in names({"mode": "b"})
    assert "b_or_c" in names({"mode": "c", "verbose": "true"})
    assert "b_or_c" in names({"mode": "b", "verbose": "yes"})


def test_parse_overrides() -> None:
    """name:=value pairs become a dict; anything else is a clear error."""
    assert parse_overrides(["a:=1", "b:=x:=y", "c:="]) == {"a": "1", "b": "x:=y", "c": ""}
    for bad in (["a=1"], ["1a:=2"], ["a:=1", "a:=2"]):
        with pytest.raises(GraphError):
            parse_overrides(bad)


# --- error paths: every message names the file and the key -----------------------------------------

MINIMAL_NODE = "nodes: [{name: a, package: p, executable: e}]\n"

BAD_GRAPHS = [
    ("nodes: [\n  {name: a\n", "invalid YAML"),
    ("- 1\n- 2\n", "top level"),
    ("args: {}\n", "nodes: missing key"),
    ("nodez: []\n" + MINIMAL_NODE, "nodez"),
    ("args: []\n" + MINIMAL_NODE, "args:"),
    ("args: {x: {help: h}}\n" + MINIMAL_NODE, "args.x.default"),
    ("args: {x: {default: [1]}}\n" + MINIMAL_NODE, "args.x.default"),
    ("args: {x: {default: 1, colour: red}}\n" + MINIMAL_NODE, "args.x.colour"),
    ("args: {x: {default: 1, choices: [2, 3]}}\n" + MINIMAL_NODE, "args.x.default"),
    ("args: {x: {default: 1, choices: [1, nope]}}\n" + MINIMAL_NODE, "args.x.choices[1]"),
    ("args: {robot_id: {default: x}}\n" + MINIMAL_NODE, "args.robot_id"),
    ("nodes: {a: 1}\n", "nodes:"),
    ("nodes: [{name: a, package: p}]\n", "nodes[0](a).executable"),
    ("nodes: [{package: p, executable: e}]\n", "nodes[0].name"),
    ("nodes: [{name: a, executable: e, colour: red}]\n", "nodes[0](a).colour"),
    ("nodes: [{name: a, executable: e, parameters: [1]}]\n", "nodes[0](a).parameters"),
    ("nodes: [{name: a, executable: e, parameters: {p: null}}]\n", "nodes[0](a).parameters.p"),
    ("nodes: [{name: a, executable: e, parameters: {p: [1, x]}}]\n", "nodes[0](a).parameters.p"),
    ("nodes: [{name: a, executable: e, parameters: {p: '${nope}'}}]\n", "nodes[0](a).parameters.p"),
    ("nodes: [{name: a, executable: e, parameters: {p: 'x${nope'}}]\n", "nodes[0](a).parameters.p"),
    ("nodes: [{name: a, executable: e, parameters: {p: '${robot_id}'}}]\n", "per_robot"),
    ("nodes: [{name: a, executable: e, per_robot: yes please}]\n", "nodes[0](a).per_robot"),
    ("nodes: [{name: a, executable: e, ends_run: 1}]\n", "nodes[0](a).ends_run"),
    ("nodes: [{name: a-b, executable: e}]\n", "nodes[0](a-b).name"),
    ("nodes: [{name: a, executable: e, respawn_delay: -1}]\n", "nodes[0](a).respawn_delay"),
    ("nodes: [{name: a, executable: e, respawn_delay: soon}]\n", "nodes[0](a).respawn_delay"),
    ("nodes: [{name: a, executable: e, namespace: 'x y'}]\n", "nodes[0](a).namespace"),
    ("nodes: [{name: a, executable: e, remappings: 3}]\n", "nodes[0](a).remappings"),
    ("nodes: [{name: a, executable: e, remappings: [[x]]}]\n", "nodes[0](a).remappings[0]"),
    ("nodes: [{name: a, executable: e, if: {zzz: 1}}]\n", "nodes[0](a).if.zzz"),
    ("args: {m: {default: a, choices: [a, b]}}\nnodes: [{name: a, executable: e, if: {m: q}}]\n",
     "nodes[0](a).if.m"),
    ("nodes: [{name: a, executable: e}, {name: a, executable: f}]\n", "nodes:"),
    ("robots: {count: 2}\n" + MINIMAL_NODE, "robots:"),
    ("robots: [{count: 2}]\n" + MINIMAL_NODE, "robots[0].id_prefix"),
    ("robots: [{id_prefix: r_, count: two}]\n" + MINIMAL_NODE, "robots[0].count"),
    ("robots: [{ids: [a, a]}]\n" + MINIMAL_NODE, "robots[0]"),
    ("robots: [{ids: ['0bad']}]\n" + MINIMAL_NODE, "robots[0]"),
    ("robots: [{ids: [a], count: 1}]\n" + MINIMAL_NODE, "robots[0].ids"),
    ("description: [1]\n" + MINIMAL_NODE, "description"),
    ("robots: [{ids: [a]}]\nnodes: [{name: n, executable: e, for_robot: b}]\n", "nodes[0](n).for_robot"),
    ("robots: [{ids: [a]}]\nnodes: [{name: n, executable: e, for_robot: a, per_robot: true}]\n",
     "nodes[0](n).for_robot"),
]


@pytest.mark.parametrize(("text", "key"), BAD_GRAPHS, ids=[k for _, k in BAD_GRAPHS])
def test_bad_graph_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    """A malformed graph raises GraphError naming the file and the offending key."""
    path = write_graph(tmp_path, text, name="bad.yaml")
    with pytest.raises(GraphError) as info:
        load_graph(path, {})
    message = str(info.value)
    assert str(path) in message and key in message, message


OVERRIDE_GRAPH = """\
    args:
      mode: {default: a, choices: [a, b]}
      n: {default: 1}
      flag: {default: true}
    robots: [{id_prefix: r_, count: "${n}"}]
    nodes: [{name: a, executable: e}]
    """


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"bogus": "1"}, "args.bogus"),
        ({"mode": "z"}, "args.mode"),
        ({"n": "1.5"}, "args.n"),
        ({"flag": "maybe"}, "args.flag"),
        ({"n": "-1"}, "robots[0].count"),
    ],
)
def test_bad_override_names_file_and_key(tmp_path: Path, overrides: dict, key: str) -> None:
    """An unknown arg, a bad choice or a badly typed value names the file and the arg."""
    path = write_graph(tmp_path, OVERRIDE_GRAPH)
    with pytest.raises(GraphError) as info:
        load_graph(path, overrides)
    assert str(path) in str(info.value) and key in str(info.value), str(info.value)


def test_missing_graph(tmp_path: Path) -> None:
    """An unknown graph name lists where it looked and which graphs exist."""
    write_graph(tmp_path, MINIMAL_NODE, name="present.yaml")
    (tmp_path / "profile.yaml").write_text("robot: {}\n")
    with pytest.raises(GraphError) as info:
        load_graph("absent", {}, config_dirs=[tmp_path])
    assert "absent" in str(info.value) and str(tmp_path) in str(info.value)
    assert "present" in str(info.value) and "profile" not in str(info.value)
    with pytest.raises(GraphError, match="not found"):
        load_graph(str(tmp_path / "nothing.yaml"), {})


# --- the CLI front end ------------------------------------------------------------------------------


def test_cli_graph_prints_resolved_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    """`userctl graph` lists every node that would be launched."""
    assert cli.main(["graph", str(FRANKA_SAC), "robots:=2"]) == 0
    out = capsys.readouterr().out
    for fqn in ("/user/registry", "/franka_0/robot", "/franka_1/robot", "/franka_1/inference", "/user/learner"):
        assert fqn in out
    assert "robots = 2   (default 1)" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["graph", str(FRANKA_SAC), "robots:=many"],
        ["graph", str(FRANKA_SAC), "nope:=1"],
        ["graph", str(FRANKA_SAC), "robot:=real"],
        ["graph", str(FRANKA_SAC), "robots=2"],
        ["graph", "no_such_graph"],
        ["launch", str(FRANKA_SAC), "policy:=dqn"],
        ["robots", "--timeout", "0"],
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad input gives one line on stderr, exit code 2 and no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_cli_usage_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An argparse error (unknown subcommand) is also one line with exit code 2."""
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- the ROS 2 launch file --------------------------------------------------------------------------


def test_launch_file_compiles() -> None:
    """The launch file is valid Python even where launch_ros is missing."""
    compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec")


def test_launch_file_yields_same_nodes() -> None:
    """Where launch_ros exists, the launch file produces the graph's nodes (robots:=2)."""
    try:
        import launch  # noqa: F401
        import launch_ros.actions
    except ImportError as exc:
        reason = f"launch_ros not installed: {exc} (it ships with a full ROS 2 install)"
        print(reason)
        pytest.skip(reason)
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    context = LaunchContext()
    context.launch_configurations["robots"] = "2"
    description = PythonLaunchDescriptionSource(str(LAUNCH_FILE)).get_launch_description(context)
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert {d.name for d in declared} == set(load_graph(FRANKA_SAC, {}).args)
    actions = []
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)  # fills in defaults not given on the command line
        elif isinstance(entity, OpaqueFunction):
            actions.extend(entity.visit(context) or [])
    nodes = [a for a in actions if isinstance(a, launch_ros.actions.Node)]
    expected = load_graph(FRANKA_SAC, {"robots": "2"}).nodes
    assert sorted((n.node_package, n.node_executable) for n in nodes) == sorted(
        (n.package, n.executable) for n in expected
    )


def test_mixed_graphs_give_each_arm_its_backend_profile_and_ids() -> None:
    """franka:=2 wxai:=2 runs both arms, ids saying what they are, each with its own backend and profile;
    one inference node per robot and one learner, all on the mixed learning config."""
    g = load_graph(FRANKA_SAC, {"franka": "2", "wxai": "2", "config": "sac_peg_mixed"})
    assert g.robot_ids == ["franka_0", "franka_1", "wxai_0", "wxai_1"]
    robots = {n.robot_id: n.parameters for n in g.nodes if n.name == "robot"}
    assert {rid: (p["backend"], Path(p["profile"]).name) for rid, p in robots.items()} == {
        "franka_0": ("sim", "robot_sim.yaml"), "franka_1": ("sim", "robot_sim.yaml"),
        "wxai_0": ("wxai_sim", "robot_wxai.yaml"), "wxai_1": ("wxai_sim", "robot_wxai.yaml")}
    configs = {Path(n.parameters["config"]).name for n in g.nodes if n.name in ("inference", "learner")}
    assert configs == {"sac_peg_mixed.yaml"} and Path(g.config_dir / "sac_peg_mixed.yaml").is_file()
    assert sorted(n.label for n in g.nodes if n.name == "inference") == [f"{r}/inference" for r in g.robot_ids]
    assert load_graph(FRANKA_SAC, {"wxai": "1"}).robot_ids == ["wxai_0"]
    assert load_graph(FRANKA_SAC, {"robots": "2"}).robot_ids == ["franka_0", "franka_1"]   # unchanged


@pytest.mark.parametrize("overrides, words", [
    ({"robots": "3", "wxai": "1"}, "robots[0].count: robots:=3 is not used: this robot group runs only with "
                                   "franka:=0, wxai:=0"),
    ({"robot": "franky", "franka": "1"}, "robots[1].vars.robot: robot:=franky does not apply to the robots of "
                                         "this group (their robot is 'sim')"),
    ({"profile": "robot_sim_pick", "wxai": "1"}, "robots[2].vars.profile: profile:=robot_sim_pick does not apply"),
])
def test_a_mixed_graph_refuses_args_it_would_ignore(overrides, words) -> None:
    with pytest.raises(GraphError) as err:
        load_graph(FRANKA_SAC, overrides)
    assert words in str(err.value) and str(FRANKA_SAC) in str(err.value), str(err.value)


def test_a_robot_group_may_be_switched_off(tmp_path: Path) -> None:
    path = write_graph(tmp_path, """\
        args:
          n: {default: 1}
          extra: {default: 0}
        robots:
          - {kind: a, id_prefix: a_, count: "${n}", if: {extra: 0}}
          - {kind: b, id_prefix: b_, count: "${extra}"}
        nodes:
          - {name: w, executable: /bin/true, per_robot: true, namespace: "${robot_id}"}
        """)
    assert load_graph(path, {}).robot_ids == ["a_0"]
    assert load_graph(path, {"extra": "2"}).robot_ids == ["b_0", "b_1"]
    with pytest.raises(GraphError, match=r"robots\[0\]\.if\.nope: unknown argument"):
        load_graph(write_graph(tmp_path, """\
            robots:
              - {kind: a, id_prefix: a_, count: 1, if: {nope: 0}}
            nodes: []
            """, "bad.yaml"), {})
