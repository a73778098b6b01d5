"""Checkpoints are written atomically, only the newest K are kept, and a damaged newest file is skipped."""
from __future__ import annotations

import os

import pytest
import torch

from user_learner.checkpoint import (CheckpointWarning, checkpoint_path, list_checkpoints, load_latest_checkpoint,
                                     save_checkpoint)


def payload(step: int) -> dict:
    return {"step": step, "weights": torch.full((64, 64), float(step)), "nested": {"ok": True}}


def test_save_then_load_latest(tmp_path):
    for step in (100, 200):
        save_checkpoint(checkpoint_path(tmp_path, step), payload(step))
    path, loaded = load_latest_checkpoint(tmp_path)
    assert path.name == "ckpt_000000200.pt"
    assert loaded["step"] == 200 and torch.equal(loaded["weights"], payload(200)["weights"])
    assert loaded["nested"] == {"ok": True}


def test_only_the_newest_k_are_kept_and_no_temp_files_remain(tmp_path):
    for step in range(1, 7):
        save_checkpoint(checkpoint_path(tmp_path, step * 100), payload(step * 100), keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [400, 500, 600]
    assert sorted(os.listdir(tmp_path)) == ["ckpt_000000400.pt", "ckpt_000000500.pt", "ckpt_000000600.pt"]


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    for step in (100, 200, 300):
        save_checkpoint(checkpoint_path(tmp_path, step), payload(step))
    newest = checkpoint_path(tmp_path, 300)
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])  # e.g. a disk fault or an interrupted copy
    with pytest.warns(CheckpointWarning, match="ckpt_000000300.pt"):
        path, loaded = load_latest_checkpoint(tmp_path)
    assert path.name == "ckpt_000000200.pt" and loaded["step"] == 200


def test_no_readable_checkpoint_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path / "missing") is None
    assert load_latest_checkpoint(tmp_path) is None
    checkpoint_path(tmp_path, 5).write_bytes(b"not a checkpoint")
    with pytest.warns(CheckpointWarning):
        assert load_latest_checkpoint(tmp_path) is None


def test_failed_save_leaves_previous_checkpoints_and_no_temp_file(tmp_path):
    save_checkpoint(checkpoint_path(tmp_path, 100), payload(100))
    with pytest.raises(Exception):
        save_checkpoint(checkpoint_path(tmp_path, 200), {"unpicklable": lambda: None})
    assert os.listdir(tmp_path) == ["ckpt_000000100.pt"], "a failed save must not leave partial files"
    assert load_latest_checkpoint(tmp_path)[1]["step"] == 100


def test_leftover_temp_file_of_a_crashed_writer_is_ignored_and_cleaned(tmp_path):
    save_checkpoint(checkpoint_path(tmp_path, 100), payload(100))
    stale = tmp_path / ".ckpt_000000200.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert load_latest_checkpoint(tmp_path)[1]["step"] == 100
    save_checkpoint(checkpoint_path(tmp_path, 300), payload(300))
    assert not stale.exists(), "the next save removes temp files left by a crash"
