"""Delivery: one thread per process sends the records of every open run, in queue order.

Each open run's queue (`queue.py`) gets a `StreamSender`; the process-wide loop
(`worker.ProcessWorker`) serves whichever sender is due. A sender sends one thing at a time,
in the order of the queue: the next op (create or attach through the `RunOpener`, params,
tags, status) once every metric before it is settled, or the next chunk of metrics (through
its `MetricTransport`), read back from the journal when memory let go of it.

Failures never stop the loop and never lose a point. After a failed attempt the one failure
policy (`retry.decide`) says: retry after a delay (`Retry-After` honoured, with the same
`opc-retry-token` for the same body), give up (the chunk's points count as failed), or keep
the records for later -- with a spool (the run starts journaling at the first failure),
in `sync`, and for the op that opens the run. Any other exception is reported once per run
and retried; after a few in a row on the same work its points count as failed, so one bad
record cannot wedge the run.

Every point of a chunk gets one outcome, and the chunk is settled (counted) once, so
`delivered` can never exceed what was logged, whatever fails in between.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aidp_metrics._connection.client import (
    MAX_BATCH_METRICS,
    TrackingClient,
    batch_bodies,
    dumps,
    new_retry_token,
)
from aidp_metrics._connection.retry import Verdict, decide
from aidp_metrics._errors import APIError, BadRequest, TooManyRequests
from aidp_metrics._notice import Notices
from aidp_metrics._queue.journal import read_metrics
from aidp_metrics._queue.queue import SKIPPED, Chunk, QueuedOp, ReadBack, RunQueue, Work

from .opener import RunOpener
from .transport import MetricTransport, Retry, short_reason
from .worker import ProcessWorker

logger = logging.getLogger("aidp_metrics")

_METRIC_CHUNK = 100  # runs/log-metric points per chunk: other runs get a turn between chunks
_INTERNAL_ERRORS_BEFORE_GIVING_UP = 3

loop = ProcessWorker("aidp-metrics-delivery")


class _Attempts:
    """The attempts at the work in hand (one chunk or op), for the failure policy."""

    __slots__ = ("count", "first_failure", "internal", "token", "work")

    def __init__(self, work: object = None) -> None:
        self.work = work
        self.count = 0
        self.first_failure = 0.0
        self.internal = 0
        self.token = new_retry_token()  # the same body keeps it on every attempt

    def failed(self, now: float) -> float:
        """Count a failure; seconds since the first."""
        self.count += 1
        if self.count == 1:
            self.first_failure = now
        return now - self.first_failure


class StreamSender:
    """Sends one queue's records. Used by the delivery loop (and by `sync`, on its thread).
    `keep` (sync) keeps retrying records that would otherwise be given up on."""

    def __init__(
        self,
        queue: RunQueue,
        client: TrackingClient,
        *,
        notices: Notices | None = None,
        spool_root: Path | None = None,
        keep: bool = False,
        wake_spool: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        self.client = client
        self.options = queue.options
        self.notices = notices or Notices()
        self.opener = RunOpener(client, spool_root)
        self.transport = MetricTransport(
            client,
            self.notices,
            transport=self.options.transport,
            max_in_flight=self.options.max_in_flight,
            count=queue.count_request,
        )
        self.keep = keep
        self._wake_spool = wake_spool  # a failure starts the journal: the writer must know
        self.not_before = 0.0
        self.server_down = queue.run_id is None
        self.stuck: str | None = None  # why nothing can be delivered (a definite refusal)
        self.last_error: str | None = None
        self._attempts = _Attempts()
        self._busy_lock = threading.Lock()
        self._busy = False  # a request of this sender is in flight
        self._when_idle: Callable[[], None] | None = None

    def release(self, close: Callable[[], None]) -> None:
        """Call `close` (the client's) now, or once the request in flight returns: closing a
        connection under a request would fail it."""
        with self._busy_lock:
            if self._busy:
                self._when_idle = close
                return
        close()

    # -- the loop's entry point -----------------------------------------------------------

    def serve(self) -> float:
        now = time.monotonic()
        if now < self.not_before:
            return self.not_before - now
        batch = MAX_BATCH_METRICS if self.transport.mode == "batch" else _METRIC_CHUNK
        work = self.queue.next_work(now, batch)
        if isinstance(work, float):
            return work
        with self._busy_lock:
            self._busy = True
        try:
            self._serve(work)
        finally:
            with self._busy_lock:
                self._busy = False
                when_idle, self._when_idle = self._when_idle, None
            if when_idle is not None:
                when_idle()
        return 0.0

    def _serve(self, work: Work) -> None:
        if isinstance(work, ReadBack):
            chunk = self._read_back(work)
            if chunk is None:
                return
            work = chunk
        if self._attempts.work is not work:
            self._attempts = _Attempts(work)
        try:
            if isinstance(work, QueuedOp):
                self._send_op(work)
            else:
                self._send_chunk(work)
            self.last_error = None
        except Retry as failure:
            if isinstance(failure.error, APIError):
                self._failed_attempt(failure.error, work)
            else:  # raised on a lane thread
                self._internal_error(failure.error, work)
        except APIError as error:
            self._failed_attempt(error, work)
        except Exception as exc:  # never let a bug stop delivery: report, back off, retry
            self._internal_error(exc, work)

    def _read_back(self, work: ReadBack) -> Chunk | None:
        """Metrics only in the journal, as the chunk in flight."""
        records = []
        try:
            records = read_metrics(work.directory, work.offset, work.stop - work.start)
        except OSError as exc:
            self.notices.once("read-back", f"aidp-metrics: cannot read the spool: {exc}")
        return self.queue.read_back_done(work, records)

    # -- metrics --------------------------------------------------------------------------

    def _send_chunk(self, chunk: Chunk) -> None:
        floors, ceilings = self.queue.skips()
        if floors or ceilings:
            chunk.skip_logged(floors, ceilings)
        self.transport.send(chunk, self._run_id(), self._attempts.token)
        if chunk.pending():  # cannot happen; if it did, retrying beats losing them
            raise RuntimeError(f"{len(chunk.pending())} point(s) of a chunk have no outcome")
        self.server_down = False
        self.queue.settle_chunk(chunk)

    # -- ops ------------------------------------------------------------------------------

    def _send_op(self, queued: QueuedOp) -> None:
        kind, payload = queued.op
        token = self._attempts.token
        if kind in ("create", "attach"):
            opened = self.opener.open(kind, payload, self.queue.local_id, token)
            if opened.floors:
                self.queue.set_skips(opened.floors)
            self.queue.resolved(opened.run_id)
            late = self.stuck is not None or self.server_down
            what = "created" if opened.created else "attached to"
            if late:
                self.notices.once(
                    "resolved", f"aidp-metrics: the server answered; {what} run {opened.run_id}"
                )
            self.stuck = None
        elif kind in ("params", "tags"):
            self._log_entities(kind, payload, token)
        elif kind == "status":
            self._set_status(payload, token)
        self.server_down = False
        self.queue.settle_op(queued)

    def _log_entities(self, kind: str, payload: dict[str, Any], token: str) -> None:
        items = [{"key": k, "value": v} for k, v in payload["items"]]
        params, tags = (items, []) if kind == "params" else ([], items)
        for body in batch_bodies([], params, tags):
            body["run_id"] = self._run_id()
            try:
                self.transport.post("runs/log-batch", dumps(body), token, metrics=False)
            except BadRequest:
                self._log_one_by_one(kind, body[kind])

    def _log_one_by_one(self, kind: str, entities: list[dict[str, str]]) -> None:
        for entity in entities:
            body = dumps({"run_id": self._run_id(), kind: [entity]})
            try:
                self.transport.post("runs/log-batch", body, new_retry_token(), metrics=False)
            except BadRequest as error:
                self.notices.once(
                    f"{kind}-{entity['key']}",
                    f"aidp-metrics: {kind[:-1]} {entity['key']!r} not logged: {error}",
                )

    def _set_status(self, payload: dict[str, Any], token: str) -> None:
        body = dumps({"run_id": self._run_id(), **payload})
        try:
            self.transport.post("runs/update", body, token, metrics=False)
        except BadRequest as error:
            self.notices.once(
                f"status-{payload.get('status')}",
                f"aidp-metrics: could not set run {self._run_id()} {payload.get('status')}: "
                f"{error}",
            )

    # -- failures -------------------------------------------------------------------------

    def _failed_attempt(self, error: APIError | None, work: Chunk | QueuedOp) -> None:
        """Back off after a failed request, as the failure policy says. `error` None: an
        internal error (already reported). An outage is reported when it starts, not on
        every failure during it (nor when the run started because the server was down)."""
        said = self.server_down  # the outage is known already
        elapsed = self._attempts.failed(time.monotonic())
        spooling, started = self.queue.spill_on_failure()
        if started and self._wake_spool is not None:
            self._wake_spool()
        if started and error is not None and not said:
            self.notices.once(
                "spooling",
                f"aidp-metrics: delivery failed ({error}); the run's records go to the spool "
                "and are sent when the server answers again",
            )
        keep = self.keep or spooling or _opens_run(work)
        decision = decide(self.options.retry, error, self._attempts.count, elapsed, keep=keep)
        self.server_down = decision.retryable
        if error is not None:
            self.last_error = str(error)
        if decision.verdict is not Verdict.RETRY and not decision.retryable:
            self.stuck = str(error)
            self._report_refusal(error, work, spooling)
        if decision.verdict is Verdict.GIVE_UP:
            self._give_up(work, f"not delivered: {short_reason(error)}", str(error))
            return
        self.not_before = max(self.not_before, time.monotonic() + decision.delay)
        if isinstance(work, Chunk):
            self.queue.count_retry()
        if error is None or (said and decision.retryable):
            return
        if isinstance(error, TooManyRequests):
            self.notices.once(
                "rate-limited", self.transport.rate_limited_hint(error, decision.delay)
            )
        else:
            self.notices.throttled(
                "retrying",
                f"aidp-metrics: delivery failed ({error}); retrying in {decision.delay:.1f} s",
            )

    def _report_refusal(self, error: object, work: object, spooling: bool) -> None:
        where = "kept in the spool" if spooling else "kept in memory"
        if isinstance(work, QueuedOp) and _opens_run(work):
            verb = "created" if work.op[0] == "create" else "attached"
            later = (
                " and `aidp-metrics sync` delivers them once this is fixed"
                if spooling
                else " until the run ends"
            )
            self.notices.once(
                "refused-run",
                f"aidp-metrics: the run could not be {verb} ({error}); its points are {where}"
                + later,
            )
        else:
            self.notices.throttled("refused", f"aidp-metrics: the server refused: {error}")

    def _give_up(self, work: Chunk | QueuedOp, reason: str, error: str) -> None:
        if isinstance(work, Chunk):
            pending = work.pending()
            work.set_outcome(pending, reason)
            self.notices.throttled("failed", f"aidp-metrics: {len(pending)} metric(s) {reason}")
            self.queue.settle_chunk(work)
        else:
            self.notices.throttled("op-failed", f"aidp-metrics: run {work.op[0]} not sent: {error}")
            self.queue.settle_op(work)

    def _internal_error(self, exc: Exception, work: Chunk | QueuedOp) -> None:
        attempts = self._attempts
        attempts.internal += 1
        self.notices.once(
            "internal",
            f"aidp-metrics: unexpected error while delivering ({type(exc).__name__}: {exc}); "
            "retrying",
        )
        logger.debug("aidp-metrics delivery error", exc_info=True)
        self.last_error = str(exc)
        if attempts.internal >= _INTERNAL_ERRORS_BEFORE_GIVING_UP and not _opens_run(work):
            attempts.internal = 0
            self._give_up(work, f"internal error: {type(exc).__name__}: {exc}", str(exc))
            return
        self._failed_attempt(None, work)

    def _run_id(self) -> str:
        run_id = self.queue.run_id
        if run_id is None:
            raise RuntimeError("the run does not exist on the server yet")
        return run_id


def _opens_run(work: object) -> bool:
    return isinstance(work, QueuedOp) and work.op[0] in ("create", "attach")


__all__ = ["SKIPPED", "StreamSender", "loop"]
