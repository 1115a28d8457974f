"""The stages behind one `Run` in this process: its queue, its sender, its spool task, and
its uploads (created on the first `log_artifact`-like call).

    training thread --append--> RunQueue --next_work--> StreamSender (delivery loop)
                    |               \\--unwritten--> SpoolTask (spool writer) --> journal
                    \\--log_artifact--> UploadStage --serve--> MLflow artifact repository (uploader)

The queue answers every append with what to do (`Wake`); `act` does it: wake the delivery
loop or the spool writer, make room in a full queue. `end` settles what was logged before it
within its time (delivering, else keeping it in the journal, else counting it failed), then
lets go of the threads, the connection and the journal -- unless another thread logged
meanwhile and so reopened the run, which then stays connected.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from aidp_metrics._connection.client import TrackingClient
from aidp_metrics._delivery.sender import StreamSender, loop
from aidp_metrics._delivery.worker import ProcessWorker
from aidp_metrics._durability.spool import SpoolTask, writer
from aidp_metrics._notice import Notices, notice
from aidp_metrics._queue.journal import RunDescriptor, spool_root
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._queue.queue import EndStep, Mark, QueueState, RunQueue, Wake
from aidp_metrics._stats import RunStats
from aidp_metrics._uploads.stage import UploadStage

DOWN_WAIT = 2.0  # how long end() waits on a server known to be down before spooling
SPOOL_WAIT = 10.0  # how long end() waits for the journal to be on disk
THREAD_EXIT_WAIT = 2.0  # end() of the last run waits this long for the threads to go


class RunPipeline:
    """A run's queue and the process-wide stages that serve it."""

    def __init__(
        self,
        client: TrackingClient | None,
        options: DeliveryOptions,
        descriptor: RunDescriptor,
        *,
        run_id: str | None,
        opening: tuple[str, dict[str, Any]] | None,
        floors: dict[str, int] | None,
        notices: Notices,
        owns_client: bool,
    ) -> None:
        self.client = client
        self.options = options
        self.notices = notices
        self.descriptor = descriptor
        self._owns_client = owns_client
        self._uploads: UploadStage | None = None
        self._uploads_lock = threading.Lock()
        self.queue = RunQueue(
            options, local_id=descriptor.local_id, run_id=run_id, offline=client is None
        )
        if floors:
            self.queue.set_skips(floors)
        if opening is not None:
            self.queue.append_op(*opening)
        root = spool_root(options.spool_dir)
        self.spool: SpoolTask | None = None
        if self.queue.can_spool():
            self.spool = SpoolTask(self.queue, root, descriptor)
        self.sender: StreamSender | None = None
        if client is not None:
            wake = self.spool.wake if self.spool is not None else None
            self.sender = StreamSender(
                self.queue, client, notices=notices, spool_root=root, wake_spool=wake
            )

    def connect(self) -> None:
        """Hand the queue to the delivery loop and the spool writer (again, on reopen)."""
        if self.sender is not None:
            loop.register(self.queue, self.sender)
        wanted, run_id = self.queue.journal.plan()
        if self.spool is not None and (wanted or run_id is None):
            self.spool.wake()

    def act(self, wake: int) -> bool:
        """Do what an append asked for; True when the run had ended and was reopened."""
        if wake & Wake.REOPENED:
            self.connect()
        if wake & Wake.SENDER and self.sender is not None:
            loop.wake()
        if wake & Wake.SPOOL and self.spool is not None:
            self.spool.wake()
        if wake & Wake.FULL:
            dropped = self.queue.make_room()
            if dropped:
                self.notices.throttled(
                    "queue-full",
                    f"aidp-metrics: the delivery queue is full ({self.options.max_queue} "
                    f"metrics) and there is no spool to take more; dropped the {dropped} oldest",
                )
        return bool(wake & Wake.REOPENED)

    def stats(self) -> RunStats:
        stats = self.queue.stats()
        stage = self._uploads
        return stats if stage is None else dataclasses.replace(stats, **stage.counts())

    def uploads(self) -> UploadStage:
        """The run's upload stage, made on first use (a run without artifacts has none)."""
        with self._uploads_lock:
            if self._uploads is None:
                queue = self.queue
                self._uploads = UploadStage(
                    self.client,
                    self.options,
                    self.descriptor,
                    lambda: queue.run_id,
                    self.notices,
                )
            return self._uploads

    # -- waiting ------------------------------------------------------------------------

    def flush(self, timeout: float | None, run_id: str) -> bool:
        """Wait until everything queued before now is on the server (offline: on disk);
        says so (throttled) when `timeout` passed first."""
        queue = self.queue
        mark = queue.mark()
        stage = self._uploads
        uploads = stage.mark() if stage is not None else 0
        started = time.monotonic()
        if self.client is None:
            queue.commit_soon()
            if self.spool is not None:
                self.spool.wake()
            done = self.wait(lambda: queue.durable_or_settled(mark), timeout, writer)
        else:
            queue.rush(mark)
            loop.wake()
            done = self.wait(lambda: queue.settled(mark), timeout, loop)
        if done and stage is not None:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            done = stage.wait(uploads, left)
        if not done:
            self.notices.throttled(
                "flush-timeout",
                f"aidp-metrics: flush timed out after {timeout} s with "
                f"{self.stats().pending} metric(s) of run {run_id} still pending",
            )
        return done

    def wait(self, until: Callable[[], bool], timeout: float | None, worker: ProcessWorker) -> bool:
        """Wait for `until()` (evaluated under the queue's lock) while `worker` works."""
        if not worker.running():
            worker.wake()
        if worker.running() or timeout == 0:
            return self.queue.wait(until, timeout)
        # No thread could be started (interpreter shutdown on 3.12+): do the work here.
        done = lambda: self.queue.check(until)  # noqa: E731
        return worker.drive(done, 3600.0 if timeout is None else timeout)

    # -- ending ---------------------------------------------------------------------------

    def end(self, status: dict[str, Any] | None, *, repeat: bool, wait: float, why: str) -> bool:
        """Queue `status` (None: a forked child ends the run), settle everything logged
        before this call within `wait` seconds and let go. False when there was nothing to
        do (`repeat`: already ended with this status). Returns with the queue closed unless
        logging reopened it (another thread logging meanwhile does: what it logs is not
        this end's to wait for)."""
        mark = self.queue.begin_end(status, repeat=repeat)
        if mark is None:
            return False
        deadline = time.monotonic() + wait
        uploads = self._uploads
        files = uploads.mark() if uploads is not None else 0  # logged before end() too
        self.connect()
        self._settle(mark, wait, f"not delivered {why}")
        if uploads is not None:  # in what time is left
            sender = self.sender
            down = lambda: sender is not None and (sender.server_down or bool(sender.stuck))  # noqa: E731
            uploads.finish(files, max(0.0, deadline - time.monotonic()), down)
        return True

    def _settle(self, mark: Mark, wait: float, reason: str) -> None:
        """Deliver what was logged before the end `mark` within `wait` seconds; keep the
        rest of it on disk (or count it failed without a spool); close the queue."""
        queue = self.queue
        deadline = time.monotonic() + wait
        if self.client is not None:
            queue.rush(mark)
        while True:
            if self.client is not None:
                self._deliver_until(mark, deadline)
            # Offline, nothing but the journal can settle them: no point in waiting.
            late = self.client is None or time.monotonic() >= deadline
            step = queue.end_step(mark, out_of_time=late, reason=reason)
            if step is EndStep.DONE:
                return
            if step is EndStep.SPILL:
                break
        if self.spool is not None:
            self.spool.wake()
            on_disk = functools.partial(queue.durable_or_failed, mark)
            self.wait(on_disk, SPOOL_WAIT, writer)
        queue.end_after_spill(mark, reason=reason)

    def _deliver_until(self, mark: Mark, deadline: float) -> bool:
        """Wait for delivery; with a spool, stop early once the server is down and nothing
        has moved for DOWN_WAIT seconds (the journal keeps the rest)."""
        queue = self.queue
        sender = self.sender
        while True:
            before = queue.progress()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.wait(lambda: queue.settled(mark), min(remaining, DOWN_WAIT), loop):
                return True
            moved = queue.progress() != before
            down = sender is not None and (sender.server_down or sender.stuck is not None)
            if not moved and down and queue.can_spool():
                return False

    def close(self) -> bool:
        """Let go of the delivery loop, the spool writer and the connection -- unless
        another thread logged meanwhile and so reopened the run (then False)."""
        queue = self.queue
        if not queue.finish_close():
            return False
        last = loop.unregister(queue)
        if not queue.finish_close():  # reopened meanwhile: it must stay registered
            self.connect()
            return False
        spool = self.spool
        if spool is not None and (spool.journal is not None or writer.registered(queue)):
            spool.wake()
            deadline = time.monotonic() + SPOOL_WAIT
            while not spool.finished.wait(0.05) and queue.state is QueueState.CLOSED:
                if time.monotonic() > deadline:
                    break
        if self._owns_client and self.client is not None:
            if self.sender is not None:
                self.sender.release(self.client.close)
            else:
                self.client.close()
        if last:
            loop.join_if_idle(THREAD_EXIT_WAIT)
        writer.join_if_idle(THREAD_EXIT_WAIT)
        return True

    def report_end(self, run_id: str, skipped_before: int) -> int:
        """Say what became of the points that are not on the server; returns the skipped
        count reported (a reopened run that ends again does not repeat it)."""
        stats = self.stats()
        spool = self.spool
        if stats.pending and spool is not None and spool.journal is not None:
            root = spool.root
            notice(
                f"aidp-metrics: {stats.pending} metric(s) of run {run_id} are saved in "
                f"{root}; deliver them with: aidp-metrics sync {root}"
            )
        elif stats.failed or stats.dropped:
            notice(summary(run_id, stats))
        if self._uploads is not None:
            self._uploads.report_end(run_id)
        if stats.skipped > skipped_before:
            notice(
                f"aidp-metrics: {stats.skipped} metric(s) not sent again: run {run_id} "
                "already held their steps (a resumed job: points at or below the last step "
                "the run held for their key are skipped)"
            )
        return max(stats.skipped, skipped_before)


def summary(run_id: str, stats: RunStats) -> str:
    reasons = "; ".join(f"{count}x {reason}" for reason, count in stats.failures.items())
    parts = [f"{stats.undelivered} of {stats.logged} metric(s) of run {run_id} not delivered"]
    if stats.dropped:
        parts.append(f"{stats.dropped} dropped from a full queue")
    if reasons:
        parts.append(reasons)
    return "aidp-metrics: " + " — ".join(parts)
