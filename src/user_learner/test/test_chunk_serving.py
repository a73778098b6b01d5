"""The inference side of action chunks: when a robot's next chunk is asked for, and what the policy gets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from user_learner.serving import ChunkScheduler, PolicyServer

H, A = 4, 7


class CountingChunkPolicy:
    """A chunk policy for tests: row i of the chunk is (calls, i, ...); remembers the instructions it got."""

    chunk_size = H
    uses_instruction = True

    def __init__(self) -> None:
        self.calls = 0
        self.instructions: list[str] = []

    def load_policy_state_dict(self, d) -> None:
        pass

    def act(self, state, pixels, deterministic, generator=None, instruction=None):
        self.calls += 1
        self.instructions.append(instruction)
        out = np.zeros((H, A), np.float32)
        out[:, 0] = self.calls / 100
        out[:, 1] = np.arange(H) / 10
        return out


def queries(sched: ChunkScheduler, steps, robot="franka_0", episode=1) -> list[int]:
    return [s for s in steps if sched.due(robot, episode, s)]


def test_one_query_per_chunk_by_default():
    assert queries(ChunkScheduler(H), range(12)) == [0, 4, 8]


def test_replan_every_gives_overlapping_chunks():
    assert queries(ChunkScheduler(H, replan_every=2), range(9)) == [0, 2, 4, 6, 8]
    assert queries(ChunkScheduler(H, replan_every=1), range(5)) == [0, 1, 2, 3, 4]


def test_single_action_policies_are_asked_at_every_observation():
    assert queries(ChunkScheduler(1), [0, 1, 1, 1, 2, 3]) == [0, 1, 1, 1, 2, 3]


def test_a_repeated_step_means_the_robot_held_and_is_answered_again():
    sched = ChunkScheduler(H)
    assert queries(sched, [0, 1, 2, 2, 3, 4, 5, 6]) == [0, 2, 6], "step 2 again: the robot holds there"


def test_a_new_episode_or_another_robot_is_asked_at_once():
    sched = ChunkScheduler(H)
    assert queries(sched, [0, 1, 2], episode=1) == [0]
    assert queries(sched, range(6), episode=2) == [0, 4], "a new episode starts a new chunk"
    assert queries(sched, [5, 6], robot="franka_1", episode=7) == [5], "robots are scheduled apart"
    assert queries(sched, [2], episode=2) == [], "an observation older than the last query is not answered"


def test_replan_every_must_be_within_the_chunk():
    with pytest.raises(ValueError, match="replan_every must be in 1..4 .* got 5"):
        ChunkScheduler(H, replan_every=5)
    assert ChunkScheduler(H, replan_every=0).replan_every == H


def test_the_server_passes_the_instruction_only_to_policies_that_use_it():
    server = PolicyServer(CountingChunkPolicy, 0, ["franka_0"])
    assert server.chunk_size == H and server.uses_instruction
    chunk = server.act("franka_0", np.zeros(3, np.float32), None, False, instruction="insert the peg")
    assert chunk.shape == (H, A) and server.policy.instructions == ["insert the peg"]

    class Plain:   # an existing single-action policy: no instruction keyword
        chunk_size = 1

        def act(self, state, pixels, deterministic, generator=None):
            return np.full(A, 0.5, np.float32)

    plain = PolicyServer(Plain, 0, ["franka_0"])
    assert plain.chunk_size == 1 and not plain.uses_instruction
    assert plain.act("franka_0", np.zeros(3, np.float32), None, True, instruction="ignored").shape == (A,)
    assert isinstance(server.generators["franka_0"], torch.Generator)
