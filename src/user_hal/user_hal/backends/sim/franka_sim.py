"""MuJoCo-simulated Franka FR3 (the "sim" backend): peg insertion or pick-and-place."""
from __future__ import annotations

from typing import Any, Sequence

import mujoco
import numpy as np

from user_hal.backends.base import BackendError, RobotState, register_backend
from user_hal.backends.sim.base import MujocoArmBackend, wxyz, xyzw
from user_hal.backends.sim.osc import OperationalSpaceController
from user_hal.backends.sim.scene import (
    ARM_JOINTS,
    CAMERA_NAMES,
    CUBE,
    FINGER_JOINTS,
    RENDER_GEOM_GROUPS,
    SCENES,
    TORQUE_LIMITS,
    BinsConfig,
    SceneConfig,
    build_spec,
    franky_assets,
    grasp_finger_position,
)

#: names reported by ``joint_names`` (those of fr3.urdf, so robot_state_publisher matches them)
URDF_JOINT_NAMES = [*ARM_JOINTS, "fr3_finger_joint1", "fr3_finger_joint2"]
#: ``hand`` actuator ctrl for a fully open gripper (0 is closed)
_GRIPPER_CTRL_OPEN = 255.0



@register_backend("sim")
class SimFrankaBackend(MujocoArmBackend):
    """Franka FR3 in MuJoCo under operational-space torque control, in one of two scenes.

    ``scene="peg_insertion"`` (default): the hand holds a peg over a hole block. The peg is a child
    body of the hand (it cannot slip). The target for the peg tip is the hole bottom centre
    ``target_pos``; ``peg_tip = tcp_pos + R(tcp_quat) @ [0, 0, peg_tip_offset]``.
    ``scene="pick_place"``: two open bins and a free cube (options ``source_bin``, ``target_bin``,
    ``bin_inner_half``, ``bin_wall_height``, ``cube_half_size``, ``cube_mass``, ``cube_spawn_range``);
    ``state().objects["cube"]`` is its pose and ``reset_scene`` puts it at a random pose in the source
    bin. ``target_pos`` is then the centre of the target bin's floor.
    ``stiffness`` is the Cartesian stiffness (x, y, z in N/m; rx, ry, rz in Nm/rad) of an
    operational-space impedance controller running at every physics step (``user_hal.backends.sim.osc``).
    """

    #: low-pass time constant (s) of the wrench fed back to the controller
    WRENCH_FILTER_TAU = 0.02

    name = "sim"
    embodiment = "franka_fr3"
    simulated = True
    render_groups = RENDER_GEOM_GROUPS

    def __init__(
        self,
        *,
        cameras: Sequence[str] = CAMERA_NAMES,
        image_width: int = 128,
        image_height: int = 128,
        physics_dt: float = 0.002,
        hole_pos: Sequence[float] = (0.5, 0.0),
        hole_depth: float = 0.04,
        peg_half_size: float = 0.01,
        clearance: float = 0.002,
        peg_length: float = 0.08,
        render_images: bool = True,
        stiffness: Sequence[float] = (1500.0, 1500.0, 1500.0, 80.0, 80.0, 80.0),
        scene: str = "peg_insertion",
        source_bin: Sequence[float] = BinsConfig.source_pos,
        target_bin: Sequence[float] = BinsConfig.target_pos,
        bin_inner_half: Sequence[float] = BinsConfig.inner_half,
        bin_wall_height: float = BinsConfig.wall_height,
        cube_half_size: float = BinsConfig.cube_half_size,
        cube_mass: float = BinsConfig.cube_mass,
        cube_spawn_range: Sequence[float] = BinsConfig.spawn_range,
        **unknown: Any,
    ) -> None:
        """Store the options; the model is built in ``start``. Unknown options raise TypeError."""
        if unknown:
            raise TypeError(f"SimFrankaBackend got unexpected keyword argument(s): "
                            f"{', '.join(sorted(unknown))}")
        self._cameras = [str(c) for c in cameras]
        for cam in self._cameras:
            if cam not in CAMERA_NAMES:
                raise ValueError(f"unknown camera {cam!r}; available: {', '.join(CAMERA_NAMES)}")
        if physics_dt <= 0.0:
            raise ValueError(f"physics_dt must be positive, got {physics_dt}")
        if len(tuple(hole_pos)) != 2:
            raise ValueError(f"hole_pos must be (x, y), got {hole_pos!r}")
        if scene not in SCENES:
            raise ValueError(f"unknown scene {scene!r}; available: {', '.join(SCENES)}")
        pairs = {"source_bin": source_bin, "target_bin": target_bin, "bin_inner_half": bin_inner_half,
                 "cube_spawn_range": cube_spawn_range}
        for key, value in pairs.items():
            if len(tuple(value)) != 2:
                raise ValueError(f"{key} must be (x, y), got {value!r}")
        bins = BinsConfig(
            source_pos=(float(source_bin[0]), float(source_bin[1])),
            target_pos=(float(target_bin[0]), float(target_bin[1])),
            inner_half=(float(bin_inner_half[0]), float(bin_inner_half[1])),
            wall_height=float(bin_wall_height),
            cube_half_size=float(cube_half_size),
            cube_mass=float(cube_mass),
            spawn_range=(float(cube_spawn_range[0]), float(cube_spawn_range[1])),
        )
        if scene == "pick_place":
            bins.validate()
        self._stiffness = np.asarray(stiffness, dtype=float)
        if self._stiffness.shape != (6,) or np.any(self._stiffness <= 0.0):
            raise ValueError(f"stiffness must be 6 positive numbers, got {stiffness!r}")
        self._cfg = SceneConfig(
            scene=scene,
            bins=bins,
            hole_pos=(float(hole_pos[0]), float(hole_pos[1])),
            hole_depth=float(hole_depth),
            peg_half_size=float(peg_half_size),
            clearance=float(clearance),
            peg_length=float(peg_length),
            image_width=int(image_width),
            image_height=int(image_height),
        )
        self._physics_dt = float(physics_dt)
        self._render_images = bool(render_images) and bool(self._cameras)
        self._model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        self._ctrl: OperationalSpaceController | None = None
        self._renderer: mujoco.Renderer | None = None
        self._home_pose: tuple[np.ndarray, np.ndarray] | None = None
        self._gripper_ctrl = 0.0

    # ------------------------------------------------------------------ description
    def joint_names(self) -> list[str]:
        """7 arm joints, then the two finger joints (fr3.urdf names)."""
        return list(URDF_JOINT_NAMES)

    @property
    def dof(self) -> int:
        """Number of arm joints."""
        return len(ARM_JOINTS)

    @property
    def scene(self) -> str:
        """The scene built: ``peg_insertion`` or ``pick_place``."""
        return self._cfg.scene

    @property
    def target_pos(self) -> np.ndarray:
        """Goal of the task: centre of the hole bottom on the table, ``(x, y, 0)``; pick_place: centre of
        the target bin's floor (its top face)."""
        if self._cfg.scene == "pick_place":
            b = self._cfg.bins
            return np.array([b.target_pos[0], b.target_pos[1], b.floor_thickness])
        return np.array([self._cfg.hole_pos[0], self._cfg.hole_pos[1], 0.0])

    @property
    def bins(self) -> BinsConfig:
        """Geometry of the pick-and-place scene (also set, unused, in the peg scene)."""
        return self._cfg.bins

    def task_geometry(self) -> dict[str, Any]:
        """The task keys this scene fixes (see ``RobotBackend.task_geometry``)."""
        if self._cfg.scene == "pick_place":
            b = self._cfg.bins
            return {"name": "pick_place", "target_pos": tuple(self.target_pos),
                    "pick_place.bin_inner_half": b.inner_half, "pick_place.cube_half_size": b.cube_half_size}
        return {"name": "peg_insertion", "target_pos": tuple(self.target_pos),
                "peg_tip_offset": self._cfg.peg_tip_offset}

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

    def urdf(self) -> str:
        """fr3.urdf with mesh paths made absolute ``file://`` URIs of the installed assets."""
        assets = franky_assets()
        text = (assets / "fr3.urdf").read_text()
        return text.replace('filename="meshes/', f'filename="file://{assets / "meshes"}/')

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Build the scene, put the arm in the "home" keyframe and hold the home TCP pose."""
        if self._model is not None:
            return
        spec = build_spec(self._cfg)
        spec.option.timestep = self._physics_dt
        model = spec.compile()
        data = mujoco.MjData(model)
        self._model, self._data = model, data
        self._arm_qpos = np.array([model.joint(j).qposadr[0] for j in ARM_JOINTS])
        self._arm_dofs = np.array([model.joint(j).dofadr[0] for j in ARM_JOINTS])
        self._finger_qpos = np.array([model.joint(j).qposadr[0] for j in FINGER_JOINTS])
        self._finger_dofs = np.array([model.joint(j).dofadr[0] for j in FINGER_JOINTS])
        self._arm_act = np.array([model.actuator(j).id for j in ARM_JOINTS])
        self._hand_act = model.actuator("hand").id
        self._tcp = model.site("tcp").id
        self._ft_site = model.site("ft_sensor").id
        self._hand_body = model.body("hand").id
        self._hand_mass = float(model.body_subtreemass[self._hand_body])
        self._force_adr = model.sensor("ft_force").adr[0]
        self._torque_adr = model.sensor("ft_torque").adr[0]
        self._key_home = model.key("home").id
        self._cube = model.body(CUBE).id if self._cfg.scene == "pick_place" else -1
        self._cube_qpos = model.joint(CUBE).qposadr[0] if self._cube >= 0 else -1
        self._cube_dofs = model.joint(CUBE).dofadr[0] if self._cube >= 0 else -1
        self._wbuf = {k: np.zeros(n) for k, n in
                      (("force", 3), ("torque", 3), ("acc", 6), ("vel", 6), ("r", 3), ("tmp", 3),
                       ("tmp2", 3), ("inertial", 3), ("out", 6))}
        home_q = model.key_qpos[self._key_home][self._arm_qpos].copy()
        self._ctrl = OperationalSpaceController(
            model, data, self._tcp, self._arm_dofs, TORQUE_LIMITS, self._stiffness, home_q,
            arm_qpos=self._arm_qpos)
        self._reset_home()

    def close(self) -> None:
        """Free the renderer and the model. Safe to call repeatedly."""
        self._ctrl = None
        super().close()

    def _reset_home(self) -> None:
        model, data = self._require()
        mujoco.mj_resetDataKeyframe(model, data, self._key_home)
        if self._cube >= 0:  # pick_place: the gripper starts open
            data.qpos[self._finger_qpos] = 0.04
            gripper = 1.0
        else:  # peg_insertion: start with the fingertips on the peg, so the gripper holds it from the first step
            data.qpos[self._finger_qpos] = grasp_finger_position(model, self._cfg.peg_half_size)
            gripper = 0.0
        mujoco.mj_forward(model, data)
        pos, quat = self._tcp_pose()
        self._home_pose = (pos.copy(), quat.copy())
        self.set_target(pos, quat, gripper)

    def reset_scene(self, rng: np.random.Generator) -> None:
        """pick_place: put the cube, at rest, at a uniform random position within ``cube_spawn_range`` of
        the source bin's centre and a uniform random yaw. peg_insertion: nothing (draws nothing)."""
        if self._cube < 0:
            return
        model, data = self._require()
        b = self._cfg.bins
        xy = np.asarray(b.source_pos) + rng.uniform(-1.0, 1.0, 2) * np.asarray(b.spawn_range)
        yaw = rng.uniform(-np.pi, np.pi)
        self.place_cube([xy[0], xy[1], b.cube_rest_height + 1e-4], yaw)

    def place_cube(self, pos: Sequence[float], yaw: float = 0.0) -> None:
        """Teleport the cube (pick_place) to ``pos`` with ``yaw`` about z, at rest."""
        model, data = self._require()
        if self._cube < 0:
            raise BackendError(f"the {self._cfg.scene} scene has no cube")
        a, d = self._cube_qpos, self._cube_dofs
        data.qpos[a:a + 3] = pos
        data.qpos[a + 3:a + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        data.qvel[d:d + 6] = 0.0
        mujoco.mj_forward(model, data)

    def set_joint_positions(self, q: Sequence[float]) -> None:
        """Teleport the arm (7 values) or arm + fingers (9 values) at rest; keeps the target."""
        model, data = self._require()
        q = np.asarray(q, dtype=float)
        if q.shape == (7,):
            data.qpos[self._arm_qpos] = q
        elif q.shape == (9,):
            data.qpos[self._arm_qpos] = q[:7]
            data.qpos[self._finger_qpos] = q[7:]
        else:
            raise ValueError(f"expected 7 or 9 joint positions, got shape {q.shape}")
        data.qvel[:] = 0.0
        data.qacc_warmstart[:] = 0.0
        mujoco.mj_forward(model, data)

    # ------------------------------------------------------------------ control
    def set_target(self, pos: np.ndarray, quat: np.ndarray, gripper: float) -> None:
        """Store the TCP target (base frame, quaternion x, y, z, w) and the gripper opening."""
        self._require()
        assert self._ctrl is not None
        pos = np.asarray(pos, dtype=float).reshape(3)
        q = np.asarray(quat, dtype=float).reshape(4)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(q))) or np.linalg.norm(q) < 1e-9:
            raise ValueError(f"invalid target pose {pos!r}, {q!r}")
        self._ctrl.set_target(pos, wxyz(q))
        self._gripper_ctrl = float(np.clip(gripper, 0.0, 1.0)) * _GRIPPER_CTRL_OPEN

    def advance(self, dt: float) -> None:
        """Integrate ``round(dt / physics_dt)`` physics steps with the controller in the loop."""
        model, data = self._require()
        ctrl = self._ctrl
        assert ctrl is not None
        data.ctrl[self._hand_act] = self._gripper_ctrl
        arm_act = self._arm_act
        step1, step2 = mujoco.mj_step1, mujoco.mj_step2
        fext = ctrl.external_wrench
        alpha = min(1.0, self._physics_dt / self.WRENCH_FILTER_TAU)
        for _ in range(int(round(dt / self._physics_dt))):
            step1(model, data)
            fext += alpha * (self._external_wrench() - fext)
            data.ctrl[arm_act] = ctrl.compute()
            step2(model, data)
        if not np.all(np.isfinite(data.qpos)):
            raise BackendError("simulation diverged (non-finite joint positions)")

    # ------------------------------------------------------------------ state
    def state(self) -> RobotState:
        """Read the TCP pose/twist, gripper, external wrench and joints from the simulation."""
        model, data = self._require()
        pos, quat = self._tcp_pose()
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_SITE, self._tcp, vel, 0)
        qidx = np.concatenate([self._arm_qpos, self._finger_qpos])
        didx = np.concatenate([self._arm_dofs, self._finger_dofs])
        return RobotState(
            tcp_pos=pos,
            tcp_quat=quat,
            tcp_linvel=vel[3:].copy(),
            tcp_angvel=vel[:3].copy(),
            gripper_width=float(np.sum(data.qpos[self._finger_qpos])),
            wrench=self._external_wrench().copy(),
            joint_pos=data.qpos[qidx].copy(),
            joint_vel=data.qvel[didx].copy(),
            time=float(data.time),
            objects=self._object_poses(),
        )

    def _object_poses(self) -> dict[str, np.ndarray]:
        if self._cube < 0:
            return {}
        _, data = self._require()
        return {CUBE: np.concatenate([data.xpos[self._cube], xyzw(data.xquat[self._cube])])}

    def _external_wrench(self) -> np.ndarray:
        """External force/torque on hand + fingers + peg, base frame, torque about the TCP.

        The flange F/T sensor reads the wrench the flange applies to the end effector: it carries
        the weight and inertial force of hand, fingers and peg minus any external contact wrench.
        The model-based load (weight, linear inertia and its moment; not the small rotational
        inertia of the end effector) is removed, so the result is ~0 in free space and +z when
        the peg is pushed up. Returns a reused buffer: copy it to keep it.
        """
        model, data = self._model, self._data
        b = self._wbuf
        rot, hand = data.site_xmat[self._ft_site], self._hand_body
        mujoco.mju_mulMatVec3(b["force"], rot, data.sensordata[self._force_adr:self._force_adr + 3])
        mujoco.mju_mulMatVec3(b["torque"], rot,
                              data.sensordata[self._torque_adr:self._torque_adr + 3])
        # Acceleration of the end effector's centre of mass (includes -gravity, as MuJoCo's cacc).
        acc, vel, r, tmp, tmp2 = b["acc"], b["vel"], b["r"], b["tmp"], b["tmp2"]
        mujoco.mj_objectAcceleration(model, data, mujoco.mjtObj.mjOBJ_XBODY, hand, acc, 0)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_XBODY, hand, vel, 0)
        com = data.subtree_com[hand]
        np.subtract(com, data.xpos[hand], out=r)
        inertial = b["inertial"]
        mujoco.mju_cross(inertial, acc[:3], r)
        mujoco.mju_cross(tmp, vel[:3], r)
        mujoco.mju_cross(tmp2, vel[:3], tmp)
        inertial += acc[3:]
        inertial += tmp2
        inertial *= self._hand_mass
        out = b["out"]
        site = data.site_xpos[self._ft_site]
        np.subtract(inertial, b["force"], out=out[:3])
        np.subtract(com, site, out=r)
        mujoco.mju_cross(tmp, r, inertial)
        np.subtract(tmp, b["torque"], out=out[3:])
        # Moment of the external force moved from the sensor site to the TCP.
        np.subtract(site, data.site_xpos[self._tcp], out=r)
        mujoco.mju_cross(tmp, r, out[:3])
        out[3:] += tmp
        return out
