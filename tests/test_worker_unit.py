"""The process-wide worker on its own: a thread only while a task is registered."""

from __future__ import annotations

import math
import threading
import warnings

from aidp_metrics._delivery.worker import ProcessWorker
from aidp_metrics._errors import AIDPMetricsWarning


class Counting:
    """A task that counts its turns and says when it reached `until`."""

    def __init__(self, until: int = 1, fail: bool = False) -> None:
        self.turns = 0
        self.until = until
        self.fail = fail
        self.reached = threading.Event()

    def serve(self) -> float:
        self.turns += 1
        if self.turns >= self.until:
            self.reached.set()
        if self.fail:
            raise RuntimeError("a bug in a task")
        return 0.0 if self.turns < self.until else math.inf


def test_the_thread_starts_on_register_and_ends_with_the_last_task() -> None:
    worker = ProcessWorker("aidp-metrics-test")
    task = Counting(until=3)
    worker.register(task, task)
    assert task.reached.wait(10)
    assert worker.running()
    assert worker.unregister(task)  # no task left
    worker.join_if_idle(10)
    assert not worker.running()
    assert not any(t.name == "aidp-metrics-test" for t in threading.enumerate())


def test_a_wake_serves_a_sleeping_task_again() -> None:
    worker = ProcessWorker("aidp-metrics-test")
    task = Counting(until=1)
    worker.register(task, task)
    assert task.reached.wait(10)
    task.reached.clear()
    task.until = task.turns + 1
    worker.wake()
    assert task.reached.wait(10)
    worker.unregister(task)
    worker.stop()


def test_drive_serves_on_the_calling_thread() -> None:
    """Where no thread can start (interpreter shutdown), the waiting caller does the work."""
    worker = ProcessWorker("aidp-metrics-test")
    task = Counting(until=1)
    worker.register(task, task)
    assert task.reached.wait(10)
    worker.stop()  # the thread ends; the task stays registered
    assert not worker.running()
    goal = task.turns + 3
    task.until = goal
    assert worker.drive(lambda: task.turns >= goal, 10)
    assert not worker.running()
    worker.unregister(task)


def test_a_failing_task_is_reported_once_and_served_again() -> None:
    worker = ProcessWorker("aidp-metrics-test")
    task = Counting(until=3, fail=True)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        worker.register(task, task)
        assert task.reached.wait(30)
        worker.unregister(task)
        worker.join_if_idle(10)
    reported = [w for w in said if "a bug in a task" in str(w.message)]
    assert len(reported) == 1  # once, though the task failed three times
    assert reported[0].category is AIDPMetricsWarning


def test_after_fork_nothing_is_inherited() -> None:
    worker = ProcessWorker("aidp-metrics-test")
    task = Counting(until=1)
    worker.register(task, task)
    assert task.reached.wait(10)
    worker.unregister(task)
    worker.join_if_idle(10)
    worker.reset_after_fork()
    assert not worker.registered(task)
    assert not worker.running()
