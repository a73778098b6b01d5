"""The interface of a topic's encoding across the link (``bridge.CODECS`` picks one per topic kind)."""
from __future__ import annotations


class Codec:
    """How one topic's samples cross, per direction; the default sends the DDS bytes unchanged.

    Out side: ``encode(cdr)`` -> the (payload, attachment) pairs to put (none: hold it back). In side:
    ``decode(payload, attachment)`` -> the CDR messages to publish on DDS. A sample without an attachment is
    plain CDR (zenoh-bridge-ros2dds' format) and is published as it came: codecs mark what they changed with
    an attachment, so an official bridge's samples still work. ``on_query(params)``: the other side asked
    this out side's key with query parameters (e.g. for a full weights snapshot).
    """

    def encode(self, cdr: bytes) -> list[tuple[bytes, bytes | None]]:
        return [(cdr, None)]

    def decode(self, payload: bytes, attachment: bytes) -> list[bytes]:
        raise ValueError(f"{type(self).__name__} cannot decode an encoded sample (attachment {attachment[:40]!r})")

    def on_query(self, params: str) -> None:
        pass

    def on_reconnect(self) -> None:
        """The link was down and is back: forget what the other side may not have received."""
