"""``ThreadedExecutor``: rclpy's MultiThreadedExecutor without its busy loop; every multi-threaded USER node
spins one.

rclpy's executor (jazzy 7.1.6) keeps yielding a handler that is queued in the thread pool but has not
started yet, and the multi-threaded executor submits it again each time (ros2/rclpy#1452, fixed upstream by
#1547 after jazzy's wheels were built). Once a subscription has received one message the spinning thread
loops without sleeping and holds the GIL, so the workers, and every other process on a small machine, starve:
measured here, a node receiving 1 kHz took 10 messages/s at 100% of a core, and a 200 Hz publisher in the same
process published at 7-14 Hz with gaps of 4 s. This executor submits each handler once and, while it waits
for a worker to start it, sleeps until one does.
"""
from __future__ import annotations

import threading

from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)


class ThreadedExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor (same arguments) whose spinning thread waits instead of re-submitting."""

    def __init__(self, num_threads: int | None = None, *, context=None) -> None:
        super().__init__(num_threads, context=context)
        self._queued: set = set()          # handlers submitted to the pool that no worker has started
        self._started = threading.Condition()
        self.resubmits_avoided = 0         # how often the stock executor would have submitted a handler again

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            handler, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._started:
            if handler in self._queued:
                self.resubmits_avoided += 1
                self._started.wait(0.05)   # until a worker starts a queued handler (or 50 ms)
                return
            self._queued.add(handler)

        def run() -> None:
            with self._started:
                self._queued.discard(handler)
                self._started.notify_all()
            handler()

        self._futures.append(self._executor.submit(run))
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()   # a callback's exception surfaces here, as in rclpy
