"""External cameras for a robot cell: Intel RealSense devices and realsense2_camera image topics.

A simulated backend renders its own cameras (``RobotBackend.render``); a real cell's cameras are
separate devices. This module gives both the same shape:

- ``CameraSource``: ``start()``, ``latest()`` -> the newest frame as ``(H, W, 3)`` uint8 RGB at the
  policy resolution, ``close()``; ``name`` is the profile's camera name and ``where`` names the
  device (``RealSense 123456789012``) or the topic for messages.
- ``RealSenseCamera``: a RealSense colour stream opened with pyrealsense2 by serial number. A
  capture thread keeps only the newest frame.
- ``TopicCamera``: a ``sensor_msgs/Image`` topic published by ``realsense2_camera`` (or anything
  speaking rgb8/bgr8), received in its own rclpy context, node and executor thread, so it can live
  inside the robot node's process without touching the default context.
- ``CameraRig``: what the robot node calls instead of ``backend.render()``: the backend's own
  cameras merged with external sources, keyed by the profile's camera names.
- ``make_camera_sources``: builds sources from a profile mapping such as::

      camera_sources:
        wrist: {kind: realsense, serial: "123456789012", fps: 30}
        side:  {kind: topic, topic: /camera/camera/color/image_raw}

Every source crops the raw frame (``crop: [x, y, w, h]``, default the largest centred square) and
resizes it to the policy resolution with exact area averaging (numpy only, no OpenCV). A camera
that delivers no new frame for ``stall_timeout_s`` makes ``latest()`` raise ``CameraError`` naming
its serial or topic at once -- a stalled camera never blocks the control loop.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import os
import re
import threading
import time
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np

from user_common.config_schema import ConfigError, load_dataclass, positive

#: The colour image topic of ``ros2 launch realsense2_camera rs_launch.py`` (namespace and name "camera").
DEFAULT_TOPIC = "/camera/camera/color/image_raw"
#: Colour frame rates accepted for a RealSense stream.
SUPPORTED_FPS = (15, 30)
#: Encodings a TopicCamera accepts (realsense2_camera publishes rgb8 by default).
SUPPORTED_ENCODINGS = ("rgb8", "bgr8")

Crop = tuple[int, int, int, int]  # x, y, width, height in raw-frame pixels
Size = tuple[int, int]  # width, height (the profile's robot.image_size order)


class CameraError(RuntimeError):
    """A camera cannot deliver a frame (missing device, stalled stream, bad encoding...)."""


# --- pixels ------------------------------------------------------------------------------------


def centre_square(width: int, height: int) -> Crop:
    """The largest square crop centred in a ``width`` x ``height`` frame."""
    side = min(width, height)
    return ((width - side) // 2, (height - side) // 2, side, side)


def check_crop(crop: Sequence[int], width: int, height: int) -> Crop:
    """Return ``crop`` as a tuple if it lies inside a ``width`` x ``height`` frame, else ValueError."""
    if len(crop) != 4:
        raise ValueError(f"crop must be [x, y, width, height], got {list(crop)}")
    x, y, w, h = (int(v) for v in crop)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"crop [x={x}, y={y}, w={w}, h={h}] does not fit in the {width}x{height} frame")
    return (x, y, w, h)


@functools.lru_cache(maxsize=32)
def _area_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of an area resize from ``n_in`` to ``n_out`` samples: indices and weights ``(n_out, taps)``.

    Output sample ``i`` is the mean of the input over its footprint ``[i*s, (i+1)*s)``,
    ``s = n_in / n_out``; input pixel ``j`` covers ``[j, j+1)`` and weighs by the overlap.
    """
    s = n_in / n_out
    edges = np.arange(n_out + 1, dtype=np.float64) * n_in / n_out  # exact for integer ratios
    lo, hi = edges[:-1, None], edges[1:, None]
    taps = int(np.ceil(s)) + 1
    idx = np.floor(lo).astype(np.intp) + np.arange(taps)[None, :]
    w = np.clip(np.minimum(hi, idx + 1) - np.maximum(lo, idx), 0.0, None)
    w[idx >= n_in] = 0.0
    idx = np.minimum(idx, n_in - 1)
    return idx, (w / s).astype(np.float32)


def _area_axis(img: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Area-average an ``(H, W, C)`` image along ``axis`` (0 or 1) to ``n_out`` samples, in float32.

    float32 is exact for block means of uint8 pixels with power-of-two factors and within 1e-4
    otherwise -- far below the final rounding to uint8.
    """
    n_in = img.shape[axis]
    if n_in == n_out:
        return img.astype(np.float32, copy=False)
    idx, w = _area_weights(n_in, n_out)
    src = img if axis == 0 else img.swapaxes(0, 1)
    out = np.einsum("ot,ot...->o...", w, src[idx].astype(np.float32))  # src[idx]: (n_out, taps, ...)
    return out if axis == 0 else out.swapaxes(0, 1)


def area_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an ``(H, W, C)`` uint8 image to ``(height, width, C)`` by area averaging.

    Each output pixel is the mean of the input pixels under its footprint, partially covered pixels
    weighted by the covered area (OpenCV's ``INTER_AREA`` for shrinking), rounded to the nearest
    integer. An integer factor gives the plain block means; a constant block stays exactly constant.
    """
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {img.shape}")
    if width <= 0 or height <= 0:
        raise ValueError(f"output size must be positive, got {width}x{height}")
    if img.shape[0] == height and img.shape[1] == width:
        return np.ascontiguousarray(img, dtype=np.uint8)
    out = _area_axis(_area_axis(img, 0, height), 1, width)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def crop_and_resize(frame: np.ndarray, crop: Optional[Sequence[int]], out_size: Size) -> np.ndarray:
    """Crop a raw ``(H, W, 3)`` frame (``None``: centre square) and area-resize it to ``out_size`` (w, h)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    h_in, w_in = frame.shape[:2]
    x, y, w, h = centre_square(w_in, h_in) if crop is None else check_crop(crop, w_in, h_in)
    return area_resize(frame[y:y + h, x:x + w], int(out_size[0]), int(out_size[1]))


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/Image`` (rgb8 or bgr8) as an ``(H, W, 3)`` uint8 RGB array (a view when rgb8)."""
    enc = str(msg.encoding)
    if enc not in SUPPORTED_ENCODINGS:
        raise ValueError(f"unsupported image encoding {enc!r} (supported: {', '.join(SUPPORTED_ENCODINGS)}; "
                         "realsense2_camera publishes rgb8 unless told otherwise)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ValueError(f"empty image {w}x{h}")
    if step < 3 * w:
        raise ValueError(f"image step {step} is smaller than 3 * width ({3 * w})")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * h:
        raise ValueError(f"image data has {buf.size} bytes, expected step * height = {step * h}")
    rgb = buf[: step * h].reshape(h, step)[:, : 3 * w].reshape(h, w, 3)
    return rgb[:, :, ::-1] if enc == "bgr8" else rgb


# --- sources -----------------------------------------------------------------------------------


class CameraSource(abc.ABC):
    """One external camera. ``latest`` never blocks for long: it returns a frame or raises CameraError."""

    name: str

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The device or topic, for messages (e.g. ``RealSense 123456789012``)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Open the device / subscribe. Raises CameraError when that is impossible."""

    @abc.abstractmethod
    def latest(self) -> np.ndarray:
        """The newest frame as ``(H, W, 3)`` uint8 RGB at the policy resolution (read-only)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop capturing and release the device. Idempotent; never blocks for long."""

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first frame; True when one arrived."""
        return True

    def describe(self) -> str:
        return f"camera {self.name!r} ({self.where})"


class FrameSource(CameraSource):
    """Common part of the threaded sources: newest-frame store, crop/resize and stall detection.

    A producer thread calls ``_put_frame`` with raw RGB frames (or ``_put_error``). ``latest``
    crops and resizes only when a new frame arrived since the last call (the control loop polls at
    its own rate, slower than the camera), and raises ``CameraError`` when the newest frame is
    older than ``stall_timeout_s``. Before the first frame, ``latest`` waits at most until
    ``start_timeout_s`` after ``start``.
    """

    def __init__(self, name: str, crop: Optional[Sequence[int]] = None, out_size: Size = (128, 128),
                 stall_timeout_s: float = 1.0, start_timeout_s: float = 10.0) -> None:
        if not name:
            raise ValueError("a camera needs a name")
        if len(out_size) != 2 or min(int(v) for v in out_size) <= 0:
            raise ValueError(f"out_size must be (width, height) > 0, got {out_size!r}")
        if not stall_timeout_s > 0 or not start_timeout_s > 0:
            raise ValueError(f"stall_timeout_s and start_timeout_s must be > 0, got "
                             f"{stall_timeout_s!r}, {start_timeout_s!r}")
        self.name = name
        self.crop: Optional[Crop] = None if crop is None else tuple(int(v) for v in crop)  # type: ignore[assignment]
        if self.crop is not None and len(self.crop) != 4:
            raise ValueError(f"crop must be [x, y, width, height], got {list(crop or ())}")
        self.out_size: Size = (int(out_size[0]), int(out_size[1]))
        self.stall_timeout_s = float(stall_timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.frames_received = 0
        self._cond = threading.Condition()
        self._raw: Optional[np.ndarray] = None
        self._raw_time = 0.0
        self._error: Optional[str] = None
        self._started_at: Optional[float] = None
        self._cache_lock = threading.Lock()
        self._cache: tuple[int, Optional[np.ndarray]] = (0, None)

    # producer side
    def _mark_started(self) -> None:
        with self._cond:
            self._raw, self._error, self.frames_received = None, None, 0
            self._cache = (0, None)
            self._started_at = time.monotonic()

    def _put_frame(self, frame: np.ndarray) -> None:
        with self._cond:
            self._raw = frame
            self._raw_time = time.monotonic()
            self._error = None
            self.frames_received += 1
            self._cond.notify_all()

    def _put_error(self, message: str) -> None:
        with self._cond:
            self._error = message
            self._cond.notify_all()

    # consumer side
    def wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._raw is None and self._error is None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._raw is not None and self._error is None

    def frame_age(self) -> float:
        """Seconds since the newest raw frame arrived (inf before the first one)."""
        with self._cond:
            return time.monotonic() - self._raw_time if self._raw is not None else float("inf")

    def latest(self) -> np.ndarray:
        with self._cond:
            if self._started_at is None:
                raise CameraError(f"{self.describe()}: not started")
            deadline = self._started_at + self.start_timeout_s
            while self._raw is None and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CameraError(f"{self.describe()}: no frame within {self.start_timeout_s:g} s of start"
                                      f"{self._no_frame_hint()}")
                self._cond.wait(left)
            if self._error is not None:
                raise CameraError(f"{self.describe()}: {self._error}")
            age = time.monotonic() - self._raw_time
            if age > self.stall_timeout_s:
                raise CameraError(f"{self.describe()} stalled: no new frame for {age:.2f} s "
                                  f"(stall_timeout_s {self.stall_timeout_s:g})")
            raw, seq = self._raw, self.frames_received
        with self._cache_lock:
            if self._cache[0] == seq and self._cache[1] is not None:
                return self._cache[1]
            try:
                img = crop_and_resize(raw, self.crop, self.out_size)
            except ValueError as exc:
                raise CameraError(f"{self.describe()}: {exc}") from None
            img.setflags(write=False)
            self._cache = (seq, img)
            return img

    def _no_frame_hint(self) -> str:
        return ""


#: ``read(timeout_s) -> frame or None``: one raw RGB frame, or None when none arrived in time.
FrameReader = Callable[[float], Optional[np.ndarray]]


def realsense_serials() -> list[str]:
    """Serial numbers of the RealSense devices connected now (pyrealsense2)."""
    import pyrealsense2 as rs

    ctx = rs.context()
    return [dev.get_info(rs.camera_info.serial_number) for dev in ctx.query_devices()]


class RealSenseCamera(FrameSource):
    """The colour stream of one Intel RealSense, selected by serial number (pyrealsense2).

    ``start`` opens the device (``_open``) and runs a capture thread (``_capture_loop``) that asks
    the device for frames with a short timeout and keeps only the newest. ``_open`` returns the
    frame reader the loop calls, so a test can feed the loop from a function.
    """

    POLL_S = 0.1  # longest wait for one frame in the capture loop (bounds close())

    def __init__(self, name: str, serial: str, width: int = 640, height: int = 480, fps: int = 30,
                 crop: Optional[Sequence[int]] = None, out_size: Size = (128, 128),
                 stall_timeout_s: float = 1.0, start_timeout_s: float = 10.0) -> None:
        super().__init__(name, crop, out_size, stall_timeout_s, start_timeout_s)
        if not isinstance(serial, str) or not serial:
            raise ValueError(f"camera {name!r}: serial must be a non-empty string, got {serial!r}")
        if fps not in SUPPORTED_FPS:
            raise ValueError(f"camera {name!r}: fps must be one of {SUPPORTED_FPS}, got {fps!r}")
        if width <= 0 or height <= 0:
            raise ValueError(f"camera {name!r}: width and height must be > 0, got {width}x{height}")
        self.serial, self.width, self.height, self.fps = serial, int(width), int(height), int(fps)
        if self.crop is not None:
            self.crop = check_crop(self.crop, self.width, self.height)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pipeline: Any = None

    @property
    def where(self) -> str:
        return f"RealSense {self.serial}"

    def start(self) -> None:
        if self._thread is not None:
            return
        read = self._open()
        self._stop.clear()
        self._mark_started()
        self._thread = threading.Thread(target=self._capture_loop, args=(read,), daemon=True,
                                        name=f"realsense-{self.serial}")
        self._thread.start()

    def _open(self) -> FrameReader:
        """Open the device's colour stream; return the reader the capture loop calls."""
        try:
            import pyrealsense2 as rs
        except ImportError as exc:
            raise CameraError(f"{self.describe()}: pyrealsense2 is not installed ({exc})") from None
        try:
            found = realsense_serials()
        except RuntimeError as exc:
            raise CameraError(f"{self.describe()}: cannot list RealSense devices: {exc}") from None
        if self.serial not in found:
            raise CameraError(f"{self.describe()}: no RealSense with serial {self.serial} is connected; "
                              f"found: {', '.join(found) if found else 'none'} (list them with "
                              "`userctl robots --probe`)")
        pipeline = rs.pipeline()
        config = rs.config()
        config.enable_device(self.serial)
        config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        try:
            pipeline.start(config)
        except RuntimeError as exc:
            raise CameraError(f"{self.describe()}: cannot start the colour stream {self.width}x{self.height} "
                              f"rgb8 at {self.fps} fps: {exc}") from None
        self._pipeline = pipeline

        def read(timeout_s: float) -> Optional[np.ndarray]:
            ok, frames = pipeline.try_wait_for_frames(max(1, int(timeout_s * 1000)))
            if not ok:
                return None
            color = frames.get_color_frame()
            if not color:
                return None
            # The SDK recycles the frame buffer once the frame is released: copy it out.
            return np.array(np.asanyarray(color.get_data()), dtype=np.uint8, copy=True)

        return read

    def _capture_loop(self, read: FrameReader) -> None:
        while not self._stop.is_set():
            try:
                frame = read(self.POLL_S)
            except Exception as exc:  # noqa: BLE001 - a device fault becomes the camera's error
                self._put_error(f"capture failed: {type(exc).__name__}: {exc}")
                return
            if frame is None:
                continue  # no frame this time; latest() reports a stall once it is too old
            if frame.shape != (self.height, self.width, 3):
                self._put_error(f"got a {frame.shape} frame, expected ({self.height}, {self.width}, 3)")
                return
            self._put_frame(frame)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0 * self.POLL_S + 1.0)  # a wedged driver call is left behind (daemon)
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop()
            except RuntimeError:
                pass
        with self._cond:
            self._started_at = None


class TopicCamera(FrameSource):
    """A ``sensor_msgs/Image`` topic (rgb8 or bgr8), e.g. from ``realsense2_camera``.

    Runs its own rclpy context, node and single-threaded executor thread: it can be used inside a
    process whose default context belongs to another node (the robot node) or is not initialised.
    The subscription is best-effort with depth 1 -- it matches reliable and best-effort publishers.
    """

    def __init__(self, name: str, topic: str = DEFAULT_TOPIC, crop: Optional[Sequence[int]] = None,
                 out_size: Size = (128, 128), stall_timeout_s: float = 1.0, start_timeout_s: float = 10.0,
                 domain_id: Optional[int] = None) -> None:
        super().__init__(name, crop, out_size, stall_timeout_s, start_timeout_s)
        if not isinstance(topic, str) or not topic.startswith("/"):
            raise ValueError(f"camera {name!r}: topic must be an absolute topic name, got {topic!r}")
        self.topic = topic
        self.domain_id = domain_id
        self._context: Any = None
        self._node: Any = None
        self._executor: Any = None
        self._thread: Optional[threading.Thread] = None

    @property
    def where(self) -> str:
        return f"topic {self.topic}"

    def start(self) -> None:
        if self._thread is not None:
            return
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image

        context = rclpy.Context()
        rclpy.init(args=[], context=context, domain_id=self.domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        try:
            node_name = f"user_camera_{re.sub(r'[^A-Za-z0-9_]', '_', self.name)}_{os.getpid()}"
            node = rclpy.create_node(node_name, context=context, use_global_arguments=False,
                                     start_parameter_services=False)
            qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
            node.create_subscription(Image, self.topic, self._on_image, qos)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
        except Exception:
            context.try_shutdown()
            raise
        self._context, self._node, self._executor = context, node, executor
        self._mark_started()
        self._thread = threading.Thread(target=self._spin, daemon=True, name=f"camera-{self.name}")
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception as exc:  # noqa: BLE001 - shutdown races end the thread quietly
            if self._context is not None and self._context.ok():
                self._put_error(f"executor failed: {type(exc).__name__}: {exc}")

    def _on_image(self, msg: Any) -> None:
        try:
            frame = image_msg_to_rgb(msg)
        except ValueError as exc:
            self._put_error(str(exc))
            return
        self._put_frame(frame)

    def _no_frame_hint(self) -> str:
        node = self._node
        try:
            n = node.count_publishers(self.topic) if node is not None else 0
        except Exception:  # noqa: BLE001 - only a hint
            return ""
        if n == 0:
            return (" (no publisher on it: is realsense2_camera running, on ROS_DOMAIN_ID="
                    f"{os.environ.get('ROS_DOMAIN_ID', '0')}?)")
        return f" ({n} publisher(s) on it, but none delivered: QoS or message type mismatch?)"

    def close(self) -> None:
        executor, node, context = self._executor, self._node, self._context
        thread, self._thread = self._thread, None
        self._executor = self._node = None
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        if context is not None:
            context.try_shutdown()
        if thread is not None:
            thread.join(timeout=2.0)
        self._context = None
        with self._cond:
            self._started_at = None


# --- the rig the robot node uses -----------------------------------------------------------------


class CameraRig:
    """The robot's cameras: the backend's own (simulated) cameras plus external sources.

    ``camera_names`` is the profile's ``robot.cameras`` (default: the backend's cameras, then the
    sources). Every name must come from a source or from the backend; a source overrides a backend
    camera of the same name. ``render()`` returns ``{name: (H, W, 3) uint8}`` in that order, like
    ``RobotBackend.render``, and raises ``CameraError`` naming the camera when one cannot deliver.
    """

    def __init__(self, backend: Any, sources: Mapping[str, CameraSource],
                 camera_names: Optional[Sequence[str]] = None, image_size: Optional[Size] = None) -> None:
        self.backend = backend
        self.sources = dict(sources)
        for key, src in self.sources.items():
            if src.name != key:
                raise ValueError(f"camera source keyed {key!r} is named {src.name!r}")
        if camera_names is None:
            names = [n for n in backend.camera_names() if n not in self.sources] + list(self.sources)
        else:
            names = list(camera_names)
            extra = [n for n in self.sources if n not in names]
            if extra:
                raise ValueError(f"camera source(s) {', '.join(map(repr, extra))} not listed in the "
                                 f"robot's cameras {names}")
        self._names = names
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self._started: list[CameraSource] = []

    def camera_names(self) -> list[str]:
        return list(self._names)

    def start(self, timeout: Optional[float] = None) -> None:
        """Start the sources and wait (bounded) for a first frame from each.

        Call after ``backend.start()``. ``timeout`` defaults to each source's ``start_timeout_s``.
        Raises CameraError listing every camera that failed; started sources are closed again.
        """
        have = set(self.backend.camera_names())
        missing = [n for n in self._names if n not in self.sources and n not in have]
        if missing:
            raise CameraError(f"camera(s) {', '.join(map(repr, missing))} are neither rendered by the "
                              f"{getattr(self.backend, 'name', '') or type(self.backend).__name__} backend "
                              f"(it has: {', '.join(sorted(have)) or 'none'}) nor configured as camera sources")
        try:
            for src in self.sources.values():
                src.start()
                self._started.append(src)
            end = {s.name: time.monotonic() + (timeout if timeout is not None else getattr(s, "start_timeout_s", 10.0))
                   for s in self._started}
            failed = []
            for src in self._started:
                if not src.wait_ready(end[src.name] - time.monotonic()):
                    try:
                        src.latest()
                        continue  # raced: a frame arrived just now
                    except CameraError as exc:
                        failed.append(str(exc))
            if failed:
                raise CameraError("; ".join(failed))
        except BaseException:
            self.close()
            raise

    def render(self) -> dict[str, np.ndarray]:
        need_backend = any(n not in self.sources for n in self._names)
        rendered = self.backend.render() if need_backend else {}
        frames: dict[str, np.ndarray] = {}
        for name in self._names:
            src = self.sources.get(name)
            img = src.latest() if src is not None else rendered.get(name)
            if img is None:
                raise CameraError(f"camera {name!r}: the backend returned no frame "
                                  f"(it returned: {', '.join(rendered) or 'none'})")
            if self.image_size is not None and img.shape != (self.image_size[1], self.image_size[0], 3):
                raise CameraError(f"camera {name!r}: frame shape {img.shape} differs from image_size "
                                  f"{list(self.image_size)} (width, height)")
            frames[name] = img
        return frames

    def close(self) -> None:
        started, self._started = self._started, []
        for src in started:
            try:
                src.close()
            except Exception:  # noqa: BLE001 - closing the others matters more
                pass


# --- configuration -----------------------------------------------------------------------------


@dataclasses.dataclass
class RealSenseSpec:
    """``kind: realsense``: a device opened by serial number with pyrealsense2."""

    kind: Literal["realsense"]
    serial: str
    width: int = dataclasses.field(default=640, metadata=positive())
    height: int = dataclasses.field(default=480, metadata=positive())
    fps: int = 30
    crop: Optional[tuple[int, int, int, int]] = None
    stall_timeout_s: float = dataclasses.field(default=1.0, metadata=positive())
    start_timeout_s: float = dataclasses.field(default=10.0, metadata=positive())

    def validate(self) -> None:
        if not self.serial.strip():
            raise ValueError("serial: must not be empty")
        if self.fps not in SUPPORTED_FPS:
            raise ValueError(f"fps: must be one of {', '.join(map(str, SUPPORTED_FPS))}, got {self.fps}")
        if self.crop is not None:
            try:
                check_crop(self.crop, self.width, self.height)
            except ValueError as exc:
                raise ValueError(f"crop: {exc}") from None


@dataclasses.dataclass
class TopicSpec:
    """``kind: topic``: a realsense2_camera-style ``sensor_msgs/Image`` topic (rgb8 / bgr8)."""

    kind: Literal["topic"]
    topic: str = DEFAULT_TOPIC
    crop: Optional[tuple[int, int, int, int]] = None
    stall_timeout_s: float = dataclasses.field(default=1.0, metadata=positive())
    start_timeout_s: float = dataclasses.field(default=10.0, metadata=positive())

    def validate(self) -> None:
        if not self.topic.startswith("/"):
            raise ValueError(f"topic: must be an absolute topic name (starting with /), got {self.topic!r}")
        # The frame size is known only when the first image arrives; latest() checks the fit then.
        if self.crop is not None and (min(self.crop[:2]) < 0 or min(self.crop[2:]) <= 0):
            raise ValueError(f"crop: x, y must be >= 0 and width, height > 0, got {list(self.crop)}")


CAMERA_KINDS = {"realsense": RealSenseSpec, "topic": TopicSpec}


def make_camera_sources(config: Optional[Mapping[str, Any]], out_size: Size = (128, 128),
                        source: str = "<camera_sources>", prefix: str = "camera_sources") -> dict[str, CameraSource]:
    """Build camera sources from a profile mapping ``{camera name: {kind: ..., ...}}``.

    Raises ``ConfigError`` naming ``source`` and the dotted key (e.g. ``camera_sources.wrist.serial``).
    Nothing is opened here; call ``start`` (or ``CameraRig.start``).
    """
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise ConfigError(source, prefix, f"expected a mapping of camera name -> settings, got "
                                          f"{type(config).__name__} {config!r}")
    sources: dict[str, CameraSource] = {}
    kinds = ", ".join(CAMERA_KINDS)
    for name, entry in config.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if not isinstance(name, str) or not name:
            raise ConfigError(source, key, "a camera name must be a non-empty string")
        if not isinstance(entry, Mapping):
            raise ConfigError(source, key, f"expected a mapping with 'kind' ({kinds}), got "
                                           f"{type(entry).__name__} {entry!r}")
        if "kind" not in entry:
            raise ConfigError(source, f"{key}.kind", f"required key is missing (one of: {kinds})")
        kind = entry["kind"]
        if kind not in CAMERA_KINDS:
            raise ConfigError(source, f"{key}.kind", f"unknown camera kind {kind!r} (one of: {kinds})")
        if kind == "realsense" and isinstance(entry.get("serial"), int) and not isinstance(entry["serial"], bool):
            raise ConfigError(source, f"{key}.serial",
                              f"quote the serial number (serial: \"{entry['serial']}\"): YAML reads unquoted "
                              "digits as a number and can drop leading zeros")
        spec = load_dataclass(CAMERA_KINDS[kind], dict(entry), source, key)
        if isinstance(spec, RealSenseSpec):
            sources[name] = RealSenseCamera(name, spec.serial.strip(), spec.width, spec.height, spec.fps,
                                            spec.crop, out_size, spec.stall_timeout_s, spec.start_timeout_s)
        else:
            sources[name] = TopicCamera(name, spec.topic, spec.crop, out_size, spec.stall_timeout_s,
                                        spec.start_timeout_s)
    return sources
