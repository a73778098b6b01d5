"""The teleop core without ROS: mapping, deadband, hold, labels, and the three input sources."""
import os
import subprocess
import sys
import termios
import time
import types

import numpy as np
import pytest

from user_hal.devices.teleop import (InputSample, KeyboardSource, SpaceMouseSource, Teleop, TeleopConfig, TeleopError,
                             apply_deadband, device_axes_for_action, joy_sample)


def sample(axes=(0, 0, 0, 0, 0, 0), buttons=(), t=0.0, events=()):
    return InputSample(np.array(axes, dtype=float), tuple(buttons), t, frozenset(events))


def test_deadband_zeroes_small_input_and_rescales_the_rest():
    out = apply_deadband(np.array([0.05, -0.1, 0.55, -1.0, 1.5, 0.1001]), 0.1)
    assert np.allclose(out, [0.0, 0.0, 0.5, -1.0, 1.0, 0.0001 / 0.9])


def test_axes_map_to_a_scaled_action_with_axis_map_and_signs():
    cfg = TeleopConfig(scale=0.5, rotation_scale=0.25, deadband=0.0, axis_map=(1, 0, 2, 3, 4, 5),
                       axis_sign=(1.0, -1.0, 1.0, 1.0, 1.0, 1.0))
    t = Teleop(cfg, clock=lambda: 0.0)
    t.update(sample([0.2, 0.8, 1.0, 1.0, 0, -0.4], t=0.0))
    a = t.action(0.0)
    # action x <- device y; action y <- -device x; rotations scaled by 0.25; gripper closed
    assert np.allclose(a, [0.4, -0.1, 0.5, 0.25, 0.0, -0.1, -1.0])


def test_input_above_the_deadband_overrides_for_hold_s_after_the_last_input():
    t = Teleop(TeleopConfig(hold_s=1.0, deadband=0.1))
    assert t.action(0.0) is None and not t.intervening(0.0)
    t.update(sample([0.05, 0, 0, 0, 0, 0.09], t=0.0))  # inside the deadband: not input
    assert not t.intervening(0.01)
    t.update(sample([1.0, 0, 0, 0, 0, 0], t=1.0))
    assert t.intervening(1.0) and t.action(1.0)[0] == pytest.approx(1.0)
    t.update(sample(t=1.2))                             # puck released: the human still holds control...
    a = t.action(1.5)
    assert a is not None and np.allclose(a[:6], 0.0)   # ...with zero motion
    assert t.intervening(1.99) and t.action(2.01) is None  # hold_s after the last *input*, then the policy


def test_a_stale_sample_never_keeps_the_robot_moving():
    t = Teleop(TeleopConfig(hold_s=5.0, input_timeout_s=0.5))
    t.update(sample([0, 1.0, 0, 0, 0, 0], t=0.0))
    assert t.action(0.4)[1] > 0.9
    a = t.action(0.6)   # no new sample (device unplugged, publisher died): at rest, human still in control
    assert a is not None and np.allclose(a[:6], 0.0)


def test_buttons_drive_the_gripper_and_labels_on_rising_edges_only():
    cfg = TeleopConfig(close_button=0, open_button=1, success_button=2, failure_button=3)
    t = Teleop(cfg)
    assert t.update(sample(buttons=[0, 1, 0, 0], t=0.0)) == []
    assert t.gripper == 1.0 and t.intervening(0.1), "a gripper press is input"
    t.update(sample(buttons=[1, 0, 0, 0], t=0.1))
    assert t.gripper == -1.0 and t.action(0.1)[6] == -1.0
    assert t.update(sample(buttons=[0, 0, 1, 0], t=0.2)) == ["success"]
    assert t.update(sample(buttons=[0, 0, 1, 0], t=0.3)) == [], "a held button labels once"
    assert t.update(sample(buttons=[0, 0, 0, 0], t=0.4)) == []
    assert t.update(sample(buttons=[0, 0, 0, 1], t=0.5)) == ["failure"]
    assert t.update(sample(t=0.6, events={"success"})) == ["success"]


def test_label_buttons_alone_do_not_start_an_intervention():
    t = Teleop(TeleopConfig(close_button=-1, open_button=-1, success_button=0))
    assert t.update(sample(buttons=[1], t=0.0)) == ["success"]
    assert not t.intervening(0.01)


@pytest.mark.parametrize("kw, words", [
    ({"deadband": 1.0}, "deadband: must be in [0, 1)"),
    ({"hold_s": 0.0}, "hold_s: must be a number > 0"),
    ({"axis_map": (0, 0, 1, 2, 3, 4)}, "axis_map: must be a permutation"),
    ({"axis_sign": (1.0, 2.0, 1.0, 1.0, 1.0, 1.0)}, "axis_sign"),
    ({"success_button": 1}, "buttons must differ"),
    ({"success_key": "w"}, "success_key: must be one key not used"),
])
def test_bad_config_is_one_clear_error(kw, words):
    with pytest.raises(TeleopError) as e:
        Teleop(TeleopConfig(**kw))
    assert words in str(e.value)


def test_the_inverse_mapping_reproduces_an_action():
    cfg = TeleopConfig(scale=0.8, rotation_scale=0.5, deadband=0.12, axis_map=(2, 0, 1, 3, 5, 4),
                       axis_sign=(-1.0, 1.0, 1.0, 1.0, -1.0, 1.0))
    want = np.array([0.3, -0.7, 0.0, 0.1, -0.05, 0.4])
    t = Teleop(cfg)
    t.update(InputSample(device_axes_for_action(want, cfg), (), 0.0))
    assert np.allclose(t.action(0.0)[:6], want, atol=1e-9)


def test_joy_messages_are_checked():
    s = joy_sample([0.1, 0.2, 0.3, 0.4, 0.5, 2.0, 9.0], [0, 1], 3.0)
    assert np.allclose(s.axes, [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]) and s.buttons == (0, 1) and s.stamp == 3.0
    with pytest.raises(TeleopError, match="Joy message has 3 axes; a SpaceMouse gives 6"):
        joy_sample([0.0, 0.0, 0.0], [], 0.0)
    with pytest.raises(TeleopError, match="NaN or inf"):
        joy_sample([0.0, float("nan"), 0, 0, 0, 0], [], 0.0)
    with pytest.raises(TeleopError, match="6 finite axes"):
        Teleop(TeleopConfig()).update(sample([0.0, float("inf"), 0, 0, 0, 0]))


# -- keyboard ---------------------------------------------------------------------------------------
def test_keyboard_needs_a_tty():
    r, w = os.pipe()
    try:
        with pytest.raises(TeleopError, match="stdin is not a TTY"):
            KeyboardSource(TeleopConfig(), fd=r)
    finally:
        os.close(r)
        os.close(w)


def test_keyboard_keys_move_axes_and_label_in_a_real_terminal():
    master, slave = os.openpty()
    now = [10.0]
    try:
        before = termios.tcgetattr(slave)
        kb = KeyboardSource(TeleopConfig(key_hold_s=0.25), fd=slave, clock=lambda: now[0])
        assert not termios.tcgetattr(slave)[3] & termios.ICANON, "stdin must be read unbuffered (cbreak)"
        assert kb.poll() is None
        os.write(master, b"wd")
        time.sleep(0.05)
        s = kb.poll()
        assert np.allclose(s.axes, [1.0, -1.0, 0, 0, 0, 0]) and not s.events
        now[0] += 0.1
        assert np.allclose(kb.poll().axes[:2], [1.0, -1.0]), "a key deflects its axis for key_hold_s"
        now[0] += 0.2
        assert np.allclose(kb.poll().axes, 0.0), "then one sample at rest"
        assert kb.poll() is None
        os.write(master, b"cyn")
        time.sleep(0.05)
        assert kb.poll().events == {"close", "success", "failure"}
        kb.close()
        assert termios.tcgetattr(slave)[3] == before[3], "the terminal settings must be restored"
    finally:
        os.close(master)
        os.close(slave)


# -- SpaceMouse -------------------------------------------------------------------------------------
def test_spacemouse_open_failure_is_one_clear_error():
    def no_device(**_):
        raise RuntimeError("No connected or supported devices found.")

    with pytest.raises(TeleopError) as e:
        SpaceMouseSource(opener=no_device)
    msg = str(e.value)
    assert "cannot open a SpaceMouse: No connected or supported devices found." in msg and "hidraw" in msg


def test_spacemouse_reports_are_drained_into_one_sample():
    states = [types.SimpleNamespace(t=t, x=x, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=-0.5, buttons=[0, 1])
              for t, x in ((1.0, 0.1), (2.0, 0.2), (3.0, 0.3))]

    class FakeDevice:
        def __init__(self):
            self.i = 0
            self.closed = False

        def read(self):
            s = states[min(self.i, len(states) - 1)]
            self.i += 1
            return s

        def close(self):
            self.closed = True

    dev = FakeDevice()
    src = SpaceMouseSource(opener=lambda **kw: dev)
    s = src.poll()
    assert np.allclose(s.axes, [0.3, 0, 0, 0, 0, -0.5]) and s.buttons == (0, 1)
    assert src.poll() is None, "no new report: nothing new"
    src.close()
    assert dev.closed


def test_a_real_spacemouse_opens_when_one_is_plugged_in():
    try:
        src = SpaceMouseSource()
    except TeleopError as exc:
        pytest.skip(f"no SpaceMouse on this machine: {exc}")
    try:
        src.poll()
    finally:
        src.close()


def test_teleop_node_without_a_device_exits_with_one_line():
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="OFF")  # no DDS peers needed
    r = subprocess.run([sys.executable, "-m", "user_hal.teleop_node", "--ros-args", "-p", "input:=spacemouse"],
                       capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    if r.returncode == 0:
        pytest.skip("a SpaceMouse is plugged in")
    err = r.stderr.strip()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert "input: spacemouse: cannot open a SpaceMouse" in err, err
    r = subprocess.run([sys.executable, "-m", "user_hal.teleop_node", "--ros-args", "-p", "input:=keyboard"],
                       capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "stdin is not a TTY" in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- the scripted human's schedule ------------------------------------------------------------------
def test_step_ranges_parse_and_reject_garbage():
    from user_hal.tasks.experts import parse_step_ranges

    assert parse_step_ranges("5-19, 40-,7") == [(5, 19), (40, None), (7, 7)]
    for bad in ("", "a-3", "9-2", "-4"):
        with pytest.raises(ValueError, match="expected comma-separated step ranges"):
            parse_step_ranges(bad)


def test_the_scripted_human_takes_over_every_nth_episode_in_its_steps():
    from user_hal.tasks.experts import HumanSchedule

    h = HumanSchedule([(2, 3), (6, None)], every_n=2)
    on = {ep: [s for s in range(9) if h.active(ep, s, 0.1)] for ep in (100, 200, 300)}
    assert on == {100: [2, 3, 6, 7, 8], 200: [], 300: [2, 3, 6, 7, 8]}


def test_the_scripted_human_takes_over_when_the_policy_is_stuck():
    from user_hal.tasks.experts import HumanSchedule

    h = HumanSchedule([(0, None)], stuck_steps=4)
    progress = [0.10, 0.09, 0.08, 0.07]           # the policy gets closer: no takeover
    stuck = [0.069, 0.071, 0.068, 0.07, 0.069]    # no 5 mm progress for 4 steps: the human takes over
    flags = [h.active(1, s, d) for s, d in enumerate(progress + stuck)]
    assert flags == [False] * 7 + [True, True], flags
    assert h.active(1, 9, 0.01), "once stuck, the human keeps the rest of the episode"
    assert not h.active(2, 0, 0.07), "a new episode starts with the policy"
