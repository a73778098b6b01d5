"""The robot node: one robot cell behind ROS topics, whatever the backend.

A thin shell around ``user_hal.core.episode.EpisodeController``: ROS callbacks turn messages into events,
one control thread feeds them (and ticks) to the controller and carries out its effects on the cell.
Topics, services, parameters and the threading: docs/robot_node.md. With ``follow_bindings`` the robot works
for the job the scheduler binds it to and publishes its data under that job's namespace (docs/scheduler.md).
"""
from __future__ import annotations

import itertools
import queue
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from user_common.executors import ThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray
from user_msgs.msg import (Action, Bindings, EpisodeStats, Observation, RewardLabel, RobotDescription,
                           RobotStatus, Transition, TransitionAck)
from user_msgs.srv import ResetRobot

from user_common import qos
from .cell_runner import CellRunner
from user_common.config_schema import ConfigError
from .core import episode as ep
from user_common.node_main import run_node
from .core.outbox import Outbox
from .profile import load_profile
from .robot_io import (describe_robot, episode_stats_msg, make_cell, make_spool, observation_msgs,
                       profile_overrides, status_msg, transition_bytes, transition_msg)
from user_common.topics import ESTOP_RELEASE_SERVICE, ESTOP_SERVICE, ESTOP_TOPIC, check_topic_ns, job_topic


#: the node's parameters and their defaults (docs/robot_node.md)
PARAMETERS = (("robot_id", "franka_0"), ("profile", ""), ("backend", ""), ("realtime_factor", -1.0),
              ("max_episodes", 0), ("seed", 0), ("frame_prefix", ""), ("ack_consumers", [""]),
              ("outbox_max_mb", 1024), ("outbox_spool_mb", 8192), ("outbox_spool_dir", ""),
              ("wait_for_reset", False), ("reward", "profile"), ("reward_source", "profile"),
              ("reward_when", "profile"), ("terminate_on_success", "profile"), ("follow_bindings", False))


class _Waiter:
    """A service call waiting for the controller's Reply."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: ep.Reply | None = None


class _Binding:
    """The robot's job as the scheduler's latest Bindings say (``ns`` None: unbound, ``why`` says why)."""

    def __init__(self, job: str = "", ns: str | None = None, why: str = "") -> None:
        self.job, self.ns, self.why = job, ns, why


class RobotNode(Node):
    """ROS shell around ``RobotCell`` and ``EpisodeController``."""

    #: builds ``(cell, cameras)`` from the profile; a subclass may wrap the cell (test support does)
    make_cell = staticmethod(make_cell)

    def __init__(self) -> None:
        super().__init__("robot")
        for name, default in PARAMETERS:
            self.declare_parameter(name, default)
        params = {name: self.get_parameter(name).value for name, _ in PARAMETERS}
        self.robot_id: str = params["robot_id"]
        self.profile = load_profile(*profile_overrides(params))
        self.frame_prefix: str = params["frame_prefix"]
        consumers = [c for c in params["ack_consumers"] if c]
        self.outbox = (Outbox(consumers, params["outbox_max_mb"] << 20, spool=make_spool(self.robot_id, params))
                       if consumers else None)
        self._outbox_lock = threading.Lock()
        rc = self.profile.robot
        self.rf = rc.realtime_factor
        self.cell, self.cameras = self.make_cell(self.profile, self.robot_id, params["seed"])
        self.period = self.cell.period
        self.follow = bool(params["follow_bindings"])
        self.ctrl = ep.EpisodeController(ep.EpisodeConfig.from_profile(
            self.profile, self.robot_id, max_episodes=params["max_episodes"], wait_for_reset=params["wait_for_reset"],
            follow_bindings=self.follow))

        # Only the control thread touches ctrl, cell and cameras; callbacks post events to the inbox.
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._status = self.ctrl.status()          # the control thread's latest snapshot, for heartbeats
        self._waiters: dict[int, _Waiter] = {}
        self._waiters_lock = threading.Lock()
        self._requests = itertools.count(1)
        self._stop = threading.Event()
        self._interrupt = threading.Event()         # e-stop engaged or shutting down: wakes settle and pace
        self._estop_lock = threading.Lock()
        self._estop_engaged = False
        self.finished = threading.Event()
        self.exit_code = 0
        self._failed = ""
        self.runner = CellRunner(self.cell, self._observe, self._interrupt, self.rf)

        cb = ReentrantCallbackGroup()
        rid = self.robot_id
        pub = self.create_publisher
        self.pub_desc = pub(RobotDescription, qos.DESCRIPTION_TOPIC, qos.LATCHED)
        self.pub_beat = pub(RobotStatus, qos.HEARTBEAT_TOPIC, qos.LATCHED)
        self.pub_obs = pub(Observation, qos.robot_topic(rid, "observation"), qos.CONTROL)
        # Per job namespace ("" = the shared /user topics): transitions and episode publishers, the ack
        # subscription. Created by executor callbacks (init, bindings), read by the control thread.
        self._cb = cb
        self._planes: dict[str, tuple] = {}
        self._planes_lock = threading.Lock()
        self._binding = _Binding() if self.follow else _Binding(ns="")   # the control thread's view
        self._episode_ns = "" if not self.follow else None   # where the running episode's data goes
        self.pub_joints = pub(JointState, qos.robot_topic(rid, "joint_states"), qos.SENSOR)
        self.pub_urdf = pub(String, qos.robot_topic(rid, "robot_description"), qos.LATCHED)
        self.pub_markers = pub(MarkerArray, qos.robot_topic(rid, "markers"), qos.SENSOR)
        self.pub_cams = {name: pub(Image, qos.camera_topic(rid, name), qos.SENSOR) for name in rc.cameras}
        sub = self.create_subscription
        sub(Action, qos.robot_topic(rid, "action"), self._on_action, qos.CONTROL, callback_group=cb)
        self.create_service(ResetRobot, qos.robot_topic(rid, "reset"), self._on_reset, callback_group=cb)
        self.create_service(SetBool, qos.robot_topic(rid, "label_episode"), self._on_label, callback_group=cb)
        if self.ctrl.classifier:
            sub(RewardLabel, qos.robot_topic(rid, "reward_label"), self._on_reward_label, qos.CONTROL,
                callback_group=cb)
        self.create_service(Trigger, ESTOP_SERVICE, self._on_estop, callback_group=cb)
        self.create_service(Trigger, ESTOP_RELEASE_SERVICE, self._on_estop_release, callback_group=cb)
        sub(Bool, ESTOP_TOPIC, self._on_estop_topic, qos.LATCHED, callback_group=cb)
        self.create_timer(1.0 / rc.heartbeat_hz, self._heartbeat, callback_group=cb)
        if self.follow:
            sub(Bindings, qos.BINDINGS_TOPIC, self._on_bindings, qos.LATCHED, callback_group=cb)
        else:
            self._plane("")
        if self.outbox is not None:
            self.create_timer(0.5, self._resend, callback_group=cb)
        self._thread = threading.Thread(target=self._control_main, name=f"{rid}-control", daemon=True)

    # -- startup / shutdown -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the control loop; the control thread closes the backend it owns."""
        self._stop.set()
        self._interrupt.set()
        self._inbox.put(None)
        self._thread.join(timeout=5.0)
        if self.outbox is not None and self.outbox.spool is not None:
            self.outbox.spool.close()

    # -- callbacks (executor threads): messages become events ----------------------------------------------
    def _on_action(self, msg: Action) -> None:
        self._inbox.put(ep.ActionArrived(time.monotonic(), msg.robot_id, msg.episode_id, msg.step,
                                         np.asarray(msg.action, dtype=np.float64), int(msg.chunk_length),
                                         msg.policy_version, msg.source))

    def _call(self, make_event, timeout: float) -> ep.Reply | None:
        """Post a request to the control thread and wait for its answer (None: none within ``timeout``)."""
        request, waiter = next(self._requests), _Waiter()
        with self._waiters_lock:
            self._waiters[request] = waiter
        self._inbox.put(make_event(request))
        waiter.done.wait(timeout)
        with self._waiters_lock:
            self._waiters.pop(request, None)
        return waiter.reply

    def _on_reset(self, req: ResetRobot.Request, resp: ResetRobot.Response) -> ResetRobot.Response:
        r = self._call(lambda rid: ep.ResetRequested(time.monotonic(), rid, req.robot_id, req.seed, req.evaluation),
                       60.0)
        if r is None:
            resp.success, resp.message = False, "reset did not finish within 60 s"
        else:
            resp.success, resp.message, resp.episode_id = r.ok, r.message, r.episode_id
        return resp

    def _on_label(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        """A human's success (data=true) / failure label: the next step ends the running episode."""
        r = self._call(lambda rid: ep.LabelRequested(time.monotonic(), rid, bool(req.data)), 10.0)
        if r is None:
            resp.success = False
            resp.message = f"label {'success' if req.data else 'failure'} was not applied within 10 s"
        else:
            resp.success, resp.message = r.ok, r.message
        return resp

    def _on_reward_label(self, msg: RewardLabel) -> None:
        self._inbox.put(ep.RewardVerdict(time.monotonic(), msg.robot_id, msg.episode_id, msg.step, msg.success,
                                         msg.source))

    def _set_estop(self, engaged: bool, by: str) -> bool:
        """Interrupt a settling step or a reset at once and tell the controller; returns the old state."""
        with self._estop_lock:
            was, self._estop_engaged = self._estop_engaged, engaged
            if engaged:
                self._interrupt.set()
            elif not self._stop.is_set():
                self._interrupt.clear()
            self._inbox.put(ep.EstopChanged(time.monotonic(), engaged, by))
        return was

    def _on_estop(self, req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self._set_estop(True, f"service {ESTOP_SERVICE}")
        resp.success = True
        resp.message = (f"{self.robot_id}: e-stop engaged: holding pose, actions and resets refused until "
                        f"{ESTOP_RELEASE_SERVICE}")
        return resp

    def _on_estop_release(self, req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        was = self._set_estop(False, f"service {ESTOP_RELEASE_SERVICE}")
        resp.success = True
        resp.message = f"{self.robot_id}: e-stop {'released' if was else 'was not engaged'}"
        if self._status.stopped_by_fault:
            resp.message += f"; still stopped after a backend fault ({self._status.stopped_by_fault})"
        return resp

    def _on_estop_topic(self, msg: Bool) -> None:
        self._set_estop(bool(msg.data), f"topic {ESTOP_TOPIC}")

    def _plane(self, ns: str) -> tuple:
        """(transitions publisher, episodes publisher) of job namespace ``ns``, made on first use."""
        with self._planes_lock:
            plane = self._planes.get(ns)
            if plane is None:
                plane = (self.create_publisher(Transition, job_topic(qos.TRANSITIONS_TOPIC, ns), qos.DATA),
                         self.create_publisher(EpisodeStats, job_topic(qos.EPISODES_TOPIC, ns), qos.DATA))
                if self.outbox is not None:
                    self.create_subscription(TransitionAck, job_topic(qos.TRANSITION_ACK_TOPIC, ns), self._on_ack,
                                             qos.DATA, callback_group=self._cb)
                self._planes[ns] = plane
            return plane

    def _on_bindings(self, msg: Bindings) -> None:
        """The scheduler's latest decision about this robot becomes a binding event for the control thread."""
        b = next((b for b in msg.robots if b.robot_id == self.robot_id), None)
        if b is None:
            self._inbox.put(_Binding(why="not listed by the scheduler"))
        elif not b.server:
            self._inbox.put(_Binding(why=b.reason or "idle"))
        else:
            try:
                ns = check_topic_ns(b.topic_ns, f"job {b.job}: topic_ns", qos.BINDINGS_TOPIC)
            except ValueError as exc:
                self.get_logger().error(f"{exc}; treating the robot as unbound", throttle_duration_sec=5.0)
                self._inbox.put(_Binding(why=str(exc)))
                return
            self._plane(ns)
            self._inbox.put(_Binding(b.job, ns))

    def _on_ack(self, msg: TransitionAck) -> None:
        if msg.robot_id == self.robot_id:
            with self._outbox_lock:
                self.outbox.ack(msg.consumer, zip(msg.episode_ids, msg.steps))

    def _resend(self) -> None:
        """Resend transitions nobody acknowledged, each on the namespace it was first published on, once a
        consumer is on that topic again."""
        with self._planes_lock:
            live = {ns: pubs[0] for ns, pubs in self._planes.items() if pubs[0].get_subscription_count() > 0}
        if not live:
            return
        with self._outbox_lock:
            due = self.outbox.due(time.monotonic(), limit=100, where=lambda entry: entry[0] in live)
        for ns, t in due:
            live[ns].publish(t)

    def _heartbeat(self) -> None:
        st = self._status
        hz = ep.achieved_hz(st.tick_times, time.monotonic(), self.period / self.rf if self.rf else None)
        self.pub_beat.publish(status_msg(self.robot_id, st, self.get_clock().now().to_msg(), hz, self._failed,
                                         self.outbox))

    # -- control thread: events in, effects out -------------------------------------------------------------
    def _control_main(self) -> None:
        try:
            self.cell.start()
            self.cameras.start()
            self.pub_desc.publish(describe_robot(self.robot_id, self.profile, self.cell))
            self.pub_urdf.publish(String(data=self.cell.backend.urdf()))
            self.get_logger().info(
                f"robot {self.robot_id}: {self.profile.robot.embodiment} on backend "
                f"{self.profile.robot.backend}, {self.profile.robot.control_hz:g} Hz, "
                f"realtime_factor {self.rf:g}, profile {self.profile.source}")
            self._loop()
        except ConfigError as exc:
            self._fail(str(exc), code=2)
        except Exception as exc:  # a fault outside the controller's care: stop and report, never hang
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
        self._failed, self.exit_code = message, code
        self.get_logger().error(message)
        self._heartbeat()

    def _loop(self) -> None:
        """Feed queued events first, then a Tick whenever the controller's wake time has come."""
        while not self._stop.is_set():
            wake = self.ctrl.wake_at
            left = None if wake is None else wake - time.monotonic()
            try:
                event = self._inbox.get_nowait() if left is not None and left <= 0 else self._inbox.get(timeout=left)
            except queue.Empty:
                event = ep.Tick(time.monotonic())
            if event is None:
                break
            if isinstance(event, _Binding):
                self._rebind(event)
            else:
                self._feed(event)

    def _rebind(self, new: _Binding) -> None:
        """Turn a change of the robot's job (or namespace) into BindingLost / Bound for the controller."""
        old, self._binding = self._binding, new
        if old.ns is not None and (new.ns is None or (new.job, new.ns) != (old.job, old.ns)):
            self._feed(ep.BindingLost(time.monotonic(), new.why or f"moved to job {new.job}"))
        if new.ns is not None and (old.ns is None or (new.job, new.ns) != (old.job, old.ns)):
            self.get_logger().info(f"bound to job {new.job}: data on {job_topic(qos.TRANSITIONS_TOPIC, new.ns)}")
            self._feed(ep.Bound(time.monotonic(), new.job))

    def _feed(self, event) -> None:
        """Hand one event to the controller and carry out its effects; a backend's outcome goes straight back."""
        events = [event]
        while events and not self._stop.is_set():
            effects = self.ctrl.handle(events.pop(0))
            self._status = self.ctrl.status()
            for effect in effects:
                outcome = self._apply(effect)
                if outcome is not None:
                    events.append(outcome)

    def _apply(self, e):
        if isinstance(e, ep.Reset):   # the episode it starts publishes under the job the robot is bound to now
            self._episode_ns = self._binding.ns
        if isinstance(e, CellRunner.EFFECTS):
            return self.runner.run(e)
        if isinstance(e, ep.PublishTransition):
            ns = self._episode_ns if self._episode_ns is not None else ""
            t = transition_msg(e.record, self.robot_id, self.profile.robot.embodiment)
            self._plane(ns)[0].publish(t)
            if self.outbox is not None:   # an entry remembers its namespace: resent there, whatever comes next
                with self._outbox_lock:
                    self.outbox.add((t.episode_id, t.step), (ns, t), transition_bytes(t), time.monotonic())
        elif isinstance(e, ep.FinishEpisode):
            ns = self._episode_ns if self._episode_ns is not None else ""
            self._plane(ns)[1].publish(episode_stats_msg(e.summary, self.robot_id, self.get_clock().now().to_msg()))
        elif isinstance(e, ep.Reply):
            with self._waiters_lock:
                waiter = self._waiters.get(e.request)
            if waiter is not None:
                waiter.reply = e
                waiter.done.set()
        elif isinstance(e, ep.Log):   # one call site per severity: rclpy fixes a call site's severity
            if e.level == "error":
                self.get_logger().error(e.message)
            elif e.level == "warning":
                self.get_logger().warning(e.message)
            else:
                self.get_logger().info(e.message)
        elif isinstance(e, ep.Heartbeat):
            self._heartbeat()
        elif isinstance(e, ep.Shutdown):
            self._stop.set()
        return None

    def _observe(self, state, episode_id: int, step: int, evaluation: bool) -> Observation:
        """Publish the observation of ``state`` (camera images, joint states, markers too); returns it."""
        o, joints, markers = observation_msgs(self.cell, self.cameras, state, self.robot_id, episode_id, step,
                                              evaluation, self.get_clock().now().to_msg(), self.frame_prefix)
        for name, img in zip(o.camera_names, o.images):
            self.pub_cams[name].publish(img)
        self.pub_obs.publish(o)
        self.pub_joints.publish(joints)
        self.pub_markers.publish(markers)
        return o


def spin_until_finished(node: RobotNode) -> int:
    node.start()
    # Three threads: the reset and label services block theirs until the control thread answers.
    executor = ThreadedExecutor(num_threads=3)
    executor.add_node(node)
    while rclpy.ok() and not node.finished.is_set():
        executor.spin_once(timeout_sec=0.1)
    # Let the last messages (episode stats, heartbeat) leave before shutting down.
    end = time.monotonic() + 0.5
    while time.monotonic() < end and rclpy.ok():   # after Ctrl-C the context is already shut down
        executor.spin_once(timeout_sec=0.05)
    return node.exit_code


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(RobotNode, "robot_node", spin_until_finished, args))


if __name__ == "__main__":
    main()
