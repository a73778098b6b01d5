"""No image crosses twice: a transition's observation images that the previous transition's ``next_obs``
carried cross as references (``dedup_images``; src/user_link/README.md, "No image sent twice").

Out (edge): every transition goes with an attachment ``img1 <json>`` that lists the ``obs`` images whose bytes
were left out and their digests; ``next_obs`` always travels whole. A resent transition (the robot's outbox
sends it again: it was not acknowledged) travels whole, and so does the first one after a reconnect.
In (cloud): the missing bytes come from the previous transitions' ``next_obs`` images of the same robot,
matched by digest; a transition whose reference cannot be filled is dropped (no acknowledgement: the robot
resends it, whole).
"""
from __future__ import annotations

import collections
import hashlib
import json
from typing import Any

from .codec import Codec

TAG = b"img1 "
#: transitions (robot, episode, step) remembered to tell a resend from a first send
SEEN_MAX = 200_000
#: earlier transitions per robot whose next_obs images the in side keeps for references
KEEP_PER_ROBOT = 2


def digest(data: Any) -> str:
    """A short content digest of an image's bytes."""
    return hashlib.blake2b(memoryview(data), digest_size=16).hexdigest()


def _msg_type() -> Any:
    from user_msgs.msg import Transition

    return Transition


class DedupOut(Codec):
    """Edge side: leaves out the obs images that the last transition sent for the same robot carried."""

    def __init__(self) -> None:
        self.last: dict[str, set[str]] = {}      # robot -> digests of the last sent transition's next_obs images
        self.seen: collections.OrderedDict[tuple[str, int, int], None] = collections.OrderedDict()
        self.stats = {"images": 0, "images_left_out": 0, "bytes_left_out": 0, "resent_whole": 0}

    def encode(self, cdr: bytes) -> list[tuple[bytes, bytes | None]]:
        from rclpy.serialization import deserialize_message, serialize_message

        msg = deserialize_message(cdr, _msg_type())
        if not msg.obs.images and not msg.next_obs.images:
            self.last[msg.robot_id] = set()
            return [(cdr, None)]      # nothing to leave out: plain CDR, and the other side skips decoding
        key = (msg.robot_id, int(msg.episode_id), int(msg.step))
        resend = key in self.seen
        self.seen[key] = None
        if len(self.seen) > SEEN_MAX:
            self.seen.popitem(last=False)
        prev = set() if resend else self.last.get(msg.robot_id, set())
        self.stats["resent_whole"] += resend
        refs: list[list[Any]] = []
        for i, img in enumerate(msg.obs.images):
            self.stats["images"] += 1
            d = digest(img.data)
            if d in prev and len(img.data):
                refs.append([i, d])
                self.stats["images_left_out"] += 1
                self.stats["bytes_left_out"] += len(img.data)
                img.data = b""
        self.last[msg.robot_id] = {digest(img.data) for img in msg.next_obs.images}
        payload = serialize_message(msg) if refs else cdr
        return [(payload, TAG + json.dumps({"refs": refs}).encode())]

    def on_reconnect(self) -> None:
        self.last.clear()


class DedupIn(Codec):
    """Cloud side: fills left-out obs images from the same robot's earlier next_obs images."""

    def __init__(self) -> None:
        self.images: dict[str, collections.deque[dict[str, bytes]]] = {}
        self.stats = {"filled": 0, "dropped": 0}

    def decode(self, payload: bytes, attachment: bytes) -> list[bytes]:
        from rclpy.serialization import deserialize_message, serialize_message

        if not attachment.startswith(TAG):
            raise ValueError(f"not an image-dedup attachment: {attachment[:16]!r}")
        refs = json.loads(attachment[len(TAG):])["refs"]
        msg = deserialize_message(payload, _msg_type())
        known = self.images.setdefault(msg.robot_id, collections.deque(maxlen=KEEP_PER_ROBOT))
        for i, d in refs:
            data = next((imgs[d] for imgs in reversed(known) if d in imgs), None)
            if data is None or i >= len(msg.obs.images):
                self.stats["dropped"] += 1
                raise ValueError(f"transition {msg.robot_id} episode {msg.episode_id} step {msg.step}: obs image "
                                 f"{i} refers to bytes this side does not hold (the link was cut?); the robot "
                                 f"resends it whole")
            msg.obs.images[i].data = data
            self.stats["filled"] += 1
        known.append({digest(img.data): bytes(img.data) for img in msg.next_obs.images})
        return [serialize_message(msg) if refs else payload]


def codec_factory(bridge: Any, topic: str, direction: str) -> Codec | None:
    """The dedup codec of a transitions topic (None when ``dedup_images`` is off: plain CDR)."""
    if not bridge.cfg.dedup_images:
        return None
    return DedupOut() if direction == "out" else DedupIn()
