"""Training batches as tensors: numpy batches (keys, shapes and dtypes in ``user_common.features``)
to torch, one observation to tensors, and the shape check an agent runs on every batch."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from user_common.features import PIXEL_KEYS, Features


def batch_from_numpy(arrays: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Convert a batch of numpy arrays to tensors: pixels stay uint8, names (robot_id, embodiment) stay
    numpy arrays of str, everything else becomes float32.

    Raises ``TypeError`` for pixels that are not uint8 (a float image in ``[0, 1]`` would silently
    turn black if cast).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind in "OUS":   # robot_id, embodiment: names stay numpy arrays of str
            out[key] = value
            continue
        if key in PIXEL_KEYS:
            if value.dtype != np.uint8:
                raise TypeError(f"batch[{key!r}]: pixels must be uint8, got {value.dtype}")
            tensor = torch.from_numpy(np.ascontiguousarray(value))
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        out[key] = tensor.to(device)
    return out


def obs_to_tensors(state: np.ndarray, pixels: np.ndarray | None,
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """One observation -> ``{"state": [1, D] float32, "pixels": [1, n, H, W, 3] uint8}`` (pixels only if given)."""
    out = {"state": torch.from_numpy(np.asarray(state, dtype=np.float32).reshape(1, -1)).to(device)}
    if pixels is not None:
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise TypeError(f"pixels: expected uint8 [n, H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
        out["pixels"] = torch.from_numpy(np.ascontiguousarray(pixels)[None]).to(device)
    return out


def check_batch(batch: Mapping[str, torch.Tensor], spec: Features) -> int:
    """Check keys, shapes and dtypes of a training batch against ``spec``; return the batch size.

    Raises ``ValueError`` naming the first offending key.
    """
    for key in spec.batch_keys():
        if key not in batch:
            raise ValueError(f"batch: missing key {key!r} (have {sorted(batch)})")
    size = batch["state"].shape[0]
    expected = {
        "state": ((size, spec.state_dim), torch.float32),
        "next_state": ((size, spec.state_dim), torch.float32),
        "action": ((size, spec.action_dim), torch.float32),
        "reward": ((size,), torch.float32),
        "terminated": ((size,), torch.float32),
    }
    if spec.cameras:
        expected["pixels"] = ((size, *spec.image_shape), torch.uint8)
        expected["next_pixels"] = ((size, *spec.image_shape), torch.uint8)
    for key, (shape, dtype) in expected.items():
        tensor = batch[key]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"batch[{key!r}]: expected {dtype} {list(shape)}, "
                             f"got {tensor.dtype} {list(tensor.shape)}")
    return size
