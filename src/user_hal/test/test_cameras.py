"""Tests of the camera sources (no ROS): crop/resize exactness, the capture loop's stall handling,
RealSense device selection through the real pyrealsense2, profile parsing and the camera rig.

The capture loop of ``RealSenseCamera`` is fed by a frame reader returned from ``_open``; the tests
replace only ``_open`` (no RealSense device here) and keep the real loop, store and stall logic.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image

from user_hal.devices import cameras
from user_hal.devices.cameras import (CameraError, CameraRig, RealSenseCamera, TopicCamera, _area_axis, area_resize,
                              centre_square, check_crop, crop_and_resize, image_msg_to_rgb, make_camera_sources,
                              realsense_serials)
from user_common.config_schema import ConfigError

RNG = np.random.default_rng(7)


def _rand(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_area(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Brute-force area resize in float64: per output pixel, overlap-weighted mean of input pixels."""
    h, w = img.shape[:2]
    sy, sx = h / out_h, w / out_w
    out = np.zeros((out_h, out_w, img.shape[2]))
    for i in range(out_h):
        y0, y1 = i * sy, (i + 1) * sy
        for j in range(out_w):
            x0, x1 = j * sx, (j + 1) * sx
            acc = np.zeros(img.shape[2])
            for y in range(int(np.floor(y0)), min(h, int(np.ceil(y1)))):
                wy = min(y1, y + 1) - max(y0, y)
                for x in range(int(np.floor(x0)), min(w, int(np.ceil(x1)))):
                    wx = min(x1, x + 1) - max(x0, x)
                    acc += wy * wx * img[y, x]
            out[i, j] = acc / (sy * sx)
    return out


# --- pixels --------------------------------------------------------------------------------------


def test_centre_square_and_crop_checks():
    assert centre_square(640, 480) == (80, 0, 480, 480)
    assert centre_square(480, 640) == (0, 80, 480, 480)
    assert centre_square(100, 100) == (0, 0, 100, 100)
    assert check_crop([10, 20, 30, 40], 640, 480) == (10, 20, 30, 40)
    for bad in ([600, 0, 100, 100], [0, 0, 0, 10], [-1, 0, 10, 10], [0, 400, 10, 100]):
        with pytest.raises(ValueError, match="does not fit in the 640x480 frame"):
            check_crop(bad, 640, 480)


def test_area_resize_known_values():
    row = np.array([[0, 90, 180]], dtype=np.uint8)[:, :, None].repeat(3, axis=2)
    # 3 -> 2 pixels: each output covers 1.5 inputs: (0 + 0.5*90)/1.5 = 30, (0.5*90 + 180)/1.5 = 150
    assert area_resize(row, 2, 1)[0, :, 0].tolist() == [30, 150]
    assert area_resize(row.transpose(1, 0, 2), 1, 2)[:, 0, 0].tolist() == [30, 150]
    # 2x2 block means, e.g. (10 + 20 + 30 + 41) / 4 = 25.25 -> 25
    img = np.array([[10, 20, 0, 0], [30, 41, 0, 4]], dtype=np.uint8)[:, :, None].repeat(3, axis=2)
    assert area_resize(img, 2, 1)[0, :, 1].tolist() == [25, 1]


@pytest.mark.parametrize("fy,fx", [(4, 4), (3, 5), (2, 7), (1, 3)])
def test_area_resize_integer_factors_give_block_means_exactly(fy, fx):
    small = _rand(32, 24)
    big = np.kron(small, np.ones((fy, fx, 1), dtype=np.uint8))  # every block constant
    out = area_resize(big, 24, 32)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, small)


@pytest.mark.parametrize("shape,out", [((48, 48), (13, 13)), ((30, 40), (16, 12)), ((10, 9), (4, 7)),
                                       ((5, 6), (9, 11))])
def test_area_resize_matches_brute_force_reference(shape, out):
    img = _rand(*shape)
    ref = _reference_area(img, *out)
    got_float = _area_axis(_area_axis(img, 0, out[1]), 1, out[0])
    np.testing.assert_allclose(got_float, ref, atol=2e-3)
    got = area_resize(img, *out)
    clear = np.abs(ref - np.floor(ref) - 0.5) > 1e-2  # away from rounding ties
    np.testing.assert_array_equal(got[clear], np.rint(ref[clear]).astype(np.uint8))
    assert np.abs(got.astype(int) - ref).max() <= 0.51


def test_crop_and_resize_default_centre_square_640x480():
    centre = _rand(120, 120)
    frame = np.full((480, 640, 3), 255, dtype=np.uint8)  # side bands would brighten any wrong crop
    frame[:, 80:560] = np.kron(centre, np.ones((4, 4, 1), dtype=np.uint8))
    np.testing.assert_array_equal(crop_and_resize(frame, None, (120, 120)), centre)
    # 480 -> 128 (factor 3.75): still the area mean, compared with the brute-force reference
    small = crop_and_resize(frame[:96, :128], None, (20, 20))  # 128x96 -> centre 96x96 at x=16
    ref = _reference_area(frame[:96, 16:112], 20, 20)
    assert np.abs(small.astype(int) - ref).max() <= 0.51


def test_crop_and_resize_explicit_crop_and_errors():
    pattern = _rand(16, 32)  # out_size (32, 16): width 32, height 16
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    frame[100:164, 200:328] = np.kron(pattern, np.ones((4, 4, 1), dtype=np.uint8))
    out = crop_and_resize(frame, (200, 100, 128, 64), (32, 16))
    assert out.shape == (16, 32, 3)
    np.testing.assert_array_equal(out, pattern)
    with pytest.raises(ValueError, match="does not fit"):
        crop_and_resize(frame, (600, 0, 100, 100), (32, 32))
    with pytest.raises(ValueError, match="uint8"):
        crop_and_resize(frame.astype(np.float32), None, (32, 32))


def _msg(img: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = img.shape[:2]
    rows = np.zeros((h, w * 3 + pad), dtype=np.uint8)
    rows[:, : w * 3] = img.reshape(h, w * 3)
    return Image(height=h, width=w, encoding=encoding, step=w * 3 + pad, data=rows.tobytes())


def test_image_msg_to_rgb_encodings():
    rgb = _rand(6, 5)
    np.testing.assert_array_equal(image_msg_to_rgb(_msg(rgb, "rgb8")), rgb)
    np.testing.assert_array_equal(image_msg_to_rgb(_msg(rgb, "rgb8", pad=7)), rgb)  # row padding
    bgr = rgb[:, :, ::-1].copy()
    np.testing.assert_array_equal(image_msg_to_rgb(_msg(bgr, "bgr8", pad=3)), rgb)
    with pytest.raises(ValueError, match="unsupported image encoding 'mono8'"):
        image_msg_to_rgb(Image(height=2, width=2, encoding="mono8", step=2, data=bytes(4)))
    short = _msg(rgb, "rgb8")
    short.data = short.data[:-1]
    with pytest.raises(ValueError, match="expected step \\* height"):
        image_msg_to_rgb(short)


# --- the capture loop, fed by a function ---------------------------------------------------------


class FedCamera(RealSenseCamera):
    """A RealSenseCamera whose device is a frame reader function (everything else is real)."""

    def __init__(self, reader, name: str = "wrist", **kw):
        kw.setdefault("serial", "233622079999")
        super().__init__(name, **kw)
        self.reader = reader

    def _open(self):
        return self.reader


class Producer:
    """A 30 fps frame producer for the capture loop; ``stall()`` stops frames, ``wedge()`` blocks reads."""

    def __init__(self, frames, fps: float = 30.0):
        self.frames, self.period = frames, 1.0 / fps
        self.n = 0
        self.stalled = threading.Event()
        self.wedged = threading.Event()
        self.release = threading.Event()
        self.error: Exception | None = None

    def __call__(self, timeout: float):
        if self.wedged.is_set():
            self.release.wait()  # a driver call that ignores its timeout
            return None
        if self.error is not None:
            raise self.error
        if self.stalled.is_set():
            time.sleep(timeout)  # like try_wait_for_frames timing out
            return None
        time.sleep(self.period)
        frame = self.frames[self.n % len(self.frames)]
        self.n += 1
        return frame


def _frames(n: int = 3) -> list[np.ndarray]:
    """640x480 frames whose centre 480x480 square is a 4x4 upscale of a known 120x120 image."""
    out = []
    for _ in range(n):
        f = np.zeros((480, 640, 3), dtype=np.uint8)
        f[:, 80:560] = np.kron(_rand(120, 120), np.ones((4, 4, 1), dtype=np.uint8))
        out.append(f)
    return out


def test_capture_loop_delivers_the_newest_frame_cropped_and_resized():
    frames = _frames(3)
    cam = FedCamera(Producer(frames), out_size=(120, 120), stall_timeout_s=0.5)
    cam.start()
    try:
        img = cam.latest()  # waits (bounded) for the first frame
        assert img.shape == (120, 120, 3) and not img.flags.writeable
        matches = [i for i, f in enumerate(frames) if np.array_equal(img, f[::4, 80:560:4])]
        assert len(matches) == 1
        n0 = cam.frames_received
        time.sleep(0.35)
        assert cam.frames_received >= n0 + 3  # ~30 fps: about 10 in 0.35 s
        assert cam.frame_age() < 0.3
    finally:
        cam.close()
    with pytest.raises(CameraError, match="not started"):
        cam.latest()


def test_stalled_camera_raises_naming_the_serial_without_blocking():
    prod = Producer(_frames(1))
    cam = FedCamera(prod, stall_timeout_s=0.4)
    cam.start()
    try:
        cam.latest()
        prod.stalled.set()
        t_stall = time.monotonic()
        while True:
            t0 = time.monotonic()
            try:
                cam.latest()
            except CameraError as exc:
                message = str(exc)
                break
            assert time.monotonic() - t0 < 0.2, "latest() blocked"  # blocking would mean seconds
            assert time.monotonic() - t_stall < 2.0, "no CameraError within 2 s of the stall"
            time.sleep(0.02)
        waited = time.monotonic() - t_stall
        assert 0.3 <= waited <= 0.4 + 0.3, waited  # the last frame was fresh until stall_timeout_s
        assert "233622079999" in message and "stalled" in message and "'wrist'" in message
        t0 = time.monotonic()
        with pytest.raises(CameraError, match="233622079999"):
            cam.latest()
        assert time.monotonic() - t0 < 0.2
        prod.stalled.clear()  # frames again: the camera recovers by itself
        time.sleep(0.2)
        assert cam.latest().shape == (128, 128, 3)
    finally:
        cam.close()


def test_wedged_driver_call_neither_hangs_latest_nor_close():
    prod = Producer(_frames(1))
    cam = FedCamera(prod, stall_timeout_s=0.3)
    cam.start()
    try:
        cam.latest()
        prod.wedged.set()
        time.sleep(0.5)
        t0 = time.monotonic()
        with pytest.raises(CameraError, match=r"233622079999\) stalled"):
            cam.latest()
        assert time.monotonic() - t0 < 0.2
    finally:
        t0 = time.monotonic()
        cam.close()
        assert time.monotonic() - t0 < 2.0
        prod.release.set()


def test_no_first_frame_and_device_errors_are_camera_errors():
    prod = Producer(_frames(1))
    prod.stalled.set()
    cam = FedCamera(prod, start_timeout_s=0.3)
    cam.start()
    try:
        assert not cam.wait_ready(0.1)
        t0 = time.monotonic()
        with pytest.raises(CameraError, match=r"RealSense 233622079999\): no frame within 0.3 s of start"):
            cam.latest()
        assert time.monotonic() - t0 < 0.6
    finally:
        cam.close()
    prod = Producer(_frames(1))
    prod.error = RuntimeError("USB device disconnected")
    cam = FedCamera(prod)
    cam.start()
    try:
        with pytest.raises(CameraError, match="233622079999.*capture failed: RuntimeError: USB device disconnected"):
            cam.latest()
    finally:
        cam.close()
    wrong = Producer([np.zeros((240, 320, 3), dtype=np.uint8)])
    cam = FedCamera(wrong)
    cam.start()
    try:
        with pytest.raises(CameraError, match=r"expected \(480, 640, 3\)"):
            cam.latest()
    finally:
        cam.close()


def test_constructor_checks():
    with pytest.raises(ValueError, match="fps must be one of"):
        RealSenseCamera("wrist", "1", fps=60)
    with pytest.raises(ValueError, match="does not fit in the 640x480"):
        RealSenseCamera("wrist", "1", crop=(0, 0, 641, 10))
    with pytest.raises(ValueError, match="absolute topic"):
        TopicCamera("side", topic="camera/color")


# --- the real pyrealsense2 -------------------------------------------------------------------------


def test_missing_serial_lists_the_connected_serials():
    found = realsense_serials()  # the real SDK query
    cam = RealSenseCamera("wrist", "000000000042")
    with pytest.raises(CameraError) as err:
        cam.start()
    msg = str(err.value)
    assert "no RealSense with serial 000000000042" in msg
    assert f"found: {', '.join(found) if found else 'none'}" in msg


def test_missing_serial_message_with_devices(monkeypatch):
    monkeypatch.setattr(cameras, "realsense_serials", lambda: ["111122223333", "444455556666"])
    with pytest.raises(CameraError, match="serial 000000000042 is connected; found: 111122223333, 444455556666"):
        RealSenseCamera("wrist", "000000000042").start()


def test_realsense_device_stream():
    import pyrealsense2 as rs

    serials = realsense_serials()
    if not serials:
        pytest.skip(f"no RealSense device connected (pyrealsense2 {rs.__version__} found 0 devices)")
    cam = RealSenseCamera("wrist", serials[0], fps=30, out_size=(128, 128))
    cam.start()
    try:
        assert cam.wait_ready(10.0)
        img = cam.latest()
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        n = cam.frames_received
        time.sleep(0.5)
        assert cam.frames_received > n + 5
    finally:
        cam.close()


# --- configuration -------------------------------------------------------------------------------


def test_make_camera_sources():
    srcs = make_camera_sources({
        "wrist": {"kind": "realsense", "serial": "123622270802", "fps": 15, "crop": [100, 0, 400, 400]},
        "side": {"kind": "topic", "topic": "/cam2/color/image_raw", "stall_timeout_s": 0.5},
        "front": {"kind": "topic"},
    }, out_size=(96, 64))
    assert list(srcs) == ["wrist", "side", "front"]
    w, s, f = srcs["wrist"], srcs["side"], srcs["front"]
    assert isinstance(w, RealSenseCamera) and (w.serial, w.fps, w.crop, w.out_size) == (
        "123622270802", 15, (100, 0, 400, 400), (96, 64))
    assert isinstance(s, TopicCamera) and (s.topic, s.stall_timeout_s, s.name) == ("/cam2/color/image_raw", 0.5, "side")
    assert f.topic == "/camera/camera/color/image_raw" and f.crop is None
    assert w.where == "RealSense 123622270802" and s.where == "topic /cam2/color/image_raw"
    assert make_camera_sources(None) == {} and make_camera_sources({}) == {}


@pytest.mark.parametrize("config,key,problem", [
    ({"wrist": {"serial": "1"}}, "camera_sources.wrist.kind", "required key is missing (one of: realsense, topic)"),
    ({"wrist": {"kind": "usb"}}, "camera_sources.wrist.kind", "unknown camera kind 'usb'"),
    ({"wrist": {"kind": "realsense"}}, "camera_sources.wrist.serial", "required key is missing"),
    ({"wrist": {"kind": "realsense", "serial": 123622270802}}, "camera_sources.wrist.serial", "quote the serial"),
    ({"wrist": {"kind": "realsense", "serial": "1", "fps": 60}}, "camera_sources.wrist.fps", "one of 15, 30"),
    ({"wrist": {"kind": "realsense", "serial": "1", "exposure": 3}}, "camera_sources.wrist.exposure", "unknown key"),
    ({"wrist": {"kind": "realsense", "serial": "1", "crop": [0, 0, 700, 10]}}, "camera_sources.wrist.crop",
     "does not fit in the 640x480 frame"),
    ({"wrist": {"kind": "realsense", "serial": "1", "crop": [0, 0, 10]}}, "camera_sources.wrist.crop",
     "expected 4 values"),
    ({"side": {"kind": "topic", "topic": "camera/image"}}, "camera_sources.side.topic", "absolute topic name"),
    ({"side": {"kind": "topic", "stall_timeout_s": 0}}, "camera_sources.side.stall_timeout_s", "must be > 0"),
    ({"side": "realsense"}, "camera_sources.side", "expected a mapping with 'kind'"),
    (["wrist"], "camera_sources", "expected a mapping of camera name"),
])
def test_make_camera_sources_errors_name_the_key(config, key, problem):
    with pytest.raises(ConfigError) as err:
        make_camera_sources(config, source="cell.yaml")
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value) and str(err.value).startswith(f"cell.yaml: {key}: ")


# --- the rig -------------------------------------------------------------------------------------


class ListBackend:
    """Minimal stand-in for a backend's camera part (``camera_names``/``render``)."""

    name = "stub"

    def __init__(self, frames):
        self.frames = frames
        self.renders = 0

    def camera_names(self):
        return list(self.frames)

    def render(self):
        self.renders += 1
        return dict(self.frames)


def test_rig_merges_backend_and_external_cameras():
    sim_side = _rand(128, 128)
    backend = ListBackend({"side": sim_side, "top": _rand(128, 128)})
    frames = _frames(1)
    rig = CameraRig(backend, {"wrist": FedCamera(Producer(frames))}, camera_names=["wrist", "side"],
                    image_size=(128, 128))
    assert rig.camera_names() == ["wrist", "side"]
    rig.start()
    try:
        out = rig.render()
        assert list(out) == ["wrist", "side"]
        np.testing.assert_array_equal(out["side"], sim_side)
        np.testing.assert_array_equal(out["wrist"], crop_and_resize(frames[0], None, (128, 128)))
    finally:
        rig.close()
    # only external cameras: the backend is not asked to render
    backend2 = ListBackend({})
    rig = CameraRig(backend2, {"wrist": FedCamera(Producer(frames))})
    rig.start()
    try:
        assert list(rig.render()) == ["wrist"] and backend2.renders == 0
    finally:
        rig.close()


def test_rig_errors_name_the_camera():
    backend = ListBackend({"side": _rand(128, 128)})
    with pytest.raises(ValueError, match="'wrist' not listed in the robot's cameras"):
        CameraRig(backend, {"wrist": FedCamera(Producer(_frames(1)))}, camera_names=["side"])
    rig = CameraRig(backend, {}, camera_names=["side", "front"])
    with pytest.raises(CameraError, match="'front' are neither rendered by the stub backend \\(it has: side\\)"):
        rig.start()
    stalled = Producer(_frames(1))
    stalled.stalled.set()
    rig = CameraRig(backend, {"wrist": FedCamera(stalled, start_timeout_s=0.3)}, camera_names=["wrist", "side"])
    t0 = time.monotonic()
    with pytest.raises(CameraError, match="'wrist' \\(RealSense 233622079999\\): no frame within 0.3 s"):
        rig.start()
    assert time.monotonic() - t0 < 1.5
    rig = CameraRig(backend, {}, camera_names=["side"], image_size=(64, 64))
    rig.start()
    with pytest.raises(CameraError, match="'side': frame shape \\(128, 128, 3\\) differs from image_size"):
        rig.render()


def test_rig_with_the_simulated_backend():
    from user_hal.backends.sim.franka_sim import SimFrankaBackend

    sim = SimFrankaBackend(cameras=("wrist",), image_width=128, image_height=128)
    sim.start()
    rig = CameraRig(sim, {"side": FedCamera(Producer(_frames(1)), name="side")}, camera_names=["wrist", "side"],
                    image_size=(128, 128))
    try:
        rig.start()
        out = rig.render()
        assert list(out) == ["wrist", "side"]
        assert out["wrist"].shape == (128, 128, 3) and out["wrist"].std() > 5  # a rendered scene
        np.testing.assert_array_equal(out["side"], crop_and_resize(_frames_cache(rig), None, (128, 128)))
    finally:
        rig.close()
        sim.close()


def _frames_cache(rig: CameraRig) -> np.ndarray:
    return rig.sources["side"].reader.frames[0]
