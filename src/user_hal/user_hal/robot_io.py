"""The robot node's plumbing, without logic: parameters to profile overrides, the cell and its cameras, and
the messages the node publishes (built from the cell and the episode controller's records)."""
from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from sensor_msgs.msg import JointState
from user_msgs.msg import CameraSpec, EpisodeStats, Observation, RobotDescription, RobotStatus, Transition
from visualization_msgs.msg import MarkerArray

from .backends.base import make_backend
from .devices.cameras import CameraRig, make_camera_sources
from .core.cell import ACTION_NAMES, RobotCell
from .core.outbox import Spool
from user_common.config_schema import ConfigError
from .markers import cell_markers
from user_common.ros_convert import image_to_msg
from user_common.topics import camera_topic


def profile_overrides(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The profile path and the dotted overrides the node's parameters ask for; ConfigError names a bad one."""
    overrides: dict[str, Any] = {}
    if params["backend"]:
        overrides["robot.backend"] = params["backend"]
    for key in ("reward", "reward_source", "reward_when", "terminate_on_success"):
        value = params[key]
        if value in ("", "profile"):
            continue
        if key == "reward" and value == "learned":
            key, value = "reward_source", "classifier"
        elif key == "terminate_on_success":
            if value not in ("true", "false"):
                raise ConfigError("<parameters>", key, f"expected profile, true or false, got {value!r}")
            value = value == "true"
        overrides[f"task.{key}"] = value
    if params["realtime_factor"] >= 0:
        overrides["robot.realtime_factor"] = float(params["realtime_factor"])
    if not params["profile"]:
        raise ConfigError("<parameters>", "profile", "no robot profile given (parameter 'profile')")
    return params["profile"], overrides


def make_cell(profile, robot_id: str, seed: int) -> tuple[RobotCell, CameraRig]:
    """The robot cell and its cameras as the profile describes them (nothing started yet)."""
    rc = profile.robot
    sources = make_camera_sources(profile.camera_sources, out_size=tuple(rc.image_size), source=profile.source)
    options = dict(profile.backend_options)
    options.setdefault("cameras", tuple(c for c in rc.cameras if c not in sources))
    options.setdefault("image_width", rc.image_size[0])
    options.setdefault("image_height", rc.image_size[1])
    try:
        backend = make_backend(rc.backend, **options)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(profile.source, "backend_options" if isinstance(exc, TypeError) else "robot.backend",
                          str(exc).strip("'\"")) from None
    if rc.realtime_factor == 0 and not backend.simulated:
        raise ConfigError(profile.source, "robot.realtime_factor",
                          f"0 (as fast as possible) needs a simulated backend, not {rc.backend!r}")
    # Each robot mixes its id into the seed so that robots of one run start differently.
    seq = np.random.SeedSequence([seed, zlib.crc32(robot_id.encode())])
    cell = RobotCell(profile, backend, seed=int(seq.generate_state(1)[0]))
    # Frames come from the backend (simulation) and from camera devices, under the profile's names.
    cameras = CameraRig(backend, sources, camera_names=list(rc.cameras), image_size=tuple(rc.image_size))
    return cell, cameras


def observation_msgs(cell: RobotCell, cameras: CameraRig, state, robot_id: str, episode_id: int, step: int,
                     evaluation: bool, stamp, frame_prefix: str) -> tuple[Observation, JointState, MarkerArray]:
    """The observation of ``state`` (with the cameras' images, in ``camera_names`` order), its joint states and
    the rviz markers."""
    o = Observation()
    o.header.stamp, o.header.frame_id = stamp, f"{frame_prefix}base"
    o.robot_id, o.episode_id, o.step = robot_id, episode_id, step
    o.proprio = cell.proprio(state).tolist()
    o.evaluation = evaluation
    for name, img in cameras.render().items():
        o.camera_names.append(name)
        o.images.append(image_to_msg(img, stamp, f"{frame_prefix}{name}_camera_color_optical_frame"))
    js = JointState()
    js.header.stamp = stamp
    js.name = cell.backend.joint_names()
    js.position = [float(x) for x in state.joint_pos]
    js.velocity = [float(x) for x in state.joint_vel]
    return o, js, cell_markers(cell, state, stamp, f"{frame_prefix}base")


def status_msg(robot_id: str, st, stamp, hz: float, failed: str = "", outbox=None) -> RobotStatus:
    """The heartbeat from the controller's ``Status`` (``failed``: the node stopped on an error)."""
    s = RobotStatus()
    s.header.stamp = stamp
    s.robot_id = robot_id
    s.state, s.message = (RobotStatus.STATE_ERROR, failed) if failed else (st.state, st.message)
    s.achieved_control_hz = hz
    s.episode_id, s.step = st.episode_id, st.step
    s.episodes_done, s.steps_done, s.held_steps = st.episodes_done, st.steps_done, st.held_steps
    s.rejected_actions, s.policy_version = st.rejected, st.policy_version
    if outbox is not None:
        s.unacked_transitions, s.dropped_transitions = len(outbox), outbox.dropped
    return s


def describe_robot(robot_id: str, profile, cell) -> RobotDescription:
    """The latched ``RobotDescription`` of a robot cell."""
    rc, b = profile.robot, cell.backend
    d = RobotDescription()
    d.robot_id, d.embodiment, d.backend, d.dof = robot_id, rc.embodiment, rc.backend, b.dof
    d.joint_names = b.joint_names()
    d.action_space = "ee_delta"
    d.action_names = list(ACTION_NAMES)
    d.action_scale = [float(x) for x in rc.action_scale]
    d.proprio_names = list(cell.proprio_names)
    for name in rc.cameras:
        d.cameras.append(CameraSpec(name=name, width=rc.image_size[0], height=rc.image_size[1],
                                    encoding="rgb8", topic=camera_topic(robot_id, name)))
    d.control_hz = rc.control_hz
    d.safety_box_lower = [float(x) for x in rc.safety_box.lower]
    d.safety_box_upper = [float(x) for x in rc.safety_box.upper]
    d.task, d.instruction = profile.task.name, profile.task.instruction
    d.max_episode_steps = rc.max_episode_steps
    return d


def transition_msg(r, robot_id: str, embodiment: str) -> Transition:
    """A ``Transition`` from the episode controller's ``TransitionRecord`` (obs and next_obs are messages)."""
    t = Transition()
    t.robot_id, t.embodiment = robot_id, embodiment
    t.episode_id, t.step = r.episode_id, r.step
    t.obs, t.next_obs = r.obs, r.next_obs
    t.action = np.asarray(r.action, dtype=np.float32).tolist()
    t.action_source, t.intervened, t.policy_version = r.action_source, r.intervened, r.policy_version
    t.reward, t.success = float(r.reward), r.success
    t.terminated, t.truncated = r.terminated, r.truncated
    t.reward_source = r.reward_source
    return t


def transition_bytes(t: Transition) -> int:
    """Approximate memory held by a transition (its images dominate)."""
    images = sum(len(img.data) for img in t.obs.images) + sum(len(img.data) for img in t.next_obs.images)
    return images + 4 * (len(t.obs.proprio) + len(t.next_obs.proprio)) + 512


def episode_stats_msg(s, robot_id: str, stamp) -> EpisodeStats:
    """``EpisodeStats`` from the episode controller's ``EpisodeSummary``."""
    e = EpisodeStats()
    e.header.stamp = stamp
    e.robot_id, e.episode_id, e.episode_index = robot_id, s.episode_id, s.index
    e.steps, e.episode_return, e.success, e.evaluation = s.steps, float(s.ret), s.success, s.evaluation
    e.duration_s = float(s.duration_s)
    e.intervention_steps, e.held_steps, e.policy_version = s.interventions, s.held, s.policy_version
    e.cut = bool(s.cut)
    return e


def _encode_entry(entry: tuple[str, Any]) -> bytes:
    """An outbox entry (namespace, Transition) as bytes for the spool: the namespace, NUL, the CDR."""
    from rclpy.serialization import serialize_message

    return entry[0].encode() + b"\0" + serialize_message(entry[1])


def _decode_entry(data: bytes) -> tuple[str, Any]:
    from rclpy.serialization import deserialize_message

    ns, _, cdr = data.partition(b"\0")
    return ns.decode(), deserialize_message(cdr, Transition)


def remove_stale_spools(folder: Path, robot_id: str) -> list[Path]:
    """Delete ``<robot_id>-<pid>.bin`` spools whose process is gone (a robot node killed with SIGKILL cannot
    remove its own; what it held was lost with its RAM half anyway). Returns what was removed."""
    gone = []
    for f in folder.glob(f"{robot_id}-*.bin"):
        pid = f.stem[len(robot_id) + 1:]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone


def make_spool(robot_id: str, params: dict) -> Spool | None:
    """Where a robot's outbox moves transitions past ``outbox_max_mb`` of RAM: a file in ``outbox_spool_dir``
    (default ``<tmp>/user_outbox``) holding up to ``outbox_spool_mb``; None when that is 0 (drop them)."""
    if params["outbox_spool_mb"] <= 0:
        return None
    folder = Path(params["outbox_spool_dir"] or Path(tempfile.gettempdir()) / "user_outbox")
    remove_stale_spools(folder, robot_id)
    return Spool(folder / f"{robot_id}-{os.getpid()}.bin", _encode_entry, _decode_entry,
                 params["outbox_spool_mb"] << 20)
