"""Weights blobs without ROS: bit-exact packing, chunking, reassembly rules, shared-memory files."""
import os
import random
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from user_learner.weights import (FORMAT_TENSORS, FORMAT_TORCH, ChunkFields, Reassembler, blob_format, chunk_blob,
                                  chunk_span, default_shm_dir, open_shm_blob, pack_state_dict, remove_stale_shm_blobs,
                                  release_pages, sha256_hex, shm_blob_prefix, unpack_state_dict, write_blob_file)


def _bits(t: torch.Tensor) -> bytes:
    """Raw bytes of a tensor (bit-exact comparison, NaNs included)."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_bit_exact(a: dict, b: dict) -> None:
    assert list(a) == list(b), "keys or their order changed"
    for k in a:
        assert b[k].dtype == a[k].dtype, k
        assert b[k].shape == a[k].shape, k
        assert _bits(b[k]) == _bits(a[k]), k


def model_state_dict() -> "OrderedDict[str, torch.Tensor]":
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.LazyLinear(4))
    model(torch.randn(2, 3, 10, 10))  # materialize, BatchNorm running stats and num_batches_tracked (int64)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(1)
    sd["extra.f64"] = torch.randn(5, 3, dtype=torch.float64, generator=g)
    sd["extra.f16"] = torch.randn(7, generator=g).half()
    sd["extra.bf16"] = torch.randn(3, 3, generator=g).to(torch.bfloat16)
    sd["extra.i8"] = torch.randint(-128, 127, (9,), dtype=torch.int8, generator=g)
    sd["extra.u8"] = torch.randint(0, 255, (4, 4), dtype=torch.uint8, generator=g)
    sd["extra.bool"] = torch.rand(6, generator=g) > 0.5
    sd["extra.c64"] = torch.randn(2, 2, dtype=torch.complex64, generator=g)
    sd["extra.scalar"] = torch.tensor(3.25)
    sd["extra.empty"] = torch.empty(0, 4)
    sd["extra.nan"] = torch.tensor([float("nan"), float("inf"), -0.0])
    sd["extra.noncontig"] = torch.randn(4, 6, generator=g).t()
    return sd


@pytest.mark.parametrize("fmt", [None, FORMAT_TENSORS, FORMAT_TORCH])
def test_state_dict_round_trip_is_bit_exact(fmt):
    sd = model_state_dict()
    assert sd["1.num_batches_tracked"].dtype == torch.int64
    blob = pack_state_dict(sd, fmt)
    assert blob_format(blob) == (fmt or FORMAT_TENSORS)
    assert_bit_exact(sd, unpack_state_dict(blob))
    assert_bit_exact(sd, unpack_state_dict(bytes(blob)))  # read-only input works too
    assert pack_state_dict(sd, fmt) == blob or fmt == FORMAT_TORCH, "packing must be deterministic"


def test_round_trip_loads_into_a_model():
    torch.manual_seed(3)
    src = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    dst = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    dst.load_state_dict(unpack_state_dict(pack_state_dict(src.state_dict())))
    x = torch.randn(5, 16)
    assert torch.equal(src(x), dst(x))


def test_non_tensor_entries_fall_back_to_torch_save():
    sd = {"w": torch.ones(3), "_extra_state": {"step": 7}}
    blob = pack_state_dict(sd)
    assert blob_format(blob) == FORMAT_TORCH
    back = unpack_state_dict(blob)
    assert back["_extra_state"] == {"step": 7} and torch.equal(back["w"], sd["w"])
    with pytest.raises(ValueError):
        pack_state_dict(sd, FORMAT_TENSORS)


def test_chunk_spans_cover_the_blob_exactly():
    for total in (0, 1, 7, 100, 4096, 4097):
        for n in (1, 2, 3, 5, 64):
            spans = [chunk_span(total, n, i) for i in range(n)]
            assert spans[0][0] == 0 and spans[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def _chunks(blob, version, chunk_bytes=100, **kw):
    return chunk_blob(blob, version, "sac", chunk_bytes=chunk_bytes, **kw)


def test_chunks_carry_sha_size_and_format():
    blob = pack_state_dict(model_state_dict())
    chunks = _chunks(blob, 4, chunk_bytes=1000)
    assert len(chunks) == -(-len(blob) // 1000)
    assert all(len(c.data) <= 1000 for c in chunks)
    assert {(c.version, c.num_chunks, c.total_bytes, c.sha256, c.format, c.policy_name) for c in chunks} == {
        (4, len(chunks), len(blob), sha256_hex(blob), FORMAT_TENSORS, "sac")}
    assert b"".join(bytes(c.data) for c in chunks) == bytes(blob)
    assert len(_chunks(blob, 4, num_chunks=7)) == 7
    assert len(_chunks(b"", 1)) == 1


def test_reassembly_in_shuffled_order_with_duplicates():
    sd = model_state_dict()
    blob = pack_state_dict(sd)
    chunks = _chunks(blob, 5)
    stream = chunks + random.Random(0).sample(chunks, 10)
    random.Random(1).shuffle(stream)
    r = Reassembler()
    results = [r.add(c) for c in stream]
    done = [x for x in results if x is not None]
    assert len(done) == 1, "a version completes exactly once; duplicates after completion are ignored"
    version, out = done[0]
    assert version == 5 and bytes(out) == bytes(blob)
    assert_bit_exact(sd, unpack_state_dict(out))
    assert r.pop_warnings() == [] and r.in_progress == []


def test_sha_mismatch_drops_the_version_with_a_warning():
    blob = bytearray(pack_state_dict(model_state_dict()))
    chunks = _chunks(blob, 2)
    bad = ChunkFields(**{**chunks[3].__dict__, "data": bytes(len(chunks[3].data))})  # zeroed payload
    r = Reassembler()
    assert all(r.add(c) is None for c in [bad] + chunks[:3] + chunks[4:])
    warnings = r.pop_warnings()
    assert len(warnings) == 1 and "v2" in warnings[0] and "sha256" in warnings[0]
    assert r.last_completed is None and r.in_progress == []
    # a clean retransmission of the same version still completes
    assert [x for x in (r.add(c) for c in chunks) if x is not None][0][0] == 2


def test_wrong_chunk_length_and_bad_index_are_ignored_with_warnings():
    chunks = _chunks(b"x" * 250, 1)
    r = Reassembler()
    assert r.add(ChunkFields(**{**chunks[0].__dict__, "data": b"short"})) is None
    assert r.add(ChunkFields(**{**chunks[0].__dict__, "chunk_index": 9})) is None
    assert len(r.pop_warnings()) == 2
    assert [x for x in (r.add(c) for c in chunks) if x is not None][0][0] == 1


def test_older_versions_are_ignored_after_a_newer_one_completed():
    r = Reassembler()
    new = _chunks(b"n" * 300, 7)
    old = _chunks(b"o" * 300, 6)
    assert [r.add(c) for c in new][-1][0] == 7
    assert all(r.add(c) is None for c in old + new), "older and equal versions must be ignored"
    assert r.in_progress == [] and r.last_completed == 7 and r.pop_warnings() == []
    assert bytes(r.add(_chunks(b"m" * 50, 8)[0])[1]) == b"m" * 50


def test_newer_version_supersedes_an_incomplete_older_one():
    r = Reassembler()
    v3 = _chunks(b"a" * 1000, 3)
    v4 = _chunks(b"b" * 500, 4)
    for c in v3[:5]:
        assert r.add(c) is None
    assert r.progress() == (3, 5, 10)
    assert r.add(v4[0]) is None
    assert r.in_progress == [4], "at most one version in progress: the newer one"
    assert any("v3" in w and "superseded" in w for w in r.pop_warnings())
    assert all(r.add(c) is None for c in v3[5:]), "the rest of the superseded version is ignored"
    out = [x for x in (r.add(c) for c in v4[1:]) if x is not None]
    assert out[0][0] == 4 and bytes(out[0][1]) == b"b" * 500
    # a late joiner's history: tail of the previous snapshot, then the newest whole one
    r2 = Reassembler()
    done = [x for x in (r2.add(c) for c in v3[7:] + v4) if x is not None]
    assert [v for v, _ in done] == [4]


def test_metadata_change_within_a_version_restarts_it_and_policy_filter():
    r = Reassembler(policy_name="sac")
    a = _chunks(b"a" * 300, 1)
    b = _chunks(b"b" * 200, 1)
    r.add(a[0])
    assert all(r.add(c) is None for c in chunk_blob(b"z" * 300, 1, "other", chunk_bytes=100))
    done = [x for x in (r.add(c) for c in b) if x is not None]
    assert bytes(done[0][1]) == b"b" * 200
    assert any("same version" in w for w in r.pop_warnings())


def test_memory_bound_on_announced_size():
    r = Reassembler(max_total_bytes=1000)
    assert r.add(_chunks(b"x" * 2000, 1)[0]) is None and r.in_progress == []
    assert "max_total_bytes" in r.pop_warnings()[0]


def test_skip_to_drops_older_progress_and_ignores_its_chunks():
    r = Reassembler()
    v2, v3 = _chunks(b"a" * 300, 2), _chunks(b"b" * 300, 3)
    r.add(v2[0])
    r.skip_to(2)  # v2 arrived another way (shared memory)
    assert r.in_progress == [] and r.last_completed == 2
    assert all(r.add(c) is None for c in v2), "chunks of a version completed elsewhere are ignored"
    assert [x[0] for x in (r.add(c) for c in v3) if x is not None] == [3]
    r.skip_to(1)
    assert r.last_completed == 3, "skip_to never goes back"


@pytest.mark.parametrize("fmt", [FORMAT_TENSORS, FORMAT_TORCH])
def test_blob_file_in_shared_memory_mapped_privately(tmp_path, fmt):
    d = default_shm_dir() or str(tmp_path)  # any directory works; /dev/shm is the fast one
    sd = model_state_dict()
    path = os.path.join(d, f"{shm_blob_prefix()}test-{fmt}")
    try:
        n = write_blob_file(path, sd, fmt)
        blob = pack_state_dict(sd, fmt)
        assert n == len(blob)
        with open(path, "rb") as f:
            assert f.read() == bytes(blob), "the file holds exactly the packed blob (padding included)"
        with pytest.raises(FileExistsError):
            write_blob_file(path, blob)  # never rewrites a published file
        mm = open_shm_blob(path, n)
        os.unlink(path)  # the writer removes the file: the reader's mapping stays valid
        assert sha256_hex(mm) == sha256_hex(blob)
        got = unpack_state_dict(mm)
        assert_bit_exact(sd, got)
        if fmt == FORMAT_TENSORS:
            next(iter(got.values())).view(-1)[:1].zero_()  # private copy-on-write mapping: writable
            assert bytes(mm) != bytes(blob)
        write_blob_file(path, blob)  # a blob works too
        with pytest.raises(ValueError, match=f"has {n} bytes, expected {n + 1}"):
            open_shm_blob(path, n + 1)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_remove_stale_shm_blobs_only_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    mine = tmp_path / f"{shm_blob_prefix()}sac-v1-1"
    stale = tmp_path / f"{shm_blob_prefix(int(dead))}sac-v1-1"
    other = tmp_path / "user-weights-unrelated"
    for p in (mine, stale, other):
        p.write_bytes(b"x")
    assert remove_stale_shm_blobs(str(tmp_path)) == 1
    assert mine.exists() and other.exists() and not stale.exists()


def test_release_pages_gives_back_the_pages_of_a_buffer_nobody_uses():
    import numpy as np

    a = np.full(40 << 20, 7, dtype=np.uint8)  # several release steps
    assert release_pages(a)
    head = (-a.ctypes.data) % 4096  # bytes before the first whole page, and after the last one
    tail = (a.ctypes.data + a.nbytes) % 4096
    assert not a[head:a.nbytes - tail].any(), "whole pages are dropped (anonymous memory reads back as zeros)"
    assert (a[:head] == 7).all() and (a[a.nbytes - tail:] == 7).all(), "partial pages are left alone"
    assert not release_pages(bytes(1 << 20)), "read-only buffers are left alone"
