"""The record queue of one run: everything the run does, in order, until it is settled.

A run's records are its metrics -- numbered 0, 1, ... in the order they were logged -- and
its ops: create or attach, params, tags, status. An op is positioned before the metric
logged after it (`pos` = metrics logged before it), so the order is well defined and is
the order everything reaches the server: a status set after the last metric is sent after it.

`RunQueue` owns this state behind one lock and does no I/O. Three parties use it, each
through its own methods, and none reads or writes its fields:

- the training thread appends (`append_call`, `append`, `append_op`); the answer (`Wake`)
  says what the caller must do -- wake the sender, wake the spool writer, reconnect a
  reopened run, make room in a full queue (`make_room`). The usual call (`append_call`)
  takes no lock: it goes into the `Inbox`, which every locked section takes in first;
- the delivery loop takes the next op or chunk (`next_work`) and settles it;
- the spool writer copies unsettled records to the journal (`unwritten`, `mark_written`)
  and, when memory is over its bound, lets the queue drop from memory what is on disk.

Its parts: the calls appended without the lock (`inbox.Inbox`), the metrics by index
(`buffer.MetricBuffer`), the ops, the chunk in flight, the counters (`stats.Counters`) and
the spill to disk (`spill.Spill`).

Lock order: a queue's lock may be held while taking a worker's lock (`worker.py`), never
the other way round; nothing else is taken under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aidp_metrics._metric import MetricRecord
from aidp_metrics._stats import Counters, RunStats

from .buffer import Call, MetricBuffer
from .inbox import Inbox
from .options import DeliveryOptions
from .records import (
    DELIVERED,
    SKIPPED,
    Chunk,
    EndStep,
    Mark,
    OpLog,
    QueuedOp,
    QueueState,
    ReadBack,
    Wake,
    Work,
)
from .spill import Segment, Spill

_OPEN = QueueState.OPEN
# `Wake` bits as plain ints for the hot path (an IntFlag costs a Python call to test).
_SENDER, _SPOOL, _REOPENED, _FULL = (
    int(Wake.SENDER),
    int(Wake.SPOOL),
    int(Wake.REOPENED),
    int(Wake.FULL),
)
# Memory crossing this many metrics wakes the sender: a batch is ready.
_BATCH_READY = 1000


class RunQueue:
    """The records of one run: private fields, guarded by `_lock` (but the `_inbox`)."""

    def __init__(
        self,
        options: DeliveryOptions,
        *,
        local_id: str,
        run_id: str | None = None,
        offline: bool = False,
        spool: bool | None = None,
    ) -> None:
        self.options = options
        self.local_id = local_id
        self._run_id = run_id
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._counters = Counters()
        self._max_queue = options.max_queue
        self._state = QueueState.OPEN
        self._metrics = MetricBuffer()
        self._inbox = Inbox()  # calls appended without the lock, before `_metrics`
        self._ops = OpLog()
        self._chunk: Chunk | None = None
        # Resumed runs: skip steps at or below `floors[key]` (the server holds them), or at
        # or above `ceilings[key]` (sync of a lost job: its resumed job logged them).
        self._skips: tuple[dict[str, int], dict[str, int]] = ({}, {})
        allowed = options.spool != "off" or offline if spool is None else spool
        self._spill = Spill(allowed, options.spool == "always" or offline)
        self._keep_journal = options.spool != "on_failure" or offline
        self.journal = JournalSide(self)

    # -- reading ------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def state(self) -> QueueState:
        return self._state

    @property
    def journal_dir(self) -> str | None:
        return self._spill.journal_dir

    def progress(self) -> Mark:
        """(metrics settled, ops settled): moves whenever something is settled."""
        return self._metrics.acked, self._ops.settled

    def sizes(self) -> tuple[int, int]:
        """(metrics held in memory, metrics in the chunk in flight): what bounds memory."""
        with self._held():
            chunk = self._chunk
            return self._metrics.size, len(chunk.records) if chunk is not None else 0

    def stats(self) -> RunStats:
        with self._held():
            return self._counters.snapshot(self._metrics.logged)

    def mark(self) -> Mark:
        with self._held():
            return self._metrics.logged, self._ops.logged

    def settled(self, mark: Mark) -> bool:
        """Every record before `mark` is settled (on the server, or counted as lost)."""
        return self._metrics.acked >= mark[0] and self._ops.settled >= mark[1]

    def durable_or_settled(self, mark: Mark) -> bool:
        """Every record before `mark` is settled or fsynced to the journal."""
        durable = self._spill.durable
        return max(self._metrics.acked, durable[0]) >= mark[0] and (
            max(self._ops.settled, durable[1]) >= mark[1]
        )

    def durable_or_failed(self, mark: Mark) -> bool:
        return self._spill.failed or self.durable_or_settled(mark)

    def all_settled(self) -> bool:
        with self._held():
            return self._all_settled_locked()

    def _all_settled_locked(self) -> bool:
        metrics = self._metrics
        return metrics.acked >= metrics.logged and not self._ops.pending and self._chunk is None

    def wait(self, until: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until `until()` holds (evaluated under the lock); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not until():
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 1.0))
            return True

    def check(self, until: Callable[[], bool]) -> bool:
        with self._lock:
            return bool(until())

    # -- the caller's side ----------------------------------------------------------------

    @contextmanager
    def _held(self) -> Iterator[None]:
        """The lock, the `Inbox` taken in first while open (else by its caller, reopening)."""
        with self._lock:
            if self._state is _OPEN:
                self._inbox.drain(self._metrics)
            yield

    def append(self, metrics: list[MetricRecord], rejected: int = 0) -> int:
        """Queue checked metrics, count `rejected` ones; returns `Wake` bits as a plain int."""
        with self._lock:
            wake = self._reopen_locked() if self._state is not _OPEN else 0
            count = self._inbox.drain(self._metrics) + len(metrics)
            self._counters.reject(rejected)
            if not count:
                return wake
            return wake | self._added_locked(self._metrics.extend(metrics), count)

    def append_call(self, call: Call) -> int:
        """Queue one call's valid points (built into records on the delivery loop's side):
        the hot path. Without the lock while the `Inbox`'s budget lasts, else as `append`."""
        if self._inbox.put(call):
            return 0
        with self._lock:
            wake = self._reopen_locked() if self._state is not _OPEN else 0
            count = self._inbox.drain(self._metrics)
            if not count:  # another thread took it in; the sender may not know (or it's a no-op)
                return wake | _SENDER if self._metrics.size else wake
            return wake | self._added_locked(self._metrics.size, count)

    def _added_locked(self, size: int, count: int) -> int:
        """`count` metrics added, `size` in memory: what to wake; the points that may skip
        the lock until the next drain (none that could need a wake)."""
        wake = 0
        if size == count or size >= _BATCH_READY > size - count:
            wake |= _SENDER
        if size > self._max_queue:
            wake |= _FULL
            self._spill.want()
        spill = self._spill
        if spill.wanted and spill.idle and spill.wake_needed():
            wake |= _SPOOL
        # (A busy spool writer needs no wake; it rests only in a drain: `JournalSide.step`.)
        limit = min(_BATCH_READY - 1, self._max_queue) if size < _BATCH_READY else self._max_queue
        self._inbox.admit(max(0, limit - size))
        return wake

    def append_op(self, kind: str, payload: dict[str, Any]) -> int:
        with self._lock:
            wake = _SENDER | (self._reopen_locked() if self._state is not _OPEN else 0)
            self._inbox.drain(self._metrics)
            self._queue_op_locked(kind, payload)
            if self._spill.touch():
                wake |= _SPOOL
        return wake

    def reject(self, count: int) -> None:
        with self._lock:
            self._counters.reject(count)

    def rush(self, mark: Mark) -> None:
        """Send everything before `mark` now, without waiting for `flush_interval`."""
        with self._held():
            self._metrics.rush(mark[0])

    def commit_soon(self) -> None:
        """A flush waits for the disk: the spool writer fsyncs without waiting."""
        with self._lock:
            self._spill.commit_soon()

    def _queue_op_locked(self, kind: str, payload: dict[str, Any]) -> None:
        self._ops.add(self._metrics.logged, kind, payload)

    def _reopen_locked(self) -> int:
        """Logging into an ended or ending run: RUNNING again, before what is logged now (a
        running `end()` settles only what was logged before it, and leaves it open)."""
        self._state = QueueState.OPEN
        self._queue_op_locked("status", {"status": "RUNNING"})
        return _REOPENED | _SENDER

    # -- a full queue ---------------------------------------------------------------------

    def make_room(self) -> int:
        """Over `max_queue` in memory: let the journal take it, wait, or drop the oldest.
        The caller has woken the spool writer. Returns how many were dropped."""
        with self._held():
            limit = self._max_queue
            metrics = self._metrics
            if self._spill.usable:
                self._trim_locked()
                if metrics.size <= 2 * limit:
                    return 0  # the writer is catching up on its own thread
                # Twice over: the writer is behind (it needs the GIL this thread keeps
                # taking). Waiting for it beats dropping points; only a failed writer lets go.
                self._wait_for_room_locked(2 * limit)
                if metrics.size <= 2 * limit:
                    return 0
                limit *= 2
            elif self.options.policy == "block":
                self._wait_for_room_locked(limit)
            excess = metrics.size - limit
            if excess <= 0:
                return 0
            self._metrics.drop_oldest(excess)
            self._spill.skip_to(self._metrics.mem_start)
            self._counters.drop(excess)
            self._changed.notify_all()
            return excess

    def _wait_for_room_locked(self, limit: int) -> None:
        deadline = time.monotonic() + self.options.block_timeout
        metrics = self._metrics
        while metrics.size > limit and self._state is not QueueState.CLOSED:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._spill.failed:
                return
            self._changed.wait(min(remaining, 0.1))
            self._trim_locked()

    def _trim_locked(self) -> None:
        """Drop from memory the oldest metrics that are safely in the journal."""
        if self._metrics.trim(self._max_queue, self._spill.written):
            self._changed.notify_all()

    # -- ending ---------------------------------------------------------------------------

    def begin_end(self, status: dict[str, Any] | None, *, repeat: bool) -> Mark | None:
        """Start ending (queueing the `status` op, if any). Returns the end mark: every
        record `end()` must settle, the status op included (what is logged from now on
        reopens the run); None when already closed with the same status (`repeat`)."""
        with self._held():
            if self._state is QueueState.CLOSED and repeat:
                return None
            self._state = QueueState.CLOSING
            if status is not None:
                self._queue_op_locked("status", status)
                self._spill.touch()
            return self._metrics.logged, self._ops.logged

    def end_step(self, mark: Mark, *, out_of_time: bool, reason: str) -> EndStep:
        """After delivering up to the end `mark`: closed, or spill the rest, or (time left)
        deliver again. Records logged after `mark` are not end()'s to settle."""
        with self._held():
            if self.settled(mark):
                self._close_locked()
                return EndStep.DONE
            if self._spill.usable:
                self._spill.want()
                self._spill.commit_soon()
                return EndStep.SPILL
            if out_of_time:
                self._abandon_locked(mark, reason)
                self._close_locked()
                return EndStep.DONE
            return EndStep.AGAIN

    def end_after_spill(self, mark: Mark, *, reason: str) -> None:
        """After waiting for the journal: close (what is not on disk yet the spool writer's
        last pass writes), counting what is before `mark` failed if the spool failed."""
        with self._held():
            if self._spill.failed:  # the spool could not take them: count them
                self._abandon_locked(mark, f"{reason}, and the spool failed")
            self._close_locked()

    def _close_locked(self) -> None:
        """End's share is settled: closed -- unless logging reopened the run meanwhile."""
        if self._state is QueueState.CLOSING:
            self._state = QueueState.CLOSED

    def finish_close(self) -> bool:
        """True when the queue is still closed (nothing reopened it meanwhile): the caller
        lets go of the threads. Everything left is due at once from now on."""
        with self._lock:
            if self._state is not QueueState.CLOSED:
                return False
            self._metrics.rush(self._metrics.logged)
            return True

    def _abandon_locked(self, mark: Mark, reason: str) -> None:
        """Give up on every unsettled record before `mark` (metrics counted failed, ops
        dropped), but a create or attach that never happened: logging again must open the
        run. What was logged after `mark` (a reopened run) stays queued."""
        chunk = self._chunk
        if chunk is not None and chunk.start < mark[0]:
            chunk.set_outcome(chunk.pending(), reason)
            self._settle_chunk_locked(chunk)
        self._counters.fail(self._metrics.abandon(mark[0]), reason)
        self._spill.forget(self._metrics.acked)
        self._ops.abandon(mark[1])
        self._after_progress_locked()

    # -- the delivery loop's side ---------------------------------------------------------

    def next_work(self, now: float, batch: int) -> Work | float:
        """What to send next: an op, the chunk in flight, a range to read back from the
        journal, or the seconds until something is due."""
        with self._held():
            if self._state is QueueState.CLOSED:
                return float("inf")  # ended: what is left waits in the spool (or was counted)
            metrics = self._metrics
            metrics.settle_holes()
            if self._chunk is not None:
                return self._chunk
            op = self._ops.due(metrics.acked)
            if op is not None:
                return op
            if self._run_id is None or metrics.acked >= metrics.logged:
                return float("inf")
            start, stop = metrics.next_range(batch, self._ops.next_pos())
            wait = metrics.due(start, stop, batch, now, self.options.flush_interval)
            if wait > 0 and self._state is QueueState.OPEN:
                return wait
            if start < metrics.mem_start:
                return self._read_back_locked(start, min(stop, metrics.mem_start))
            self._chunk = Chunk(start, metrics.take(stop - start, self.options.flush_interval))
            self._changed.notify_all()  # room for a caller blocked on a full queue
            return self._chunk

    def _read_back_locked(self, start: int, stop: int) -> ReadBack | float:
        work = self._spill.read_back(start, stop)
        if work is None:
            self._fail_range_locked(start, stop, "lost from the spool")
            return 0.0
        return work

    def read_back_done(self, work: ReadBack, records: list[MetricRecord]) -> Chunk | None:
        """What the journal gave for `work`, as the chunk in flight (the rest counted lost)."""
        with self._held():
            if self._metrics.acked != work.start or self._chunk is not None:
                return None  # settled meanwhile (end() gave up on it)
            if len(records) < work.stop - work.start:
                self._fail_range_locked(work.start + len(records), work.stop, "lost from the spool")
            if not records:
                return None
            self._chunk = Chunk(work.start, records)
            return self._chunk

    def settle_chunk(self, chunk: Chunk) -> None:
        with self._held():
            if self._chunk is chunk:  # not already given up on by end()
                self._settle_chunk_locked(chunk)

    def _settle_chunk_locked(self, chunk: Chunk) -> None:
        self._counters.settle(chunk.outcomes, DELIVERED, SKIPPED)
        self._metrics.advance(chunk.end)
        self._chunk = None
        self._after_progress_locked()

    def _fail_range_locked(self, start: int, stop: int, reason: str) -> None:
        """Metrics that are lost (e.g. an unreadable journal): count them failed, move on."""
        self._counters.fail(stop - start, reason)
        self._metrics.advance(stop)
        self._after_progress_locked()

    def settle_op(self, queued: QueuedOp) -> None:
        with self._held():
            if self._ops.settle(queued):
                self._after_progress_locked()

    def _after_progress_locked(self) -> None:
        self._metrics.settle_holes()
        self._spill.settled_below(self._metrics.acked)
        self._changed.notify_all()
        self._spill.touch()  # the acked offset moved: the writer records it

    def resolved(self, run_id: str) -> None:
        """The server created or confirmed the run."""
        with self._lock:
            self._run_id = run_id

    def set_skips(self, floors: dict[str, int], ceilings: dict[str, int] | None = None) -> None:
        """Resume: steps per key the server holds (<= `floors`, >= `ceilings`): not sent."""
        with self._lock:
            self._skips = (dict(floors), dict(ceilings or {}))

    def skips(self) -> tuple[dict[str, int], dict[str, int]]:
        return self._skips  # replaced, never changed in place

    def count_request(self, size: int) -> None:
        with self._lock:
            self._counters.request(size)

    def count_retry(self) -> None:
        with self._lock:
            self._counters.retry()

    def spill_on_failure(self) -> tuple[bool, bool]:
        """A request failed: (the run has a spool, it starts journaling now)."""
        with self._held():
            started = self._spill.want()
            if started:
                self._spill.touch()
            return self._spill.usable, started

    def can_spool(self) -> bool:
        return self._spill.usable


class JournalSide:
    """The spool writer's side of a `RunQueue` (`queue.journal`): what to write, what was
    written and fsynced, what may be deleted. Part of the queue (it shares the queue's
    lock and state, in this module); nothing else uses it."""

    def __init__(self, queue: RunQueue) -> None:
        self._queue = queue

    def usable(self) -> bool:
        return self._queue.can_spool()

    def plan(self) -> tuple[bool, str | None]:
        """(a journal is wanted now, the run id to record)."""
        q = self._queue
        with q._lock:
            return q._spill.wanted and not q._spill.failed, q._run_id

    def opened(self, directory: str) -> None:
        q = self._queue
        with q._lock:
            q._spill.opened(directory)

    def unwritten(self, limit: int) -> tuple[int, list[MetricRecord], list[QueuedOp]]:
        """Up to `limit` unsettled metrics not yet in the journal (from the chunk in flight
        and memory, in order) and the unwritten ops positioned up to their end."""
        q = self._queue
        with q._held():
            chunk = q._chunk
            in_flight = (chunk.start, chunk.records) if chunk is not None else None
            start, records = q._metrics.unwritten(q._spill.written, limit, in_flight)
            return start, records, q._ops.unwritten(start + len(records))

    def mark_written(
        self, start: int, ends: list[int], first_offset: int, ops: list[tuple[QueuedOp, int]]
    ) -> None:
        q = self._queue
        with q._held():
            for op, offset in ops:
                op.written_at(offset)
            if ends:
                q._spill.add(start, ends, first_offset)
                q._counters.spool(len(ends))
            q._spill.set_ops_written(q._ops.written())
            q._trim_locked()

    def take_commit_request(self) -> bool:
        """Whether the writer must fsync now (a flush waits, or the run is ending)."""
        q = self._queue
        with q._lock:
            return q._spill.take_commit(q._state is not QueueState.OPEN)

    def mark_durable(self) -> None:
        """Everything written so far is fsynced."""
        q = self._queue
        with q._lock:
            q._spill.mark_durable()
            q._changed.notify_all()

    def ack_offset(self, written_offset: int) -> int:
        """Byte offset before which every journal record is settled."""
        q = self._queue
        with q._lock:
            offset = q._spill.ack_offset(q._metrics.acked, written_offset)
            op_offset = q._ops.first_offset()
            return offset if op_offset is None else min(offset, op_offset)

    def failed(self) -> bool:
        """The journal cannot be written; True the first time."""
        q = self._queue
        with q._held():
            first = q._spill.fail()
            q._changed.notify_all()
            return first

    def step(self, *, waiting_for_id: bool) -> tuple[bool, bool, bool]:
        """After a pass of the writer: (delete the journal, let the writer go, nothing is
        left to write)."""
        q = self._queue
        with q._held():
            closed = q._state is QueueState.CLOSED
            return q._spill.step(
                closed=closed,
                settled=q._all_settled_locked(),
                on_disk=q.durable_or_settled((q._metrics.logged, q._ops.logged)),
                keep_journal=q._keep_journal,
                waiting=waiting_for_id and not closed,
            )

    def needed(self) -> bool:
        """The writer has work (checked after letting it go, so no wake is lost)."""
        q = self._queue
        with q._lock:
            return q._spill.needed()


__all__ = [
    "DELIVERED",
    "SKIPPED",
    "Chunk",
    "EndStep",
    "JournalSide",
    "Mark",
    "QueueState",
    "QueuedOp",
    "ReadBack",
    "RunQueue",
    "Segment",
    "Wake",
    "Work",
]
