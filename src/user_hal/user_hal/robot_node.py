"""The robot node: one robot cell behind ROS topics, whatever the backend.

Topics (``<id>`` is the robot id):
- publishes ``/<id>/observation`` (user_msgs/Observation) every control period,
  ``/<id>/camera/<name>/color/image_raw`` (sensor_msgs/Image), ``/<id>/joint_states``,
  ``/<id>/robot_description`` (URDF, latched), ``/<id>/markers`` (target, TCP, peg tip or cube, safety box),
  ``/user/transitions`` (one per executed action), ``/user/episodes`` (one per episode),
  ``/user/robots/description`` (latched) and ``/user/robots/heartbeat``;
- subscribes ``/<id>/action`` (user_msgs/Action), ``/user/estop/engaged`` (std_msgs/Bool,
  reliable + transient-local: ``true`` engages the e-stop, ``false`` releases it) and, with a learned
  reward (``task.reward_source: classifier``), ``/<id>/reward_label`` (user_msgs/RewardLabel);
- serves ``/<id>/reset`` (user_msgs/srv/ResetRobot), ``/<id>/label_episode`` (std_srvs/srv/SetBool:
  a human labels the running episode a success (``data: true``) or a failure and so ends it), and
  ``/user/estop`` / ``/user/estop_release`` (std_srvs/srv/Trigger, served by *every* robot node).

The control loop runs in its own thread. With ``realtime_factor`` > 0 it ticks on the wall clock
and never waits for anybody: at each tick it executes the action that answers the current
observation if one arrived in time, and otherwise holds pose (watchdog). With ``realtime_factor``
0 (simulation only) it steps as soon as that action arrives, and holds after the watchdog timeout.
On a real-time backend (franky, franka_ros2) a step commands the new target at the tick, lets the
arm follow it, and reads the state ``robot.inference_budget_s`` before the next tick: the
observation shows the arm after the action, and the policy has that long to answer it (an answer
that comes later is executed one period later; the robot holds meanwhile). A simulated backend
integrates the whole period at once, so its observation is published right at the tick.

Action chunks: an Action with ``chunk_length`` H > 1 answering the observation of step k carries the
actions for steps k .. k+H-1. At each tick the robot runs the entry for the current step: from the newest
chunk covering it, or (``robot.chunk_ensemble: exp``) the ACT-style weighted mean of all covering chunks
(``robot.chunk_ensemble_rate``). The watchdog applies per step: the entry for step s may run at most
``watchdog`` after its own step was due (the robot's last observation of step k + (s - k) periods), so
a robot that falls behind a chunk's schedule holds instead of replaying it late; a chunk with one invalid
entry (wrong length, NaN/inf) is rejected whole; every entry is clipped to [-1, 1] and goes through the
speed limits like any action. Entries are dropped once their step passed, and all of them on a human
action, a new episode, an e-stop or a backend recovery. At ``realtime_factor`` 0 the robot waits for an
answer only when no queued entry covers the step. Rules and combiner: ``user_hal.chunks``.

Human intervention (HG-DAgger / HIL-SERL): actions with ``source = SOURCE_HUMAN`` (from the teleop
node, ``user_hal.teleop_node``) win over policy and scripted actions. Every valid human action gives
the human control for ``robot.intervention_hold_s`` seconds: policy actions arriving meanwhile are
dropped (the robot holds if the human sends nothing for a step). Transitions executed from human
actions carry ``action_source = SOURCE_HUMAN`` and ``intervened = true``; ``EpisodeStats
.intervention_steps`` counts them and the node logs each hand-over and the per-episode rate.
A label (``/<id>/label_episode``) makes the next control step the last of the episode, with
``success`` as labelled (the reward's success bonus of 1 follows the label): a success label
``terminated``, a failure label ``truncated`` (where a human gave up is no end state: the critic
still bootstraps there); if no action is at hand at that tick the robot records a hold step
(``action_source = SOURCE_HOLD``) for it. A transition records the action as commanded (validated,
in [-1, 1]), not after the speed limits: the limits are part of what the robot does with it, so the
learner's critic sees the same actions as its actor produces.

Reward sources (``Transition.reward_source``): the task's rule (``REWARD_RULE``, default), a human label
(``REWARD_HUMAN``) or a learned success classifier (``REWARD_CLASSIFIER``, ``task.reward_source:
classifier``: the reward node of user_learner judges each observation and sends a ``RewardLabel``). With
the classifier the rule decides nothing: every step's reward is 0 and its success false unless a verdict
says otherwise (the rule's own verdict is only logged, per episode, for evaluation). ``task.reward_when
step``: a success verdict on the running episode acts like a human success label (the next control step
ends the episode, reward 1, ``terminated``); it arrives while the loop goes on, so it may land a step or
two after the observation it judged. ``end``: only the last observation (at the step limit) is judged;
the last transition is held back until its verdict arrives (at most ``task.reward_timeout_s``: the arm
holds its target meanwhile; none in time counts as a failure and is logged) and gets reward 1 and
``terminated`` on success, else ``truncated``. A human label still wins over the classifier.

Safety:
- velocity limits: the target moves at most ``robot.max_tcp_speed`` m/s and turns at most
  ``robot.max_tcp_angular_speed`` rad/s, for every action and reset (``user_hal.cell``);
- e-stop: ``/user/estop`` (or ``true`` on ``/user/estop/engaged``) makes every robot node hold
  pose at once (a reset in progress stops where it is), refuse actions, resets and labels, and
  report ``STATE_ERROR`` with message ``e-stop`` in its heartbeat until ``/user/estop_release``
  (or ``false`` on the topic). The episode then continues from where the robot held (an aborted
  reset is redone). DDS delivers a service call to every server of that name, so one call reaches
  every robot node; the caller sees the first answer: check the heartbeats (``userctl robots``);
- bounded error recovery: a ``BackendError`` during a control step, a hold or a reset is cleared
  with ``backend.recover()`` (the target is re-anchored at the measured pose and the episode
  continues at the same step) at most ``robot.max_recoveries`` times per episode; one more fault
  stops the robot: it holds, refuses actions and resets, and reports ``STATE_ERROR`` with the
  fault in its heartbeat until the node is restarted.

Parameters: ``robot_id``, ``profile`` (robot profile YAML, required), ``backend``, ``realtime_factor``,
``reward`` (``sparse``/``dense``: ``task.reward``; ``learned``: ``task.reward_source: classifier``),
``reward_source``, ``reward_when`` and ``terminate_on_success`` (override the profile; ``profile`` keeps
it), ``max_episodes`` (0: run until stopped), ``seed``,
``frame_prefix``, ``ack_consumers``, ``outbox_max_mb``, ``wait_for_reset`` and
``fault_injection`` -- a *test hook*: ``"step:N[,N...]"`` makes the N-th control step (counted
since start, 1-based) raise ``BackendError`` as a real fault would; empty (default) in production.
Profile keys used here beyond the loop's: ``robot.intervention_hold_s``, ``robot.max_recoveries``,
``robot.max_tcp_speed``, ``robot.max_tcp_angular_speed``, ``robot.chunk_ensemble``, ``robot.chunk_ensemble_rate``
(see ``user_hal.profile``).
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray
from user_msgs.msg import (Action, CameraSpec, EpisodeStats, Observation, RewardLabel, RobotDescription, RobotStatus,
                           Transition, TransitionAck)
from user_msgs.srv import ResetRobot

from . import qos
from .backend import BackendError, make_backend
from .cameras import CameraRig, make_camera_sources
from .cell import ACTION_NAMES, ActionError, RobotCell, check_action, parse_fault_injection
from .chunks import ChunkQueue, PendingChunk, check_chunk
from .config_schema import ConfigError
from .markers import cell_markers
from .node_main import run_node
from .outbox import Outbox
from .profile import load_profile
from .ros_convert import image_to_msg
from .topics import ESTOP_MESSAGE, ESTOP_RELEASE_SERVICE, ESTOP_SERVICE, ESTOP_TOPIC


@dataclass
class PendingAction:
    values: np.ndarray
    episode_id: int
    step: int
    policy_version: int
    source: int
    received: float          # time.monotonic()


@dataclass
class EpisodeTally:
    episode_id: int
    index: int
    started: float
    evaluation: bool = False
    ret: float = 0.0
    steps: int = 0
    held: int = 0
    interventions: int = 0
    policy_version: int = 0
    success: bool = False
    labelled: bool = False
    rule_success: bool = False   # the rule's verdict, logged for evaluation when a classifier decides the reward
    recoveries: int = 0
    finished: bool = False


@dataclass
class ResetRequest:
    seed: int
    evaluation: bool
    done: threading.Event = field(default_factory=threading.Event)
    episode_id: int = 0
    error: str = ""


@dataclass
class LabelRequest:
    success: bool
    episode_id: int
    done: threading.Event = field(default_factory=threading.Event)
    step: int = 0
    error: str = ""
    source: int = Transition.REWARD_HUMAN


@dataclass
class FinalStep:
    """task.reward_when end: the episode's last transition, held back until the classifier judges its next_obs."""
    transition: Transition
    deadline: float              # time.monotonic() after which the episode counts as a failure
    verdict: RewardLabel | None = None


class _ResetAborted(Exception):
    """A reset stopped half-way (e-stop or shutdown); it is redone later."""


class RobotNode(Node):
    """ROS shell around ``RobotCell``."""

    def __init__(self) -> None:
        super().__init__("robot")
        self.declare_parameter("robot_id", "franka_0")
        self.declare_parameter("profile", "")
        self.declare_parameter("backend", "")
        self.declare_parameter("realtime_factor", -1.0)
        self.declare_parameter("max_episodes", 0)
        self.declare_parameter("seed", 0)
        self.declare_parameter("frame_prefix", "")
        # Consumers (e.g. "learner") that must acknowledge each transition; empty: fire and forget.
        self.declare_parameter("ack_consumers", [""])
        self.declare_parameter("outbox_max_mb", 1024)
        # True: after an episode the robot holds until its reset service is called (sync training).
        self.declare_parameter("wait_for_reset", False)
        # "sparse" / "dense" override the profile's task.reward; "learned" is task.reward_source classifier
        self.declare_parameter("reward", "profile")
        self.declare_parameter("reward_source", "profile")   # or "rule" / "classifier": task.reward_source
        self.declare_parameter("reward_when", "profile")     # or "step" / "end": task.reward_when
        self.declare_parameter("terminate_on_success", "profile")   # or "true" / "false" (recording for a classifier)
        # Test hook: "step:N[,N...]" raises BackendError at those control steps (see the module doc).
        self.declare_parameter("fault_injection", "")
        p = self.get_parameter
        self.robot_id: str = p("robot_id").value
        overrides = {}
        if p("backend").value:
            overrides["robot.backend"] = p("backend").value
        for key in ("reward", "reward_source", "reward_when", "terminate_on_success"):
            value = p(key).value
            if value in ("", "profile"):
                continue
            if key == "reward" and value == "learned":
                key, value = "reward_source", "classifier"
            elif key == "terminate_on_success":
                if value not in ("true", "false"):
                    raise ConfigError("<parameters>", key, f"expected profile, true or false, got {value!r}")
                value = value == "true"
            overrides[f"task.{key}"] = value
        if p("realtime_factor").value >= 0:
            overrides["robot.realtime_factor"] = float(p("realtime_factor").value)
        profile_path = p("profile").value
        if not profile_path:
            raise ConfigError("<parameters>", "profile", "no robot profile given (parameter 'profile')")
        self.profile = load_profile(profile_path, overrides)
        try:
            fault_steps = parse_fault_injection(str(p("fault_injection").value))
        except ValueError as exc:
            raise ConfigError("<parameters>", "fault_injection", str(exc)) from None
        self.max_episodes: int = p("max_episodes").value
        self.seed: int = p("seed").value
        self.frame_prefix: str = p("frame_prefix").value
        self.wait_for_reset: bool = p("wait_for_reset").value
        consumers = [c for c in p("ack_consumers").value if c]
        self.outbox = Outbox(consumers, p("outbox_max_mb").value << 20) if consumers else None
        self._outbox_lock = threading.Lock()
        rc = self.profile.robot
        self.rf = rc.realtime_factor
        self.hold_s = rc.intervention_hold_s
        self.max_recoveries = rc.max_recoveries
        tc = self.profile.task
        self.classifier = tc.reward_source == "classifier"   # a learned reward decides reward and success
        self.judge_end = self.classifier and tc.reward_when == "end"
        self.reward_timeout = tc.reward_timeout_s

        sources = make_camera_sources(self.profile.camera_sources, out_size=tuple(rc.image_size),
                                      source=self.profile.source)
        options = dict(self.profile.backend_options)
        options.setdefault("cameras", tuple(c for c in rc.cameras if c not in sources))
        options.setdefault("image_width", rc.image_size[0])
        options.setdefault("image_height", rc.image_size[1])
        try:
            backend = make_backend(rc.backend, **options)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(self.profile.source, "backend_options" if isinstance(exc, TypeError) else
                              "robot.backend", str(exc).strip("'\"")) from None
        if self.rf == 0 and not backend.simulated:
            raise ConfigError(self.profile.source, "robot.realtime_factor",
                              f"0 (as fast as possible) needs a simulated backend, not {rc.backend!r}")
        # Each robot mixes its id into the seed so that robots of one run start differently.
        seq = np.random.SeedSequence([self.seed, zlib.crc32(self.robot_id.encode())])
        self.cell = RobotCell(self.profile, backend, seed=int(seq.generate_state(1)[0]))
        # Frames come from the backend (simulation) and from camera devices, under the profile's names.
        self.cameras = CameraRig(backend, sources, camera_names=list(rc.cameras), image_size=tuple(rc.image_size))
        self.cell.fault_steps = fault_steps
        if fault_steps:
            self.get_logger().warning(f"fault injection (test hook) at step calls {sorted(fault_steps)}")
        self.period = self.cell.period
        self.watchdog = rc.watchdog_periods * self.period / (self.rf if self.rf > 0 else 1.0)
        # A real arm moves on the wall clock: read its state just before the next tick (see _settle).
        self.realtime_robot = not backend.simulated
        self.inference_budget = rc.inference_budget_s
        self._observe_at = 0.0
        # Queued actions and action chunks of the running episode (see user_hal.chunks), and when each recent
        # (episode, step) was last observed, so that a chunk's freshness counts from its observation.
        self._queue = ChunkQueue(self.period / (self.rf if self.rf > 0 else 1.0), self.watchdog,
                                 rc.chunk_ensemble, rc.chunk_ensemble_rate)
        self._observed: collections.OrderedDict[tuple[int, int], float] = collections.OrderedDict()

        cb = ReentrantCallbackGroup()
        rid = self.robot_id
        self.pub_desc = self.create_publisher(RobotDescription, qos.DESCRIPTION_TOPIC, qos.LATCHED)
        self.pub_beat = self.create_publisher(RobotStatus, qos.HEARTBEAT_TOPIC, qos.LATCHED)
        self.pub_obs = self.create_publisher(Observation, qos.robot_topic(rid, "observation"), qos.CONTROL)
        self.pub_trans = self.create_publisher(Transition, qos.TRANSITIONS_TOPIC, qos.DATA)
        self.pub_ep = self.create_publisher(EpisodeStats, qos.EPISODES_TOPIC, qos.DATA)
        self.pub_joints = self.create_publisher(JointState, qos.robot_topic(rid, "joint_states"), qos.SENSOR)
        self.pub_urdf = self.create_publisher(String, qos.robot_topic(rid, "robot_description"), qos.LATCHED)
        self.pub_markers = self.create_publisher(MarkerArray, qos.robot_topic(rid, "markers"), qos.SENSOR)
        self.pub_cams = {
            name: self.create_publisher(Image, qos.camera_topic(rid, name), qos.SENSOR) for name in rc.cameras
        }
        self.create_subscription(Action, qos.robot_topic(rid, "action"), self._on_action, qos.CONTROL,
                                 callback_group=cb)
        self.create_service(ResetRobot, qos.robot_topic(rid, "reset"), self._on_reset, callback_group=cb)
        self.create_service(SetBool, qos.robot_topic(rid, "label_episode"), self._on_label, callback_group=cb)
        if self.classifier:
            self.create_subscription(RewardLabel, qos.robot_topic(rid, "reward_label"), self._on_reward_label,
                                     qos.CONTROL, callback_group=cb)
        self.create_service(Trigger, ESTOP_SERVICE, self._on_estop, callback_group=cb)
        self.create_service(Trigger, ESTOP_RELEASE_SERVICE, self._on_estop_release, callback_group=cb)
        self.create_subscription(Bool, ESTOP_TOPIC, self._on_estop_topic, qos.LATCHED, callback_group=cb)
        self.create_timer(1.0 / rc.heartbeat_hz, self._heartbeat, callback_group=cb)
        if self.outbox is not None:
            self.create_subscription(TransitionAck, qos.TRANSITION_ACK_TOPIC, self._on_ack, qos.DATA,
                                     callback_group=cb)
            self.create_timer(0.5, self._resend, callback_group=cb)

        self._lock = threading.Condition()
        self._reset_req: ResetRequest | None = None
        self._label_req: LabelRequest | None = None
        self._final: FinalStep | None = None     # task.reward_when end: the last step awaiting its verdict
        self._last_verdict: RewardLabel | None = None
        self.late_verdicts = 0                   # classifier verdicts that missed task.reward_timeout_s
        self._stop = threading.Event()
        self._estop = threading.Event()
        self.finished = threading.Event()
        self.exit_code = 0
        self.state = RobotStatus.STATE_IDLE
        self.status_message = ""
        self.stopped_by_fault = ""      # non-empty: recoveries exhausted, the robot is stopped
        self.episode_id = 0
        self.step_index = 0
        self.episodes_done = 0
        self.successes = 0
        self.steps_done = 0
        self.held_steps = 0
        self.rejected = 0
        self.refused = 0                 # actions refused during an e-stop or after a fatal fault
        self.human_steps = 0
        self.recoveries = 0              # in the current episode
        self.recoveries_total = 0
        self.last_policy_version = 0
        self._human_until = 0.0          # time.monotonic() until which policy actions are dropped
        self._last_source: int | None = None
        self._tick_times: collections.deque[float] = collections.deque(maxlen=50)
        self._last_obs: Observation | None = None
        self._tally: EpisodeTally | None = None
        self._evaluation = False
        self._awaiting_reset = False
        # (seed, evaluation, request or None): a reset the control loop must do before anything else
        self._reset_due: tuple[int, bool, ResetRequest | None] | None = (-1, False, None)
        self._thread = threading.Thread(target=self._control_main, name=f"{rid}-control", daemon=True)

    # -- startup / shutdown -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the control loop; the control thread closes the backend it owns."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=5.0)

    def _describe(self) -> RobotDescription:
        rc, b = self.profile.robot, self.cell.backend
        d = RobotDescription()
        d.robot_id = self.robot_id
        d.embodiment = rc.embodiment
        d.backend = rc.backend
        d.dof = b.dof
        d.joint_names = b.joint_names()
        d.action_space = "ee_delta"
        d.action_names = list(ACTION_NAMES)
        d.action_scale = [float(x) for x in rc.action_scale]
        d.proprio_names = list(self.cell.proprio_names)
        for name in rc.cameras:
            d.cameras.append(CameraSpec(name=name, width=rc.image_size[0], height=rc.image_size[1],
                                        encoding="rgb8", topic=qos.camera_topic(self.robot_id, name)))
        d.control_hz = rc.control_hz
        d.safety_box_lower = [float(x) for x in rc.safety_box.lower]
        d.safety_box_upper = [float(x) for x in rc.safety_box.upper]
        d.task = self.profile.task.name
        d.instruction = self.profile.task.instruction
        d.max_episode_steps = rc.max_episode_steps
        return d

    # -- callbacks (executor threads) -----------------------------------------------------------------
    def _blocked_reason(self) -> str:
        """Why the robot refuses commands right now (empty: it does not)."""
        if self.stopped_by_fault:
            return f"robot stopped after a backend fault ({self.stopped_by_fault}); restart the robot node"
        if self._estop.is_set():
            return f"e-stop engaged (release with {ESTOP_RELEASE_SERVICE})"
        return ""

    def _on_action(self, msg: Action) -> None:
        if msg.robot_id != self.robot_id:
            return self._reject(f"action for unknown robot {msg.robot_id!r} on {self.robot_id}'s topic")
        n = max(int(msg.chunk_length), 1)
        try:
            if n == 1:
                values = check_action(np.asarray(msg.action, dtype=np.float64), len(ACTION_NAMES))[None]
            else:
                values = check_chunk(msg.action, n, len(ACTION_NAMES), ACTION_NAMES)
        except ActionError as exc:
            return self._reject(f"{exc} (episode {msg.episode_id} step {msg.step})")
        blocked = self._blocked_reason()
        if blocked:
            self.refused += 1
            self.get_logger().warning(f"refused action: {blocked}", throttle_duration_sec=2.0)
            return
        now = time.monotonic()
        human = msg.source == Action.SOURCE_HUMAN
        with self._lock:
            if human:
                # Any valid human action (even one answering an older step) means a human is in control
                # and wins over every queued policy entry.
                self._human_until = now + self.hold_s
                self._queue.clear()
            elif now < self._human_until:
                return  # a human has control: policy and scripted actions are dropped
            if msg.episode_id != self.episode_id or not msg.step <= self.step_index < msg.step + n:
                return  # answers an older observation (or its chunk ended already): late, not wrong
            observed = self._observed.get((msg.episode_id, msg.step), now)
            self._queue.add(PendingChunk(values, msg.episode_id, msg.step, msg.policy_version, msg.source, now,
                                         min(observed, now)))
            self._lock.notify_all()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        self.get_logger().error(f"rejected action: {why}; holding pose", throttle_duration_sec=1.0)

    def _on_reset(self, req: ResetRobot.Request, resp: ResetRobot.Response) -> ResetRobot.Response:
        if req.robot_id and req.robot_id != self.robot_id:
            resp.success, resp.message = False, f"this is robot {self.robot_id!r}, not {req.robot_id!r}"
            return resp
        r = ResetRequest(seed=req.seed, evaluation=req.evaluation)
        with self._lock:
            blocked = self._blocked_reason()
            if blocked:
                resp.success, resp.message = False, f"reset refused: {blocked}"
                return resp
            self._reset_req = r
            self._lock.notify_all()
        if not r.done.wait(timeout=60.0):
            resp.success, resp.message = False, "reset did not finish within 60 s"
        else:
            resp.success, resp.message, resp.episode_id = not r.error, r.error or "ok", r.episode_id
        return resp

    def _on_label(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        """A human's success (data=true) / failure label: the next step ends the running episode."""
        what = "success" if req.data else "failure"
        with self._lock:
            blocked = self._blocked_reason()
            if blocked or self._awaiting_reset or self._reset_due is not None:
                resp.success = False
                resp.message = f"label {what} refused: {blocked or 'no episode is running'}"
                return resp
            r = LabelRequest(success=bool(req.data), episode_id=self.episode_id)
            self._label_req = r
            self._lock.notify_all()
        if not r.done.wait(timeout=10.0):
            resp.success, resp.message = False, f"label {what} was not applied within 10 s"
        elif r.error:
            resp.success, resp.message = False, f"label {what} not applied: {r.error}"
        else:
            resp.success = True
            resp.message = f"{self.robot_id}: episode {r.episode_id} ended at step {r.step} as a {what}"
        return resp

    def _on_reward_label(self, msg: RewardLabel) -> None:
        """A learned reward's verdict (task.reward_source classifier); never waited for by the control loop.

        ``step``: a success verdict on the running episode ends it at the next control step, like a human's
        success label (a pending human label wins). ``end``: only the verdict on the held-back last step counts.
        """
        if msg.robot_id != self.robot_id:
            return
        with self._lock:
            f = self._final
            if self.judge_end:
                # The verdict may beat the control thread to its FinalStep: the newest one is kept for it.
                self._last_verdict = msg
                if f is not None and msg.episode_id == f.transition.episode_id and \
                        msg.step == f.transition.next_obs.step:
                    f.verdict = msg
                    self._lock.notify_all()
                return
            if (not msg.success or msg.episode_id != self.episode_id or self._label_req is not None
                    or self._awaiting_reset or self._reset_due is not None or self._blocked_reason()):
                return
            self._label_req = LabelRequest(success=True, episode_id=msg.episode_id, source=msg.source)
            self._lock.notify_all()

    def _on_estop(self, req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self._engage_estop(f"service {ESTOP_SERVICE}")
        resp.success = True
        resp.message = (f"{self.robot_id}: e-stop engaged: holding pose, actions and resets refused until "
                        f"{ESTOP_RELEASE_SERVICE}")
        return resp

    def _on_estop_release(self, req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        was = self._release_estop(f"service {ESTOP_RELEASE_SERVICE}")
        resp.success = True
        resp.message = f"{self.robot_id}: e-stop {'released' if was else 'was not engaged'}"
        if self.stopped_by_fault:
            resp.message += f"; still stopped after a backend fault ({self.stopped_by_fault})"
        return resp

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self._engage_estop(f"topic {ESTOP_TOPIC}")
        else:
            self._release_estop(f"topic {ESTOP_TOPIC}")

    def _engage_estop(self, by: str) -> None:
        with self._lock:
            first = not self._estop.is_set()
            self._estop.set()
            self._queue.clear()
            self._human_until = 0.0
            refused = [r for r in (self._reset_req, self._label_req) if r is not None]
            self._reset_req = self._label_req = None
            self._lock.notify_all()
        for r in refused:
            r.error = "e-stop engaged"
            r.done.set()
        if first:
            self.get_logger().error(f"E-STOP engaged by {by}: holding pose; actions and resets refused")
        self._heartbeat()

    def _release_estop(self, by: str) -> bool:
        with self._lock:
            was = self._estop.is_set()
            self._estop.clear()
            self._lock.notify_all()
        if was:
            then = "the interrupted reset is redone" if self._reset_due is not None else "the episode continues"
            self.get_logger().warning(f"e-stop released by {by}: {then}")
        self._heartbeat()
        return was

    def _on_ack(self, msg: TransitionAck) -> None:
        if msg.robot_id != self.robot_id:
            return
        with self._outbox_lock:
            self.outbox.ack(msg.consumer, zip(msg.episode_ids, msg.steps))

    def _resend(self) -> None:
        """Resend transitions nobody acknowledged, once a consumer is on the topic again."""
        if self.pub_trans.get_subscription_count() == 0:
            return
        with self._outbox_lock:
            due = self.outbox.due(time.monotonic(), limit=100)
        for t in due:
            self.pub_trans.publish(t)

    def _heartbeat(self) -> None:
        s = RobotStatus()
        s.header.stamp = self.get_clock().now().to_msg()
        s.robot_id = self.robot_id
        s.state, s.message = self.state, self.status_message
        if self.stopped_by_fault and self.exit_code == 0:
            s.state, s.message = RobotStatus.STATE_ERROR, self.stopped_by_fault
        elif self._estop.is_set():
            s.state, s.message = RobotStatus.STATE_ERROR, ESTOP_MESSAGE
        s.achieved_control_hz = self._achieved_hz()
        s.episode_id, s.step = self.episode_id, self.step_index
        s.episodes_done, s.steps_done, s.held_steps = self.episodes_done, self.steps_done, self.held_steps
        s.rejected_actions, s.policy_version = self.rejected, self.last_policy_version
        if self.outbox is not None:
            s.unacked_transitions, s.dropped_transitions = len(self.outbox), self.outbox.dropped
        self.pub_beat.publish(s)

    def _achieved_hz(self) -> float:
        """Control ticks per second over the recent ticks, not counting pauses for resets."""
        ticks = np.array(tuple(self._tick_times))  # copied in one C call, safe against the control thread
        if len(ticks) < 2 or time.monotonic() - ticks[-1] > 2.0:
            return 0.0
        gaps = np.diff(ticks)
        nominal = self.period / self.rf if self.rf > 0 else np.median(gaps)
        steady = gaps[gaps < 2.5 * nominal]
        return float(1.0 / steady.mean()) if steady.size else 0.0

    # -- control thread -------------------------------------------------------------------------------
    def _control_main(self) -> None:
        try:
            self.cell.start()
            self.cameras.start()
            self.pub_desc.publish(self._describe())
            self.pub_urdf.publish(String(data=self.cell.backend.urdf()))
            self.get_logger().info(
                f"robot {self.robot_id}: {self.profile.robot.embodiment} on backend "
                f"{self.profile.robot.backend}, {self.profile.robot.control_hz:g} Hz, "
                f"realtime_factor {self.rf:g}, profile {self.profile.source}")
            self._loop()
        except ConfigError as exc:
            self._fail(str(exc), code=2)
        except Exception as exc:  # a backend fault: stop and report, never hang
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down (Ctrl-C): publishing into a closed context is expected to fail
            self._fail(f"{type(exc).__name__}: {exc}", code=1)
        finally:
            # The control thread owns the backend (a renderer's GL context is bound to this thread).
            try:
                self.cameras.close()
                self.cell.close()
            except Exception as exc:  # noqa: BLE001 - closing must not mask the real outcome
                self.get_logger().warning(f"closing the backend failed: {exc}")
            self.finished.set()

    def _fail(self, message: str, code: int) -> None:
        self.state = RobotStatus.STATE_ERROR
        self.status_message = message
        self.exit_code = code
        self.get_logger().error(message)
        self._heartbeat()

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                ticked = self._tick(next_tick)
            except BackendError as exc:
                self._on_backend_fault(exc)
                ticked = False
            if self._stop.is_set():
                break
            if not ticked:  # idle (e-stop, stopped, waiting for a reset): hold a period, restart the clock
                self._idle_wait()
                next_tick = time.monotonic()
                continue
            if self._reset_due is not None:  # an episode just ended: reset at once
                next_tick = time.monotonic()
                continue
            if self.rf > 0:
                next_tick += self.period / self.rf
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -self.period:
                    next_tick = time.monotonic()  # fell behind: do not burst to catch up

    def _idle_wait(self) -> None:
        """Wait one control period (wall clock), waking early for a reset request or e-stop release."""
        timeout = self.period / self.rf if self.rf > 0 else self.period
        with self._lock:
            if self._reset_req is None and not self._stop.is_set():
                self._lock.wait(timeout)

    def _tick(self, next_tick: float) -> bool:
        """One control period; False when the robot only held (or did nothing) and the clock restarts."""
        self._observe_at = next_tick + self.period / (self.rf or 1.0) - self.inference_budget
        if self.stopped_by_fault:
            return False  # no more commands to a faulty backend: it holds its last target itself
        if self._estop.is_set():
            self.cell.hold()
            return False
        if self._final is not None:
            return self._settle_final()
        req = self._take_reset()
        if req is not None:
            self._finish_episode(interrupted=True)
            self._reset_due = (req.seed, req.evaluation, req)
        if self._reset_due is not None:
            seed, evaluation, r = self._reset_due
            if not self._begin_episode(seed=seed, evaluation=evaluation):
                if r is not None:  # e-stop during the reset: the caller learns it; the reset is redone later
                    r.error = "reset aborted by the e-stop"
                    r.done.set()
                    self._reset_due = (seed, evaluation, None)
                return False
            self._reset_due = None
            if r is not None:
                r.episode_id = self.episode_id
                r.done.set()
            next_tick = time.monotonic()
            self._observe_at = next_tick + self.period / (self.rf or 1.0) - self.inference_budget
        if self._awaiting_reset:
            self.cell.hold()
            return False
        action = self._next_action(next_tick)
        if self._stop.is_set() or self._estop.is_set():
            return False
        label = self._take_label()
        self._tick_times.append(time.monotonic())
        if action is None and label is None:
            state = self.cell.hold(settle=self._settle)
            self.held_steps += 1
            if self._tally:
                self._tally.held += 1
            self._publish_observation(state)
        else:
            try:
                self._execute(action, label)
            except BackendError:
                if label is not None:  # not applied yet: it applies to the step after the recovery
                    with self._lock:
                        self._label_req = self._label_req or label
                raise
        return True

    def _settle(self) -> None:
        """On a real-time robot, let the arm follow the new target until ``inference_budget_s`` before the
        next tick, so the observation read next shows the result of this step (a simulator has already
        integrated the period). Wakes early for an e-stop or shutdown."""
        if not self.realtime_robot:
            return
        with self._lock:
            while not (self._stop.is_set() or self._estop.is_set()):
                left = self._observe_at - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)

    def _take_reset(self) -> ResetRequest | None:
        with self._lock:
            r, self._reset_req = self._reset_req, None
            return r

    def _take_label(self) -> LabelRequest | None:
        with self._lock:
            r, self._label_req = self._label_req, None
        if r is not None and r.episode_id != self.episode_id:
            r.error = f"episode {r.episode_id} already ended"
            r.done.set()
            return None
        return r

    def _acceptable(self, a: PendingChunk, now: float) -> bool:
        """A queued entry may run: a human's, or any while no human is in control."""
        return a.source == Action.SOURCE_HUMAN or now >= self._human_until

    def _next_action(self, tick: float) -> PendingAction | None:
        """The action for the current step from the queued actions and chunks (``user_hal.chunks``: fresh
        entries for this very step only), or None (hold). At realtime_factor 0 it waits up to the watchdog
        for one when no queued entry covers the step."""
        with self._lock:
            if self.rf == 0:
                deadline = time.monotonic() + self.watchdog
                while (not self._stop.is_set() and self._reset_req is None and self._label_req is None
                       and not self._estop.is_set()):
                    if self._queue.covers(self.episode_id, self.step_index, time.monotonic()):
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._lock.wait(remaining)
            now = time.monotonic()
            c = self._queue.take(self.episode_id, self.step_index, now)
            if c is None or not self._acceptable(c, now):
                return None
        return PendingAction(c.values[0], c.episode_id, c.step, c.policy_version, c.source, c.received)

    def _execute(self, a: PendingAction | None, label: LabelRequest | None = None) -> None:
        """Execute one action (or, for a label without an action, a hold step) and publish its transition."""
        obs = self._last_obs
        if a is None:  # a label arrived and nobody acted: record a hold step to carry the episode's end
            a = PendingAction(self.cell.hold_action(), self.episode_id, self.step_index, 0, Action.SOURCE_HOLD,
                              time.monotonic())
        res = self.cell.step(a.values, settle=self._settle)
        self.step_index += 1
        self.steps_done += 1
        if a.source == Action.SOURCE_POLICY:
            self.last_policy_version = a.policy_version
        human = a.source == Action.SOURCE_HUMAN
        self._log_handover(a.source)
        reward, success = res.outcome.reward, res.outcome.success
        terminated, truncated = res.terminated, res.truncated
        source = Transition.REWARD_RULE
        if self.classifier:  # the rule's verdict is only logged (per episode); the classifier's labels decide
            self._tally.rule_success = self._tally.rule_success or success
            reward, success, source = 0.0, False, Transition.REWARD_CLASSIFIER
        if label is not None:  # the human's (or the classifier's) word on success wins over the rule reward
            reward += float(label.success) - float(success)
            success, terminated, truncated = label.success, label.success, not label.success
            source = label.source
        next_obs = self._publish_observation(res.state)
        t = Transition()
        t.robot_id, t.embodiment = self.robot_id, self.profile.robot.embodiment
        t.episode_id, t.step = self.episode_id, self.step_index - 1
        t.obs, t.next_obs = obs, next_obs
        t.action = res.commanded.astype(np.float32).tolist()
        t.action_source = a.source
        t.intervened = human
        t.policy_version = a.policy_version
        t.reward, t.success = reward, success
        t.terminated, t.truncated = terminated, truncated
        t.reward_source = source
        # task.reward_when end: the last step waits for the classifier's verdict on its next_obs (_settle_final)
        final = self.judge_end and truncated and label is None
        if not final:
            self._publish_transition(t)
        tally = self._tally
        tally.ret += reward
        tally.steps += 1
        tally.interventions += int(human)
        self.human_steps += int(human)
        tally.policy_version = max(tally.policy_version, a.policy_version)
        tally.success = tally.success or success
        if label is not None:
            tally.success, tally.labelled = label.success, label.source == Transition.REWARD_HUMAN
            label.step = t.step
            label.done.set()
        if final:
            with self._lock:
                self._final = FinalStep(t, time.monotonic() + self.reward_timeout)
                v = self._last_verdict
                if v is not None and (v.episode_id, v.step) == (t.episode_id, t.next_obs.step):
                    self._final.verdict = v
        elif terminated or truncated:
            self._end_episode()

    def _publish_transition(self, t: Transition) -> None:
        self.pub_trans.publish(t)
        if self.outbox is not None:
            with self._outbox_lock:
                self.outbox.add((t.episode_id, t.step), t, _transition_bytes(t), time.monotonic())

    def _end_episode(self) -> None:
        self._finish_episode(interrupted=False)
        if self.max_episodes and self.episodes_done >= self.max_episodes:
            self._summarize()
            self._stop.set()
            return
        if not self.wait_for_reset:
            self._reset_due = (-1, False, None)
        else:  # sync training: hold until somebody calls the reset service
            self._awaiting_reset = True
            self.state = RobotStatus.STATE_IDLE

    def _settle_final(self) -> bool:
        """task.reward_when end: wait (at most task.reward_timeout_s after the last step) for the classifier's
        verdict on the last observation, then publish the last transition with it and end the episode; no
        verdict in time is a failure. False if an e-stop or shutdown interrupted the wait. The arm holds its
        last target meanwhile."""
        f = self._final
        with self._lock:
            while f.verdict is None and not (self._stop.is_set() or self._estop.is_set()):
                left = f.deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            if f.verdict is None and time.monotonic() < f.deadline:
                return False
            self._final = None
        t, v = f.transition, f.verdict
        if v is None:
            self.late_verdicts += 1
            self.get_logger().warning(
                f"no reward verdict on episode {t.episode_id} step {t.next_obs.step} within "
                f"task.reward_timeout_s {self.reward_timeout:g} s (is the reward node running?): counted a failure "
                f"({self.late_verdicts} so far)")
        success = bool(v is not None and v.success)
        t.reward += float(success)
        t.success, t.terminated, t.truncated = success, success, not success
        self._publish_transition(t)
        self._tally.ret += float(success)
        self._tally.success = success
        self._end_episode()
        return True

    def _log_handover(self, source: int) -> None:
        human = source == Action.SOURCE_HUMAN
        was = self._last_source
        if was is not None and human != (was == Action.SOURCE_HUMAN) and source != Action.SOURCE_HOLD:
            who = "a human took over" if human else "control back to the policy"
            self.get_logger().info(f"{who} at step {self.step_index - 1} of episode {self._tally.index}")
        if source != Action.SOURCE_HOLD:
            self._last_source = source

    def _begin_episode(self, seed: int, evaluation: bool = False) -> bool:
        """Reset the cell and start an episode; False if an e-stop aborted the reset."""
        self.state = RobotStatus.STATE_RESETTING
        try:
            state = self.cell.reset(seed=seed, pace=self._pace_reset)
        except _ResetAborted:
            self.state = RobotStatus.STATE_RUNNING
            return False
        with self._lock:
            self.episode_id = time.time_ns() // 1000  # microseconds: unique and ordered across restarts
            self.step_index = 0
            self._queue.clear()
        index = self._tally.index + 1 if self._tally else 0
        self._tally = EpisodeTally(self.episode_id, index, time.monotonic(), evaluation=evaluation)
        self._evaluation = evaluation
        self._awaiting_reset = False
        self._last_source = None
        self.state = RobotStatus.STATE_RUNNING
        self._publish_observation(state)
        return True

    def _pace_reset(self) -> None:
        """Called once per control period of a reset motion: keeps wall-clock pace, stops on an e-stop."""
        if self.rf > 0:
            self._stop.wait(self.period / self.rf)
        if self._estop.is_set() or self._stop.is_set():
            raise _ResetAborted()

    def _on_backend_fault(self, exc: BackendError) -> None:
        """Recover up to ``max_recoveries`` times per episode; then stop the robot in ERROR."""
        with self._lock:
            self._queue.clear()  # the target was re-anchored: queued plans no longer apply
        tally = self._tally
        while True:
            if self.recoveries >= self.max_recoveries:
                return self._stop_after_fault(exc)
            self.recoveries += 1
            self.recoveries_total += 1
            if tally is not None:
                tally.recoveries += 1
            self.get_logger().warning(
                f"backend fault at step {self.step_index}: {exc}; recovering "
                f"({self.recoveries}/{self.max_recoveries} in this episode)")
            try:
                self.cell.recover()
            except BackendError as again:
                exc = again
                continue
            break
        self.status_message = f"recovered from backend fault: {exc}"
        self.get_logger().info(f"recovered from the backend fault; the episode continues at step {self.step_index}")
        self._heartbeat()

    def _stop_after_fault(self, exc: BackendError) -> None:
        n = self.max_recoveries
        self.stopped_by_fault = (f"backend fault: {exc} (stopped after {n} recover{'y' if n == 1 else 'ies'} "
                                 f"in this episode)")
        self.state = RobotStatus.STATE_ERROR
        self.status_message = self.stopped_by_fault
        self.get_logger().error(f"robot stopped: {self.stopped_by_fault}; it holds and refuses actions and "
                                f"resets until the robot node is restarted")
        with self._lock:
            waiting = [r for r in (self._reset_req, self._label_req) if r is not None]
            self._reset_req = self._label_req = None
        if self._reset_due is not None and self._reset_due[2] is not None:
            waiting.append(self._reset_due[2])
        for r in waiting:
            r.error = self.stopped_by_fault
            r.done.set()
        self._finish_episode(interrupted=True)
        self._heartbeat()

    def _finish_episode(self, interrupted: bool) -> None:
        t = self._tally
        if t is None or t.steps == 0 or t.finished:
            return
        t.finished = True
        self.recoveries = 0
        self.episodes_done += 1
        self.successes += int(t.success)
        e = EpisodeStats()
        e.header.stamp = self.get_clock().now().to_msg()
        e.robot_id, e.episode_id, e.episode_index = self.robot_id, t.episode_id, t.index
        e.steps, e.episode_return, e.success, e.evaluation = t.steps, t.ret, t.success, t.evaluation
        e.duration_s = time.monotonic() - t.started
        e.intervention_steps, e.held_steps, e.policy_version = t.interventions, t.held, t.policy_version
        self.pub_ep.publish(e)
        how = " (labelled by a human)" if t.labelled else ""
        if self.classifier:
            how += f" (reward classifier; the rule says {'success' if t.rule_success else 'failure'})"
        extra = f", {t.recoveries} backend recoveries" if t.recoveries else ""
        self.get_logger().info(
            f"episode {t.index}: {'SUCCESS' if t.success else 'failure'}{how} in {t.steps} steps, "
            f"return {t.ret:.2f}, {e.duration_s:.1f} s, intervention {t.interventions}/{t.steps} steps "
            f"({100.0 * t.interventions / t.steps:.0f}%){extra}"
            f"{' (interrupted)' if interrupted else ''}")
        if not self.stopped_by_fault and self.status_message.startswith("recovered"):
            self.status_message = ""

    def _summarize(self) -> None:
        n = self.episodes_done
        self.get_logger().info(
            f"done: {n} episodes, {self.successes} successes ({100.0 * self.successes / max(n, 1):.0f}%), "
            f"{self.steps_done} steps, {self.held_steps} held, {self.rejected} rejected actions, "
            f"intervention {self.human_steps}/{self.steps_done} steps "
            f"({100.0 * self.human_steps / max(self.steps_done, 1):.0f}%), "
            f"{self.recoveries_total} backend recoveries")

    def _publish_observation(self, state) -> Observation:
        stamp = self.get_clock().now().to_msg()
        with self._lock:
            self._observed[(self.episode_id, self.step_index)] = time.monotonic()
            self._observed.move_to_end((self.episode_id, self.step_index))
            while len(self._observed) > 256:
                self._observed.popitem(last=False)
        o = Observation()
        o.header.stamp = stamp
        o.header.frame_id = f"{self.frame_prefix}base"
        o.robot_id, o.episode_id, o.step = self.robot_id, self.episode_id, self.step_index
        o.proprio = self.cell.proprio(state).tolist()
        o.evaluation = self._evaluation
        for name, img in self.cameras.render().items():
            msg = image_to_msg(img, stamp, f"{self.frame_prefix}{name}_camera_color_optical_frame")
            o.camera_names.append(name)
            o.images.append(msg)
            self.pub_cams[name].publish(msg)
        self._last_obs = o
        self.pub_obs.publish(o)
        js = JointState()
        js.header.stamp = stamp
        js.name = self.cell.backend.joint_names()
        js.position = [float(x) for x in state.joint_pos]
        js.velocity = [float(x) for x in state.joint_vel]
        self.pub_joints.publish(js)
        self.pub_markers.publish(cell_markers(self.cell, state, stamp, f"{self.frame_prefix}base"))
        return o


def _transition_bytes(t: Transition) -> int:
    """Approximate memory held by a transition (its images dominate)."""
    images = sum(len(img.data) for img in t.obs.images) + sum(len(img.data) for img in t.next_obs.images)
    return images + 4 * (len(t.obs.proprio) + len(t.next_obs.proprio)) + 512


def _spin(node: RobotNode) -> int:
    node.start()
    # Three threads: the reset and label services block theirs until the control loop answers.
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    while rclpy.ok() and not node.finished.is_set():
        executor.spin_once(timeout_sec=0.1)
    # Let the last messages (episode stats, heartbeat) leave before shutting down.
    end = time.monotonic() + 0.5
    while time.monotonic() < end and rclpy.ok():   # after Ctrl-C the context is already shut down
        executor.spin_once(timeout_sec=0.05)
    return node.exit_code


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(RobotNode, "robot_node", _spin, args))


if __name__ == "__main__":
    main()
