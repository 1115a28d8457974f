"""A process-wide daemon thread that serves every registered task, started on demand.

The delivery loop and the spool writer are each one of these: one thread per process
however many runs are open. The thread starts when a task is registered or woken, and
exits as soon as no task is registered, so a process with no open run has none of our
threads. `stop()` ends it at once (Lightning's test harness calls it on left-over daemon
threads); it starts again on the next wake. Where a thread cannot be started (interpreter
shutdown on Python 3.12+), `drive()` runs the tasks on the calling thread instead.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from aidp_metrics._notice import Notices

logger = logging.getLogger("aidp_metrics")
_notices = Notices()

MAX_IDLE = 5.0  # re-check at least this often, whatever the tasks said


class Task(Protocol):
    def serve(self) -> float:
        """Do what is due; return seconds until this task next needs serving (0: at once,
        inf: only when woken)."""
        ...


class _WorkerThread(threading.Thread):
    def __init__(self, worker: ProcessWorker) -> None:
        super().__init__(name=worker.name, daemon=True)
        self._worker = weakref.ref(worker)

    def run(self) -> None:
        worker = self._worker()
        if worker is not None:
            worker._loop(self)

    def stop(self) -> None:
        """End the thread now (it restarts when a task needs it again)."""
        worker = self._worker()
        if worker is not None:
            worker.stop()


class ProcessWorker:
    """One thread serving `Task`s. Locking: the worker's lock is never held while a task
    runs, so tasks may take their own locks and call back into the worker freely."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """In a forked child (lifecycle.py calls this) the parent's thread does not exist
        and the lock may be held: start from nothing."""
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._tasks: dict[int, Task] = {}
        self._thread: _WorkerThread | None = None
        self._woken = False
        self._stopping = False
        self._cpu_before = 0.0  # CPU seconds of threads that have exited
        self._cpu_live = 0.0

    # -- tasks ----------------------------------------------------------------------------

    def register(self, key: object, task: Task) -> None:
        with self._lock:
            self._tasks[id(key)] = task
            self._woken = True
            self._wakeup.notify()
            self._ensure_thread_locked()

    def unregister(self, key: object) -> bool:
        """Forget a task; True when no task is left."""
        with self._lock:
            self._tasks.pop(id(key), None)
            self._wakeup.notify()
            return not self._tasks

    def registered(self, key: object) -> bool:
        with self._lock:
            return id(key) in self._tasks

    def wake(self) -> None:
        """Something became due: serve the tasks now."""
        with self._lock:
            self._woken = True
            self._wakeup.notify()
            if self._tasks:
                self._ensure_thread_locked()

    # -- the thread -----------------------------------------------------------------------

    def _ensure_thread_locked(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        thread = _WorkerThread(self)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown: callers drive() instead
            self._thread = None
            return
        self._thread = thread

    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._wakeup.notify()
        if thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._stopping = False
            if self._thread is thread:
                self._thread = None

    def join_if_idle(self, timeout: float) -> None:
        """Wait (bounded) for the thread to exit when no task is registered."""
        with self._lock:
            thread = self._thread
            if self._tasks or thread is None:
                return
            self._wakeup.notify()
        if thread is not threading.current_thread():
            thread.join(timeout)

    def cpu_seconds(self) -> float:
        """CPU time this worker's threads have used (for benchmarks)."""
        return self._cpu_before + self._cpu_live

    def _loop(self, me: _WorkerThread) -> None:
        started = time.thread_time()
        try:
            while True:
                with self._lock:
                    if self._stopping or not self._tasks or self._thread is not me:
                        return
                    tasks = list(self._tasks.values())
                    self._woken = False
                soonest = self._serve_all(tasks)
                self._cpu_live = time.thread_time() - started
                if soonest > 0:
                    with self._lock:
                        if not (self._woken or self._stopping) and self._tasks:
                            self._wakeup.wait(min(soonest, MAX_IDLE))
        finally:
            with self._lock:
                self._cpu_before += time.thread_time() - started
                self._cpu_live = 0.0
                if self._thread is me:
                    self._thread = None

    def drive(self, done: Callable[[], bool], timeout: float) -> bool:
        """Serve the tasks on this thread until `done()` or `timeout` (no thread possible)."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._lock:
                tasks = list(self._tasks.values())
            soonest = self._serve_all(tasks)
            if soonest > 0:
                time.sleep(min(soonest, remaining, 0.05))
        return True

    def _serve_all(self, tasks: list[Task]) -> float:
        soonest = math.inf
        for task in tasks:
            try:
                delay = task.serve()
            except Exception as exc:  # a task contains its own errors; this is the last line
                logger.debug("%s: unexpected error", self.name, exc_info=True)
                _notices.once(
                    f"{self.name}-error",
                    f"aidp-metrics: {self.name}: unexpected error (carrying on): "
                    f"{type(exc).__name__}: {exc}",
                )
                delay = 1.0
            soonest = min(soonest, delay)
        return soonest
