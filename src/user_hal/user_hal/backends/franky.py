"""A real Franka FR3 driven through franky (libfranka's FCI) -- the "franky" backend.

How the arm is commanded
------------------------
``set_target`` must never block the control loop, so the arm runs one long-lived franky
``CartesianImpedanceTrackingMotion``: a client-side Cartesian impedance controller that franky
executes in its own 1 kHz libfranka torque loop, reading the latest ``CartesianReference`` every
cycle. ``set_target`` only calls ``motion.set_reference`` (a non-blocking hand-over to that loop),
so the target of the impedance controller is *replaced* every control tick -- the semantics of
``RobotBackend.set_target`` and of the simulated backend.

The alternatives franky offers were rejected: an asynchronous ``CartesianMotion`` /
``CartesianWaypointMotion`` per tick plans a fresh trajectory and preempts the running motion at
every tick, following it with Franka's internal position-tracking controller (stiff on contact),
and Franka's internal Cartesian impedance (``set_cartesian_impedance``) only acts under such a
motion generator, which would still have to be replanned each tick. The tracking motion is compliant on contact (which
peg insertion needs), bounded (the pose error fed to the controller is clipped, so a jump of the
target or a blocked peg gives a bounded force) and repels from the joint limits.

The arm's end-effector frame reported by libfranka (``O_T_EE``) depends on the end effector
configured in Desk; this backend computes its TCP from the *flange* instead, ``flange_to_tcp``
(default: the Franka Hand fingertip centre, 0.1034 m along the flange z axis, hand yaw -45 deg),
so the reported TCP is the same whatever Desk says. Targets are converted back to the EE frame
that franky's controller tracks.

Faults
------
A reflex, a controller error or a lost connection ends the tracking motion. The next call to
``set_target`` or ``state`` notices it and recovers automatically -- reconnect if the connection
is broken, franky's ``recover_from_errors``, restart the tracking motion at the measured pose --
at most ``max_recoveries`` times within ``recovery_window`` seconds. One more fault and the backend
raises ``BackendError`` and stays stopped (the arm holds where the fault left it; every later
call raises the same error) until it is re-created. ``recover()`` runs the same recovery on
request and does not count against ``max_recoveries`` (the robot node bounds its own calls with
``robot.max_recoveries``).

Cameras are separate devices on a real cell: this backend has none (``camera_names() == []``).
"""
from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import BackendError, RobotBackend, RobotState, register_backend
from ..core.geometry import quat_from_euler, quat_normalize

try:
    import franky
except ImportError as _exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"the franky backend needs the franky-control package ({_exc})") from _exc

log = logging.getLogger("user_hal.backends.franky")

ARM_JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]
#: names reported by ``joint_names`` (those of fr3.urdf, so robot_state_publisher matches them)
JOINT_NAMES = [*ARM_JOINTS, "fr3_finger_joint1", "fr3_finger_joint2"]
#: FR3 joint position limits (rad) from the FR3 datasheet; franky's controller repels from them
FR3_Q_MIN = np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159])
FR3_Q_MAX = np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])
#: home joint configuration: TCP at (0.554, 0, 0.521) pointing down, the sim backend's "home"
DEFAULT_HOME = (0.0, 0.0, 0.0, -1.5708, 0.0, 1.5708, -0.7854)


def _vector(name: str, value: Any, size: int, positive: bool = False) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"backend_options.{name} must be {size} numbers, got {value!r}") from None
    if v.size == 1 and size > 1:
        v = np.full(size, float(v[0]))
    if v.shape != (size,) or not np.all(np.isfinite(v)) or (positive and np.any(v <= 0.0)):
        kind = "positive numbers" if positive else "finite numbers"
        raise ValueError(f"backend_options.{name} must be {size} {kind}, got {value!r}")
    return v


def _number(name: str, value: Any, minimum: float = 0.0, strict: bool = True) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"backend_options.{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < minimum or (strict and x == minimum):
        raise ValueError(f"backend_options.{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return x


def _affine(pos: np.ndarray, quat: np.ndarray) -> franky.Affine:
    return franky.Affine(np.asarray(pos, dtype=float), np.asarray(quat, dtype=float))


def _call_with_timeout(fn, timeout: float):
    """``fn()`` in a helper thread (libfranka releases the GIL while it connects); TimeoutError if
    it has not returned within ``timeout`` s. A late result is dropped (its connection closes)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="franky-connect", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box.pop("error")
    return box.pop("value")


def _is_connection_error(exc: BaseException) -> bool:
    # After a libfranka NetworkException the Robot object is unusable: every call raises
    # NetworkException or RuntimeError("Net Exception"); a new connection is needed.
    return isinstance(exc, franky.NetworkException) or (
        isinstance(exc, RuntimeError) and "net exception" in str(exc).lower())


class _Gripper:
    """The Franka Hand, served by one worker thread so that nothing in the control loop blocks.

    The worker polls the hand state (caching the width) and sends the latest requested command
    when it differs from the last one sent: ``grasp`` (with force) for "closed", ``move`` otherwise.
    A lost connection is logged and re-established; the hand keeps its last grasp meanwhile.
    """

    POLL_S = 0.02
    #: commands below this opening fraction grasp (with force) instead of moving to a width
    GRASP_BELOW = 0.05

    def __init__(self, ip: str, hand: franky.Gripper, speed: float, force: float, deadband: float) -> None:
        self.ip, self.speed, self.force, self.deadband = ip, speed, force, deadband
        self.hand = hand
        self.max_width = float(self.hand.max_width) or 0.08
        self.width = float(self.hand.width)
        self._wanted: float | None = None       # opening fraction in [0, 1]
        self._sent: float | None = None
        self._future = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error = ""                           # last problem, for messages
        self._thread = threading.Thread(target=self._run, name=f"franky-gripper-{ip}", daemon=True)
        self._thread.start()

    def command(self, fraction: float) -> None:
        with self._lock:
            self._wanted = float(np.clip(fraction, 0.0, 1.0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3.0)
        self.hand = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.hand is None:
                    self.hand = franky.Gripper(self.ip)
                    self._future, self._sent = None, None
                self.width = float(self.hand.width)
                self._maybe_send()
                self.error = ""
            except Exception as exc:  # noqa: BLE001 - the worker must survive and report
                msg = f"{type(exc).__name__}: {exc}"
                if msg != self.error:
                    log.warning("gripper at %s: %s", self.ip, msg)
                self.error = msg
                if isinstance(exc, franky.NetworkException) or _is_connection_error(exc):
                    self.hand = None
                    self._stop.wait(0.5)
            self._stop.wait(self.POLL_S)

    def _maybe_send(self) -> None:
        with self._lock:
            wanted = self._wanted
        if wanted is None:
            return
        if self._future is not None:
            if not self._future.wait(0.0):
                return  # the hand is still executing the previous command
            try:
                self._future.get()  # surfaces a CommandException (logged by _run)
            finally:
                self._future = None
        if self._sent is not None and abs(wanted - self._sent) * self.max_width < self.deadband:
            return
        self._sent = wanted
        if wanted < self.GRASP_BELOW:  # closed: grasp whatever is between the fingers, with force
            self._future = self.hand.grasp_async(0.0, self.speed, self.force, 0.0, self.max_width)
        else:
            self._future = self.hand.move_async(wanted * self.max_width, self.speed)


@register_backend("franky")
class FrankyBackend(RobotBackend):
    """Franka FR3 over the FCI through franky: streaming Cartesian impedance, Franka Hand.

    Options (``backend_options`` of the robot profile):

    - ``ip`` (required): the robot's FCI address (the arm's "shop floor" IP, or 127.0.0.1 for
      franky-sim);
    - ``realtime_config``: ``"enforce"`` (default; needs a PREEMPT_RT kernel) or ``"ignore"``;
    - ``stiffness``: Cartesian stiffness [x, y, z (N/m), rx, ry, rz (Nm/rad)], critically damped;
    - ``translational_error_clip`` (m), ``rotational_error_clip`` (rad): the pose error the
      controller acts on is clipped to this, bounding the force: stiffness * clip;
    - ``nullspace_stiffness`` (Nm/rad): pulls the redundant elbow towards ``home_joints``;
    - ``home_joints``: 7 joint angles; with ``home_on_start`` the arm moves there (joint motion at
      ``home_speed``, a fraction of the robot's limits) when the backend starts;
    - ``torque_threshold`` (Nm), ``force_threshold`` (N): collision reflex thresholds;
    - ``gripper`` (bool), ``gripper_speed`` (m/s), ``gripper_force`` (N: a command below 0.05,
      i.e. closed, grasps with this force), ``gripper_deadband`` (m): smaller changes are not sent;
    - ``flange_to_tcp``: [x, y, z, roll, pitch, yaw] of the TCP in the flange frame;
    - ``max_recoveries``, ``recovery_window`` (s): automatic recovery budget (see module doc);
    - ``connect_timeout`` (s): how long to wait for the robot to answer.

    ``cameras``, ``image_width`` and ``image_height`` are accepted because the robot node passes
    them to every backend; the only valid camera list is empty.
    """

    name = "franky"
    embodiment = "franka_fr3"
    simulated = False

    def __init__(
        self,
        *,
        ip: str | None = None,
        realtime_config: str = "enforce",
        stiffness: Sequence[float] = (1500.0, 1500.0, 1500.0, 80.0, 80.0, 80.0),
        translational_error_clip: float = 0.015,
        rotational_error_clip: float = 0.2,
        nullspace_stiffness: float = 5.0,
        max_delta_tau: float = 1.0,
        home_joints: Sequence[float] = DEFAULT_HOME,
        home_on_start: bool = True,
        home_speed: float = 0.15,
        torque_threshold: float = 20.0,
        force_threshold: float = 30.0,
        gripper: bool = True,
        gripper_speed: float = 0.05,
        gripper_force: float = 20.0,
        gripper_deadband: float = 0.005,
        flange_to_tcp: Sequence[float] = (0.0, 0.0, 0.1034, 0.0, 0.0, -math.pi / 4),
        max_recoveries: int = 3,
        recovery_window: float = 60.0,
        connect_timeout: float = 5.0,
        cameras: Sequence[str] = (),
        image_width: int = 0,
        image_height: int = 0,
        **unknown: Any,
    ) -> None:
        """Validate the options; nothing is connected before ``start``."""
        del image_width, image_height  # no cameras on this backend
        if unknown:
            raise TypeError(f"FrankyBackend got unexpected backend_options: {', '.join(sorted(unknown))}")
        if not ip or not isinstance(ip, str):
            raise TypeError("FrankyBackend needs backend_options.ip: the robot's FCI IP address "
                            "(127.0.0.1 for franky-sim)")
        if list(cameras):
            raise ValueError(f"the franky backend has no cameras (got robot.cameras {list(cameras)}); "
                             "set robot.cameras: [] -- a real cell's cameras are separate camera nodes")
        rc = str(realtime_config).strip().lower()
        if rc not in ("enforce", "ignore"):
            raise ValueError(f"backend_options.realtime_config must be 'enforce' or 'ignore', got {realtime_config!r}")
        self.ip = ip.strip()
        self._realtime = franky.RealtimeConfig.Enforce if rc == "enforce" else franky.RealtimeConfig.Ignore
        self._stiffness = _vector("stiffness", stiffness, 6, positive=True)
        self._t_clip = _number("translational_error_clip", translational_error_clip)
        self._r_clip = _number("rotational_error_clip", rotational_error_clip)
        self._ns_stiffness = _number("nullspace_stiffness", nullspace_stiffness, strict=False)
        self._max_delta_tau = _number("max_delta_tau", max_delta_tau)
        self._home = _vector("home_joints", home_joints, 7)
        outside = np.flatnonzero((self._home < FR3_Q_MIN) | (self._home > FR3_Q_MAX))
        if outside.size:
            raise ValueError(f"backend_options.home_joints: joint(s) {', '.join(str(i + 1) for i in outside)} "
                             f"outside the FR3 limits [{FR3_Q_MIN.tolist()}, {FR3_Q_MAX.tolist()}]")
        for key, flag in (("home_on_start", home_on_start), ("gripper", gripper)):
            if not isinstance(flag, bool):
                raise ValueError(f"backend_options.{key} must be true or false, got {flag!r}")
        self._home_on_start = home_on_start
        self._home_speed = _number("home_speed", home_speed)
        if self._home_speed > 1.0:
            raise ValueError(f"backend_options.home_speed must be in (0, 1], got {home_speed!r}")
        self._torque_threshold = _number("torque_threshold", torque_threshold)
        self._force_threshold = _number("force_threshold", force_threshold)
        self._use_gripper = gripper
        self._gripper_speed = _number("gripper_speed", gripper_speed)
        self._gripper_force = _number("gripper_force", gripper_force)
        self._gripper_deadband = _number("gripper_deadband", gripper_deadband, strict=False)
        f = _vector("flange_to_tcp", flange_to_tcp, 6)
        self._F_T_TCP = _affine(f[:3], quat_from_euler(*f[3:]))
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int) or max_recoveries < 0:
            raise ValueError(f"backend_options.max_recoveries must be an integer >= 0, got {max_recoveries!r}")
        self._max_recoveries = max_recoveries
        self._recovery_window = _number("recovery_window", recovery_window)
        self._connect_timeout = _number("connect_timeout", connect_timeout)

        self._robot: franky.Robot | None = None
        self._model = None
        self._motion: franky.CartesianImpedanceTrackingMotion | None = None
        self._gripper: _Gripper | None = None
        self._EE_T_TCP: franky.Affine | None = None
        self._TCP_T_EE: franky.Affine | None = None
        self._tracking = False                   # True while the tracking motion should be running
        self._fault_times: list[float] = []      # monotonic times of automatic recoveries
        self._failed = ""                        # set when the backend gave up: stays stopped
        self._connection_lost = False            # the last fault broke the connection
        self._closed = False
        self.recoveries = 0                      # automatic recoveries so far (for tests and logs)
        self.last_fault = ""                     # message of the last fault

    # ------------------------------------------------------------------ description
    def joint_names(self) -> list[str]:
        """7 arm joints, then the two finger joints (fr3.urdf names)."""
        return list(JOINT_NAMES)

    @property
    def dof(self) -> int:
        """Number of arm joints."""
        return 7

    def camera_names(self) -> list[str]:
        """None: a real cell's cameras are separate devices."""
        return []

    def render(self) -> dict[str, np.ndarray]:
        """No frames (see ``camera_names``)."""
        return {}

    def urdf(self) -> str:
        """fr3.urdf of franky-sim's assets (meshes as ``file://`` URIs) if installed, else the robot's."""
        spec = importlib.util.find_spec("franky_sim")
        if spec is not None and spec.submodule_search_locations:
            assets = Path(list(spec.submodule_search_locations)[0]) / "assets"
            if (assets / "fr3.urdf").is_file():
                text = (assets / "fr3.urdf").read_text()
                return text.replace('filename="meshes/', f'filename="file://{assets / "meshes"}/')
        try:
            return str(self._robot.model_urdf) if self._robot is not None else ""
        except Exception:  # noqa: BLE001 - a description is optional
            return ""

    @property
    def home_joints(self) -> np.ndarray:
        return self._home.copy()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Connect to arm and hand, clear old errors, go home (optional), start the impedance loop."""
        if self._robot is not None:
            return
        if self._closed:
            raise BackendError(f"franky backend for {self.ip} was closed; create a new one")
        self._connect()
        try:
            if self._use_gripper:
                try:
                    hand = _call_with_timeout(lambda: franky.Gripper(self.ip), self._connect_timeout)
                except (TimeoutError, franky.Exception, franky.GripperException, RuntimeError) as exc:
                    why = f"no answer within {self._connect_timeout:g} s" if isinstance(exc, TimeoutError) else exc
                    raise BackendError(f"cannot connect to the Franka Hand at {self.ip}: {why} (no hand? "
                                       "set backend_options.gripper: false)") from None
                self._gripper = _Gripper(self.ip, hand, self._gripper_speed, self._gripper_force,
                                         self._gripper_deadband)
            if self._robot.has_errors:
                log.warning("robot at %s reports errors at start; running automatic error recovery", self.ip)
                if not self._robot.recover_from_errors():
                    raise BackendError(f"robot at {self.ip}: automatic error recovery failed at start "
                                       "(check the robot in Desk: e-stop released, joints unlocked?)")
            if self._home_on_start:
                self.move_home()
            self._start_tracking()
        except BackendError:
            self._release()
            raise
        except (franky.Exception, franky.GripperException, RuntimeError) as exc:
            self._release()
            raise BackendError(f"robot at {self.ip}: start failed: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Stop the impedance loop with a damped ramp (the arm comes to rest and holds). Idempotent."""
        if self._closed:
            return
        self._closed = True
        robot = self._robot
        if robot is not None and self._tracking and not self._failed:
            try:
                if robot.is_in_control:
                    robot.move(franky.TorqueStopMotion(), asynchronous=True)
                robot.join_motion(5.0)
            except Exception as exc:  # noqa: BLE001 - closing must not raise
                log.warning("robot at %s: stopping the impedance loop: %s", self.ip, exc)
        self._tracking = False
        self._release()

    def _release(self) -> None:
        if self._gripper is not None:
            self._gripper.close()
            self._gripper = None
        self._motion = None
        self._model = None
        self._robot = None  # libfranka closes the connection when the object is destroyed

    def _connect(self) -> None:
        """(Re)connect to the arm; a failure is a BackendError naming the IP."""
        self._robot = None
        self._model = None
        hint = ("check backend_options.ip, the cable, and that FCI is activated in Desk "
                "(for a simulated robot: start franky-sim)")
        try:
            # libfranka waits about 60 s for a host that does not answer: give up sooner.
            robot = _call_with_timeout(
                lambda: franky.Robot(self.ip, realtime_config=self._realtime,
                                     default_torque_threshold=self._torque_threshold,
                                     default_force_threshold=self._force_threshold),
                self._connect_timeout)
        except TimeoutError:
            raise BackendError(f"cannot connect to the robot at {self.ip}: no answer within "
                               f"{self._connect_timeout:g} s (backend_options.connect_timeout); {hint}") from None
        except franky.RealtimeException as exc:
            raise BackendError(f"robot at {self.ip}: {exc} -- use a PREEMPT_RT kernel or set "
                               "backend_options.realtime_config: ignore") from None
        except (franky.Exception, RuntimeError) as exc:
            raise BackendError(f"cannot connect to the robot at {self.ip}: {exc}; {hint}") from None
        self._robot = robot
        self._model = robot.model
        s = robot.state
        # TCP relative to the EE frame franky's controller tracks (identity with a Franka Hand in Desk).
        self._EE_T_TCP = s.F_T_EE.inverse * self._F_T_TCP
        self._TCP_T_EE = self._EE_T_TCP.inverse

    def move_home(self) -> None:
        """Blocking joint motion to ``home_joints`` (stops the impedance loop first). Not for the loop."""
        robot = self._require()
        was_tracking = self._tracking
        if was_tracking:
            self._stop_tracking()
        robot.move(franky.JointMotion(franky.JointState(self._home), relative_dynamics_factor=self._home_speed))
        # The motion ends when its trajectory does; let the joints settle before anything else
        # (a real FR3 is there already; franky-sim's joint controller lags by a few 0.1 s).
        deadline = time.monotonic() + 2.0
        while np.max(np.abs(np.asarray(robot.state.q) - self._home)) > 0.005:
            if time.monotonic() > deadline:
                log.warning("robot at %s: joints %s did not settle at home_joints", self.ip,
                            np.round(robot.state.q, 4).tolist())
                break
            time.sleep(0.01)
        if was_tracking:
            self._start_tracking()

    def _start_tracking(self) -> None:
        robot = self._require()
        motion = franky.CartesianImpedanceTrackingMotion(
            translational_error_clip=np.full(3, self._t_clip),
            rotational_error_clip=np.full(3, self._r_clip),
            posture_task=(franky.PostureTask(self._home, self._ns_stiffness) if self._ns_stiffness > 0 else None),
            max_delta_tau=self._max_delta_tau,
            lower_joint_limits=FR3_Q_MIN,
            upper_joint_limits=FR3_Q_MAX,
        )
        motion.set_gains(franky.CartesianImpedanceGains.diagonal(self._stiffness))
        # Hold the measured pose until the first set_target: nothing jumps when the loop starts.
        motion.set_reference(franky.CartesianReference(target=robot.current_pose.end_effector_pose))
        robot.move(motion, asynchronous=True)
        self._motion = motion
        self._tracking = True
        # move() returns before the robot has accepted the motion: wait until it runs, so that a
        # fault right after (re)starting is seen as one and start/recover report a real success.
        deadline = time.monotonic() + self._connect_timeout
        while robot.state.robot_mode != franky.RobotMode.Move:
            if not robot.is_in_control:
                robot.poll_motion()  # raises why the motion did not start
                raise BackendError(f"robot at {self.ip}: the impedance motion did not start")
            if time.monotonic() > deadline:
                raise BackendError(f"robot at {self.ip}: the impedance motion did not start within "
                                   f"{self._connect_timeout:g} s (robot mode {robot.state.robot_mode})")
            time.sleep(0.002)

    def _stop_tracking(self) -> None:
        robot = self._require()
        if robot.is_in_control:
            robot.move(franky.TorqueStopMotion(), asynchronous=True)
        robot.join_motion(5.0)
        self._tracking = False

    # ------------------------------------------------------------------ faults
    def _check(self) -> None:
        """Raise if given up; recover automatically (bounded) if the tracking motion died."""
        if self._failed:
            raise BackendError(self._failed)
        robot = self._require()
        if not self._tracking:
            return
        try:
            if robot.is_in_control:
                return
            robot.poll_motion()  # raises the exception that ended the motion
            reason = "the impedance motion ended"
        except Exception as exc:  # noqa: BLE001 - any fault ends up here
            reason = f"{type(exc).__name__}: {exc}"
            self._connection_lost = _is_connection_error(exc)
        self._tracking = False
        self.last_fault = reason
        now = time.monotonic()
        self._fault_times = [t for t in self._fault_times if now - t < self._recovery_window]
        if len(self._fault_times) >= self._max_recoveries:
            self._failed = (f"robot at {self.ip}: {reason}; gave up after {len(self._fault_times)} automatic "
                            f"recoveries within {self._recovery_window:g} s (backend_options.max_recoveries="
                            f"{self._max_recoveries}); the arm is stopped -- check it, then restart the robot node")
            log.error(self._failed)
            raise BackendError(self._failed)
        self._fault_times.append(now)
        self.recoveries += 1
        log.warning("robot at %s: %s; automatic recovery %d of %d", self.ip, reason,
                    len(self._fault_times), self._max_recoveries)
        self._recover()

    def recover(self) -> None:
        """Reconnect if the connection broke, run franky's error recovery, restart the impedance loop.

        The arm then holds its measured pose until the next ``set_target``. Raises BackendError if
        recovery fails, or if the backend already gave up (``max_recoveries`` exhausted).
        """
        if self._failed:
            raise BackendError(self._failed)
        robot = self._require()
        if self._tracking:
            try:
                if robot.is_in_control:
                    return  # nothing to recover from
                robot.poll_motion()
            except Exception as exc:  # noqa: BLE001 - collected, the recovery follows
                self.last_fault = f"{type(exc).__name__}: {exc}"
                self._connection_lost = _is_connection_error(exc)
            self._tracking = False
        self._recover()

    def _recover(self) -> None:
        try:
            if not self._connection_lost:
                try:
                    self._robot.state  # noqa: B018 - a broken connection raises here
                except Exception as exc:  # noqa: BLE001
                    if not _is_connection_error(exc):
                        raise
                    self._connection_lost = True
            if self._connection_lost:
                # libfranka's Robot is unusable after a network error: connect anew.
                log.warning("robot at %s: connection lost; reconnecting", self.ip)
                self._connect()
                self._connection_lost = False
            if not self._robot.recover_from_errors():
                raise BackendError(f"robot at {self.ip}: automatic error recovery failed (e-stop pressed? "
                                   "user stop? -- release it, or recover manually in Desk)")
            self._start_tracking()
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - report every failure the same way
            raise BackendError(f"robot at {self.ip}: recovery failed: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------ control
    def set_target(self, pos: np.ndarray, quat: np.ndarray, gripper: float) -> None:
        """Replace the impedance target (TCP, base frame, quaternion x, y, z, w) and the gripper command.

        Non-blocking: hands the reference to franky's 1 kHz loop and the gripper command to the
        gripper worker. Only after a fault does it block, for the bounded automatic recovery.
        """
        pos = np.asarray(pos, dtype=float).reshape(-1)
        q = np.asarray(quat, dtype=float).reshape(-1)
        if pos.shape != (3,) or q.shape != (4,) or not (np.all(np.isfinite(pos)) and np.all(np.isfinite(q))) \
                or np.linalg.norm(q) < 1e-9:
            raise ValueError(f"invalid target pose {pos!r}, {q!r}: need 3 finite positions and a "
                             "non-zero finite quaternion")
        g = float(gripper)
        if not math.isfinite(g):
            raise ValueError(f"invalid gripper command {gripper!r}")
        self._check()
        if not self._tracking:
            raise BackendError(f"robot at {self.ip}: the impedance loop is not running")
        target = _affine(pos, quat_normalize(q)) * self._TCP_T_EE
        self._motion.set_reference(franky.CartesianReference(target=target))
        if self._gripper is not None:
            self._gripper.command(g)

    def advance(self, dt: float) -> None:
        """Nothing to do: a real arm moves in real time between control ticks."""

    # ------------------------------------------------------------------ state
    def state(self) -> RobotState:
        """TCP pose/twist, external wrench (base frame, on the TCP), joints and gripper width."""
        self._check()
        try:
            s = self._read()
        except Exception:  # noqa: BLE001 - the connection broke between two checks
            self._check()  # recovers (bounded) or raises BackendError
            try:
                s = self._read()
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"robot at {self.ip}: cannot read the state: {type(exc).__name__}: {exc}") from None
        O_T_EE, jac = s.O_T_EE, self._model.zero_jacobian(franky.Frame.EndEffector, s)
        tcp = O_T_EE * self._EE_T_TCP
        pos = np.asarray(tcp.translation, dtype=float).reshape(3)
        quat = np.asarray(tcp.quaternion, dtype=float).reshape(4)
        if quat[3] < 0.0:
            quat = -quat
        dq = np.asarray(s.dq, dtype=float).reshape(7)
        twist = jac @ dq                           # EE twist [v, w] in the base frame
        r = pos - np.asarray(O_T_EE.translation, dtype=float).reshape(3)
        linvel = twist[:3] + np.cross(twist[3:], r)
        # libfranka: force applied *by the robot* on the environment at the K frame (= EE unless
        # set_k was used), base frame. The backend convention is the force *on* the end effector,
        # torque about the TCP.
        f_robot = np.asarray(s.O_F_ext_hat_K, dtype=float).reshape(6)
        K = O_T_EE * s.EE_T_K
        force = -f_robot[:3]
        torque = -f_robot[3:] + np.cross(np.asarray(K.translation, dtype=float).reshape(3) - pos, force)
        width = self._gripper.width if self._gripper is not None else 0.0
        half = width / 2.0
        return RobotState(
            tcp_pos=pos,
            tcp_quat=quat,
            tcp_linvel=linvel,
            tcp_angvel=twist[3:].copy(),
            gripper_width=float(width),
            wrench=np.concatenate([force, torque]),
            joint_pos=np.concatenate([np.asarray(s.q, dtype=float).reshape(7), [half, half]]),
            joint_vel=np.concatenate([dq, [0.0, 0.0]]),
            time=float(s.time.to_sec()),
        )

    def _read(self):
        s = self._require().state
        s.O_T_EE  # noqa: B018 - touch it: a dead connection raises here, not later
        return s

    @property
    def running(self) -> bool:
        """True while franky's impedance loop is in control of the arm (False after a fault)."""
        try:
            return bool(self._tracking and self._robot is not None and self._robot.is_in_control)
        except Exception:  # noqa: BLE001 - a dead connection is "not running"
            return False

    @property
    def gripper_error(self) -> str:
        """Last gripper problem ('' when fine)."""
        return self._gripper.error if self._gripper is not None else ""

    def _require(self) -> franky.Robot:
        if self._robot is None:
            raise BackendError(f"franky backend for {self.ip} not started (call start() first) or closed")
        return self._robot
