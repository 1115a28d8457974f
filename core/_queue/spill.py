"""A run's spill to disk, as its `RunQueue` keeps it: whether the journal is wanted, and
where the unsettled metrics are in it.

The spool writer appends metrics to the journal in contiguous runs (`Segment`s); the queue
drops from memory what is written, and the delivery loop reads it back from the byte
offset the index gives. Owned by one `RunQueue` and used only under its lock.

The journal is wanted from the start (`spool="always"`, offline) or from the first failed
request or full queue (`"on_failure"`), never with `"off"`, and no more once it could not
be written (the run goes on in memory).
"""

from __future__ import annotations

from array import array
from collections import deque

from .records import ReadBack


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


class Spill:
    """The journal's flags, and what of the run is in it: `written` (every unsettled metric
    below it is on disk), `ops_written`, `durable` (the same, fsynced) and the segments."""

    def __init__(self, allowed: bool, wanted: bool) -> None:
        self.allowed = allowed
        self.wanted = wanted
        self.failed = False
        self.idle = True  # the writer found nothing to do since the last change
        self.commit_now = False  # a flush is waiting for the disk: fsync without waiting
        self.journal_dir: str | None = None  # where the journal is, once open
        self.written = 0
        self.ops_written = 0
        self.durable: tuple[int, int] = (0, 0)
        self._segments: deque[Segment] = deque()

    # -- the flags ------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.allowed and not self.failed

    def want(self) -> bool:
        """Journal from now on (if it can); True when it was not wanted before."""
        started = self.usable and not self.wanted
        if self.usable:
            self.wanted = True
        return started

    def stop_wanting(self) -> None:
        self.wanted = False

    def wake_needed(self) -> bool:
        """Something new to write: True when the writer must be woken (it was idle)."""
        if self.wanted and self.idle:
            self.idle = False
            return True
        return False

    def touch(self) -> bool:
        """Something changed that the writer records (an op, the acked offset); True when
        the journal is wanted (and so the writer has work)."""
        if self.wanted:
            self.idle = False
        return self.wanted

    def rest(self) -> None:
        self.idle = True

    def needed(self) -> bool:
        return not self.failed and self.wanted and not self.idle

    def commit_soon(self) -> None:
        self.commit_now = True
        self.idle = False

    def take_commit(self, hurry: bool) -> bool:
        hurry = hurry or self.commit_now
        self.commit_now = False
        return hurry

    def fail(self) -> bool:
        """The journal cannot be written; True the first time."""
        first = not self.failed
        self.failed = True
        self.wanted = False
        return first

    def step(
        self, *, closed: bool, settled: bool, on_disk: bool, keep_journal: bool, waiting: bool
    ) -> tuple[bool, bool, bool]:
        """After a pass of the writer: (delete the journal: everything in it is settled and
        nobody needs it; let the writer go; nothing is left to write)."""
        remove = self.journal_dir is not None and settled and (closed or not keep_journal)
        if remove:
            if not closed:
                self.wanted = False
            self.removed()
        out = remove or self.failed or on_disk
        release = (closed or not self.wanted) and out and not waiting
        if out:
            self.idle = True
        return remove, release, out

    # -- the index ------------------------------------------------------------------------

    def opened(self, directory: str) -> None:
        self.journal_dir = directory

    def removed(self) -> None:
        """The journal was deleted (everything in it is settled)."""
        self.journal_dir = None
        self._segments.clear()

    def skip_to(self, index: int) -> None:
        """Metrics below `index` need no writing (dropped, or given up on)."""
        self.written = max(self.written, index)

    def forget(self, index: int) -> None:
        """Everything below `index` is settled without the journal (abandoned)."""
        self.skip_to(index)
        self.settled_below(index)

    def add(self, start: int, ends: list[int], first_offset: int) -> None:
        last = self._segments[-1] if self._segments else None
        if last is None or last.stop != start:
            last = Segment(start, first_offset)
            self._segments.append(last)
        last.ends.extend(ends)
        self.written = start + len(ends)

    def set_ops_written(self, count: int) -> None:
        self.ops_written = count

    def mark_durable(self) -> None:
        self.durable = (self.written, self.ops_written)

    def settled_below(self, acked: int) -> None:
        segments = self._segments
        while segments and segments[0].stop <= acked:
            segments.popleft()

    def read_back(self, start: int, stop: int) -> ReadBack | None:
        """Where to read metrics `[start, stop)` back from (cut at a segment's end), or None
        when the journal does not hold them."""
        segment = self.segment_for(start)
        if segment is None or self.journal_dir is None:
            return None
        return ReadBack(start, min(stop, segment.stop), self.journal_dir, segment.offset_of(start))

    def segment_for(self, index: int) -> Segment | None:
        for segment in self._segments:
            if segment.start <= index < segment.stop:
                return segment
        return None

    def ack_offset(self, acked: int, written_offset: int) -> int:
        """Byte offset before which every metric line is settled."""
        if acked < self.written:
            for segment in self._segments:
                if segment.stop > acked:
                    return segment.offset_of(max(acked, segment.start))
        return written_offset
