"""ThreadedExecutor: callbacks still run concurrently on workers, and the spinning thread sleeps between
messages instead of re-submitting a queued handler (the stock MultiThreadedExecutor's busy loop)."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from user_common.executors import ThreadedExecutor

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "test"))
from ros_isolation import isolated_ros_env  # noqa: E402

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Spun:
    """A subscriber node and a publisher node in one context, the subscriber spun by ``executor``; counts
    the spinning thread's trips through ``wait_for_ready_callbacks``."""

    def __init__(self, executor_cls, callback):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.sub_node = rclpy.create_node("sub", context=self.ctx)
        self.pub_node = rclpy.create_node("pub", context=self.ctx)
        self.sub_node.create_subscription(String, "t", callback, QOS, callback_group=ReentrantCallbackGroup())
        self.pub = self.pub_node.create_publisher(String, "t", QOS)
        self.ex = executor_cls(num_threads=2, context=self.ctx)
        self.ex.add_node(self.sub_node)
        self.trips = 0
        wait = self.ex.wait_for_ready_callbacks

        def counted(*a, **k):
            self.trips += 1
            return wait(*a, **k)

        self.ex.wait_for_ready_callbacks = counted
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()
        end = time.monotonic() + 10
        while self.pub.get_subscription_count() < 1:
            assert time.monotonic() < end, "publisher and subscription did not match within 10 s"
            time.sleep(0.02)

    def close(self):
        self.ex.shutdown(timeout_sec=2)
        self.sub_node.destroy_node()
        self.pub_node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture
def spun():
    made = []

    def make(executor_cls, callback):
        s = Spun(executor_cls, callback)
        made.append(s)
        return s

    with isolated_ros_env():
        yield make
        for s in made:
            s.close()


def test_callbacks_run_concurrently_on_worker_threads(spun):
    both = threading.Barrier(2, timeout=5)
    names = []

    def cb(msg):
        names.append(threading.current_thread().name)
        both.wait()   # returns only when a second callback runs at the same time

    s = spun(ThreadedExecutor, cb)
    s.pub.publish(String(data="a"))
    s.pub.publish(String(data="b"))
    end = time.monotonic() + 10
    while len(names) < 2 and time.monotonic() < end:
        time.sleep(0.02)
    assert len(names) == 2 and not both.broken, "two callbacks of a reentrant group must run at the same time"
    assert threading.main_thread().name not in names and s.thread.name not in names


PUBLISHER = """
import time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
rclpy.init()
pub = rclpy.create_node("other_process").create_publisher(String, "t", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
while True:
    pub.publish(String(data="x"))
    time.sleep(0.5)
"""


def test_the_spinning_thread_sleeps_between_messages(spun):
    """The stock executor made 72 to 3251 trips in the same second here (it varies run to run)."""
    got = []
    s = spun(ThreadedExecutor, got.append)
    other = subprocess.Popen([sys.executable, "-c", PUBLISHER])   # the loop needs a message from another process
    try:
        end = time.monotonic() + 20
        while not got:
            assert time.monotonic() < end and other.poll() is None, "no message from the other process"
            time.sleep(0.02)
        trips, n = s.trips, len(got)
        time.sleep(1.0)
        trips, n = s.trips - trips, len(got) - n
    finally:
        other.kill()
        other.wait()
    print(f"ThreadedExecutor: {trips} trips through wait_for_ready_callbacks in 1 s with {n} messages (2 Hz)")
    assert trips < 10 * max(n, 1), f"the spinning thread made {trips} trips for {n} messages"
