"""TopicCamera against real sensor_msgs/Image publishers on realsense2_camera's colour topic.

A separate publisher process stands in for ``realsense2_camera`` (which needs a device): it
publishes 640x480 frames at 30 Hz on ``/camera/camera/color/image_raw``, as the real driver does
with its default launch. The TopicCamera runs in this test process in its own rclpy context.
"""
from __future__ import annotations

import sys
import textwrap
import time

import numpy as np
import pytest

from user_hal.devices.cameras import DEFAULT_TOPIC, CameraError, TopicCamera

PUBLISHER = textwrap.dedent('''
    """Publish deterministic 640x480 frames at a fixed rate, like realsense2_camera's colour stream."""
    import sys, time
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    sys.path.insert(0, sys.argv[4])
    from frames import make_frames

    topic, encoding, hz = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rclpy.init()
    node = rclpy.create_node("camera")
    pub = node.create_publisher(Image, topic, 2)
    frames = make_frames()
    msgs = []
    for f in frames:
        data = f[:, :, ::-1] if encoding == "bgr8" else f
        m = Image(height=480, width=640, encoding=encoding, step=640 * 3)
        m.header.frame_id = "camera_color_optical_frame"
        m.data = np.ascontiguousarray(data).tobytes()
        msgs.append(m)
    n = 0
    def tick():
        global n
        msg = msgs[n % len(msgs)]
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        n += 1
        if n == 1:
            print("publishing", flush=True)
    node.create_timer(1.0 / hz, tick)
    rclpy.spin(node)
''')

FRAMES = textwrap.dedent('''
    import numpy as np

    def make_frames(n=3, seed=11):
        """640x480 RGB frames: side bands of 255, centre square a 4x4 upscale of a 120x120 image."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            f = np.full((480, 640, 3), 255, dtype=np.uint8)
            f[:, 80:560] = np.kron(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8),
                                   np.ones((4, 4, 1), dtype=np.uint8))
            out.append(f)
        return out
''')


@pytest.fixture
def publisher_files(tmp_path):
    (tmp_path / "frames.py").write_text(FRAMES)
    (tmp_path / "camera_pub.py").write_text(PUBLISHER)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        import frames  # noqa: F401
        importlib.reload(frames)
        yield tmp_path, frames.make_frames()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("frames", None)


def _start_publisher(procs, files, encoding: str, hz: float = 30.0):
    path, _ = files
    p = procs.start(f"camera_pub_{encoding}", [sys.executable, str(path / "camera_pub.py"), DEFAULT_TOPIC,
                                               encoding, str(hz), str(path)])
    p.wait_for("publishing", timeout=30)
    return p


def _expected(frames):
    """The policy images the camera must produce: centre square 480x480 -> 120x120 (exact block means)."""
    return [f[::4, 80:560:4] for f in frames]


def _which(img, expected) -> int:
    hits = [i for i, e in enumerate(expected) if np.array_equal(img, e)]
    assert len(hits) == 1, "the camera image is not exactly one of the published frames, cropped and resized"
    return hits[0]


def test_topic_camera_receives_crops_resizes_and_reports_a_stall(ros_env, procs, publisher_files):
    import rclpy

    pub = _start_publisher(procs, publisher_files, "rgb8")
    expected = _expected(publisher_files[1])
    # Under full load on 2 cores, 0.9 MB frames have arrived over 1 s apart while the stream was alive:
    # the stall limit here leaves room for that, and the bound below still tells a stall from none.
    stall = 2.5
    cam = TopicCamera("side", out_size=(120, 120), stall_timeout_s=stall, start_timeout_s=20.0)
    default_ok = rclpy.ok()
    cam.start()
    try:
        # Its own context: the default one (the robot node's, in its process) is left alone.
        assert rclpy.ok() == default_ok and cam._context is not rclpy.get_default_context()
        assert cam.wait_ready(20.0), "no image received from the publisher process"
        seen = set()
        t0, n0 = time.monotonic(), cam.frames_received
        while time.monotonic() - t0 < 1.5:
            img = cam.latest()
            assert img.shape == (120, 120, 3) and img.dtype == np.uint8
            seen.add(_which(img, expected))
            time.sleep(0.05)
        rate = (cam.frames_received - n0) / (time.monotonic() - t0)
        # 30 Hz nominal; a loaded 2-core machine delivers fewer 0.9 MB frames to Python, but a stream.
        assert rate > 3.0, f"received only {rate:.1f} frames/s from a 30 Hz publisher"
        assert len(seen) >= 2  # the image follows the stream
        pub.stop()  # the camera driver dies
        t_stop = time.monotonic()
        while True:
            t_call = time.monotonic()
            try:
                cam.latest()
            except CameraError as exc:
                message = str(exc)
                break
            assert time.monotonic() - t_call < 0.3, "latest() blocked"
            assert time.monotonic() - t_stop < stall + 2.0, f"no CameraError within {stall + 2.0} s of the stop"
            time.sleep(0.02)
        assert time.monotonic() - t_stop < stall + 1.0  # stall_timeout_s, plus slack
        assert "topic /camera/camera/color/image_raw" in message and "stalled" in message
        assert "'side'" in message and f"(stall_timeout_s {stall:g})" in message
    finally:
        t0 = time.monotonic()
        cam.close()
        assert time.monotonic() - t0 < 3.0


def test_topic_camera_converts_bgr8(ros_env, procs, publisher_files):
    _start_publisher(procs, publisher_files, "bgr8")
    expected = _expected(publisher_files[1])
    cam = TopicCamera("side", out_size=(120, 120), start_timeout_s=20.0)
    cam.start()
    try:
        assert cam.wait_ready(20.0)
        _which(cam.latest(), expected)  # RGB again, exactly
    finally:
        cam.close()


def test_topic_camera_rejects_other_encodings(ros_env, ros_node):
    from sensor_msgs.msg import Image

    pub = ros_node.create_publisher(Image, "/cam/mono/image_raw", 2)
    msg = Image(height=4, width=4, encoding="mono8", step=4, data=bytes(16))
    timer = ros_node.create_timer(1.0 / 30.0, lambda: pub.publish(msg))
    cam = TopicCamera("side", topic="/cam/mono/image_raw", start_timeout_s=15.0)
    cam.start()
    try:
        with pytest.raises(CameraError, match="topic /cam/mono/image_raw.*unsupported image encoding 'mono8'"):
            cam.latest()
    finally:
        cam.close()
        ros_node.destroy_timer(timer)


def test_topic_camera_without_publisher_times_out_with_a_hint(ros_env):
    cam = TopicCamera("side", start_timeout_s=0.5)
    cam.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(CameraError, match="topic /camera/camera/color/image_raw\\): no frame within 0.5 s "
                                              "of start \\(no publisher on it"):
            cam.latest()
        assert time.monotonic() - t0 < 1.0
    finally:
        cam.close()


def test_robot_node_publishes_a_topic_camera_next_to_the_simulated_one(ros_env, procs, ros_node, publisher_files,
                                                                         tmp_path):
    """The profile's camera_sources feed the robot node's observations: 'side' from the image topic
    (as realsense2_camera publishes it), 'wrist' rendered by the simulator."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from user_msgs.msg import Observation

    from hal_helpers import node_cmd, profile_with

    _start_publisher(procs, publisher_files, "rgb8")
    expected = _expected(publisher_files[1])
    prof = profile_with(tmp_path, **{"robot.cameras": ["wrist", "side"], "robot.image_size": [120, 120],
                                     "camera_sources": {"side": {"kind": "topic", "topic": DEFAULT_TOPIC}}})
    got: list = []
    ros_node.create_subscription(Observation, "/franka_0/observation", got.append,
                                 QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
    procs.start("robot", node_cmd("robot_node", {"robot_id": "franka_0", "profile": str(prof),
                                                 "realtime_factor": 1.0}))
    end = time.monotonic() + 60
    while len(got) < 5 and time.monotonic() < end:
        time.sleep(0.1)
    assert len(got) >= 5, "the robot node published no observations"
    o = got[-1]
    assert list(o.camera_names) == ["wrist", "side"]
    side = np.frombuffer(bytes(o.images[1].data), np.uint8).reshape(120, 120, 3)
    _which(side, expected)   # exactly a published frame, cropped and resized
    wrist = np.frombuffer(bytes(o.images[0].data), np.uint8).reshape(120, 120, 3)
    assert wrist.std() > 1.0, "the simulated wrist camera renders a scene"
