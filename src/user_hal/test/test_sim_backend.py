"""Tests of the MuJoCo FR3 peg-insertion backend (no ROS)."""
from __future__ import annotations

import mujoco
import numpy as np
import pytest

from user_hal.backends.base import RobotState, make_backend
from user_hal.backends.sim.franka_sim import SimFrankaBackend


def _quat_angle(qa: np.ndarray, qb: np.ndarray) -> float:
    return float(2.0 * np.arccos(min(1.0, abs(float(np.dot(qa, qb))))))


def _yawed(quat_xyzw: np.ndarray, angle: float) -> np.ndarray:
    """Rotate an x, y, z, w quaternion by ``angle`` about the base z axis."""
    q = np.array([quat_xyzw[3], *quat_xyzw[:3]])
    rz = np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, rz, q)
    return np.array([*out[1:], out[0]])


def _peg_tip(backend: SimFrankaBackend, state: RobotState) -> np.ndarray:
    rot = np.zeros(9)
    q = state.tcp_quat
    mujoco.mju_quat2Mat(rot, np.array([q[3], q[0], q[1], q[2]]))
    return state.tcp_pos + rot.reshape(3, 3) @ np.array([0.0, 0.0, backend.peg_tip_offset])


@pytest.fixture(scope="module")
def sim():
    backend = SimFrankaBackend(render_images=False)
    backend.start()
    yield backend
    backend.close()


@pytest.fixture()
def home(sim):
    """Put the arm back at home, holding still."""
    sim.set_joint_positions(sim.model.key("home").qpos[:7])
    pos, quat = sim.home_tcp_pose()
    sim.set_target(pos, quat, 0.0)
    sim.advance(0.2)
    return pos, quat


def test_gripper(sim, home):
    pos, quat = home
    sim.set_target(pos, quat, 1.0)
    sim.advance(0.6)
    assert sim.state().gripper_width > 0.07
    sim.set_target(pos, quat, 0.0)
    sim.advance(0.6)
    assert 0.01 < sim.state().gripper_width < 0.025  # stopped by the 2 cm peg
    assert np.linalg.norm(sim.state().tcp_pos - pos) < 0.001


def test_description(sim):
    assert sim.dof == 7
    names = sim.joint_names()
    assert len(names) == 9 and names[:7] == [f"fr3_joint{i}" for i in range(1, 8)]
    assert sim.camera_names() == []  # render_images=False: render() returns no frames
    assert SimFrankaBackend().camera_names() == ["wrist", "side"]
    urdf = sim.urdf()
    assert "file:///" in urdf and 'filename="meshes/' not in urdf


def test_state_layout(sim, home):
    state = sim.state()
    assert state.joint_pos.shape == (9,) and state.joint_vel.shape == (9,)
    assert state.wrench.shape == (6,) and state.tcp_quat.shape == (4,)
    assert np.isclose(np.linalg.norm(state.tcp_quat), 1.0)
    # TCP z axis points down at home
    rot = np.zeros(9)
    q = state.tcp_quat
    mujoco.mju_quat2Mat(rot, np.array([q[3], q[0], q[1], q[2]]))
    assert rot.reshape(3, 3)[2, 2] < -0.99
    assert np.allclose(sim.target_pos, [0.5, 0.0, 0.0])
    assert 0.01 < state.gripper_width < 0.03  # closed on the 2 cm peg
    t0 = state.time
    sim.advance(0.1)
    assert np.isclose(sim.state().time - t0, 0.1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_translation_step(sim, home, axis):
    pos, quat = home
    delta = np.zeros(3)
    delta[axis] = 0.02
    sim.set_target(pos + delta, quat, 0.0)
    sim.advance(0.1)
    err = sim.state().tcp_pos - (pos + delta)
    assert abs(err[axis]) < 0.003
    assert np.all(np.abs(np.delete(err, axis)) < 0.003)
    sim.advance(0.3)
    state = sim.state()
    assert np.linalg.norm(state.tcp_pos - (pos + delta)) < 0.001
    assert _quat_angle(state.tcp_quat, quat) < 0.01
    assert np.linalg.norm(state.wrench[:3]) < 1.0  # free space


def test_yaw_step(sim, home):
    pos, quat = home
    target = _yawed(quat, 0.1)
    sim.set_target(pos, target, 0.0)
    sim.advance(0.4)
    state = sim.state()
    assert _quat_angle(state.tcp_quat, target) < 0.02
    assert np.linalg.norm(state.tcp_pos - pos) < 0.003


def test_hold_still(sim, home):
    state = sim.state()
    sim.set_target(state.tcp_pos, state.tcp_quat, 0.0)
    sim.advance(2.0)
    assert np.linalg.norm(sim.state().tcp_pos - state.tcp_pos) < 0.001


def _descend(sim: SimFrankaBackend, x_offset: float) -> RobotState:
    """Move the peg above the hole (shifted in x), then lower the target to the hole bottom."""
    _, quat = sim.home_tcp_pose()
    goal = sim.target_pos + np.array([x_offset, 0.0, sim.peg_tip_offset])
    z = goal[2] + 0.1
    sim.set_target(np.array([goal[0], goal[1], z]), quat, 0.0)
    sim.advance(0.8)
    while z > goal[2]:
        z = max(z - 0.03, goal[2])
        sim.set_target(np.array([goal[0], goal[1], z]), quat, 0.0)
        sim.advance(0.1)
    sim.advance(0.5)
    return sim.state()


def test_aligned_peg_inserts(sim, home):
    state = _descend(sim, 0.0)
    tip = _peg_tip(sim, state)
    assert np.linalg.norm(tip - sim.target_pos) < 0.01


def test_misaligned_peg_is_blocked(sim, home):
    state = _descend(sim, 0.015)
    tip = _peg_tip(sim, state)
    assert tip[2] >= sim.hole_depth - 0.002
    assert state.wrench[2] > 5.0  # the block pushes the peg up


def test_unknown_kwarg():
    with pytest.raises(TypeError, match="bogus_option"):
        SimFrankaBackend(bogus_option=1)


def test_unknown_camera():
    with pytest.raises(ValueError, match="ceiling"):
        SimFrankaBackend(cameras=("wrist", "ceiling"))


def test_registry():
    backend = make_backend("sim", cameras=())
    assert isinstance(backend, SimFrankaBackend)
    backend.close()  # idempotent, even before start
    backend.close()


def test_render():
    backend = SimFrankaBackend()
    backend.start()
    try:
        frames = backend.render()
        assert set(frames) == {"wrist", "side"}
        for img in frames.values():
            assert img.shape == (128, 128, 3) and img.dtype == np.uint8
            assert img.std() > 5.0
        assert np.abs(frames["wrist"].astype(int) - frames["side"].astype(int)).mean() > 5.0
        pos, quat = backend.home_tcp_pose()
        backend.set_target(pos + np.array([-0.05, 0.0, -0.3]), quat, 0.0)
        backend.advance(1.0)
        moved = backend.render()
        assert np.abs(moved["side"].astype(int) - frames["side"].astype(int)).mean() > 1.0
        assert np.abs(moved["wrist"].astype(int) - frames["wrist"].astype(int)).mean() > 1.0
    finally:
        backend.close()
        backend.close()


def test_no_cameras():
    backend = SimFrankaBackend(cameras=())
    backend.start()
    try:
        assert backend.render() == {}
        assert backend._renderer is None
    finally:
        backend.close()
