"""Decode serialized ``user_msgs/msg/Transition`` CDR bytes straight into numpy.

This is the replay buffer's read path: the bytes of a stored message (exactly what
``rclpy.serialization.serialize_message`` returns, i.e. what rosbag2 stores) go in, and a
:class:`TransitionView` of plain Python values and numpy arrays comes out, without building any
ROS message objects. Arrays (``proprio``, ``action`` and the images) are read-only *views* into the
buffer, so the buffer stays alive as long as any array taken from it does (an ``mmap`` handed in
cannot be closed while views of it exist).

Wire format handled: the 4-byte encapsulation header ``00 01 xx xx`` (plain CDR / XCDR1,
little-endian, as Fast DDS writes it), followed by the payload. Primitives are aligned to their own
size relative to the payload start (8 for ``uint64``); a string is a ``uint32`` length counting its
NUL terminator, the bytes, then the NUL; a sequence is a ``uint32`` count followed by its elements;
nested messages are inlined. Big-endian CDR, XCDR2 and parameter-list encapsulations are refused.

Every length is checked against the end of the buffer before it is used: a truncated or
inconsistent buffer raises :class:`DecodeError` naming the field and the byte offset (counted from
the start of the buffer, encapsulation header included), never ``IndexError``/``struct.error`` or a
silently wrong value. Images must be ``rgb8`` with ``step >= 3 * width`` and
``len(data) == height * step`` (row padding is allowed and skipped by the view's strides).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

__all__ = ["DecodeError", "ObservationView", "TransitionView", "decode_transition", "transition_key"]

BufferLike = Union[bytes, bytearray, memoryview]
"""What the decoders accept: any C-contiguous object exporting the buffer protocol (bytes,
bytearray, memoryview, mmap, a numpy array...)."""

TransitionKey = tuple[str, str, int, int, bool, bool]
"""``(robot_id, embodiment, episode_id, step, terminated, truncated)``."""


class DecodeError(ValueError):
    """The bytes are not a decodable ``user_msgs/msg/Transition``; the message names the field and
    the byte offset (from the start of the buffer) where decoding failed."""


@dataclass(slots=True)
class ObservationView:
    """A decoded ``user_msgs/msg/Observation``.

    ``proprio`` is a read-only float32 view into the buffer. ``images[i]`` is the ``(H, W, 3)``
    uint8 view of the rgb8 image of camera ``camera_names[i]`` (strided when rows are padded).
    """

    stamp_ns: int
    """``header.stamp`` as integer nanoseconds (``sec * 10**9 + nanosec``)."""
    frame_id: str
    robot_id: str
    episode_id: int
    step: int
    proprio: np.ndarray
    camera_names: list[str]
    images: list[np.ndarray]
    evaluation: bool


@dataclass(slots=True)
class TransitionView:
    """A decoded ``user_msgs/msg/Transition``; ``action`` is a read-only float32 view."""

    robot_id: str
    embodiment: str
    episode_id: int
    step: int
    obs: ObservationView
    action: np.ndarray
    action_source: int
    intervened: bool
    policy_version: int
    reward: float
    success: bool
    terminated: bool
    truncated: bool
    next_obs: ObservationView
    reward_source: int = 0
    """``Transition.REWARD_*``; 0 (rule) for messages written before the field existed."""


# -- wire layout ------------------------------------------------------------------------------------
# Positions below are absolute buffer offsets. The payload starts at offset 4, a multiple of 4, so
# 4-byte alignment of the payload offset is ``(p + 3) & ~3``; 8-byte alignment of the payload offset
# means ``p % 8 == 4``, i.e. ``((p + 3) & ~7) + 4``.
# A string of wire length n (NUL included) at p: length word at p, text at p+4 .. p+4+n-1, NUL last.
# The decoders are written out field by field, without small helper calls on the success path:
# this module is the replay buffer's hot path and a Python call costs as much as a field.
_PAYLOAD = 4
_MAX_TRAILING = 3           # writers may pad the payload to a multiple of 4 bytes

_U32 = struct.Struct("<I")
_STAMP = struct.Struct("<iII")        # header.stamp.sec, header.stamp.nanosec, len(header.frame_id)
_IDS = struct.Struct("<QI")           # Transition: episode_id, step
_OBS_IDS = struct.Struct("<QII")      # Observation: episode_id, step, len(proprio)
_IMG_ROWS = struct.Struct("<II")      # Image: step, len(data)
# Image from height to len(data) when the encoding is rgb8: height, width, len(encoding) (5),
# b"rgb8\0", is_bigendian and 2 bytes of alignment (skipped), step, len(data).
_RGB8_IMAGE = struct.Struct("<III5s3xII")
_ACT_FLAGS = struct.Struct("<BB")     # Transition: action_source, intervened
_TAIL = struct.Struct("<QfBBB")       # Transition: policy_version, reward, success, terminated, truncated

# Smallest encodings, to reject absurd sequence counts before looping over them.
_MIN_STRING = 4                                   # length word (an empty string may omit the NUL)
_MIN_IMAGE = 12 + 12 + 1 + 8     # header with empty frame_id, height..len(encoding), is_bigendian, step, len(data)

_F32 = np.dtype("<f4")
_U8 = np.dtype(np.uint8)
_RGB8 = "rgb8"
_RGB8_WIRE = b"rgb8\0"

_Buf = Union[bytes, memoryview]
_Text = Callable[[_Buf], str]


class _Fields:
    """Field names of one observation (``obs`` or ``next_obs``) for error messages, built once so the
    hot path formats no strings."""

    __slots__ = ("prefix", "stamp", "frame_id", "robot_id", "episode_id", "proprio", "camera_names",
                 "images", "evaluation")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        for name in self.__slots__[1:]:
            setattr(self, name, f"{prefix}.{'header.' if name in ('stamp', 'frame_id') else ''}{name}")


_OBS = _Fields("obs")
_NEXT_OBS = _Fields("next_obs")


# -- error reporting (cold path) -------------------------------------------------------------------------
def _short(what: str, pos: int, need: int, end: int) -> DecodeError:
    return DecodeError(f"{what}: truncated buffer, needs {need} bytes at offset {pos} but it ends at {end}")


def _bad_string(b: _Buf, p: int, end: int, what: str) -> DecodeError:
    """Why the string whose length word is at ``p`` cannot be decoded."""
    if p + 4 > end:
        return _short(what, p, 4, end)
    n = _U32.unpack_from(b, p)[0]
    if p + 4 + n > end:
        return DecodeError(f"{what}: string length {n} at offset {p} runs past the end of the buffer ({end})")
    return DecodeError(f"{what}: string of length {n} at offset {p} is not NUL-terminated")


def _bad_utf8(what: str, p: int, e: UnicodeDecodeError) -> DecodeError:
    return DecodeError(f"{what}: string at offset {p} is not valid UTF-8 ({e.reason})")


def _bad_bool(what: str, pos: int, value: int) -> DecodeError:
    return DecodeError(f"{what}: invalid bool value {value} at offset {pos}")


def _too_many(what: str, p: int, n: int, end: int) -> DecodeError:
    return DecodeError(f"{what}: sequence of {n} elements at offset {p} cannot fit in the buffer ({end})")


def _mv_text(m: memoryview) -> str:
    return str(m, "utf-8")


def _prepare(buf: BufferLike) -> tuple[_Buf, int, _Text]:
    """``buf`` as bytes or a read-only byte memoryview (so numpy views cannot write through it), its
    length and the UTF-8 decoder for its slices; checks the encapsulation header."""
    if type(buf) is bytes:
        b: _Buf = buf
        text: _Text = bytes.decode
    else:
        try:
            mv = memoryview(buf)
        except TypeError:
            raise TypeError(f"expected a bytes-like object, got {type(buf).__name__}") from None
        if not mv.c_contiguous:
            raise TypeError("the buffer must be C-contiguous")
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        b, text = mv.toreadonly(), _mv_text
    end = len(b)
    if end < _PAYLOAD:
        raise DecodeError(f"encapsulation: buffer of {end} bytes is shorter than the 4-byte CDR header")
    if b[0] != 0 or b[1] != 1:
        if b[0] == 0 and b[1] == 0:
            raise DecodeError("big-endian CDR not supported")
        raise DecodeError(f"encapsulation: unsupported CDR representation 0x{b[0]:02x}{b[1]:02x} at offset 0 "
                          "(only plain little-endian CDR, 0x0001, is supported)")
    return b, end, text


# -- decoding ---------------------------------------------------------------------------------------
def _head(b: _Buf, end: int, text: _Text) -> tuple[str, str, int, int, int]:
    """robot_id, embodiment, episode_id, step and the offset of ``obs``."""
    what, p = "robot_id", _PAYLOAD
    try:
        n = _U32.unpack_from(b, p)[0] if p + 4 <= end else -1
        q = p + 4 + n
        if n < 0 or q > end or (n and b[q - 1]):
            raise _bad_string(b, p, end, what)
        robot_id = text(b[p + 4:q - 1])
        what, p = "embodiment", (q + 3) & ~3
        n = _U32.unpack_from(b, p)[0] if p + 4 <= end else -1
        q = p + 4 + n
        if n < 0 or q > end or (n and b[q - 1]):
            raise _bad_string(b, p, end, what)
        embodiment = text(b[p + 4:q - 1])
    except UnicodeDecodeError as e:
        raise _bad_utf8(what, p, e) from None
    p = ((q + 3) & ~7) + 4
    if p + 12 > end:
        raise _short("episode_id", p, 12, end)
    episode_id, step = _IDS.unpack_from(b, p)
    return robot_id, embodiment, episode_id, step, p + 12


def _image_head_error(b: _Buf, p: int, end: int, what: str, camera: str) -> DecodeError:
    """Why the Image fields from ``height`` (at ``p``) to ``len(data)`` are not those of an rgb8 image."""
    if p + 12 > end:
        return _short(f"{what}.height", p, 12, end)
    n = _U32.unpack_from(b, p + 8)[0]
    q = p + 12 + n
    if q > end or (n and b[q - 1]):
        return _bad_string(b, p + 8, end, f"{what}.encoding")
    encoding = str(b[p + 12:q - 1], "utf-8", "replace")
    if encoding != _RGB8:
        return DecodeError(f"{what}: camera {camera!r} has encoding {encoding!r} (offset {p + 8}); "
                           f"only {_RGB8} is supported")
    return _short(f"{what}.step", (q + 4) & ~3, 8, end)


def _image(b: _Buf, p: int, end: int, f: _Fields, i: int, camera: str) -> tuple[np.ndarray, int]:
    """The rgb8 ``sensor_msgs/Image`` ``images[i]`` at ``p`` as an ``(H, W, 3)`` view, and the offset after it."""
    p = (p + 3) & ~3
    if p + 12 > end:
        raise _short(f"{f.images}[{i}].header", p, 12, end)
    q = p + 12 + _STAMP.unpack_from(b, p)[2]              # skip header (frame_id is not needed)
    if q > end:
        raise _bad_string(b, p + 8, end, f"{f.images}[{i}].header.frame_id")
    p = (q + 3) & ~3
    if p + _RGB8_IMAGE.size > end:
        raise _image_head_error(b, p, end, f"{f.images}[{i}]", camera)
    height, width, n, encoding, step, n_data = _RGB8_IMAGE.unpack_from(b, p)
    if n != 5 or encoding != _RGB8_WIRE:
        raise _image_head_error(b, p, end, f"{f.images}[{i}]", camera)
    p += _RGB8_IMAGE.size
    q = p + n_data
    if q > end:
        raise DecodeError(f"{f.images}[{i}].data: {n_data} bytes at offset {p - 4} run past the end of the "
                          f"buffer ({end})")
    if step < 3 * width or n_data != height * step:
        raise DecodeError(f"{f.images}[{i}]: camera {camera!r} is inconsistent (offset {p - 4}): "
                          f"{width}x{height} rgb8 with step {step} and {n_data} bytes of data")
    return np.ndarray((height, width, 3), _U8, b, p, (step, 3, 1)), q


def _observation(b: _Buf, p: int, end: int, text: _Text, f: _Fields) -> tuple[ObservationView, int]:
    """The ``user_msgs/Observation`` at ``p`` and the offset after it."""
    p = (p + 3) & ~3
    if p + 12 > end:
        raise _short(f.stamp, p, 12, end)
    sec, nanosec, n = _STAMP.unpack_from(b, p)
    what, p = f.frame_id, p + 8
    try:
        q = p + 4 + n
        if q > end or (n and b[q - 1]):
            raise _bad_string(b, p, end, what)
        frame_id = text(b[p + 4:q - 1])
        what, p = f.robot_id, (q + 3) & ~3
        n = _U32.unpack_from(b, p)[0] if p + 4 <= end else -1
        q = p + 4 + n
        if n < 0 or q > end or (n and b[q - 1]):
            raise _bad_string(b, p, end, what)
        robot_id = text(b[p + 4:q - 1])
        p = ((q + 3) & ~7) + 4
        if p + 16 > end:
            raise _short(f.episode_id, p, 16, end)
        episode_id, step, n = _OBS_IDS.unpack_from(b, p)
        p += 16
        q = p + 4 * n
        if q > end:
            raise DecodeError(f"{f.proprio}: {n} float32 values at offset {p - 4} run past the end of the buffer "
                              f"({end})")
        proprio = np.frombuffer(b, _F32, n, p)
        if q + 4 > end:
            raise _short(f.camera_names, q, 4, end)
        n = _U32.unpack_from(b, q)[0]
        if n * _MIN_STRING > end - q - 4:
            raise _too_many(f.camera_names, q, n, end)
        q += 4
        names = []
        what = f.camera_names
        for _ in range(n):
            p = (q + 3) & ~3
            n = _U32.unpack_from(b, p)[0] if p + 4 <= end else -1
            q = p + 4 + n
            if n < 0 or q > end or (n and b[q - 1]):
                raise _bad_string(b, p, end, f"{what}[{len(names)}]")
            names.append(text(b[p + 4:q - 1]))
    except UnicodeDecodeError as e:
        raise _bad_utf8(what, p, e) from None
    p = (q + 3) & ~3
    if p + 4 > end:
        raise _short(f.images, p, 4, end)
    n = _U32.unpack_from(b, p)[0]
    if n * _MIN_IMAGE > end - p - 4:
        raise _too_many(f.images, p, n, end)
    if n != len(names):
        raise DecodeError(f"{f.prefix}: {len(names)} camera_names but {n} images (offset {p})")
    p += 4
    images = []
    for i in range(n):
        image, p = _image(b, p, end, f, i, names[i])
        images.append(image)
    if p >= end:
        raise _short(f.evaluation, p, 1, end)
    evaluation = b[p]
    if evaluation > 1:
        raise _bad_bool(f.evaluation, p, evaluation)
    return ObservationView(sec * 1_000_000_000 + nanosec, frame_id, robot_id, episode_id, step, proprio, names,
                           images, evaluation == 1), p + 1


def _skip_observation(b: _Buf, p: int, end: int, f: _Fields) -> int:
    """The offset after the ``user_msgs/Observation`` at ``p``, following its length fields only."""
    # header.stamp, then the length words of header.frame_id and robot_id
    p = ((p + 3) & ~3) + 8
    if p + 4 > end:
        raise _short(f.frame_id, p, 4, end)
    p = (p + 7 + _U32.unpack_from(b, p)[0]) & ~3
    if p + 4 > end:
        raise _bad_string(b, p, end, f.robot_id)       # (frame_id overran: reported as robot_id's offset)
    p = ((p + 7 + _U32.unpack_from(b, p)[0]) & ~7) + 4 + 12      # episode_id, step
    if p + 4 > end:
        raise _short(f.proprio, p, 4, end)
    q = p + 4 + 4 * _U32.unpack_from(b, p)[0]
    if q + 4 > end:
        raise _short(f.camera_names, q, 4, end)
    cameras = _U32.unpack_from(b, q)[0]
    if cameras * _MIN_STRING > end - q - 4:
        raise _too_many(f.camera_names, q, cameras, end)
    p = q + 4
    for _ in range(cameras):
        p = (p + 3) & ~3
        if p + 4 > end:
            raise _short(f.camera_names, p, 4, end)
        p += 4 + _U32.unpack_from(b, p)[0]
    p = (p + 3) & ~3
    if p + 4 > end:
        raise _short(f.images, p, 4, end)
    n = _U32.unpack_from(b, p)[0]
    if n * _MIN_IMAGE > end - p - 4:
        raise _too_many(f.images, p, n, end)
    if n != cameras:
        raise DecodeError(f"{f.prefix}: {cameras} camera_names but {n} images (offset {p})")
    p += 4
    for _ in range(n):
        p = ((p + 3) & ~3) + 8                         # header.stamp
        if p + 4 > end:
            raise _short(f.images, p, 4, end)
        p = ((p + 7 + _U32.unpack_from(b, p)[0]) & ~3) + 8        # header.frame_id, height, width
        if p + 4 > end:
            raise _short(f.images, p, 4, end)
        p = (p + 8 + _U32.unpack_from(b, p)[0]) & ~3               # encoding, is_bigendian
        if p + 8 > end:
            raise _short(f.images, p, 8, end)
        p += 8 + _IMG_ROWS.unpack_from(b, p)[1]                    # step, data
    if p >= end:
        raise _short(f.evaluation, p, 1, end)
    if b[p] > 1:
        raise _bad_bool(f.evaluation, p, b[p])
    return p + 1


def decode_transition(buf: BufferLike) -> TransitionView:
    """Decode the serialized ``user_msgs/msg/Transition`` in ``buf`` (encapsulation header included).

    Arrays in the result are read-only views into ``buf`` (which must not be modified while they are
    in use). At most 3 bytes of padding may follow the message. Raises :class:`DecodeError` for
    anything but plain little-endian CDR, for truncated or inconsistent buffers, for an image that is
    not rgb8 and when ``camera_names`` and ``images`` differ in length.
    """
    b, end, text = _prepare(buf)
    robot_id, embodiment, episode_id, step, p = _head(b, end, text)
    obs, p = _observation(b, p, end, text, _OBS)
    p = (p + 3) & ~3
    if p + 4 > end:
        raise _short("action", p, 4, end)
    n = _U32.unpack_from(b, p)[0]
    p += 4
    q = p + 4 * n
    if q + 2 > end:
        raise DecodeError(f"action: {n} float32 values at offset {p - 4} (and action_source, intervened) run "
                          f"past the end of the buffer ({end})")
    action = np.frombuffer(b, _F32, n, p)
    action_source, intervened = _ACT_FLAGS.unpack_from(b, q)
    p = ((q + 5) & ~7) + 4
    if p + _TAIL.size > end:
        raise _short("policy_version", p, _TAIL.size, end)
    policy_version, reward, success, terminated, truncated = _TAIL.unpack_from(b, p)
    if (intervened | success | terminated | truncated) > 1:
        for what, pos, value in (("intervened", q + 1, intervened), ("success", p + 12, success),
                                 ("terminated", p + 13, terminated), ("truncated", p + 14, truncated)):
            if value > 1:
                raise _bad_bool(what, pos, value)
    next_obs, p = _observation(b, p + _TAIL.size, end, text, _NEXT_OBS)
    # reward_source, appended last: a message written before it ends here (plus at most 3 padding bytes,
    # which are zero: REWARD_RULE, what those messages meant).
    reward_source = b[p] if p < end else 0
    if end - p > _MAX_TRAILING + 1:
        raise DecodeError(f"{end - p - 1} unexpected bytes after the message at offset {p + 1} (not a Transition?)")
    return TransitionView(robot_id, embodiment, episode_id, step, obs, action, action_source, intervened == 1,
                          policy_version, reward, success == 1, terminated == 1, truncated == 1, next_obs,
                          reward_source)


def transition_key(buf: BufferLike) -> TransitionKey:
    """``(robot_id, embodiment, episode_id, step, terminated, truncated)`` of a serialized Transition.

    Cheap enough to index millions of stored messages: ``obs`` is skipped by following its length
    fields (its strings are not decoded and no image is looked at, so its encoding is not checked),
    and decoding stops at ``truncated``, so ``next_obs`` is not read at all. Raises
    :class:`DecodeError` if the part it reads is truncated or inconsistent; a buffer damaged only
    inside ``next_obs`` or in skipped contents yields a key and fails in :func:`decode_transition`.
    """
    b, end, text = _prepare(buf)
    robot_id, embodiment, episode_id, step, p = _head(b, end, text)
    p = (_skip_observation(b, p, end, _OBS) + 3) & ~3
    if p + 4 > end:
        raise _short("action", p, 4, end)
    q = p + 4 + 4 * _U32.unpack_from(b, p)[0]             # action values; then action_source, intervened
    p = ((q + 5) & ~7) + 4
    if p + _TAIL.size > end:
        raise _short("policy_version", p, _TAIL.size, end)
    terminated, truncated = b[p + 13], b[p + 14]
    if terminated > 1:
        raise _bad_bool("terminated", p + 13, terminated)
    if truncated > 1:
        raise _bad_bool("truncated", p + 14, truncated)
    return robot_id, embodiment, episode_id, step, terminated == 1, truncated == 1
