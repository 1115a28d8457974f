"""The records of a run's queue, and what the queue tells the parties that use it.

`QueuedOp` and `Chunk` are handed by the queue to the delivery loop (which records each
point's outcome in the chunk); `ReadBack` names metrics to read back from the journal;
`Wake` and `EndStep` are the queue's answers to the training thread and to `end()`.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

from aidp_metrics._metric import MetricRecord

from .journal import Op

DELIVERED = ""  # a chunk outcome; any other string is the reason the point failed
SKIPPED = "\x00skipped"  # already on the server (resumed run)

Mark = tuple[int, int]  # (metrics logged, ops logged): a point in the queue


class QueueState(enum.Enum):
    OPEN = "open"  # logging and delivering
    CLOSING = "closing"  # end() is settling what was logged before it (an append reopens)
    CLOSED = "closed"  # ended: nothing is delivered until something is logged again


class Wake(enum.IntFlag):
    """What the caller of `append`/`append_op` must do next."""

    NONE = 0
    SENDER = 1  # wake the delivery loop
    SPOOL = 2  # wake the spool writer
    REOPENED = 4  # the run had ended: register it again
    FULL = 8  # memory is over its bound: call `make_room`


class EndStep(enum.Enum):
    DONE = "done"  # closed
    SPILL = "spill"  # wait for the journal, then `end_after_spill`
    AGAIN = "again"  # not settled yet, and there is time left: deliver again


class QueuedOp:
    """An op waiting to be settled; `offset` is where the journal holds it (None: not yet)."""

    __slots__ = ("offset", "op", "pos")

    def __init__(self, pos: int, op: Op) -> None:
        self.pos = pos
        self.op = op
        self.offset: int | None = None

    def written_at(self, offset: int) -> None:
        self.offset = offset


class OpLog:
    """A run's unsettled ops in order, and how many were logged and settled."""

    def __init__(self) -> None:
        self.pending: deque[QueuedOp] = deque()
        self.logged = 0
        self.settled = 0

    def add(self, pos: int, kind: str, payload: dict[str, Any]) -> None:
        self.pending.append(QueuedOp(pos, (kind, payload)))
        self.logged += 1

    def due(self, acked: int) -> QueuedOp | None:
        """The next op, once every metric before it is settled."""
        pending = self.pending
        return pending[0] if pending and pending[0].pos <= acked else None

    def next_pos(self) -> int | None:
        return self.pending[0].pos if self.pending else None

    def settle(self, queued: QueuedOp) -> bool:
        if self.pending and self.pending[0] is queued:
            self.pending.popleft()
            self.settled += 1
            return True
        return False

    def abandon(self, upto: int) -> None:
        """Settle the ops logged before op `upto` but a create or attach that never
        happened: logging again must still open the run."""
        pending = self.pending
        count = min(len(pending), upto - self.settled)
        if count <= 0:
            return
        opening = pending[0] if pending[0].op[0] in ("create", "attach") else None
        for _ in range(count):
            pending.popleft()
        self.settled += count
        if opening is not None:
            pending.appendleft(opening)
            self.settled -= 1

    def unwritten(self, upto: int) -> list[QueuedOp]:
        """Ops not in the journal yet, positioned up to metric `upto`."""
        return [op for op in self.pending if op.offset is None and op.pos <= upto]

    def written(self) -> int:
        """Ops settled or in the journal (they are in order)."""
        return self.settled + sum(op.offset is not None for op in self.pending)

    def first_offset(self) -> int | None:
        """Where the first unsettled op that is in the journal is."""
        for op in self.pending:
            if op.offset is not None:
                return op.offset
        return None


class Chunk:
    """Metrics `[start, start + len(records))` being delivered, and what became of each."""

    __slots__ = ("outcomes", "records", "start")

    def __init__(self, start: int, records: list[MetricRecord]) -> None:
        self.start = start
        self.records = records
        self.outcomes: list[str | None] = [None] * len(records)

    @property
    def end(self) -> int:
        return self.start + len(self.records)

    def pending(self) -> list[int]:
        """The indices of the points without an outcome yet."""
        outcomes = self.outcomes
        waiting = outcomes.count(None)  # usually all or none: a C loop says which
        if waiting == len(outcomes):
            return list(range(waiting))
        return [i for i, outcome in enumerate(outcomes) if outcome is None] if waiting else []

    def records_at(self, indices: list[int]) -> list[MetricRecord]:
        """The records at `indices` (distinct, as `pending()` gives them), in order."""
        if len(indices) == len(self.records):
            return self.records
        return [self.records[i] for i in indices]

    def set_outcome(self, indices: list[int], outcome: str) -> None:
        """What became of the points at `indices` (distinct)."""
        if len(indices) == len(self.outcomes):
            self.outcomes = [outcome] * len(indices)
            return
        for i in indices:
            self.outcomes[i] = outcome

    def skip_logged(self, floors: dict[str, int], ceilings: dict[str, int] | None = None) -> int:
        """Mark points the server already holds for their key -- at or below its floor, at
        or above its ceiling; returns how many."""
        skipped = 0
        ceilings = ceilings or {}
        for i, (key, _, _, step) in enumerate(self.records):
            floor = floors.get(key)
            ceiling = ceilings.get(key)
            held = (floor is not None and step <= floor) or (
                ceiling is not None and step >= ceiling
            )
            if held and self.outcomes[i] is None:
                self.outcomes[i] = SKIPPED
                skipped += 1
        return skipped


class ReadBack:
    """Metrics `[start, stop)` that are only in the journal at `directory`, from `offset`."""

    __slots__ = ("directory", "offset", "start", "stop")

    def __init__(self, start: int, stop: int, directory: str, offset: int) -> None:
        self.start, self.stop, self.directory, self.offset = start, stop, directory, offset


Work = QueuedOp | Chunk | ReadBack
