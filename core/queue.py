"""The record queue of one run: everything the run does, in order, until it is settled.

A run's records are its metrics -- numbered 0, 1, ... in the order they were logged -- and
its ops: create or attach, params, tags, status. An op is positioned before the metric
logged after it (`pos` = metrics logged before it), so the order is well defined and is
the order everything reaches the server: a status set after the last metric is sent after it.

`RunQueue` owns this state behind one lock and does no I/O. Three parties use it, each
through its own methods, and none reads or writes its fields:

- the training thread appends (`append`, `append_op`); the answer (`Wake`) says what the
  caller must do -- wake the sender, wake the spool writer, reconnect a reopened run,
  make room in a full queue (`make_room`);
- the delivery loop takes the next op or chunk (`next_work`) and settles it;
- the spool writer copies unsettled records to the journal (`unwritten`, `mark_written`)
  and, when memory is over its bound, lets the queue drop from memory what is on disk.

Where each metric index lives:

    [0, acked)              settled: delivered, failed, dropped, rejected or skipped
    chunk                   the batch in flight, `acked` is its start
    [.., mem_start)         unsettled and only on disk (read back from the journal)
    [mem_start, logged)     in memory (and on disk too below the spill index's `written`)
    holes                   ranges dropped from a full queue with nowhere to spill them

Lock order: a queue's lock may be held while taking a worker's lock (`worker.py`), never
the other way round; nothing else is taken under it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .metric import Metric
from .options import DeliveryOptions
from .records import (
    DELIVERED,
    SKIPPED,
    Chunk,
    EndStep,
    Mark,
    QueuedOp,
    QueueState,
    ReadBack,
    Wake,
    Work,
)
from .spill import Segment, SpillIndex
from .stats import Counters, RunStats

class RunQueue:
    """The records of one run. Every field is guarded by `_lock` and private."""

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

        self._memory: deque[Metric] = deque()
        self._mem_start = 0
        self._logged = 0
        self._acked = 0
        self._holes: deque[tuple[int, int]] = deque()
        self._oldest_at = 0.0  # monotonic time the oldest unsent metric in memory was logged
        self._urgent = 0  # metrics below this index are sent without waiting (flush, end)

        self._ops: deque[QueuedOp] = deque()  # unsettled, in order
        self._ops_logged = 0
        self._ops_settled = 0
        self._chunk: Chunk | None = None
        self._floors: dict[str, int] = {}  # resume: the last step the server holds per key

        # "off": never; else the journal opens when wanted (always / offline: from the
        # start; on_failure: at the first failed request or a full queue).
        self._spill = SpillIndex()
        self._spool_allowed = options.spool != "off" or offline if spool is None else spool
        self._spool_wanted = options.spool == "always" or offline
        self._spool_failed = False
        self._spool_idle = True  # the writer found nothing to do since the last append
        self._commit_now = False  # a flush is waiting for the disk: fsync without waiting
        self._keep_journal = options.spool != "on_failure" or offline

    # -- reading (no lock: single reads of fields are atomic) ------------------------------

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
        return self._acked, self._ops_settled

    def sizes(self) -> tuple[int, int]:
        """(metrics held in memory, metrics in the chunk in flight): what bounds memory."""
        with self._lock:
            chunk = self._chunk
            return len(self._memory), len(chunk.records) if chunk is not None else 0

    def stats(self) -> RunStats:
        with self._lock:
            return self._counters.snapshot()

    def mark(self) -> Mark:
        with self._lock:
            return self._logged, self._ops_logged

    def settled(self, mark: Mark) -> bool:
        """Every record before `mark` is settled (on the server, or counted as lost)."""
        return self._acked >= mark[0] and self._ops_settled >= mark[1]

    def durable_or_settled(self, mark: Mark) -> bool:
        """Every record before `mark` is settled or fsynced to the journal."""
        durable = self._spill.durable
        return max(self._acked, durable[0]) >= mark[0] and (
            max(self._ops_settled, durable[1]) >= mark[1]
        )

    def durable_or_failed(self, mark: Mark) -> bool:
        return self._spool_failed or self.durable_or_settled(mark)

    def all_settled(self) -> bool:
        with self._lock:
            return self._all_settled_locked()

    def wait(self, until: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until `until()` holds (evaluated under the lock); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not until():
                if deadline is None:
                    self._changed.wait(1.0)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 1.0))
            return True

    def check(self, until: Callable[[], bool]) -> bool:
        with self._lock:
            return bool(until())

    # -- the caller's side ----------------------------------------------------------------

    def append(self, metrics: list[Metric], rejected: int = 0) -> Wake:
        """Queue metrics (the training thread's hot path); count `rejected` invalid ones."""
        count = len(metrics)
        wake = Wake.NONE
        with self._lock:
            if self._state is QueueState.CLOSED:
                wake = self._reopen_locked()
            self._counters.log(count, rejected)
            if not count:
                return wake
            memory = self._memory
            memory.extend(metrics)
            self._logged += count
            size = len(memory)
            if size == count:
                self._oldest_at = time.monotonic()
                wake |= Wake.SENDER
            elif size >= 1000 > size - count:
                wake |= Wake.SENDER
            if size > self._max_queue:
                wake |= Wake.FULL
                if self._spool_allowed and not self._spool_failed:
                    self._spool_wanted = True
            if self._spool_wanted and self._spool_idle:
                self._spool_idle = False
                wake |= Wake.SPOOL
        return wake

    def append_op(self, kind: str, payload: dict[str, Any]) -> Wake:
        with self._lock:
            wake = Wake.SENDER
            if self._state is QueueState.CLOSED:
                wake |= self._reopen_locked()
            self._queue_op_locked(kind, payload)
            self._spool_idle = False
            if self._spool_wanted:
                wake |= Wake.SPOOL
        return wake

    def reject(self, count: int) -> None:
        with self._lock:
            self._counters.log(0, count)

    def rush(self, mark: Mark) -> None:
        """Send everything before `mark` now, without waiting for `flush_interval`."""
        with self._lock:
            self._urgent = max(self._urgent, mark[0])

    def commit_soon(self) -> None:
        """A flush waits for the disk: the spool writer fsyncs without waiting."""
        with self._lock:
            self._commit_now = True
            self._spool_idle = False

    def _queue_op_locked(self, kind: str, payload: dict[str, Any]) -> None:
        self._ops.append(QueuedOp(self._logged, (kind, payload)))
        self._ops_logged += 1

    def _reopen_locked(self) -> Wake:
        """Logging into an ended run: it is RUNNING again, before what is logged now."""
        self._state = QueueState.OPEN
        self._queue_op_locked("status", {"status": "RUNNING"})
        return Wake.REOPENED | Wake.SENDER

    # -- a full queue ---------------------------------------------------------------------

    def make_room(self) -> int:
        """Over `max_queue` in memory: let the journal take it, wait, or drop the oldest.
        The caller has woken the spool writer. Returns how many were dropped."""
        with self._lock:
            limit = self._max_queue
            if len(self._memory) <= limit:
                return 0
            if self._spool_allowed and not self._spool_failed:
                self._trim_locked()
                if len(self._memory) <= 2 * limit:
                    return 0  # the writer is catching up on its own thread
                # Twice over: the writer is behind (it needs the GIL this thread keeps
                # taking). Waiting for it beats dropping points; only a failed writer lets go.
                self._wait_for_room_locked(2 * limit)
                if len(self._memory) <= 2 * limit:
                    return 0
                limit *= 2
            elif self.options.policy == "block":
                self._wait_for_room_locked(limit)
            excess = len(self._memory) - limit
            if excess > 0:
                self._drop_oldest_locked(excess)
            return max(0, excess)

    def _wait_for_room_locked(self, limit: int) -> None:
        deadline = time.monotonic() + self.options.block_timeout
        while (
            len(self._memory) > limit
            and self._state is not QueueState.CLOSED
            and not self._spool_failed
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.wait(min(remaining, 0.1))
            self._trim_locked()

    def _drop_oldest_locked(self, count: int) -> None:
        for _ in range(count):
            self._memory.popleft()
        start = self._mem_start
        self._mem_start = start + count
        self._spill.skip_to(self._mem_start)
        if self._holes and self._holes[-1][1] == start:
            self._holes[-1] = (self._holes[-1][0], self._mem_start)
        else:
            self._holes.append((start, self._mem_start))
        self._counters.drop(count)
        self._changed.notify_all()

    def _trim_locked(self) -> None:
        """Drop from memory the oldest metrics that are safely in the journal."""
        memory = self._memory
        excess = len(memory) - self._max_queue
        if excess <= 0:
            return
        movable = min(excess, self._spill.written - self._mem_start)
        for _ in range(movable):
            memory.popleft()
        if movable > 0:
            self._mem_start += movable
            self._changed.notify_all()

    # -- ending ---------------------------------------------------------------------------

    def begin_end(self, status: dict[str, Any] | None, *, repeat: bool) -> bool:
        """Start ending (queueing the `status` op, if any). False when already closed with
        the same status (`repeat`): nothing to do."""
        with self._lock:
            if self._state is QueueState.CLOSED and repeat:
                return False
            self._state = QueueState.CLOSING
            if status is not None:
                self._queue_op_locked("status", status)
                self._spool_idle = False
            return True

    def end_step(self, mark: Mark, *, out_of_time: bool, reason: str) -> EndStep:
        """After delivering up to `mark`: closed, or spill the rest, or deliver again."""
        with self._lock:
            current = (self._logged, self._ops_logged)
            if current == mark and self.settled(mark):
                self._state = QueueState.CLOSED
                return EndStep.DONE
            if self._spool_allowed and not self._spool_failed:
                self._spool_wanted = self._commit_now = True
                self._spool_idle = False
                return EndStep.SPILL
            if current == mark or out_of_time:
                self._abandon_locked(reason)
                self._state = QueueState.CLOSED
                return EndStep.DONE
            return EndStep.AGAIN

    def end_after_spill(self, mark: Mark, *, out_of_time: bool, reason: str) -> bool:
        """After waiting for the journal: True when closed (what is not on disk yet the
        spool writer's last pass writes)."""
        with self._lock:
            if self._spool_failed:  # the spool could not take them: count them
                self._abandon_locked(f"{reason}, and the spool failed")
            elif (self._logged, self._ops_logged) != mark and not out_of_time:
                return False
            self._state = QueueState.CLOSED
            return True

    def finish_close(self) -> bool:
        """True when the queue is still closed (nothing reopened it meanwhile): the caller
        lets go of the threads. Everything left is due at once from now on."""
        with self._lock:
            if self._state is not QueueState.CLOSED:
                return False
            self._urgent = self._logged
            return True

    def _abandon_locked(self, reason: str) -> None:
        """Give up on every unsettled metric (counted failed) and drop the queued ops -- but a
        create or attach that never happened stays: logging again must still open the run."""
        chunk = self._chunk
        if chunk is not None:
            chunk.set_outcome(chunk.pending(), reason)
            self._settle_chunk_locked(chunk)
        lost = 0
        index = self._acked
        for start, stop in self._holes:
            lost += max(0, start - index)
            index = max(index, stop)
        lost += self._logged - index
        self._holes.clear()
        self._counters.fail(lost, reason)
        self._acked = self._mem_start = self._logged
        self._spill.forget(self._logged)
        self._memory.clear()
        ops = self._ops
        opening = ops[0] if ops and ops[0].op[0] in ("create", "attach") else None
        while ops:
            ops.popleft()
            self._ops_settled += 1
        if opening is not None:
            ops.append(opening)
            self._ops_settled -= 1
        self._after_progress_locked()

    def _all_settled_locked(self) -> bool:
        return self._acked >= self._logged and not self._ops and self._chunk is None

    # -- the delivery loop's side ---------------------------------------------------------

    def next_work(self, now: float, batch: int) -> Work | float:
        """What to send next: an op, the chunk in flight, a range to read back from the
        journal, or the seconds until something is due."""
        with self._lock:
            if self._state is QueueState.CLOSED:
                return float("inf")  # ended: what is left waits in the spool (or was counted)
            self._settle_holes_locked()
            if self._chunk is not None:
                return self._chunk
            if self._ops and self._ops[0].pos <= self._acked:
                return self._ops[0]
            if self._run_id is None or self._acked >= self._logged:
                return float("inf")
            start = self._acked
            stop = min(self._logged, start + batch)
            if self._ops:
                stop = min(stop, self._ops[0].pos)
            if self._holes:
                stop = min(stop, self._holes[0][0])
            on_disk = start < self._mem_start
            interval = self.options.flush_interval
            due = (
                on_disk
                or stop - start >= batch
                or self._urgent > start
                or self._state is QueueState.CLOSING
                or now - self._oldest_at >= interval
            )
            if not due:
                return self._oldest_at + interval - now
            if on_disk:
                return self._read_back_locked(start, min(stop, self._mem_start))
            return self._take_from_memory_locked(stop - start)

    def _read_back_locked(self, start: int, stop: int) -> ReadBack | float:
        spill = self._spill
        segment = spill.segment_for(start)
        if segment is None or spill.journal_dir is None:
            self._fail_range_locked(start, stop, "lost from the spool")
            return 0.0
        return ReadBack(start, min(stop, segment.stop), spill.journal_dir, segment.offset_of(start))

    def _take_from_memory_locked(self, count: int) -> Chunk:
        memory = self._memory
        records = [memory.popleft() for _ in range(count)]
        chunk = Chunk(self._mem_start, records)
        self._mem_start += count
        if memory:  # what stayed behind is older than flush_interval by now: send it soon
            self._oldest_at = time.monotonic() - self.options.flush_interval
        self._chunk = chunk
        self._changed.notify_all()  # room for a caller blocked on a full queue
        return chunk

    def read_back_done(self, work: ReadBack, records: list[Metric]) -> Chunk | None:
        """What the journal gave for `work`, as the chunk in flight (the rest counted lost)."""
        with self._lock:
            if self._acked != work.start or self._chunk is not None:
                return None  # settled meanwhile (end() gave up on it)
            if len(records) < work.stop - work.start:
                self._fail_range_locked(work.start + len(records), work.stop, "lost from the spool")
            if not records:
                return None
            self._chunk = Chunk(work.start, records)
            return self._chunk

    def settle_chunk(self, chunk: Chunk) -> None:
        with self._lock:
            if self._chunk is chunk:  # not already given up on by end()
                self._settle_chunk_locked(chunk)

    def _settle_chunk_locked(self, chunk: Chunk) -> None:
        self._counters.settle(chunk.outcomes, DELIVERED, SKIPPED)
        self._acked = max(self._acked, chunk.end)
        self._chunk = None
        self._after_progress_locked()

    def _fail_range_locked(self, start: int, stop: int, reason: str) -> None:
        """Metrics that are lost (e.g. an unreadable journal): count them failed, move on."""
        self._counters.fail(stop - start, reason)
        self._acked = max(self._acked, stop)
        self._after_progress_locked()

    def settle_op(self, queued: QueuedOp) -> None:
        with self._lock:
            if self._ops and self._ops[0] is queued:
                self._ops.popleft()
                self._ops_settled += 1
                self._after_progress_locked()

    def _settle_holes_locked(self) -> None:
        holes = self._holes
        while holes and holes[0][0] <= self._acked:
            self._acked = max(self._acked, holes.popleft()[1])

    def _after_progress_locked(self) -> None:
        self._settle_holes_locked()
        self._spill.settled_below(self._acked)
        self._changed.notify_all()
        if self._spool_wanted:
            self._spool_idle = False  # the acked offset moved: the writer records it

    def resolved(self, run_id: str) -> None:
        """The server created or confirmed the run."""
        with self._lock:
            self._run_id = run_id

    def set_floors(self, floors: dict[str, int]) -> None:
        """Resume: points at or below these steps per key are on the server already."""
        with self._lock:
            self._floors = dict(floors)

    def floors(self) -> dict[str, int]:
        return self._floors  # replaced, never changed in place

    def count_request(self, size: int) -> None:
        with self._lock:
            self._counters.request(size)

    def count_retry(self) -> None:
        with self._lock:
            self._counters.retry()

    def spill_on_failure(self) -> tuple[bool, bool]:
        """A request failed: (the run has a spool, it starts journaling now)."""
        with self._lock:
            spooling = self._spool_allowed and not self._spool_failed
            if spooling and not self._spool_wanted:
                self._spool_wanted = True
                self._spool_idle = False
                return True, True
            return spooling, False

    def can_spool(self) -> bool:
        return self._spool_allowed and not self._spool_failed

    # -- the spool writer's side ----------------------------------------------------------

    def spool_plan(self) -> tuple[bool, str | None]:
        """(a journal is wanted now, the run id to record)."""
        with self._lock:
            return self._spool_wanted and not self._spool_failed, self._run_id

    def journal_opened(self, directory: str) -> None:
        with self._lock:
            self._spill.opened(directory)

    def unwritten(self, limit: int) -> tuple[int, list[Metric], list[QueuedOp]]:
        """Up to `limit` unsettled metrics not yet in the journal (from the chunk in flight
        and memory, in order) and the unwritten ops positioned up to their end."""
        with self._lock:
            start = max(self._spill.written, self._acked)
            for hole_start, hole_stop in self._holes:
                if hole_start <= start < hole_stop:
                    start = hole_stop
            stop = min(self._logged, start + limit)
            if self._holes and self._holes[0][0] > start:
                stop = min(stop, self._holes[0][0])
            records: list[Metric] = []
            index = start
            chunk = self._chunk
            if chunk is not None and chunk.start <= index < chunk.end:
                records.extend(chunk.records[index - chunk.start : stop - chunk.start])
                index = start + len(records)
            if index < stop and index >= self._mem_start:
                offset = index - self._mem_start
                memory = self._memory
                records.extend(memory[i] for i in range(offset, offset + stop - index))
                index = start + len(records)
            ops = [op for op in self._ops if op.offset is None and op.pos <= index]
            return start, records, ops

    def mark_written(
        self, start: int, ends: list[int], first_offset: int, ops: list[tuple[QueuedOp, int]]
    ) -> None:
        with self._lock:
            for op, offset in ops:
                op.written_at(offset)
            if ends:
                self._spill.add(start, ends, first_offset)
                self._counters.spool(len(ends))
            written_ops = sum(op.offset is not None for op in self._ops)
            self._spill.set_ops_written(self._ops_settled + written_ops)
            self._trim_locked()

    def take_commit_request(self) -> bool:
        """Whether the writer must fsync now (a flush waits, or the run is ending)."""
        with self._lock:
            hurry = self._commit_now or self._state is not QueueState.OPEN
            self._commit_now = False
            return hurry

    def mark_durable(self) -> None:
        """Everything written so far is fsynced."""
        with self._lock:
            self._spill.mark_durable()
            self._changed.notify_all()

    def journal_ack_offset(self, written_offset: int) -> int:
        """Byte offset before which every journal record is settled."""
        with self._lock:
            offset = self._spill.ack_offset(self._acked, written_offset)
            for op in self._ops:
                if op.offset is not None:
                    return min(offset, op.offset)
            return offset

    def spool_failed(self) -> bool:
        """The journal cannot be written; True the first time."""
        with self._lock:
            first = not self._spool_failed
            self._spool_failed = True
            self._spool_wanted = False
            self._changed.notify_all()
            return first

    def spool_step(self, *, waiting_for_id: bool) -> tuple[bool, bool, bool]:
        """After a pass of the writer: (delete the journal, let the writer go, idle)."""
        with self._lock:
            closed = self._state is QueueState.CLOSED
            settled = self._all_settled_locked()
            journal = self._spill.journal_dir is not None
            remove = journal and settled and (closed or not self._keep_journal)
            if remove:
                if not closed:
                    self._spool_wanted = False
                self._spill.removed()
            everything_out = (
                remove
                or self._spool_failed
                or self.durable_or_settled((self._logged, self._ops_logged))
            )
            waiting = waiting_for_id and not closed
            release = (closed or not self._spool_wanted) and everything_out and not waiting
            if everything_out:
                self._spool_idle = True
            return remove, release, everything_out

    def spool_needed(self) -> bool:
        """The writer has work (checked after letting it go, so no wake is lost)."""
        with self._lock:
            return not self._spool_failed and self._spool_wanted and not self._spool_idle


__all__ = [
    "DELIVERED",
    "SKIPPED",
    "Chunk",
    "EndStep",
    "Mark",
    "QueueState",
    "QueuedOp",
    "ReadBack",
    "RunQueue",
    "Segment",
    "Wake",
    "Work",
]
