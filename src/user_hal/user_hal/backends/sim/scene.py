"""Build the MuJoCo scenes around the Franka FR3 model shipped with ``franky_sim``.

The FR3 MJCF, meshes and URDF are read at run time from the installed ``franky_sim`` package; the
scene is added with ``mujoco.MjSpec``: table, TCP, force/torque sensor and cameras, plus the task's
objects -- ``peg_insertion``: a hole block and a peg held in the hand; ``pick_place``: two open bins
and a free cube.
"""
from __future__ import annotations

import dataclasses
import pathlib

import mujoco
import numpy as np

ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("finger_joint1", "finger_joint2")
#: FR3 joint torque limits (Nm), joints 1-7
TORQUE_LIMITS = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
#: Franka convention: TCP is 0.1034 m along the hand z axis
TCP_OFFSET = 0.1034
#: how far the peg top sits above the TCP (between the fingertip pads, which span about +-9 mm)
PEG_GRASP_DEPTH = 0.01
CAMERA_NAMES = ("wrist", "side")
#: geom groups drawn by the cameras: 0 scene, 1 hand/finger meshes, 3 low-poly arm meshes.
#: The detailed arm meshes (group 2, ~240k faces) cost ~25 ms per image on a software renderer.
RENDER_GEOM_GROUPS = (1, 1, 0, 1, 0, 0)

#: name of the free cube of the pick-and-place scene (its body and its joint)
CUBE = "cube"

# Collision bit masks: the arm never collides with itself (saves time, the real robot has its own
# self-collision guard); the peg touches the environment (and the fingertip pads, via pairs); the
# cube touches the environment, the arm and other objects.
COLLIDE_ENV, COLLIDE_ARM, COLLIDE_PEG, COLLIDE_OBJ = 1, 2, 4, 8


def franky_assets() -> pathlib.Path:
    """Directory of the FR3 assets inside the installed ``franky_sim`` package."""
    import franky_sim

    return pathlib.Path(franky_sim.__file__).resolve().parent / "assets"


@dataclasses.dataclass(frozen=True)
class BinsConfig:
    """Geometry of the pick-and-place scene (metres, radians): two bins on the table, a cube."""

    source_pos: tuple[float, float] = (0.5, 0.15)     # centre of the bin the cube starts in, x y
    target_pos: tuple[float, float] = (0.5, -0.15)    # centre of the bin it must end in
    inner_half: tuple[float, float] = (0.09, 0.09)    # half the inner width of a bin, x y
    wall_height: float = 0.05                          # above the table
    wall_thickness: float = 0.01
    floor_thickness: float = 0.005
    cube_half_size: float = 0.02
    cube_mass: float = 0.05                            # kg
    spawn_range: tuple[float, float] = (0.03, 0.03)    # reset: cube centre uniform +- this around source_pos

    @property
    def cube_rest_height(self) -> float:
        """Height of the cube centre resting on a bin floor."""
        return self.floor_thickness + self.cube_half_size

    def validate(self) -> None:
        """Raise ValueError naming the option when the cube cannot start inside the source bin."""
        if min(*self.inner_half, self.wall_height, self.wall_thickness, self.floor_thickness,
               self.cube_half_size, self.cube_mass) <= 0:
            raise ValueError("bin sizes, cube_half_size and cube_mass must be positive")
        if min(self.spawn_range) < 0:
            raise ValueError(f"cube_spawn_range must be >= 0, got {self.spawn_range}")
        # Any yaw: the cube's corners reach half_size * sqrt(2) from its centre.
        reach = self.cube_half_size * np.sqrt(2.0)
        for i, axis in enumerate("xy"):
            if self.spawn_range[i] + reach > self.inner_half[i]:
                raise ValueError(f"cube_spawn_range {axis} {self.spawn_range[i]} + cube corner {reach:.3f} "
                                 f"exceeds the bin's inner half width {self.inner_half[i]}")
        apart = np.abs(np.subtract(self.source_pos, self.target_pos))
        if np.all(apart < 2 * (np.asarray(self.inner_half) + self.wall_thickness)):
            raise ValueError(f"the bins at {self.source_pos} and {self.target_pos} overlap")


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Which scene, and its geometry (metres)."""

    scene: str = "peg_insertion"                # one of SCENES
    bins: BinsConfig = BinsConfig()             # pick_place only
    hole_pos: tuple[float, float] = (0.5, 0.0)  # peg_insertion only: hole and peg
    hole_depth: float = 0.04
    peg_half_size: float = 0.01
    clearance: float = 0.002
    peg_length: float = 0.08
    block_wall: float = 0.04
    image_width: int = 128
    image_height: int = 128

    @property
    def hole_half_size(self) -> float:
        """Half the side of the square through-hole."""
        return self.peg_half_size + self.clearance

    @property
    def peg_tip_offset(self) -> float:
        """Distance from the TCP to the peg tip along the TCP z axis."""
        return self.peg_length - PEG_GRASP_DEPTH


def look_at_xyaxes(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """MuJoCo camera ``xyaxes`` so that a camera at ``eye`` looks at ``target`` (camera -z)."""
    fwd = target - eye
    fwd = fwd / np.linalg.norm(fwd)
    x = np.cross(fwd, up)
    x = x / np.linalg.norm(x)
    y = np.cross(x, fwd)
    return np.concatenate([x, y])


def build_spec(cfg: SceneConfig) -> mujoco.MjSpec:
    """Return an ``MjSpec`` of the FR3 (torque-controlled) in the scene ``cfg.scene``."""
    if cfg.scene not in SCENES:
        raise ValueError(f"unknown scene {cfg.scene!r}; available: {', '.join(SCENES)}")
    assets = franky_assets()
    spec = mujoco.MjSpec.from_file(str(assets / "fr3.xml"))
    # fr3.xml names a meshdir that does not exist in the package; the meshes live in meshes/.
    spec.meshdir = str(assets / "meshes")
    spec.modelname = f"fr3_{cfg.scene}"
    spec.visual.global_.offwidth = max(cfg.image_width, 640)
    spec.visual.global_.offheight = max(cfg.image_height, 480)

    _make_torque_controlled(spec)
    _set_collision_masks(spec)
    _set_render_groups(spec)
    add_room(spec)
    _add_tcp_and_sensor(spec)
    _SCENE_BUILDERS[cfg.scene](spec, cfg)
    return spec


def _add_peg_insertion(spec: mujoco.MjSpec, cfg: SceneConfig) -> None:
    add_hole_block(spec, cfg)
    _add_peg(spec, cfg)
    _add_cameras(spec, wrist_look=cfg.peg_tip_offset + 0.03, side_eye=(0.15, -0.68, 0.30),
                 side_target=(0.0, 0.0, 0.22), side_origin=cfg.hole_pos)


def _add_pick_place(spec: mujoco.MjSpec, cfg: SceneConfig) -> None:
    _add_bins(spec, cfg.bins)
    _add_cube(spec, cfg.bins)
    # The wrist camera aims closer below the TCP than in the peg scene: from above the source bin it
    # sees that bin and, past the fingers, the target bin.
    _add_cameras(spec, wrist_look=0.05, **_bins_side_camera(cfg.bins))


def _make_torque_controlled(spec: mujoco.MjSpec) -> None:
    for joint in ARM_JOINTS:
        act = spec.actuator(joint)
        limit = float(TORQUE_LIMITS[ARM_JOINTS.index(joint)])
        act.set_to_motor()
        act.inheritrange = 0
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.ctrlrange = [-limit, limit]
        # The FCI torque interface compensates joint friction; MuJoCo's frictionloss would otherwise
        # leave a millimetre-scale steady-state error under impedance control.
        spec.joint(joint).frictionloss = 0.0
    for joint in FINGER_JOINTS:
        # fr3.xml gives the fingers the arm joints' class defaults (armature 0.195, friction
        # 1.1 N), which makes the gripper take seconds to move; use finger-sized values.
        spec.joint(joint).armature = 0.005
        spec.joint(joint).frictionloss = 0.1
    key = spec.key("home")
    key.ctrl = [0.0] * 7 + [255.0]


def _set_collision_masks(spec: mujoco.MjSpec) -> None:
    for geom in spec.geoms:
        if geom.contype == 0 and geom.conaffinity == 0:
            continue
        geom.contype = COLLIDE_ARM
        geom.conaffinity = COLLIDE_ENV


def grasp_finger_position(model: mujoco.MjModel, peg_half_size: float) -> float:
    """Finger joint position at which the fingertip pads touch the peg sides."""
    finger = model.body("left_finger").id
    inner = min(
        model.geom_pos[g][1] - model.geom_size[g][1]
        for g in range(model.ngeom)
        if model.geom_bodyid[g] == finger and model.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX
    )
    return float(np.clip(peg_half_size - inner, 0.0, 0.04))


def _set_render_groups(spec: mujoco.MjSpec) -> None:
    end_effector = {"hand", "left_finger", "right_finger"}
    for geom in spec.geoms:
        if geom.parent.name in end_effector:
            # Hand and finger meshes are cheap and seen up close by the wrist camera: draw them.
            geom.group = 1 if geom.group == 2 else 5
        elif geom.group == 3:
            geom.rgba = [0.92, 0.92, 0.92, 1.0]


def add_room(spec: mujoco.MjSpec) -> None:
    world = spec.worldbody
    spec.add_texture(name="sky", type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT, width=64, height=64,
                     rgb1=[0.75, 0.8, 0.85], rgb2=[0.35, 0.4, 0.45])
    spec.add_texture(name="grid", type=mujoco.mjtTexture.mjTEXTURE_2D,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER, width=256, height=256,
                     rgb1=[0.55, 0.5, 0.45], rgb2=[0.6, 0.55, 0.5])
    spec.add_material(name="table", textures=["", "grid"], texrepeat=[8, 8])
    spec.add_material(name="block", rgba=[0.15, 0.35, 0.75, 1.0])
    spec.add_material(name="peg", rgba=[0.9, 0.55, 0.1, 1.0])
    world.add_light(name="top", pos=[0.4, 0.0, 1.6], dir=[0, 0, -1], diffuse=[0.7, 0.7, 0.7],
                    castshadow=False)
    world.add_light(name="fill", pos=[1.2, -1.0, 1.0], dir=[-0.6, 0.5, -0.5],
                    diffuse=[0.35, 0.35, 0.35], castshadow=False)
    # Table top at z = 0; the robot base stands on it at the origin.
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[1.5, 1.5, 0.05],
                   material="table", contype=COLLIDE_ENV, conaffinity=COLLIDE_ARM | COLLIDE_PEG)


def add_hole_block(spec: mujoco.MjSpec, cfg: SceneConfig) -> None:
    hx, hy = cfg.hole_pos
    h, w, d = cfg.hole_half_size, cfg.hole_half_size + cfg.block_wall, cfg.hole_depth
    block = spec.worldbody.add_body(name="hole_block", pos=[hx, hy, 0.0])
    mid, half_wall = (h + w) / 2.0, (w - h) / 2.0
    walls = {
        "px": ([mid, 0.0, d / 2], [half_wall, w, d / 2]),
        "nx": ([-mid, 0.0, d / 2], [half_wall, w, d / 2]),
        "py": ([0.0, mid, d / 2], [h, half_wall, d / 2]),
        "ny": ([0.0, -mid, d / 2], [h, half_wall, d / 2]),
    }
    for tag, (pos, size) in walls.items():
        block.add_geom(name=f"hole_wall_{tag}", type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos,
                       size=size, material="block", contype=COLLIDE_ENV, conaffinity=COLLIDE_ARM | COLLIDE_PEG,
                       friction=[0.3, 0.005, 0.0001])
    block.add_site(name="hole_bottom", pos=[0.0, 0.0, 0.0], size=[0.003, 0, 0],
                   rgba=[0, 1, 0, 0.5], group=4)


def _add_tcp_and_sensor(spec: mujoco.MjSpec) -> None:
    hand = spec.body("hand")
    hand.add_site(name="tcp", pos=[0.0, 0.0, TCP_OFFSET], size=[0.002, 0, 0],
                  rgba=[1, 0, 0, 0.5], group=4)
    # F/T sensor at the flange (hand frame origin): measures the load of hand + fingers (+ peg).
    hand.add_site(name="ft_sensor", pos=[0.0, 0.0, 0.0], size=[0.002, 0, 0], group=4)
    spec.add_sensor(name="ft_force", type=mujoco.mjtSensor.mjSENS_FORCE,
                    objtype=mujoco.mjtObj.mjOBJ_SITE, objname="ft_sensor")
    spec.add_sensor(name="ft_torque", type=mujoco.mjtSensor.mjSENS_TORQUE,
                    objtype=mujoco.mjtObj.mjOBJ_SITE, objname="ft_sensor")


def _add_peg(spec: mujoco.MjSpec, cfg: SceneConfig) -> None:
    # The peg is a child body of the hand: "held in the gripper", it never slips or drops.
    hand = spec.body("hand")
    top = TCP_OFFSET - PEG_GRASP_DEPTH
    peg = hand.add_body(name="peg", pos=[0.0, 0.0, top + cfg.peg_length / 2.0])
    s = cfg.peg_half_size
    peg.add_geom(name="peg", type=mujoco.mjtGeom.mjGEOM_BOX,
                 size=[s, s, cfg.peg_length / 2.0], material="peg", density=2700.0,
                 contype=COLLIDE_PEG, conaffinity=COLLIDE_ENV | COLLIDE_ARM, friction=[0.3, 0.005, 0.0001],
                 solref=[0.004, 1.0])
    # MuJoCo filters contacts between a body and its parent's weld group, which silences
    # finger-peg contacts (the peg is welded to the hand); explicit pairs bring them back.
    for finger in ("left_finger", "right_finger"):
        pads = [g for g in spec.body(finger).geoms if g.type == mujoco.mjtGeom.mjGEOM_BOX]
        for i, pad in enumerate(pads):
            pad.name = pad.name or f"{finger}_pad{i}"
            spec.add_pair(geomname1=pad.name, geomname2="peg", condim=3)
    peg.add_site(name="peg_tip", pos=[0.0, 0.0, cfg.peg_length / 2.0], size=[0.002, 0, 0],
                 rgba=[1, 0, 0, 0.5], group=4)


def _add_bins(spec: mujoco.MjSpec, b: BinsConfig) -> None:
    """Two open boxes standing on the table: a floor plate and four low walls each."""
    spec.add_material(name="source_bin", rgba=[0.2, 0.45, 0.8, 1.0])
    spec.add_material(name="target_bin", rgba=[0.25, 0.65, 0.3, 1.0])
    (ix, iy), t, h = b.inner_half, b.wall_thickness, b.wall_height
    walls = {
        "px": ([ix + t / 2, 0.0, h / 2], [t / 2, iy + t, h / 2]),
        "nx": ([-ix - t / 2, 0.0, h / 2], [t / 2, iy + t, h / 2]),
        "py": ([0.0, iy + t / 2, h / 2], [ix, t / 2, h / 2]),
        "ny": ([0.0, -iy - t / 2, h / 2], [ix, t / 2, h / 2]),
    }
    for name, (x, y) in (("source_bin", b.source_pos), ("target_bin", b.target_pos)):
        body = spec.worldbody.add_body(name=name, pos=[x, y, 0.0])
        body.add_geom(name=f"{name}_floor", type=mujoco.mjtGeom.mjGEOM_BOX,
                      pos=[0.0, 0.0, b.floor_thickness / 2], size=[ix, iy, b.floor_thickness / 2],
                      material=name, contype=COLLIDE_ENV, conaffinity=COLLIDE_ARM | COLLIDE_OBJ)
        for tag, (pos, size) in walls.items():
            body.add_geom(name=f"{name}_wall_{tag}", type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos, size=size,
                          material=name, contype=COLLIDE_ENV, conaffinity=COLLIDE_ARM | COLLIDE_OBJ)


def _add_cube(spec: mujoco.MjSpec, b: BinsConfig) -> None:
    """A free cube resting in the middle of the source bin (the backend's reset moves it)."""
    spec.add_material(name="cube", rgba=[0.85, 0.2, 0.15, 1.0])
    s = b.cube_half_size
    pos = [b.source_pos[0], b.source_pos[1], b.cube_rest_height]
    cube = spec.worldbody.add_body(name=CUBE, pos=pos)
    cube.add_freejoint(name=CUBE)
    # Rubber-like grip: high sliding and some torsional friction so the pads hold it without spinning.
    cube.add_geom(name=CUBE, type=mujoco.mjtGeom.mjGEOM_BOX, size=[s, s, s], mass=b.cube_mass,
                  material="cube", contype=COLLIDE_OBJ, conaffinity=COLLIDE_ENV | COLLIDE_ARM | COLLIDE_OBJ, condim=4,
                  friction=[1.0, 0.01, 0.0001])
    # fr3.xml's "home" keyframe knows only the arm and the fingers: add the cube's pose.
    key = spec.key("home")
    key.qpos = [*key.qpos, *pos, 1.0, 0.0, 0.0, 0.0]


def _bins_side_camera(b: BinsConfig) -> dict:
    """The side camera of the pick-and-place scene: in front of the robot on its right, seeing both bins
    and the hand above them."""
    cx, cy = (b.source_pos[0] + b.target_pos[0]) / 2, (b.source_pos[1] + b.target_pos[1]) / 2
    return {"side_eye": (0.5, -0.4, 0.5), "side_target": (0.0, 0.0, 0.12), "side_origin": (cx, cy)}


def _add_cameras(spec: mujoco.MjSpec, wrist_look: float, side_eye: tuple[float, float, float],
                 side_target: tuple[float, float, float], side_origin: tuple[float, float]) -> None:
    """``wrist_look``: the wrist camera aims this far below the TCP; the side camera sits at ``side_eye``
    and looks at ``side_target``, both relative to ``side_origin`` (x, y on the table)."""
    # Wrist camera on the hand, behind the fingers, looking down past the fingertips (hand frame).
    eye = np.array([0.09, 0.0, 0.02])
    target = np.array([0.0, 0.0, TCP_OFFSET + wrist_look])
    spec.body("hand").add_camera(name="wrist", pos=eye, fovy=75.0,
                                 xyaxes=look_at_xyaxes(eye, target, np.array([1.0, 0.0, 0.0])))
    # Side camera fixed in the world, looking across the task area.
    origin = np.array([side_origin[0], side_origin[1], 0.0])
    eye = origin + np.asarray(side_eye)
    target = origin + np.asarray(side_target)
    spec.worldbody.add_camera(name="side", pos=eye, fovy=50.0,
                              xyaxes=look_at_xyaxes(eye, target, np.array([0.0, 0.0, 1.0])))


_SCENE_BUILDERS = {"peg_insertion": _add_peg_insertion, "pick_place": _add_pick_place}
#: scene names (backend option ``scene``); each is the name of the task it serves
SCENES = tuple(_SCENE_BUILDERS)
