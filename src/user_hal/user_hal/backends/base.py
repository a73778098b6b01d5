"""The hardware abstraction: one small interface that every robot backend implements.

A backend drives one physical (or simulated) arm through a Cartesian impedance target. It knows
nothing about episodes, rewards, ROS or learning: the robot cell (``user_hal.core.cell``) turns policy
actions into targets, and the robot node (``user_hal.robot_node``) wraps the cell in ROS.

Conventions used by every backend:
- positions in metres, in the robot base frame; quaternions as ``[x, y, z, w]``;
- the TCP is the point between the gripper fingertips (Franka: flange + 0.1034 m along z);
- ``gripper`` commands are an opening fraction in ``[0, 1]`` (0 closed, 1 fully open);
- wrench is the external force/torque acting on the end effector, in the base frame;
- an object pose is ``[x, y, z, qx, qy, qz, qw]`` in the base frame.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

import numpy as np


@dataclasses.dataclass
class RobotState:
    """One reading of the arm."""

    tcp_pos: np.ndarray          # (3,) metres
    tcp_quat: np.ndarray         # (4,) x, y, z, w
    tcp_linvel: np.ndarray       # (3,) m/s
    tcp_angvel: np.ndarray       # (3,) rad/s
    gripper_width: float         # metres between the fingers
    wrench: np.ndarray           # (6,) force N, torque Nm
    joint_pos: np.ndarray        # (dof + gripper joints,) rad / m, ordered as joint_names()
    joint_vel: np.ndarray        # same layout as joint_pos
    time: float                  # backend clock, seconds (sim time or wall time)
    #: poses of the loose task objects the backend tracks (a simulator; real backends: none), by name
    objects: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class BackendError(RuntimeError):
    """A backend fault (lost connection, reflex, controller error). Carries a readable message."""


class RobotBackend(abc.ABC):
    """Interface of a robot backend. Subclasses register themselves with ``register_backend``."""

    #: registry name, e.g. "sim"
    name: ClassVar[str] = ""
    #: embodiment this backend drives, e.g. "franka_fr3"
    embodiment: ClassVar[str] = ""
    #: True when ``advance`` integrates simulated time (so the node may run faster than real time)
    simulated: ClassVar[bool] = False

    @abc.abstractmethod
    def joint_names(self) -> list[str]:
        """Names of the joints reported in ``RobotState.joint_pos`` (arm joints first)."""

    @property
    @abc.abstractmethod
    def dof(self) -> int:
        """Number of arm joints (without the gripper)."""

    @abc.abstractmethod
    def camera_names(self) -> list[str]:
        """Cameras whose frames ``render`` returns, in order."""

    @abc.abstractmethod
    def start(self) -> None:
        """Connect / build the model. Called once before anything else."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the robot (hold pose / stop motion) and free resources. Idempotent."""

    @abc.abstractmethod
    def state(self) -> RobotState:
        """Latest state of the arm."""

    @abc.abstractmethod
    def set_target(self, pos: np.ndarray, quat: np.ndarray, gripper: float) -> None:
        """Set the Cartesian impedance target of the TCP and the gripper opening. Never blocks."""

    @abc.abstractmethod
    def advance(self, dt: float) -> None:
        """Let ``dt`` seconds of robot time pass under the current target.

        A simulator integrates its physics for ``dt``; a real robot returns at once, since wall-clock
        time passes by itself between control ticks.
        """

    @abc.abstractmethod
    def render(self) -> dict[str, np.ndarray]:
        """Latest frame of every camera: name -> ``(H, W, 3)`` uint8 RGB."""

    def urdf(self) -> str:
        """URDF of the robot for ``robot_description`` (empty when unknown)."""
        return ""

    def recover(self) -> None:
        """Clear a recoverable error (e.g. a reflex). Default: nothing to do."""

    def reset_scene(self, rng: np.random.Generator) -> None:
        """Put the loose task objects at a random start for a new episode (a simulator). Default: nothing
        (on a real cell a person rearranges the scene)."""

    def task_geometry(self) -> dict[str, Any]:
        """Task settings the backend's own scene fixes (a simulator), by dotted key under ``task`` of the
        robot profile, e.g. ``{"name": "pick_place", "target_pos": ...}``; the cell checks that the
        profile agrees. Default: none."""
        return {}


BackendFactory = Callable[..., RobotBackend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Class decorator: make a backend constructible by name (``make_backend``)."""

    def deco(cls: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = cls
        return cls

    return deco


def available_backends() -> list[str]:
    _load_builtin_backends()
    return sorted(_BACKENDS)


def make_backend(name: str, **kwargs: Any) -> RobotBackend:
    """Construct the backend registered as ``name`` with keyword options from the config."""
    _load_builtin_backends()
    if name not in _BACKENDS:
        raise KeyError(f"unknown robot backend {name!r}; available: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name](**kwargs)


#: registry name -> module that registers it (imported on first use)
BUILTIN_BACKENDS = {"sim": "user_hal.backends.sim.franka_sim", "wxai_sim": "user_hal.backends.sim.wxai_sim",
                    "franky": "user_hal.backends.franky", "franka_ros2": "user_hal.backends.franka_ros2"}


def _load_builtin_backends() -> None:
    # Imported lazily: a backend may pull heavy or optional dependencies (MuJoCo, franky, ...).
    import importlib

    for name, module in BUILTIN_BACKENDS.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:  # pragma: no cover - depends on what is installed
            _BACKENDS.setdefault(name, _unavailable(module, exc))


def _unavailable(module: str, exc: ImportError) -> BackendFactory:
    def factory(**_: Any) -> RobotBackend:
        raise ImportError(f"backend module {module} cannot be imported: {exc}")

    return factory  # type: ignore[return-value]
