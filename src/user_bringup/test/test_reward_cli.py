"""``userctl reward record|train`` argument handling and the graph's learned-reward wiring (no ROS, no training)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from user_bringup import cli
from user_bringup.graph import load_graph

FRANKA_SAC = Path(__file__).resolve().parents[3] / "config" / "franka_sac.yaml"


def test_reward_learned_starts_a_reward_node_per_robot_and_tells_the_robots() -> None:
    g = load_graph(FRANKA_SAC, {"robots": "2", "reward": "learned", "reward_model": "runs/m", "reward_when": "end",
                                "config": "rlpd_peg"})
    nodes = {n.label: n for n in g.nodes}
    for rid in ("franka_0", "franka_1"):
        node = nodes[f"{rid}/reward"]
        assert (node.package, node.executable) == ("user_learner", "reward_node")
        assert node.parameters == {"robot_ids": [rid], "model": "runs/m"}
        robot = nodes[f"{rid}/robot"].parameters
        assert (robot["reward"], robot["reward_when"]) == ("learned", "end")
    assert not [n for n in load_graph(FRANKA_SAC, {}).nodes if n.name == "reward"]


def _record_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["reward", "record", *argv])


def test_record_runs_the_noisy_scripted_expert_with_a_buffer() -> None:
    got = cli.record_overrides(_record_args("--episodes", "7", "--noise", "0.3", "seed:=4"))
    assert got == ["policy:=scripted", "record:=true", "episodes:=7", "run_name:=reward_data", "noise:=0.3",
                   "realtime_factor:=0", "terminate_on_success:=false", "seed:=4"]
    g = load_graph(FRANKA_SAC, cli.parse_overrides(got))
    nodes = {n.label: n for n in g.nodes}
    assert nodes["user/buffer"].parameters["bag_dir"] == "runs/reward_data/replay"
    assert nodes["franka_0/scripted_policy"].parameters["noise"] == 0.3
    assert nodes["franka_0/robot"].parameters["terminate_on_success"] == "false"
    # A real robot runs at its own pace and ends on the human's label: nothing simulation-only is added.
    real = cli.record_overrides(_record_args("robot:=franky", "teleop:=spacemouse"))
    assert not any(o.startswith(("realtime_factor", "terminate_on_success")) for o in real)


@pytest.mark.parametrize("argv, words", [
    (["reward", "record", "policy:=sac"], "policy:= is set by userctl reward record"),
    (["reward", "record", "run_name:=x"], "run_name:= is set by userctl reward record"),
    (["reward", "record", "--episodes", "0"], "--episodes must be > 0, got 0"),
    (["reward", "record", "--noise", "-1"], "--noise must be >= 0, got -1.0"),
    (["reward", "record", "robots"], "bad argument 'robots'"),
    (["reward", "train", "--data", "d", "--out", "o", "--steps", "0"], "--steps must be > 0, got 0"),
    (["reward", "train", "--data", "d", "--out", "o", "--threshold", "1"], "--threshold must be in (0, 1), got 1.0"),
    (["reward", "train", "--data", "d", "--out", "o", "--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
    (["reward", "train", "--data", "no_such_bag", "--out", "o"], "no bag directory no_such_bag"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, words, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"userctl reward {argv[1]}: error: ") and words in err and "\n" not in err, err


def test_train_out_must_be_a_folder_and_data_must_hold_a_bag(capsys, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    assert cli.main(["reward", "train", "--data", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert cli.main(["reward", "train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "is not a transition bag" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["reward", "train", "--out", "m"])   # --data is required
    assert exc.value.code == 2
