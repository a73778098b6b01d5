"""What a policy observes and what a training batch holds.

A batch is a plain ``dict[str, torch.Tensor]``; with ``B`` transitions, ``n`` cameras and images of
``H x W`` pixels:

=================  =========  ==============================  =====================================
key                dtype      shape                           meaning
=================  =========  ==============================  =====================================
``state``          float32    ``[B, state_dim]``              proprioception at time t
``pixels``         uint8      ``[B, n, H, W, 3]``             RGB images at t (only with cameras)
``action``         float32    ``[B, action_dim]``             action taken at t, in ``[-1, 1]``
``reward``         float32    ``[B]``                         reward for (t, action)
``terminated``     float32    ``[B]``                         1 = true end, do not bootstrap
``next_state``     float32    ``[B, state_dim]``              proprioception at t + 1
``next_pixels``    uint8      ``[B, n, H, W, 3]``             images at t + 1 (only with cameras)
=================  =========  ==============================  =====================================

Pixels stay ``uint8`` all the way into the image encoder, so the learner trains on exactly the
bytes the policy saw; a time-limit truncation is *not* ``terminated`` (it still bootstraps).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import torch

#: keys holding images (uint8); every other batch key is converted to float32
PIXEL_KEYS = ("pixels", "next_pixels")
#: keys every batch carries, whatever the observation
BASE_KEYS = ("state", "action", "reward", "terminated", "next_state")


@dataclasses.dataclass(frozen=True)
class ObsSpec:
    """Sizes of one robot's observation and action; the networks are built from it."""

    state_dim: int                                  # proprio length (Franka: pose, velocity, gripper, wrench = 20)
    cameras: tuple[str, ...] = ()                   # () -> state-only policy
    image_size: tuple[int, int] = (128, 128)        # (width, height) of every camera image
    action_dim: int = 7

    @property
    def n_cameras(self) -> int:
        """Number of cameras (0 for a state-only policy)."""
        return len(self.cameras)

    @property
    def pixel_shape(self) -> tuple[int, int, int, int]:
        """Shape of one observation's pixels, ``(n_cameras, height, width, 3)``."""
        width, height = self.image_size
        return (self.n_cameras, height, width, 3)

    def batch_keys(self) -> tuple[str, ...]:
        """The keys a training batch for this spec must hold."""
        return BASE_KEYS + (PIXEL_KEYS if self.cameras else ())

    def validate(self) -> None:
        """Raise ``ValueError("key: problem")`` if the spec is unusable."""
        if self.state_dim < 0:
            raise ValueError(f"state_dim: must be >= 0, got {self.state_dim}")
        if self.state_dim == 0 and not self.cameras:
            raise ValueError("state_dim: must be > 0 when there are no cameras")
        if self.action_dim <= 0:
            raise ValueError(f"action_dim: must be > 0, got {self.action_dim}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: names must be unique, got {list(self.cameras)}")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            # the conv trunk needs a few pixels left after its strided layers
            raise ValueError(f"image_size: must be (width, height), each >= 32, got {self.image_size}")


def batch_from_numpy(arrays: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Convert a batch of numpy arrays to tensors: pixels stay uint8, everything else becomes float32.

    Raises ``TypeError`` for pixels that are not uint8 (a float image in ``[0, 1]`` would silently
    turn black if cast).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in arrays.items():
        value = np.asarray(value)
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


def check_batch(batch: Mapping[str, torch.Tensor], spec: ObsSpec) -> int:
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
        expected["pixels"] = ((size, *spec.pixel_shape), torch.uint8)
        expected["next_pixels"] = ((size, *spec.pixel_shape), torch.uint8)
    for key, (shape, dtype) in expected.items():
        tensor = batch[key]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"batch[{key!r}]: expected {dtype} {list(shape)}, "
                             f"got {tensor.dtype} {list(tensor.shape)}")
    return size
