"""The record stream of one run: everything the run does, in order, until it is settled.

A run's records are its metrics -- `(key, value, timestamp, step)` tuples, numbered 0, 1, ...
in the order they were logged -- and its ops: create or attach, params, tags, status. An op
is positioned before the metric that was logged after it (`pos` = metrics logged before it),
so the stream order is well defined and is the order everything reaches the server: a
status set after the last metric is sent after it.

`RunStream` is pure state behind one lock; it does no I/O. The caller appends (a lock, a
deque extend, counters); the delivery loop (`delivery.py`) takes the next op or chunk of
metrics, sends it and settles it; the spool writer (`spool.py`) copies unsettled records to
the journal and, when memory is over its bound, drops from memory what is safely on disk.

Where each metric index lives:

    [0, acked)              settled: delivered, failed, dropped, rejected by the server or
                            skipped (each counted once, when its chunk settles)
    chunk                   the batch in flight, `acked` is its start; per-record outcomes
    [.., mem_start)         unsettled and only on disk (read back from the journal)
    [mem_start, logged)     in memory (and on disk too below `written`)
    holes                   ranges dropped from a full queue with nowhere to spill them
"""

from __future__ import annotations

import itertools
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

from .journal import Metric, Op
from .notify import Notifier
from .options import DeliveryOptions
from .stats import Counters

DELIVERED = ""  # a chunk outcome; any other string is the reason the point failed
SKIPPED = "\x00skipped"  # already on the server (resumed run)

Mark = tuple[int, int]  # (metrics logged, ops logged): a point in the stream


def _nothing() -> None:
    return None


class QueuedOp:
    """An op waiting to be settled; `offset` is where the journal holds it (None: not yet)."""

    __slots__ = ("offset", "op", "pos")

    def __init__(self, pos: int, op: Op) -> None:
        self.pos = pos
        self.op = op
        self.offset: int | None = None


class Chunk:
    """Metrics `[start, start + len(records))` being delivered, and what became of each."""

    __slots__ = ("attempts", "first_failure", "outcomes", "records", "start", "token")

    def __init__(self, start: int, records: list[Metric]) -> None:
        self.start = start
        self.records = records
        self.outcomes: list[str | None] = [None] * len(records)
        self.attempts = 0
        self.first_failure = 0.0
        self.token: str | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.records)

    def pending(self) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome is None]

    def skip_logged(self, floors: dict[str, int]) -> None:
        """Mark points at or below the last step the server already holds for their key."""
        for i, (key, _, _, step) in enumerate(self.records):
            floor = floors.get(key)
            if floor is not None and step <= floor and self.outcomes[i] is None:
                self.outcomes[i] = SKIPPED


class Segment:
    """Metrics `[start, start + len(ends))` written contiguously to the journal from byte
    `offset`; `ends[i]` is where the line of metric `start + i` ends."""

    __slots__ = ("ends", "offset", "start")

    def __init__(self, start: int, offset: int) -> None:
        self.start = start
        self.offset = offset
        self.ends = array("q")

    @property
    def stop(self) -> int:
        return self.start + len(self.ends)

    def offset_of(self, index: int) -> int:
        return self.offset if index == self.start else self.ends[index - self.start - 1]


class RunStream:
    """The records of one run. Every field is guarded by `lock`."""

    def __init__(
        self,
        options: DeliveryOptions,
        *,
        local_id: str,
        run_id: str | None = None,
        offline: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        self.options = options
        self.notifier = notifier or Notifier()
        self.local_id = local_id
        self.run_id = run_id
        self.offline = offline
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.counters = Counters()
        self.max_queue = options.max_queue

        self.memory: deque[Metric] = deque()
        self.mem_start = 0
        self.logged = 0
        self.acked = 0
        self.holes: deque[tuple[int, int]] = deque()
        self.oldest_at = 0.0  # monotonic time the oldest unsent metric in memory was logged
        self.urgent = 0  # metrics below this index are sent without waiting (flush, end)

        self.ops: deque[QueuedOp] = deque()  # unsettled, in order
        self.ops_logged = 0
        self.ops_settled = 0

        self.chunk: Chunk | None = None  # owned by the delivery loop
        self.floors: dict[str, int] = {}  # resume: the last step the server holds per key

        # The journal, owned by the spool writer. "off": never; otherwise the journal opens
        # when `spool_wanted` is set (always / offline: from the start; on_failure: at the
        # first failed request or a full queue) unless it could not be written.
        self.spool_allowed = options.spool != "off" or offline
        self.spool_wanted = options.spool == "always" or offline
        self.spool_failed = False
        self.spool_idle = True  # the writer found nothing to do since the last append
        self.written = 0  # every unsettled metric below this index is in the journal
        self.ops_written = 0  # ... and so is every unsettled op among the first ops_written
        self.durable: Mark = (0, 0)  # the same, fsynced
        self.segments: deque[Segment] = deque()
        self.journal_dir: str | None = None  # where the journal is, once open
        self.commit_now = False  # a flush is waiting for the disk: fsync without waiting

        self.closed = False  # ended: no delivery until something is logged again
        self.closing = False  # end() is settling the last records
        self.reopened: Callable[[], None] = _nothing  # called (no lock held) on reopen
        self.wake_delivery: Callable[[], None] = _nothing
        self.wake_spool: Callable[[], None] = _nothing

    # -- the caller's side ----------------------------------------------------------------

    def append(self, metrics: list[Metric], rejected: int = 0) -> None:
        """Queue metrics (the training thread's hot path); count `rejected` invalid ones."""
        count = len(metrics)
        reopened = False
        dropped = 0
        with self.lock:
            if self.closed:
                reopened = self._reopen_locked()
            counters = self.counters
            counters.logged += count + rejected
            counters.rejected += rejected
            if not count:
                return
            memory = self.memory
            memory.extend(metrics)
            self.logged += count
            size = len(memory)
            if size == count:
                self.oldest_at = time.monotonic()
            if size > self.max_queue:
                dropped = self._overflow_locked()
            wake = size == count or (size >= 1000 > size - count)
            wake_spool = self.spool_wanted and self.spool_idle
            if wake_spool:
                self.spool_idle = False
        if reopened:
            self.reopened()
        if wake:
            self.wake_delivery()
        if wake_spool:
            self.wake_spool()
        if dropped:
            self.notifier.throttled(
                "queue-full",
                f"aidp-metrics: the delivery queue is full ({self.max_queue} metrics) and "
                f"there is no spool to take more; dropped the {dropped} oldest",
            )

    def append_op(self, kind: str, payload: dict[str, Any]) -> None:
        reopened = False
        with self.lock:
            if self.closed:
                reopened = self._reopen_locked()
            self.queue_op_locked(kind, payload)
            wake_spool = self.spool_wanted
            self.spool_idle = False
        if reopened:
            self.reopened()
        self.wake_delivery()
        if wake_spool:
            self.wake_spool()

    def queue_op_locked(self, kind: str, payload: dict[str, Any]) -> None:
        self.ops.append(QueuedOp(self.logged, (kind, payload)))
        self.ops_logged += 1

    def _reopen_locked(self) -> bool:
        """Logging into an ended run: it is RUNNING again, before what is logged now."""
        self.closed = False
        self.closing = False
        self.queue_op_locked("status", {"status": "RUNNING"})
        return True

    def reject(self, count: int) -> None:
        with self.lock:
            self.counters.logged += count
            self.counters.rejected += count

    def mark(self) -> Mark:
        with self.lock:
            return self.logged, self.ops_logged

    def rush(self, mark: Mark) -> None:
        """Send everything before `mark` now, without waiting for `flush_interval`."""
        with self.lock:
            self.urgent = max(self.urgent, mark[0])
        self.wake_delivery()

    def settled(self, mark: Mark) -> bool:
        """Every record before `mark` is settled (on the server, or counted as lost)."""
        return self.acked >= mark[0] and self.ops_settled >= mark[1]

    def durable_or_settled(self, mark: Mark) -> bool:
        """Every record before `mark` is settled or fsynced to the journal."""
        return max(self.acked, self.durable[0]) >= mark[0] and (
            max(self.ops_settled, self.durable[1]) >= mark[1]
        )

    def wait(self, until: Callable[[], bool], timeout: float | None) -> bool:
        """Wait (lock not held) until `until()` holds; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while not until():
                if deadline is None:
                    self.changed.wait(1.0)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(min(remaining, 1.0))
            return True

    # -- a full queue ---------------------------------------------------------------------

    def _overflow_locked(self) -> int:
        """Over `max_queue` in memory: spill to the journal, wait, or drop the oldest.
        Returns how many were dropped. (Waking the spool writer only takes the writer's
        lock, which is never held while a stream lock is taken.)"""
        limit = self.max_queue
        if self.spool_allowed and not self.spool_failed:
            self.spool_wanted = True
            self.spool_idle = False
            self.wake_spool()
            self.trim_locked()
            if len(self.memory) <= 2 * limit:
                return 0  # the writer is catching up on its own thread
            # Twice over: the writer is behind (it needs the GIL this thread keeps taking).
            # Waiting for it beats dropping points; only a writer that fails lets go.
            self._wait_for_room_locked(2 * limit)
            if len(self.memory) <= 2 * limit:
                return 0
            limit *= 2
        elif self.options.policy == "block":
            self._wait_for_room_locked(limit)
        excess = len(self.memory) - limit
        if excess > 0:
            self._drop_oldest_locked(excess)
        return max(0, excess)

    def _wait_for_room_locked(self, limit: int) -> None:
        deadline = time.monotonic() + self.options.block_timeout
        while len(self.memory) > limit and not self.closed and not self.spool_failed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.changed.wait(min(remaining, 0.1))
            self.trim_locked()

    def _drop_oldest_locked(self, count: int) -> None:
        for _ in range(count):
            self.memory.popleft()
        start = self.mem_start
        self.mem_start = start + count
        self.written = max(self.written, self.mem_start)
        if self.holes and self.holes[-1][1] == start:
            self.holes[-1] = (self.holes[-1][0], self.mem_start)
        else:
            self.holes.append((start, self.mem_start))
        self.counters.dropped += count
        self.changed.notify_all()

    def trim_locked(self) -> None:
        """Drop from memory the oldest metrics that are safely in the journal."""
        memory = self.memory
        excess = len(memory) - self.max_queue
        if excess <= 0:
            return
        movable = min(excess, self.written - self.mem_start)
        for _ in range(movable):
            memory.popleft()
        if movable > 0:
            self.mem_start += movable
            self.changed.notify_all()

    # -- the delivery loop's side ---------------------------------------------------------

    def settle_holes_locked(self) -> None:
        holes = self.holes
        while holes and holes[0][0] <= self.acked:
            self.acked = max(self.acked, holes.popleft()[1])

    def next_hole_locked(self) -> int | None:
        return self.holes[0][0] if self.holes else None

    def take_from_memory_locked(self, count: int) -> Chunk:
        memory = self.memory
        records = [memory.popleft() for _ in range(count)]
        chunk = Chunk(self.mem_start, records)
        self.mem_start += count
        if memory:  # what stayed behind is older than flush_interval by now: send it soon
            self.oldest_at = time.monotonic() - self.options.flush_interval
        self.chunk = chunk
        self.changed.notify_all()  # room for a caller blocked on a full queue
        return chunk

    def segment_for_locked(self, index: int) -> Segment | None:
        for segment in self.segments:
            if segment.start <= index < segment.stop:
                return segment
        return None

    def settle_chunk_locked(self, chunk: Chunk) -> None:
        counters = self.counters
        delivered = skipped = 0
        failures: dict[str, int] = {}
        for outcome in chunk.outcomes:
            if outcome == DELIVERED:
                delivered += 1
            elif outcome == SKIPPED:
                skipped += 1
            elif outcome is not None:
                failures[outcome] = failures.get(outcome, 0) + 1
        counters.delivered += delivered
        counters.skipped += skipped
        for reason, count in failures.items():
            counters.fail(count, reason)
        self.acked = max(self.acked, chunk.end)
        self.chunk = None
        self._after_progress_locked()

    def fail_range_locked(self, start: int, stop: int, reason: str) -> None:
        """Metrics that are lost (e.g. an unreadable journal): count them failed, move on."""
        self.counters.fail(stop - start, reason)
        self.acked = max(self.acked, stop)
        self._after_progress_locked()

    def settle_op_locked(self) -> None:
        self.ops.popleft()
        self.ops_settled += 1
        self._after_progress_locked()

    def _after_progress_locked(self) -> None:
        self.settle_holes_locked()
        segments = self.segments
        while segments and segments[0].stop <= self.acked:
            segments.popleft()
        self.changed.notify_all()
        if self.spool_wanted:
            self.spool_idle = False  # the acked offset moved: the writer records it

    def abandon_locked(self, reason: str) -> None:
        """Give up on every unsettled metric (counted failed) and drop the queued ops -- but a
        create or attach that never happened stays: logging again must still open the run."""
        chunk = self.chunk
        if chunk is not None:
            for i, outcome in enumerate(chunk.outcomes):
                if outcome is None:
                    chunk.outcomes[i] = reason
            self.settle_chunk_locked(chunk)
        lost = 0
        index = self.acked
        for start, stop in self.holes:
            lost += max(0, start - index)
            index = max(index, stop)
        lost += self.logged - index
        self.holes.clear()
        self.counters.fail(lost, reason)
        self.acked = self.written = self.mem_start = self.logged
        self.memory.clear()
        self.segments.clear()
        opening = self.ops[0] if self.ops and self.ops[0].op[0] in ("create", "attach") else None
        while self.ops:
            self.settle_op_locked()
        if opening is not None:
            self.ops.append(opening)
            self.ops_settled -= 1

    def all_settled_locked(self) -> bool:
        return self.acked >= self.logged and not self.ops and self.chunk is None

    # -- the spool writer's side ----------------------------------------------------------

    def unwritten_locked(self, limit: int) -> tuple[int, list[Metric], list[QueuedOp]]:
        """Up to `limit` unsettled metrics not yet in the journal (from the in-flight chunk
        and memory, in order) and the unwritten ops positioned up to their end."""
        start = max(self.written, self.acked)
        for hole_start, hole_stop in self.holes:
            if hole_start <= start < hole_stop:
                start = hole_stop
        stop = min(self.logged, start + limit)
        hole = self.next_hole_locked()
        if hole is not None and hole > start:
            stop = min(stop, hole)
        records: list[Metric] = []
        index = start
        chunk = self.chunk
        if chunk is not None and chunk.start <= index < chunk.end:
            taken = chunk.records[index - chunk.start : stop - chunk.start]
            records.extend(taken)
            index += len(taken)
        if index < stop and index >= self.mem_start:
            offset = index - self.mem_start
            records.extend(itertools.islice(self.memory, offset, offset + stop - index))
            index = start + len(records)
        ops = [op for op in self.ops if op.offset is None and op.pos <= index]
        return start, records, ops

    def mark_written_locked(
        self,
        start: int,
        count: int,
        ends: array[int],
        first_offset: int,
        ops: list[tuple[QueuedOp, int]],
    ) -> None:
        for op, offset in ops:
            op.offset = offset
        if count:
            last = self.segments[-1] if self.segments else None
            if last is None or last.stop != start:
                last = Segment(start, first_offset)
                self.segments.append(last)
            last.ends.extend(ends)
            self.written = start + count
            self.counters.spooled += count
        self.ops_written = self.ops_settled + sum(op.offset is not None for op in self.ops)
        self.trim_locked()

    def journal_ack_offset_locked(self, written_offset: int) -> int:
        """Byte offset before which every journal record is settled."""
        offset = written_offset
        acked = self.acked
        if acked < self.written:
            for segment in self.segments:
                if segment.stop > acked:
                    offset = segment.offset_of(max(acked, segment.start))
                    break
        for op in self.ops:
            if op.offset is not None:
                offset = min(offset, op.offset)
                break
        return offset
