"""Weight sync over real DDS and shared memory, in the test's own ROS domain: learner process -> inference-side
subscriber."""
import os
import sys
import threading
import time

import pytest
import torch

from user_learner.weight_sync import WeightPublisher, WeightSubscriber, manifest_topic
from user_learner.weights import default_shm_dir, shm_blob_prefix

# Deterministic snapshot per version, shared by the publisher process and the test (exec'd in both).
MAKE_SRC = '''
import torch
def make_state_dict(version: int, mb: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(1000 + version)
    sd = {
        "pi.0.weight": torch.randn(64, 32, generator=g),
        "pi.0.bias": torch.randn(64, generator=g),
        "q.f64": torch.randn(8, 3, dtype=torch.float64, generator=g),
        "q.f16": torch.randn(33, generator=g).half(),
        "q.bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "bn.num_batches_tracked": torch.tensor(version, dtype=torch.int64),
        "mask": torch.rand(17, generator=g) > 0.5,
        "codes": torch.randint(-128, 127, (11,), dtype=torch.int8, generator=g),
        "empty": torch.empty(0, 3),
    }
    if mb:
        n = int(mb * (1 << 20)) // 4 // 1024
        sd["big"] = torch.randn(n, 1024, generator=g)
    return sd
'''
_ns: dict = {}
exec(MAKE_SRC, _ns)
make_state_dict = _ns["make_state_dict"]

PUBLISHER_SRC = MAKE_SRC + '''
import argparse, time, rclpy
from rclpy.executors import ExternalShutdownException
from user_learner.weight_sync import WeightPublisher, WEIGHTS_TOPIC, manifest_topic
ap = argparse.ArgumentParser()
ap.add_argument("--versions", default="1")
ap.add_argument("--mb", type=float, default=0.0)
ap.add_argument("--chunk-bytes", type=int, default=1 << 20)
ap.add_argument("--wait-subscribers", type=int, default=0)
ap.add_argument("--interval", type=float, default=0.0)
a = ap.parse_args()
rclpy.init()
node = rclpy.create_node("weights_test_publisher")
pub = WeightPublisher(node, policy_name="sac", chunk_bytes=a.chunk_bytes)
snapshots = {int(v): make_state_dict(int(v), a.mb) for v in a.versions.split(",")}
end = time.monotonic() + 20
while (node.count_subscribers(manifest_topic()) + node.count_subscribers(WEIGHTS_TOPIC) < a.wait_subscribers
       and time.monotonic() < end):
    time.sleep(0.05)
print("ready", flush=True)
for v, sd in snapshots.items():
    t0 = time.monotonic()
    st = pub.publish(sd, v)
    print(f"published v{v} bytes={st.total_bytes} chunks={st.num_chunks} t0={t0:.6f} "
          f"pack={st.pack_s:.3f} hash={st.hash_s:.3f} send={st.send_s:.3f}", flush=True)
    time.sleep(a.interval)
print("done", flush=True)
try:
    rclpy.spin(node)  # keep the transient-local history alive for late joiners
except (KeyboardInterrupt, ExternalShutdownException):
    pass
'''


def _bits(t):
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_bit_exact(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for k in expected:
        assert got[k].dtype == expected[k].dtype and got[k].shape == expected[k].shape, k
        assert _bits(got[k]) == _bits(expected[k]), k


@pytest.fixture
def publisher(procs, tmp_path):
    script = tmp_path / "weights_publisher.py"
    script.write_text(PUBLISHER_SRC)

    def start(*args: str):
        return procs.start("weights_publisher", [sys.executable, str(script), *args])
    return start


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[int, dict, float]] = []
        self.event = threading.Event()

    def __call__(self, version: int, sd: dict) -> None:
        self.got.append((version, sd, time.monotonic()))
        self.event.set()

    def versions(self) -> list[int]:
        return [v for v, _, _ in self.got]

    def wait_version(self, version: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.got and self.got[-1][0] >= version:
                return
            time.sleep(0.02)
        pytest.fail(f"version {version} not delivered within {timeout} s; got {self.versions()}")


def test_round_trip_bit_exact_and_versions_monotonic(ros_node, publisher):
    col = Collector()
    sub = WeightSubscriber(ros_node, col, policy_name="sac")
    # small chunks: each snapshot crosses as many messages
    pub = publisher("--versions", "1,2,3,4,5", "--chunk-bytes", "2048", "--wait-subscribers", "1",
                    "--interval", "0.05")
    pub.wait_for("done", timeout=30)
    col.wait_version(5, timeout=15)
    versions = col.versions()
    assert versions == sorted(set(versions)), f"versions not strictly increasing: {versions}"
    assert versions[-1] == 5
    for v, sd, _ in col.got:
        assert_bit_exact(make_state_dict(v), sd)
    assert sub.take_latest()[0] == 5 and sub.take_latest() is None
    if default_shm_dir() is not None:
        assert {h.via for h in sub.history} == {"shm"} and sub.fallback_reason is None, \
            "one host: snapshots are mapped from shared memory, no DDS chunks"
    sub.close()


def test_late_subscriber_gets_the_newest_snapshot_at_once(ros_node, publisher):
    pub = publisher("--versions", "1,2,3", "--chunk-bytes", "1024")
    pub.wait_for("done", timeout=30)
    time.sleep(0.5)
    col = Collector()
    t0 = time.monotonic()
    sub = WeightSubscriber(ros_node, col)
    col.wait_version(3, timeout=10)
    latency = col.got[-1][2] - t0
    time.sleep(0.5)  # nothing older may trickle in afterwards
    assert col.versions() == [3], "a late joiner must get exactly the newest snapshot, not the old ones"
    assert_bit_exact(make_state_dict(3), col.got[0][1])
    print(f"late joiner: v3 delivered {latency:.2f} s after the subscription was created "
          f"(first chunk after {sub.history[-1].first_chunk - t0:.2f} s)")
    assert latency < 5.0
    sub.close()


@pytest.mark.parametrize("transport", ["auto", "dds"])  # dds: like a reader on another host, chunks
def test_40mb_model_crosses_in_reasonable_time(ros_node, publisher, transport):
    col = Collector()
    sub = WeightSubscriber(ros_node, col, transport=transport)
    pub = publisher("--versions", "1", "--mb", "40", "--wait-subscribers", "1")
    m = pub.wait_for(r"published v1 bytes=(\d+) chunks=(\d+) t0=([\d.]+) pack=([\d.]+) hash=([\d.]+) "
                     r"send=([\d.]+)", timeout=40)
    col.wait_version(1, timeout=30)
    nbytes, chunks, t0 = int(m.group(1)), int(m.group(2)), float(m.group(3))
    elapsed = col.got[0][2] - t0  # CLOCK_MONOTONIC is shared by the processes of one host
    rx = sub.history[-1]
    print(f"\n40 MB snapshot: {nbytes / 1e6:.1f} MB in {chunks} chunks; publish call to delivery {elapsed:.2f} s "
          f"= {nbytes / 1e6 / elapsed:.0f} MB/s end to end (pack {m.group(4)} s, sha256 {m.group(5)} s, "
          f"send {m.group(6)} s; receive first chunk -> verified {rx.complete - rx.first_chunk:.2f} s "
          f"= {nbytes / 1e6 / (rx.complete - rx.first_chunk):.0f} MB/s)")
    assert_bit_exact(make_state_dict(1, 40), col.got[0][1])
    shm = transport == "auto" and default_shm_dir() is not None
    assert rx.via == ("shm" if shm else "dds") and (int(chunks) > 0) == (not shm)
    assert elapsed < 20.0
    sub.close()


def test_publish_async_drops_stale_snapshots_and_stays_monotonic(ros_node):
    col = Collector()
    sub = WeightSubscriber(ros_node, col, policy_name="sac")
    pub = WeightPublisher(ros_node, policy_name="sac", chunk_bytes=64 << 10)
    end = time.monotonic() + 10
    while pub.node.count_subscribers(manifest_topic()) < 1 and time.monotonic() < end:
        time.sleep(0.05)
    sd = make_state_dict(0, 4)
    t_calls = []
    for v in range(1, 11):
        sd["bn.num_batches_tracked"].fill_(v)
        t = time.monotonic()
        pub.publish_async(sd, v)  # copies (packs) the snapshot; hashing and sending happen in the background
        t_calls.append(time.monotonic() - t)
        sd["big"].add_(1.0)  # training goes on: must not leak into the queued snapshot
    with pytest.raises(ValueError):
        pub.publish_async(sd, 3)
    assert pub.flush(timeout=20)
    col.wait_version(10, timeout=15)
    versions = col.versions()
    assert versions == sorted(set(versions)) and versions[-1] == 10
    published = 10 - pub.dropped_stale
    print(f"publish_async: max call {max(t_calls) * 1e3:.1f} ms for 4 MB, {pub.dropped_stale} stale snapshots "
          f"dropped, {published} sent, {len(versions)} delivered")
    v, got, _ = col.got[-1]
    assert int(got["bn.num_batches_tracked"]) == 10
    expected = make_state_dict(0, 4)["big"]
    for _ in range(9):
        expected.add_(1.0)  # the same float operations as above: bit-exact
    assert torch.equal(got["big"], expected)
    pub.close()
    sub.close()


def _shm_files() -> set:
    d = default_shm_dir()
    return {n for n in os.listdir(d) if n.startswith(shm_blob_prefix())} if d else set()


def test_chunk_reader_joining_later_gets_the_current_snapshot_and_files_are_removed(ros_node):
    if default_shm_dir() is None:
        pytest.skip("no writable /dev/shm here: the shared-memory path is not used")
    pub = WeightPublisher(ros_node, policy_name="sac")
    st = pub.publish(make_state_dict(1, 2), 1)
    assert st.shm and st.num_chunks == 0, "no chunk subscriber: nothing crosses DDS but the manifest"
    assert len(_shm_files()) == 1
    col = Collector()
    sub = WeightSubscriber(ros_node, col, policy_name="sac", transport="dds")  # e.g. a reader on another host
    col.wait_version(1, timeout=15)  # the publisher's thread notices the chunk reader and sends v1
    assert_bit_exact(make_state_dict(1, 2), col.got[0][1])
    st = pub.publish(make_state_dict(2, 2), 2)
    assert st.num_chunks > 0
    col.wait_version(2, timeout=15)
    assert_bit_exact(make_state_dict(2, 2), col.got[-1][1])
    assert {h.via for h in sub.history} == {"dds"}
    pub.close()
    assert _shm_files() == set(), "close() removes the shared-memory files"
    sub.close()


def test_auto_reader_falls_back_to_chunks_when_there_is_no_file(ros_node):
    pub = WeightPublisher(ros_node, policy_name="sac", transport="dds")  # like a publisher on another host
    col = Collector()
    sub = WeightSubscriber(ros_node, col, policy_name="sac")
    end = time.monotonic() + 10
    while pub.node.count_subscribers(manifest_topic()) < 1 and time.monotonic() < end:
        time.sleep(0.05)
    pub.publish(make_state_dict(1), 1)
    col.wait_version(1, timeout=15)
    assert "not in shared memory" in (sub.fallback_reason or "")
    assert_bit_exact(make_state_dict(1), col.got[0][1])
    assert sub.history[-1].via == "dds"
    pub.close()
    sub.close()


def test_reader_rejects_a_shared_memory_file_that_does_not_match_its_sha256(ros_node):
    if default_shm_dir() is None:
        pytest.skip("no writable /dev/shm here: the shared-memory path is not used")
    import array
    import json

    from user_msgs.msg import PolicyWeights

    from user_learner.weight_sync import weights_qos
    from user_learner.weights import host_id, sha256_hex, write_blob_file
    path = os.path.join(default_shm_dir(), f"{shm_blob_prefix()}test-corrupt")
    n = write_blob_file(path, make_state_dict(1))
    try:
        raw = ros_node.create_publisher(PolicyWeights, manifest_topic(), weights_qos(1))
        col = Collector()
        sub = WeightSubscriber(ros_node, col)
        m = PolicyWeights(version=1, num_chunks=0, total_bytes=n, format="user_tensors_v1",
                          sha256=sha256_hex(b"something else"))
        m.data = array.array("B", json.dumps({"path": path, "host": host_id()}).encode())
        raw.publish(m)
        end = time.monotonic() + 10
        while sub.fallback_reason is None and time.monotonic() < end:
            time.sleep(0.02)
        assert "sha256 mismatch" in (sub.fallback_reason or ""), sub.fallback_reason
        assert col.got == [] and sub.latest() is None, "a file that fails verification is never delivered"
        sub.close()
        ros_node.destroy_publisher(raw)
    finally:
        os.unlink(path)


@pytest.mark.parametrize("transport", ["auto", "dds"])
def test_old_snapshots_are_freed_by_the_worker_once_unreferenced(ros_node, transport):
    pub = WeightPublisher(ros_node, policy_name="sac", transport=transport)
    sub = WeightSubscriber(ros_node, policy_name="sac", transport=transport)
    end = time.monotonic() + 10
    while pub.node.count_subscribers(manifest_topic()) + pub.node.count_subscribers("/user/policy/weights") < 1 \
            and time.monotonic() < end:
        time.sleep(0.05)
    pub.publish(make_state_dict(1, 1), 1)
    assert sub.wait_for_version(1, timeout=10) is not None
    v1 = sub.take_latest()  # a control loop holds v1
    pub.publish(make_state_dict(2, 1), 2)
    assert sub.wait_for_version(2, timeout=10) is not None
    time.sleep(1.0)
    assert sub.buffers_held == 2, "v1 is still referenced: it must stay valid"
    assert_bit_exact(make_state_dict(1, 1), v1[1])
    del v1  # the control loop swapped in v2: the worker frees v1 (without the GIL for the pages)
    end = time.monotonic() + 5
    while sub.buffers_held > 1 and time.monotonic() < end:
        time.sleep(0.05)
    assert sub.buffers_held == 1
    assert_bit_exact(make_state_dict(2, 1), sub.take_latest()[1])
    pub.close()
    sub.close()
