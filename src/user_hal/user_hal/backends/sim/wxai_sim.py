"""MuJoCo-simulated Trossen WidowX AI (the "wxai_sim" backend): 6 joints and a parallel gripper, peg insertion.

The TCP target becomes joint targets of the model's position actuators through damped-least-squares inverse
kinematics (``user_hal.backends.sim.ik``); the joint command moves toward them no faster than ``max_joint_speed``.
Design notes and measured numbers: ``docs/wxai.md``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import mujoco
import numpy as np

from user_hal.backends.base import BackendError, RobotState, register_backend
from user_hal.backends.sim.base import MujocoArmBackend, wxyz
from user_hal.backends.sim.ik import DampedLeastSquaresIK
from user_hal.backends.sim.wxai_scene import (ARM_JOINTS, CAMERA_NAMES, DOWN_WXYZ, FINGER_JOINTS, FINGER_TRAVEL,
                                     GRIPPER_ACTUATOR, IK_SEED, RENDER_GEOM_GROUPS, build_wxai_spec,
                                     grasp_finger_position, wxai_peg_config)



@register_backend("wxai_sim")
class SimWidowXAIBackend(MujocoArmBackend):
    """WidowX AI in MuJoCo holding a square peg over a hole block (``peg_insertion`` only).

    The peg is a child body of ``link_6`` (it cannot slip); ``peg_tip = tcp_pos + R(tcp_quat) @ [0, 0,
    peg_tip_offset]``, and ``target_pos`` is the hole bottom centre. The TCP is the model's ``ee_site`` with its
    z axis turned onto the approach direction. ``home_pos`` is the TCP position of the start pose, pointing
    straight down. ``wrench`` is the contact force/torque on the end effector and the peg (about the TCP, base
    frame), summed from the simulator's contacts: the real arm has no force/torque sensor, so the shipped
    profile leaves it out of the proprio.
    """

    name = "wxai_sim"
    embodiment = "wxai"
    simulated = True
    render_groups = RENDER_GEOM_GROUPS

    def __init__(
        self,
        *,
        cameras: Sequence[str] = CAMERA_NAMES,
        image_width: int = 128,
        image_height: int = 128,
        physics_dt: float = 0.002,
        hole_pos: Sequence[float] = (0.28, 0.0),
        hole_depth: float = 0.03,
        peg_half_size: float = 0.0075,
        clearance: float = 0.003,
        peg_length: float = 0.06,
        home_pos: Sequence[float] = (0.28, 0.0, 0.13),
        max_joint_speed: float = 3.0,
        ik_damping: float = 0.02,
        render_images: bool = True,
        **unknown: Any,
    ) -> None:
        """Store the options; the model is built in ``start``. Unknown options raise TypeError."""
        if unknown:
            raise TypeError(f"SimWidowXAIBackend got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        self._cameras = [str(c) for c in cameras]
        for cam in self._cameras:
            if cam not in CAMERA_NAMES:
                raise ValueError(f"unknown camera {cam!r}; available: {', '.join(CAMERA_NAMES)}")
        for key, value in (("physics_dt", physics_dt), ("hole_depth", hole_depth), ("peg_half_size", peg_half_size),
                           ("clearance", clearance), ("peg_length", peg_length),
                           ("max_joint_speed", max_joint_speed), ("ik_damping", ik_damping)):
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        if len(tuple(hole_pos)) != 2:
            raise ValueError(f"hole_pos must be (x, y), got {hole_pos!r}")
        if len(tuple(home_pos)) != 3:
            raise ValueError(f"home_pos must be (x, y, z), got {home_pos!r}")
        if peg_length <= 0.02:
            raise ValueError(f"peg_length must exceed the 0.01 m the fingers hold, got {peg_length}")
        self._cfg = wxai_peg_config(hole_pos=(float(hole_pos[0]), float(hole_pos[1])), hole_depth=float(hole_depth),
                                    peg_half_size=float(peg_half_size), clearance=float(clearance),
                                    peg_length=float(peg_length), image_width=int(image_width),
                                    image_height=int(image_height))
        self._home = np.asarray(home_pos, dtype=float)
        self._physics_dt = float(physics_dt)
        self._max_joint_speed = float(max_joint_speed)
        self._ik_damping = float(ik_damping)
        self._render_images = bool(render_images) and bool(self._cameras)
        self._model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        self._renderer: mujoco.Renderer | None = None
        self._ik: DampedLeastSquaresIK | None = None
        self._home_pose: tuple[np.ndarray, np.ndarray] | None = None
        self._gripper_ctrl = 0.0
        #: position and rotation error (m, rad) the inverse kinematics left for the last target (unreachable)
        self.ik_error = (0.0, 0.0)

    # ------------------------------------------------------------------ description
    def joint_names(self) -> list[str]:
        """6 arm joints, then the two finger (carriage) joints: the model's names."""
        return [*ARM_JOINTS, *FINGER_JOINTS]

    @property
    def dof(self) -> int:
        """Number of arm joints."""
        return len(ARM_JOINTS)

    @property
    def target_pos(self) -> np.ndarray:
        """Centre of the hole bottom on the table, ``(x, y, 0)``."""
        return np.array([self._cfg.hole_pos[0], self._cfg.hole_pos[1], 0.0])

    @property
    def peg_tip_offset(self) -> float:
        """Distance from the TCP to the peg tip along the TCP z axis (metres)."""
        return self._cfg.peg_tip_offset

    @property
    def hole_depth(self) -> float:
        """Height of the hole block (its top face is at this z)."""
        return self._cfg.hole_depth

    @property
    def hole_half_size(self) -> float:
        """Half side of the square hole (``peg_half_size + clearance``)."""
        return self._cfg.hole_half_size

    def task_geometry(self) -> dict[str, Any]:
        """The task keys this scene fixes (see ``RobotBackend.task_geometry``)."""
        return {"name": "peg_insertion", "target_pos": tuple(self.target_pos),
                "peg_tip_offset": self._cfg.peg_tip_offset, "hole_top_height": self._cfg.hole_depth}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Build the scene, put the arm at the home pose and hold it."""
        if self._model is not None:
            return
        spec = build_wxai_spec(self._cfg)
        spec.option.timestep = self._physics_dt
        model = spec.compile()
        data = mujoco.MjData(model)
        self._model, self._data = model, data
        self._arm_qpos = np.array([model.joint(j).qposadr[0] for j in ARM_JOINTS])
        self._arm_dofs = np.array([model.joint(j).dofadr[0] for j in ARM_JOINTS])
        self._finger_qpos = np.array([model.joint(j).qposadr[0] for j in FINGER_JOINTS])
        self._finger_dofs = np.array([model.joint(j).dofadr[0] for j in FINGER_JOINTS])
        self._arm_act = np.array([model.actuator(j).id for j in ARM_JOINTS])
        self._grip_act = model.actuator(GRIPPER_ACTUATOR).id
        self._tcp = model.site("tcp").id
        self._ee_bodies = {model.body(b).id for b in ("link_6", "carriage_left", "carriage_right", "peg")}
        self._ik = DampedLeastSquaresIK(model, "tcp", ARM_JOINTS, damping=self._ik_damping)
        home = self._ik.solve(np.array(IK_SEED), self._home, DOWN_WXYZ)
        if home.pos_error > 1e-3 or home.rot_error > 1e-2:
            self.close()
            raise ValueError(f"home_pos {self._home.tolist()} cannot be reached pointing down (inverse kinematics "
                             f"left {home.pos_error * 1000:.1f} mm, {home.rot_error:.3f} rad)")
        self._home_q = home.q
        self._reset_home()

    def close(self) -> None:
        """Free the renderer and the model. Safe to call repeatedly."""
        self._ik = None
        super().close()

    def _reset_home(self) -> None:
        model, data = self._require()
        mujoco.mj_resetData(model, data)
        data.qpos[self._arm_qpos] = self._home_q
        data.qpos[self._finger_qpos] = grasp_finger_position(model, self._cfg.peg_half_size)
        self._q_cmd = self._home_q.copy()     # what the actuators are told now ...
        self._q_goal = self._home_q.copy()    # ... and where the inverse kinematics wants them
        data.ctrl[self._arm_act] = self._q_cmd
        mujoco.mj_forward(model, data)
        pos, quat = self._tcp_pose()
        self._home_pose = (pos.copy(), quat.copy())
        self.set_target(pos, quat, 0.0)       # the fingers closed on the peg

    def set_joint_positions(self, q: Sequence[float]) -> None:
        """Teleport the arm (6 values) or arm + fingers (8 values) at rest; commands those arm joints."""
        model, data = self._require()
        q = np.asarray(q, dtype=float)
        if q.shape not in ((6,), (8,)):
            raise ValueError(f"expected 6 or 8 joint positions, got shape {q.shape}")
        data.qpos[self._arm_qpos] = q[:6]
        if q.shape == (8,):
            data.qpos[self._finger_qpos] = q[6:]
        data.qvel[:] = 0.0
        data.qacc_warmstart[:] = 0.0
        self._q_cmd, self._q_goal = q[:6].copy(), q[:6].copy()
        data.ctrl[self._arm_act] = self._q_cmd
        mujoco.mj_forward(model, data)

    # ------------------------------------------------------------------ control
    def set_target(self, pos: np.ndarray, quat: np.ndarray, gripper: float) -> None:
        """Solve the joints for the TCP target (base frame, quaternion x, y, z, w) and store the gripper opening."""
        self._require()
        assert self._ik is not None
        pos = np.asarray(pos, dtype=float).reshape(3)
        q = np.asarray(quat, dtype=float).reshape(4)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(q))) or np.linalg.norm(q) < 1e-9:
            raise ValueError(f"invalid target pose {pos!r}, {q!r}")
        sol = self._ik.solve(self._q_goal, pos, wxyz(q))
        self._q_goal = sol.q
        self.ik_error = (sol.pos_error, sol.rot_error)
        self._gripper_ctrl = float(np.clip(gripper, 0.0, 1.0)) * FINGER_TRAVEL

    def advance(self, dt: float) -> None:
        """Integrate ``round(dt / physics_dt)`` physics steps, the joint command moving toward the inverse
        kinematics' solution at most ``max_joint_speed`` rad/s per joint."""
        model, data = self._require()
        data.ctrl[self._grip_act] = self._gripper_ctrl
        steps = int(round(dt / self._physics_dt))
        per_step = self._max_joint_speed * self._physics_dt
        gap = self._q_goal - self._q_cmd
        moving = min(steps, int(math.ceil(float(np.max(np.abs(gap))) / per_step - 1e-9)))
        for _ in range(moving):
            self._q_cmd += np.clip(self._q_goal - self._q_cmd, -per_step, per_step)
            data.ctrl[self._arm_act] = self._q_cmd
            mujoco.mj_step(model, data)
        if steps > moving:   # the command has arrived: the rest in one call
            mujoco.mj_step(model, data, nstep=steps - moving)
        if not np.all(np.isfinite(data.qpos)):
            raise BackendError("simulation diverged (non-finite joint positions)")

    # ------------------------------------------------------------------ state
    def state(self) -> RobotState:
        """Read the TCP pose/twist, gripper, contact wrench and joints from the simulation."""
        model, data = self._require()
        pos, quat = self._tcp_pose()
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_SITE, self._tcp, vel, 0)
        qidx = np.concatenate([self._arm_qpos, self._finger_qpos])
        didx = np.concatenate([self._arm_dofs, self._finger_dofs])
        return RobotState(
            tcp_pos=pos, tcp_quat=quat, tcp_linvel=vel[3:].copy(), tcp_angvel=vel[:3].copy(),
            gripper_width=float(np.sum(data.qpos[self._finger_qpos])),
            wrench=self._contact_wrench(), joint_pos=data.qpos[qidx].copy(), joint_vel=data.qvel[didx].copy(),
            time=float(data.time))

    @property
    def joint_command(self) -> np.ndarray:
        """The arm joints' position command now (rad), after the speed limit."""
        return self._q_cmd.copy()

    def _contact_wrench(self) -> np.ndarray:
        """Force and torque (about the TCP) that contacts with anything else exert on the end effector and the
        peg, base frame."""
        model, data = self._require()
        out = np.zeros(6)
        f6 = np.zeros(6)
        tcp = data.site_xpos[self._tcp]
        for i in range(data.ncon):
            c = data.contact[i]
            on1 = model.geom_bodyid[c.geom1] in self._ee_bodies
            on2 = model.geom_bodyid[c.geom2] in self._ee_bodies
            if on1 == on2:
                continue
            mujoco.mj_contactForce(model, data, i, f6)
            force = c.frame.reshape(3, 3).T @ f6[:3]   # world frame, the force geom1 exerts on geom2
            if on1:
                force = -force
            out[:3] += force
            out[3:] += np.cross(c.pos - tcp, force)
        return out
