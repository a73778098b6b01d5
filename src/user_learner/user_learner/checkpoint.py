"""Crash-safe learner checkpoints: ``<dir>/ckpt_<step:09d>.pt``, newest K kept.

Contract:
- ``save_checkpoint`` writes a temporary file in the same directory, flushes and fsyncs it, renames it
  over the final name (atomic on POSIX) and fsyncs the directory, so after it returns the checkpoint
  survives a crash or power loss, and a reader never sees a half-written ``ckpt_*.pt``.
- ``load_latest_checkpoint`` returns the newest file that loads; a corrupt or truncated one (e.g.
  damaged by a disk or copy fault) is skipped with a ``CheckpointWarning`` and the previous one is used.
- Leftover ``.ckpt_*.tmp`` files of a crashed writer are never read and are removed by the next save.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_TMP_PREFIX = ".ckpt_"


class CheckpointWarning(UserWarning):
    """A checkpoint file could not be read and was skipped."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """The canonical file name for the checkpoint taken at ``step``: ``ckpt_000001200.pt``."""
    return Path(directory) / f"ckpt_{step:09d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_*.pt`` in ``directory``, oldest first (empty if it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / name) for name in os.listdir(directory)
             if (m := _NAME.match(name))]
    return sorted(found)


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep: int | None = 3) -> Path:
    """Write ``payload`` to ``path`` atomically and durably; then keep only the newest ``keep`` checkpoints.

    ``keep=None`` keeps everything. Pruning only touches ``ckpt_*.pt`` files in the same directory.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)
    if keep is not None:
        _prune(directory, keep, tmp_name)
    return path


def load_latest_checkpoint(directory: str | Path, weights_only: bool = True,
                           map_location: str | torch.device | None = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """``(path, payload)`` of the newest readable checkpoint in ``directory``, or None if there is none.

    ``weights_only=True`` (safe unpickling) suits payloads of tensors and plain Python values, such as
    ``SACAgent.state_dict()``.
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            payload = torch.load(path, map_location=map_location, weights_only=weights_only)
        except Exception as exc:  # truncated zip, bad pickle, I/O error: fall back to an older one
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}",
                          CheckpointWarning, stacklevel=2)
            continue
        return path, payload
    return None


def _prune(directory: Path, keep: int, own_tmp: str) -> None:
    checkpoints = list_checkpoints(directory)
    for _, old in checkpoints[:max(len(checkpoints) - keep, 0)]:
        with contextlib.suppress(OSError):
            old.unlink()
    # Temporary files left by an earlier writer that crashed mid-save.
    for name in os.listdir(directory):
        if name.startswith(_TMP_PREFIX) and name.endswith(".tmp") and str(directory / name) != own_tmp:
            with contextlib.suppress(OSError):
                (directory / name).unlink()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some file systems (and Windows) cannot open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

