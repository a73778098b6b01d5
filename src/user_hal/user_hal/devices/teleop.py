"""Human teleoperation for interventions: a 6-DoF input device -> ee-delta actions and episode labels.

Plain Python (no ROS), so it is tested without DDS; ``user_hal.teleop_node`` wraps it per robot.

Input sources (each yields ``InputSample``: six axes in [-1, 1] and the button states):
- ``SpaceMouseSource``: a 3Dconnexion SpaceMouse read directly over HID with ``pyspacemouse``
  (axes in the ROS convention: x forward, y left, z up, roll, pitch, yaw);
- ``joy_sample``: one ``sensor_msgs/Joy`` message as ``spacenav_node`` publishes it on
  ``/spacenav/joy`` (axes ``[vx, vy, vz, wx, wy, wz]``, ``buttons[0]``, ``buttons[1]``);
- ``KeyboardSource``: terminal keys, read from stdin in cbreak ("raw") mode, only if stdin is a
  TTY. ``w/s`` +-x, ``a/d`` +-y, ``r/f`` +-z, ``j/l`` +-roll, ``i/k`` +-pitch, ``q/e`` +-yaw,
  ``c`` close / ``o`` open the gripper, ``TeleopConfig.success_key`` (``y``) / ``failure_key``
  (``n``) label the episode. A key press deflects its axis fully for ``key_hold_s``; the terminal's
  key repeat keeps it deflected while the key is held.

Mapping (``Teleop``): axes are re-ordered and signed (``axis_map``, ``axis_sign``: input axis
``axis_map[i]`` times ``axis_sign[i]`` drives action entry ``i``), then a deadband with rescaling
is applied (``|v| <= deadband`` -> 0, ``deadband..1`` -> ``0..1``), then the translation axes are
scaled by ``scale`` and the rotation axes by ``rotation_scale`` and clipped to [-1, 1]. The
gripper entry (``-1`` closed, ``+1`` open) follows the last press of ``close_button`` /
``open_button``. Any axis above the deadband, or a gripper press, is *input*: the human then
controls the robot for ``hold_s`` seconds after the last input (``Teleop.intervening``); within
that window ``Teleop.action`` is the human's action (zero motion while the device rests), after it
``None`` (the policy acts). A sample older than ``input_timeout_s`` counts as resting, so a dead
device never keeps the robot moving. ``success_button`` / ``failure_button`` (rising edge; -1 =
none) produce the labels ``"success"`` / ``"failure"``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import select
import time
from typing import Callable, Sequence

import numpy as np

AXIS_NAMES = ("x", "y", "z", "roll", "pitch", "yaw")
LABELS = ("success", "failure")
GRIPPER_EVENTS = ("close", "open")


class TeleopError(RuntimeError):
    """Teleoperation cannot work as configured (no device, no terminal, bad input); says why."""


@dataclasses.dataclass
class InputSample:
    """One reading of an input device."""

    axes: np.ndarray                       # (6,) x, y, z, roll, pitch, yaw in [-1, 1] (device frame)
    buttons: tuple[int, ...] = ()          # 0/1 per button
    stamp: float = 0.0                     # time.monotonic() when read
    events: frozenset[str] = frozenset()   # direct events (keyboard): close, open, success, failure


@dataclasses.dataclass
class TeleopConfig:
    """How device input becomes an action. See the module docstring."""

    scale: float = 1.0                 # action units per full deflection, translation axes
    rotation_scale: float = 1.0        # the same for the rotation axes
    deadband: float = 0.1              # fraction of full deflection ignored around rest
    hold_s: float = 1.0                # the human keeps control this long after the last input
    input_timeout_s: float = 0.5       # older samples count as a device at rest
    axis_map: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    axis_sign: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    close_button: int = 0              # -1: no button
    open_button: int = 1
    success_button: int = -1
    failure_button: int = -1
    success_key: str = "y"
    failure_key: str = "n"
    initial_gripper: float = -1.0      # gripper action before any press (-1 closed, 1 open)
    key_hold_s: float = 0.25           # keyboard: how long one key press deflects its axis

    def validate(self) -> None:
        """Raise TeleopError naming the first bad field."""
        def bad(name: str, problem: str) -> TeleopError:
            return TeleopError(f"teleop config: {name}: {problem}, got {getattr(self, name)!r}")

        for name in ("scale", "rotation_scale", "hold_s", "input_timeout_s", "key_hold_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(name, "must be a number > 0")
        if not 0.0 <= self.deadband < 1.0:
            raise bad("deadband", "must be in [0, 1)")
        if sorted(self.axis_map) != list(range(6)):
            raise bad("axis_map", "must be a permutation of 0..5")
        if len(self.axis_sign) != 6 or any(s not in (-1.0, 1.0) for s in self.axis_sign):
            raise bad("axis_sign", "must be six values, each 1 or -1")
        for name in ("close_button", "open_button", "success_button", "failure_button"):
            if getattr(self, name) < -1:
                raise bad(name, "must be a button index >= 0, or -1 for none")
        buttons = [b for b in (self.close_button, self.open_button, self.success_button, self.failure_button)
                   if b >= 0]
        if len(set(buttons)) != len(buttons):
            raise TeleopError(f"teleop config: close/open/success/failure buttons must differ, got "
                              f"{self.close_button}/{self.open_button}/{self.success_button}/{self.failure_button}")
        for name in ("success_key", "failure_key"):
            key = getattr(self, name)
            if len(key) != 1 or key in KEYMAP or key in "co":
                raise bad(name, f"must be one key not used for motion or the gripper ({''.join(KEYMAP)}co)")
        if self.success_key == self.failure_key:
            raise bad("failure_key", "must differ from success_key")
        if not -1.0 <= self.initial_gripper <= 1.0:
            raise bad("initial_gripper", "must be in [-1, 1]")


def apply_deadband(v: np.ndarray, deadband: float) -> np.ndarray:
    """Zero inside the deadband, rescaled outside so the output is continuous and reaches +-1."""
    v = np.clip(np.asarray(v, dtype=np.float64), -1.0, 1.0)
    out = (np.abs(v) - deadband) / (1.0 - deadband)
    return np.where(np.abs(v) > deadband, np.sign(v) * out, 0.0)


def _scales(cfg: TeleopConfig) -> np.ndarray:
    return np.array([cfg.scale] * 3 + [cfg.rotation_scale] * 3)


def device_axes_for_action(action: Sequence[float], cfg: TeleopConfig, min_action: float = 1e-3) -> np.ndarray:
    """Device axes that ``Teleop`` maps to ``action[:6]`` (the inverse mapping; used by the scripted
    human that plays a SpaceMouse). Entries below ``min_action`` stay at rest."""
    a = np.asarray(action, dtype=np.float64)[:6]
    d = np.clip(a / _scales(cfg), -1.0, 1.0)
    raw = np.where(np.abs(d) >= min_action, np.sign(d) * (cfg.deadband + np.abs(d) * (1.0 - cfg.deadband)), 0.0)
    axes = np.zeros(6)
    for i, src in enumerate(cfg.axis_map):
        axes[src] = raw[i] * cfg.axis_sign[i]
    return axes


class Teleop:
    """Device samples in; the human's action (while intervening) and labels out."""

    def __init__(self, cfg: TeleopConfig, clock: Callable[[], float] = time.monotonic) -> None:
        cfg.validate()
        self.cfg = cfg
        self.clock = clock
        self._axes = np.zeros(6)            # mapped, before deadband
        self._sample_time = -math.inf
        self._last_input = -math.inf
        self._buttons: tuple[int, ...] = ()
        self.gripper = float(cfg.initial_gripper)
        self.inputs = 0                     # samples that counted as input

    def update(self, sample: InputSample) -> list[str]:
        """Take one device sample; returns the labels it produced (``"success"``, ``"failure"``)."""
        cfg = self.cfg
        axes = np.asarray(sample.axes, dtype=np.float64)
        if axes.shape != (6,) or not np.all(np.isfinite(axes)):
            raise TeleopError(f"an input sample needs 6 finite axes ({', '.join(AXIS_NAMES)}), got {list(axes)}")
        self._axes = np.array([axes[cfg.axis_map[i]] * cfg.axis_sign[i] for i in range(6)])
        self._sample_time = sample.stamp
        events = set(sample.events)
        for name, idx in (("close", cfg.close_button), ("open", cfg.open_button),
                          ("success", cfg.success_button), ("failure", cfg.failure_button)):
            if idx >= 0 and _pressed(sample.buttons, idx) and not _pressed(self._buttons, idx):
                events.add(name)
        self._buttons = tuple(sample.buttons)
        if "close" in events:
            self.gripper = -1.0
        if "open" in events:
            self.gripper = 1.0
        if np.any(np.abs(self._axes) > cfg.deadband) or events & set(GRIPPER_EVENTS):
            self._last_input = sample.stamp
            self.inputs += 1
        return [label for label in LABELS if label in events]

    def intervening(self, now: float | None = None) -> bool:
        """The human is in control: input within the last ``hold_s`` seconds."""
        now = self.clock() if now is None else now
        return now - self._last_input < self.cfg.hold_s

    def action(self, now: float | None = None) -> np.ndarray | None:
        """The human's 7-entry action while intervening, else None (the policy acts)."""
        now = self.clock() if now is None else now
        if not self.intervening(now):
            return None
        axes = self._axes if now - self._sample_time <= self.cfg.input_timeout_s else np.zeros(6)
        a = np.zeros(7)
        a[:6] = np.clip(_scales(self.cfg) * apply_deadband(axes, self.cfg.deadband), -1.0, 1.0)
        a[6] = self.gripper
        return a


def _pressed(buttons: Sequence[int], idx: int) -> bool:
    return idx < len(buttons) and bool(buttons[idx])


# -- sources ----------------------------------------------------------------------------------------
def joy_sample(axes: Sequence[float], buttons: Sequence[int], stamp: float) -> InputSample:
    """A ``sensor_msgs/Joy`` reading (``/spacenav/joy``) as an InputSample; TeleopError if malformed."""
    if len(axes) < 6:
        raise TeleopError(f"Joy message has {len(axes)} axes; a SpaceMouse gives 6 "
                          f"({', '.join(AXIS_NAMES)})")
    a = np.asarray(list(axes)[:6], dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise TeleopError(f"Joy message has NaN or inf axes: {list(a)}")
    return InputSample(np.clip(a, -1.0, 1.0), tuple(int(b) for b in buttons), stamp)


class SpaceMouseSource:
    """A SpaceMouse read over HID with pyspacemouse; opening fails with a TeleopError saying why."""

    def __init__(self, device: str = "", opener: Callable[..., object] | None = None) -> None:
        try:
            import pyspacemouse
            from pyspacemouse import AxisConvention
        except ImportError as exc:  # pragma: no cover - installed in the venv
            raise TeleopError(f"pyspacemouse is not installed ({exc}); pip install pyspacemouse") from None
        open_ = opener or pyspacemouse.open
        try:
            self.dev = open_(device=device or None, axis_convention=AxisConvention.ROS)
        except Exception as exc:  # noqa: BLE001 - HID errors come as several types; all mean "no device"
            which = f"SpaceMouse {device!r}" if device else "a SpaceMouse"
            raise TeleopError(
                f"cannot open {which}: {exc} (is it plugged in? needs libhidapi and read/write access to "
                f"/dev/hidraw* (udev rule); or use input:=joy with spacenav_node, or input:=keyboard)") from None
        self._t = None

    def poll(self) -> InputSample | None:
        """Drain pending HID reports; the newest state, or None if nothing new arrived."""
        state = None
        for _ in range(64):  # each read() consumes at most one report
            s = self.dev.read()
            if s.t == self._t:
                break
            self._t, state = s.t, s
        if state is None:
            return None
        axes = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=np.float64)
        return InputSample(np.clip(axes, -1.0, 1.0), tuple(int(b) for b in state.buttons), time.monotonic())

    def close(self) -> None:
        self.dev.close()


#: key -> (action axis, direction)
KEYMAP = {"w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0),
          "j": (3, 1.0), "l": (3, -1.0), "i": (4, 1.0), "k": (4, -1.0), "q": (5, 1.0), "e": (5, -1.0)}


class KeyboardSource:
    """Terminal keys as a 6-axis device. Needs a TTY: stdin of a launched process is not one."""

    def __init__(self, cfg: TeleopConfig, fd: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        import termios
        import tty

        self.fd = 0 if fd is None else fd
        if not os.isatty(self.fd):
            raise TeleopError("keyboard input needs a terminal, but stdin is not a TTY (run the teleop node "
                              "in its own terminal with `ros2 run`, or use input:=joy / input:=spacemouse)")
        self.cfg = cfg
        self.clock = clock
        self._termios = termios
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)   # no line buffering, no echo; Ctrl-C still interrupts
        self._until = np.full(6, -math.inf)
        self._dir = np.zeros(6)
        self._was_live = False

    def poll(self) -> InputSample | None:
        """Keys typed since the last poll; None when nothing was typed and no key is deflecting."""
        now = self.clock()
        keys = ""
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 64)
            if not data:
                break
            keys += data.decode(errors="ignore")
        events = set()
        for k in keys.lower():
            if k in KEYMAP:
                axis, direction = KEYMAP[k]
                self._dir[axis] = direction
                self._until[axis] = now + self.cfg.key_hold_s
            elif k == "c":
                events.add("close")
            elif k == "o":
                events.add("open")
            elif k == self.cfg.success_key:
                events.add("success")
            elif k == self.cfg.failure_key:
                events.add("failure")
        live = self._until > now
        if not keys and not live.any() and not self._was_live:
            return None
        self._was_live = bool(live.any())  # one more sample at rest when the last key expires
        return InputSample(np.where(live, self._dir, 0.0), (), now, frozenset(events))

    def close(self) -> None:
        """Give the terminal its settings back."""
        self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, self._saved)


def describe_keys(cfg: TeleopConfig) -> str:
    """One line for the operator."""
    return (f"keys: w/s x, a/d y, r/f z, j/l roll, i/k pitch, q/e yaw, c close, o open, "
            f"{cfg.success_key} success, {cfg.failure_key} failure")

