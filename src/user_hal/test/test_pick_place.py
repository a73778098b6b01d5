"""Pick-and-place on the simulated FR3: the scene, seeded resets, the reward rule, the profile, the
scripted expert through the robot cell, and what the cameras see."""
from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml

from user_hal.backends.base import RobotState, make_backend
from user_hal.core.cell import RobotCell, proprio_names, state_from_proprio
from user_common.config_schema import ConfigError
from user_hal.core.geometry import quat_to_rotvec
from user_hal.profile import load_profile
from user_hal.tasks.experts import ScriptedInsertion, ScriptedPickPlace, make_expert
from user_hal.backends.sim.franka_sim import SimFrankaBackend
from user_hal.backends.sim.scene import RENDER_GEOM_GROUPS
from user_hal.tasks.rules import PickPlace, make_task

ROOT = Path(__file__).resolve().parents[3]
PICK_PROFILE = ROOT / "config" / "robot_sim_pick.yaml"
PEG_PROFILE = ROOT / "config" / "robot_sim.yaml"


def make_cell(seed=0, path=PICK_PROFILE, options=None, **overrides) -> RobotCell:
    prof = load_profile(path, {"robot.cameras": [], "robot.realtime_factor": 0.0, **overrides})
    opts = {**prof.backend_options, "cameras": (), "render_images": False, **(options or {})}
    cell = RobotCell(prof, make_backend("sim", **opts), seed=seed)
    cell.start()
    return cell


@pytest.fixture(scope="module")
def cell():
    c = make_cell()
    yield c
    c.close()


def cube_yaw(pose: np.ndarray) -> float:
    return float(quat_to_rotvec(pose[3:7])[2])


# -- the scene ----------------------------------------------------------------------------------------
def test_the_scene_has_two_bins_and_a_free_cube_resting_in_the_source_bin(cell):
    model, b = cell.backend.model, cell.backend.bins
    for name in ("source_bin", "target_bin"):
        geoms = [model.geom(g).name for g in range(model.ngeom) if model.geom_bodyid[g] == model.body(name).id]
        assert len(geoms) == 5, f"{name}: expected a floor and four walls, got {geoms}"
    assert model.jnt_type[model.joint("cube").id] == mujoco.mjtJoint.mjJNT_FREE
    cell.reset(seed=0)
    cube = cell.backend.state().objects["cube"]
    assert cube.shape == (7,)
    assert np.all(np.abs(cube[:2] - b.source_pos) <= np.asarray(b.spawn_range) + 1e-3), cube
    assert abs(cube[2] - b.cube_rest_height) < 2e-3, f"cube not resting on the bin floor: z {cube[2]:.4f}"


def test_the_peg_scene_reports_no_objects_and_keeps_its_geometry():
    sim = SimFrankaBackend(render_images=False)
    sim.start()
    try:
        assert sim.state().objects == {}
        assert sim.task_geometry() == {"name": "peg_insertion", "target_pos": (0.5, 0.0, 0.0),
                                       "peg_tip_offset": pytest.approx(0.07)}
        sim.reset_scene(np.random.default_rng(0))  # nothing to rearrange
    finally:
        sim.close()


def test_bad_scene_options_are_refused_naming_the_option():
    with pytest.raises(ValueError, match="unknown scene 'stacking'"):
        SimFrankaBackend(scene="stacking")
    with pytest.raises(ValueError, match="cube_spawn_range x"):
        SimFrankaBackend(scene="pick_place", cube_spawn_range=(0.08, 0.0))


# -- resets ---------------------------------------------------------------------------------------
def test_resets_place_the_cube_at_seeded_random_poses_and_open_the_gripper(cell):
    b = cell.backend.bins
    poses = {}
    for seed in (1, 2, 1):
        state = cell.reset(seed=seed)
        cube = state.objects["cube"]
        assert np.all(np.abs(cube[:2] - b.source_pos) <= np.asarray(b.spawn_range) + 1e-3), (seed, cube)
        assert state.gripper_width > 0.075, f"the gripper must be open after a reset, width {state.gripper_width}"
        if seed in poses:
            assert np.allclose(cube, poses[seed], atol=1e-4), f"seed {seed} gave {cube}, then {poses[seed]}"
        poses[seed] = cube
    assert np.linalg.norm(poses[1][:2] - poses[2][:2]) > 1e-3 or abs(cube_yaw(poses[1]) - cube_yaw(poses[2])) > 1e-2
    # Without a seed the cell's own generator draws: resets differ.
    a, c = cell.reset().objects["cube"], cell.reset().objects["cube"]
    assert not np.allclose(a, c, atol=1e-4)


def test_a_reset_drops_a_held_cube_and_starts_from_the_source_bin(cell):
    cell.reset(seed=5)
    cell.backend.place_cube([*cell.task.target[:2], 0.2])  # "held" high above the target bin, then let go
    state = cell.reset(seed=5)
    b = cell.backend.bins
    assert np.all(np.abs(state.objects["cube"][:2] - b.source_pos) <= np.asarray(b.spawn_range) + 1e-3)


# -- the reward rule -------------------------------------------------------------------------------
def task_for(reward="sparse"):
    prof = load_profile(PICK_PROFILE, {"task.reward": reward})
    return make_task(prof.task)


def state_with(tcp, cube_xyz, width) -> RobotState:
    z3 = np.zeros(3)
    return RobotState(tcp_pos=np.asarray(tcp, float), tcp_quat=np.array([0.7071068, 0.7071068, 0.0, 0.0]),
                      tcp_linvel=z3, tcp_angvel=z3, gripper_width=width, wrench=np.zeros(6),
                      joint_pos=np.zeros(9), joint_vel=np.zeros(9), time=0.0,
                      objects={"cube": np.array([*cube_xyz, 0.0, 0.0, 0.0, 1.0])})


TARGET = np.array([0.5, -0.15])
SOURCE = np.array([0.5, 0.15])
REST = 0.025      # cube centre on a bin floor
CASES = {
    # name: (tcp, cube, gripper width, success)
    "in the target bin, open, lifted": ((*TARGET, REST + 0.02 + 0.06), (*TARGET, REST), 0.08, True),
    "near the bin's edge, open, lifted": ((0.58, -0.22, 0.15), (0.58, -0.22, REST), 0.06, True),
    "in the target bin, still held": ((*TARGET, REST), (*TARGET, REST), 0.04, False),
    "in the target bin, open, hand still low": ((*TARGET, REST + 0.03), (*TARGET, REST), 0.08, False),
    "in the target bin, closed, lifted": ((*TARGET, 0.15), (*TARGET, REST), 0.01, False),
    "held above the target bin": ((*TARGET, 0.12), (*TARGET, 0.12), 0.04, False),
    "in the source bin, open, lifted": ((*SOURCE, 0.15), (*SOURCE, REST), 0.08, False),
    "outside the target bin's footprint": ((0.5, -0.25, 0.15), (0.5, -0.25, REST), 0.08, False),
}


@pytest.mark.parametrize("name", CASES)
def test_success_needs_the_cube_resting_in_the_target_bin_the_gripper_open_and_the_hand_lifted(name):
    tcp, cube, width, expected = CASES[name]
    out = task_for("sparse").evaluate(state_with(tcp, cube, width))
    assert out.success is expected, f"{name}: success {out.success}, expected {expected}"
    assert type(out.success) is bool  # ROS messages refuse numpy booleans
    assert out.reward == float(expected)


def test_the_dense_reward_grows_stage_by_stage():
    task = task_for("dense")
    src, tgt = (*SOURCE, REST), (*TARGET, REST)
    stages = [
        ("start above the source bin", state_with((*SOURCE, 0.2), src, 0.08)),
        ("hand at the cube", state_with(src, src, 0.08)),
        ("cube carried half way", state_with((0.5, 0.0, 0.12), (0.5, 0.0, 0.12), 0.04)),
        ("cube over the target bin", state_with((*TARGET, 0.12), (*TARGET, 0.12), 0.04)),
        ("cube set down, held", state_with(tgt, tgt, 0.04)),
        ("released", state_with(tgt, tgt, 0.08)),
        ("hand lifted halfway", state_with((*TARGET, REST + 0.04), tgt, 0.08)),
        ("done", state_with((*TARGET, REST + 0.07), tgt, 0.08)),
    ]
    rewards = [task.evaluate(s).reward for _, s in stages]
    for (a, _), (b, _), ra, rb in zip(stages, stages[1:], rewards, rewards[1:]):
        assert rb > ra, f"dense reward fell from {a!r} ({ra:.3f}) to {b!r} ({rb:.3f})"
    assert rewards[-1] == pytest.approx(1.0)
    assert isinstance(task, PickPlace)


def test_observations_carry_the_cube_pose_and_experts_read_it_back(cell):
    assert cell.proprio_names[-7:] == ["cube_x", "cube_y", "cube_z", "cube_qx", "cube_qy", "cube_qz", "cube_qw"]
    assert cell.proprio_names == proprio_names(("cube",)) and len(cell.proprio_names) == 27
    state = cell.reset(seed=3)
    back = state_from_proprio(cell.proprio(state), ("cube",))
    assert np.allclose(back.objects["cube"], state.objects["cube"], atol=1e-6)
    assert np.allclose(back.tcp_pos, state.tcp_pos, atol=1e-6)


# -- the profile ----------------------------------------------------------------------------------
def test_the_pick_profile_loads_and_each_task_has_an_instruction():
    prof = load_profile(PICK_PROFILE)
    assert prof.task.name == "pick_place" and prof.task.gripper == "policy"
    assert prof.task.instruction == "put the cube in the right bin"
    assert load_profile(PEG_PROFILE).task.instruction == "insert the peg into the hole"
    box = prof.robot.safety_box
    for corner in ((0.5 + sx * 0.09, y + sy * 0.09) for y in (0.15, -0.15) for sx in (-1, 1) for sy in (-1, 1)):
        assert all(lo - 0.02 <= c <= hi + 0.02 for c, lo, hi in zip(corner, box.lower, box.upper)), corner


@pytest.mark.parametrize("change, key, words", [
    ({"task.name": "stacking"}, "task.name", "must be one of 'peg_insertion', 'pick_place'"),
    ({"task.gripper": "closed"}, "task.gripper", "pick_place task needs 'policy'"),
    ({"task.instruction": "two\nlines"}, "task.instruction", "one line"),
    ({"task.pick_place.open_width": 0.03}, "task.pick_place.open_width", "exceed the cube's width"),
    ({"task.target_pos": [0.5, -0.5, 0.005]}, "task.target_pos", "outside robot.safety_box"),
])
def test_a_bad_pick_profile_names_the_key(tmp_path, change, key, words):
    data = yaml.safe_load(PICK_PROFILE.read_text())
    for dotted, value in change.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / "robot_bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert err.value.key == key and words in str(err.value) and str(path) in str(err.value), str(err.value)


@pytest.mark.parametrize("options, overrides, key", [
    ({"scene": "peg_insertion"}, {}, "task.name"),                       # pick_place task on the peg scene
    ({"target_bin": [0.5, -0.12]}, {}, "task.target_pos"),               # the bin is not where the task says
    ({"cube_half_size": 0.025}, {}, "task.pick_place.cube_half_size"),
])
def test_the_cell_refuses_a_profile_that_disagrees_with_the_scene(options, overrides, key):
    with pytest.raises(ConfigError) as err:
        make_cell(options=options, **overrides).close()
    assert err.value.key == key, str(err.value)


# -- the scripted expert --------------------------------------------------------------------------
def test_make_expert_picks_the_expert_of_the_task():
    assert isinstance(make_expert(load_profile(PICK_PROFILE)), ScriptedPickPlace)
    assert isinstance(make_expert(load_profile(PEG_PROFILE)), ScriptedInsertion)


def test_the_scripted_expert_succeeds_in_at_least_9_of_10_randomized_episodes(cell):
    expert = make_expert(cell.profile, seed=0)
    results = []
    for ep in range(10):
        state = cell.reset(seed=1000 + ep)
        for _ in range(cell.cfg.max_episode_steps):
            res = cell.step(expert.act(cell.proprio(state)))
            state = res.state
            if res.terminated or res.truncated:
                break
        results.append((res.outcome.success, cell.step_count, expert.phase))
    successes = sum(ok for ok, _, _ in results)
    print(f"\npick-and-place expert: {successes}/10 successes, steps {[n for _, n, _ in results]}")
    assert successes >= 9, f"scripted expert: {successes}/10; (success, steps, last phase): {results}"


# -- cameras --------------------------------------------------------------------------------------
def test_both_cameras_see_both_bins_and_the_cube_at_the_start():
    c = make_cell(options={"cameras": ("wrist", "side"), "render_images": True})
    renderer = None
    try:
        c.reset(seed=0)
        model, data = c.backend.model, c.backend.data
        renderer = mujoco.Renderer(model, 128, 128)
        renderer.enable_segmentation_rendering()
        opt = mujoco.MjvOption()
        opt.geomgroup[:] = RENDER_GEOM_GROUPS
        for cam in ("wrist", "side"):
            renderer.update_scene(data, camera=cam, scene_option=opt)
            seg = renderer.render()
            geoms = seg[..., 0][seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM]
            bodies = model.geom_bodyid[geoms]
            # at the start: each bin >= 700 pixels of 128 x 128, the cube >= 59 (seeds 0-3)
            for body, least in (("source_bin", 200), ("target_bin", 200), ("cube", 20)):
                pixels = int(np.sum(bodies == model.body(body).id))
                assert pixels >= least, f"camera {cam!r} sees only {pixels} pixels of {body}"
        frames = c.backend.render()
        assert set(frames) == {"wrist", "side"} and all(f.std() > 5.0 for f in frames.values())
    finally:
        if renderer is not None:
            renderer.close()
        c.close()
