"""Tests of user_buffer.codec against real rclpy-serialized Transition messages.

Run ``python src/user_buffer/test/test_codec.py`` for a timing comparison with
``rclpy.serialization.deserialize_message`` (not part of the test run).
"""
from __future__ import annotations

import struct
import timeit

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from user_msgs.msg import Observation, Transition

from user_buffer.codec import (
    DecodeError,
    ObservationView,
    TransitionView,
    decode_transition,
    transition_key,
)

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
NAMES = ["", "a", "ab", "abc", "wrist", "side_cam", "overhead9", "ロボット-é", "x" * 13]


# -- message construction -----------------------------------------------------------------------------
def make_image(rng: np.random.Generator, height: int, width: int, *, pad: int = 0, encoding: str = "rgb8",
               channels: int = 3, frame_id: str = "cam_optical_frame") -> Image:
    """An Image of random pixels whose rows are ``width * channels + pad`` bytes long."""
    im = Image()
    im.header.stamp.sec = int(rng.integers(0, 2**31))
    im.header.stamp.nanosec = int(rng.integers(0, 10**9))
    im.header.frame_id = frame_id
    im.height, im.width = height, width
    im.encoding = encoding
    im.is_bigendian = 0
    im.step = width * channels + pad
    im.data = rng.integers(0, 256, height * im.step, dtype=np.uint8).tobytes()
    return im


def make_obs(rng: np.random.Generator, cameras: list[tuple[str, Image]], *, n_proprio: int = 7,
             robot_id: str = "franka_0", frame_id: str = "base", episode_id: int = 3, step: int = 11,
             sec: int = 1_700_000_000, nanosec: int = 123_456_789, evaluation: bool = False) -> Observation:
    o = Observation()
    o.header.stamp.sec, o.header.stamp.nanosec = sec, nanosec
    o.header.frame_id = frame_id
    o.robot_id, o.episode_id, o.step = robot_id, episode_id, step
    o.proprio = rng.standard_normal(n_proprio).astype(np.float32).tolist()
    for name, image in cameras:
        o.camera_names.append(name)
        o.images.append(image)
    o.evaluation = evaluation
    return o


def make_transition(obs: Observation, next_obs: Observation, *, n_action: int = 7, robot_id: str = "franka_0",
                    embodiment: str = "franka", episode_id: int = 3, step: int = 11, action_source: int = 1,
                    intervened: bool = False, policy_version: int = 42, reward: float = 0.25,
                    success: bool = False, terminated: bool = False, truncated: bool = False,
                    reward_source: int = 0, rng: np.random.Generator | None = None) -> Transition:
    rng = rng or np.random.default_rng(0)
    t = Transition()
    t.robot_id, t.embodiment, t.episode_id, t.step = robot_id, embodiment, episode_id, step
    t.obs, t.next_obs = obs, next_obs
    t.action = rng.uniform(-1, 1, n_action).astype(np.float32).tolist()
    t.action_source, t.intervened, t.policy_version = action_source, intervened, policy_version
    t.reward, t.success, t.terminated, t.truncated = reward, success, terminated, truncated
    t.reward_source = reward_source
    return t


def random_transition(rng: np.random.Generator, max_cameras: int = 2, max_size: int = 9) -> Transition:
    """A Transition with random field values, string lengths, sequence lengths and small images."""
    def name() -> str:
        return str(rng.choice(NAMES))

    def obs() -> Observation:
        cams = []
        for i in range(int(rng.integers(0, max_cameras + 1))):
            h = int(rng.integers(0, max_size + 1))
            w = int(rng.choice([0, 1, 2, 5, 33, int(rng.integers(1, max_size + 1))]))
            cams.append((f"{name()}{i}", make_image(rng, h, w, pad=int(rng.integers(0, 6)), frame_id=name())))
        return make_obs(rng, cams, n_proprio=int(rng.integers(0, 13)), robot_id=name(), frame_id=name(),
                        episode_id=int(rng.integers(0, U64_MAX, dtype=np.uint64)),
                        step=int(rng.integers(0, U32_MAX + 1)), sec=int(rng.integers(-2**31, 2**31)),
                        nanosec=int(rng.integers(0, 10**9)), evaluation=bool(rng.integers(2)))

    return make_transition(
        obs(), obs(), n_action=int(rng.integers(0, 9)), robot_id=name(), embodiment=name(),
        episode_id=int(rng.integers(0, U64_MAX, dtype=np.uint64)), step=int(rng.integers(0, U32_MAX + 1)),
        action_source=int(rng.integers(0, 256)), intervened=bool(rng.integers(2)),
        policy_version=int(rng.integers(0, U64_MAX, dtype=np.uint64)), reward=float(rng.standard_normal()),
        success=bool(rng.integers(2)), terminated=bool(rng.integers(2)), truncated=bool(rng.integers(2)),
        reward_source=int(rng.integers(0, 256)), rng=rng)


def two_camera_transition(size: int = 128, seed: int = 0) -> Transition:
    """Two ``size x size`` rgb8 cameras in obs and in next_obs, as the robot node publishes them."""
    rng = np.random.default_rng(seed)

    def obs(step: int) -> Observation:
        return make_obs(rng, [(cam, make_image(rng, size, size)) for cam in ("wrist", "side")], step=step)

    return make_transition(obs(11), obs(12), rng=rng)


def small_transition(seed: int = 1) -> Transition:
    """Two small cameras (one with padded rows, odd width) per observation and odd string lengths."""
    rng = np.random.default_rng(seed)
    obs = make_obs(rng, [("wrist", make_image(rng, 4, 5, pad=3)), ("side", make_image(rng, 3, 7))],
                   n_proprio=5, robot_id="r1x", frame_id="world")
    nxt = make_obs(rng, [("wrist", make_image(rng, 2, 33, pad=1)), ("side", make_image(rng, 3, 1))],
                   n_proprio=5, robot_id="r1x", frame_id="w", evaluation=True)
    return make_transition(obs, nxt, n_action=3, robot_id="r1x", embodiment="panda7", policy_version=U64_MAX,
                           terminated=True, rng=rng)


# -- reference --------------------------------------------------------------------------------------------
def reference_image(im: Image) -> np.ndarray:
    """The (H, W, 3) pixels of an rgb8 Image message, rows cut to ``3 * width`` bytes."""
    rows = np.frombuffer(bytes(im.data), dtype=np.uint8).reshape(im.height, im.step)
    return rows[:, : 3 * im.width].reshape(im.height, im.width, 3)


def assert_obs_equal(view: ObservationView, msg: Observation) -> None:
    assert isinstance(view, ObservationView)
    assert view.stamp_ns == msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    assert view.frame_id == msg.header.frame_id
    assert view.robot_id == msg.robot_id
    assert view.episode_id == msg.episode_id
    assert view.step == msg.step
    assert view.proprio.dtype == np.float32 and view.proprio.shape == (len(msg.proprio),)
    np.testing.assert_array_equal(view.proprio, np.asarray(msg.proprio, dtype=np.float32))
    assert not view.proprio.flags.writeable
    assert view.camera_names == list(msg.camera_names)
    assert len(view.images) == len(msg.images)
    for image, im in zip(view.images, msg.images):
        assert image.dtype == np.uint8 and image.shape == (im.height, im.width, 3)
        np.testing.assert_array_equal(image, reference_image(im))
        assert not image.flags.writeable
    assert view.evaluation is msg.evaluation


def assert_transition_equal(view: TransitionView, msg: Transition) -> None:
    assert isinstance(view, TransitionView)
    assert view.robot_id == msg.robot_id
    assert view.embodiment == msg.embodiment
    assert view.episode_id == msg.episode_id
    assert view.step == msg.step
    assert_obs_equal(view.obs, msg.obs)
    assert view.action.dtype == np.float32 and view.action.shape == (len(msg.action),)
    np.testing.assert_array_equal(view.action, np.asarray(msg.action, dtype=np.float32))
    assert not view.action.flags.writeable
    assert view.action_source == msg.action_source
    assert view.intervened is msg.intervened
    assert view.policy_version == msg.policy_version
    assert isinstance(view.reward, float) and view.reward == float(np.float32(msg.reward))
    assert view.success is msg.success
    assert view.terminated is msg.terminated
    assert view.truncated is msg.truncated
    assert_obs_equal(view.next_obs, msg.next_obs)
    assert view.reward_source == msg.reward_source


def expected_key(msg: Transition) -> tuple[str, str, int, int, bool, bool]:
    return (msg.robot_id, msg.embodiment, msg.episode_id, msg.step, msg.terminated, msg.truncated)


# -- round trips --------------------------------------------------------------------------------------------
def test_two_cameras_128():
    msg = two_camera_transition()
    buf = serialize_message(msg)
    view = decode_transition(buf)
    assert_transition_equal(view, msg)
    assert [im.shape for im in view.obs.images] == [(128, 128, 3)] * 2
    assert transition_key(buf) == expected_key(msg)


@pytest.mark.parametrize("cameras", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1, 1, 0), (16, 33, 0), (5, 33, 7), (7, 4, 1), (3, 1, 3), (0, 0, 0), (0, 5, 2)])
def test_camera_counts_and_sizes(cameras, shape):
    rng = np.random.default_rng(cameras * 100 + sum(shape))
    h, w, pad = shape

    def obs() -> Observation:
        cams = [(f"cam{i}", make_image(rng, h + i, w + 2 * i, pad=pad)) for i in range(cameras)]
        return make_obs(rng, cams)

    msg = make_transition(obs(), obs(), rng=rng)
    buf = serialize_message(msg)
    view = decode_transition(buf)
    assert_transition_equal(view, msg)
    assert transition_key(buf) == expected_key(msg)


def test_padded_rows_are_strided_views():
    rng = np.random.default_rng(5)
    im = make_image(rng, 6, 33, pad=5)
    msg = make_transition(make_obs(rng, [("wrist", im)]), make_obs(rng, []), rng=rng)
    buf = serialize_message(msg)
    image = decode_transition(buf).obs.images[0]
    assert image.shape == (6, 33, 3) and image.strides == (33 * 3 + 5, 3, 1)
    np.testing.assert_array_equal(image, reference_image(im))
    assert np.shares_memory(image, np.frombuffer(buf, dtype=np.uint8))


@pytest.mark.parametrize("length", range(10))
def test_string_lengths_shift_alignment(length):
    """Every string length mod 8 moves the uint64 fields that follow to a different padding."""
    rng = np.random.default_rng(length)
    s = "abcdefghij"[:length]
    obs = make_obs(rng, [(s, make_image(rng, 2, 3, frame_id=s))], robot_id=s, frame_id=s[::-1],
                   n_proprio=length, episode_id=U64_MAX - length)
    nxt = make_obs(rng, [], robot_id=s[:1], frame_id=s, n_proprio=0, episode_id=length)
    msg = make_transition(obs, nxt, n_action=length, robot_id=s, embodiment=s[: length // 2],
                          policy_version=U64_MAX - length, episode_id=2**63 + length, step=U32_MAX, rng=rng)
    buf = serialize_message(msg)
    assert_transition_equal(decode_transition(buf), msg)
    assert transition_key(buf) == expected_key(msg)


def test_extreme_values_and_unicode():
    rng = np.random.default_rng(9)
    obs = make_obs(rng, [("kamera-ü", make_image(rng, 2, 2))], robot_id="ロボット", frame_id="é",
                   episode_id=U64_MAX, step=U32_MAX, sec=-2**31, nanosec=999_999_999, evaluation=True)
    nxt = make_obs(rng, [], sec=2**31 - 1, nanosec=0, episode_id=0, step=0)
    msg = make_transition(obs, nxt, robot_id="ロボット", embodiment="ü", episode_id=U64_MAX, step=U32_MAX,
                          action_source=255, intervened=True, policy_version=U64_MAX, reward=-1e30,
                          success=True, terminated=True, truncated=True, rng=rng)
    buf = serialize_message(msg)
    view = decode_transition(buf)
    assert_transition_equal(view, msg)
    assert view.obs.stamp_ns == -2**31 * 10**9 + 999_999_999
    assert transition_key(buf) == ("ロボット", "ü", U64_MAX, U32_MAX, True, True)


def test_default_message():
    msg = Transition()
    buf = serialize_message(msg)
    assert_transition_equal(decode_transition(buf), msg)
    assert transition_key(buf) == ("", "", 0, 0, False, False)


def test_random_transitions():
    rng = np.random.default_rng(1234)
    for _ in range(300):
        msg = random_transition(rng)
        buf = serialize_message(msg)
        assert_transition_equal(decode_transition(buf), msg)
        assert transition_key(buf) == expected_key(msg)


def test_agrees_with_rclpy_deserialize():
    msg = small_transition()
    buf = serialize_message(msg)
    assert_transition_equal(decode_transition(buf), deserialize_message(buf, Transition))


# -- buffer types, views -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "memoryview_bytearray", "numpy"])
def test_buffer_types(kind):
    msg = small_transition()
    raw = serialize_message(msg)
    buf = {"bytes": lambda: raw, "bytearray": lambda: bytearray(raw), "memoryview": lambda: memoryview(raw),
           "memoryview_bytearray": lambda: memoryview(bytearray(raw)),
           "numpy": lambda: np.frombuffer(raw, dtype=np.uint8)}[kind]()
    assert_transition_equal(decode_transition(buf), msg)
    assert transition_key(buf) == expected_key(msg)


def test_writable_buffer_gives_read_only_zero_copy_views():
    msg = small_transition()
    buf = bytearray(serialize_message(msg))
    view = decode_transition(buf)
    image = view.obs.images[0]
    assert not image.flags.writeable and not view.obs.proprio.flags.writeable
    assert np.shares_memory(image, np.frombuffer(buf, dtype=np.uint8))
    with pytest.raises(ValueError):
        image[0, 0, 0] = 1
    # the view follows the buffer (no copy was made)
    offset = bytes(buf).find(bytes(msg.obs.images[0].data))
    buf[offset] = (buf[offset] + 1) % 256
    assert image[0, 0, 0] == buf[offset]


def test_rejects_non_buffers():
    with pytest.raises(TypeError):
        decode_transition("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decode_transition(memoryview(serialize_message(Transition()))[::2])


# -- errors ---------------------------------------------------------------------------------------------------
def test_every_truncation_raises():
    raw = serialize_message(small_transition())
    # Cutting only the last byte (reward_source) leaves a valid message of the layout before that field.
    for cut in range(len(raw) - 1):
        for buf in (raw[:cut], bytearray(raw[:cut]), memoryview(raw)[:cut]):
            with pytest.raises(DecodeError):
                decode_transition(buf)


def test_truncations_of_random_messages_raise():
    rng = np.random.default_rng(77)
    for _ in range(20):
        raw = serialize_message(random_transition(rng))
        # (not len(raw) - 1: without its last byte, reward_source, it is a valid message of the older layout)
        for cut in sorted(set(rng.integers(0, len(raw) - 1, 40).tolist()) | {len(raw) - 2}):
            with pytest.raises(DecodeError):
                decode_transition(raw[:cut])


def test_transition_key_truncations():
    """A cut buffer either raises or gives the right key; the key needs everything up to ``truncated``
    (so all of obs) but nothing of next_obs."""
    msg = small_transition()
    raw = serialize_message(msg)
    ok = []
    for cut in range(len(raw) + 1):
        try:
            key = transition_key(raw[:cut])
        except DecodeError:
            continue
        assert key == expected_key(msg)
        ok.append(cut)
    first = ok[0]
    assert ok == list(range(first, len(raw) + 1))
    next_obs_size = len(serialize_message(msg.next_obs)) - 4
    # next_obs starts 4-aligned right after `truncated`; reward_source (1 byte) follows it
    assert first == len(raw) - 1 - next_obs_size - 1
    assert first > len(serialize_message(msg.obs))


def test_trailing_bytes():
    msg = small_transition()
    raw = serialize_message(msg)
    assert_transition_equal(decode_transition(raw + b"\0\0\0"), msg)     # alignment padding is fine
    with pytest.raises(DecodeError, match="unexpected bytes"):
        decode_transition(raw + b"\0\0\0\0")


def test_reward_source_is_last_and_optional():
    """Transition.reward_source was appended last: bytes written before it (no field) decode as REWARD_RULE."""
    for source in (Transition.REWARD_RULE, Transition.REWARD_HUMAN, Transition.REWARD_CLASSIFIER):
        msg = small_transition()
        msg.reward_source = source
        raw = bytes(serialize_message(msg))
        assert raw[-1] == source                        # the last byte on the wire
        assert decode_transition(raw).reward_source == source
        old = raw[:-1]                                  # the layout before the field existed
        for pad in (b"", b"\0", b"\0\0\0"):              # as written, or padded to 4 bytes
            view = decode_transition(old + pad)
            assert view.reward_source == Transition.REWARD_RULE
            msg.reward_source = Transition.REWARD_RULE
            assert_transition_equal(view, msg)
            assert transition_key(old + pad) == expected_key(msg)


def test_encapsulation():
    raw = serialize_message(small_transition())
    for short in (b"", b"\x00", b"\x00\x01\x00"):
        with pytest.raises(DecodeError):
            decode_transition(short)
        with pytest.raises(DecodeError):
            transition_key(short)
    with pytest.raises(DecodeError, match="big-endian CDR not supported"):
        decode_transition(b"\x00\x00" + raw[2:])
    with pytest.raises(DecodeError, match="big-endian CDR not supported"):
        transition_key(b"\x00\x00" + raw[2:])
    for header in (b"\x00\x07", b"\x00\x03", b"\x01\x01"):
        with pytest.raises(DecodeError, match="encapsulation"):
            decode_transition(header + raw[2:])


def _patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


def test_length_fields_beyond_the_end():
    rng = np.random.default_rng(3)
    proprio = [1.5, -2.5, 3.25]
    im = make_image(rng, 3, 4, pad=2)
    obs = make_obs(rng, [("wrist", im)], robot_id="abc")
    obs.proprio = proprio
    msg = make_transition(obs, make_obs(rng, []), rng=rng)
    raw = serialize_message(msg)
    assert_transition_equal(decode_transition(raw), msg)

    at_proprio = raw.find(struct.pack("<I3f", 3, *proprio))
    at_data = raw.find(struct.pack("<II", im.step, len(im.data)) + bytes(im.data)[:8])
    at_cameras = at_proprio + 16
    assert at_proprio > 0 and at_data > 0
    assert raw[at_cameras:at_cameras + 4] == struct.pack("<I", 1)
    cases = {
        "robot_id": (4, struct.pack("<I", 10_000)),
        "robot_id NUL": (4 + 4 + len("franka_0"), b"x"),
        "proprio": (at_proprio, struct.pack("<I", 10_000)),
        "proprio huge": (at_proprio, struct.pack("<I", U32_MAX)),
        "camera_names": (at_cameras, struct.pack("<I", U32_MAX)),
        "images data": (at_data + 4, struct.pack("<I", 10_000_000)),
        "images data short": (at_data + 4, struct.pack("<I", len(im.data) - 1)),
        "images step": (at_data, struct.pack("<I", 4 * 3 - 1)),
        "evaluation": (len(raw) - 2, b"\x02"),    # next_obs.evaluation, before reward_source
    }
    for name, (offset, value) in cases.items():
        bad = _patched(raw, offset, value)
        with pytest.raises(DecodeError):
            decode_transition(bad)
            pytest.fail(f"{name}: no DecodeError")
    for name in ("robot_id", "proprio", "proprio huge", "camera_names", "images data"):
        offset, value = cases[name]
        with pytest.raises(DecodeError):
            transition_key(_patched(raw, offset, value))
    with pytest.raises(DecodeError, match="obs.proprio"):
        decode_transition(_patched(raw, *cases["proprio"]))
    with pytest.raises(DecodeError, match=r"obs.images\[0\].data"):
        decode_transition(_patched(raw, *cases["images data"]))
    with pytest.raises(DecodeError, match="wrist"):
        decode_transition(_patched(raw, *cases["images data short"]))


def test_invalid_utf8():
    msg = small_transition()
    raw = serialize_message(msg)
    bad = _patched(raw, 8, b"\xff")                  # first byte of robot_id
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_transition(bad)


def test_camera_names_and_images_must_pair():
    rng = np.random.default_rng(4)
    obs = make_obs(rng, [("wrist", make_image(rng, 2, 2))])
    obs.camera_names.append("side")
    msg = make_transition(obs, make_obs(rng, []), rng=rng)
    raw = serialize_message(msg)
    with pytest.raises(DecodeError, match="2 camera_names but 1 images"):
        decode_transition(raw)
    with pytest.raises(DecodeError, match="2 camera_names but 1 images"):
        transition_key(raw)


@pytest.mark.parametrize("encoding,channels", [("bgr8", 3), ("mono8", 1), ("rgba8", 4), ("", 3), ("rgb16", 6)])
def test_non_rgb8_image_raises(encoding, channels):
    rng = np.random.default_rng(6)
    cams = [("wrist", make_image(rng, 3, 5)), ("side_cam", make_image(rng, 3, 5, encoding=encoding,
                                                                        channels=channels))]
    msg = make_transition(make_obs(rng, []), make_obs(rng, cams), rng=rng)
    raw = serialize_message(msg)
    with pytest.raises(DecodeError, match=f"next_obs.images\\[1\\]: camera 'side_cam' has encoding '{encoding}'"):
        decode_transition(raw)
    for cut in range(len(raw)):                      # a cut one is still an error, never a wrong result
        with pytest.raises(DecodeError):
            decode_transition(raw[:cut])
    assert transition_key(raw) == expected_key(msg)  # the key does not look at images


def test_corruption_never_raises_anything_else():
    """Random byte damage gives a DecodeError or a decoded message, never another exception."""
    rng = np.random.default_rng(11)
    raw = bytearray(serialize_message(small_transition()))
    for _ in range(3000):
        bad = bytearray(raw)
        for pos in rng.integers(0, len(raw), int(rng.integers(1, 4))):
            bad[pos] = int(rng.choice([0, 1, 2, 3, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
        for fn in (decode_transition, transition_key):
            try:
                fn(bytes(bad))
            except DecodeError:
                pass


# -- timing (run by hand) ----------------------------------------------------------------------------------
def _rclpy_to_numpy(buf: bytes) -> tuple:
    """What the replay buffer did before the codec: deserialize, then convert the arrays to numpy."""
    msg = deserialize_message(buf, Transition)

    def obs(o: Observation) -> tuple:
        return (np.asarray(o.proprio, dtype=np.float32), list(o.camera_names),
                [reference_image(im) for im in o.images])

    return (msg.robot_id, obs(msg.obs), np.asarray(msg.action, dtype=np.float32), obs(msg.next_obs))


def benchmark(size: int = 128, number: int = 200, repeat: int = 5) -> dict[str, float]:
    """Best-of-``repeat`` microseconds per call for the 2-camera transition of ``size x size`` images."""
    buf = serialize_message(two_camera_transition(size))
    cases = {
        "deserialize_message": lambda: deserialize_message(buf, Transition),
        "deserialize_message + numpy": lambda: _rclpy_to_numpy(buf),
        "decode_transition": lambda: decode_transition(buf),
        "transition_key": lambda: transition_key(buf),
    }
    return {name: min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6 for name, fn in cases.items()}


if __name__ == "__main__":
    print(f"Transition with 2 cameras 128x128 rgb8 ({len(serialize_message(two_camera_transition()))} bytes):")
    for name, us in benchmark().items():
        print(f"  {name:30s} {us:8.1f} us")
