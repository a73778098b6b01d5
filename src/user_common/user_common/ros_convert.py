"""Conversions between numpy data and ROS messages, shared by the HAL nodes."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image


def image_to_msg(img: np.ndarray, stamp, frame_id: str) -> Image:
    """An ``(H, W, 3)`` uint8 RGB array as an uncompressed ``rgb8`` Image (lossless)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(img).tobytes()
    return msg


def msg_to_image(msg: Image) -> np.ndarray:
    """Inverse of ``image_to_msg`` (rgb8 only); returns a read-only view when possible."""
    if msg.encoding != "rgb8":
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (expected rgb8)")
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    rows = buf.reshape(msg.height, msg.step)[:, : msg.width * 3]
    return rows.reshape(msg.height, msg.width, 3)
