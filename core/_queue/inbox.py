"""Calls the training thread queues without taking its run queue's lock.

Taking a lock is most of what is left of a logging hook's cost on a busy machine (the
lock's code is cold again after a millisecond of training: ~5 us, against ~16 us for a
whole hook within 1.5 % of a 1 ms step). So the usual call goes into a deque -- appending
is atomic -- and the queue takes it in (`drain`) the next time anything holds its lock:
the delivery loop's next pass, a flush, `end()`, the next call that must take the lock.

A call may skip the lock only while it needs nothing done at once: the sender is awake
or its timer runs, no batch is about to fill, the queue is far from full, the spool
writer waits for nothing. The queue says how many points that holds for (`admit`),
under its lock, from what memory holds; `put` counts them down.

A caller cannot see whether a drain running on another thread took its call or just
missed it. Every drain therefore replaces the budget before it takes anything: a caller
that finds its budget replaced after appending takes the lock (`put` returns False), and
the locked section drains again -- so no call is ever left behind unseen.
"""

from __future__ import annotations

from collections import deque

from .buffer import Call, MetricBuffer


class _Budget:
    """Points that may still skip the lock. Replaced, never reset, by the queue: its
    identity is how a caller learns that a drain began."""

    __slots__ = ("points",)

    def __init__(self, points: int) -> None:
        self.points = points


class Inbox:
    """Owned by one `RunQueue`: `put` on any thread, everything else under its lock."""

    def __init__(self) -> None:
        self._calls: deque[Call] = deque()
        self._budget = _Budget(0)

    def put(self, call: Call) -> bool:
        """Queue `call`. True when that is all: the call is within the budget and no drain
        began meanwhile. False when the caller must take the lock and drain."""
        budget = self._budget
        count = len(call[0])
        self._calls.append(call)
        if budget.points < count:
            return False
        # Two threads logging at once may both spend the same points: the budget is a
        # bound on memory and wakes, and one call's points more do not break it.
        budget.points -= count
        return self._budget is budget

    def admit(self, points: int) -> None:
        """Calls of up to `points` points in all may skip the lock from now on."""
        self._budget = _Budget(points)

    def drain(self, metrics: MetricBuffer) -> int:
        """Move every queued call into `metrics`, in order; returns how many points."""
        self._budget = _Budget(0)  # first: see the module's docstring
        calls = self._calls
        count = 0
        while calls:
            call = calls.popleft()
            metrics.extend_call(call)
            count += len(call[0])
        return count
