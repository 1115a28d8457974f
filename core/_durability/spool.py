"""The spool writer: one thread per process copies runs' unsettled records to their journals.

For each run with a spool (`spool="always"`, offline, or `"on_failure"` once a request
failed or the queue filled up), the writer appends every record not yet settled to the
run's journal in stream order, fsyncs at most every `commit_interval` (the group commit),
records how far the server has acknowledged, and -- when memory holds more than
`max_queue` metrics -- drops from memory what is safely on disk (the delivery loop reads it
back). None of this happens on the training thread.

A journal whose records are all settled is deleted: at the end of the run, or as soon as an
`on_failure` spool has caught up. One that still holds records at the end stays for
`aidp-metrics sync`. If the spool directory cannot be created or written, one warning names
it and the run goes on in memory (the queue `policy` applies).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from aidp_metrics._delivery.worker import ProcessWorker
from aidp_metrics._notice import Notices
from aidp_metrics._queue.journal import (
    Journal,
    RunDescriptor,
    encode_metric,
    encode_op,
    save_run_id,
)
from aidp_metrics._queue.queue import QueuedOp, RunQueue

writer = ProcessWorker("aidp-metrics-spool")

_WRITE_BATCH = 5000  # records encoded per lock acquisition


class SpoolTask:
    """The spool side of one run's queue (kept for the run's life, registered while needed)."""

    def __init__(self, queue: RunQueue, root: Path, descriptor: RunDescriptor) -> None:
        self.queue = queue
        self.root = root
        self.descriptor = descriptor
        self.journal: Journal | None = None
        self.started_locally = descriptor.run_id is None
        self.last_commit = time.monotonic()
        self.finished = threading.Event()  # set when a closed queue's journal is finalized
        self.notices = Notices()
        self._saved_run_id = descriptor.run_id

    def wake(self) -> None:
        """Serve this queue soon (registering it again if it was let go)."""
        self.finished.clear()
        writer.register(self.queue, self)

    def serve(self) -> float:
        queue = self.queue
        wanted, run_id = queue.journal.plan()
        if run_id is not None and run_id != self._saved_run_id:
            self._record_run_id(run_id)
        if wanted and self.journal is None:
            self._open()
        journal = self.journal
        if journal is not None and queue.can_spool():
            try:
                while self._write(journal):
                    pass
                self._commit_when_due(journal)
                journal.save_acked(queue.journal.ack_offset(journal.written))
            except OSError as exc:
                self._failed(exc)
        return self._settle_state()

    # -- steps ----------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.journal = Journal.create(self.root, self.descriptor)
        except OSError as exc:
            self._failed(exc)
            return
        self.queue.journal.opened(str(self.journal.directory))

    def _write(self, journal: Journal) -> bool:
        """Append the next unwritten records; False when there were none."""
        start, records, ops = self.queue.journal.unwritten(_WRITE_BATCH)
        if not records and not ops:
            return False
        base = journal.written
        parts: list[bytes] = []
        ends: list[int] = []
        op_offsets: list[tuple[QueuedOp, int]] = []
        size = 0
        next_op = 0
        first_metric = base

        def put_ops(upto: int) -> None:
            nonlocal next_op, size
            while next_op < len(ops) and ops[next_op].pos <= upto:
                line = encode_op(ops[next_op].op)
                op_offsets.append((ops[next_op], base + size))
                parts.append(line)
                size += len(line)
                next_op += 1

        for n, record in enumerate(records):
            put_ops(start + n)
            if n == 0:
                first_metric = base + size
            line = encode_metric(record)
            parts.append(line)
            size += len(line)
            ends.append(base + size)
        put_ops(start + len(records))
        journal.append(b"".join(parts))
        self.queue.journal.mark_written(start, ends, first_metric, op_offsets)
        return True

    def _commit_when_due(self, journal: Journal) -> None:
        hurry = self.queue.journal.take_commit_request()
        due = time.monotonic() - self.last_commit >= self.queue.options.commit_interval
        if journal.committed < journal.written and (hurry or due):
            journal.commit()
            self.last_commit = time.monotonic()
        if journal.committed >= journal.written:
            self.queue.journal.mark_durable()

    def _settle_state(self) -> float:
        """Delete a journal nobody needs, let go of a queue with nothing left to write,
        or say when to come back."""
        queue = self.queue
        waiting_for_id = self.started_locally and self._saved_run_id is None
        remove, release, everything_out = queue.journal.step(waiting_for_id=waiting_for_id)
        journal = self.journal
        if remove and journal is not None:
            journal.remove()
            self.journal = None
        if release:
            writer.unregister(queue)
            if queue.journal.needed():  # woken meanwhile: that wake must not be lost
                writer.register(queue, self)
                return 0.0
            if self.journal is not None:
                self.journal.close()  # the file handle; the records stay for sync
            self.finished.set()
            return math.inf
        if everything_out:
            return math.inf
        interval = queue.options.commit_interval
        return max(0.0, self.last_commit + interval - time.monotonic())

    def _record_run_id(self, run_id: str) -> None:
        self._saved_run_id = run_id
        self.descriptor.opened_as(run_id, None, None)
        try:
            if self.started_locally:
                save_run_id(self.root, self.descriptor.local_id, run_id)
            if self.journal is not None:
                self.journal.save_descriptor()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self.queue.journal.failed():
            self.notices.once(
                "spool-failed",
                f"aidp-metrics: cannot write the spool in {self.root} "
                f"({type(exc).__name__}: {exc.strerror or exc}); the run goes on in memory "
                f"(queue policy {self.queue.options.policy!r}); set AIDP_METRICS_DIR or "
                "spool_dir= to a writable directory",
            )
