"""Every registered algorithm runs end to end through the real graph (robot, inference, learner on DDS):
weights flow and versions advance, inference acts with them, and (for ``RESUMED``) a second run resumes
from the first one's checkpoint. Each algorithm is run with the shipped learning config that names it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from user_msgs.msg import Transition

from hal_helpers import ROOT, Collect, learning_config_dir, userctl_cmd
from ros_isolation import isolated_ros_env
from user_buffer.codec import decode_transition
from user_buffer.store import TransitionStore
from user_learner.algos import algorithm_names

pytestmark = pytest.mark.timeout(400)
# Resumed through the graph as well (the others' checkpoints are resumed bit-identically in unit tests:
# rlpd and sac_flow are SAC's agent, test_sac_resume; hg_dagger, test_hg_dagger)
RESUMED = {"sac", "hg_dagger_vla"}


def shipped_configs() -> dict[str, str]:
    """algorithm name -> the first config/*.yaml (learning config) that names it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "config").glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        name = (data.get("algo") or {}).get("name")
        if name:
            found.setdefault(name, path.stem)
    return found


def test_every_registered_algorithm_has_a_shipped_config():
    missing = sorted(set(algorithm_names()) - set(shipped_configs()))
    assert not missing, f"no config/*.yaml names algo.name {missing}"


def small(cfg_dir: Path, name: str, demo_dir: Path | None) -> None:
    """The shipped config of ``name``, shrunk for a test: small networks and batches, quick cadence."""
    path = cfg_dir / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    if data["algo"]["name"] == "hg_dagger_vla":   # no MLP: a smaller transformer
        data["algo"].update(batch_size=32, d_model=32, layers=1, heads=2, head_dim=32, head_layers=1, head_heads=2)
    else:
        data["algo"].update(batch_size=64, hidden_dims=[64, 64])
    data["learner"].update(min_buffer=60, publish_every_updates=20, checkpoint_every_updates=100,
                           log_every_s=2.0, max_utd=1.0)
    if demo_dir is not None:
        data["replay"]["demo_dir"] = str(demo_dir)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def scripted_demos(tmp_path_factory) -> Path:
    """Six episodes of the scripted expert recorded through the graph once, for every algorithm that
    learns from demonstrations (their runs open the bag read-only)."""
    d = tmp_path_factory.mktemp("demos")
    cfg = learning_config_dir(d)
    with isolated_ros_env() as env:
        rec = subprocess.run(userctl_cmd("launch", str(cfg / "franka_sac.yaml"), "policy:=scripted", "record:=true",
                                         "episodes:=6", "realtime_factor:=0", "run_name:=demos"),
                             cwd=d, env=env, capture_output=True, text=True, timeout=120)
    assert rec.returncode == 0, (rec.stdout + rec.stderr)[-3000:]
    return d / "runs/demos/replay"


@pytest.mark.parametrize("algo", algorithm_names())
def test_the_algorithm_trains_through_the_graph_and_resumes(procs, ros_node, tmp_path, monkeypatch, algo, request):
    from user_learner.algos import get_algorithm

    if not get_algorithm(algo).learns:
        print(f"SKIP {algo}: inference only (a real VLA needs its package, weights and a GPU)")
        pytest.skip(f"{algo}: inference only, needs a real VLA's package and weights")
    monkeypatch.chdir(tmp_path)
    config = shipped_configs()[algo]
    cfg = learning_config_dir(tmp_path)
    demo_dir = request.getfixturevalue("scripted_demos") if get_algorithm(algo).needs_demos else None
    small(cfg, config, demo_dir)
    transitions = Collect(ros_node, Transition, "/user/transitions")
    args = [str(cfg / "franka_sac.yaml"), f"config:={config}", "run_name:=t", "realtime_factor:=0"]
    if algo == "hg_dagger":   # the scripted human takes over when the policy is stuck
        args += ["teleop:=joy", "sim_human:=true"]
    first = procs.start("first", userctl_cmd("launch", *args, "max_env_steps:=200"))
    assert first.popen.wait(timeout=240) == 0, first.output()[-3000:]
    out = first.output()
    assert f"learner (async): {algo}," in out, out[-3000:]
    summary = re.search(r"summary: (\d+) env steps, (\d+) updates", out)
    assert summary and int(summary.group(2)) > 0, out[-3000:]
    if algo == "hg_dagger":
        # Once the policy is stuck the scripted human keeps control for the rest of the run, possibly before
        # the first weights arrive; the inference node keeps answering (its answers are dropped), so its own
        # count says which weights it acted with.
        done = re.search(r"\[inference\] done: .*policy version (\d+)", out)
        assert done and int(done.group(1)) > 1, f"inference never acted with learned weights:\n{out[-3000:]}"
    else:
        versions = sorted({t.policy_version for t in transitions.msgs if t.action_source == 0})
        assert versions and versions[-1] > 1, f"inference never acted with learned weights: versions {versions}"
    if algo == "hg_dagger":   # the human's steps are HG-DAgger's aggregated dataset, a bag of its own

        def keys(path: Path, human_only: bool) -> set[tuple[int, int]]:
            bag = TransitionStore(path, writable=False)
            rows = [decode_transition(bag.read(r)) for r in range(len(bag))]
            bag.close()
            return {(t.episode_id, t.step) for t in rows if t.intervened or not human_only}

        human = keys(tmp_path / "runs/t/replay", human_only=True)
        assert human, "the scripted human never took over"
        assert keys(tmp_path / "runs/t/interventions", human_only=False) == human

    if algo not in RESUMED:
        return
    bag = TransitionStore(tmp_path / "runs/t/replay", writable=False)
    held = len(bag)   # the robot outruns the first budget until the run stops (a chunk policy by far)
    bag.close()
    second = procs.start("second", userctl_cmd("launch", *args, f"max_env_steps:={held + 60}"))
    assert second.popen.wait(timeout=240) == 0, second.output()[-3000:]
    out2 = second.output()
    assert re.search(r"resumed from \S*runs/t/checkpoints/ckpt_\d+\.pt", out2), out2[-3000:]
    summary2 = re.search(r"summary: (\d+) env steps, (\d+) updates", out2)
    assert summary2 and int(summary2.group(2)) > int(summary.group(2)), "the second run goes on from the first"


def test_sac_trains_on_pick_and_place_through_the_graph(procs, ros_node, tmp_path, monkeypatch):
    """profile:=robot_sim_pick config:=sac_pick: the 27-value observations (the cube's pose included)
    reach the learner, and inference acts with learned weights."""
    monkeypatch.chdir(tmp_path)
    cfg = learning_config_dir(tmp_path)
    small(cfg, "sac_pick", None)
    prof = yaml.safe_load((cfg / "robot_sim_pick.yaml").read_text())
    prof["robot"]["cameras"] = []
    prof["robot"]["max_episode_steps"] = 40
    (cfg / "robot_sim_pick.yaml").write_text(yaml.safe_dump(prof))
    transitions = Collect(ros_node, Transition, "/user/transitions")
    run = procs.start("pick", userctl_cmd("launch", str(cfg / "franka_sac.yaml"), "profile:=robot_sim_pick",
                                          "config:=sac_pick", "run_name:=pick", "realtime_factor:=0",
                                          "max_env_steps:=170"))
    assert run.popen.wait(timeout=240) == 0, run.output()[-3000:]
    summary = re.search(r"summary: (\d+) env steps, (\d+) updates", run.output())
    assert summary and int(summary.group(2)) > 0, run.output()[-3000:]
    assert transitions.msgs and all(len(t.obs.proprio) == 27 for t in transitions.msgs)
    versions = sorted({t.policy_version for t in transitions.msgs if t.action_source == 0})
    assert versions and versions[-1] > 1, f"inference never acted with learned weights: versions {versions}"
