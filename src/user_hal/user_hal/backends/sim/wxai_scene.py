"""Build the peg-insertion scene around the Trossen WidowX AI model shipped in the ``trossen-arm-sim`` wheel.

The wheel's ``wxai_follower.xml`` and meshes are read at run time (the package itself is never imported:
its ``__init__`` needs the ``trossen_arm`` driver). The scene adds, with ``mujoco.MjSpec``: the table and
the hole block of the Franka scene (``scene.py``) sized for this smaller arm, a TCP site whose z axis is the
approach direction, a peg held between the fingers, and a side camera; the model's wrist camera ``cam`` is
renamed ``wrist``. Licence and origin of the model: ``docs/third_party.md``.
"""
from __future__ import annotations

import importlib.util
import pathlib

import mujoco
import numpy as np

from user_hal.backends.sim.scene import (COLLIDE_ARM, COLLIDE_ENV, COLLIDE_PEG, SceneConfig, add_hole_block, add_room,
                                look_at_xyaxes)

ARM_JOINTS = tuple(f"joint_{i}" for i in range(6))
FINGER_JOINTS = ("left_carriage_joint", "right_carriage_joint")
GRIPPER_ACTUATOR = "left_gripper"
#: opening of one finger (carriage travel) when the gripper is fully open, metres
FINGER_TRAVEL = 0.044
#: the model's end-effector site on ``link_6`` (between the fingertips), metres along the link's x axis
EE_OFFSET = 0.156
#: the TCP frame on ``link_6``: z along the link's x axis (the approach direction), y along the finger motion
TCP_QUAT_IN_LINK6 = (np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0)   # w, x, y, z: +90 degrees about y
#: TCP orientation (w, x, y, z) pointing straight down with the fingers moving along the base y axis
DOWN_WXYZ = np.array([0.0, 0.0, 1.0, 0.0])
#: how far the peg top sits above the TCP (between the fingertip pads, which span about 15 mm)
PEG_GRASP_DEPTH = 0.01
CAMERA_NAMES = ("wrist", "side")
#: geom groups the cameras draw: 0 the scene and the peg, 2 the arm's visual meshes (3: collision shapes)
RENDER_GEOM_GROUPS = (1, 0, 1, 0, 0, 0)
#: a folded but valid joint configuration to start the inverse kinematics of the home pose from
IK_SEED = (0.0, 1.0, 0.8, 0.0, 0.0, 0.0)


def wxai_assets() -> pathlib.Path:
    """Directory of the WidowX AI model inside the installed ``trossen-arm-sim`` wheel (not imported)."""
    spec = importlib.util.find_spec("trossen_arm_sim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the WidowX AI model needs the trossen-arm-sim wheel (pinned in requirements-nodeps.txt; "
                          "scripts/setup.sh installs it)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "assets"
    if not (path / "wxai_follower.xml").is_file():
        raise ImportError(f"trossen-arm-sim is installed but {path / 'wxai_follower.xml'} is missing")
    return path


def wxai_peg_config(hole_pos: tuple[float, float] = (0.28, 0.0), hole_depth: float = 0.03,
                    peg_half_size: float = 0.0075, clearance: float = 0.003, peg_length: float = 0.06,
                    block_wall: float = 0.03, image_width: int = 128, image_height: int = 128) -> SceneConfig:
    """Peg-insertion geometry for the WidowX AI: the Franka scene at about 0.7 of its size."""
    return SceneConfig(scene="peg_insertion", hole_pos=hole_pos, hole_depth=hole_depth, peg_half_size=peg_half_size,
                       clearance=clearance, peg_length=peg_length, block_wall=block_wall,
                       image_width=image_width, image_height=image_height)


def build_wxai_spec(cfg: SceneConfig) -> mujoco.MjSpec:
    """An ``MjSpec`` of the WidowX AI (joint position actuators) at the origin of a table, holding a peg over a
    hole block at ``cfg.hole_pos``."""
    if cfg.scene != "peg_insertion":
        raise ValueError(f"the WidowX AI simulation has only the peg_insertion scene, not {cfg.scene!r}")
    assets = wxai_assets()
    spec = mujoco.MjSpec.from_file(str(assets / "wxai_follower.xml"))
    spec.meshdir = str(assets)
    spec.modelname = "wxai_peg_insertion"
    spec.visual.global_.offwidth = max(cfg.image_width, 640)
    spec.visual.global_.offheight = max(cfg.image_height, 480)
    for geom in spec.geoms:
        if geom.contype or geom.conaffinity:
            geom.contype, geom.conaffinity = COLLIDE_ARM, COLLIDE_ENV   # the arm never collides with itself
    add_room(spec)
    add_hole_block(spec, cfg)
    link6 = spec.body("link_6")
    link6.add_site(name="tcp", pos=[EE_OFFSET, 0.0, 0.0], quat=list(TCP_QUAT_IN_LINK6), size=[0.002, 0, 0],
                   rgba=[1, 0, 0, 0.5], group=4)
    _add_peg(spec, cfg)
    spec.camera("cam").name = "wrist"
    hx, hy = cfg.hole_pos
    eye, target = np.array([hx + 0.12, hy - 0.5, 0.26]), np.array([hx, hy, 0.07])
    spec.worldbody.add_camera(name="side", pos=eye, fovy=50.0,
                              xyaxes=look_at_xyaxes(eye, target, np.array([0.0, 0.0, 1.0])))
    return spec


def _add_peg(spec: mujoco.MjSpec, cfg: SceneConfig) -> None:
    # A child body of link_6 ("held", it cannot slip), long along the approach axis (link_6 x).
    s, length = cfg.peg_half_size, cfg.peg_length
    peg = spec.body("link_6").add_body(name="peg", pos=[EE_OFFSET - PEG_GRASP_DEPTH + length / 2, 0.0, 0.0])
    peg.add_geom(name="peg", type=mujoco.mjtGeom.mjGEOM_BOX, size=[length / 2, s, s], material="peg",
                 density=2700.0, contype=COLLIDE_PEG, conaffinity=COLLIDE_ENV | COLLIDE_ARM,
                 friction=[0.3, 0.005, 0.0001], solref=[0.004, 1.0])
    peg.add_site(name="peg_tip", pos=[length / 2, 0.0, 0.0], size=[0.002, 0, 0], rgba=[1, 0, 0, 0.5], group=4)
    # Contacts between a body and its parent's weld group are filtered (the peg is welded to link_6, the
    # carriages hang from it): explicit pairs let the fingers touch the peg.
    for carriage in ("carriage_left", "carriage_right"):
        for i, geom in enumerate(g for g in spec.body(carriage).geoms if g.type == mujoco.mjtGeom.mjGEOM_BOX):
            geom.name = geom.name or f"{carriage}_pad{i}"
            spec.add_pair(geomname1=geom.name, geomname2="peg", condim=3)


def grasp_finger_position(model: mujoco.MjModel, peg_half_size: float) -> float:
    """Carriage joint position at which the innermost finger pad touches the peg's side."""
    body = model.body("carriage_left").id
    inner = min(abs(model.body_pos[body][1] + model.geom_pos[g][1]) - model.geom_size[g][1]
                for g in range(model.ngeom)
                if model.geom_bodyid[g] == body and model.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX)
    return float(np.clip(peg_half_size - inner, 0.0, FINGER_TRAVEL))
