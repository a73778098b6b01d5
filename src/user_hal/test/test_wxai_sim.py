"""The simulated Trossen WidowX AI (``wxai_sim``): model from the installed wheel, inverse kinematics, limits,
cameras, the scripted peg insertion, and its robot profile (no ROS)."""
from __future__ import annotations

import pathlib

import mujoco
import numpy as np
import pytest
import yaml

from user_hal.backends.base import make_backend
from user_hal.core.cell import PROPRIO_NAMES, RobotCell, proprio_names, state_from_proprio
from user_common.config_schema import ConfigError
from user_hal.core.geometry import quat_conj, quat_from_euler, quat_mul, quat_to_rotvec
from user_hal.profile import load_profile
from user_hal.tasks.experts import make_expert
from user_hal.backends.sim.ik import DampedLeastSquaresIK
from user_hal.backends.sim.wxai_scene import ARM_JOINTS, wxai_assets
from user_hal.backends.sim.wxai_sim import SimWidowXAIBackend

ROOT = pathlib.Path(__file__).resolve().parents[3]
WXAI_PROFILE = ROOT / "config" / "robot_wxai.yaml"


def _angle(qa: np.ndarray, qb: np.ndarray) -> float:
    """Rotation angle between two x, y, z, w quaternions."""
    return float(np.linalg.norm(quat_to_rotvec(quat_mul(qa, quat_conj(qb)))))


def _profile(tmp_path=None, **dotted):
    """The shipped WidowX profile, as fast as possible, with dotted-key changes."""
    if not dotted and tmp_path is None:
        return load_profile(WXAI_PROFILE, {"robot.realtime_factor": 0.0})
    data = yaml.safe_load(WXAI_PROFILE.read_text())
    for key, value in dotted.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "robot_wxai_test.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(path, {"robot.realtime_factor": 0.0})


def _cell(profile, render: bool = False, seed: int = 0) -> RobotCell:
    backend = make_backend(profile.robot.backend, **profile.backend_options, render_images=render)
    return RobotCell(profile, backend, seed=seed)


@pytest.fixture(scope="module")
def cell():
    c = _cell(_profile())
    c.start()
    yield c
    c.close()


@pytest.fixture()
def started(cell):
    """The cell at the start of a fresh episode (seeded)."""
    cell.reset(seed=0)
    return cell


# -- the model ------------------------------------------------------------------------------------------
def test_model_loads_from_the_installed_wheel(cell):
    assets = wxai_assets()
    assert assets.parent.name == "trossen_arm_sim" and "site-packages" in assets.parts, assets
    b = cell.backend
    assert isinstance(b, SimWidowXAIBackend) and b.embodiment == "wxai"
    assert b.dof == 6 and b.joint_names()[:6] == list(ARM_JOINTS) and len(b.joint_names()) == 8
    m = b.model
    assert [m.actuator(i).name for i in range(m.nu)] == [*ARM_JOINTS, "left_gripper"]
    assert all(m.actuator_biastype[i] == mujoco.mjtBias.mjBIAS_AFFINE for i in range(m.nu)), \
        "the model's actuators are position servos"
    state = b.state()
    assert state.joint_pos.shape == (8,) and state.wrench.shape == (6,)
    pos, quat = b.home_tcp_pose()
    assert np.linalg.norm(pos - np.asarray(cell.profile.backend_options["home_pos"])) < 1e-3
    assert _angle(quat, np.asarray(cell.profile.task.tcp_quat)) < 1e-2, "the home TCP points down"
    # The fingers start closed on the peg: gripper width = the peg's width.
    assert abs(state.gripper_width - 2 * cell.profile.backend_options["peg_half_size"]) < 1e-3


def test_ik_solves_poses_of_random_reachable_joint_configurations(cell):
    m = cell.backend.model
    ik = DampedLeastSquaresIK(m, "tcp", ARM_JOINTS)
    rng = np.random.default_rng(3)
    home_q = cell.backend.joint_command
    for _ in range(20):
        q_true = np.clip(home_q + rng.uniform(-0.3, 0.3, 6), ik.lower, ik.upper)
        pos, quat = ik.forward(q_true)
        sol = ik.solve(home_q, pos, quat)
        assert sol.pos_error < 1e-4 and sol.rot_error < 1e-3, (q_true, sol)
        got_pos, got_quat = ik.forward(sol.q)
        assert np.linalg.norm(got_pos - pos) < 1e-4


def test_out_of_reach_the_orientation_gives_way_before_the_position(cell):
    """Tilted at the box's far top corner the wrist pitch joint is at its limit: the TCP still gets there."""
    ik = DampedLeastSquaresIK(cell.backend.model, "tcp", ARM_JOINTS)
    corner = np.array([cell.box_hi[0], cell.box_hi[1], cell.box_hi[2]])
    tilted = quat_mul(quat_from_euler(0.0, cell.rpy_hi[1], 0.0), cell.nominal_quat)
    sol = ik.solve(cell.backend.joint_command, corner, np.array([tilted[3], *tilted[:3]]))
    assert sol.rot_error > 0.02, "this pose was expected out of reach; pick another for the test"
    assert sol.pos_error < 3e-3, f"the position gave way ({sol.pos_error * 1000:.1f} mm) instead of the orientation"


@pytest.mark.parametrize("action", [
    [1, 0, 0, 0, 0, 0, -1], [0, -1, 0, 0, 0, 0, -1], [0, 0, 1, 0, 0, 0, -1],
    [0, 0, 0, 0, 0, 1, -1], [0, 0, 0, 1, 0, 0, -1], [0.5, 0.5, -0.5, 0, -0.5, 0.5, -1],
])
def test_ik_tracks_commanded_end_effector_deltas(started, action):
    c = started
    before = c.backend.state()
    for _ in range(3):
        c.step(np.array(action, dtype=float))
    for _ in range(5):   # settle: the wrist servos (kp 50, kv 5) follow with a time constant of 0.1 s
        c.hold()
    s = c.backend.state()
    assert np.linalg.norm(s.tcp_pos - c.target_pos) < 1.5e-3, f"TCP {s.tcp_pos} vs target {c.target_pos}"
    assert _angle(s.tcp_quat, c.target_quat) < 0.01, "orientation does not follow the target"
    moved = np.linalg.norm(s.tcp_pos - before.tcp_pos) + _angle(s.tcp_quat, before.tcp_quat)
    assert moved > 0.02, "the action moved nothing"


# -- limits ---------------------------------------------------------------------------------------------
def test_the_safety_box_clips_the_target_and_the_arm_stays_inside(started):
    c = started
    hi, lo = c.box_hi, c.box_lo
    for _ in range(25):
        s = c.step(np.array([1.0, -1.0, 1.0, 0, 0, 0, -1.0])).state
    assert np.allclose(c.target_pos, [hi[0], lo[1], hi[2]]), c.target_pos
    c.hold()
    s = c.backend.state()
    assert np.all(s.tcp_pos <= hi + 2e-3) and np.all(s.tcp_pos >= lo - 2e-3), s.tcp_pos
    assert np.linalg.norm(s.tcp_pos - c.target_pos) < 2e-3, "the corner of the box is out of reach"


def test_tcp_speed_limit_holds_for_actions(started):
    c = started
    limit = c.cfg.max_tcp_speed * c.period
    prev = c.target_pos.copy()
    for _ in range(4):
        res = c.step(np.array([1.0, 1.0, -1.0, 0, 0, 0, -1.0]))
        assert np.linalg.norm(c.target_pos - prev) <= limit + 1e-9
        assert np.linalg.norm(res.executed[:3]) < np.linalg.norm(res.commanded[:3]), "the step was not scaled down"
        prev = c.target_pos.copy()
        speed = np.linalg.norm(res.state.tcp_linvel)
        assert speed <= 1.5 * c.cfg.max_tcp_speed, f"TCP moves at {speed:.3f} m/s"


def test_joint_speed_limit_holds_for_a_far_target(cell):
    b = cell.backend
    cell.reset(seed=1)
    s = b.state()
    vmax = cell.profile.backend_options["max_joint_speed"]
    # Half a turn of the wrist away: the inverse kinematics asks for a big jump of joint 5 at once.
    far = quat_mul(np.array([0.0, 0.0, 1.0, 0.0]), s.tcp_quat)
    b.set_target(s.tcp_pos, far, 0.0)
    prev = b.joint_command
    peak = 0.0
    for _ in range(5):
        b.advance(0.1)
        cmd = b.joint_command
        assert np.max(np.abs(cmd - prev)) <= vmax * 0.1 + 1e-9, "the joint command outran max_joint_speed"
        prev = cmd
        peak = max(peak, float(np.max(np.abs(b.state().joint_vel[:6]))))
    assert 0.5 * vmax < peak <= 1.2 * vmax, f"joint speed peaked at {peak:.2f} rad/s, limit {vmax}"
    cell.recover()   # re-anchor the cell's target where the arm is


def test_pushing_the_peg_on_the_block_reads_an_upward_contact_force(started):
    c = started
    b = c.backend
    s = b.state()
    hole = np.asarray(c.profile.task.target_pos)
    # Over the block's wall, 2 cm off the hole, then down until the peg presses on the top face.
    goal = np.array([hole[0] + 0.022, hole[1], 0.09])   # the peg tip 1 cm above the block
    b.set_target(goal, s.tcp_quat, 0.0)
    b.advance(1.0)
    assert b.state().wrench[2] == pytest.approx(0.0, abs=1e-6), "no contact in free air"
    b.set_target(goal - [0.0, 0.0, 0.015], s.tcp_quat, 0.0)
    b.advance(0.5)
    w = b.state().wrench
    assert w[2] > 1.0, f"expected the block to push the peg up, wrench {w}"
    c.recover()


# -- cameras --------------------------------------------------------------------------------------------
def test_wrist_and_side_cameras_render_the_scene():
    c = _cell(_profile(), render=True)
    try:
        c.start()
        c.reset(seed=2)
        frames = c.backend.render()
        assert sorted(frames) == ["side", "wrist"]
        for name, img in frames.items():
            assert img.shape == (128, 128, 3) and img.dtype == np.uint8, name
            assert img.std() > 10, f"{name} image is nearly uniform"
        # The orange peg is in view of the wrist camera, between the fingers; the side camera sees the blue block.
        def count(img, pred):
            r, g, b = (img[..., i].astype(int) for i in range(3))
            return int(pred(r, g, b).sum())

        orange = count(frames["wrist"], lambda r, g, b: (r - b > 80) & (g > b + 20) & (r > g))
        assert orange > 50, f"the wrist camera does not see the peg ({orange} orange pixels)"
        blue = count(frames["side"], lambda r, g, b: b > r + 80)
        assert blue > 50, f"the side camera does not see the hole block ({blue} blue pixels)"
        assert not np.array_equal(frames["wrist"], frames["side"])
    finally:
        c.close()


# -- the scripted expert ----------------------------------------------------------------------------------
def test_scripted_expert_inserts_the_peg_in_at_least_9_of_10_random_episodes(cell):
    prof = cell.profile
    results = []
    for seed in range(10):
        state = cell.reset(seed=100 + seed)
        expert = make_expert(prof)
        for _ in range(prof.robot.max_episode_steps):
            res = cell.step(expert.act(cell.proprio(state)))
            state = res.state
            if res.terminated or res.truncated:
                break
        results.append((res.outcome.success, cell.step_count, round(res.outcome.distance, 4)))
    assert sum(ok for ok, _, _ in results) >= 9, results


# -- the profile ----------------------------------------------------------------------------------------
def test_the_shipped_profile_validates_and_lays_out_14_proprio_values(cell):
    prof = load_profile(WXAI_PROFILE)
    assert (prof.robot.embodiment, prof.robot.backend) == ("wxai", "wxai_sim")
    assert cell.proprio_names == proprio_names((), ("tcp_pose", "tcp_twist", "gripper_width"))
    assert len(cell.proprio_names) == 14 and "force_z" not in cell.proprio_names
    state = cell.backend.state()
    back = state_from_proprio(cell.proprio(state), (), cell.proprio_groups)
    assert np.allclose(back.tcp_pos, state.tcp_pos, atol=1e-6) and np.allclose(back.wrench, 0.0)
    assert back.gripper_width == pytest.approx(state.gripper_width, abs=1e-6)
    # The Franka's layout is unchanged: every group, 20 values.
    assert proprio_names() == PROPRIO_NAMES and len(PROPRIO_NAMES) == 20


@pytest.mark.parametrize("change, key, words", [
    ({"robot.proprio": ["tcp_pose", "joint_torques"]}, "robot.proprio[1]", "must be one of"),
    ({"robot.proprio": ["gripper_width", "tcp_twist"]}, "robot.proprio", "must include tcp_pose"),
    ({"robot.proprio": ["tcp_pose", "tcp_pose"]}, "robot.proprio", "duplicate"),
])
def test_a_bad_proprio_layout_is_one_clear_error(tmp_path, change, key, words):
    with pytest.raises(ConfigError) as err:
        _profile(tmp_path, **change)
    assert err.value.key == key and words in str(err.value) and "robot_wxai_test.yaml" in str(err.value)


@pytest.mark.parametrize("change, key, words", [
    ({"robot.embodiment": "franka_fr3"}, "robot.embodiment", "backend drives 'wxai'"),
    ({"task.peg_tip_offset": 0.07}, "task.peg_tip_offset", "does not match the simulated scene"),
])
def test_a_profile_that_disagrees_with_the_backend_is_one_clear_error(tmp_path, change, key, words):
    c = _cell(_profile(tmp_path, **change))
    try:
        with pytest.raises(ConfigError) as err:
            c.start()
        assert err.value.key == key and words in str(err.value), str(err.value)
    finally:
        c.close()


def test_bad_backend_options_name_the_option():
    with pytest.raises(ValueError, match="max_joint_speed must be a positive number"):
        SimWidowXAIBackend(max_joint_speed=0.0)
    with pytest.raises(TypeError, match="hole_size"):
        SimWidowXAIBackend(hole_size=0.01)
    b = SimWidowXAIBackend(home_pos=(0.6, 0.0, 0.3), render_images=False)
    with pytest.raises(ValueError, match=r"home_pos \[0.6, 0.0, 0.3\] cannot be reached"):
        b.start()
