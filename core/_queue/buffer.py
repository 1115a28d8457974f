"""The metrics of one run by index: which are in memory, which were dropped, which settled.

Metrics are numbered 0, 1, ... in the order they were logged:

    [0, acked)              settled: delivered, failed, dropped, rejected or skipped
    [acked, mem_start)      unsettled and only on disk (or in the chunk in flight)
    [mem_start, logged)     in memory
    holes                   ranges dropped from a full queue with nowhere to spill them

Owned by one `RunQueue` and used only under its lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from itertools import islice, repeat

from aidp_metrics._metric import MetricRecord

# One `log_metrics` call's points, not yet made records: (keys, values, time.time_ns() of
# the call, step). Nanoseconds: the division to milliseconds is left to `_build`.
Call = tuple[Sequence[str], Sequence[float], int, int]


class MetricBuffer:
    """`memory` holds built records; calls appended with `extend_call` wait after them,
    unbuilt, until something reads memory (the delivery loop, on its own thread), so the
    training thread never builds a record (`watch` logs hundreds of points a call)."""

    def __init__(self) -> None:
        self.memory: deque[MetricRecord] = deque()
        self._unbuilt: list[Call] = []
        self._unbuilt_count = 0
        self.mem_start = 0
        self.logged = 0
        self.acked = 0
        self.holes: deque[tuple[int, int]] = deque()
        self.oldest_at = 0.0  # monotonic time the oldest unsent metric in memory was logged
        self.urgent = 0  # metrics below this index are sent without waiting (flush, end)

    @property
    def size(self) -> int:
        """How many metrics are in memory, built or not."""
        return len(self.memory) + self._unbuilt_count

    def extend(self, metrics: list[MetricRecord]) -> int:
        """Add `metrics`; returns how many are in memory now."""
        if self._unbuilt:
            self._build()
        self.memory.extend(metrics)
        return self._added(len(metrics))

    def extend_call(self, call: Call) -> int:
        """Add one call's points, to be built into records later; returns how many are in
        memory now."""
        self._unbuilt.append(call)
        count = len(call[0])
        self._unbuilt_count += count
        return self._added(count)

    def _added(self, count: int) -> int:
        self.logged += count
        size = len(self.memory) + self._unbuilt_count
        if size == count:
            self.oldest_at = time.monotonic()
        return size

    def _build(self) -> None:
        memory = self.memory
        for keys, values, stamp_ns, at in self._unbuilt:
            memory.extend(zip(keys, values, repeat(stamp_ns // 1_000_000), repeat(at)))
        self._unbuilt.clear()
        self._unbuilt_count = 0

    def rush(self, upto: int) -> None:
        self.urgent = max(self.urgent, upto)

    def drop_oldest(self, count: int) -> None:
        """Drop `count` metrics from memory with nowhere to keep them (a hole)."""
        if self._unbuilt:
            self._build()
        for _ in range(count):
            self.memory.popleft()
        start = self.mem_start
        self.mem_start = start + count
        holes = self.holes
        if holes and holes[-1][1] == start:
            holes[-1] = (holes[-1][0], self.mem_start)
        else:
            holes.append((start, self.mem_start))

    def trim(self, limit: int, written: int) -> bool:
        """Keep at most `limit` in memory by letting go of what is on disk (below
        `written`); True when any was let go."""
        if self._unbuilt:
            self._build()
        movable = min(len(self.memory) - limit, written - self.mem_start)
        for _ in range(movable):
            self.memory.popleft()
        if movable > 0:
            self.mem_start += movable
        return movable > 0

    def advance(self, end: int) -> None:
        """Everything below `end` is settled (and so is any hole that starts there)."""
        self.acked = max(self.acked, end)
        self.settle_holes()

    def settle_holes(self) -> None:
        holes = self.holes
        while holes and holes[0][0] <= self.acked:
            self.acked = max(self.acked, holes.popleft()[1])

    def next_range(self, batch: int, op_pos: int | None) -> tuple[int, int]:
        """The next metrics to send: from `acked`, up to a batch, the next op or hole."""
        start = self.acked
        stop = min(self.logged, start + batch)
        if op_pos is not None:
            stop = min(stop, op_pos)
        if self.holes:
            stop = min(stop, self.holes[0][0])
        return start, stop

    def due(self, start: int, stop: int, batch: int, now: float, interval: float) -> float:
        """0 when `[start, stop)` should go now, else the seconds until it is due."""
        if start < self.mem_start or stop - start >= batch or self.urgent > start:
            return 0.0
        return max(0.0, self.oldest_at + interval - now)

    def take(self, count: int, interval: float) -> list[MetricRecord]:
        """The oldest `count` metrics out of memory, into flight."""
        if self._unbuilt:
            self._build()
        memory = self.memory
        records = [memory.popleft() for _ in range(count)]
        self.mem_start += count
        if memory:  # what stayed behind is older than flush_interval by now: send it soon
            self.oldest_at = time.monotonic() - interval
        return records

    def unwritten(
        self, written: int, limit: int, in_flight: tuple[int, list[MetricRecord]] | None
    ) -> tuple[int, list[MetricRecord]]:
        """Up to `limit` unsettled metrics from `written` on, skipping holes, from the chunk
        in flight (`(start, records)`) and memory, in order."""
        start = max(written, self.acked)
        for hole_start, hole_stop in self.holes:
            if hole_start <= start < hole_stop:
                start = hole_stop
        stop = min(self.logged, start + limit)
        if self.holes and self.holes[0][0] > start:
            stop = min(stop, self.holes[0][0])
        if self._unbuilt:
            self._build()
        records: list[MetricRecord] = []
        index = start
        if in_flight is not None:
            chunk_start, chunk_records = in_flight
            if chunk_start <= index < chunk_start + len(chunk_records):
                records.extend(chunk_records[index - chunk_start : stop - chunk_start])
                index = start + len(records)
        if index < stop and index >= self.mem_start:
            offset = index - self.mem_start
            records.extend(islice(self.memory, offset, offset + stop - index))
        return start, records

    def abandon(self, upto: int) -> int:
        """Give up on every unsettled metric below `upto`; returns how many (holes were
        counted already). What is from `upto` on stays."""
        if self._unbuilt:
            self._build()
        lost = 0
        index = self.acked
        holes = self.holes
        while holes and holes[0][0] < upto:
            start, stop = holes.popleft()
            lost += max(0, start - index)
            index = max(index, stop)
        end = max(index, upto)
        lost += max(0, upto - index)
        memory = self.memory
        for _ in range(min(len(memory), end - self.mem_start)):
            memory.popleft()
        self.mem_start = max(self.mem_start, end)
        self.acked = max(self.acked, end)
        return lost
